//! The one error type of the crate. Each variant names the thing that failed and the
//! value involved, and where the fix is on the caller's side, says what to do.

use std::path::PathBuf;

/// Everything that can go wrong while importing, unpacking or collecting images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A disk image that QEMU would not run safely or at all.
    #[error("disk image {name} was rejected: {reason}")]
    BadDisk { name: String, reason: String },

    /// A kernel image that cannot be booted directly.
    #[error("kernel image {name} was rejected: {reason}")]
    BadKernel { name: String, reason: String },

    /// A host file operation failed (disk full, permissions, ...).
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Reading the uploaded archive failed.
    #[error("could not read the image archive: {source}")]
    ReadArchive {
        #[source]
        source: std::io::Error,
    },

    #[error(
        "image archive is larger than the limit of {limit} bytes (Limits::max_archive_bytes); \
         import a smaller image or raise the limit"
    )]
    ArchiveTooLarge { limit: u64 },

    #[error(
        "archive is neither an OCI image layout, a docker-archive nor a root-filesystem tarball \
         ({detail}): expected a tar with `oci-layout`, `index.json` and `blobs/sha256/...`, a tar \
         with `manifest.json` and its layers (`podman save`), or a plain, gzip or zstd tar \
         of a root filesystem; create it with `skopeo copy docker://IMAGE oci-archive:image.tar` \
         or `tar -C rootfs -c .`"
    )]
    NotAnImage { detail: String },

    /// A tarball that would import as a root filesystem but is an image archive.
    #[error(
        "not imported as a root filesystem: its top level holds {markers} and no root filesystem \
         (none of /bin, /etc, /lib, /usr, /var, /sbin, /opt, /root...); {detail}"
    )]
    LooksLikeImageArchive { markers: String, detail: String },

    #[error(
        "unexpected entry `{entry}` in the docker-archive: {reason}; a docker-archive holds \
         `manifest.json`, its config and layer files, directories, and symlinks between them; \
         re-create it with `podman save` or `docker save`"
    )]
    UnexpectedDockerEntry { entry: String, reason: String },

    #[error("invalid docker-archive: {reason}; re-create it with `podman save` or `docker save`")]
    InvalidDockerArchive { reason: String },

    #[error(
        "{what} is malformed: {reason}; re-create the archive with `skopeo copy ... oci-archive:` \
         or `tar -C rootfs -c .`"
    )]
    MalformedTar { what: String, reason: String },

    #[error(
        "unexpected entry `{entry}` in the OCI archive: {reason}; an OCI image layout holds only \
         `oci-layout`, `index.json` and regular files `blobs/sha256/<64 hex digits>`"
    )]
    UnexpectedOciEntry { entry: String, reason: String },

    #[error("OCI archive has no `{name}` at its top level; create it with `skopeo copy ... oci-archive:`")]
    MissingOciFile { name: &'static str },

    #[error("{file} is not valid JSON for its kind: {source}")]
    MalformedJson {
        file: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{file} is {size} bytes, more than the {limit}-byte limit for image metadata")]
    MetadataTooLarge { file: String, size: u64, limit: u64 },

    #[error("invalid OCI image: {reason}")]
    InvalidOci { reason: String },

    #[error("{context}: `{value}` is not a digest of the form `sha256:<64 lowercase hex digits>`")]
    InvalidDigest { context: String, value: String },

    #[error("{what}: content digest mismatch: expected {expected}, got {actual}; the archive is corrupt or was tampered with")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{what}: size mismatch: descriptor says {expected} bytes, blob has {actual} bytes")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("{referenced_by} references blob {digest}, which is not in the archive")]
    MissingBlob {
        digest: String,
        referenced_by: String,
    },

    #[error("{what} has unsupported media type `{media_type}`")]
    UnsupportedMediaType { what: String, media_type: String },

    #[error(
        "image index offers no linux image (it has {available}); copy a linux image with \
         `skopeo copy --override-os linux ...`"
    )]
    NoMatchingPlatform { available: String },

    #[error(
        "the image has {available}; this host is {host}: import an image index that includes \
         {host}, or run the instance on a host of the image's architecture"
    )]
    NoPlatformForHost { available: String, host: String },

    #[error(
        "layer {layer} unpacks to more than {limit} bytes (Limits::max_unpacked_bytes); the layer \
         may be a decompression bomb, or the limit is too low for this image"
    )]
    UnpackedTooLarge { layer: String, limit: u64 },

    #[error("{what} has more than {limit} entries (Limits::max_entries)")]
    TooManyEntries { what: String, limit: u64 },

    #[error("layer {layer}: entry `{entry}` has an unsafe path: {reason}")]
    UnsafePath {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error(
        "layer {layer}: entry `{entry}` would be written through the symlink `{symlink}` created \
         earlier in the layer (escaping symlink); tar archives never store entries below a symlink"
    )]
    EscapingSymlink {
        layer: String,
        entry: String,
        symlink: String,
    },

    #[error("layer {layer}: hard link `{entry}` -> `{target}` rejected: {reason}")]
    BadHardLink {
        layer: String,
        entry: String,
        target: String,
        reason: String,
    },

    #[error(
        "layer {layer}: entry `{entry}` is a {kind} device node; images may not carry device \
         nodes (the runtime creates /dev)"
    )]
    DeviceNode {
        layer: String,
        entry: String,
        kind: &'static str,
    },

    #[error(
        "layer {layer}: entry `{entry}` has mode {mode:o} with setuid/setgid bits, which this store \
         does not allow (Limits::allow_setuid = false)"
    )]
    SetuidNotAllowed {
        layer: String,
        entry: String,
        mode: u32,
    },

    #[error("layer {layer}: entry `{entry}` has unsupported tar entry type {kind}")]
    UnsupportedEntryType {
        layer: String,
        entry: String,
        kind: String,
    },

    #[error("layer {layer}: entry `{entry}` conflicts with an earlier entry: {reason}")]
    EntryConflict {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error("layer {layer}: could not {action} `{entry}`: {source}")]
    Extract {
        layer: String,
        entry: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "layer {digest} is neither unpacked nor stored as a blob in the image store; \
         import the image again"
    )]
    LayerMissing { digest: String },

    /// A blob fetched from another store hashed to something else.
    #[error(
        "blob {expected} arrived as {actual} ({size} bytes): the transfer was corrupted or the \
         server's copy is damaged; nothing was kept. The next start of the instance fetches it \
         again; if it keeps failing, check the server's image store and re-import the image"
    )]
    FetchedBlobMismatch {
        expected: String,
        actual: String,
        size: u64,
    },
}

impl ImageError {
    /// Whether the import failed because the filesystem holding the image
    /// store is full (or over a quota): the caller frees space, the archive
    /// itself is fine.
    pub fn is_disk_full(&self) -> bool {
        let source = match self {
            ImageError::Io { source, .. }
            | ImageError::Extract { source, .. }
            | ImageError::ReadArchive { source } => source,
            _ => return false,
        };
        matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) || source.kind() == std::io::ErrorKind::StorageFull
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_filesystem_counts_as_disk_full() {
        let full = ImageError::io(
            "write",
            "/data/images/blobs/tmp",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(full.is_disk_full());
        let quota = ImageError::Extract {
            layer: "sha256:1".into(),
            entry: "bin/sh".into(),
            action: "write",
            source: std::io::Error::from_raw_os_error(libc::EDQUOT),
        };
        assert!(quota.is_disk_full());
        let denied = ImageError::io(
            "write",
            "/data/images",
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(!denied.is_disk_full());
        assert!(!ImageError::ArchiveTooLarge { limit: 1 }.is_disk_full());
    }
}
