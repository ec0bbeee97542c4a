//! Images pushed to the registry piece by piece: manifests checked for what
//! they reference, stored as they were pushed, and an image built from a
//! pushed manifest whose blobs are already in `blobs/` (the blob uploads
//! themselves are in `uploads.rs`).
//!
//! Nothing here knows about repositories, projects or HTTP: the caller decides
//! who may touch which upload and which blobs a repository may reference.

use std::io;
use std::path::Path;

use serde::Deserialize;

use crate::archive::{ImageArchive, ResolvedImage};
use crate::blob::{self, digest_from_hex, digest_hex};
use crate::error::ImageError;
use crate::oci::{self, BlobSource, Descriptor, MAX_METADATA_BYTES};
use crate::{ImageStore, ImportedImage, Staging};

/// The four manifest kinds the registry accepts.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest accepted (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = MAX_METADATA_BYTES;

/// Why a pushed blob or manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "upload {id} is unknown or was closed; start a new one with POST /v2/<name>/blobs/uploads/"
    )]
    UploadUnknown { id: String },

    #[error(
        "upload {id} would hold more than {limit} bytes, the image store's limit \
         (--max-image-bytes); nothing was kept"
    )]
    TooLarge { id: String, limit: u64 },

    /// The caller's budget for the upload (a project's quota) refused it.
    #[error("upload {id} was refused: {reason}")]
    OverBudget { id: String, reason: String },

    #[error(
        "upload {id} has {actual} bytes, but the chunk starts at byte {start}; resume from \
         the offset GET on the upload reports"
    )]
    OutOfOrder { id: String, start: u64, actual: u64 },

    #[error(
        "the uploaded bytes hash to {actual} ({size} bytes), not to {expected} as the \
         client declared; nothing was kept, upload the blob again"
    )]
    DigestMismatch {
        expected: String,
        actual: String,
        size: u64,
    },

    #[error("manifest is invalid: {reason}")]
    ManifestInvalid { reason: String },

    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A descriptor a manifest holds: what it names, and the size it claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub digest: String,
    pub size: u64,
}

/// What a pushed manifest is, and what must exist before it may be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRefs {
    pub media_type: String,
    /// Config and layers (of an image manifest).
    pub blobs: Vec<Reference>,
    /// Child manifests (of an index).
    pub manifests: Vec<Reference>,
}

impl ManifestRefs {
    pub fn is_index(&self) -> bool {
        self.media_type == MEDIA_OCI_INDEX || self.media_type == MEDIA_DOCKER_LIST
    }
}

#[derive(Deserialize)]
struct AnyManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

fn invalid(reason: impl Into<String>) -> PushError {
    PushError::ManifestInvalid {
        reason: reason.into(),
    }
}

/// Parses a pushed manifest sent with `content_type` and lists what it references.
/// The bytes are kept as they are; this only reads them.
pub fn manifest_references(bytes: &[u8], content_type: &str) -> Result<ManifestRefs, PushError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "it is {} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let doc: AnyManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("not a JSON manifest or index: {e}")))?;
    if doc.schema_version != Some(2) {
        return Err(invalid(
            "schemaVersion must be 2 (Docker schema 1 manifests are not supported)",
        ));
    }
    let media_type = effective_type(content_type, doc.media_type.as_deref(), &doc)?;
    let refs = |list: &[Descriptor]| -> Result<Vec<Reference>, PushError> {
        list.iter()
            .map(|d| {
                digest_hex(&d.digest, "descriptor")
                    .map_err(|e| invalid(e.to_string()))
                    .map(|_| Reference {
                        digest: d.digest.clone(),
                        size: d.size,
                    })
            })
            .collect()
    };
    let mut out = ManifestRefs {
        media_type,
        blobs: Vec::new(),
        manifests: Vec::new(),
    };
    if out.is_index() {
        let list = doc
            .manifests
            .ok_or_else(|| invalid("an image index needs a `manifests` list"))?;
        out.manifests = refs(&list)?;
    } else {
        let config = doc
            .config
            .ok_or_else(|| invalid("an image manifest needs a `config` descriptor"))?;
        let layers = doc.layers.unwrap_or_default();
        out.blobs = refs(std::slice::from_ref(&config))?;
        out.blobs.extend(refs(&layers)?);
    }
    Ok(out)
}

