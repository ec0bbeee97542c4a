//! Nimbus image store: imports OCI image archives and root-filesystem tarballs into a
//! content-addressed blob store, and unpacks each layer once into a directory that
//! overlayfs can stack (the server imports, the agent asks for layer dirs).
//!
//! Images come from users and are hostile until proven otherwise. This crate must never
//! create, modify or remove anything outside its store root: no entry path with `..` or
//! an absolute path, no write through a symlink stored in an image, no hard link to a
//! file outside the layer, no device nodes. It must never let a rejected import leave
//! anything under `blobs/` or `layers/`, and never let a compressed layer expand past
//! [`Limits`]. Blocking work: call it from `spawn_blocking`.

mod api;
mod archive;
mod blob;
mod docker_archive;
mod error;
mod fetched;
mod gc;
mod import;
mod lookalike;
mod merged;
mod oci;
mod platform;
mod pushed;
mod safe_fs;
mod stream;
#[doc(hidden)]
pub mod testing;
mod unpack;
mod uploads;
mod vm;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use error::ImageError;
pub use fetched::check_digest;
pub use gc::GcReport;
pub use merged::{MergedError, MergedView};
pub use platform::{host_platform, oci_architecture, ImagePlatform};
pub use pushed::{
    manifest_references, ManifestRefs, PushError, Reference, MAX_MANIFEST_BYTES, MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
pub use uploads::{OpenUpload, UploadBudget};
pub use vm::{DiskFormat, DiskInfo, KernelEntry, KernelInfo};

use blob::{digest_from_hex, digest_hex, BlobDir, CopyError, HashingReader};
use unpack::{unpack_layer, UnpackBudget};

/// Bounds applied to every import and unpack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size of the uploaded archive.
    pub max_archive_bytes: u64,
    /// Total bytes written when unpacking (decompression-bomb guard).
    pub max_unpacked_bytes: u64,
    /// Tar entries per layer (and in the outer OCI archive).
    pub max_entries: u64,
    /// Whether regular files may carry setuid/setgid bits (busybox `su` needs them).
    pub allow_setuid: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_bytes: 4 << 30,
            max_unpacked_bytes: 8 << 30,
            max_entries: 500_000,
            allow_setuid: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Oci,
    /// `docker save` / `podman save` output (`manifest.json` + layer tars).
    #[serde(rename = "docker-archive")]
    DockerArchive,
    Rootfs,
    /// A VM disk (qcow2 or raw); see [`ImportedImage::disk`].
    Disk,
    /// A directly booted kernel (+ initrd); see [`ImportedImage::kernel`].
    Kernel,
}

/// What the runtime needs from an image config.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image in the store; persisted by the caller and handed back to
/// [`ImageStore::layer_dirs`] and [`ImageStore::gc`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImportedImage {
    pub format: ImageFormat,
    /// `sha256:...` of the manifest; for a rootfs tarball, of the layer blob.
    pub manifest_digest: String,
    /// Layer blob digests `sha256:...`, lowest first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
    /// Bytes of regular files across the image's distinct layers, unpacked.
    pub size_bytes: u64,
    pub architecture: String,
    /// Every platform of an image with a manifest, the default one (which the fields
    /// above describe) first; empty for root filesystems, disks and kernels, which run
    /// as they are on any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<ImagePlatform>,
    /// For [`ImageFormat::Disk`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskInfo>,
    /// For [`ImageFormat::Kernel`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelInfo>,
}

