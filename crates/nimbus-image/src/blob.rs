//! Content-addressed blobs: digest syntax, hashing while copying, and the
//! `blobs/sha256/<hex>` layout. A blob only ever reaches its final name by `rename`
//! from the staging area after its digest was checked.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::ImageError;

const SHA256_PREFIX: &str = "sha256:";
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// The hex part of a `sha256:<64 lowercase hex>` digest. Everything that turns a digest
/// into a path goes through here, so a hostile digest can never name another file.
pub(crate) fn digest_hex<'a>(digest: &'a str, context: &str) -> Result<&'a str, ImageError> {
    match digest.strip_prefix(SHA256_PREFIX) {
        Some(hex) if is_sha256_hex(hex) => Ok(hex),
        _ => Err(ImageError::InvalidDigest {
            context: context.to_string(),
            value: digest.to_string(),
        }),
    }
}

pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn digest_from_hex(hex: &str) -> String {
    format!("{SHA256_PREFIX}{hex}")
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A reader that hashes and counts everything that passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left (so the digest covers the whole stream) and returns
    /// `(hex digest, total bytes)`.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex::encode(self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Why a bounded, hashed copy stopped.
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge,
}

/// Copies `reader` into a new file at `dest` (which must not exist), hashing on the way,
/// failing once more than `max_bytes` arrive. `on_progress` gets the running total.
/// Returns `(hex digest, size)`; the file is synced before returning.
pub(crate) fn copy_hashed_to_new_file(
    reader: &mut dyn Read,
    dest: &Path,
    max_bytes: u64,
    on_progress: &mut dyn FnMut(u64),
) -> Result<(String, u64), CopyError> {
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(CopyError::Write)?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        total += n as u64;
        if total > max_bytes {
            return Err(CopyError::TooLarge);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(CopyError::Write)?;
        on_progress(total);
    }
    file.sync_all().map_err(CopyError::Write)?;
    Ok((hex::encode(hasher.finalize()), total))
}

/// Writes a small, already verified blob to a new staging file, synced like the others.
pub(crate) fn write_new_file(dest: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = File::options().write(true).create_new(true).open(dest)?;
    file.write_all(data)?;
    file.sync_all()
}

/// The `blobs/sha256` directory of a store.
#[derive(Clone, Debug)]
pub(crate) struct BlobDir {
    dir: PathBuf,
}

impl BlobDir {
    pub(crate) fn new(dir: PathBuf) -> Self {
        BlobDir { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    pub(crate) fn contains(&self, hex: &str) -> bool {
        self.path(hex).is_file()
    }

    /// Moves a verified staged file to its content address. If another import stored the
    /// same blob meanwhile, the rename simply replaces identical bytes.
    pub(crate) fn commit(&self, staged: &Path, hex: &str) -> Result<(), ImageError> {
        let dest = self.path(hex);
        std::fs::rename(staged, &dest).map_err(|e| ImageError::io("store blob", dest, e))
    }

    /// Reads a small blob (manifest, config) fully, refusing anything over `limit` bytes.
    pub(crate) fn read_small(&self, hex: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let path = self.path(hex);
        let file = File::open(&path).map_err(|e| ImageError::io("open blob", &path, e))?;
        let mut data = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io("read blob", &path, e))?;
        if data.len() as u64 > limit {
            return Err(ImageError::MetadataTooLarge {
                file: format!("blob {}", digest_from_hex(hex)),
                size: data.len() as u64,
                limit,
            });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_accepts_only_lowercase_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(digest_hex(&format!("sha256:{hex}"), "t").unwrap(), hex);
        for bad in [
            format!("sha512:{hex}"),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            "sha256:../../etc/passwd".to_string(),
            hex.clone(),
        ] {
            assert!(digest_hex(&bad, "t").is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashed_copy_stops_past_limit_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let data = vec![7u8; 1000];
        let (hex, size) =
            copy_hashed_to_new_file(&mut &data[..], &dir.path().join("a"), 1000, &mut |n| {
                seen.push(n)
            })
            .ok()
            .unwrap();
        assert_eq!(size, 1000);
        assert_eq!(hex, sha256_hex(&data));
        assert_eq!(seen.last(), Some(&1000));
        let over = copy_hashed_to_new_file(&mut &data[..], &dir.path().join("b"), 999, &mut |_| {});
        assert!(matches!(over, Err(CopyError::TooLarge)));
    }
}
