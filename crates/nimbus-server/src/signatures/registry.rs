//! Signatures where cosign keeps them: the tag `sha256-<hex>.sig` of the
//! image's registry repository `<project>/<repository>`, whose manifest
//! has one simple-signing layer per signature. The manifest and its blobs
//! are in the image store's `blobs/` and the tag in the `Repository`
//! record, so `nimbus image sign`, `cosign sign` or any tool that pushes
//! such a tag to `/v2/` writes what the launch policy reads, and image
//! garbage collection keeps them as it keeps every repository's content.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_api::{
    ApiError, ErrorCode, Image, Metadata, Repository, RepositoryStatus, StoredManifest,
};
use nimbus_image::ImageStore;
use nimbus_sign::{SignatureManifest, SignaturePair, MAX_PAYLOAD_BYTES, MAX_SIGNATURES};

use super::SignatureSource;
use crate::error::{ApiResult, ServerError};
use crate::repo::{Repo, MAX_PAGE};

const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct RegistrySignatures {
    pub repo: Repo,
    pub images: Arc<ImageStore>,
}

/// The tag holding the signatures of `digest`.
pub fn signature_tag(digest: &str) -> ApiResult<String> {
    nimbus_sign::signature_tag(digest).map_err(|e| ServerError(ApiError::invalid(e.to_string())))
}

/// The digest a `.sig` tag signs (`sha256-<hex>.sig` → `sha256:<hex>`).
pub fn signed_digest(tag: &str) -> Option<String> {
    let hex = tag.strip_prefix("sha256-")?.strip_suffix(".sig")?;
    let digest = format!("sha256:{hex}");
    nimbus_sign::digest_hex(&digest).ok()?;
    Some(digest)
}

fn internal(what: String) -> ServerError {
    ServerError(ApiError::internal(what))
}

/// The signatures a loaded `.sig` manifest holds.
pub fn pairs_of(manifest: &SignatureManifest) -> ApiResult<Vec<SignaturePair>> {
    nimbus_sign::parse_signature_manifest(&manifest.manifest, |d| manifest.blobs.get(d).cloned())
        .map_err(|e| {
            ServerError(ApiError::invalid(format!(
                "the signature manifest {} is unreadable: {e}; push a valid one to the tag (or sign again after deleting it)",
                manifest.digest
            )))
        })
}

impl RegistrySignatures {
    async fn status(&self, project: &str, repository: &str) -> ApiResult<RepositoryStatus> {
        Ok(self
            .repo
            .try_get::<Repository>(Some(project), repository)
            .await?
            .map(|r| r.status)
            .unwrap_or_default())
    }

