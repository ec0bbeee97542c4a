//! Object bytes on disk: `<root>/data/<id>` for committed data and
//! `<root>/tmp/<id>` while an upload streams in. Ids are random (128-bit
//! hex), so file names never derive from object keys.
//!
//! A write is durable before it is acknowledged: the temp file is fsync'd,
//! renamed into `data/`, and `data/` itself is fsync'd. Data files that no
//! metadata record names (an upload killed between rename and commit, or a
//! delete killed before its unlink) are collected at start.
//!
//! A larger body is written on a thread of its own while it still arrives,
//! with the disk started early (`data/streaming.rs`), so the closing
//! fsync waits for the last few MiB rather than the whole object.
//!
//! Two things keep small writes cheap without weakening that:
//! - a body that fits in [`SMALL_WRITE_BYTES`] is gathered in memory and
//!   created in `data/` directly, written and fsync'd in one blocking task,
//!   instead of a blocking-pool hop per step and a rename (its record is
//!   still what makes it visible; a crash leaves an orphan, collected);
//! - concurrent writers share `data/`'s fsync ([`DirSync`]): one fsync of
//!   the directory makes durable every rename that finished before it
//!   started, so a writer whose rename an fsync already covered does not
//!   issue its own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use md5::{Digest, Md5};

use crate::error::ObjectsError;

mod streaming;

/// The id of one data file: 32 lowercase hex digits, checked on every use,
/// so even a corrupt record cannot name a path outside `data/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DataId(String);

impl DataId {
    pub fn random() -> DataId {
        DataId(hex::encode(rand::random::<[u8; 16]>()))
    }