/// The manifest kind from the request's `Content-Type`, the document's own
/// `mediaType`, or (neither given) its shape; the two must agree when both are set.
fn effective_type(
    content_type: &str,
    declared: Option<&str>,
    doc: &AnyManifest,
) -> Result<String, PushError> {
    let known = [
        MEDIA_OCI_MANIFEST,
        MEDIA_OCI_INDEX,
        MEDIA_DOCKER_MANIFEST,
        MEDIA_DOCKER_LIST,
    ];
    let header = content_type.split(';').next().unwrap_or("").trim();
    let header = (!header.is_empty() && known.contains(&header)).then_some(header);
    let declared = declared.filter(|d| !d.is_empty());
    let chosen = match (header, declared) {
        (Some(h), Some(d)) if h != d => {
            return Err(invalid(format!(
                "Content-Type is {h} but the document's mediaType is {d}; send them alike"
            )))
        }
        (Some(h), _) => h.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) if doc.manifests.is_some() => MEDIA_OCI_INDEX.to_string(),
        (None, None) => MEDIA_OCI_MANIFEST.to_string(),
    };
    if !known.contains(&chosen.as_str()) {
        return Err(invalid(format!(
            "media type {chosen} is not an OCI or Docker v2 image manifest or index"
        )));
    }
    Ok(chosen)
}

/// Blobs read straight from the store's `blobs/` while resolving a pushed image.
struct StoredBlobs<'a> {
    store: &'a ImageStore,
}

impl BlobSource for StoredBlobs<'_> {
    fn locate_hex(&self, desc: &Descriptor, referenced_by: &str) -> Result<String, ImageError> {
        let hex = digest_hex(&desc.digest, referenced_by)?;
        let path = self.store.blobs.path(hex);
        let size = std::fs::metadata(&path)
            .map_err(|_| ImageError::MissingBlob {
                digest: desc.digest.clone(),
                referenced_by: referenced_by.to_string(),
            })?
            .len();
        if size != desc.size {
            return Err(ImageError::SizeMismatch {
                what: format!("blob {} referenced by {referenced_by}", desc.digest),
                expected: desc.size,
                actual: size,
            });
        }
        Ok(hex.to_string())
    }

    fn read_json_blob(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, Vec<u8>), ImageError> {
        let hex = self.locate_hex(desc, referenced_by)?;
        let data = self.store.blobs.read_small(&hex, MAX_METADATA_BYTES)?;
        oci::verify_digest(
            &format!("stored blob {}", desc.digest),
            &hex,
            &blob::sha256_hex(&data),
        )?;
        Ok((hex, data))
    }
}

impl ImageStore {
    /// The limits the store enforces (an upload may not exceed `max_archive_bytes`).
    pub fn limits(&self) -> &crate::Limits {
        &self.limits
    }

    /// The size of a stored blob, `None` if it is not stored.
    pub fn blob_size(&self, digest: &str) -> Result<Option<u64>, ImageError> {
        let hex = digest_hex(digest, "blob digest")?;
        match std::fs::metadata(self.blobs.path(hex)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read size of blob", self.blobs.path(hex), e)),
        }
    }

    /// Stores a manifest's exact bytes as a blob; returns its digest.
    pub fn store_manifest(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let hex = blob::sha256_hex(bytes);
        if !self.blobs.contains(&hex) {
            let staging = Staging::create(&self.tmp_dir, "manifest")?;
            let path = staging.path.join("manifest");
            blob::write_new_file(&path, bytes)
                .map_err(|e| ImageError::io("write staged manifest", &path, e))?;
            self.blobs.commit(&path, &hex)?;
        }
        Ok(digest_from_hex(&hex))
    }

