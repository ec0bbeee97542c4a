//! Object storage through the Nimbus API: a project's buckets and its S3
//! access keys. The objects themselves are served by the S3 endpoint
//! (`nimbus-objects`); these routes only manage who owns what.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use nimbus_api::{ApiError, Role};
use nimbus_objects::auth::Sealer;
use nimbus_objects::credentials::Admin;
use nimbus_objects::ObjectsError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::JsonBody;
use super::params::ProjectPath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// Seals access-key secrets with the server's secrets key
/// (`<data>/secrets.key`, the one that seals instances' secret values).
pub struct ServerSealer(pub Arc<AppState>);

impl Sealer for ServerSealer {
    fn seal(&self, context: &str, plaintext: &str) -> Result<String, String> {
        self.0
            .secrets
            .seal(context, plaintext)
            .map_err(|e| e.to_string())
    }

    fn unseal(&self, context: &str, sealed: &str) -> Result<String, String> {
        self.0
            .secrets
            .unseal(context, sealed)
            .map_err(|e| e.to_string())
    }
}

fn admin(state: &Arc<AppState>) -> Admin {
    Admin {
        store: state.repo.store.clone(),
        sealer: Arc::new(ServerSealer(state.clone())),
    }
}

fn api_error(e: ObjectsError) -> ServerError {
    let message = e.to_string();
    ServerError(match e {
        ObjectsError::NoSuchBucket(_) | ObjectsError::NoSuchAccessKey(_) => {
            ApiError::not_found(message)
        }
        ObjectsError::BucketExists(_) => ApiError::already_exists(message),
        ObjectsError::BucketNotEmpty(_) => ApiError::conflict(message),
        ObjectsError::InvalidBucketName { .. } => ApiError::invalid(message),
        ObjectsError::Store(e) => return ServerError::from(e),
        _ => {
            tracing::error!(error = %message, "object storage");
            ApiError::internal(message)
        }
    })
}

/// `{project}` and the name of a bucket it owns.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BucketPath {
    /// Project name.
    pub project: String,
    /// Bucket name.
    pub name: String,
}

/// `{project}` and one of its S3 access key ids.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AccessKeyPath {
    /// Project name.
    pub project: String,
    /// Access key id.
    pub name: String,
}

/// A bucket: S3 objects owned by one project.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    pub name: String,
    pub project: String,
    /// Anonymous callers may GET and HEAD its objects.
    pub public_read: bool,
    pub created: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreateBucket {
    /// 3-63 lowercase letters, digits, `-` and `.` (S3's rules).
    pub name: String,
    #[serde(default)]
    pub public_read: bool,
}

/// An S3 access key, without its secret.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AccessKey {
    pub access_key_id: String,
    pub project: String,
    /// The user who made it.
    pub user: String,
    pub created: chrono::DateTime<chrono::Utc>,
}

/// A new access key with its secret: shown this once, stored sealed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct NewAccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub project: String,
    pub user: String,
}

fn bucket_out(b: nimbus_objects::records::BucketRecord) -> Bucket {
    Bucket {
        name: b.name,
        project: b.project,
        public_read: b.public_read,
        created: b.created,
    }
}

#[utoipa::path(get, path = "/v1/projects/{project}/buckets", operation_id = "list_buckets", params(ProjectPath), tag = "objects",
    responses((status = 200, body = Vec<Bucket>, description = "The project's buckets")))]
pub async fn list_buckets(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Bucket>>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    let buckets = admin(&state)
        .list_buckets(Some(&project))
        .await
        .map_err(api_error)?;
    Ok(Json(buckets.into_iter().map(bucket_out).collect()))
}

#[utoipa::path(post, path = "/v1/projects/{project}/buckets", operation_id = "create_bucket", params(ProjectPath), tag = "objects", request_body = CreateBucket,
    responses((status = 201, body = Bucket, description = "Created"),
        (status = 409, description = "a bucket of that name exists (bucket names are global, as in S3)")))]
pub async fn create_bucket(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<CreateBucket>,
) -> ApiResult<(StatusCode, Json<Bucket>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let bucket = admin(&state)
        .create_bucket(&project, &req.name, req.public_read)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(bucket_out(bucket))))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/buckets/{name}", operation_id = "delete_bucket", params(BucketPath), tag = "objects",
    responses((status = 204, description = "Deleted"),
        (status = 409, description = "the bucket still holds objects (BucketNotEmpty)")))]
pub async fn delete_bucket(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, bucket)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    admin(&state)
        .delete_bucket(&project, &bucket)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/projects/{project}/s3credentials", operation_id = "list_s3_credentials", params(ProjectPath), tag = "objects",
    responses((status = 200, body = Vec<AccessKey>, description = "The project's S3 access keys, without secrets")))]
pub async fn list_credentials(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<AccessKey>>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let keys = admin(&state)
        .list_credentials(Some(&project))
        .await
        .map_err(api_error)?;
    Ok(Json(
        keys.into_iter()
            .map(|k| AccessKey {
                access_key_id: k.access_key_id,
                project: k.project,
                user: k.user,
                created: k.created,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/projects/{project}/s3credentials", operation_id = "create_s3_credential", params(ProjectPath), tag = "objects",
    responses((status = 201, body = NewAccessKey, description = "The new key with its secret, shown only in this response")))]
pub async fn create_credential(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<(StatusCode, Json<NewAccessKey>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let new = admin(&state)
        .create_credential(&project, &caller.user)
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        Json(NewAccessKey {
            access_key_id: new.access_key_id,
            secret_access_key: new.secret_access_key,
            project: new.project,
            user: new.user,
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/s3credentials/{name}", operation_id = "delete_s3_credential", params(AccessKeyPath), tag = "objects",
    responses((status = 204, description = "Deleted: requests signed with it fail from now on")))]
pub async fn delete_credential(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, access_key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    admin(&state)
        .delete_credential(&project, &access_key)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}
