//! Access keys and buckets as the Nimbus API and CLI manage them (outside
//! the S3 protocol).

use std::sync::Arc;

use nimbus_store::{Compare, Op, Store, Txn};

use crate::auth::{seal_context, Sealer};
use crate::error::ObjectsError;
use crate::keys;
use crate::records::{decode, encode, BucketRecord, CredentialRecord};

/// A new access key with its secret, shown once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub project: String,
    pub user: String,
}

/// Management of buckets and access keys over the store.
#[derive(Clone)]
pub struct Admin {
    pub store: Arc<dyn Store>,
    pub sealer: Arc<dyn Sealer>,
}

fn random_text(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

impl Admin {
    pub async fn create_credential(
        &self,
        project: &str,
        user: &str,
    ) -> Result<NewCredential, ObjectsError> {
        // AWS's shapes: 20 uppercase characters, 40 of base64's alphabet.
        let access_key_id = format!(
            "NIMB{}",
            random_text(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        );
        let secret = random_text(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            40,
        );
        let sealed_secret = self
            .sealer
            .seal(&seal_context(&access_key_id), &secret)
            .map_err(|detail| ObjectsError::Seal {
                access_key: access_key_id.clone(),
                detail,
            })?;
        let record = CredentialRecord {
            access_key_id: access_key_id.clone(),
            sealed_secret,
            project: project.to_string(),
            user: user.to_string(),
            created: chrono::Utc::now(),
        };
        self.store
            .create(&keys::credential(&access_key_id), encode(&record))
            .await?;
        Ok(NewCredential {
            access_key_id,
            secret_access_key: secret,
            project: project.to_string(),
            user: user.to_string(),
        })
    }

    /// The keys of `project` (all projects with `None`), secrets left out.
    pub async fn list_credentials(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<CredentialRecord>, ObjectsError> {
        let page = self.store.list(keys::CREDENTIALS, None, 0).await?;
        let mut out = Vec::new();
        for kv in page.kvs {
            let mut record: CredentialRecord = decode("access key", &kv.key, &kv.value)?;
            if project.is_none_or(|p| p == record.project) {
                record.sealed_secret.clear();
                out.push(record);
            }
        }
        Ok(out)
    }

    pub async fn delete_credential(
        &self,
        project: &str,
        access_key_id: &str,
    ) -> Result<(), ObjectsError> {
        let key = keys::credential(access_key_id);
        let missing = || ObjectsError::NoSuchAccessKey(access_key_id.to_string());
        let kv = self.store.get(&key).await?.ok_or_else(missing)?;
        let record: CredentialRecord = decode("access key", &key, &kv.value)?;
        if record.project != project {
            return Err(missing());
        }
        self.store.delete(&key, Some(kv.mod_revision)).await?;
        Ok(())
    }

    pub async fn create_bucket(
        &self,
        project: &str,
        name: &str,
        public_read: bool,
    ) -> Result<BucketRecord, ObjectsError> {
        keys::validate_bucket_name(name)?;
        let record = BucketRecord {
            name: name.to_string(),
            project: project.to_string(),
            public_read,
            created: chrono::Utc::now(),
            versioning: None,
        };
        match self
            .store
            .create(&keys::bucket(name), encode(&record))
            .await
        {
            Ok(_) => Ok(record),
            Err(nimbus_store::StoreError::AlreadyExists(_)) => {
                Err(ObjectsError::BucketExists(name.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_buckets(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<BucketRecord>, ObjectsError> {
        let page = self.store.list(keys::BUCKETS, None, 0).await?;
        let mut out = Vec::new();
        for kv in page.kvs {
            let record: BucketRecord = decode("bucket", &kv.key, &kv.value)?;
            if project.is_none_or(|p| p == record.project) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Delete an empty bucket of `project`.
    pub async fn delete_bucket(&self, project: &str, name: &str) -> Result<(), ObjectsError> {
        delete_bucket(&*self.store, project, name).await
    }
}

/// Delete an empty bucket: refused with BucketNotEmpty while it holds an
/// object, a version or a delete marker. (An upload committing at the same moment can still land after
/// the check; its record is then unreachable until the bucket is made
/// again. Closing that needs a per-bucket revision compare.)
pub async fn delete_bucket(
    store: &dyn Store,
    project: &str,
    name: &str,
) -> Result<(), ObjectsError> {
    let key = keys::bucket(name);
    let missing = || ObjectsError::NoSuchBucket(name.to_string());
    let kv = store.get(&key).await?.ok_or_else(missing)?;
    let record: BucketRecord = decode("bucket", &key, &kv.value)?;
    if record.project != project {
        return Err(missing());
    }
    // Versions and delete markers count: a versioned bucket whose keys
    // all read as deleted still holds them.
    for prefix in [keys::objects_of(name), keys::versions_of(name)] {
        if !store.list(&prefix, None, 1).await?.kvs.is_empty() {
            return Err(ObjectsError::BucketNotEmpty(name.to_string()));
        }
    }
    let done = store
        .txn(Txn {
            compares: vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
            success: vec![Op::Delete { key }],
            failure: vec![],
        })
        .await?;
    if !done.succeeded {
        return Err(missing());
    }
    Ok(())
}
