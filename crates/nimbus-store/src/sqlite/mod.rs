//! The SQLite backend: one database file (WAL mode) holding the current keys, a bounded
//! event log for watch replay, and the store metadata.
//!
//! A single connection sits behind a mutex; every call takes it on the blocking thread
//! pool. Holding that lock while committing and handing the commit to [`Durability`] is
//! what keeps revisions, commits and live events in one order. A write returns only
//! once its commit is on disk (`durable.rs`: group commit).

mod db;
mod durable;
mod reserve;

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::hub::LiveSubscription;
use crate::{
    Compare, Event, KeyValue, ListResult, Op, Result, Revision, Store, StoreError, Txn, TxnResult,
    WatchStream, WATCH_CHANNEL_CAPACITY,
};
use db::{Cursor, Db};
use durable::Durability;
use reserve::Reserve;

/// Events read from the log per lock acquisition while a watcher replays history.
const REPLAY_PAGE_SIZE: usize = 512;

#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Maximum number of events kept for watch replay; older revisions are compacted
    /// automatically once the log grows past it (values below 1 count as 1).
    pub history_limit: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            history_limit: 100_000,
        }
    }
}

/// A [`Store`] kept in a SQLite database. Cloning gives another handle to the same store.
///
/// When the last handle is dropped the database closes and open watch streams end.
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Mutex<Db>>,
    /// Space kept back for deletions once the disk is full (`reserve.rs`);
    /// none for an in-memory store.
    reserve: Option<Arc<Reserve>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the SQLite database at `path`.
    ///
    /// This blocks on file I/O; call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self> {
        let mut store = Self::from_db(Db::open(path, options.history_limit)?);
        let reserve = Reserve::beside(path);
        if let Err(e) = reserve.ensure() {
            tracing::warn!(path = %reserve.path().display(), error = %e, "could not set aside the store's disk reserve; deletions may fail once the disk is full");
        }
        store.reserve = Some(Arc::new(reserve));
        Ok(store)
    }

    /// A store that lives only in memory, with default options; for tests and tools.
    pub fn open_in_memory() -> Result<Self> {
        Self::open_in_memory_with_options(SqliteOptions::default())
    }

    pub fn open_in_memory_with_options(options: SqliteOptions) -> Result<Self> {
        Ok(Self::from_db(Db::open_in_memory(options.history_limit)?))
    }

    fn from_db(db: Db) -> Self {
        SqliteStore {
            db: Arc::new(Mutex::new(db)),
            reserve: None,
        }
    }

    /// After the reserve was released, try to make it again now and then
    /// (in the background: the write does not wait for it).
    fn remake_reserve_if_released(&self) {
        if let Some(reserve) = self.reserve.as_ref().filter(|r| r.is_missing()) {
            let reserve = Arc::clone(reserve);
            tokio::task::spawn_blocking(move || reserve.ensure_now_and_then());
        }
    }

    /// The number of live watchers (watchers whose streams were dropped are not counted).
    pub async fn watcher_count(&self) -> Result<usize> {
        with_db(&self.db, |db| Ok(db.durability.watcher_count())).await
    }

    /// The revision at or below which history has been dropped.
    pub async fn compacted_revision(&self) -> Result<Revision> {
        with_db(&self.db, |db| Ok(db.compacted())).await
    }
}

/// Runs `work` on the blocking pool with the connection locked.
async fn with_db<T: Send + 'static>(
    db: &Arc<Mutex<Db>>,
    work: impl FnOnce(&mut Db) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || locked(&db, work).map(|(output, _)| output))
        .await
        .map_err(|err| StoreError::Backend(format!("SQLite task failed: {err}")))?
}

/// Like [`with_db`] for a write: after `work` succeeds and the connection is
/// released, waits until the revision it left is on disk.
async fn write_db<T: Send + 'static>(
    db: &Arc<Mutex<Db>>,
    work: impl FnOnce(&mut Db) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || {
        let (output, (revision, durability)) = locked(&db, work)?;
        durability.wait_durable(revision)?;
        Ok(output)
    })
    .await
    .map_err(|err| StoreError::Backend(format!("SQLite task failed: {err}")))?
}

