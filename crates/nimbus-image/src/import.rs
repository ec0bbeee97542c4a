//! Importing a tar archive: classify it (OCI layout, docker-archive, or root
//! filesystem), resolve the image archives to [`ResolvedImage`], and store every
//! platform's documents and layers, verified, before anything is published.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::archive::{ImageArchive, ResolvedImage, ResolvedManifest};
use crate::blob::{self, digest_from_hex, digest_hex};
use crate::docker_archive::{self, DockerScan};
use crate::error::ImageError;
use crate::unpack::{unpack_layer, UnpackBudget};
use crate::{lookalike, oci};
use crate::{ImageFormat, ImagePlatform, ImageStore, ImportedImage, Staging};

/// Blobs and layers staged by one import, published together once all are verified.
struct Batch<'a> {
    store: &'a ImageStore,
    staging: &'a Staging,
    staged_blobs: PathBuf,
    new_blobs: Vec<(PathBuf, String)>,
    new_layers: Vec<(PathBuf, String)>,
    /// Distinct layers of the image (all platforms).
    seen: Vec<String>,
    budget: UnpackBudget,
}

impl ImageStore {
    /// An uncompressed tar: an OCI layout, a docker-archive, or a root filesystem
    /// (unless it looks like an image archive, see [`lookalike`]).
    pub(crate) fn import_tar(
        &self,
        staging: &Staging,
        archive_path: &Path,
        archive_hex: &str,
    ) -> Result<ImportedImage, ImageError> {
        if let Some(mut archive) = oci::scan_archive(archive_path, &self.limits)? {
            return self.import_archive(staging, &mut archive, ImageFormat::Oci);
        }
        match docker_archive::scan_archive(archive_path, &self.limits)? {
            DockerScan::Archive(mut archive) => {
                self.import_archive(staging, archive.as_mut(), ImageFormat::DockerArchive)
            }
            DockerScan::NotDocker { top_level } => {
                lookalike::refuse_lookalike(&top_level, false)?;
                self.import_rootfs(staging, archive_path, archive_hex, false)
            }
        }
    }

    /// A gzip or zstd tar: a root filesystem, or a compressed image archive
    /// (`docker save | gzip`), which unpacks to a top level the look-alike rule
    /// refuses; that one is decompressed and imported as an uncompressed tar.
    pub(crate) fn import_compressed(
        &self,
        staging: &Staging,
        archive_path: &Path,
        archive_hex: &str,
    ) -> Result<ImportedImage, ImageError> {
        match self.import_rootfs(staging, archive_path, archive_hex, true) {
            Err(ImageError::LooksLikeImageArchive { .. }) => {}
            other => return other,
        }
        let tar_path = staging.path.join("decompressed.tar");
        let source = File::open(archive_path)
            .map_err(|e| ImageError::io("open staged archive", archive_path, e))?;
        let mut decompressed = crate::stream::decompress(source)
            .map_err(|e| ImageError::io("decompress staged archive", archive_path, e))?;
        let limit = self.limits.max_archive_bytes;
        let (tar_hex, _) =
            blob::copy_hashed_to_new_file(&mut decompressed, &tar_path, limit, &mut |_| {})
                .map_err(|e| match e {
                    blob::CopyError::Read(e) => ImageError::MalformedTar {
                        what: "compressed image archive".to_string(),
                        reason: e.to_string(),
                    },
                    blob::CopyError::Write(e) => {
                        ImageError::io("write decompressed archive", &tar_path, e)
                    }
                    blob::CopyError::TooLarge => ImageError::ArchiveTooLarge { limit },
                })?;
        self.import_tar(staging, &tar_path, &tar_hex)
    }

    /// Imports every platform an archive resolves to. On error nothing is published.
    pub(crate) fn import_archive(
        &self,
        staging: &Staging,
        archive: &mut dyn ImageArchive,
        format: ImageFormat,
    ) -> Result<ImportedImage, ImageError> {
        let resolved = archive.resolve()?;
        let staged_blobs = staging.path.join("blobs");
        std::fs::create_dir(&staged_blobs)
            .map_err(|e| ImageError::io("create staging directory", &staged_blobs, e))?;
        let mut batch = Batch {
            store: self,
            staging,
            staged_blobs,
            new_blobs: Vec::new(),
            new_layers: Vec::new(),
            seen: Vec::new(),
            budget: UnpackBudget::new(self.limits.max_unpacked_bytes),
        };
        for manifest in &resolved.manifests {
            batch.stage_documents(manifest)?;
            batch.stage_layers(manifest, archive)?;
        }
        let size_bytes = batch.publish()?;
        imported_image(format, &resolved, size_bytes)
    }
}

