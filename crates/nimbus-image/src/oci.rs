//! OCI image layout archives (`skopeo copy ... oci-archive:`): scanning the outer tar,
//! the JSON documents we read (a subset of the image-spec), and choosing one image.
//!
//! Blobs are not extracted during the scan: we remember where each blob's bytes sit in
//! the archive file and read them from there once the index and manifest say which
//! blobs are needed, verifying digest and size on every read.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use tar::EntryType;

use crate::archive::{
    read_small, walk_archive, ArchiveFile, BlobLocation, ImageArchive, PlatformName, ResolvedImage,
    ResolvedManifest, ScannedEntry,
};
use crate::blob::{self, digest_from_hex, digest_hex, is_sha256_hex};
use crate::error::ImageError;
use crate::{ImageConfig, Limits};

/// Largest JSON document (index, manifest, config, oci-layout) we read into memory.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;
/// Nested image indexes followed before giving up.
const MAX_INDEX_DEPTH: usize = 4;
/// The platform chosen as an image's default when an index offers several.
pub(crate) const DEFAULT_ARCHITECTURE: &str = "amd64";

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Layer media types we unpack; the compression itself is detected from magic bytes.
const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Descriptor {
    pub(crate) fn new(media_type: &str, digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            platform: None,
        }
    }
}

