//! The OCI distribution registry under `/v2/` on the API port: pull, push,
//! content discovery and content management (see `docs/registry.md` for
//! what is left out). Requests are parsed into an [`endpoint::Endpoint`]
//! first, authorised against the repository's project, then handed to one
//! file per group of operations. Blobs and manifests are stored in the
//! image store's content-addressed `blobs/`; repository records (tags,
//! manifests, linked blobs) in the Nimbus store.

pub mod access;
pub mod blobs;
pub mod endpoint;
pub mod error;
pub mod listing;
pub mod manifests;
pub mod records;
pub mod uploads;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};

use crate::auth::Caller;
use crate::state::AppState;
use endpoint::Endpoint;
use error::{Code, RegResult, RegistryError};

/// What every operation gets: the server, the authenticated caller, and
/// the method (GET and HEAD share handlers).
pub struct Ctx {
    pub state: Arc<AppState>,
    pub caller: Caller,
    pub method: Method,
}

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .layer(axum::middleware::from_fn_with_state(
            state,
            access::registry_layer,
        ))
}

/// `GET /v2/`: the client's check that it speaks to a registry and is
/// authenticated (the layer answers 401 with a challenge before this).
async fn base() -> Response {
    axum::Json(serde_json::json!({})).into_response()
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = Ctx {
        state,
        caller,
        method,
    };
    let rest = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let endpoint = match admit(&ctx, rest).await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            access::drain_refused_body(body).await;
            return e.into_response();
        }
    };
    match route(&ctx, &endpoint, rest, &query, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// The operation `rest` names, if the caller may perform it.
async fn admit(ctx: &Ctx, rest: &str) -> RegResult<Endpoint> {
    let endpoint = endpoint::parse(rest)?;
    let pull = matches!(ctx.method, Method::GET | Method::HEAD);
    let name = match &endpoint {
        Endpoint::Catalog => None,
        Endpoint::Tags(n)
        | Endpoint::Manifest(n, _)
        | Endpoint::Blob(n, _)
        | Endpoint::StartUpload(n)
        | Endpoint::Upload(n, _) => Some(n),
    };
    if let Some(name) = name {
        // An upload's status is part of a push.
        let push = !pull || matches!(endpoint, Endpoint::Upload(..));
        access::authorize(&ctx.state, &ctx.caller, name, push).await?;
    }
    Ok(endpoint)
}

async fn route(
    ctx: &Ctx,
    endpoint: &Endpoint,
    rest: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> RegResult<Response> {
    let pull = matches!(ctx.method, Method::GET | Method::HEAD);
    let m = &ctx.method;
    match (endpoint, m) {
        (Endpoint::Catalog, &Method::GET) => listing::catalog(ctx, query).await,
        (Endpoint::Tags(n), &Method::GET) => listing::tags(ctx, n, query).await,
        (Endpoint::Manifest(n, r), _) if pull => manifests::get(ctx, n, r).await,
        (Endpoint::Manifest(n, r), &Method::PUT) => manifests::put(ctx, n, r, headers, body).await,
        (Endpoint::Manifest(n, r), &Method::DELETE) => manifests::delete(ctx, n, r).await,
        (Endpoint::Blob(n, d), _) if pull => blobs::get(ctx, n, d, headers).await,
        (Endpoint::Blob(n, d), &Method::DELETE) => blobs::delete(ctx, n, d).await,
        (Endpoint::StartUpload(n), &Method::POST) => {
            uploads::start(ctx, n, query, headers, body).await
        }
        (Endpoint::Upload(n, id), &Method::PATCH) => {
            uploads::patch(ctx, n, id, headers, body).await
        }
        (Endpoint::Upload(n, id), &Method::PUT) => {
            uploads::close(ctx, n, id, query, headers, body).await
        }
        (Endpoint::Upload(n, id), &Method::GET) => uploads::status(ctx, n, id).await,
        (Endpoint::Upload(n, id), &Method::DELETE) => uploads::cancel(ctx, n, id).await,
        _ => Err(RegistryError::new(
            Code::Unsupported,
            format!("{m} is not supported on /v2/{rest}"),
        )),
    }
}

/// Runs image store work on the blocking pool.
pub(super) async fn blocking<T, E, F>(work: F) -> RegResult<T>
where
    T: Send + 'static,
    E: Into<RegistryError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RegistryError::new(Code::Internal, format!("image store task failed: {e}")))?
        .map_err(Into::into)
}

pub(super) fn empty(status: StatusCode) -> RegResult<Response> {
    Response::builder()
        .status(status)
        .header(axum::http::header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .map_err(|e| RegistryError::new(Code::Internal, format!("building the response: {e}")))
}

/// Drops blobs nothing keeps any more; a failure only postpones that.
pub(super) async fn collect_garbage(ctx: &Ctx) {
    let state = &ctx.state;
    if let Err(e) = crate::api::images::collect_garbage(
        &state.repo,
        state.images.clone(),
        &state.image_lock,
        crate::repo::MAX_PAGE,
    )
    .await
    {
        tracing::warn!(error = %e.0, "image garbage collection after a registry delete failed; it runs again on the next delete");
    }
}
