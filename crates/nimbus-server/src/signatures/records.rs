//! Signatures kept as `ImageSignatures` records in the store, one per
//! signed digest, named by cosign's tag `sha256-<hex>.sig`: the `.sig`
//! manifest and its small blobs (config, payloads) inline.

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use nimbus_api::{ApiError, ImageSignatures, ImageSignaturesSpec, Metadata};
use nimbus_sign::{SignatureManifest, SignaturePair};

use super::SignatureSource;
use crate::error::{ApiResult, ServerError};
use crate::repo::{Repo, MAX_PAGE};

pub struct RecordSignatures {
    pub repo: Repo,
}

/// The record's name for a digest: cosign's tag.
pub fn record_name(digest: &str) -> ApiResult<String> {
    nimbus_sign::signature_tag(digest).map_err(|e| ServerError(ApiError::invalid(e.to_string())))
}

/// The signature pairs a record holds.
pub fn pairs_of(record: &ImageSignaturesSpec) -> ApiResult<Vec<SignaturePair>> {
    nimbus_sign::parse_stored_signatures(&record.manifest, &record.blobs).map_err(|e| {
        ServerError(ApiError::internal(format!(
            "the stored signatures of {} are unreadable: {e}",
            record.digest
        )))
    })
}

/// A record holding `manifest` for `digest`.
pub fn spec_of(
    digest: &str,
    manifest: &SignatureManifest,
    references: Vec<String>,
) -> ImageSignaturesSpec {
    ImageSignaturesSpec {
        digest: digest.to_string(),
        manifest: String::from_utf8_lossy(&manifest.manifest).into_owned(),
        manifest_digest: manifest.digest.clone(),
        blobs: manifest
            .blobs
            .iter()
            .map(|(d, b)| (d.clone(), STANDARD.encode(b)))
            .collect(),
        references,
    }
}

impl RecordSignatures {
    /// Add `pair` to the signatures of `digest` (as cosign appends a layer
    /// to the `.sig` manifest), recording that `reference` was signed.
    /// Returns how many signatures the digest has now.
    pub async fn append(
        &self,
        project: &str,
        digest: &str,
        reference: &str,
        pair: SignaturePair,
    ) -> ApiResult<usize> {
        let name = record_name(digest)?;
        let fresh = || ImageSignatures {
            metadata: Metadata::new(&name, Some(project)),
            spec: ImageSignaturesSpec::default(),
        };
        let stored = self
            .repo
            .modify_or_create(
                Some(project),
                &name,
                fresh,
                |record: &mut ImageSignatures| {
                    let mut pairs = if record.spec.manifest.is_empty() {
                        Vec::new()
                    } else {
                        pairs_of(&record.spec)?
                    };
                    pairs.push(pair.clone());
                    let mut references = std::mem::take(&mut record.spec.references);
                    if !references.iter().any(|r| r == reference) {
                        references.push(reference.to_string());
                    }
                    let manifest = SignatureManifest::build(&pairs)
                        .map_err(|e| ServerError(ApiError::invalid(e.to_string())))?;
                    record.spec = spec_of(digest, &manifest, references);
                    Ok(())
                },
            )
            .await?;
        Ok(pairs_of(&stored.spec)?.len())
    }
}

#[async_trait]
impl SignatureSource for RecordSignatures {
    async fn signatures(&self, project: &str, digest: &str) -> ApiResult<Vec<SignaturePair>> {
        let Ok(name) = record_name(digest) else {
            // Not a sha256 manifest digest: nothing can be signed for it.
            return Ok(Vec::new());
        };
        match self
            .repo
            .try_get::<ImageSignatures>(Some(project), &name)
            .await?
        {
            Some(record) => pairs_of(&record.spec),
            None => Ok(Vec::new()),
        }
    }

    async fn signed_elsewhere(
        &self,
        project: &str,
        reference: &str,
        digest: &str,
    ) -> ApiResult<Vec<String>> {
        Ok(self
            .repo
            .list_every::<ImageSignatures>(Some(project), MAX_PAGE)
            .await?
            .into_iter()
            .filter(|r| r.spec.digest != digest && r.spec.references.iter().any(|x| x == reference))
            .map(|r| r.spec.digest)
            .collect())
    }
}

/// Remove a deleted project's policy and signature records, so a later
/// project of the same name starts without them.
pub async fn forget_project(repo: &Repo, project: &str) -> ApiResult<()> {
    for record in repo
        .list_every::<ImageSignatures>(Some(project), MAX_PAGE)
        .await?
    {
        repo.delete::<ImageSignatures>(Some(project), &record.metadata.name, None)
            .await?;
    }
    if repo
        .try_get::<nimbus_api::Policy>(Some(project), nimbus_api::POLICY_NAME)
        .await?
        .is_some()
    {
        repo.delete::<nimbus_api::Policy>(Some(project), nimbus_api::POLICY_NAME, None)
            .await?;
    }
    Ok(())
}
