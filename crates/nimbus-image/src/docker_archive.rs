//! docker-archive tarballs, as `docker save`, `podman save` (its default format) and
//! `skopeo copy ... docker-archive:` write them: `manifest.json` at the root
//! (`[{"Config": PATH, "Layers": [PATH...], "RepoTags": [...]}]`), the config and the
//! layer tars at those paths. Old `docker save` links a repeated layer to its first
//! copy with a symlink (`<id>/layer.tar -> ../<id0>/layer.tar`).
//!
//! A docker-archive has no manifest blob: resolving one writes the OCI manifest the
//! image would have (config + layers by digest, as `skopeo copy` would convert it), so
//! the store keeps the same shape for every format. The config's `rootfs.diff_ids` are
//! required: each layer's uncompressed content is checked against them on import.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;
use tar::EntryType;

use crate::archive::{
    read_small, walk_archive, ArchiveFile, BlobLocation, ImageArchive, ResolvedImage,
    ResolvedManifest, ScannedEntry,
};
use crate::blob::{self, digest_from_hex};
use crate::error::ImageError;
use crate::lookalike::has_root_filesystem;
use crate::oci::{check_diff_id_count, parse_config, parse_json};
use crate::stream::{compression_of, Compression};
use crate::unpack::split_path;
use crate::Limits;

/// Deepest path a docker-archive stores files at (`blobs/sha256/<hex>` in Docker 25+).
const MAX_FILE_DEPTH: usize = 3;

#[derive(Debug, Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    _repo_tags: Option<Vec<String>>,
}

/// A scanned tar that is a docker-archive: where its files sit, not yet extracted.
pub(crate) struct DockerArchive {
    file: ArchiveFile,
    manifest_json: Vec<u8>,
    files: HashMap<String, BlobLocation>,
    /// Symlink path → the archive path it points to (already normalised).
    symlinks: HashMap<String, String>,
    /// Layer locations by content digest, filled by [`ImageArchive::resolve`].
    by_digest: HashMap<String, BlobLocation>,
}

/// What a scan found when the tar is not a docker-archive.
pub(crate) enum DockerScan {
    Archive(Box<DockerArchive>),
    /// Not one: the names at the tar's top level, for the look-alike check.
    NotDocker {
        top_level: BTreeSet<String>,
    },
}

/// Everything the scan gathers while walking the tar.
#[derive(Default)]
struct ScanState {
    manifest_json: Option<Vec<u8>>,
    files: HashMap<String, BlobLocation>,
    symlinks: HashMap<String, String>,
    top_level: BTreeSet<String>,
    first_problem: Option<(String, String)>,
}

/// Scans an uncompressed tar (that has no `oci-layout`). It is a docker-archive when
/// its root holds `manifest.json` and no root filesystem; then every entry must be safe
/// (plain paths, regular files, directories, symlinks within the archive, nothing
/// twice), or the import is refused.
pub(crate) fn scan_archive(path: &Path, limits: &Limits) -> Result<DockerScan, ImageError> {
    let mut state = ScanState::default();
    walk_archive(path, limits, &mut |entry| {
        if let Err(reason) = state.record(entry.parts.clone(), entry) {
            state.first_problem.get_or_insert(reason);
        }
        Ok(())
    })?;
    let is_docker =
        state.top_level.contains("manifest.json") && !has_root_filesystem(&state.top_level);
    let Some(manifest_json) = state.manifest_json.filter(|_| is_docker) else {
        return Ok(DockerScan::NotDocker {
            top_level: state.top_level,
        });
    };
    if let Some((entry, reason)) = state.first_problem {
        return Err(ImageError::UnexpectedDockerEntry { entry, reason });
    }
    Ok(DockerScan::Archive(Box::new(DockerArchive {
        file: ArchiveFile {
            path: path.to_path_buf(),
        },
        manifest_json,
        files: state.files,
        symlinks: state.symlinks,
        by_digest: Default::default(),
    })))
}

impl ScanState {
    fn record(
        &mut self,
        parts: Result<Vec<String>, String>,
        entry: ScannedEntry<'_>,
    ) -> Result<(), (String, String)> {
        let name = entry.name.clone();
        let parts = parts.map_err(|reason| (name.clone(), reason))?;
        let Some(first) = parts.first() else {
            return Ok(());
        };
        self.top_level.insert(first.clone());
        let key = parts.join("/");
        let problem = match entry.kind {
            EntryType::Directory => None,
            _ if entry.is_file() && parts == ["manifest.json"] => {
                read_small(entry.content, &name, &mut self.manifest_json).err()
            }
            _ if entry.is_file() && parts.len() <= MAX_FILE_DEPTH => self
                .files
                .insert(key, entry.location)
                .map(|_| "the file appears twice".to_string()),
            _ if entry.is_file() => Some(format!(
                "a docker-archive keeps its files at most {MAX_FILE_DEPTH} levels deep"
            )),
            EntryType::Symlink if parts.len() <= MAX_FILE_DEPTH => {
                let target = entry.link_target.unwrap_or_default();
                match link_destination(&parts, &target) {
                    Ok(dest) => self
                        .symlinks
                        .insert(key, dest)
                        .map(|_| "the symlink appears twice".to_string()),
                    Err(reason) => Some(reason),
                }
            }
            kind => Some(format!(
                "entries of type {kind:?} are not part of a docker-archive"
            )),
        };
        problem.map_or(Ok(()), |reason| Err((name, reason)))
    }
}

