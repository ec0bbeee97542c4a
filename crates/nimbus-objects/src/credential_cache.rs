//! Access keys as the S3 endpoint checks them on every request: the
//! opened secret and the key's project, kept in memory so a request does
//! not decode and unseal its key two or three times (signature check,
//! access check, the operation).
//!
//! A deleted key must be refused at once, so every lookup still reads the
//! key's record from the store (one point read) and serves the cached
//! opening only while the record's mod_revision is the one it was opened
//! from: a deleted or replaced key is never served from memory. (A watch
//! cannot give that: its events reach the reader after the delete returns.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nimbus_store::{Revision, Store};
use s3s::{s3_error, S3Result};

use crate::auth::{seal_context, Sealer};
use crate::keys;
use crate::records::{decode, CredentialRecord};

/// Most keys kept; past it the cache starts over (keys are few per host).
pub const MAX_ENTRIES: usize = 10_000;

/// An access key as a request needs it.
#[derive(Debug)]
pub struct OpenedKey {
    pub secret: String,
    pub project: String,
}

pub struct CredentialCache {
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
    /// Access key id -> (record's mod_revision, the key opened).
    entries: Mutex<HashMap<String, (Revision, Arc<OpenedKey>)>>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> s3s::S3Error {
    tracing::error!(error = %e, "{what}");
    s3_error!(InternalError, "{what}")
}

impl CredentialCache {
    pub fn new(store: Arc<dyn Store>, sealer: Arc<dyn Sealer>) -> CredentialCache {
        CredentialCache {
            store,
            sealer,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Revision, Arc<OpenedKey>)>> {
        // A panic while holding the lock leaves plain data behind: use it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key `access_key_id` opened, or `None` if no such key exists.
    pub async fn get(&self, access_key_id: &str) -> S3Result<Option<Arc<OpenedKey>>> {
        let skey = keys::credential(access_key_id);
        let Some(kv) = self
            .store
            .get(&skey)
            .await
            .map_err(|e| internal("reading an access key", e))?
        else {
            self.lock().remove(access_key_id);
            return Ok(None);
        };
        if let Some((rev, key)) = self.lock().get(access_key_id) {
            if *rev == kv.mod_revision {
                return Ok(Some(key.clone()));
            }
        }
        let record: CredentialRecord = decode("access key", &skey, &kv.value)
            .map_err(|e| internal("reading an access key", e))?;
        let secret = self
            .sealer
            .unseal(&seal_context(access_key_id), &record.sealed_secret)
            .map_err(|e| internal("opening an access key's secret", e))?;
        let key = Arc::new(OpenedKey {
            secret,
            project: record.project,
        });
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(access_key_id.to_string(), (kv.mod_revision, key.clone()));
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Admin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts unseals, so a test sees whether a lookup was served from memory.
    #[derive(Default)]
    struct CountingSealer(AtomicUsize);

    impl Sealer for CountingSealer {
        fn seal(&self, context: &str, plaintext: &str) -> Result<String, String> {
            Ok(format!("{context}|{plaintext}"))
        }
        fn unseal(&self, context: &str, sealed: &str) -> Result<String, String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            sealed
                .strip_prefix(&format!("{context}|"))
                .map(str::to_string)
                .ok_or_else(|| "wrong context".to_string())
        }
    }

    #[tokio::test]
    async fn a_key_is_opened_once_and_refused_at_once_after_its_delete() {
        let store: Arc<dyn Store> = Arc::new(nimbus_store::SqliteStore::open_in_memory().unwrap());
        let sealer = Arc::new(CountingSealer::default());
        let admin = Admin {
            store: store.clone(),
            sealer: sealer.clone(),
        };
        let new = admin.create_credential("ops", "alice").await.unwrap();
        let cache = CredentialCache::new(store.clone(), sealer.clone());
        for _ in 0..5 {
            let key = cache.get(&new.access_key_id).await.unwrap().unwrap();
            assert_eq!(
                (key.secret.as_str(), key.project.as_str()),
                (new.secret_access_key.as_str(), "ops")
            );
        }
        assert_eq!(
            sealer.0.load(Ordering::SeqCst),
            1,
            "the secret was opened more than once"
        );

        // Deleted through another handle (as the API does): gone on the next lookup.
        let api = Admin {
            store: store.clone(),
            sealer: sealer.clone(),
        };
        api.delete_credential("ops", &new.access_key_id)
            .await
            .unwrap();
        assert!(cache.get(&new.access_key_id).await.unwrap().is_none());
        assert!(cache.get("NIMBNOSUCHKEY").await.unwrap().is_none());
    }
}
