//! Group commit: a write is acknowledged, and its events reach watchers, only
//! once the write-ahead log holding it is on disk.
//!
//! The connection commits with `synchronous=NORMAL`, so `COMMIT` appends the
//! transaction's frames to the `-wal` file without waiting for the disk (and
//! SQLite itself syncs the WAL before every checkpoint). After releasing the
//! connection lock, each writer waits here until a `fdatasync` of the WAL that
//! *started after its commit* has finished. One writer at a time runs that
//! sync, for every commit made before it began, so concurrent writers share
//! one disk flush instead of queueing one each behind the connection lock.
//!
//! Events are published to live watchers by whoever finishes a sync, in
//! revision order, and the published revision is what a new watch takes as
//! its replay head: watchers only ever see durable history.
//!
//! A failed sync may have lost pages the kernel will not write again, so it
//! is not retried: every later write fails with the error and the file, and
//! the operator restarts the server after checking the disk (reads go on).

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::hub::{LiveSubscription, WatchHub};
use crate::{Event, Result, Revision, StoreError};

/// What gets flushed: the WAL file of an on-disk database, or nothing for
/// an in-memory one.
enum Target {
    Wal { file: File, path: PathBuf },
    Memory,
}

struct State {
    /// The newest revision whose frames are in the WAL (or memory).
    committed: Revision,
    /// The newest revision known to be on disk and published to watchers.
    durable: Revision,
    /// Commits not yet durable, oldest first, with their events.
    pending: VecDeque<(Revision, Vec<Event>)>,
    /// A writer is running the sync; the others wait for it.
    syncing: bool,
    /// Set for good when a sync fails.
    failed: Option<String>,
    hub: WatchHub,
    /// Syncs run so far (tests read it to see commits grouped).
    syncs: u64,
}

pub(crate) struct Durability {
    target: Target,
    state: Mutex<State>,
    synced: Condvar,
}

impl Durability {
    /// For the database at `db_path`, whose WAL already exists (WAL mode
    /// was switched on by opening it), with `revision` already durable.
    pub fn for_database(db_path: &Path, revision: Revision) -> Result<Self> {
        let mut path = db_path.as_os_str().to_owned();
        path.push("-wal");
        let path = PathBuf::from(path);
        let file = File::open(&path).map_err(|e| {
            StoreError::Backend(format!(
                "opening the write-ahead log {} to make commits durable: {e}",
                path.display()
            ))
        })?;
        Ok(Self::new(Target::Wal { file, path }, revision))
    }

    pub fn in_memory(revision: Revision) -> Self {
        Self::new(Target::Memory, revision)
    }

    fn new(target: Target, revision: Revision) -> Self {
        Durability {
            target,
            state: Mutex::new(State {
                committed: revision,
                durable: revision,
                pending: VecDeque::new(),
                syncing: false,
                failed: None,
                hub: WatchHub::default(),
                syncs: 0,
            }),
            synced: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent state (every
        // field is updated in one step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a commit at `revision`. Called with the connection lock held,
    /// right after `COMMIT`, so commits arrive here in revision order.
    pub fn committed(&self, revision: Revision, events: Vec<Event>) {
        let mut state = self.lock();
        state.committed = revision;
        state.pending.push_back((revision, events));
    }

    /// Returns once `revision` is on disk and published; called without the
    /// connection lock, so other writers can commit meanwhile and share the
    /// sync.
    pub fn wait_durable(&self, revision: Revision) -> Result<()> {
        let mut state = self.lock();
        loop {
            if let Some(err) = &state.failed {
                return Err(StoreError::Backend(err.clone()));
            }
            if state.durable >= revision {
                return Ok(());
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.syncing = true;
            // Every commit up to here has written its frames; the sync
            // below covers them all.
            let covered = state.committed;
            drop(state);
            let flushed = self.flush();
            state = self.lock();
            state.syncing = false;
            state.syncs += 1;
            match flushed {
                Ok(()) => Self::publish_through(&mut state, covered),
                Err(err) => state.failed = Some(err),
            }
            self.synced.notify_all();
        }
    }

    fn flush(&self) -> std::result::Result<(), String> {
        match &self.target {
            Target::Memory => Ok(()),
            Target::Wal { file, path } => file.sync_data().map_err(|e| {
                format!(
                    "flushing the store's write-ahead log {} to disk failed ({e}); recent \
                     changes may not be on disk. Check the disk (`dmesg`), then restart Nimbus",
                    path.display()
                )
            }),
        }
    }

    fn publish_through(state: &mut State, covered: Revision) {
        while state.pending.front().is_some_and(|(r, _)| *r <= covered) {
            if let Some((revision, events)) = state.pending.pop_front() {
                state.hub.publish(&events, revision);
            }
        }
        state.durable = state.durable.max(covered);
    }

    /// A live subscription starting right after the returned revision: the
    /// newest durable one, up to which a watch replays the log.
    pub fn subscribe(&self, prefix: &str, capacity: usize) -> (Revision, LiveSubscription) {
        let mut state = self.lock();
        let live = state.hub.subscribe(prefix, capacity);
        (state.durable, live)
    }

    pub fn watcher_count(&self) -> usize {
        let mut state = self.lock();
        state.hub.remove_closed();
        state.hub.len()
    }

    #[cfg(test)]
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::tests::put;

    #[test]
    fn events_reach_watchers_only_after_the_sync_and_in_order() {
        let durability = Durability::in_memory(0);
        let (head, mut live) = durability.subscribe("/a/", 16);
        assert_eq!(head, 0);
        durability.committed(1, vec![put("/a/x", 1)]);
        durability.committed(2, vec![put("/a/y", 2)]);
        assert!(live.events.try_recv().is_err(), "published before durable");
        // A watch opened now replays nothing beyond the durable revision.
        assert_eq!(durability.subscribe("/a/", 16).0, 0);
        durability.wait_durable(1).unwrap();
        // One sync covered both commits.
        assert_eq!(durability.syncs(), 1);
        assert_eq!(live.events.try_recv().unwrap().revision(), 1);
        assert_eq!(live.events.try_recv().unwrap().revision(), 2);
        assert_eq!(durability.subscribe("/a/", 16).0, 2);
        durability.wait_durable(2).unwrap();
        assert_eq!(
            durability.syncs(),
            1,
            "an already durable revision syncs nothing"
        );
    }

    #[test]
    fn concurrent_writers_share_syncs_of_the_real_wal_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        std::fs::write(dir.path().join("s.db-wal"), b"").unwrap();
        let durability = Arc::new(Durability::for_database(&db, 0).unwrap());
        let next = Arc::new(Mutex::new(0));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (durability, next) = (Arc::clone(&durability), Arc::clone(&next));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let revision = {
                            // Stands in for the connection lock: commits in order.
                            let mut next = next.lock().unwrap();
                            *next += 1;
                            durability.committed(*next, vec![put("/k", *next)]);
                            *next
                        };
                        durability.wait_durable(revision).unwrap();
                        assert!(durability.lock().durable >= revision);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let syncs = durability.syncs();
        assert!((1..=400).contains(&syncs), "{syncs} syncs for 400 commits");
        assert_eq!(durability.lock().durable, 400);
        assert!(durability.lock().pending.is_empty());
    }

    #[test]
    fn a_missing_wal_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Durability::for_database(&dir.path().join("none.db"), 0)
            .err()
            .expect("no WAL file");
        assert!(err.to_string().contains("none.db-wal"), "{err}");
    }
}
