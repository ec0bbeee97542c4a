//! OCI image layout archives (`skopeo copy ... oci-archive:`): scanning the outer tar,
//! the JSON documents we read (a subset of the image-spec), and choosing one image.
//!
//! Blobs are not extracted during the scan: we remember where each blob's bytes sit in
//! the archive file and read them from there once the index and manifest say which
//! blobs are needed, verifying digest and size on every read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tar::EntryType;

use crate::blob::{self, digest_from_hex, digest_hex, is_sha256_hex};
use crate::error::ImageError;
use crate::stream::{GuardedReader, Tripped, MAX_HEADER_BYTES_PER_ENTRY};
use crate::unpack::split_path;
use crate::{ImageConfig, Limits};

/// Largest JSON document (index, manifest, config, oci-layout) we read into memory.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;
/// Nested image indexes followed before giving up.
const MAX_INDEX_DEPTH: usize = 4;

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

#[derive(Clone, Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
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

    pub(crate) fn diff_ids(&self) -> &[String] {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or(&[])
    }
}

fn parse_json<'a, T: Deserialize<'a>>(file: &str, data: &'a [u8]) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|source| ImageError::MalformedJson {
        file: file.to_string(),
        source,
    })
}

/// Where a blob's bytes sit inside the archive file.
#[derive(Clone, Copy, Debug)]
struct BlobLocation {
    offset: u64,
    size: u64,
}

/// An uncompressed tar holding an OCI image layout, scanned but not yet extracted.
pub(crate) struct OciArchive {
    path: PathBuf,
    oci_layout: Vec<u8>,
    index_json: Vec<u8>,
    blobs: HashMap<String, BlobLocation>,
}

/// Scans an uncompressed tar. Returns `None` when it has no top-level `oci-layout`
/// (so it is a root filesystem), the layout when it is a well-formed OCI archive, and an
/// error when it has `oci-layout` but other content is out of place.
pub(crate) fn scan_archive(path: &Path, limits: &Limits) -> Result<Option<OciArchive>, ImageError> {
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
    let mut oci_layout = None;
    let mut index_json = None;
    let mut blobs = HashMap::new();
    let mut first_problem: Option<(String, String)> = None;
    let mut count: u64 = 0;
    loop {
        guard.enter_headers();
        let next = entries.next();
        guard.enter_content();
        let mut entry = match next {
            None => break,
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
        let name = String::from_utf8_lossy(&path_bytes).into_owned();
        let components: Vec<String> = match split_path(&path_bytes) {
            Ok(parts) => parts
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            Err(reason) => {
                first_problem.get_or_insert((name, reason));
                continue;
            }
        };
        let parts: Vec<&str> = components.iter().map(String::as_str).collect();
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous);
        let problem = match (parts.as_slice(), kind) {
            ([] | ["blobs"] | ["blobs", "sha256"], EntryType::Directory) => None,
            (["oci-layout"], _) if is_file => read_small(&mut entry, &name, &mut oci_layout).err(),
            (["index.json"], _) if is_file => read_small(&mut entry, &name, &mut index_json).err(),
            (["blobs", "sha256", hex], _) if is_file && is_sha256_hex(hex) => {
                let location = BlobLocation {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                blobs
                    .insert((*hex).to_string(), location)
                    .map(|_| "the blob appears twice".to_string())
            }
            _ if !is_file && kind != EntryType::Directory => Some(format!(
                "entries of type {kind:?} are not part of an image layout"
            )),
            _ => Some("not a file of an OCI image layout".to_string()),
        };
        if let Some(reason) = problem {
            first_problem.get_or_insert((name, reason));
        }
    }
    let Some(oci_layout) = oci_layout else {
        return Ok(None);
    };
    if let Some((entry, reason)) = first_problem {
        return Err(ImageError::UnexpectedOciEntry { entry, reason });
    }
    let index_json = index_json.ok_or(ImageError::MissingOciFile { name: "index.json" })?;
    Ok(Some(OciArchive {
        path: path.to_path_buf(),
        oci_layout,
        index_json,
        blobs,
    }))
}

/// Reads a top-level JSON file of the layout; a second copy or an oversized one is an
/// error reason (reported only if this turns out to be an OCI archive).
fn read_small(entry: &mut impl Read, name: &str, slot: &mut Option<Vec<u8>>) -> Result<(), String> {
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

/// The image chosen from an archive, with its documents verified and parsed.
pub(crate) struct ResolvedImage {
    pub(crate) manifest_hex: String,
    pub(crate) manifest_bytes: Vec<u8>,
    pub(crate) config_hex: String,
    pub(crate) config_bytes: Vec<u8>,
    pub(crate) config: ConfigFile,
    /// Layer blob hex digests, lowest first, each checked present with the right size.
    pub(crate) layers: Vec<String>,
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

    fn open_blob(&self, location: BlobLocation) -> Result<impl Read, ImageError> {
        let mut file = File::open(&self.path)
            .map_err(|e| ImageError::io("open staged archive", &self.path, e))?;
        file.seek(SeekFrom::Start(location.offset))
            .map_err(|e| ImageError::io("seek in staged archive", &self.path, e))?;
        Ok(file.take(location.size))
    }

    /// Reads a small blob (index, manifest, config) and verifies its digest.
    fn read_json_blob(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, Vec<u8>), ImageError> {
        let (hex, location) = self.locate(desc, referenced_by)?;
        if location.size > MAX_METADATA_BYTES {
            return Err(ImageError::MetadataTooLarge {
                file: format!("blob {}", desc.digest),
                size: location.size,
                limit: MAX_METADATA_BYTES,
            });
        }
        let mut data = Vec::new();
        self.open_blob(location)?
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io("read staged archive", &self.path, e))?;
        verify_digest(
            &format!("blob blobs/sha256/{hex}"),
            &hex,
            &blob::sha256_hex(&data),
        )?;
        Ok((hex, data))
    }

    /// Copies a layer blob out of the archive into `dest`, verifying its digest.
    pub(crate) fn copy_blob(&self, hex: &str, dest: &Path) -> Result<(), ImageError> {
        let location = *self.blobs.get(hex).ok_or_else(|| ImageError::MissingBlob {
            digest: digest_from_hex(hex),
            referenced_by: "the manifest".to_string(),
        })?;
        let mut source = self.open_blob(location)?;
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
        verify_digest(&format!("blob blobs/sha256/{hex}"), hex, &actual)
    }

    /// Parses `oci-layout` and `index.json`, picks one image and verifies its manifest
    /// and config, and checks every layer blob is present with the declared size.
    pub(crate) fn resolve(&self) -> Result<ResolvedImage, ImageError> {
        let _: OciLayout = parse_json("oci-layout", &self.oci_layout)?;
        let index: Index = parse_json("index.json", &self.index_json)?;
        let descriptor = choose_manifest(&index.manifests, "index.json")?;
        resolve_descriptor(self, descriptor, "index.json".to_string())
    }
}

/// Where the documents and blobs of an image are read from while resolving it: an
/// uploaded archive, or the store's own blob directory (a registry push).
pub(crate) trait BlobSource {
    /// The hex digest of the blob `desc` names, checked present with its size.
    fn locate_hex(&self, desc: &Descriptor, referenced_by: &str) -> Result<String, ImageError>;
    /// A small blob (index, manifest, config), read whole and verified.
    fn read_json_blob(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, Vec<u8>), ImageError>;
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
        OciArchive::read_json_blob(self, desc, referenced_by)
    }
}