    /// The manifest under `tag` with its small blobs (config, payloads);
    /// `None` when the tag is not there. Blobs larger than a payload may be
    /// are left out (the parse then names the missing payload).
    async fn load(
        &self,
        status: &RepositoryStatus,
        tag: &str,
    ) -> ApiResult<Option<SignatureManifest>> {
        let Some(digest) = status.tags.get(tag).cloned() else {
            return Ok(None);
        };
        let named = status
            .manifests
            .get(&digest)
            .map(|m| m.references.clone())
            .unwrap_or_default();
        if named.len() > MAX_SIGNATURES + 1 {
            return Err(ServerError(ApiError::invalid(format!(
                "the signature manifest {digest} under tag {tag} names {} blobs, more than the {MAX_SIGNATURES} signatures an image may have",
                named.len()
            ))));
        }
        let small: Vec<String> = named
            .into_iter()
            .filter(|d| {
                status
                    .blobs
                    .get(d)
                    .is_some_and(|s| *s <= MAX_PAYLOAD_BYTES as u64)
            })
            .collect();
        let images = self.images.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let manifest = images.read_manifest(&digest)?;
            let mut blobs = BTreeMap::new();
            for d in small {
                let bytes = images.read_small_blob(&d, MAX_PAYLOAD_BYTES as u64)?;
                blobs.insert(d, bytes);
            }
            Ok::<_, nimbus_image::ImageError>(SignatureManifest {
                manifest,
                digest,
                blobs,
            })
        })
        .await
        .map_err(|e| internal(format!("reading signatures failed: {e}")))?
        .map_err(|e| internal(format!("reading the signature manifest under {tag}: {e}")))?;
        Ok(Some(loaded))
    }

    /// The `.sig` manifest of `digest` in the repository, for the agent.
    pub async fn manifest(
        &self,
        project: &str,
        repository: &str,
        digest: &str,
    ) -> ApiResult<Option<SignatureManifest>> {
        let tag = signature_tag(digest)?;
        let status = self.status(project, repository).await?;
        self.load(&status, &tag).await
    }

    /// Add `pair` to the signatures of `digest` in the repository, as
    /// cosign does: a new `.sig` manifest with one more layer replaces the
    /// tag (the old one stays by digest). Returns how many signatures the
    /// digest has now. The caller holds the image lock shared, so garbage
    /// collection cannot drop the blobs before the record names them.
    pub async fn append(
        &self,
        project: &str,
        repository: &str,
        digest: &str,
        pair: SignaturePair,
    ) -> ApiResult<usize> {
        let tag = signature_tag(digest)?;
        for _ in 0..8 {
            let status = self.status(project, repository).await?;
            let before = status.tags.get(&tag).cloned();
            let mut pairs = match self.load(&status, &tag).await? {
                Some(existing) => pairs_of(&existing)?,
                None => Vec::new(),
            };
            pairs.push(pair.clone());
            let built = SignatureManifest::build(&pairs)
                .map_err(|e| ServerError(ApiError::invalid(e.to_string())))?;
            let count = pairs_of(&built)?.len();
            self.store(&built).await?;
            let fresh = || Repository {
                metadata: Metadata::new(repository, Some(project)),
                status: RepositoryStatus::default(),
            };
            let linked = self
                .repo
                .modify_or_create(Some(project), repository, fresh, |r: &mut Repository| {
                    if r.status.tags.get(&tag) != before.as_ref() {
                        return Err(ServerError(ApiError::conflict("signed meanwhile")));
                    }
                    link(&mut r.status, &built, &tag);
                    Ok(())
                })
                .await;
            match linked {
                Ok(_) => return Ok(count),
                Err(ServerError(e)) if e.code == ErrorCode::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ServerError(ApiError::conflict(format!(
            "the signatures under {project}/{repository}:{tag} are changing too fast; sign again"
        ))))
    }

    /// Writes the manifest and its blobs to the image store (each is a
    /// content-addressed blob of its exact bytes).
    async fn store(&self, built: &SignatureManifest) -> ApiResult<()> {
        let images = self.images.clone();
        let built = built.clone();
        tokio::task::spawn_blocking(move || {
            for bytes in built.blobs.values() {
                images.store_manifest(bytes)?;
            }
            images.store_manifest(&built.manifest).map(drop)
        })
        .await
        .map_err(|e| internal(format!("storing signatures failed: {e}")))?
        .map_err(|e| internal(format!("storing the signature manifest: {e}")))
    }
}

/// Names a stored `.sig` manifest in the repository record under `tag`.
fn link(status: &mut RepositoryStatus, built: &SignatureManifest, tag: &str) {
    for (d, bytes) in &built.blobs {
        status.blobs.insert(d.clone(), bytes.len() as u64);
    }
    status.manifests.insert(
        built.digest.clone(),
        StoredManifest {
            media_type: OCI_MANIFEST_MEDIA_TYPE.into(),
            size_bytes: built.manifest.len() as u64,
            references: built.blobs.keys().cloned().collect(),
        },
    );
    status.tags.insert(tag.to_string(), built.digest.clone());
}

#[async_trait]
impl SignatureSource for RegistrySignatures {
    async fn signatures(
        &self,
        project: &str,
        repository: &str,
        digest: &str,
    ) -> ApiResult<Vec<SignaturePair>> {
        let Ok(tag) = signature_tag(digest) else {
            // Not a sha256 manifest digest: nothing can be signed for it.
            return Ok(Vec::new());
        };
        let status = self.status(project, repository).await?;
        match self.load(&status, &tag).await? {
            Some(manifest) => pairs_of(&manifest),
            None => Ok(Vec::new()),
        }
    }

    /// Digests signed in the repository that neither one of its tags nor
    /// an image of the project points at any more: the name moved.
    async fn signed_elsewhere(
        &self,
        project: &str,
        repository: &str,
        digest: &str,
    ) -> ApiResult<Vec<String>> {
        let status = self.status(project, repository).await?;
        let mut current: HashSet<String> = status
            .tags
            .iter()
            .filter(|(t, _)| signed_digest(t).is_none())
            .map(|(_, d)| d.clone())
            .collect();
        current.extend(
            self.repo
                .list_every::<Image>(Some(project), MAX_PAGE)
                .await?
                .into_iter()
                .map(|i| i.status.digest),
        );
        Ok(status
            .tags
            .keys()
            .filter_map(|t| signed_digest(t))
            .filter(|d| d != digest && !current.contains(d))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cosign_signature_tags_name_a_signed_digest() {
        let hex = "a".repeat(64);
        assert_eq!(
            signed_digest(&format!("sha256-{hex}.sig")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(signed_digest("1.0"), None);
        assert_eq!(signed_digest("sha256-abc.sig"), None);
        assert_eq!(signed_digest(&format!("sha256-{hex}.att")), None);
    }
}
