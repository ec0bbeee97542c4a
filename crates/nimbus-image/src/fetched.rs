//! Blobs that arrive one at a time from another store (a host agent fetching
//! what its instances need from the servers), and the collection of those a
//! host no longer runs. A fetched blob reaches its content address only after
//! its bytes hashed to the digest it was asked for.

use std::io::Read;
use std::time::Duration;

use crate::blob::{digest_from_hex, digest_hex};
use crate::error::ImageError;
use crate::gc::{self, KeepSet};
use crate::{GcReport, ImageStore, ImportedImage, Staging};

/// Checks that `digest` is `sha256:<64 lowercase hex>`, touching nothing.
pub fn check_digest(digest: &str) -> Result<(), ImageError> {
    digest_hex(digest, "blob digest").map(drop)
}

impl ImportedImage {
    /// The blobs a host needs to run the image, each once: its layers
    /// (lowest first), its disk, its kernel and initrd. Manifests and
    /// configs are not among them: what they say is in the image record.
    pub fn runtime_blobs(&self) -> Vec<String> {
        let kernel = self
            .kernel
            .iter()
            .flat_map(|k| std::iter::once(k.digest.clone()).chain(k.initrd.clone()));
        let mut out: Vec<String> = Vec::new();
        for digest in self
            .layers
            .iter()
            .cloned()
            .chain(self.disk.iter().map(|d| d.digest.clone()))
            .chain(kernel)
        {
            if !out.contains(&digest) {
                out.push(digest);
            }
        }
        out
    }
}

impl ImageStore {
    /// The runtime blobs of `image` this store cannot serve: not stored,
    /// and (for a layer) not unpacked either.
    pub fn missing_blobs(&self, image: &ImportedImage) -> Result<Vec<String>, ImageError> {
        let layers: Vec<&String> = image.layers.iter().collect();
        let mut missing = Vec::new();
        for digest in image.runtime_blobs() {
            let hex = digest_hex(&digest, "image blob")?;
            let unpacked = layers.contains(&&digest) && self.layer_path(hex).is_dir();
            if !self.blobs.contains(hex) && !unpacked {
                missing.push(digest);
            }
        }
        Ok(missing)
    }

    /// Stores the blob read from `reader`, which must hash to `digest`. The
    /// bytes go to a staging file first, hashed on the way; a mismatch, a
    /// read error or more than `Limits::max_archive_bytes` leaves nothing.
    /// Returns the blob's size.
    pub fn add_blob(&self, digest: &str, reader: &mut dyn Read) -> Result<u64, ImageError> {
        let hex = digest_hex(digest, "fetched blob")?;
        let staging = Staging::create(&self.tmp_dir, "fetch")?;
        let path = staging.path.join("blob");
        let (actual, size) = self.stage(reader, &path)?;
        if actual != hex {
            return Err(ImageError::FetchedBlobMismatch {
                expected: digest.to_string(),
                actual: digest_from_hex(&actual),
                size,
            });
        }
        if !self.blobs.contains(hex) {
            self.blobs.commit(&path, hex)?;
        }
        tracing::info!(digest, bytes = size, "blob fetched and verified");
        Ok(size)
    }

