//! The outer tar of an image archive (an OCI layout or a docker-archive): walking its
//! entries under the rules every format shares, remembering where each file's bytes
//! sit, and reading them back with their digest verified. Also the shape every format
//! resolves to ([`ResolvedImage`]), which [`crate::ImageStore`] imports.
//!
//! Nothing is extracted while scanning: a blob is copied out of the archive file only
//! once the format's documents say it is needed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::blob::{self, digest_from_hex};
use crate::error::ImageError;
use crate::oci::{verify_digest, ConfigFile, MAX_METADATA_BYTES};
use crate::stream::{GuardedReader, Tripped, MAX_HEADER_BYTES_PER_ENTRY};
use crate::unpack::split_path;
use crate::Limits;

/// Where a file's bytes sit inside the archive file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlobLocation {
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// One entry of the outer tar, as a format's scanner sees it.
pub(crate) struct ScannedEntry<'a> {
    /// The path as stored, for messages.
    pub(crate) name: String,
    /// Its plain components, or why the path is unsafe (`..`, absolute, ...).
    pub(crate) parts: Result<Vec<String>, String>,
    pub(crate) kind: EntryType,
    pub(crate) location: BlobLocation,
    /// For a symlink: where it points, as stored.
    pub(crate) link_target: Option<String>,
    pub(crate) content: &'a mut dyn Read,
}

impl ScannedEntry<'_> {
    pub(crate) fn is_file(&self) -> bool {
        matches!(self.kind, EntryType::Regular | EntryType::Continuous)
    }
}

/// Walks every entry of the uncompressed tar at `path`, bounded by `limits.max_entries`
/// and the per-entry header cap; `visit` decides what each entry means.
pub(crate) fn walk_archive(
    path: &Path,
    limits: &Limits,
    visit: &mut dyn FnMut(ScannedEntry<'_>) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io("open staged archive", path, e))?;
    let (reader, guard) = GuardedReader::new(file, u64::MAX, false);
    let mut archive = tar::Archive::new(reader);
    let tar_error = |e: io::Error| ImageError::MalformedTar {
        what: "image archive".to_string(),
        reason: match guard.tripped() {
            Some(Tripped::HeaderCap) => format!(
                "the headers of one entry exceed {MAX_HEADER_BYTES_PER_ENTRY} bytes \
                 (oversized PAX or GNU long-name record)"
            ),
            _ => e.to_string(),
        },
    };
    let mut entries = archive.entries_with_seek().map_err(tar_error)?;
    let mut count: u64 = 0;
    loop {
        guard.enter_headers();
        let next = entries.next();
        guard.enter_content();
        let mut entry = match next {
            None => return Ok(()),
            Some(entry) => entry.map_err(tar_error)?,
        };
        count += 1;
        if count > limits.max_entries {
            return Err(ImageError::TooManyEntries {
                what: "image archive".to_string(),
                limit: limits.max_entries,
            });
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let path_bytes = entry.path_bytes().into_owned();
        let link_target = match kind {
            EntryType::Symlink | EntryType::Link => entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned()),
            _ => None,
        };
        let location = BlobLocation {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        visit(ScannedEntry {
            name: String::from_utf8_lossy(&path_bytes).into_owned(),
            parts: split_path(&path_bytes).map(|parts| {
                parts
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect()
            }),
            kind,
            location,
            link_target,
            content: &mut entry,
        })?;
    }
}

/// Reads a small top-level file of an archive; a second copy or an oversized one is an
/// error reason (reported only if the archive turns out to be of that format).
pub(crate) fn read_small(
    entry: &mut dyn Read,
    name: &str,
    slot: &mut Option<Vec<u8>>,
) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("`{name}` appears twice"));
    }
    let mut data = Vec::new();
    entry
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if data.len() as u64 > MAX_METADATA_BYTES {
        return Err(format!("larger than {MAX_METADATA_BYTES} bytes"));
    }
    *slot = Some(data);
    Ok(())
}

