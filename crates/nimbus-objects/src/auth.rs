//! Who may call the S3 endpoint, and on which buckets.
//!
//! An access key belongs to one project (and names the user who made it).
//! Its secret is stored sealed by the embedding server's [`Sealer`]: SigV4
//! signs with the secret itself, so the server must be able to recover it,
//! which rules out hashing. A key may use only its project's buckets;
//! anonymous callers may only GET and HEAD objects of public-read buckets.

use std::sync::Arc;

use nimbus_store::{Revision, Store};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

use crate::credential_cache::CredentialCache;
use crate::keys;
use crate::records::{decode, BucketRecord};

/// Seals and opens access-key secrets (the server's secrets key).
pub trait Sealer: Send + Sync + 'static {
    fn seal(&self, context: &str, plaintext: &str) -> Result<String, String>;
    fn unseal(&self, context: &str, sealed: &str) -> Result<String, String>;
}

/// The associated data a secret is sealed with: a sealed secret copied to
/// another key's record does not open.
pub fn seal_context(access_key_id: &str) -> String {
    format!("s3 access key {access_key_id}")
}

fn internal(what: &str, e: impl std::fmt::Display) -> s3s::S3Error {
    tracing::error!(error = %e, "{what}");
    s3_error!(InternalError, "{what}")
}

pub(crate) async fn bucket(store: &dyn Store, name: &str) -> S3Result<Option<BucketRecord>> {
    Ok(bucket_with_revision(store, name).await?.map(|(b, _)| b))
}

/// The bucket's record and its revision (for a compare that catches a
/// concurrent change of its settings, versioning above all).
pub(crate) async fn bucket_with_revision(
    store: &dyn Store,
    name: &str,
) -> S3Result<Option<(BucketRecord, Revision)>> {
    let key = keys::bucket(name);
    match store.get(&key).await {
        Ok(Some(kv)) => decode("bucket", &key, &kv.value)
            .map(|b| Some((b, kv.mod_revision)))
            .map_err(|e| internal("reading a bucket", e)),
        Ok(None) => Ok(None),
        Err(e) => Err(internal("reading a bucket", e)),
    }
}

/// Gives s3s the secret of an access key so it can check SigV4 signatures.
pub struct NimbusAuth {
    pub credentials: Arc<CredentialCache>,
}

#[async_trait::async_trait]
impl S3Auth for NimbusAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.credentials.get(access_key).await? {
            Some(key) => Ok(SecretKey::from(key.secret.clone())),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Keeps each project's keys to its own buckets.
pub struct NimbusAccess {
    pub store: Arc<dyn Store>,
    pub credentials: Arc<CredentialCache>,
}

/// Operations an anonymous caller may run on a public-read bucket.
const PUBLIC_READ_OPS: &[&str] = &["GetObject", "HeadObject"];

#[async_trait::async_trait]
impl S3Access for NimbusAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let bucket_name = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        let project = match cx.credentials() {
            Some(c) => match self.credentials.get(&c.access_key).await? {
                Some(key) => Some(key.project.clone()),
                None => return Err(s3_error!(InvalidAccessKeyId)),
            },
            None => None,
        };
        let Some(bucket_name) = bucket_name else {
            // ListBuckets: a key sees its project's buckets.
            return match project {
                Some(_) => Ok(()),
                None => Err(s3_error!(
                    AccessDenied,
                    "sign the request with an access key"
                )),
            };
        };
        let bucket = bucket(&*self.store, &bucket_name).await?;
        match (project, bucket) {
            // The operation itself answers NoSuchBucket (or creates it).
            (Some(_), None) => Ok(()),
            (Some(p), Some(b)) if p == b.project => Ok(()),
            (Some(_), Some(_)) => Err(s3_error!(
                AccessDenied,
                "the bucket belongs to another project than this access key"
            )),
            (None, Some(b)) if b.public_read && PUBLIC_READ_OPS.contains(&cx.s3_op().name()) => {
                Ok(())
            }
            (None, _) => Err(s3_error!(
                AccessDenied,
                "sign the request with an access key of the bucket's project"
            )),
        }
    }
}
