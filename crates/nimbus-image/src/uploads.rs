//! Blob uploads of the registry: a session stages its bytes under the store's
//! `tmp/upload-<id>/` (with the label of who opened it), chunk after chunk, and
//! they reach `blobs/` by rename only after hashing to the digest the client
//! named; a whole blob sent at once is a session opened and closed in one call.
//! Past the store's `Limits::max_archive_bytes`, or when the caller's budget
//! (a project's quota) refuses the next piece, an upload is dropped.
//!
//! The digest is computed while the bytes arrive, so closing a session does
//! not read the whole blob back; only a session whose running digest was
//! lost (a server restart between chunks) is read back and hashed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::blob::{self, digest_from_hex, digest_hex, HashingReader};
use crate::error::ImageError;
use crate::pushed::PushError;
use crate::ImageStore;

/// Reads until `buf` is full or the stream ends: a request body arrives in
/// pieces of a TLS record or so, and one write per piece would cost a system
/// call every 16 KiB.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Asked before each piece of an upload is written, with the piece's size
/// in bytes: `Err(reason)` refuses it (a project's quota, say) and the
/// session is removed.
pub type UploadBudget<'a> = dyn FnMut(u64) -> Result<(), String> + 'a;

/// An open upload session as it stands on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenUpload {
    pub id: String,
    /// The label given at [`ImageStore::upload_start`].
    pub owner: String,
    /// Bytes received so far.
    pub bytes: u64,
}

/// The sha256 state of each open session and how many bytes it covers.
#[derive(Debug, Default)]
pub(crate) struct RunningHashes(Mutex<HashMap<String, (u64, Sha256)>>);

impl RunningHashes {
    /// The state covering exactly the first `bytes` bytes of session `id`,
    /// if it is known; a new one for an empty session.
    fn take(&self, id: &str, bytes: u64) -> Option<Sha256> {
        let taken = self.0.lock().ok()?.remove(id);
        match taken {
            Some((covered, hash)) if covered == bytes => Some(hash),
            _ if bytes == 0 => Some(Sha256::new()),
            _ => None,
        }
    }

    fn put(&self, id: &str, bytes: u64, hash: Sha256) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(id.to_string(), (bytes, hash));
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(id);
        }
    }
}

impl ImageStore {
    fn upload_dir(&self, id: &str) -> Result<PathBuf, PushError> {
        let well_formed = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        let dir = self.tmp_dir.join(format!("upload-{id}"));
        if !well_formed || !dir.is_dir() {
            return Err(PushError::UploadUnknown { id: id.to_string() });
        }
        Ok(dir)
    }

