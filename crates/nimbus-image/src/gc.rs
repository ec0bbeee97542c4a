//! Garbage collection: everything in `blobs/` and `layers/` that no kept image
//! references goes. A layer dir is first renamed into `tmp/` and only then deleted, so
//! a half-deleted layer is never visible under `layers/`.

use std::collections::HashSet;
use std::path::Path;

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

pub(crate) fn collect(
    blobs: &BlobDir,
    layers_dir: &Path,
    tmp_dir: &Path,
    keep: &[ImportedImage],
) -> Result<GcReport, ImageError> {
    let mut keep_blobs: HashSet<String> = HashSet::new();
    let mut keep_layers: HashSet<String> = HashSet::new();
    for image in keep {
        for layer in &image.layers {
            let hex = digest_hex(layer, "layer of an image to keep")?.to_string();
            keep_blobs.insert(hex.clone());
            keep_layers.insert(hex);
        }
        if let Some(kernel) = &image.kernel {
            if let Some(initrd) = &kernel.initrd {
                keep_blobs.insert(digest_hex(initrd, "initrd of an image to keep")?.to_string());
            }
        }
        let manifest_hex = digest_hex(&image.manifest_digest, "manifest of an image to keep")?;
        keep_blobs.insert(manifest_hex.to_string());
        if image.format == ImageFormat::Oci {
            let config = blobs
                .read_small(manifest_hex, MAX_METADATA_BYTES)
                .and_then(|data| {
                    oci::manifest_config_digest(
                        &data,
                        &format!("manifest {}", image.manifest_digest),
                    )
                })
                .and_then(|digest| {
                    digest_hex(&digest, "config of a kept manifest").map(str::to_string)
                });
            match config {
                Ok(hex) => {
                    keep_blobs.insert(hex);
                }
                // The config was copied into ImportedImage at import; losing its blob
                // costs nothing, so a damaged manifest must not block collection.
                Err(e) => tracing::warn!(
                    manifest_digest = %image.manifest_digest,
                    error = %e,
                    "cannot read kept manifest; its config blob may be collected"
                ),
            }
        }
    }

    let mut report = GcReport::default();
    for name in list_hex_names(blobs.dir())? {
        if keep_blobs.contains(&name) {
            continue;
        }
        let path = blobs.path(&name);
        let size = std::fs::symlink_metadata(&path)
            .map(|m| m.len())
            .unwrap_or(0);
        std::fs::remove_file(&path).map_err(|e| ImageError::io("remove blob", &path, e))?;
        report.freed_bytes = report.freed_bytes.saturating_add(size);
        report.removed_blobs.push(digest_from_hex(&name));
    }
    for name in list_hex_names(layers_dir)? {
        if keep_layers.contains(&name) {
            continue;
        }
        let path = layers_dir.join(&name);
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