    /// Removes the blobs and layer dirs that none of `keep` needs to run and
    /// that changed more than `min_age` ago. For a store filled by
    /// [`ImageStore::add_blob`]; like [`ImageStore::gc`], it must not run
    /// while a blob is added or a layer unpacked.
    pub fn collect_unused(
        &self,
        keep: &[ImportedImage],
        min_age: Duration,
    ) -> Result<GcReport, ImageError> {
        let keep = KeepSet::to_run(keep)?;
        gc::collect(&self.blobs, &self.layers_dir, &self.tmp_dir, &keep, min_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskFormat, DiskInfo, ImageConfig, ImageFormat, KernelEntry, KernelInfo, Limits};

    use crate::testing::one_file_rootfs_tar as rootfs_tar;

    fn image(layers: &[&str]) -> ImportedImage {
        ImportedImage {
            format: ImageFormat::Rootfs,
            manifest_digest: layers.first().map(|s| s.to_string()).unwrap_or_default(),
            layers: layers.iter().map(|s| s.to_string()).collect(),
            config: ImageConfig::default(),
            size_bytes: 0,
            architecture: "amd64".into(),
            platforms: Vec::new(),
            disk: None,
            kernel: None,
        }
    }

    fn entries(store: &ImageStore, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.root().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn runtime_blobs_name_layers_disk_kernel_and_initrd_once() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let mut img = image(&[&a, &b, &a]);
        assert_eq!(img.runtime_blobs(), vec![a.clone(), b.clone()]);
        img.layers.clear();
        img.disk = Some(DiskInfo {
            digest: a.clone(),
            format: DiskFormat::Qcow2,
            virtual_size_bytes: 1,
        });
        img.kernel = Some(KernelInfo {
            digest: b.clone(),
            initrd: Some(c.clone()),
            entry: KernelEntry::Pvh,
        });
        assert_eq!(img.runtime_blobs(), vec![a, b, c]);
    }

    #[test]
    fn a_fetched_blob_is_verified_then_unpacked_like_an_import() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = ImageStore::open(source_dir.path(), Limits::default()).unwrap();
        let data = rootfs_tar("fetched");
        let imported = source.import(&data[..], &mut |_| {}).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Limits::default()).unwrap();
        assert_eq!(store.missing_blobs(&imported).unwrap(), imported.layers);
        let size = store.add_blob(&imported.layers[0], &mut &data[..]).unwrap();
        assert_eq!(size, data.len() as u64);
        assert!(store.missing_blobs(&imported).unwrap().is_empty());
        let dirs = store.layer_dirs(&imported).unwrap();
        assert_eq!(
            std::fs::read_to_string(dirs[0].join("data.txt")).unwrap(),
            "fetched"
        );
    }

    #[test]
    fn a_blob_that_hashes_otherwise_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Limits::default()).unwrap();
        let wanted = format!("sha256:{}", crate::blob::sha256_hex(b"the real bytes"));
        let err = store
            .add_blob(&wanted, &mut &b"other bytes"[..])
            .unwrap_err();
        assert!(
            matches!(&err, ImageError::FetchedBlobMismatch { expected, .. } if *expected == wanted),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was kept"), "{err}");
        for sub in ["blobs/sha256", "layers", "tmp"] {
            assert!(entries(&store, sub).is_empty(), "{sub} is not empty");
        }
        let bad = store.add_blob("sha256:../../etc/passwd", &mut &b""[..]);
        assert!(matches!(bad, Err(ImageError::InvalidDigest { .. })));
        assert!(check_digest("sha256:AB").is_err());
        assert!(check_digest(&wanted).is_ok());
    }

    #[test]
    fn collection_keeps_what_runs_and_what_is_young() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Limits::default()).unwrap();
        let kept = store.import(&rootfs_tar("kept")[..], &mut |_| {}).unwrap();
        let unused = store
            .import(&rootfs_tar("unused")[..], &mut |_| {})
            .unwrap();
        let hour = Duration::from_secs(3600);
        let young = store
            .collect_unused(std::slice::from_ref(&kept), hour)
            .unwrap();
        assert!(young.removed_blobs.is_empty(), "{young:?}");
        assert!(young.removed_layers.is_empty(), "{young:?}");
        let report = store
            .collect_unused(std::slice::from_ref(&kept), Duration::ZERO)
            .unwrap();
        assert_eq!(report.removed_blobs, unused.layers);
        assert_eq!(report.removed_layers, unused.layers);
        let kept_hex = kept.layers[0].trim_start_matches("sha256:").to_string();
        assert_eq!(entries(&store, "blobs/sha256"), vec![kept_hex.clone()]);
        assert_eq!(entries(&store, "layers"), vec![kept_hex]);
    }
}