    pub fn parse(s: &str) -> Option<DataId> {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| DataId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a finished upload wrote.
#[derive(Debug)]
pub struct Written {
    pub id: DataId,
    pub size: u64,
    pub md5_hex: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Io(#[from] ObjectsError),
    #[error("the upload's body failed: {0}")]
    Body(String),
    #[error("the object is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Bodies up to this size are written from memory in one blocking task.
pub const SMALL_WRITE_BYTES: usize = 1 << 20;

/// Group fsync of one directory: renames take a ticket once done, and a
/// writer waits until an fsync that started after its rename has finished.
pub struct DirSync {
    dir: PathBuf,
    /// Renames finished (each takes the next ticket).
    renamed: AtomicU64,
    /// Every ticket at or below this is durable.
    synced: AtomicU64,
    /// fsyncs issued, for tests and metrics.
    fsyncs: AtomicU64,
    /// One fsync at a time; waiters queue here and usually find their
    /// ticket covered when they get it.
    running: tokio::sync::Mutex<()>,
}

impl DirSync {
    pub fn new(dir: PathBuf) -> DirSync {
        DirSync {
            dir,
            renamed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Make durable a rename into (or a create in) the directory that has
    /// returned.
    pub async fn after_rename(&self) -> Result<(), ObjectsError> {
        let ticket = self.renamed.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.running.lock().await;
        if self.synced.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket handed out by now belongs to a finished rename.
        let covers = self.renamed.load(Ordering::SeqCst);
        let dir = self.dir.clone();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || sync_dir(&dir))
            .await
            .map_err(|e| ObjectsError::Io {
                what: "syncing the directory",
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        // On error nothing moves: each waiter then tries its own fsync.
        self.synced.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// How many fsyncs of the directory were issued so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

fn sync_dir(dir: &Path) -> Result<(), ObjectsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ObjectsError::io("syncing the directory", dir))
}

/// Create `dest` (a new random id: it cannot exist) with `bytes` and
/// fsync it; on error nothing is left behind. Written in place rather
/// than renamed from `tmp/`: the file's fsync then commits its directory
/// entry in the same journal transaction on ext4, so the directory fsync
/// that follows seldom waits for another. A crash before the record's
/// commit leaves a file no record names: collected at start like any.
fn write_small(dest: &Path, bytes: &[u8]) -> Result<(), ObjectsError> {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(ObjectsError::io("creating", dest))
        .and_then(|mut f| {
            f.write_all(bytes)
                .map_err(ObjectsError::io("writing", dest))?;
            f.sync_all().map_err(ObjectsError::io("syncing", dest))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    written
}

pub struct DataStore {
    root: PathBuf,
    data_sync: Arc<DirSync>,
}

impl DataStore {
    /// Open (creating) `root`, emptying its `tmp/` of interrupted uploads.
    pub fn open(root: &Path) -> Result<DataStore, ObjectsError> {
        let store = DataStore {
            root: root.to_path_buf(),
            data_sync: Arc::new(DirSync::new(root.join("data"))),
        };
        for dir in [store.data_dir(), store.tmp_dir()] {
            std::fs::create_dir_all(&dir).map_err(ObjectsError::io("creating", &dir))?;
        }
        let tmp = store.tmp_dir();
        for entry in std::fs::read_dir(&tmp).map_err(ObjectsError::io("reading", &tmp))? {
            let entry = entry.map_err(ObjectsError::io("reading", &tmp))?;
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(store)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn path(&self, id: &DataId) -> PathBuf {
        self.data_dir().join(id.as_str())
    }

    /// Stream `body` into a new data file, durably, computing its MD5.
    pub async fn write<S, E>(&self, mut body: S, max_bytes: u64) -> Result<Written, WriteError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id = DataId::random();
        let tmp = self.tmp_dir().join(id.as_str());
        // Gather the body while it stays small; most objects end here.
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut head: Vec<u8> = Vec::new();
        let mut rest = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| WriteError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(WriteError::TooLarge { limit: max_bytes });
            }
            md5.update(&chunk);
            head.extend_from_slice(&chunk);
            if head.len() > SMALL_WRITE_BYTES {
                rest = Some(body);
                break;
            }
        }
        let Some(mut body) = rest else {
            let dest = self.path(&id);
            let d = dest.clone();
            tokio::task::spawn_blocking(move || write_small(&d, &head))
                .await
                .map_err(|e| ObjectsError::Io {
                    what: "writing",
                    path: dest,
                    source: std::io::Error::other(e),
                })??;
            self.data_sync.after_rename().await?;
            return Ok(Written {
                id,
                size,
                md5_hex: hex::encode(md5.finalize()),
            });
        };
        // A large body: written, hashed and pushed toward the disk on a
        // thread of its own while the rest arrives (`streaming.rs`).
        let writer = streaming::StreamingWrite::start(tmp.clone(), head, md5);
        let received = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| WriteError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(WriteError::TooLarge { limit: max_bytes });
                }
                if writer.send(chunk).await.is_err() {
                    // The writer failed; `finish` reports why.
                    break;
                }
            }
            Ok(())
        }
        .await;
        let result = match received {
            Ok(()) => writer.finish().await.map_err(WriteError::from),
            Err(e) => {
                writer.abandon().await;
                Err(e)
            }
        };
        let md5_hex = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let dest = self.path(&id);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(ObjectsError::io("renaming into place", &dest))?;
        self.sync_data_dir().await?;
        Ok(Written { id, size, md5_hex })
    }

    /// Copy an existing data file to a new one (CopyObject), durably.
    pub async fn copy(&self, from: &DataId) -> Result<DataId, ObjectsError> {
        let id = DataId::random();
        let src = self.path(from);
        let tmp = self.tmp_dir().join(id.as_str());
        tokio::fs::copy(&src, &tmp)
            .await
            .map_err(ObjectsError::io("copying", &src))?;
        let f = tokio::fs::File::open(&tmp)
            .await
            .map_err(ObjectsError::io("opening", &tmp))?;
        f.sync_all()
            .await
            .map_err(ObjectsError::io("syncing", &tmp))?;
        let dest = self.path(&id);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(ObjectsError::io("renaming into place", &dest))?;
        self.sync_data_dir().await?;
        Ok(id)
    }

    /// Join data files, in order, into a new one (completing a multipart
    /// upload), durably. Returns the new file's id and size.
    pub async fn concat(&self, parts: &[DataId]) -> Result<(DataId, u64), ObjectsError> {
        let id = DataId::random();
        let tmp = self.tmp_dir().join(id.as_str());
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(ObjectsError::io("creating", &tmp))?;
        let result = async {
            let mut size = 0;
            for part in parts {
                let src = self.path(part);
                let mut f = tokio::fs::File::open(&src)
                    .await
                    .map_err(ObjectsError::io("opening a part", &src))?;
                size += tokio::io::copy(&mut f, &mut out)
                    .await
                    .map_err(ObjectsError::io("joining parts into", &tmp))?;
            }
            out.sync_all()
                .await
                .map_err(ObjectsError::io("syncing", &tmp))?;
            Ok(size)
        }
        .await;
        drop(out);
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let dest = self.path(&id);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(ObjectsError::io("renaming into place", &dest))?;
        self.sync_data_dir().await?;
        Ok((id, size))
    }

    async fn sync_data_dir(&self) -> Result<(), ObjectsError> {
        self.data_sync.after_rename().await
    }

    pub async fn open_file(&self, id: &DataId) -> Result<tokio::fs::File, ObjectsError> {
        let path = self.path(id);
        tokio::fs::File::open(&path)
            .await
            .map_err(ObjectsError::io("opening object data", &path))
    }

    /// Remove a data file no record names any more (missing is fine).
    pub async fn remove(&self, id: &DataId) {
        let path = self.path(id);
        if let Err(e) = tokio::fs::remove_file(&path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove object data; it is collected at the next start");
            }
        }
    }

    /// Remove every data file not in `live`. Returns how many went.
    pub fn collect_orphans(&self, live: &HashSet<DataId>) -> Result<usize, ObjectsError> {
        let dir = self.data_dir();
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(ObjectsError::io("reading", &dir))? {
            let entry = entry.map_err(ObjectsError::io("reading", &dir))?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(DataId::parse)
                .is_some_and(|id| live.contains(&id));
            if !keep && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn data_ids_cannot_name_other_paths() {
        assert!(DataId::parse("../../etc/passwd").is_none());
        assert!(DataId::parse(&"A".repeat(32)).is_none());
        assert!(DataId::parse(&"a/".repeat(16)).is_none());
        let id = DataId::random();
        assert_eq!(DataId::parse(id.as_str()), Some(id));
    }

    #[tokio::test]
    async fn a_write_lands_in_data_with_its_md5_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open(dir.path()).unwrap();
        let w = store.write(body(&[b"hel", b"lo"]), 100).await.unwrap();
        assert_eq!(
            (w.size, w.md5_hex.as_str()),
            (5, "5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(std::fs::read(store.path(&w.id)).unwrap(), b"hello");
        assert!(store.path(&w.id).starts_with(dir.path()));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn concurrent_writes_share_directory_fsyncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open(dir.path()).unwrap();
        let writes = (0..32).map(|_| store.write(body(&[b"0123", b"4567"]), 100));
        let written = futures::future::join_all(writes).await;
        for w in &written {
            let w = w.as_ref().unwrap();
            assert_eq!(std::fs::read(store.path(&w.id)).unwrap(), b"01234567");
        }
        let fsyncs = store.data_sync.fsyncs();
        assert!(
            (1..32).contains(&fsyncs),
            "32 concurrent writes issued {fsyncs} directory fsyncs"
        );
    }

    #[tokio::test]
    async fn a_body_past_the_small_limit_streams_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open(dir.path()).unwrap();
        let chunk = vec![7u8; 300 << 10];
        let parts: Vec<Result<bytes::Bytes, String>> = (0..5)
            .map(|_| Ok(bytes::Bytes::from(chunk.clone())))
            .collect();
        let w = store
            .write(futures::stream::iter(parts), 10 << 20)
            .await
            .unwrap();
        assert_eq!(w.size, 5 * (300 << 10));
        let on_disk = std::fs::read(store.path(&w.id)).unwrap();
        assert!(on_disk.len() == 5 * (300 << 10) && on_disk.iter().all(|&b| b == 7));
        assert_eq!(w.md5_hex, hex::encode(Md5::digest(&on_disk)));
    }

    #[tokio::test]
    async fn a_failed_or_oversized_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open(dir.path()).unwrap();
        let err = store.write(body(&[b"0123456789"]), 4).await.unwrap_err();
        assert!(matches!(err, WriteError::TooLarge { limit: 4 }), "{err}");
        let broken = futures::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"abc")),
            Err("connection reset".to_string()),
        ]);
        assert!(store.write(broken, 100).await.is_err());
        for sub in ["data", "tmp"] {
            assert_eq!(std::fs::read_dir(dir.path().join(sub)).unwrap().count(), 0);
        }
    }

    #[tokio::test]
    async fn orphans_are_collected_and_live_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = DataStore::open(dir.path()).unwrap();
        let live = store.write(body(&[b"a"]), 10).await.unwrap().id;
        let orphan = store.write(body(&[b"b"]), 10).await.unwrap().id;
        std::fs::write(dir.path().join("tmp").join("half"), b"x").unwrap();
        let removed = store
            .collect_orphans(&HashSet::from([live.clone()]))
            .unwrap();
        assert_eq!(removed, 1);
        assert!(store.path(&live).exists() && !store.path(&orphan).exists());
        // Reopening empties tmp/ of interrupted uploads.
        DataStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