/// `work` with the connection locked; also the revision it left and the
/// store's [`Durability`], for a writer to wait on once the lock is gone.
fn locked<T>(
    db: &Mutex<Db>,
    work: impl FnOnce(&mut Db) -> Result<T>,
) -> Result<(T, (Revision, Arc<Durability>))> {
    let mut db = db.lock().map_err(|_| {
        StoreError::Backend("SQLite connection lock poisoned by a panicked task".into())
    })?;
    let output = work(&mut db).map_err(|err| match err {
        StoreError::StorageFull { path, detail } if path.is_empty() => StoreError::StorageFull {
            path: db.name.clone(),
            detail,
        },
        other => other,
    })?;
    Ok((output, (db.revision(), Arc::clone(&db.durability))))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn release_reserve(&self) -> bool {
        let Some(reserve) = self.reserve.clone() else {
            return false;
        };
        tokio::task::spawn_blocking(move || reserve.release())
            .await
            .unwrap_or(false)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        with_db(&self.db, move |db| db.get(&key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        with_db(&self.db, move |db| {
            db.list(&prefix, start_after.as_deref(), limit)
        })
        .await
    }

    async fn list_reverse(
        &self,
        prefix: &str,
        end_before: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let prefix = prefix.to_string();
        let end_before = end_before.map(str::to_string);
        with_db(&self.db, move |db| {
            db.list_reverse(&prefix, end_before.as_deref(), limit)
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let key = key.to_string();
        self.remake_reserve_if_released();
        write_db(&self.db, move |db| {
            db.write(|batch| {
                if batch.current(&key)?.is_some() {
                    return Err(StoreError::AlreadyExists(key.clone()));
                }
                batch.put(&key, value)
            })
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue> {
        let key = key.to_string();
        write_db(&self.db, move |db| {
            db.write(|batch| {
                let current = batch
                    .current(&key)?
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                check_mod_revision(&key, expected_mod_revision, &current)?;
                batch.put(&key, value)
            })
        })
        .await
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<KeyValue> {
        let key = key.to_string();
        write_db(&self.db, move |db| {
            db.write(|batch| {
                let current = batch
                    .current(&key)?
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                if let Some(expected) = expected_mod_revision {
                    check_mod_revision(&key, expected, &current)?;
                }
                batch
                    .delete(&key)?
                    .ok_or_else(|| StoreError::NotFound(key.clone()))
            })
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        write_db(&self.db, move |db| {
            let succeeded = db.write(|batch| {
                let mut succeeded = true;
                for compare in &txn.compares {
                    let current = batch.current(compare.key())?;
                    let holds = match compare {
                        Compare::Exists(_) => current.is_some(),
                        Compare::Absent(_) => current.is_none(),
                        Compare::ModRevision(_, expected) => {
                            current.map_or(0, |kv| kv.mod_revision) == *expected
                        }
                    };
                    if !holds {
                        succeeded = false;
                        break;
                    }
                }
                let ops = if succeeded { txn.success } else { txn.failure };
                for op in ops {
                    match op {
                        Op::Put { key, value } => {
                            batch.put(&key, value)?;
                        }
                        Op::Delete { key } => {
                            batch.delete(&key)?;
                        }
                    }
                }
                Ok(succeeded)
            })?;
            Ok(TxnResult {
                succeeded,
                revision: db.revision(),
            })
        })
        .await
    }

    async fn current_revision(&self) -> Result<Revision> {
        with_db(&self.db, |db| Ok(db.revision())).await
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        // Revisions start at 1, so a negative start means "from the beginning".
        let after_revision = after_revision.max(0);
        let watched_prefix = prefix.to_string();
        // Subscribing under the lock pins the live stream to start right after `head`,
        // so replaying (after_revision, head] from the log then going live neither loses
        // nor repeats an event.
        let (head, live) = with_db(&self.db, move |db| {
            if after_revision < db.compacted() {
                return Err(StoreError::Compacted {
                    requested: after_revision,
                    compacted: db.compacted(),
                });
            }
            // The head is the newest durable revision: later commits reach
            // the live stream once synced.
            Ok(db
                .durability
                .subscribe(&watched_prefix, WATCH_CHANNEL_CAPACITY))
        })
        .await?;
        // Small: the task reads the live channel only as fast as the watcher
        // takes events, so a slow watcher lags (and ends with Compacted) at
        // the live channel's capacity; this one only smooths the hand-over.
        let (out, stream) = mpsc::channel(OUT_CHANNEL_CAPACITY);
        let watch = Watch {
            prefix: prefix.to_string(),
            after_revision,
            head,
            out,
        };
        tokio::spawn(watch.run(Arc::clone(&self.db), live));
        Ok(stream)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        with_db(&self.db, move |db| db.compact(revision)).await
    }
}

fn check_mod_revision(key: &str, expected: Revision, current: &KeyValue) -> Result<()> {
    if current.mod_revision == expected {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            current: current.mod_revision,
        })
    }
}

/// Events buffered between a watch's task and its reader.
const OUT_CHANNEL_CAPACITY: usize = 64;

/// The task behind one watch stream: replays the log up to `head`, then forwards live
/// events.
struct Watch {
    prefix: String,
    after_revision: Revision,
    head: Revision,
    out: mpsc::Sender<Result<Event>>,
}

impl Watch {
    async fn run(self, db: Arc<Mutex<Db>>, live: LiveSubscription) {
        if !self.replay(db).await {
            return;
        }
        let LiveSubscription { mut events, lag } = live;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        // Only when watching from a future revision.
                        if event.revision() <= self.after_revision {
                            continue;
                        }
                        let event = Arc::unwrap_or_clone(event);
                        if self.out.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        // Closed by the hub (lagged) or because the store was dropped.
                        if let Some(lag) = lag.get() {
                            let _ = self.out.send(Err(lag.into_error())).await;
                        }
                        return;
                    }
                },
                _ = self.out.closed() => return,
            }
        }
    }

    /// Sends the logged events in (after_revision, head]; false if the stream ended.
    async fn replay(&self, db: Arc<Mutex<Db>>) -> bool {
        let mut cursor = Cursor::after_revision(self.after_revision);
        while cursor.revision < self.head {
            let (prefix, head) = (self.prefix.clone(), self.head);
            let page = with_db(&db, move |db| {
                db.history_page(&prefix, cursor, head, REPLAY_PAGE_SIZE)
            })
            .await;
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    tracing::debug!(prefix = %self.prefix, error = %err, "watch replay ended");
                    let _ = self.out.send(Err(err)).await;
                    return false;
                }
            };
            let last_page = page.len() < REPLAY_PAGE_SIZE;
            for (position, event) in page {
                cursor = position;
                if self.out.send(Ok(event)).await.is_err() {
                    return false;
                }
            }
            if last_page {
                break;
            }
        }
        true
    }
}