    /// Reads a stored manifest's bytes.
    pub fn read_manifest(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let hex = digest_hex(digest, "manifest digest")?;
        self.blobs.read_small(hex, MAX_MANIFEST_BYTES)
    }

    /// Reads a stored blob of at most `max_bytes` (a signature's payload or
    /// config): refused, not truncated, when it is larger.
    pub fn read_small_blob(&self, digest: &str, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
        let hex = digest_hex(digest, "blob digest")?;
        self.blobs.read_small(hex, max_bytes)
    }

    /// Builds the image a pushed manifest (or every linux image of an index)
    /// describes from blobs already stored, unpacking its layers as an import
    /// does (which also stores the image manifest's bytes). Nothing is stored on
    /// error.
    pub fn image_from_manifest(
        &self,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<ImportedImage, ImageError> {
        let staging = Staging::create(&self.tmp_dir, "pushed")?;
        let hex = blob::sha256_hex(bytes);
        let source = PushedManifest {
            stored: StoredBlobs { store: self },
            hex: hex.clone(),
            bytes,
        };
        let descriptor = Descriptor::new(media_type, &digest_from_hex(&hex), bytes.len() as u64);
        let mut pushed = PushedImage { source, descriptor };
        self.import_archive(&staging, &mut pushed, crate::ImageFormat::Oci)
    }
}

/// A pushed manifest or index resolved like an archive's, every blob already
/// stored (checked when the manifest was pushed), so none is ever copied.
struct PushedImage<'a> {
    source: PushedManifest<'a>,
    descriptor: Descriptor,
}

impl ImageArchive for PushedImage<'_> {
    fn resolve(&mut self) -> Result<ResolvedImage, ImageError> {
        oci::resolve_descriptors(
            &self.source,
            std::slice::from_ref(&self.descriptor),
            "the pushed tag",
        )
    }

    fn copy_blob(&self, hex: &str, _dest: &Path) -> Result<(), ImageError> {
        Err(ImageError::MissingBlob {
            digest: digest_from_hex(hex),
            referenced_by: "the pushed manifest".to_string(),
        })
    }
}

/// The pushed manifest (not stored yet) in front of the stored blobs.
struct PushedManifest<'a> {
    stored: StoredBlobs<'a>,
    hex: String,
    bytes: &'a [u8],
}