/// Where a symlink at `parts` pointing at `target` leads, as an archive path; refused
/// when it leaves the archive or is absolute.
fn link_destination(parts: &[String], target: &str) -> Result<String, String> {
    if target.starts_with('/') {
        return Err(format!(
            "the symlink points to the absolute path `{target}`"
        ));
    }
    let mut dest: Vec<&str> = parts[..parts.len() - 1]
        .iter()
        .map(String::as_str)
        .collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                dest.pop()
                    .ok_or_else(|| format!("the symlink target `{target}` leaves the archive"))?;
            }
            other => dest.push(other),
        }
    }
    Ok(dest.join("/"))
}

impl DockerArchive {
    /// A file named by `manifest.json`, through at most one symlink.
    fn locate(&self, path: &str, referenced_by: &str) -> Result<BlobLocation, ImageError> {
        let key = split_path(path.as_bytes())
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| p.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .map_err(|reason| ImageError::InvalidDockerArchive {
                reason: format!("{referenced_by} names the unsafe path `{path}`: {reason}"),
            })?;
        let key = self.symlinks.get(&key).cloned().unwrap_or(key);
        self.files
            .get(&key)
            .copied()
            .ok_or_else(|| ImageError::InvalidDockerArchive {
                reason: format!("{referenced_by} names `{path}`, which is not in the archive"),
            })
    }

    fn only_image(&self) -> Result<ManifestEntry, ImageError> {
        let entries: Vec<ManifestEntry> =
            parse_json("docker-archive manifest.json", &self.manifest_json).map_err(|e| {
                ImageError::InvalidDockerArchive {
                    reason: format!("its manifest.json is unreadable: {e}"),
                }
            })?;
        let count = entries.len();
        let mut entries = entries.into_iter();
        match (entries.next(), count) {
            (Some(entry), 1) => Ok(entry),
            _ => Err(ImageError::InvalidDockerArchive {
                reason: format!(
                    "its manifest.json lists {count} images; save exactly one image per archive \
                     (`podman save IMAGE`)"
                ),
            }),
        }
    }

    /// The OCI manifest this image would have: config and layers by digest.
    fn synthesize_manifest(
        &self,
        config: (&str, u64),
        layers: &[(String, BlobLocation, &'static str)],
    ) -> Vec<u8> {
        let descriptor = |media_type: &str, hex: &str, size: u64| serde_json::json!({"mediaType": media_type, "digest": digest_from_hex(hex), "size": size});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", config.0, config.1),
            "layers": layers
                .iter()
                .map(|(hex, location, media_type)| descriptor(media_type, hex, location.size))
                .collect::<Vec<_>>(),
        });
        // A JSON value of strings and numbers always serializes.
        serde_json::to_vec(&manifest).unwrap_or_default()
    }

    /// The layer media type its first bytes show.
    fn layer_media_type(&self, location: BlobLocation) -> Result<&'static str, ImageError> {
        use std::io::Read;
        let mut head = Vec::with_capacity(8);
        self.file
            .open(location)?
            .take(8)
            .read_to_end(&mut head)
            .map_err(|e| ImageError::io("read staged archive", &self.file.path, e))?;
        Ok(match compression_of(&head) {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        })
    }
}

impl ImageArchive for DockerArchive {
    fn resolve(&mut self) -> Result<ResolvedImage, ImageError> {
        let entry = self.only_image()?;
        let config_location = self.locate(&entry.config, "manifest.json Config")?;
        let config_bytes = self
            .file
            .read_metadata(config_location, &format!("config `{}`", entry.config))?;
        let config_hex = blob::sha256_hex(&config_bytes);
        let config = parse_config(&config_hex, &config_bytes)?;
        if entry.layers.is_empty() {
            return Err(ImageError::InvalidDockerArchive {
                reason: "its manifest.json lists no layers".to_string(),
            });
        }
        if config.diff_ids().is_empty() {
            return Err(ImageError::InvalidDockerArchive {
                reason: format!(
                    "config `{}` lists no rootfs.diff_ids to verify the layers against",
                    entry.config
                ),
            });
        }
        check_diff_id_count(&config, entry.layers.len(), "manifest.json")?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        let mut by_digest = HashMap::new();
        for (position, path) in entry.layers.iter().enumerate() {
            let location = self.locate(path, &format!("manifest.json Layers[{position}]"))?;
            let hex = self.file.hash(location)?;
            by_digest.insert(hex.clone(), location);
            layers.push((hex, location, self.layer_media_type(location)?));
        }
        let manifest_bytes =
            self.synthesize_manifest((&config_hex, config_bytes.len() as u64), &layers);
        self.by_digest = by_digest;
        Ok(ResolvedImage {
            manifests: vec![ResolvedManifest {
                platform: config.platform(),
                manifest_hex: blob::sha256_hex(&manifest_bytes),
                manifest_bytes,
                config_hex,
                config_bytes,
                config,
                layers: layers.into_iter().map(|(hex, _, _)| hex).collect(),
            }],
        })
    }

    fn copy_blob(&self, hex: &str, dest: &Path) -> Result<(), ImageError> {
        let location = self
            .by_digest
            .get(hex)
            .copied()
            .ok_or_else(|| ImageError::MissingBlob {
                digest: digest_from_hex(hex),
                referenced_by: "manifest.json".to_string(),
            })?;
        self.file.copy_verified(location, hex, dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_archive_only() {
        let parts = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            link_destination(&parts("b/layer.tar"), "../a/layer.tar").unwrap(),
            "a/layer.tar"
        );
        assert!(link_destination(&parts("b/layer.tar"), "../../etc/passwd").is_err());
        assert!(link_destination(&parts("layer.tar"), "/etc/passwd").is_err());
    }
}
