//! A large upload written on a thread of its own while its body still
//! arrives: the request's task only receives (and decrypts) the body and
//! hands the chunks over; this thread hashes them (MD5, for the ETag),
//! writes them, and every [`WRITEBACK_STEP`] asks the kernel to start
//! writing what it has to the disk (`sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE`, which does not wait). By the time the body
//! ends, most of it is already on its way to the disk, so the closing
//! `fsync` waits for the last step only instead of the whole object, and
//! the hashing runs beside the receiving rather than after it.
//!
//! Durability is unchanged: the object is acknowledged only after the
//! closing `fsync` (and, in the caller, the rename and the directory's
//! `fsync`). `sync_file_range` alone guarantees nothing and is used only
//! to start the disk early.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use tokio::sync::mpsc;

use crate::error::ObjectsError;

/// How much is written before the kernel is asked to start writing it out.
pub const WRITEBACK_STEP: u64 = 8 << 20;

/// Chunks buffered between the receiving task and the writer thread
/// (chunks are at most a few tens of KiB each).
const IN_FLIGHT_CHUNKS: usize = 256;

/// Writes are issued in pieces of this size at least.
const WRITE_BYTES: usize = 1 << 20;

enum Piece {
    Data(bytes::Bytes),
    /// The body ended: sync the file and give the MD5.
    End,
}

/// The sending half, held by the request's task.
pub struct StreamingWrite {
    pieces: mpsc::Sender<Piece>,
    writer: tokio::task::JoinHandle<Result<String, ObjectsError>>,
}

impl StreamingWrite {
    /// Create `tmp` and start its writer thread with `head` (already
    /// hashed into `md5`) as its first bytes.
    pub fn start(tmp: PathBuf, head: Vec<u8>, md5: Md5) -> StreamingWrite {
        let (pieces, rx) = mpsc::channel(IN_FLIGHT_CHUNKS);
        let writer = tokio::task::spawn_blocking(move || write_pieces(&tmp, head, md5, rx));
        StreamingWrite { pieces, writer }
    }

    /// Hand over the next chunk; an error when the writer already failed
    /// (its error is what [`StreamingWrite::finish`] returns).
    pub async fn send(&self, chunk: bytes::Bytes) -> Result<(), ()> {
        self.pieces.send(Piece::Data(chunk)).await.map_err(|_| ())
    }

    /// The body ended: wait for the data to be written and synced; the MD5
    /// of all bytes in hex.
    pub async fn finish(self) -> Result<String, ObjectsError> {
        // A writer that already failed has closed its end: its own error
        // is the one to report.
        let _ = self.pieces.send(Piece::End).await;
        joined(self.writer, self.pieces).await
    }

    /// The body failed: stop the writer (it syncs nothing) and wait for it
    /// to close the file, so the caller can remove it.
    pub async fn abandon(self) {
        let _ = joined(self.writer, self.pieces).await;
    }
}

/// Close the sending end (a writer still waiting then ends) and wait for
/// the writer's result.
async fn joined(
    writer: tokio::task::JoinHandle<Result<String, ObjectsError>>,
    pieces: mpsc::Sender<Piece>,
) -> Result<String, ObjectsError> {
    drop(pieces);
    writer.await.map_err(|e| ObjectsError::Io {
        what: "writing",
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?
}

fn write_pieces(
    tmp: &Path,
    head: Vec<u8>,
    mut md5: Md5,
    mut rx: mpsc::Receiver<Piece>,
) -> Result<String, ObjectsError> {
    let mut file = File::create(tmp).map_err(ObjectsError::io("creating", tmp))?;
    let mut buf = head;
    buf.reserve(WRITE_BYTES);
    let mut written = 0u64;
    let mut started_to = 0u64;
    while let Some(piece) = rx.blocking_recv() {
        match piece {
            Piece::Data(chunk) => {
                md5.update(&chunk);
                buf.extend_from_slice(&chunk);
                if buf.len() < WRITE_BYTES {
                    continue;
                }
                file.write_all(&buf)
                    .map_err(ObjectsError::io("writing", tmp))?;
                written += buf.len() as u64;
                buf.clear();
                if written - started_to >= WRITEBACK_STEP {
                    start_writeback(&file, started_to, written - started_to);
                    started_to = written;
                }
            }
            Piece::End => {
                file.write_all(&buf)
                    .map_err(ObjectsError::io("writing", tmp))?;
                file.sync_all().map_err(ObjectsError::io("syncing", tmp))?;
                return Ok(hex::encode(md5.finalize()));
            }
        }
    }
    // The sender went without an end: the body failed. Nothing to sync.
    Err(ObjectsError::Io {
        what: "writing",
        path: tmp.to_path_buf(),
        source: std::io::Error::other("the upload's body ended early"),
    })
}

/// Ask the kernel to start writing `len` bytes from `offset` to the disk,
/// without waiting. Only a head start for the closing `fsync`: a failure
/// here (a filesystem without it) changes nothing, so it is ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range reads no memory; the descriptor is open for
    // the whole call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_land_in_order_with_their_md5() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("upload");
        let head = vec![7u8; 100];
        let mut md5 = Md5::new();
        md5.update(&head);
        let w = StreamingWrite::start(tmp.clone(), head.clone(), md5);
        let mut all = head;
        // More than a write-back step, in uneven chunks.
        for i in 0..700u32 {
            let chunk: Vec<u8> = (0..(17_000 + i)).map(|j| (i ^ j) as u8).collect();
            all.extend_from_slice(&chunk);
            w.send(bytes::Bytes::from(chunk)).await.expect("send");
        }
        assert!(all.len() as u64 > WRITEBACK_STEP);
        let md5_hex = w.finish().await.expect("finish");
        assert_eq!(md5_hex, hex::encode(Md5::digest(&all)));
        assert_eq!(std::fs::read(&tmp).expect("read back"), all);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_write_ends_without_an_md5() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("upload");
        let w = StreamingWrite::start(tmp.clone(), vec![1; 10], Md5::new());
        w.send(bytes::Bytes::from(vec![2u8; 4096]))
            .await
            .expect("send");
        w.abandon().await;
        // The file exists (the caller removes it) and the writer is done.
        assert!(tmp.exists());
    }
}