impl BlobSource for PushedManifest<'_> {
    fn locate_hex(&self, desc: &Descriptor, referenced_by: &str) -> Result<String, ImageError> {
        self.stored.locate_hex(desc, referenced_by)
    }

    fn read_json_blob(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<(String, Vec<u8>), ImageError> {
        if digest_hex(&desc.digest, referenced_by)? == self.hex {
            return Ok((self.hex.clone(), self.bytes.to_vec()));
        }
        self.stored.read_json_blob(desc, referenced_by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{entry_count as entries, store_with_limit as store};

    #[test]
    fn manifest_references_list_blobs_or_children_and_refuse_nonsense() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":3}},"layers":[{{"mediaType":"y","digest":"{}","size":5}}]}}"#,
            d('a'),
            d('b')
        );
        let refs = manifest_references(manifest.as_bytes(), MEDIA_OCI_MANIFEST).unwrap();
        assert_eq!(refs.blobs.len(), 2);
        assert_eq!(refs.blobs[1].size, 5);
        assert!(!refs.is_index());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":9}}]}}"#,
            d('c')
        );
        let refs = manifest_references(index.as_bytes(), "").unwrap();
        assert!(refs.is_index());
        assert_eq!(refs.manifests[0].digest, d('c'));
        for (body, ct) in [
            ("not json", MEDIA_OCI_MANIFEST),
            (r#"{"schemaVersion":1}"#, MEDIA_OCI_MANIFEST),
            (manifest.as_str(), MEDIA_DOCKER_MANIFEST),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:../x","size":1}}"#,
                "",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"text/plain","config":{"digest":"x","size":1}}"#,
                "",
            ),
        ] {
            assert!(
                matches!(
                    manifest_references(body.as_bytes(), ct),
                    Err(PushError::ManifestInvalid { .. })
                ),
                "{body} accepted"
            );
        }
    }

    fn push(store: &ImageStore, data: &[u8]) -> String {
        let digest = format!("sha256:{}", blob::sha256_hex(data));
        let id = blob::sha256_hex(data)[..16].to_string();
        store
            .push_blob(&id, "p/r", &digest, &mut &data[..], &mut |_| Ok(()))
            .unwrap();
        digest
    }

    fn manifest(config: (&str, &str, usize), layer: (&str, &str, usize)) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": config.0, "digest": config.1, "size": config.2},
            "layers": [{"mediaType": layer.0, "digest": layer.1, "size": layer.2}]
        }))
        .unwrap()
    }

    #[test]
    fn a_pushed_manifest_or_its_index_becomes_an_image_and_artifacts_do_not() {
        let (_d, store) = store(1 << 30);
        let layer = crate::testing::one_file_rootfs_tar("pushed");
        let layer_digest = push(&store, &layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["cat", "/data.txt"]}
        }))
        .unwrap();
        let config_digest = push(&store, &config);
        let image_manifest = manifest(
            (
                "application/vnd.oci.image.config.v1+json",
                &config_digest,
                config.len(),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                &layer_digest,
                layer.len(),
            ),
        );
        let image = store
            .image_from_manifest(&image_manifest, MEDIA_OCI_MANIFEST)
            .unwrap();
        assert_eq!(
            image.manifest_digest,
            format!("sha256:{}", blob::sha256_hex(&image_manifest))
        );
        assert_eq!(image.config.cmd, ["cat", "/data.txt"]);
        let dirs = store.layer_dirs(&image).unwrap();
        assert_eq!(
            std::fs::read_to_string(dirs[0].join("data.txt")).unwrap(),
            "pushed"
        );
        // The image manifest is stored as it was pushed.
        assert_eq!(
            store.read_manifest(&image.manifest_digest).unwrap(),
            image_manifest
        );

        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": format!("sha256:{}", "b".repeat(64)), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": image.manifest_digest, "size": image_manifest.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        }))
        .unwrap();
        // Every platform of an index is kept, so each must be stored.
        assert!(matches!(
            store.image_from_manifest(&index, MEDIA_OCI_INDEX),
            Err(ImageError::MissingBlob { .. })
        ));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": image.manifest_digest, "size": image_manifest.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        }))
        .unwrap();
        let from_index = store.image_from_manifest(&index, MEDIA_OCI_INDEX).unwrap();
        assert_eq!(from_index, image);

        // A cosign signature: its layer is the simple-signing payload.
        let payload = br#"{"critical":{"image":{"docker-manifest-digest":"sha256:x"}}}"#;
        let payload_digest = push(&store, payload);
        let signature = manifest(
            (
                "application/vnd.oci.image.config.v1+json",
                &config_digest,
                config.len(),
            ),
            (
                "application/vnd.dev.cosign.simplesigning.v1+json",
                &payload_digest,
                payload.len(),
            ),
        );
        let err = store
            .image_from_manifest(&signature, MEDIA_OCI_MANIFEST)
            .unwrap_err();
        assert!(
            matches!(err, ImageError::UnsupportedMediaType { .. }),
            "{err}"
        );

        // A layer that was never pushed: refused, nothing new in layers/ or tmp/.
        let layers_before = entries(&store, "layers");
        let missing = manifest(
            (
                "application/vnd.oci.image.config.v1+json",
                &config_digest,
                config.len(),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                &format!("sha256:{}", "c".repeat(64)),
                3,
            ),
        );
        let err = store
            .image_from_manifest(&missing, MEDIA_OCI_MANIFEST)
            .unwrap_err();
        assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
        assert_eq!(entries(&store, "layers"), layers_before);
        assert_eq!(entries(&store, "tmp"), 0);
    }
}
