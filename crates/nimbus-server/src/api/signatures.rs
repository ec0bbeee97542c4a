//! Image signatures: `nimbus image sign` uploads a signature made on the
//! client, stored as the `sha256-<hex>.sig` tag of the image's registry
//! repository; the agent reads an image digest's signatures back from it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use nimbus_api::{ApiError, Image, ImageSignatures, Role, SignatureAdded, SignatureUpload};
use nimbus_sign::{PublicKey, SignaturePair, SimpleSigning};

use super::body::JsonBody;
use super::params::ImagePath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::signatures::registry::{self, RegistrySignatures};

/// `{project}`, an image `{name}` and a signature tag `sha256-<hex>.sig`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SignaturePath {
    /// Project name.
    pub project: String,
    /// Image name; its registry repository is the name without `:tag`.
    pub name: String,
    /// The signed digest as cosign tags it: `sha256-<hex>.sig`.
    pub tag: String,
}

fn registry_signatures(state: &crate::state::AppState) -> RegistrySignatures {
    RegistrySignatures {
        repo: state.repo.clone(),
        images: state.images.clone(),
    }
}

#[utoipa::path(post, path = "/v1/projects/{project}/images/{name}/signatures", operation_id = "add_image_signature", tag = "images", params(ImagePath), request_body = SignatureUpload,
    responses((status = 201, body = SignatureAdded, description = "Stored in the digest's `.sig` tag of the image's registry repository"),
        (status = 422, description = "The payload does not name the image's current digest, or the signature does not verify under the given key")))]
pub async fn add(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(upload): JsonBody<SignatureUpload>,
) -> ApiResult<(StatusCode, Json<SignatureAdded>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let image: Image = state.repo.get(Some(&project), &name).await?;
    let (pair, key) = checked_upload(&upload, &image)?;
    let repository = nimbus_sign::image_repository(&name);
    let count = {
        // Garbage collection must not drop the new blobs before the
        // repository record names them.
        let _storing = state.image_lock.read().await;
        registry_signatures(&state)
            .append(&project, repository, &image.status.digest, pair)
            .await?
    };
    Ok((
        StatusCode::CREATED,
        Json(SignatureAdded {
            image: name,
            tag: registry::signature_tag(&image.status.digest)?,
            digest: image.status.digest,
            key_fingerprint: key.fingerprint(),
            signatures: count,
        }),
    ))
}

