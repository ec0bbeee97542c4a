//! `GET /metrics` (Prometheus) and the agents' statistics reports that
//! feed its per-instance series; the request counting middleware.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use nimbus_api::stats::HostStats;
use nimbus_api::ApiError;

use super::body::JsonBody;
use super::params::HostPath;
use super::St;
use crate::auth::Caller;
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// The exposition's media type (the text encoder writes OpenMetrics).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric, rendered now; the caller has been checked.
async fn render(state: &AppState) -> ApiResult<Response> {
    if !state.metrics.enabled {
        return Err(ServerError(ApiError::not_found(
            "metrics are turned off on this server; start it without --metrics=false",
        )));
    }
    let snapshot = crate::metrics::snapshot::take(state).await?;
    let text = state
        .metrics
        .encode(snapshot)
        .map_err(|e| ServerError(ApiError::internal(format!("encoding the metrics: {e}"))))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "system",
    responses((status = 200, content_type = "application/openmetrics-text", body = String,
        description = "Prometheus metrics (OpenMetrics text): API requests and latency, store, scheduler, hosts, instances, networks. Needs a system administrator's token or one of a user created with `metrics_reader`")))]
pub async fn scrape(State(state): St, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    if !(caller.system_admin || caller.metrics_reader) {
        return Err(ServerError(ApiError::forbidden(
            "metrics need a system administrator's token or a metrics reader's: `nimbus user create NAME --metrics-reader`, then `nimbus token create --user NAME`",
        )));
    }
    render(&state).await
}

#[utoipa::path(put, path = "/v1/hosts/{host}/stats", operation_id = "report_host_stats", tag = "hosts",
    params(HostPath), request_body = HostStats,
    responses((status = 204, description = "Kept as the host's latest statistics (in memory, for `/metrics`)")))]
pub async fn report_stats(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
    JsonBody(stats): JsonBody<HostStats>,
) -> ApiResult<StatusCode> {
    if caller.host.as_deref() != Some(host.as_str()) {
        return Err(ServerError(ApiError::forbidden(format!(
            "only the agent of host {host:?} may report its statistics"
        ))));
    }
    state.metrics.record_host_stats(&host, stats);
    Ok(StatusCode::NO_CONTENT)
}

/// Middleware: count each answered request by its route template.
pub async fn track_requests(State(state): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe_request(
        &route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// The plain-HTTP listener of `--metrics-listen`: `/metrics` without a
/// token, nothing else. For a scraper on a trusted network.
pub fn open_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): St| async move { render(&state).await }),
        )
        .with_state(state)
}