/// Follows `descriptor` through image indexes (choosing linux/amd64) to one manifest,
/// and verifies that manifest and its config.
pub(crate) fn resolve_descriptor(
    source: &dyn BlobSource,
    mut descriptor: Descriptor,
    mut referenced_by: String,
) -> Result<ResolvedImage, ImageError> {
    for _ in 0..=MAX_INDEX_DEPTH {
        let (hex, data) = source.read_json_blob(&descriptor, &referenced_by)?;
        let what = format!("manifest {}", digest_from_hex(&hex));
        let media_type = effective_media_type(&descriptor, &data);
        if media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST {
            let label = format!("image index {}", digest_from_hex(&hex));
            let nested: Index = parse_json(&label, &data)?;
            descriptor = choose_manifest(&nested.manifests, &label)?;
            referenced_by = label;
            continue;
        }
        if media_type != MEDIA_OCI_MANIFEST && media_type != MEDIA_DOCKER_MANIFEST {
            return Err(ImageError::UnsupportedMediaType { what, media_type });
        }
        let manifest: Manifest = parse_json(&what, &data)?;
        return resolve_manifest(source, hex, data, manifest, &what);
    }
    Err(ImageError::InvalidOci {
        reason: format!("image indexes nest more than {MAX_INDEX_DEPTH} deep"),
    })
}

fn resolve_manifest(
    source: &dyn BlobSource,
    manifest_hex: String,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    what: &str,
) -> Result<ResolvedImage, ImageError> {
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
    let (config_hex, config_bytes) = source.read_json_blob(config_desc, what)?;
    let config: ConfigFile = parse_json(
        &format!("config {}", digest_from_hex(&config_hex)),
        &config_bytes,
    )?;
    if !config.os.is_empty() && config.os != "linux" {
        return Err(ImageError::InvalidOci {
            reason: format!("the image is for os `{}`, not linux", config.os),
        });
    }
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
        layers.push(source.locate_hex(layer, what)?);
    }
    let diff_ids = config.diff_ids();
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(ImageError::InvalidOci {
            reason: format!(
                "config lists {} diff_ids but {what} has {} layers",
                diff_ids.len(),
                layers.len()
            ),
        });
    }
    Ok(ResolvedImage {
        manifest_hex,
        manifest_bytes,
        config_hex,
        config_bytes,
        config,
        layers,
    })
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

/// linux/amd64 if offered, else the only entry.
fn choose_manifest(manifests: &[Descriptor], source: &str) -> Result<Descriptor, ImageError> {
    match manifests {
        [] => Err(ImageError::InvalidOci {
            reason: format!("{source} lists no manifests"),
        }),
        [only] => Ok(only.clone()),
        many => many
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .cloned()
            .ok_or_else(|| ImageError::NoMatchingPlatform {
                available: many
                    .iter()
                    .map(|d| match &d.platform {
                        Some(p) => format!("{}/{}", p.os, p.architecture),
                        None => format!("{} without platform", d.digest),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
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

    fn desc(digest: &str, platform: Option<(&str, &str)>) -> Descriptor {
        Descriptor {
            media_type: MEDIA_OCI_MANIFEST.to_string(),
            digest: digest.to_string(),
            size: 1,
            platform: platform.map(|(os, architecture)| Platform {
                os: os.to_string(),
                architecture: architecture.to_string(),
            }),
        }
    }

    #[test]
    fn chooses_linux_amd64_else_the_only_one() {
        let arm = desc("a", Some(("linux", "arm64")));
        let amd = desc("b", Some(("linux", "amd64")));
        assert_eq!(
            choose_manifest(&[arm.clone(), amd], "t").unwrap().digest,
            "b"
        );
        assert_eq!(
            choose_manifest(std::slice::from_ref(&arm), "t")
                .unwrap()
                .digest,
            "a"
        );
        let err = choose_manifest(&[arm.clone(), arm], "t").unwrap_err();
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        assert!(choose_manifest(&[], "t").is_err());
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
