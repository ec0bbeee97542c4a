//! An image's blobs, streamed by digest to the host agents that run the
//! image without a copy of the server's image store.
//!
//! A host agent reads a blob only of an image an instance bound to its host
//! uses; a user needs a role in the project. Everyone else sees "not
//! found". The digest is checked before anything else, and a file is opened
//! only for a digest the image record lists.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::Response;
use axum::Extension;
use nimbus_api::{ApiError, Image, Instance, ListOptions, Role};
use nimbus_image::ImportedImage;

use super::params::ImageBlobPath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;

/// The response header carrying the blob's digest.
pub const DIGEST_HEADER: &str = "x-nimbus-digest";

#[utoipa::path(get, path = "/v1/projects/{project}/images/{name}/blobs/{digest}", operation_id = "get_image_blob", params(ImageBlobPath),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>,
        description = "The blob's bytes, streamed from the server's image store; `Content-Length` is its size. A host agent may read the blobs of an image an instance bound to its host uses; a user needs a role in the project",
        headers(("x-nimbus-digest" = String, description = "The blob's digest, as asked for: the client checks the bytes against it"))),
        (status = 400, description = "The digest is not `sha256:<64 lowercase hex digits>`")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name, digest)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    nimbus_image::check_digest(&digest).map_err(|e| {
        ApiError::bad_request(format!(
            "{e}; take the digests from `nimbus image get {name} -o json` (status.layers, disk, kernel)"
        ))
    })?;
    let image = readable_image(&state.repo, &caller, &project, &name).await?;
    let imported = ImportedImage::from_api(&image.status);
    let platform_layers = imported.platforms.iter().flat_map(|p| &p.layers);
    if !imported.runtime_blobs().contains(&digest)
        && !platform_layers.into_iter().any(|l| *l == digest)
    {
        return Err(ServerError(ApiError::not_found(format!(
            "image {name:?} of project {project:?} has no blob {digest}; its blobs are listed by `nimbus image get {name} -o json` (status.layers, disk, kernel)"
        ))));
    }
    let path = state.images.blob_path(&digest).map_err(|e| {
        tracing::error!(%digest, image = %name, %project, error = %e, "an image's blob is missing from the store");
        ApiError::internal(format!(
            "the server's image store lacks blob {digest} of image {name:?}: {e}"
        ))
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("opening blob {digest}: {e}")))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("reading the size of blob {digest}: {e}")))?
        .len();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header(DIGEST_HEADER, &digest)
        .body(Body::from_stream(
            tokio_util::io::ReaderStream::with_capacity(file, 256 << 10),
        ))
        .map_err(|e| ServerError(ApiError::internal(format!("building the response: {e}"))))
}

/// Image `name` of `project`, if the caller may read its blobs: a user with
/// a role there, or the agent of a host running an instance of it.
async fn readable_image(
    repo: &Repo,
    caller: &Caller,
    project: &str,
    name: &str,
) -> ApiResult<Image> {
    let Some(host) = caller.host.as_deref() else {
        auth::require_role(repo, caller, project, Role::Reader).await?;
        return repo.get(Some(project), name).await;
    };
    let users = repo
        .list::<Instance>(Some(project), &ListOptions::default(), |i| {
            i.status.host.as_deref() == Some(host) && uses_image(i, name)
        })
        .await?;
    if users.items.is_empty() {
        return Err(ServerError(ApiError::not_found(format!(
            "no instance on host {host:?} uses image {name:?} of project {project:?}; a host reads only the blobs of its own instances' images"
        ))));
    }
    repo.get(Some(project), name).await
}

/// Whether instance `i` boots from or runs image `name`.
fn uses_image(i: &Instance, name: &str) -> bool {
    i.spec.image == name || i.spec.vm.as_ref().and_then(|v| v.kernel_image.as_deref()) == Some(name)
}