/// A content-addressed image store rooted at one directory:
/// `blobs/sha256/<hex>`, `layers/<hex>/`, and `tmp/` for staging.
///
/// Imports may run concurrently (staging is per import, commits are renames), but
/// [`ImageStore::gc`] must not run while an import or unpack is in progress.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobDir,
    layers_dir: PathBuf,
    tmp_dir: PathBuf,
    limits: Limits,
    /// Digests of upload sessions computed as their bytes arrive.
    upload_hashes: uploads::RunningHashes,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` and removes leftovers of
    /// interrupted imports from `root/tmp`.
    pub fn open(root: &Path, limits: Limits) -> Result<ImageStore, ImageError> {
        std::fs::create_dir_all(root).map_err(|e| ImageError::io("create image store", root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| ImageError::io("resolve image store path", root, e))?;
        let blobs = BlobDir::new(root.join("blobs").join("sha256"));
        let layers_dir = root.join("layers");
        let tmp_dir = root.join("tmp");
        for dir in [blobs.dir(), &layers_dir, &tmp_dir] {
            std::fs::create_dir_all(dir).map_err(|e| ImageError::io("create", dir, e))?;
        }
        // Layers hold setuid binaries of other people's images, blobs hold
        // tenants' disks and kernels: keep host users out.
        let blobs_root = root.join("blobs");
        for dir in [&layers_dir, &tmp_dir, &blobs_root] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| ImageError::io("restrict permissions of", dir, e))?;
        }
        let entries =
            std::fs::read_dir(&tmp_dir).map_err(|e| ImageError::io("list", &tmp_dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| ImageError::io("list", &tmp_dir, e))?
                .path();
            remove_any(&path).map_err(|e| ImageError::io("remove stale staging", &path, e))?;
            tracing::info!(path = %path.display(), "removed stale staging data");
        }
        Ok(ImageStore {
            root,
            blobs,
            layers_dir,
            tmp_dir,
            limits,
            upload_hashes: uploads::RunningHashes::default(),
        })
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports an OCI image layout tarball, a docker-archive or a root-filesystem
    /// tarball (each plain, gzip or zstd) read from `reader`. `progress` receives the number of archive bytes read so
    /// far. On error nothing new is left in `blobs/`, `layers/` or `tmp/`.
    pub fn import(
        &self,
        reader: impl Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ImportedImage, ImageError> {
        let mut reader = reader;
        let staging = Staging::create(&self.tmp_dir, "import")?;
        let archive_path = staging.path.join("archive");
        let (archive_hex, archive_size) = blob::copy_hashed_to_new_file(
            &mut reader,
            &archive_path,
            self.limits.max_archive_bytes,
            progress,
        )
        .map_err(|e| match e {
            CopyError::Read(source) => ImageError::ReadArchive { source },
            CopyError::Write(e) => ImageError::io("write staged archive", &archive_path, e),
            CopyError::TooLarge => ImageError::ArchiveTooLarge {
                limit: self.limits.max_archive_bytes,
            },
        })?;
        tracing::debug!(bytes = archive_size, digest = %digest_from_hex(&archive_hex), "archive received");

        let mut head = Vec::with_capacity(512);
        File::open(&archive_path)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .map_err(|e| ImageError::io("read staged archive", &archive_path, e))?;
        let image = match stream::compression_of(&head) {
            stream::Compression::Gzip | stream::Compression::Zstd => {
                self.import_compressed(&staging, &archive_path, &archive_hex)?
            }
            stream::Compression::None if stream::looks_like_tar(&head) => {
                self.import_tar(&staging, &archive_path, &archive_hex)?
            }
            stream::Compression::None => {
                return Err(ImageError::NotAnImage {
                    detail: if head.is_empty() {
                        "the archive is empty".to_string()
                    } else {
                        "its first bytes are neither gzip, zstd nor a tar header".to_string()
                    },
                })
            }
        };
        tracing::info!(
            manifest_digest = %image.manifest_digest,
            format = ?image.format,
            layers = image.layers.len(),
            size_bytes = image.size_bytes,
            "image imported"
        );
        Ok(image)
    }

    fn import_rootfs(
        &self,
        staging: &Staging,
        archive_path: &Path,
        hex: &str,
        compressed: bool,
    ) -> Result<ImportedImage, ImageError> {
        let digest = digest_from_hex(hex);
        let mut new_layer = None;
        if !self.layer_path(hex).is_dir() {
            let staged = staging.path.join(format!("layer-{hex}"));
            let source = File::open(archive_path)
                .map_err(|e| ImageError::io("open staged archive", archive_path, e))?;
            let mut budget = UnpackBudget::new(self.limits.max_unpacked_bytes);
            unpack_layer(source, &staged, &digest, &self.limits, &mut budget)?;
            if compressed {
                lookalike::refuse_lookalike(&lookalike::top_level_names(&staged), true)?;
            }
            new_layer = Some(staged);
        }
        if !self.blobs.contains(hex) {
            self.blobs.commit(archive_path, hex)?;
        }
        if let Some(staged) = new_layer {
            self.commit_layer(&staged, hex)?;
        }
        Ok(ImportedImage {
            format: ImageFormat::Rootfs,
            manifest_digest: digest.clone(),
            layers: vec![digest],
            config: ImageConfig::default(),
            size_bytes: self.layer_size(hex)?,
            architecture: "amd64".to_string(),
            platforms: Vec::new(),
            disk: None,
            kernel: None,
        })
    }

    /// Absolute paths of the image's unpacked layer directories, lowest first (reverse
    /// them for overlayfs `lowerdir`). A missing layer dir is unpacked from its blob.
    /// A layer listed more than once appears only at its uppermost position: overlayfs
    /// refuses a repeated lowerdir, and the merged view is the same.
    pub fn layer_dirs(&self, image: &ImportedImage) -> Result<Vec<PathBuf>, ImageError> {
        let mut hexes: Vec<&str> = Vec::new();
        for digest in image.layers.iter().rev() {
            let hex = digest_hex(digest, "image layer")?;
            if !hexes.contains(&hex) {
                hexes.push(hex);
            }
        }
        hexes.reverse();
        let mut dirs = Vec::with_capacity(hexes.len());
        for hex in hexes {
            let path = self.layer_path(hex);
            if !path.is_dir() {
                self.unpack_stored_layer(hex)?;
            }
            dirs.push(path);
        }
        Ok(dirs)
    }

    /// The image's merged filesystem, read-only and without a mount (unpacks missing
    /// layers first, as [`ImageStore::layer_dirs`]).
    pub fn merged_view(&self, image: &ImportedImage) -> Result<MergedView, ImageError> {
        let dirs = self.layer_dirs(image)?;
        MergedView::open(&dirs).map_err(|e| ImageError::Io {
            action: "open the layers of",
            path: PathBuf::from(&image.manifest_digest),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Removes blobs and layer dirs that none of `keep` references.
    pub fn gc(&self, keep: &[ImportedImage]) -> Result<GcReport, ImageError> {
        self.gc_keeping(keep, &[])
    }

    /// [`ImageStore::gc`] that also keeps the blobs `also_keep` names (a
    /// registry's pushed blobs and manifests that no image uses yet).
    pub fn gc_keeping(
        &self,
        keep: &[ImportedImage],
        also_keep: &[String],
    ) -> Result<GcReport, ImageError> {
        let mut keep = gc::KeepSet::imported(&self.blobs, keep)?;
        for digest in also_keep {
            keep.blobs
                .insert(digest_hex(digest, "blob to keep")?.to_string());
        }
        gc::collect(
            &self.blobs,
            &self.layers_dir,
            &self.tmp_dir,
            &keep,
            std::time::Duration::ZERO,
        )
    }

    /// Digest (`sha256:...`) → size of every stored blob `images` keep:
    /// their layers, manifests, configs, disks, kernels and initrds, each
    /// once (what a project "holds" in the store). Blobs not stored are
    /// left out.
    pub fn blobs_held_by(
        &self,
        images: &[ImportedImage],
    ) -> Result<std::collections::BTreeMap<String, u64>, ImageError> {
        let keep = gc::KeepSet::imported(&self.blobs, images)?;
        let mut held = std::collections::BTreeMap::new();
        for hex in keep.blobs {
            let digest = digest_from_hex(&hex);
            if let Some(size) = self.blob_size(&digest)? {
                held.insert(digest, size);
            }
        }
        Ok(held)
    }

    fn layer_path(&self, hex: &str) -> PathBuf {
        self.layers_dir.join(hex)
    }

    fn layer_size(&self, hex: &str) -> Result<u64, ImageError> {
        let path = self.layer_path(hex);
        safe_fs::open_root(&path)
            .and_then(|fd| safe_fs::tree_size(&fd))
            .map_err(|e| ImageError::io("measure layer", path, e))
    }

    /// Renames a staged layer into `layers/`. Losing a race to another import that
    /// committed the same layer is fine: its content is identical.
    fn commit_layer(&self, staged: &Path, hex: &str) -> Result<(), ImageError> {
        let dest = self.layer_path(hex);
        match std::fs::rename(staged, &dest) {
            Ok(()) => Ok(()),
            Err(_) if dest.is_dir() => Ok(()),
            Err(e) => Err(ImageError::io("store layer", dest, e)),
        }
    }

    fn unpack_stored_layer(&self, hex: &str) -> Result<(), ImageError> {
        let digest = digest_from_hex(hex);
        if !self.blobs.contains(hex) {
            return Err(ImageError::LayerMissing { digest });
        }
        let staging = Staging::create(&self.tmp_dir, "unpack")?;
        let blob_path = self.blobs.path(hex);
        let file =
            File::open(&blob_path).map_err(|e| ImageError::io("open blob", &blob_path, e))?;
        let mut hashing = HashingReader::new(file);
        let staged = staging.path.join("layer");
        let mut budget = UnpackBudget::new(self.limits.max_unpacked_bytes);
        let unpacked = unpack_layer(&mut hashing, &staged, &digest, &self.limits, &mut budget);
        // Check the digest even when unpacking failed: a damaged blob explains both.
        let (actual, _) = hashing
            .finish()
            .map_err(|e| ImageError::io("read blob", &blob_path, e))?;
        oci::verify_digest(
            &format!(
                "stored blob {} (the image store is damaged)",
                blob_path.display()
            ),
            hex,
            &actual,
        )?;
        unpacked?;
        tracing::info!(layer = %digest, "unpacked layer from stored blob");
        self.commit_layer(&staged, hex)
    }
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A private directory under `tmp/`, removed with everything in it when dropped, so a
/// failed import leaves nothing behind. Whatever should survive is renamed out first.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(tmp_dir: &Path, purpose: &str) -> Result<Staging, ImageError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                "{purpose}-{}-{}-{nanos:09}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = tmp_dir.join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Staging { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::io("create staging directory", path, e)),
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_any(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove staging directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_errors_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ImageStore>();
        assert_send_sync::<ImageError>();
        assert_send_sync::<ImportedImage>();
    }

    #[test]
    fn the_blobs_images_hold_are_named_once_with_their_sizes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ImageStore::open(dir.path(), Limits::default()).expect("store");
        let tar = crate::testing::one_file_rootfs_tar("held");
        let image = store
            .import(std::io::Cursor::new(&tar), &mut |_| {})
            .expect("import");
        let other = store
            .import(
                std::io::Cursor::new(crate::testing::one_file_rootfs_tar("other")),
                &mut |_| {},
            )
            .expect("import");
        let held = store
            .blobs_held_by(&[image.clone(), image.clone()])
            .expect("held");
        assert!(held.contains_key(&image.manifest_digest), "{held:?}");
        for layer in &image.layers {
            let size = store.blob_size(layer).expect("size");
            assert_eq!(held.get(layer).copied(), size, "{held:?}");
        }
        assert!(!held.keys().any(|d| other.layers.contains(d)), "{held:?}");
        let both = store.blobs_held_by(&[image, other]).expect("held");
        assert!(both.len() > held.len());
        assert!(store.blobs_held_by(&[]).expect("none").is_empty());
    }

    #[test]
    fn default_limits_are_the_documented_ones() {
        let limits = Limits::default();
        assert_eq!(limits.max_archive_bytes, 4 * 1024 * 1024 * 1024);
        assert_eq!(limits.max_unpacked_bytes, 8 * 1024 * 1024 * 1024);
        assert_eq!(limits.max_entries, 500_000);
        assert!(limits.allow_setuid);
    }
}
