//! Image signatures and the launch policy that requires them.
//!
//! Where an image's cosign signatures come from is behind
//! [`SignatureSource`]: the registry's `sha256-<hex>.sig` tags
//! ([`registry::RegistrySignatures`]), written by `nimbus image sign` or
//! pushed by any tool. The check itself is `nimbus_sign::check_signatures`,
//! shared with the agent, which checks again when it starts an instance.

pub mod registry;

use async_trait::async_trait;
use nimbus_api::{ApiError, Image, Policy, PolicySpec, POLICY_NAME};
use nimbus_sign::{Found, PublicKey, SignaturePair};

use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;

/// Where the signatures of an image digest are found.
#[async_trait]
pub trait SignatureSource: Send + Sync {
    /// The signatures stored for manifest `digest` in the registry
    /// repository `<project>/<repository>` (the layers of its `.sig`
    /// manifest); empty when there are none.
    async fn signatures(
        &self,
        project: &str,
        repository: &str,
        digest: &str,
    ) -> ApiResult<Vec<SignaturePair>>;

    /// Digests other than `digest` that were signed in the repository and
    /// that no name points at any more: the name moved after signing.
    async fn signed_elsewhere(
        &self,
        project: &str,
        repository: &str,
        digest: &str,
    ) -> ApiResult<Vec<String>>;
}

/// Remove a deleted project's policy, so a later project of the same name
/// starts without it (its signatures go with its repositories).
pub async fn forget_project(repo: &Repo, project: &str) -> ApiResult<()> {
    if repo
        .try_get::<Policy>(Some(project), POLICY_NAME)
        .await?
        .is_some()
    {
        repo.delete::<Policy>(Some(project), POLICY_NAME, None)
            .await?;
    }
    Ok(())
}

/// The project's policy; the empty one when none was ever set.
pub async fn policy(repo: &Repo, project: &str) -> ApiResult<Policy> {
    Ok(repo
        .try_get::<Policy>(Some(project), POLICY_NAME)
        .await?
        .unwrap_or_else(|| Policy {
            metadata: nimbus_api::Metadata::new(POLICY_NAME, Some(project)),
            spec: PolicySpec::default(),
        }))
}

/// The policy's keys, parsed (they were checked when they were stored).
pub fn trusted_keys(spec: &PolicySpec) -> ApiResult<Vec<PublicKey>> {
    spec.keys
        .iter()
        .map(|k| {
            PublicKey::from_pem(&k.public_key).map_err(|e| {
                ServerError(ApiError::internal(format!(
                    "the policy's key {} is unreadable: {e}",
                    k.fingerprint
                )))
            })
        })
        .collect()
}

/// Refuse (422) to launch `image` of `project` when the project's policy
/// requires a signature it does not have.
pub async fn enforce_launch_policy(
    repo: &Repo,
    source: &dyn SignatureSource,
    project: &str,
    image: &Image,
) -> ApiResult<()> {
    let policy = policy(repo, project).await?;
    if !policy.spec.requires_signature() {
        return Ok(());
    }
    let keys = trusted_keys(&policy.spec)?;
    let digest = &image.status.digest;
    let repository = nimbus_sign::image_repository(&image.metadata.name);
    let pairs = source.signatures(project, repository, digest).await?;
    let refusal = match nimbus_sign::check_signatures(digest, &pairs, &keys) {
        Ok(accepted) => {
            tracing::debug!(project, image = %image.metadata.name, key = %accepted.key_fingerprint, "signature accepted");
            return Ok(());
        }
        Err(refusal) => refusal,
    };
    let mut message = format!(
        "image {:?} may not launch in project {project:?}: {refusal}",
        image.metadata.name
    );
    if refusal.found == Found::Nothing {
        let elsewhere = source.signed_elsewhere(project, repository, digest).await?;
        if !elsewhere.is_empty() {
            message.push_str(&format!(
                ". Repository {project}/{repository} was signed when it pointed at {}: \
                 it was re-imported or re-pushed after signing; sign the image again if you trust it",
                elsewhere.join(", ")
            ));
        }
    }
    Err(ServerError(ApiError::invalid(message)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nimbus_api::{
        ImageSpec, ImageStatus, Metadata, Policy, PolicySpec, Repository, TrustedKey,
    };
    use nimbus_image::{ImageStore, Limits};
    use nimbus_sign::{KeyPair, SignaturePair};
    use nimbus_store::SqliteStore;

    use super::registry::RegistrySignatures;
    use super::*;

    const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(digest: &str) -> Image {
        Image {
            metadata: Metadata::new("app:1.0", Some("ops")),
            spec: ImageSpec::default(),
            status: ImageStatus {
                digest: digest.into(),
                ..Default::default()
            },
        }
    }

    fn signed(key: &KeyPair, digest: &str) -> SignaturePair {
        nimbus_sign::testing::signed(key, "ops/app", digest)
    }

    async fn require(repo: &Repo, key: &KeyPair) {
        repo.create(Policy {
            metadata: Metadata::new(POLICY_NAME, Some("ops")),
            spec: PolicySpec {
                require_signature: Some(true),
                keys: vec![TrustedKey {
                    fingerprint: key.public_key().fingerprint(),
                    public_key: key.public_key().to_pem(),
                    source: String::new(),
                }],
                max_severity: None,
            },
        })
        .await
        .expect("policy");
    }

    #[tokio::test]
    async fn signatures_append_to_the_sig_tag_and_the_policy_reads_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Repo::new(Arc::new(SqliteStore::open_in_memory().expect("store")));
        let images = Arc::new(ImageStore::open(dir.path(), Limits::default()).expect("images"));
        let source = RegistrySignatures {
            repo: repo.clone(),
            images,
        };
        let ops = KeyPair::generate().expect("key");
        let other = KeyPair::generate().expect("key");
        // Without a policy everything launches.
        enforce_launch_policy(&repo, &source, "ops", &image(OLD))
            .await
            .expect("no policy");
        require(&repo, &ops).await;
        let err = enforce_launch_policy(&repo, &source, "ops", &image(OLD))
            .await
            .expect_err("unsigned");
        assert!(
            err.0.message.contains("has no signature"),
            "{}",
            err.0.message
        );

        let append = |pair| source.append("ops", "app", OLD, pair);
        assert_eq!(append(signed(&other, OLD)).await.expect("append"), 1);
        let same = signed(&ops, OLD);
        assert_eq!(append(same.clone()).await.expect("append"), 2);
        assert_eq!(
            append(same).await.expect("again"),
            2,
            "a repeat is not added"
        );
        // The signatures are the repository's `.sig` tag, with their blobs.
        let record: Repository = repo.get(Some("ops"), "app").await.expect("repository");
        let tag = nimbus_sign::signature_tag(OLD).expect("tag");
        let sig = &record.status.tags[&tag];
        assert_eq!(
            record.status.manifests[sig].references.len(),
            2,
            "config and one payload"
        );
        enforce_launch_policy(&repo, &source, "ops", &image(OLD))
            .await
            .expect("signed by the trusted key");

        // The name now points at another digest: refused, and said why.
        let err = enforce_launch_policy(&repo, &source, "ops", &image(NEW))
            .await
            .expect_err("moved");
        assert!(
            err.0.message.contains("re-pushed after signing") && err.0.message.contains(OLD),
            "{}",
            err.0.message
        );
        // Another project, or another repository, sees none of it.
        for (project, repository) in [("dev", "app"), ("ops", "web")] {
            assert!(source
                .signatures(project, repository, OLD)
                .await
                .expect("read")
                .is_empty());
        }
    }
}
