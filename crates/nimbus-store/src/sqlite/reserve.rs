//! Space kept back beside the database so that, once the filesystem is
//! full, the control plane can still record the deletions that free space.
//!
//! A file of [`RESERVE_BYTES`] of real (not sparse) blocks sits next to the
//! database. [`crate::Store::release_reserve`] removes it; the caller (the
//! server, for a DELETE call refused for lack of space) then retries. It is
//! made again at the next open, or after a later write once there is room,
//! at most once a minute.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much the reserve holds: many deletions' worth of SQLite pages and
/// audit records, small next to any real data directory.
pub const RESERVE_BYTES: u64 = 4 << 20;
const RETRY_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Reserve {
    path: PathBuf,
    last_attempt: Mutex<Option<Instant>>,
    /// Released or never made: writes check this cheaply before trying.
    missing: AtomicBool,
}

impl Reserve {
    /// The reserve of the database at `db_path`: `<db_path>.reserve`.
    pub fn beside(db_path: &Path) -> Reserve {
        let mut name = db_path.as_os_str().to_owned();
        name.push(".reserve");
        Reserve {
            path: PathBuf::from(name),
            last_attempt: Mutex::new(None),
            missing: AtomicBool::new(true),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn is_held(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() == RESERVE_BYTES)
    }

    /// Makes the reserve unless it is there; a failure (no room) leaves
    /// nothing behind.
    pub fn ensure(&self) -> std::io::Result<()> {
        if self.is_held() {
            self.missing.store(false, Ordering::Relaxed);
            return Ok(());
        }
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            // Zeros only, but nobody else has business with the data dir.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.path)?;
            // Zeros, not set_len: a sparse file would reserve nothing.
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
                file.write_all(&chunk)?;
            }
            file.sync_all()
        })();
        match &result {
            Ok(()) => self.missing.store(false, Ordering::Relaxed),
            Err(_) => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        result
    }

    /// Whether the reserve is (as far as known) not there.
    pub fn is_missing(&self) -> bool {
        self.missing.load(Ordering::Relaxed)
    }

    /// [`Reserve::ensure`] when it is missing, at most once a minute.
    pub fn ensure_now_and_then(&self) {
        if self.is_held() {
            return;
        }
        let Ok(mut last) = self.last_attempt.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        match self.ensure() {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "the store's disk reserve is back")
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "no room yet for the store's disk reserve")
            }
        }
    }

    /// Frees the reserve; true when there was one to free.
    pub fn release(&self) -> bool {
        let released = std::fs::remove_file(&self.path).is_ok();
        self.missing.store(true, Ordering::Relaxed);
        // The freed room is for the deletions now, not for a new reserve.
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        if released {
            tracing::warn!(path = %self.path.display(), bytes = RESERVE_BYTES, "the disk holding the store is full: released its reserve so deletions can be recorded");
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_holds_real_blocks_and_is_released_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reserve = Reserve::beside(&dir.path().join("store.db"));
        assert_eq!(reserve.path(), dir.path().join("store.db.reserve"));
        reserve.ensure().expect("make the reserve");
        let meta = std::fs::metadata(reserve.path()).expect("reserve file");
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= RESERVE_BYTES, "not sparse");
        assert!(reserve.release());
        assert!(!reserve.release(), "nothing left to release");
        reserve.ensure_now_and_then();
        assert!(!reserve.is_held(), "the freed room goes to deletions first");
        *reserve.last_attempt.lock().expect("lock") = None;
        reserve.ensure_now_and_then();
        assert!(reserve.is_held(), "made again when there is room");
        assert!(!reserve.is_missing());
    }
}
