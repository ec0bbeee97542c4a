//! Manifests and image indexes: PUT/GET/HEAD/DELETE by tag or digest. The
//! exact bytes pushed are stored (as a blob) and served; their digest is the
//! manifest's digest. Every blob a manifest names, and every manifest an
//! index names, must already be in the repository.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use nimbus_api::{RepositoryStatus, StoredManifest};
use nimbus_image::{ImageError, ImportedImage, ManifestRefs, MAX_MANIFEST_BYTES};
use sha2::Digest as _;

use super::endpoint::{Reference, RepoName};
use super::error::{Code, RegResult, RegistryError};
use super::{blocking, records, Ctx};

fn manifest_unknown(name: &RepoName, reference: &str) -> RegistryError {
    RegistryError::new(
        Code::ManifestUnknown,
        format!(
            "manifest {reference} is not in repository {}; list its tags with GET /v2/{}/tags/list",
            name.full(),
            name.full()
        ),
    )
}

/// Every blob (with its size) and child manifest `refs` names is in the repository.
fn check_references(
    status: &RepositoryStatus,
    refs: &ManifestRefs,
    name: &RepoName,
) -> RegResult<()> {
    for blob in &refs.blobs {
        match status.blobs.get(&blob.digest) {
            None => {
                return Err(RegistryError::new(
                    Code::ManifestBlobUnknown,
                    format!(
                        "the manifest names blob {}, which is not in repository {}; push the blob first",
                        blob.digest,
                        name.full()
                    ),
                ))
            }
            Some(size) if *size != blob.size => {
                return Err(RegistryError::new(
                    Code::ManifestInvalid,
                    format!(
                        "the manifest says blob {} has {} bytes, but it has {size}; fix the descriptor",
                        blob.digest, blob.size
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    for child in &refs.manifests {
        if !status.manifests.contains_key(&child.digest) {
            return Err(RegistryError::new(
                Code::ManifestBlobUnknown,
                format!(
                    "the index names manifest {}, which is not in repository {}; push it first (by digest)",
                    child.digest,
                    name.full()
                ),
            ));
        }
    }
    Ok(())
}

/// The image a tagged manifest makes; `None` for what is no runnable
/// image (a signature, an artifact, an index without a linux image).
async fn build_image(
    ctx: &Ctx,
    bytes: &[u8],
    media_type: &str,
) -> RegResult<Option<ImportedImage>> {
    let images = ctx.state.images.clone();
    let (bytes, media_type) = (bytes.to_vec(), media_type.to_string());
    let built =
        tokio::task::spawn_blocking(move || images.image_from_manifest(&bytes, &media_type))
            .await
            .map_err(|e| RegistryError::new(Code::Internal, format!("image task failed: {e}")))?;
    match built {
        Ok(image) => Ok(Some(image)),
        Err(
            e @ (ImageError::UnsupportedMediaType { .. } | ImageError::NoMatchingPlatform { .. }),
        ) => {
            tracing::info!(reason = %e, "pushed manifest stored as an artifact, not as an image");
            Ok(None)
        }
        Err(e) => Err(RegistryError::from(e)),
    }
}

pub async fn put(
    ctx: &Ctx,
    name: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    body: Body,
) -> RegResult<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST_BYTES as usize)
        .await
        .map_err(|_| {
            RegistryError::new(
                Code::SizeInvalid,
                format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes, or its upload broke off"),
            )
        })?;
    let refs = nimbus_image::manifest_references(&bytes, &content_type)?;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    if let Reference::Digest(wanted) = reference {
        if *wanted != digest {
            return Err(RegistryError::new(
                Code::DigestInvalid,
                format!("the manifest's bytes hash to {digest}, not to {wanted} as the URL says"),
            ));
        }
    }
    let existing = records::load(&ctx.state, name)
        .await?
        .map(|r| r.status)
        .unwrap_or_default();
    check_references(&existing, &refs, name)?;
    let _pushing = ctx.state.image_lock.read().await;
    // Only `<project>/<name>` tags become images: an image's name is one
    // path segment of the API, and `team/app:1.0` would be two.
    let image = match reference {
        Reference::Tag(_) if !name.path.contains('/') => {
            build_image(ctx, &bytes, &refs.media_type).await?
        }
        _ => None,
    };
    let images = ctx.state.images.clone();
    let stored = bytes.to_vec();
    blocking(move || images.store_manifest(&stored)).await?;
    let record = StoredManifest {
        media_type: refs.media_type.clone(),
        size_bytes: bytes.len() as u64,
        references: refs
            .blobs
            .iter()
            .chain(&refs.manifests)
            .map(|r| r.digest.clone())
            .collect(),
    };
    records::change(&ctx.state, name, |status| {
        check_references(status, &refs, name)?;
        status.manifests.insert(digest.clone(), record.clone());
        if let Reference::Tag(tag) = reference {
            status.tags.insert(tag.clone(), digest.clone());
        }
        Ok(())
    })
    .await?;
    if let (Reference::Tag(tag), Some(image)) = (reference, &image) {
        records::publish_image(&ctx.state, name, tag, image).await?;
    }
    Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{}/manifests/{digest}", name.full()),
        )
        .header("docker-content-digest", &digest)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .map_err(|e| RegistryError::new(Code::Internal, format!("building the response: {e}")))
}

/// The digest a reference names in the repository.
fn resolve(status: &RepositoryStatus, name: &RepoName, reference: &Reference) -> RegResult<String> {
    let digest = match reference {
        Reference::Tag(tag) => status.tags.get(tag).cloned(),
        Reference::Digest(d) => Some(d.clone()),
    };
    digest
        .filter(|d| status.manifests.contains_key(d))
        .ok_or_else(|| {
            manifest_unknown(
                name,
                match reference {
                    Reference::Tag(t) | Reference::Digest(t) => t,
                },
            )
        })
}

pub async fn get(ctx: &Ctx, name: &RepoName, reference: &Reference) -> RegResult<Response> {
    let repo = records::load_existing(&ctx.state, name).await?;
    let digest = resolve(&repo.status, name, reference)?;
    let media_type = repo.status.manifests[&digest].media_type.clone();
    let images = ctx.state.images.clone();
    let wanted = digest.clone();
    let bytes = blocking(move || images.read_manifest(&wanted)).await?;
    let length = bytes.len();
    let body = if ctx.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    Response::builder()
        .header(header::CONTENT_TYPE, media_type)
        .header("docker-content-digest", &digest)
        .header(header::CONTENT_LENGTH, length)
        .body(body)
        .map_err(|e| RegistryError::new(Code::Internal, format!("building the response: {e}")))
}

/// By tag: removes the tag. By digest: removes the manifest and every tag
/// on it. The project images of those tags go too (refused while an
/// instance uses one).
pub async fn delete(ctx: &Ctx, name: &RepoName, reference: &Reference) -> RegResult<Response> {
    let repo = records::load_existing(&ctx.state, name).await?;
    let digest = resolve(&repo.status, name, reference)?;
    let tags: Vec<String> = match reference {
        Reference::Tag(tag) => vec![tag.clone()],
        Reference::Digest(_) => repo
            .status
            .tags
            .iter()
            .filter(|(_, d)| **d == digest)
            .map(|(t, _)| t.clone())
            .collect(),
    };
    for tag in &tags {
        records::unpublish_image(&ctx.state, name, tag).await?;
    }
    records::change(&ctx.state, name, |status| {
        for tag in &tags {
            status.tags.remove(tag);
        }
        if matches!(reference, Reference::Digest(_)) {
            status.manifests.remove(&digest);
        }
        Ok(())
    })
    .await?;
    super::collect_garbage(ctx).await;
    super::empty(StatusCode::ACCEPTED)
}