impl Platform {
    /// Another OS, or an attestation manifest (`unknown/unknown`, as buildx writes).
    fn is_not_runnable(&self) -> bool {
        (!self.os.is_empty() && self.os != "linux") || self.architecture == "unknown"
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    _image_layout_version: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    pub(crate) config: Descriptor,
    pub(crate) layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigFile {
    pub(crate) fn image_config(&self) -> ImageConfig {
        let Some(c) = &self.config else {
            return ImageConfig::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
        ImageConfig {
            env: c.env.clone().unwrap_or_default(),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            working_dir: non_empty(&c.working_dir),
            user: non_empty(&c.user),
        }
    }

    /// The platform the config declares; an empty one is linux/amd64, as Docker assumes.
    pub(crate) fn platform(&self) -> PlatformName {
        let or = |value: &str, default: &str| {
            if value.is_empty() {
                default.to_string()
            } else {
                value.to_string()
            }
        };
        PlatformName {
            os: or(&self.os, "linux"),
            architecture: or(&self.architecture, DEFAULT_ARCHITECTURE),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }

    pub(crate) fn diff_ids(&self) -> &[String] {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or(&[])
    }
}

pub(crate) fn parse_json<'a, T: Deserialize<'a>>(
    file: &str,
    data: &'a [u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|source| ImageError::MalformedJson {
        file: file.to_string(),
        source,
    })
}

/// An uncompressed tar holding an OCI image layout, scanned but not yet extracted.
pub(crate) struct OciArchive {
    file: ArchiveFile,
    oci_layout: Vec<u8>,
    index_json: Vec<u8>,
    blobs: HashMap<String, BlobLocation>,
}

/// Scans an uncompressed tar. Returns `None` when it has no top-level `oci-layout`
/// (so it is a root filesystem or a docker-archive), the layout when it is a well-formed
/// OCI archive, and an error when it has `oci-layout` but other content is out of place.
pub(crate) fn scan_archive(path: &Path, limits: &Limits) -> Result<Option<OciArchive>, ImageError> {
    let mut oci_layout = None;
    let mut index_json = None;
    let mut blobs = HashMap::new();
    let mut first_problem: Option<(String, String)> = None;
    walk_archive(path, limits, &mut |entry| {
        let problem = match entry.parts.clone() {
            Ok(parts) => {
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                oci_entry_problem(&parts, entry, &mut oci_layout, &mut index_json, &mut blobs)
            }
            Err(reason) => Some((entry.name, reason)),
        };
        if let Some(problem) = problem {
            first_problem.get_or_insert(problem);
        }
        Ok(())
    })?;
    let Some(oci_layout) = oci_layout else {
        return Ok(None);
    };
    if let Some((entry, reason)) = first_problem {
        return Err(ImageError::UnexpectedOciEntry { entry, reason });
    }
    let index_json = index_json.ok_or(ImageError::MissingOciFile { name: "index.json" })?;
    Ok(Some(OciArchive {
        file: ArchiveFile {
            path: path.to_path_buf(),
        },
        oci_layout,
        index_json,
        blobs,
    }))
}

/// Records one entry of an OCI layout; returns `(entry, reason)` when it does not
/// belong there. Docker 25+ writes `manifest.json` and `repositories` beside the
/// layout: they are ignored.
fn oci_entry_problem(
    parts: &[&str],
    entry: ScannedEntry<'_>,
    oci_layout: &mut Option<Vec<u8>>,
    index_json: &mut Option<Vec<u8>>,
    blobs: &mut HashMap<String, BlobLocation>,
) -> Option<(String, String)> {
    let is_file = entry.is_file();
    let kind = entry.kind;
    let name = entry.name;
    let problem = match (parts, kind) {
        ([] | ["blobs"] | ["blobs", "sha256"], EntryType::Directory) => None,
        (["oci-layout"], _) if is_file => read_small(entry.content, &name, oci_layout).err(),
        (["index.json"], _) if is_file => read_small(entry.content, &name, index_json).err(),
        (["manifest.json"] | ["repositories"], _) if is_file => None,
        (["blobs", "sha256", hex], _) if is_file && is_sha256_hex(hex) => blobs
            .insert((*hex).to_string(), entry.location)
            .map(|_| "the blob appears twice".to_string()),
        _ if !is_file && kind != EntryType::Directory => Some(format!(
            "entries of type {kind:?} are not part of an image layout"
        )),
        _ => Some("not a file of an OCI image layout".to_string()),
    };
    problem.map(|reason| (name, reason))
}

/// Where the documents and blobs an index or manifest names are read from: an
/// archive being imported, or the store's own blobs (a registry push).
pub(crate) trait BlobSource {
    /// The hex digest of the blob a descriptor names, once it is found with
    /// the declared size.
    fn locate_hex(&self, desc: &Descriptor, referenced_by: &str) -> Result<String, ImageError>;
    /// Reads a small blob (index, manifest, config) and verifies its digest.
    fn read_json_blob(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, Vec<u8>), ImageError>;
}

impl OciArchive {
    /// Finds the blob a descriptor names and checks its size.
    fn locate(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, BlobLocation), ImageError> {
        let hex = digest_hex(&desc.digest, referenced_by)?.to_string();
        let location = *self
            .blobs
            .get(&hex)
            .ok_or_else(|| ImageError::MissingBlob {
                digest: desc.digest.clone(),
                referenced_by: referenced_by.to_string(),
            })?;
        if location.size != desc.size {
            return Err(ImageError::SizeMismatch {
                what: format!("blob {} referenced by {referenced_by}", desc.digest),
                expected: desc.size,
                actual: location.size,
            });
        }
        Ok((hex, location))
    }

    fn read_json_blob_here(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, Vec<u8>), ImageError> {
        let (hex, location) = self.locate(desc, referenced_by)?;
        let data = self
            .file
            .read_metadata(location, &format!("blob {}", desc.digest))?;
        verify_digest(
            &format!("blob blobs/sha256/{hex}"),
            &hex,
            &blob::sha256_hex(&data),
        )?;
        Ok((hex, data))
    }
}

impl BlobSource for OciArchive {
    fn locate_hex(&self, desc: &Descriptor, referenced_by: &str) -> Result<String, ImageError> {
        self.locate(desc, referenced_by).map(|(hex, _)| hex)
    }

    fn read_json_blob(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, Vec<u8>), ImageError> {
        self.read_json_blob_here(desc, referenced_by)
    }
}

/// Resolves every linux image the descriptors name, following nested indexes.
fn collect_manifests(
    source_blobs: &dyn BlobSource,
    descriptors: &[Descriptor],
    source: &str,
    depth: usize,
    out: &mut Vec<ResolvedManifest>,
) -> Result<(), ImageError> {
    if descriptors.is_empty() {
        return Err(ImageError::InvalidOci {
            reason: format!("{source} lists no manifests"),
        });
    }
    if depth > MAX_INDEX_DEPTH {
        return Err(ImageError::InvalidOci {
            reason: format!("image indexes nest more than {MAX_INDEX_DEPTH} deep"),
        });
    }
    for descriptor in descriptors {
        if descriptor
            .platform
            .as_ref()
            .is_some_and(Platform::is_not_runnable)
        {
            continue;
        }
        let (hex, data) = source_blobs.read_json_blob(descriptor, source)?;
        let media_type = effective_media_type(descriptor, &data);
        if media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST {
            let label = format!("image index {}", digest_from_hex(&hex));
            let nested: Index = parse_json(&label, &data)?;
            collect_manifests(source_blobs, &nested.manifests, &label, depth + 1, out)?;
            continue;
        }
        let what = format!("manifest {}", digest_from_hex(&hex));
        if media_type != MEDIA_OCI_MANIFEST && media_type != MEDIA_DOCKER_MANIFEST {
            return Err(ImageError::UnsupportedMediaType { what, media_type });
        }
        let manifest: Manifest = parse_json(&what, &data)?;
        let resolved = resolve_manifest(source_blobs, hex, data, manifest, &what)?;
        out.push(with_descriptor_platform(resolved, descriptor));
    }
    Ok(())
}

fn resolve_manifest(
    source_blobs: &dyn BlobSource,
    manifest_hex: String,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    what: &str,
) -> Result<ResolvedManifest, ImageError> {
    if let Some(media_type) = &manifest.media_type {
        if media_type != MEDIA_OCI_MANIFEST && media_type != MEDIA_DOCKER_MANIFEST {
            return Err(ImageError::UnsupportedMediaType {
                what: what.to_string(),
                media_type: media_type.clone(),
            });
        }
    }
    let config_desc = &manifest.config;
    if !CONFIG_MEDIA_TYPES.contains(&config_desc.media_type.as_str()) {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("config {} of {what}", config_desc.digest),
            media_type: config_desc.media_type.clone(),
        });
    }
    let (config_hex, config_bytes) = source_blobs.read_json_blob(config_desc, what)?;
    let config = parse_config(&config_hex, &config_bytes)?;
    if manifest.layers.is_empty() {
        return Err(ImageError::InvalidOci {
            reason: format!("{what} lists no layers"),
        });
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        if !LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("layer {} of {what}", layer.digest),
                media_type: layer.media_type.clone(),
            });
        }
        let hex = source_blobs.locate_hex(layer, what)?;
        layers.push(hex);
    }
    check_diff_id_count(&config, layers.len(), what)?;
    Ok(ResolvedManifest {
        platform: config.platform(),
        manifest_hex,
        manifest_bytes,
        config_hex,
        config_bytes,
        config,
        layers,
    })
}