    /// Opens an upload session `id` (letters, digits, `-`) for `owner`, an opaque
    /// label the caller checks on every later call.
    pub fn upload_start(&self, id: &str, owner: &str) -> Result<(), PushError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(PushError::UploadUnknown { id: id.to_string() });
        }
        let dir = self.tmp_dir.join(format!("upload-{id}"));
        std::fs::create_dir(&dir).map_err(|e| ImageError::io("create upload", &dir, e))?;
        let write = |name: &str, data: &[u8]| {
            blob::write_new_file(&dir.join(name), data)
                .map_err(|e| ImageError::io("create upload", dir.join(name), e))
        };
        write("owner", owner.as_bytes())?;
        write("data", b"")?;
        Ok(())
    }

    /// Who opened upload `id`.
    pub fn upload_owner(&self, id: &str) -> Result<String, PushError> {
        let path = self.upload_dir(id)?.join("owner");
        std::fs::read_to_string(&path).map_err(|_| PushError::UploadUnknown { id: id.to_string() })
    }

    /// Bytes received so far.
    pub fn upload_size(&self, id: &str) -> Result<u64, PushError> {
        let path = self.upload_dir(id)?.join("data");
        Ok(std::fs::metadata(&path)
            .map_err(|e| ImageError::io("read size of upload", &path, e))?
            .len())
    }

    /// Every open upload session, read from disk (sessions closing or
    /// cancelled meanwhile are left out).
    pub fn open_uploads(&self) -> Result<Vec<OpenUpload>, ImageError> {
        let entries = std::fs::read_dir(&self.tmp_dir)
            .map_err(|e| ImageError::io("list", &self.tmp_dir, e))?;
        let mut open = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("list", &self.tmp_dir, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix("upload-")) else {
                continue;
            };
            let dir = entry.path();
            let owner = std::fs::read_to_string(dir.join("owner"));
            let data = std::fs::metadata(dir.join("data"));
            if let (Ok(owner), Ok(data)) = (owner, data) {
                open.push(OpenUpload {
                    id: id.to_string(),
                    owner,
                    bytes: data.len(),
                });
            }
        }
        Ok(open)
    }

    /// Appends `reader` to upload `id`; `start`, when given, must equal the bytes
    /// already received. Returns the new total. Past the store's size limit, or
    /// when `budget` refuses a piece, the upload is cancelled.
    pub fn upload_append(
        &self,
        id: &str,
        start: Option<u64>,
        reader: &mut dyn Read,
        budget: &mut UploadBudget<'_>,
    ) -> Result<u64, PushError> {
        let path = self.upload_dir(id)?.join("data");
        let have = self.upload_size(id)?;
        if let Some(start) = start.filter(|s| *s != have) {
            return Err(PushError::OutOfOrder {
                id: id.to_string(),
                start,
                actual: have,
            });
        }
        let limit = self.limits.max_archive_bytes;
        let mut file = File::options()
            .append(true)
            .open(&path)
            .map_err(|e| ImageError::io("open upload", &path, e))?;
        let mut total = have;
        let mut hash = self.upload_hashes.take(id, have);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match fill(reader, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(ImageError::ReadArchive { source: e }.into()),
            };
            total += n as u64;
            if total > limit {
                drop(file);
                self.upload_cancel(id)?;
                return Err(PushError::TooLarge {
                    id: id.to_string(),
                    limit,
                });
            }
            if let Err(reason) = budget(n as u64) {
                drop(file);
                self.upload_cancel(id)?;
                return Err(PushError::OverBudget {
                    id: id.to_string(),
                    reason,
                });
            }
            file.write_all(&buf[..n])
                .map_err(|e| ImageError::io("write upload", &path, e))?;
            if let Some(hash) = hash.as_mut() {
                hash.update(&buf[..n]);
            }
        }
        file.sync_all()
            .map_err(|e| ImageError::io("sync upload", &path, e))?;
        if let Some(hash) = hash {
            self.upload_hashes.put(id, total, hash);
        }
        Ok(total)
    }

    /// Closes upload `id`: its bytes must hash to `digest`, then they become
    /// that blob. On a mismatch the upload is removed and nothing is kept.
    /// Returns the blob's size.
    pub fn upload_finish(&self, id: &str, digest: &str) -> Result<u64, PushError> {
        digest_hex(digest, "upload digest")?;
        let dir = self.upload_dir(id)?;
        let path = dir.join("data");
        let (actual, size) = self.upload_digest(id, &path)?;
        let committed = self.commit_pushed(&path, digest, &actual, size);
        self.upload_cancel(id)?;
        committed?;
        tracing::info!(digest, bytes = size, "pushed blob stored");
        Ok(size)
    }

    /// `(hex digest, size)` of the bytes session `id` holds in `path`: the
    /// running digest when it covers the whole file, else read back.
    fn upload_digest(&self, id: &str, path: &std::path::Path) -> Result<(String, u64), PushError> {
        let size = std::fs::metadata(path)
            .map_err(|e| ImageError::io("read size of upload", path, e))?
            .len();
        if let Some(hash) = self.upload_hashes.take(id, size) {
            return Ok((hex::encode(hash.finalize()), size));
        }
        let file = File::open(path).map_err(|e| ImageError::io("open upload", path, e))?;
        Ok(HashingReader::new(file)
            .finish()
            .map_err(|e| ImageError::io("read upload", path, e))?)
    }

    /// Removes upload `id` and what it received.
    pub fn upload_cancel(&self, id: &str) -> Result<(), PushError> {
        self.upload_hashes.forget(id);
        let dir = self.upload_dir(id)?;
        crate::remove_any(&dir).map_err(|e| ImageError::io("remove upload", &dir, e))?;
        Ok(())
    }

    /// Stores a whole blob sent in one request (a monolithic upload) as
    /// session `id` of `owner` opened and closed at once, so that it shows
    /// in [`ImageStore::open_uploads`] while its bytes arrive. Checked against
    /// `digest`, the size limit and `budget` like a session; on any failure
    /// nothing is kept.
    pub fn push_blob(
        &self,
        id: &str,
        owner: &str,
        digest: &str,
        reader: &mut dyn Read,
        budget: &mut UploadBudget<'_>,
    ) -> Result<u64, PushError> {
        digest_hex(digest, "upload digest")?;
        self.upload_start(id, owner)?;
        let stored = self
            .upload_append(id, None, reader, budget)
            .and_then(|_| self.upload_finish(id, digest));
        if stored.is_err() && self.upload_dir(id).is_ok() {
            self.upload_cancel(id)?;
        }
        stored
    }

    /// Moves the pushed bytes at `path`, which hashed to `actual_hex`, to
    /// their address if that is the `digest` the client named.
    fn commit_pushed(
        &self,
        path: &std::path::Path,
        digest: &str,
        actual_hex: &str,
        size: u64,
    ) -> Result<(), PushError> {
        let hex = digest_hex(digest, "upload digest")?;
        if actual_hex != hex {
            return Err(PushError::DigestMismatch {
                expected: digest.to_string(),
                actual: digest_from_hex(actual_hex),
                size,
            });
        }
        if !self.blobs.contains(hex) {
            self.blobs.commit(path, hex)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{entry_count as entries, store_with_limit as store};

    fn any(_: u64) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn chunks_in_order_become_a_blob_and_a_mismatch_keeps_nothing() {
        let (_d, store) = store(1 << 20);
        store.upload_start("ab-1", "ops/app").unwrap();
        assert_eq!(store.upload_owner("ab-1").unwrap(), "ops/app");
        assert_eq!(
            store
                .upload_append("ab-1", Some(0), &mut &b"hello "[..], &mut any)
                .unwrap(),
            6
        );
        let err = store
            .upload_append("ab-1", Some(2), &mut &b"x"[..], &mut any)
            .unwrap_err();
        assert!(
            matches!(err, PushError::OutOfOrder { actual: 6, .. }),
            "{err}"
        );
        store
            .upload_append("ab-1", None, &mut &b"world"[..], &mut any)
            .unwrap();
        let digest = format!("sha256:{}", blob::sha256_hex(b"hello world"));
        assert_eq!(store.upload_finish("ab-1", &digest).unwrap(), 11);
        assert_eq!(store.blob_size(&digest).unwrap(), Some(11));
        assert!(matches!(
            store.upload_size("ab-1"),
            Err(PushError::UploadUnknown { .. })
        ));

        store.upload_start("cd", "ops/app").unwrap();
        store
            .upload_append("cd", None, &mut &b"other"[..], &mut any)
            .unwrap();
        let wanted = format!("sha256:{}", blob::sha256_hex(b"not that"));
        let err = store.upload_finish("cd", &wanted).unwrap_err();
        assert!(matches!(err, PushError::DigestMismatch { .. }), "{err}");
        assert_eq!(store.blob_size(&wanted).unwrap(), None);
        assert_eq!(entries(&store, "tmp"), 0);
        assert_eq!(entries(&store, "blobs/sha256"), 1);
    }

    #[test]
    fn a_session_whose_running_digest_was_lost_is_read_back() {
        let (_d, store) = store(1 << 20);
        let digest = format!("sha256:{}", blob::sha256_hex(b"hello world"));
        store.upload_start("aa", "ops/app").unwrap();
        store
            .upload_append("aa", None, &mut &b"hello "[..], &mut any)
            .unwrap();
        store.upload_hashes.forget("aa");
        // The next chunk cannot extend a digest it does not have...
        store
            .upload_append("aa", None, &mut &b"world"[..], &mut any)
            .unwrap();
        // ...so closing reads the bytes back, and a wrong name still fails.
        let wrong = format!("sha256:{}", blob::sha256_hex(b"world"));
        store.upload_start("bb", "ops/app").unwrap();
        store
            .upload_append("bb", None, &mut &b"hello "[..], &mut any)
            .unwrap();
        store.upload_hashes.forget("bb");
        store
            .upload_append("bb", None, &mut &b"world"[..], &mut any)
            .unwrap();
        assert!(matches!(
            store.upload_finish("bb", &wrong),
            Err(PushError::DigestMismatch { .. })
        ));
        assert_eq!(store.upload_finish("aa", &digest).unwrap(), 11);
        assert_eq!(store.blob_size(&digest).unwrap(), Some(11));
    }

    #[test]
    fn an_upload_past_the_limit_is_dropped_and_bad_ids_name_nothing() {
        let (_d, store) = store(10);
        store.upload_start("ee", "p/r").unwrap();
        let err = store
            .upload_append("ee", None, &mut &[0u8; 11][..], &mut any)
            .unwrap_err();
        assert!(
            matches!(err, PushError::TooLarge { limit: 10, .. }),
            "{err}"
        );
        assert_eq!(entries(&store, "tmp"), 0);
        for bad in ["../x", "", "zz"] {
            assert!(store.upload_size(bad).is_err());
        }
        assert!(store.upload_start("../x", "p").is_err());
        let err = store
            .push_blob(
                "ff",
                "p/r",
                &format!("sha256:{}", "a".repeat(64)),
                &mut &[1u8; 11][..],
                &mut any,
            )
            .unwrap_err();
        assert!(matches!(err, PushError::TooLarge { .. }), "{err}");
        assert_eq!(entries(&store, "blobs/sha256"), 0);
    }

    #[test]
    fn open_sessions_are_listed_and_a_refusing_budget_drops_the_upload() {
        let (_d, store) = store(1 << 20);
        store.upload_start("a1", "ops/app").unwrap();
        store
            .upload_append("a1", None, &mut &b"12345"[..], &mut any)
            .unwrap();
        store.upload_start("b2", "dev/web").unwrap();
        let mut open = store.open_uploads().unwrap();
        open.sort_by(|a, b| a.id.cmp(&b.id));
        let seen: Vec<(&str, &str, u64)> = open
            .iter()
            .map(|u| (u.id.as_str(), u.owner.as_str(), u.bytes))
            .collect();
        assert_eq!(seen, [("a1", "ops/app", 5), ("b2", "dev/web", 0)]);

        let mut asked = Vec::new();
        let mut refuse_past_8 = |n: u64| {
            asked.push(n);
            if n > 8 {
                Err("over the quota".to_string())
            } else {
                Ok(())
            }
        };
        let err = store
            .upload_append("a1", None, &mut &[7u8; 9][..], &mut refuse_past_8)
            .unwrap_err();
        assert!(
            matches!(&err, PushError::OverBudget { reason, .. } if reason == "over the quota"),
            "{err}"
        );
        assert_eq!(asked, [9]);
        assert!(
            store.upload_owner("a1").is_err(),
            "the refused session stays"
        );
        assert_eq!(store.open_uploads().unwrap().len(), 1);
    }

    #[test]
    fn a_refused_monolithic_push_keeps_nothing() {
        let (_d, store) = store(1 << 20);
        let data = [3u8; 64];
        let digest = format!("sha256:{}", blob::sha256_hex(&data));
        let err = store
            .push_blob("c1", "ops/app", &digest, &mut &data[..], &mut |_| {
                Err("no room".to_string())
            })
            .unwrap_err();
        assert!(matches!(err, PushError::OverBudget { .. }), "{err}");
        assert_eq!(entries(&store, "tmp"), 0);
        assert_eq!(entries(&store, "blobs/sha256"), 0);
        let size = store
            .push_blob("c2", "ops/app", &digest, &mut &data[..], &mut any)
            .unwrap();
        assert_eq!((size, entries(&store, "tmp")), (64, 0));
        assert_eq!(store.blob_size(&digest).unwrap(), Some(64));
    }
}
