//! Who may use the registry: Basic auth (any user name, a Nimbus token as
//! the password) or a Nimbus token as a Bearer token, checked like the API's
//! tokens; then a role in the repository's project (reader to pull, member
//! to push). A caller without a role in the project sees NAME_UNKNOWN, as if
//! the repository did not exist.

use std::sync::Arc;

use axum::body::{Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use nimbus_api::{ErrorCode, Role};

use super::endpoint::RepoName;
use super::error::{Code, RegResult, RegistryError};
use crate::auth::{self, audit, token, Caller};
use crate::error::ServerError;
use crate::state::AppState;

/// Middleware for every `/v2` request: authenticate, audit changes, and
/// label the answer with the API version the spec asks for.
pub async fn registry_layer(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = authenticate_and_run(state, req, next).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn authenticate_and_run(state: Arc<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mutating = !matches!(method, Method::GET | Method::HEAD);
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let caller = match caller_of(&state, header.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            let resp = e.into_response();
            if mutating {
                let source = auth::request_source(req.extensions());
                audit::record_unauthenticated(
                    &state,
                    &source,
                    &method,
                    &path,
                    audit::outcome(&resp),
                )
                .await;
            }
            drain_refused_body(req.into_body()).await;
            return resp;
        }
    };
    req.extensions_mut().insert(caller.clone());
    if !mutating {
        return next.run(req).await;
    }
    let pending = match audit::begin(&state, &caller, &method, &path).await {
        Ok(p) => p,
        Err(e) => return RegistryError::from(e).into_response(),
    };
    let resp = next.run(req).await;
    audit::finish(&state, pending, audit::outcome(&resp)).await;
    resp
}

/// How long a refused request's body is read before the answer goes out.
const REFUSED_BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads (and drops) what is left of a refused request's body, up to
/// `REFUSED_UPLOAD_DRAIN_BYTES` for a few seconds. Answering before the body
/// is read closes the connection under a client that is still sending it,
/// which then sees a broken connection instead of the answer: `oras` sends
/// every request without credentials first, chunk and all, and retries
/// after the 401. A body declared larger than that is not waited for.
pub async fn drain_refused_body(body: Body) {
    use crate::api::images::{drain_rest, REFUSED_UPLOAD_DRAIN_BYTES};
    let limit = REFUSED_UPLOAD_DRAIN_BYTES;
    if body.size_hint().lower() > limit as u64 {
        return;
    }
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, drain_rest(&mut stream, limit)).await;
}

/// The token in a Basic (as the password) or Bearer authorization header.
fn token_in(header: &str) -> Option<String> {
    if let Some(raw) = header.strip_prefix("Bearer ") {
        return Some(raw.trim().to_string());
    }
    let encoded = header.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_string())
}

async fn caller_of(state: &AppState, header: Option<&str>) -> RegResult<Caller> {
    let unauthorized = |why: &str| {
        RegistryError::new(
            Code::Unauthorized,
            format!(
                "{why}: log in with any user name and a Nimbus token as the password \
                 (`skopeo login --username nimbus --password <token>`, or --creds nimbus:<token>); \
                 create a token with `nimbus token create`"
            ),
        )
    };
    let raw = header
        .and_then(token_in)
        .ok_or_else(|| unauthorized("authentication required"))?;
    let (token_id, secret) = token::parse(&raw)
        .ok_or_else(|| unauthorized("the password is not a Nimbus token (nmb_<id>_<secret>)"))?;
    auth::verify(state, token_id, token::hash_secret(secret))
        .await
        .map_err(|_| unauthorized("invalid or expired token"))
}

/// Requires a role in the repository's project: reader to pull, member to push.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    name: &RepoName,
    push: bool,
) -> RegResult<()> {
    let min = if push { Role::Member } else { Role::Reader };
    match auth::require_role(&state.repo, caller, &name.project, min).await {
        Ok(_) => Ok(()),
        Err(ServerError(e)) if e.code == ErrorCode::NotFound => Err(name_unknown(name)),
        Err(ServerError(e)) if e.code == ErrorCode::Forbidden => Err(RegistryError::new(
            Code::Denied,
            format!(
                "{} of repository {}: {}",
                if push { "push" } else { "pull" },
                name.full(),
                e.message
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

pub fn name_unknown(name: &RepoName) -> RegistryError {
    RegistryError::new(
        Code::NameUnknown,
        format!(
            "repository {} not found; list the repositories you can pull with GET /v2/_catalog, \
             or push an image to create it",
            name.full()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_basic_passwords_and_bearer_headers() {
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:nmb_ab_cd");
        assert_eq!(
            token_in(&format!("Basic {basic}")).as_deref(),
            Some("nmb_ab_cd")
        );
        assert_eq!(token_in("Bearer nmb_x_y ").as_deref(), Some("nmb_x_y"));
        assert_eq!(token_in("Basic !!!"), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        assert_eq!(token_in(&format!("Basic {no_colon}")), None);
        assert_eq!(token_in("Digest x"), None);
    }

    #[test]
    fn a_refusal_is_the_specs_json_with_a_challenge() {
        let resp = RegistryError::new(Code::Unauthorized, "no").into_response();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_some());
        let body = RegistryError::new(Code::NameUnknown, "gone").body();
        assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
        assert_eq!(body["errors"][0]["message"], "gone");
    }
}
