//! Registry errors in the distribution spec's format:
//! `{"errors": [{"code": "BLOB_UNKNOWN", "message": "...", "detail": ...}]}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_api::{ApiError, ErrorCode};
use nimbus_image::{ImageError, PushError};

use crate::error::ServerError;

/// The spec's error codes (and the status each is sent with here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
    /// Not in the spec's table; for the server's own failures.
    Internal,
    /// The image store's disk is full.
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::SizeInvalid => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The closest Nimbus code, for the audit log.
    fn audit_code(self) -> ErrorCode {
        match self.status() {
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
            StatusCode::FORBIDDEN => ErrorCode::Forbidden,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::INTERNAL_SERVER_ERROR => ErrorCode::Internal,
            StatusCode::INSUFFICIENT_STORAGE => ErrorCode::InsufficientStorage,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// One refusal: a spec code and a message that says what to do next.
#[derive(Debug)]
pub struct RegistryError {
    pub code: Code,
    pub message: String,
}

pub type RegResult<T> = Result<T, RegistryError>;

impl RegistryError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            message: message.into(),
        }
    }

    /// The JSON body, for tests and the response.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"errors": [{
            "code": self.code.as_str(),
            "message": self.message,
            "detail": serde_json::Value::Null,
        }]})
    }
}

/// The challenge a client answers with its credentials.
pub const CHALLENGE: &str = "Basic realm=\"nimbus registry\"";

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        if self.code == Code::Internal {
            tracing::error!(error = %self.message, "registry request failed");
        }
        let mut resp = (self.code.status(), axum::Json(self.body())).into_response();
        if self.code == Code::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        resp.extensions_mut().insert(self.code.audit_code());
        resp
    }
}

/// Failures of the rest of the server (the store, authorisation) in the
/// registry's format.
impl From<ServerError> for RegistryError {
    fn from(ServerError(e): ServerError) -> Self {
        let code = match e.code {
            ErrorCode::NotFound => Code::NameUnknown,
            ErrorCode::Unauthenticated => Code::Unauthorized,
            ErrorCode::Forbidden => Code::Denied,
            ErrorCode::InsufficientStorage => Code::Unavailable,
            ErrorCode::Conflict | ErrorCode::AlreadyExists => Code::Denied,
            ErrorCode::Invalid | ErrorCode::BadRequest => Code::ManifestInvalid,
            _ => Code::Internal,
        };
        RegistryError::new(code, e.message)
    }
}

impl From<ApiError> for RegistryError {
    fn from(e: ApiError) -> Self {
        ServerError(e).into()
    }
}

/// The spec code of an image store failure; `otherwise` for one that says
/// the pushed content is wrong.
fn image_code(e: &ImageError, otherwise: Code) -> Code {
    match e {
        _ if e.is_disk_full() => Code::Unavailable,
        ImageError::InvalidDigest { .. } | ImageError::DigestMismatch { .. } => Code::DigestInvalid,
        ImageError::ReadArchive { .. } => Code::BlobUploadInvalid,
        ImageError::Io { .. } => Code::Internal,
        _ => otherwise,
    }
}

fn image_error(e: &ImageError, otherwise: Code) -> RegistryError {
    let code = image_code(e, otherwise);
    let message = match code {
        Code::Unavailable => {
            format!("{e}; nothing was kept. Free space on the server's image store and push again")
        }
        _ => e.to_string(),
    };
    RegistryError::new(code, message)
}

impl From<ImageError> for RegistryError {
    fn from(e: ImageError) -> Self {
        image_error(&e, Code::ManifestInvalid)
    }
}

impl From<PushError> for RegistryError {
    fn from(e: PushError) -> Self {
        let code = match &e {
            PushError::UploadUnknown { .. } => Code::BlobUploadUnknown,
            PushError::TooLarge { .. } => Code::SizeInvalid,
            PushError::OverBudget { .. } => Code::Denied,
            PushError::OutOfOrder { .. } => Code::RangeInvalid,
            PushError::DigestMismatch { .. } => Code::DigestInvalid,
            PushError::ManifestInvalid { .. } => Code::ManifestInvalid,
            PushError::Image(inner) => return image_error(inner, Code::Internal),
        };
        RegistryError::new(code, e.to_string())
    }
}
