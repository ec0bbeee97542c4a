//! Request bodies: bounded in size, parsed as JSON with errors that say
//! which field is wrong, always answered in the API's error format.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use nimbus_api::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

use crate::error::ServerError;

/// A JSON body of type `T`.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get("content-type") {
            let ct = ct.to_str().unwrap_or_default();
            if !ct.is_empty() && !ct.starts_with("application/json") {
                return Err(ServerError(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("content type {ct:?} is not accepted here; send application/json"),
                )));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let too_large = e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE;
            if too_large {
                ServerError(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the server accepts (1 MiB by default); send less",
                ))
            } else {
                ServerError(ApiError::bad_request(format!(
                    "could not read the request body: {e}"
                )))
            }
        })?;
        if bytes.is_empty() {
            return Err(ServerError(ApiError::bad_request(
                "the request body is empty; send a JSON object",
            )));
        }
        let not_valid = |e: serde_json::Error, field: Option<String>| {
            let at = field.map(|f| format!("at `{f}`: ")).unwrap_or_default();
            ServerError(ApiError::bad_request(format!(
                "the request body is not valid JSON for this call: {at}{e}"
            )))
        };
        // The path of the field that failed (`spec.resources.memory_bytes`)
        // goes into the message: serde_json's own error names only a line
        // and column.
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let field = (field != ".").then_some(field);
            not_valid(e.into_inner(), field)
        })?;
        // Trailing data after the object is refused, as `from_slice` does.
        de.end().map_err(|e| not_valid(e, None))?;
        Ok(JsonBody(value))
    }
}
