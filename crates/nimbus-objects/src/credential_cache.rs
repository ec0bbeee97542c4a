//! Access keys as the S3 endpoint checks them on every request: the
//! opened secret and the key's project, kept in memory so a request does
//! not read and unseal its key two or three times (signature check,
//! access check, the operation).
//!
//! A deleted key must be refused at once, so the cache follows the store:
//! it watches the credentials prefix and drains that watch before every
//! lookup, dropping each key an event names. With the SQLite store a
//! delete's event is queued before the delete returns, so a request that
//! starts after it sees the key gone. A read that raced an event (the
//! generation moved while it ran) is served but not cached. Without a
//! working watch nothing is cached; entries also expire after
//! [`ENTRY_TTL`], which bounds staleness where watches lag (etcd).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nimbus_store::{Store, WatchStream};
use s3s::{s3_error, S3Result};
use tokio::sync::mpsc::error::TryRecvError;

use crate::auth::{credential, seal_context, Sealer};
use crate::keys;

/// How long an entry may serve without a fresh read of the store.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);
/// Most keys kept; past it the cache starts over (keys are few per host).
pub const MAX_ENTRIES: usize = 10_000;

/// An access key as a request needs it.
#[derive(Debug)]
pub struct OpenedKey {
    pub secret: String,
    pub project: String,
}

struct Entry {
    key: Arc<OpenedKey>,
    read_at: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Events for the credentials prefix; `None` until established, and
    /// again after it failed (then nothing is cached until it is back).
    watch: Option<WatchStream>,
    /// Moves on every event and on every (re)watch: a read that started
    /// under another generation may have missed a delete.
    generation: u64,
}

impl Inner {
    fn drain(&mut self) {
        let Some(watch) = &mut self.watch else {
            return;
        };
        loop {
            match watch.try_recv() {
                Ok(Ok(event)) => {
                    self.generation += 1;
                    if let Some(id) = event.kv.key.strip_prefix(keys::CREDENTIALS) {
                        self.entries.remove(id);
                    }
                }
                Err(TryRecvError::Empty) => return,
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => {
                    self.generation += 1;
                    self.entries.clear();
                    self.watch = None;
                    return;
                }
            }
        }
    }
}

pub struct CredentialCache {
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
    inner: Mutex<Inner>,
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
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: use it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key `access_key_id` opened, or `None` if no such key exists.
    pub async fn get(&self, access_key_id: &str) -> S3Result<Option<Arc<OpenedKey>>> {
        let (generation, watching) = {
            let mut inner = self.lock();
            inner.drain();
            if let Some(entry) = inner.entries.get(access_key_id) {
                if entry.read_at.elapsed() < ENTRY_TTL {
                    return Ok(Some(entry.key.clone()));
                }
            }
            (inner.generation, inner.watch.is_some())
        };
        let generation = if watching {
            Some(generation)
        } else {
            self.watch().await
        };
        let Some(record) = credential(&*self.store, access_key_id).await? else {
            return Ok(None);
        };
        let secret = self
            .sealer
            .unseal(&seal_context(access_key_id), &record.sealed_secret)
            .map_err(|e| internal("opening an access key's secret", e))?;
        let key = Arc::new(OpenedKey {
            secret,
            project: record.project,
        });
        let mut inner = self.lock();
        inner.drain();
        if generation.is_some_and(|g| g == inner.generation && inner.watch.is_some()) {
            if inner.entries.len() >= MAX_ENTRIES {
                inner.entries.clear();
            }
            inner.entries.insert(
                access_key_id.to_string(),
                Entry {
                    key: key.clone(),
                    read_at: Instant::now(),
                },
            );
        }
        Ok(Some(key))
    }

    /// Start watching the credentials prefix from the current revision;
    /// returns the generation reads may cache under, `None` if the store
    /// would not watch (then this request reads through).
    async fn watch(&self) -> Option<u64> {
        let started = async {
            let revision = self.store.current_revision().await?;
            self.store.watch(keys::CREDENTIALS, revision).await
        }
        .await;
        let stream = match started {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch access keys; each S3 request reads its key from the store");
                return None;
            }
        };
        let mut inner = self.lock();
        if inner.watch.is_none() {
            inner.watch = Some(stream);
            inner.entries.clear();
            inner.generation += 1;
        }
        Some(inner.generation)
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
