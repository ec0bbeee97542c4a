//! Scans of a project's images: run on demand, stored per image digest.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use nimbus_api::{ApiError, Image, ImageScan, Role};

use super::params::ImagePath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::vulnscan;

#[utoipa::path(post, path = "/v1/projects/{project}/images/{name}/scan", operation_id = "scan_image", tag = "vulnerabilities", params(ImagePath),
    responses((status = 200, body = ImageScan, description = "The image's packages matched against the loaded vulnerability database; stored under its digest"),
        (status = 503, description = "No vulnerability database is loaded, or this server lacks its index")))]
pub async fn scan(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<ImageScan>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let image: Image = state.repo.get(Some(&project), &name).await?;
    Ok(Json(
        vulnscan::scan_and_store(&state, &project, &image).await?,
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project}/images/{name}/scan", operation_id = "get_image_scan", tag = "vulnerabilities", params(ImagePath),
    responses((status = 200, body = ImageScan, description = "The last scan of the image's digest")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<ImageScan>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    let image: Image = state.repo.get(Some(&project), &name).await?;
    vulnscan::stored_scan(&state, &project, &image)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ServerError(ApiError::not_found(format!(
                "image {name:?} in project {project:?} has not been scanned; run `nimbus image scan {name}`"
            )))
        })
}