impl Batch<'_> {
    fn stage_documents(&mut self, manifest: &ResolvedManifest) -> Result<(), ImageError> {
        for (hex, bytes) in [
            (&manifest.manifest_hex, &manifest.manifest_bytes),
            (&manifest.config_hex, &manifest.config_bytes),
        ] {
            if !self.is_known_blob(hex) {
                let path = self.staged_blobs.join(hex);
                blob::write_new_file(&path, bytes)
                    .map_err(|e| ImageError::io("write staged blob", &path, e))?;
                self.new_blobs.push((path, hex.clone()));
            }
        }
        Ok(())
    }

    fn is_known_blob(&self, hex: &str) -> bool {
        self.store.blobs.contains(hex) || self.new_blobs.iter().any(|(_, h)| h == hex)
    }

    /// Copies each new layer blob out of the archive and unpacks it, checking its
    /// uncompressed digest against the config's `rootfs.diff_ids`.
    fn stage_layers(
        &mut self,
        manifest: &ResolvedManifest,
        archive: &dyn ImageArchive,
    ) -> Result<(), ImageError> {
        let diff_ids = manifest.config.diff_ids();
        for (position, hex) in manifest.layers.iter().enumerate() {
            if self.seen.contains(hex) {
                continue;
            }
            self.seen.push(hex.clone());
            let blob_path = if self.store.blobs.contains(hex) {
                self.store.blobs.path(hex)
            } else {
                let path = self.staged_blobs.join(hex);
                archive.copy_blob(hex, &path)?;
                self.new_blobs.push((path.clone(), hex.clone()));
                path
            };
            if self.store.layer_path(hex).is_dir() {
                continue;
            }
            let digest = digest_from_hex(hex);
            let staged = self.staging.path.join(format!("layer-{hex}"));
            let source =
                File::open(&blob_path).map_err(|e| ImageError::io("open blob", &blob_path, e))?;
            let limits = &self.store.limits;
            let unpacked = unpack_layer(source, &staged, &digest, limits, &mut self.budget)?;
            if let Some(diff_id) = diff_ids.get(position) {
                let expected = digest_hex(diff_id, "config rootfs.diff_ids")?;
                oci::verify_digest(
                    &format!("uncompressed layer {digest} (config rootfs.diff_ids[{position}])"),
                    expected,
                    &unpacked.diff_id_hex,
                )?;
            }
            self.new_layers.push((staged, hex.clone()));
        }
        Ok(())
    }

    /// Everything verified: publish blobs first, so a committed layer always has one.
    /// Returns the unpacked size of the image's distinct layers.
    fn publish(self) -> Result<u64, ImageError> {
        for (path, hex) in &self.new_blobs {
            self.store.blobs.commit(path, hex)?;
        }
        for (path, hex) in &self.new_layers {
            self.store.commit_layer(path, hex)?;
        }
        let mut size_bytes = 0u64;
        for hex in &self.seen {
            size_bytes = size_bytes.saturating_add(self.store.layer_size(hex)?);
        }
        Ok(size_bytes)
    }
}

fn imported_image(
    format: ImageFormat,
    resolved: &ResolvedImage,
    size_bytes: u64,
) -> Result<ImportedImage, ImageError> {
    let platforms: Vec<ImagePlatform> = resolved
        .manifests
        .iter()
        .map(|m| ImagePlatform {
            os: m.platform.os.clone(),
            architecture: m.platform.architecture.clone(),
            variant: m.platform.variant.clone(),
            manifest_digest: digest_from_hex(&m.manifest_hex),
            layers: m.layers.iter().map(|h| digest_from_hex(h)).collect(),
            config: m.config.image_config(),
        })
        .collect();
    let default = platforms.first().ok_or_else(|| ImageError::InvalidOci {
        reason: "the archive resolves to no image".to_string(),
    })?;
    Ok(ImportedImage {
        format,
        manifest_digest: default.manifest_digest.clone(),
        layers: default.layers.clone(),
        config: default.config.clone(),
        size_bytes,
        architecture: default.architecture.clone(),
        platforms,
        disk: None,
        kernel: None,
    })
}
