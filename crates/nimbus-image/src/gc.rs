//! Garbage collection: everything in `blobs/` and `layers/` that no kept image
//! references goes. A layer dir is first renamed into `tmp/` and only then deleted, so
//! a half-deleted layer is never visible under `layers/`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crate::blob::{digest_from_hex, digest_hex, is_sha256_hex, BlobDir};
use crate::error::ImageError;
use crate::oci::{self, MAX_METADATA_BYTES};
use crate::{safe_fs, ImageFormat, ImportedImage, Staging};

/// What [`crate::ImageStore::gc`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Digests (`sha256:...`) of removed blobs.
    pub removed_blobs: Vec<String>,
    /// Digests (`sha256:...`) of layers whose unpacked directory was removed.
    pub removed_layers: Vec<String>,
    /// Bytes freed: blob sizes plus regular-file bytes of removed layer dirs.
    pub freed_bytes: u64,
}

/// The blobs (hex) and unpacked layers (hex) a collection keeps.
#[derive(Debug, Default)]
pub(crate) struct KeepSet {
    pub(crate) blobs: HashSet<String>,
    pub(crate) layers: HashSet<String>,
}

impl KeepSet {
    /// What a host needs to run `keep`: layers, disks, kernels, initrds.
    pub(crate) fn to_run(keep: &[ImportedImage]) -> Result<KeepSet, ImageError> {
        let mut set = KeepSet::default();
        for image in keep {
            let platform_layers = image.platforms.iter().flat_map(|p| &p.layers);
            for layer in image.layers.iter().chain(platform_layers) {
                let hex = digest_hex(layer, "layer of an image to keep")?.to_string();
                set.layers.insert(hex.clone());
                set.blobs.insert(hex);
            }
            for digest in image.runtime_blobs() {
                set.blobs
                    .insert(digest_hex(&digest, "blob of an image to keep")?.to_string());
            }
        }
        Ok(set)
    }

    /// What an importing store keeps: everything to run the images, plus
    /// their manifests and configs.
    pub(crate) fn imported(blobs: &BlobDir, keep: &[ImportedImage]) -> Result<KeepSet, ImageError> {
        let mut set = KeepSet::to_run(keep)?;
        for image in keep {
            if !matches!(image.format, ImageFormat::Oci | ImageFormat::DockerArchive) {
                let manifest_hex =
                    digest_hex(&image.manifest_digest, "manifest of an image to keep")?;
                set.blobs.insert(manifest_hex.to_string());
                continue;
            }
            let platform_manifests = image.platforms.iter().map(|p| &p.manifest_digest);
            for manifest in std::iter::once(&image.manifest_digest).chain(platform_manifests) {
                set.keep_manifest_and_config(blobs, manifest)?;
            }
        }
        Ok(set)
    }
}

impl KeepSet {
    /// Keeps a stored manifest and the config it names.
    fn keep_manifest_and_config(
        &mut self,
        blobs: &BlobDir,
        manifest_digest: &str,
    ) -> Result<(), ImageError> {
        let manifest_hex = digest_hex(manifest_digest, "manifest of an image to keep")?;
        self.blobs.insert(manifest_hex.to_string());
        let config = blobs
            .read_small(manifest_hex, MAX_METADATA_BYTES)
            .and_then(|data| {
                oci::manifest_config_digest(&data, &format!("manifest {manifest_digest}"))
            })
            .and_then(|digest| {
                digest_hex(&digest, "config of a kept manifest").map(str::to_string)
            });
        match config {
            Ok(hex) => {
                self.blobs.insert(hex);
            }
            // The config was copied into ImportedImage at import; losing its blob
            // costs nothing, so a damaged manifest must not block collection.
            Err(e) => tracing::warn!(
                manifest_digest = %manifest_digest,
                error = %e,
                "cannot read kept manifest; its config blob may be collected"
            ),
        }
        Ok(())
    }
}

/// Removes what `keep` does not hold and changed longer than `min_age` ago
/// (its inode's change time: a blob or layer that just arrived is young
/// whatever times its files carry).
pub(crate) fn collect(
    blobs: &BlobDir,
    layers_dir: &Path,
    tmp_dir: &Path,
    keep: &KeepSet,
    min_age: Duration,
) -> Result<GcReport, ImageError> {
    let (keep_blobs, keep_layers) = (&keep.blobs, &keep.layers);
    let mut report = GcReport::default();
    for name in list_hex_names(blobs.dir())? {
        let path = blobs.path(&name);
        if keep_blobs.contains(&name) || is_younger(&path, min_age) {
            continue;
        }
        let size = std::fs::symlink_metadata(&path)
            .map(|m| m.len())
            .unwrap_or(0);
        std::fs::remove_file(&path).map_err(|e| ImageError::io("remove blob", &path, e))?;
        report.freed_bytes = report.freed_bytes.saturating_add(size);
        report.removed_blobs.push(digest_from_hex(&name));
    }
    for name in list_hex_names(layers_dir)? {
        let path = layers_dir.join(&name);
        if keep_layers.contains(&name) || is_younger(&path, min_age) {
            continue;
        }
        let size = safe_fs::open_root(&path)
            .and_then(|fd| safe_fs::tree_size(&fd))
            .unwrap_or(0);
        let trash = Staging::create(tmp_dir, "gc")?;
        let moved = trash.path.join("layer");
        std::fs::rename(&path, &moved).map_err(|e| ImageError::io("remove layer", &path, e))?;
        drop(trash);
        report.freed_bytes = report.freed_bytes.saturating_add(size);
        report.removed_layers.push(digest_from_hex(&name));
    }
    tracing::info!(
        removed_blobs = report.removed_blobs.len(),
        removed_layers = report.removed_layers.len(),
        freed_bytes = report.freed_bytes,
        "image store garbage collected"
    );
    Ok(report)
}

/// Whether `path` changed less than `min_age` ago (a vanished path counts
/// as young: someone else is handling it).
fn is_younger(path: &Path, min_age: Duration) -> bool {
    use std::os::unix::fs::MetadataExt;
    if min_age.is_zero() {
        return false;
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return true;
    };
    let changed = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        );
    changed.elapsed().map_or(true, |age| age < min_age)
}

/// Names in `dir` that look like sha256 hex digests; anything else is not ours to touch.
fn list_hex_names(dir: &Path) -> Result<Vec<String>, ImageError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))? {
        let entry = entry.map_err(|e| ImageError::io("list", dir, e))?;
        match entry.file_name().to_str() {
            Some(name) if is_sha256_hex(name) => names.push(name.to_string()),
            _ => {
                tracing::warn!(path = %entry.path().display(), "ignoring unexpected file in image store")
            }
        }
    }
    names.sort();
    Ok(names)
}