/// Every linux image `descriptors` name (one per platform, linux/amd64 first),
/// manifests and configs verified and every layer blob present with its size.
pub(crate) fn resolve_descriptors(
    source: &dyn BlobSource,
    descriptors: &[Descriptor],
    label: &str,
) -> Result<ResolvedImage, ImageError> {
    let mut manifests = Vec::new();
    collect_manifests(source, descriptors, label, 0, &mut manifests)?;
    if manifests.is_empty() {
        return Err(ImageError::NoMatchingPlatform {
            available: descriptors
                .iter()
                .map(|d| match &d.platform {
                    Some(p) => p.to_string(),
                    None => format!("{} without platform", d.digest),
                })
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(ResolvedImage {
        manifests: default_platform_first(manifests),
    })
}

impl ImageArchive for OciArchive {
    /// Parses `oci-layout` and `index.json`, and resolves every linux image it names
    /// (one per platform), verifying manifests and configs and checking every layer
    /// blob is present with the declared size.
    fn resolve(&mut self) -> Result<ResolvedImage, ImageError> {
        let _: OciLayout = parse_json("oci-layout", &self.oci_layout)?;
        let index: Index = parse_json("index.json", &self.index_json)?;
        resolve_descriptors(self, &index.manifests, "index.json")
    }

    /// Copies a layer blob out of the archive into `dest`, verifying its digest.
    fn copy_blob(&self, hex: &str, dest: &Path) -> Result<(), ImageError> {
        let location = *self.blobs.get(hex).ok_or_else(|| ImageError::MissingBlob {
            digest: digest_from_hex(hex),
            referenced_by: "the manifest".to_string(),
        })?;
        self.file.copy_verified(location, hex, dest)
    }
}

/// Parses an image config and refuses images for another OS than linux.
pub(crate) fn parse_config(
    config_hex: &str,
    config_bytes: &[u8],
) -> Result<ConfigFile, ImageError> {
    let config: ConfigFile = parse_json(
        &format!("config {}", digest_from_hex(config_hex)),
        config_bytes,
    )?;
    if !config.os.is_empty() && config.os != "linux" {
        return Err(ImageError::InvalidOci {
            reason: format!("the image is for os `{}`, not linux", config.os),
        });
    }
    Ok(config)
}

/// Each layer needs its diff_id when the config lists them.
pub(crate) fn check_diff_id_count(
    config: &ConfigFile,
    layers: usize,
    what: &str,
) -> Result<(), ImageError> {
    let diff_ids = config.diff_ids();
    if !diff_ids.is_empty() && diff_ids.len() != layers {
        return Err(ImageError::InvalidOci {
            reason: format!(
                "config lists {} diff_ids but {what} has {layers} layers",
                diff_ids.len(),
            ),
        });
    }
    Ok(())
}

/// The index's platform wins over the config's (they agree in well-formed images).
fn with_descriptor_platform(
    mut resolved: ResolvedManifest,
    descriptor: &Descriptor,
) -> ResolvedManifest {
    if let Some(p) = &descriptor.platform {
        if !p.architecture.is_empty() {
            resolved.platform = PlatformName {
                os: if p.os.is_empty() {
                    "linux".to_string()
                } else {
                    p.os.clone()
                },
                architecture: p.architecture.clone(),
                variant: p.variant.clone().filter(|v| !v.is_empty()),
            };
        }
    }
    resolved
}

/// linux/amd64 first when offered; a platform listed twice is kept once.
fn default_platform_first(manifests: Vec<ResolvedManifest>) -> Vec<ResolvedManifest> {
    let mut kept: Vec<ResolvedManifest> = Vec::with_capacity(manifests.len());
    for m in manifests {
        if !kept.iter().any(|k| k.platform == m.platform) {
            kept.push(m);
        }
    }
    if let Some(amd64) = kept
        .iter()
        .position(|m| m.platform.architecture == DEFAULT_ARCHITECTURE)
    {
        let default = kept.remove(amd64);
        kept.insert(0, default);
    }
    kept
}

pub(crate) fn verify_digest(
    what: &str,
    expected_hex: &str,
    actual_hex: &str,
) -> Result<(), ImageError> {
    if expected_hex == actual_hex {
        return Ok(());
    }
    Err(ImageError::DigestMismatch {
        what: what.to_string(),
        expected: digest_from_hex(expected_hex),
        actual: digest_from_hex(actual_hex),
    })
}

/// The descriptor's media type, else the document's own `mediaType`, else a guess from
/// its shape (old layouts omit both).
fn effective_media_type(descriptor: &Descriptor, data: &[u8]) -> String {
    if !descriptor.media_type.is_empty() {
        return descriptor.media_type.clone();
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(data) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) if !m.is_empty() => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => MEDIA_OCI_INDEX.to_string(),
        _ => MEDIA_OCI_MANIFEST.to_string(),
    }
}

/// The config digest named by a stored manifest (for garbage collection).
pub(crate) fn manifest_config_digest(data: &[u8], what: &str) -> Result<String, ImageError> {
    let manifest: Manifest = parse_json(what, data)?;
    Ok(manifest.config.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(architecture: &str, manifest_hex: &str) -> ResolvedManifest {
        ResolvedManifest {
            platform: PlatformName {
                os: "linux".into(),
                architecture: architecture.into(),
                variant: None,
            },
            manifest_hex: manifest_hex.into(),
            manifest_bytes: Vec::new(),
            config_hex: String::new(),
            config_bytes: Vec::new(),
            config: ConfigFile::default(),
            layers: Vec::new(),
        }
    }

    #[test]
    fn amd64_comes_first_and_a_repeated_platform_is_kept_once() {
        let ordered = default_platform_first(vec![
            resolved("arm64", "a"),
            resolved("amd64", "b"),
            resolved("arm64", "c"),
        ]);
        let hexes: Vec<&str> = ordered.iter().map(|m| m.manifest_hex.as_str()).collect();
        assert_eq!(hexes, ["b", "a"]);
        let only_arm = default_platform_first(vec![resolved("arm64", "a")]);
        assert_eq!(only_arm[0].platform.architecture, "arm64");
    }

    #[test]
    fn attestations_and_other_oses_are_not_runnable() {
        let p = |os: &str, architecture: &str| Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        };
        assert!(p("unknown", "unknown").is_not_runnable());
        assert!(p("windows", "amd64").is_not_runnable());
        assert!(!p("linux", "arm64").is_not_runnable());
        let v = Platform {
            variant: Some("v8".into()),
            ..p("linux", "arm64")
        };
        assert_eq!(v.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn config_maps_to_image_config() {
        let config: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Cmd":["sh"],
                "Entrypoint":null,"WorkingDir":"","User":"1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let image = config.image_config();
        assert_eq!(image.env, ["A=1"]);
        assert_eq!(image.cmd, ["sh"]);
        assert!(image.entrypoint.is_empty());
        assert_eq!(image.working_dir, None);
        assert_eq!(image.user.as_deref(), Some("1000"));
    }
}