/// The staged archive file, read back by location.
pub(crate) struct ArchiveFile {
    pub(crate) path: PathBuf,
}

impl ArchiveFile {
    pub(crate) fn open(&self, location: BlobLocation) -> Result<impl Read, ImageError> {
        let mut file = File::open(&self.path)
            .map_err(|e| ImageError::io("open staged archive", &self.path, e))?;
        file.seek(SeekFrom::Start(location.offset))
            .map_err(|e| ImageError::io("seek in staged archive", &self.path, e))?;
        Ok(file.take(location.size))
    }

    /// Reads a metadata file (at most [`MAX_METADATA_BYTES`]) whole.
    pub(crate) fn read_metadata(
        &self,
        location: BlobLocation,
        what: &str,
    ) -> Result<Vec<u8>, ImageError> {
        if location.size > MAX_METADATA_BYTES {
            return Err(ImageError::MetadataTooLarge {
                file: what.to_string(),
                size: location.size,
                limit: MAX_METADATA_BYTES,
            });
        }
        let mut data = Vec::new();
        self.open(location)?
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io("read staged archive", &self.path, e))?;
        Ok(data)
    }

    /// The hex sha256 of a file's bytes in the archive.
    pub(crate) fn hash(&self, location: BlobLocation) -> Result<String, ImageError> {
        blob::HashingReader::new(self.open(location)?)
            .finish()
            .map(|(hex, _)| hex)
            .map_err(|e| ImageError::io("read staged archive", &self.path, e))
    }

    /// Copies a file out of the archive into `dest`, verifying it hashes to `hex`.
    pub(crate) fn copy_verified(
        &self,
        location: BlobLocation,
        hex: &str,
        dest: &Path,
    ) -> Result<(), ImageError> {
        let mut source = self.open(location)?;
        let (actual, _) =
            blob::copy_hashed_to_new_file(&mut source, dest, location.size, &mut |_| {}).map_err(
                |e| match e {
                    blob::CopyError::Read(e) => {
                        ImageError::io("read staged archive", &self.path, e)
                    }
                    blob::CopyError::Write(e) => ImageError::io("write staged blob", dest, e),
                    blob::CopyError::TooLarge => ImageError::io(
                        "copy blob",
                        dest,
                        io::Error::other("blob longer than its tar entry"),
                    ),
                },
            )?;
        verify_digest(&format!("blob {}", digest_from_hex(hex)), hex, &actual)
    }
}

/// The OS/architecture an image manifest is for, in OCI names (`linux`, `amd64`,
/// `arm64` + variant `v8`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PlatformName {
    pub(crate) os: String,
    pub(crate) architecture: String,
    pub(crate) variant: Option<String>,
}

/// One platform's image, with its documents verified and parsed.
pub(crate) struct ResolvedManifest {
    pub(crate) platform: PlatformName,
    pub(crate) manifest_hex: String,
    pub(crate) manifest_bytes: Vec<u8>,
    pub(crate) config_hex: String,
    pub(crate) config_bytes: Vec<u8>,
    pub(crate) config: ConfigFile,
    /// Layer blob hex digests, lowest first, each checked present with the right size.
    pub(crate) layers: Vec<String>,
}

/// What an archive holds once resolved: one manifest per platform, the default one
/// (linux/amd64 when offered) first. The registry resolves pushed manifests to the same
/// shape and imports them through the same path.
pub(crate) struct ResolvedImage {
    pub(crate) manifests: Vec<ResolvedManifest>,
}

/// An archive format: resolves its documents, then hands out blobs by digest.
pub(crate) trait ImageArchive {
    /// Parses and verifies the archive's documents.
    fn resolve(&mut self) -> Result<ResolvedImage, ImageError>;
    /// Copies the blob `hex` into a new file at `dest`, verifying its digest.
    fn copy_blob(&self, hex: &str, dest: &Path) -> Result<(), ImageError>;
}
