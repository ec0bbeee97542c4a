//! Byte-stream plumbing shared by archive detection and layer unpacking: compression
//! detection by magic bytes, and a guard that bounds what the `tar` crate may read.
//!
//! The guard exists because `tar` buffers PAX and GNU long-name records in memory with
//! their declared size, and skips unread entry data by reading it: a hostile layer could
//! otherwise make us allocate or decompress without bound before any file is written.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

/// Most bytes the tar reader may consume between two entries (headers, PAX records, GNU
/// long names, padding). Real records are a few KiB; PATH_MAX is 4 KiB.
pub(crate) const MAX_HEADER_BYTES_PER_ENTRY: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

pub(crate) fn compression_of(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if prefix.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// True if `block` starts with a tar header: POSIX/GNU magic, or (for old v7 archives) a
/// header whose checksum field matches its contents.
pub(crate) fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let computed: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    !digits.is_empty() && stored == computed
}

/// Wraps `reader` in the decompressor its first bytes call for.
pub(crate) fn decompress<'a, R: Read + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let whole = io::Cursor::new(prefix[..filled].to_vec()).chain(reader);
    Ok(match compression_of(&prefix[..filled]) {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(whole)?),
    })
}

/// Why a guarded stream refused to deliver more bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tripped {
    /// The whole stream passed its byte cap (decompression bomb).
    StreamCap,
    /// Headers between two entries passed [`MAX_HEADER_BYTES_PER_ENTRY`].
    HeaderCap,
}

struct GuardState {
    total: Cell<u64>,
    stream_cap: u64,
    in_headers: Cell<bool>,
    header_bytes: Cell<u64>,
    tripped: Cell<Option<Tripped>>,
    hasher: RefCell<Option<Sha256>>,
}

/// The caller's handle on a [`GuardedReader`]: switches between "headers" and "content"
/// phases and reads the outcome.
#[derive(Clone)]
pub(crate) struct StreamGuard {
    state: Rc<GuardState>,
}

impl StreamGuard {
    /// Call before asking the tar iterator for the next entry.
    pub(crate) fn enter_headers(&self) {
        self.state.in_headers.set(true);
        self.state.header_bytes.set(0);
    }

    /// Call once an entry was handed out; its data does not count as header bytes.
    pub(crate) fn enter_content(&self) {
        self.state.in_headers.set(false);
    }

    pub(crate) fn tripped(&self) -> Option<Tripped> {
        self.state.tripped.get()
    }

    /// Hex sha256 of every byte delivered so far (the layer's DiffID once drained).
    pub(crate) fn digest_hex(&self) -> Option<String> {
        self.state
            .hasher
            .borrow()
            .as_ref()
            .map(|h| hex::encode(h.clone().finalize()))
    }
}

/// A reader bounded by a [`StreamGuard`].
pub(crate) struct GuardedReader<R> {
    inner: R,
    state: Rc<GuardState>,
}

impl<R> GuardedReader<R> {
    pub(crate) fn new(inner: R, stream_cap: u64, hash: bool) -> (Self, StreamGuard) {
        let state = Rc::new(GuardState {
            total: Cell::new(0),
            stream_cap,
            in_headers: Cell::new(true),
            header_bytes: Cell::new(0),
            tripped: Cell::new(None),
            hasher: RefCell::new(hash.then(Sha256::new)),
        });
        let guard = StreamGuard {
            state: Rc::clone(&state),
        };
        (GuardedReader { inner, state }, guard)
    }

    fn trip(&self, why: Tripped) -> io::Error {
        self.state.tripped.set(Some(why));
        io::Error::other(format!("stream guard tripped: {why:?}"))
    }
}

impl<R: Read> Read for GuardedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = self.state.tripped.get() {
            return Err(self.trip(why));
        }
        let n = self.inner.read(buf)?;
        let total = self.state.total.get() + n as u64;
        self.state.total.set(total);
        if total > self.state.stream_cap {
            return Err(self.trip(Tripped::StreamCap));
        }
        if self.state.in_headers.get() {
            let header_bytes = self.state.header_bytes.get() + n as u64;
            self.state.header_bytes.set(header_bytes);
            if header_bytes > MAX_HEADER_BYTES_PER_ENTRY {
                return Err(self.trip(Tripped::HeaderCap));
            }
        }
        if let Some(hasher) = self.state.hasher.borrow_mut().as_mut() {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for GuardedReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(compression_of(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(compression_of(&ZSTD_MAGIC), Compression::Zstd);
        assert_eq!(compression_of(b"hello"), Compression::None);
    }

    #[test]
    fn recognises_tar_headers() {
        let mut header = tar::Header::new_gnu();
        header.set_path("a").unwrap();
        header.set_size(0);
        header.set_cksum();
        assert!(looks_like_tar(header.as_bytes()));
        let mut old = tar::Header::new_old();
        old.set_path("a").unwrap();
        old.set_cksum();
        assert!(looks_like_tar(old.as_bytes()));
        assert!(!looks_like_tar(&[0u8; 512]));
        assert!(!looks_like_tar(&[b'x'; 512]));
    }

    #[test]
    fn guard_caps_stream_and_header_bytes() {
        let data = vec![0u8; 4096];
        let (mut reader, guard) = GuardedReader::new(&data[..], 1000, false);
        guard.enter_content();
        assert!(io::copy(&mut reader, &mut io::sink()).is_err());
        assert_eq!(guard.tripped(), Some(Tripped::StreamCap));

        let big = vec![0u8; (MAX_HEADER_BYTES_PER_ENTRY + 1) as usize];
        let (mut reader, guard) = GuardedReader::new(&big[..], u64::MAX, true);
        guard.enter_headers();
        assert!(io::copy(&mut reader, &mut io::sink()).is_err());
        assert_eq!(guard.tripped(), Some(Tripped::HeaderCap));
    }
}