/// Decode an upload and check it: a cosign payload naming the image's
/// digest now, signed by the key it comes with.
fn checked_upload(
    upload: &SignatureUpload,
    image: &Image,
) -> ApiResult<(SignaturePair, PublicKey)> {
    let invalid = |m: String| ServerError(ApiError::invalid(m));
    let payload = STANDARD
        .decode(&upload.payload)
        .map_err(|e| invalid(format!("the payload is not base64: {e}")))?;
    let signature = STANDARD
        .decode(&upload.signature)
        .map_err(|e| invalid(format!("the signature is not base64: {e}")))?;
    let key = PublicKey::from_pem(&upload.public_key).map_err(|e| invalid(e.to_string()))?;
    let parsed = SimpleSigning::parse(&payload).map_err(|e| invalid(e.to_string()))?;
    let project = image.metadata.project.as_deref().unwrap_or_default();
    let wanted = nimbus_sign::docker_reference(project, &image.metadata.name);
    let named = &parsed.critical.identity.docker_reference;
    if *named != wanted {
        return Err(invalid(format!(
            "the payload names repository {named:?}, not {wanted:?} where image {:?} lives; sign it with `nimbus image sign`",
            image.metadata.name
        )));
    }
    if parsed.digest() != image.status.digest {
        return Err(invalid(format!(
            "the payload signs {} but image {:?} is now {}: it changed since it was read; run `nimbus image sign` again",
            parsed.digest(),
            image.metadata.name,
            image.status.digest
        )));
    }
    if !key.verifies(&payload, &signature) {
        return Err(invalid(format!(
            "the signature does not verify under key {}: sign with the private key of that public key",
            key.fingerprint()
        )));
    }
    Ok((
        SignaturePair {
            payload,
            signature,
            signer: Some(key.fingerprint()),
        },
        key,
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/images/{name}/signatures/{tag}", operation_id = "get_image_signatures", tag = "images", params(SignaturePath),
    responses((status = 200, body = ImageSignatures, description = "The `.sig` manifest of a digest in the image's registry repository, and its blobs"),
        (status = 404, description = "No signature of that digest in the repository")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name, tag)): Path<(String, String, String)>,
) -> ApiResult<Json<ImageSignatures>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    let repository = nimbus_sign::image_repository(&name);
    let not_found = || {
        ServerError(ApiError::not_found(format!(
            "no signature {tag:?} in repository {project}/{repository}; sign the image with `nimbus image sign`"
        )))
    };
    let digest = registry::signed_digest(&tag).ok_or_else(|| {
        ServerError(ApiError::invalid(format!(
            "{tag:?} is not a signature tag; it is `sha256-<64 hex>.sig`"
        )))
    })?;
    let manifest = registry_signatures(&state)
        .manifest(&project, repository, &digest)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(ImageSignatures {
        metadata: nimbus_api::Metadata::new(&tag, Some(&project)),
        spec: nimbus_api::ImageSignaturesSpec {
            digest,
            manifest: String::from_utf8_lossy(&manifest.manifest).into_owned(),
            manifest_digest: manifest.digest,
            blobs: manifest
                .blobs
                .iter()
                .map(|(d, b)| (d.clone(), STANDARD.encode(b)))
                .collect(),
            references: vec![format!("{project}/{repository}")],
        },
    }))
}

#[cfg(test)]
mod tests {
    use nimbus_api::{ImageSpec, ImageStatus, Metadata};
    use nimbus_sign::KeyPair;

    use super::*;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn upload(key: &KeyPair, signed_by: &KeyPair, digest: &str) -> SignatureUpload {
        upload_for("ops/app", key, signed_by, digest)
    }

    fn upload_for(
        reference: &str,
        key: &KeyPair,
        signed_by: &KeyPair,
        digest: &str,
    ) -> SignatureUpload {
        let payload = SimpleSigning::new(reference, digest)
            .expect("payload")
            .to_bytes();
        SignatureUpload {
            signature: STANDARD.encode(signed_by.sign(&payload).expect("sign")),
            payload: STANDARD.encode(payload),
            public_key: key.public_key().to_pem(),
        }
    }

    fn image() -> Image {
        Image {
            metadata: Metadata::new("app", Some("ops")),
            spec: ImageSpec::default(),
            status: ImageStatus {
                digest: DIGEST.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn an_upload_must_sign_the_current_digest_under_its_own_key() {
        let key = KeyPair::generate().expect("key");
        let other = KeyPair::generate().expect("key");
        let (pair, signer) = checked_upload(&upload(&key, &key, DIGEST), &image()).expect("valid");
        assert_eq!(pair.signer, Some(key.public_key().fingerprint()));
        assert_eq!(signer, key.public_key());

        let stale = checked_upload(&upload(&key, &key, OTHER), &image()).expect_err("stale");
        assert!(
            stale.0.message.contains("sign` again"),
            "{}",
            stale.0.message
        );
        let forged = checked_upload(&upload(&key, &other, DIGEST), &image()).expect_err("forged");
        assert!(
            forged.0.message.contains("does not verify"),
            "{}",
            forged.0.message
        );
        // The payload must name the repository the signature is stored in.
        let elsewhere = upload_for("ops/web", &key, &key, DIGEST);
        let err = checked_upload(&elsewhere, &image()).expect_err("other repository");
        assert!(err.0.message.contains("\"ops/app\""), "{}", err.0.message);
        let mut garbled = upload(&key, &key, DIGEST);
        garbled.signature = "!!".into();
        let err = checked_upload(&garbled, &image()).expect_err("garbled");
        assert!(err.0.message.contains("base64"), "{}", err.0.message);
    }
}
