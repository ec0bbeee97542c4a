//! Server errors and their JSON form.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_api::{ApiError, ErrorCode};
use nimbus_store::StoreError;

/// Every handler returns this; it renders as `{"error": {...}}`.
#[derive(Debug)]
pub struct ServerError(pub ApiError);

pub type ApiResult<T> = Result<T, ServerError>;

impl From<ApiError> for ServerError {
    fn from(e: ApiError) -> Self {
        ServerError(e)
    }
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            StoreError::Conflict { .. } => ErrorCode::Conflict,
            StoreError::Compacted { .. } => ErrorCode::Compacted,
            StoreError::Backend(_) => ErrorCode::Internal,
            StoreError::StorageFull { path, .. } => {
                tracing::error!(error = %e, "the data directory's disk is full");
                return ServerError(ApiError::new(
                    ErrorCode::InsufficientStorage,
                    format!(
                        "no space left on the disk holding {path}; nothing was changed. Free space on that filesystem (remove unused images with `nimbus image rm`, lower --audit-max-records or --audit-max-age, or delete other files there) and retry; deletions (`nimbus instance rm`, `nimbus project rm`) still work, on the store's reserve"
                    ),
                ));
            }
        };
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "store failure");
        }
        ServerError(ApiError::new(code, e.to_string()))
    }
}

/// The domain's refusals: an invalid request is 422, a conflict with the
/// current state 409.
macro_rules! invalid_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ServerError {
            fn from(e: $t) -> Self {
                ServerError(ApiError::invalid(e.to_string()))
            }
        }
    )*};
}

invalid_from!(
    crate::domain::instances::SpecError,
    crate::domain::networks::NetworkError,
    crate::domain::addresses::PublishError,
    crate::domain::secgroups::SecgroupError,
    crate::domain::volumes::VolumeError
);

impl From<crate::domain::volumes::AttachError> for ServerError {
    fn from(e: crate::domain::volumes::AttachError) -> Self {
        if e.is_conflict() {
            ServerError(ApiError::conflict(e.to_string()))
        } else {
            ServerError(ApiError::invalid(e.to_string()))
        }
    }
}

impl From<crate::domain::volumes::QuotaError> for ServerError {
    fn from(e: crate::domain::volumes::QuotaError) -> Self {
        ServerError(ApiError::conflict(e.to_string()))
    }
}

impl From<crate::domain::image_usage::ImageQuotaError> for ServerError {
    fn from(e: crate::domain::image_usage::ImageQuotaError) -> Self {
        ServerError(ApiError::conflict(e.to_string()))
    }
}

impl From<crate::scheduler::quota::InstanceQuotaError> for ServerError {
    fn from(e: crate::scheduler::quota::InstanceQuotaError) -> Self {
        ServerError(ApiError::conflict(e.to_string()))
    }
}

impl From<crate::domain::instances::StateError> for ServerError {
    fn from(e: crate::domain::instances::StateError) -> Self {
        ServerError(ApiError::conflict(e.to_string()))
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ServerError {}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.0.body())).into_response();
        resp.extensions_mut().insert(self.0.code);
        resp
    }
}
