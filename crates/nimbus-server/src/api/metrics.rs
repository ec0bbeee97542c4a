//! `GET /metrics` (Prometheus) and the agents' statistics reports that
//! feed its per-instance series; the request counting layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use nimbus_api::stats::HostStats;
use nimbus_api::ApiError;

use super::body::JsonBody;
use super::params::HostPath;
use super::St;
use crate::auth::Caller;
use crate::error::{ApiResult, ServerError};
use crate::metrics::requests::{RequestMetrics, Route};
use crate::state::AppState;
use tower::{Layer, Service};

/// The exposition's media type (the text encoder writes OpenMetrics).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric, rendered now; the caller has been checked.
///
/// A scrape reads and decodes every instance, host and network and writes
/// some ten lines per instance: milliseconds of CPU with thousands of
/// instances. It runs on a blocking thread, which the kernel time-slices
/// with the runtime's workers, rather than on a worker, where the API
/// requests queued behind it would wait for all of it (that wait showed in
/// the API's p99 with metrics on).
async fn render(state: Arc<AppState>) -> ApiResult<Response> {
    if !state.metrics.enabled {
        return Err(ServerError(ApiError::not_found(
            "metrics are turned off on this server; start it without --metrics=false",
        )));
    }
    let runtime = tokio::runtime::Handle::current();
    let text = tokio::task::spawn_blocking(move || {
        runtime.block_on(async {
            let snapshot = crate::metrics::snapshot::take(&state).await?;
            state
                .metrics
                .encode(snapshot)
                .map_err(|e| ServerError(ApiError::internal(format!("encoding the metrics: {e}"))))
        })
    })
    .await
    .map_err(|e| ServerError(ApiError::internal(format!("rendering the metrics: {e}"))))??;
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
    render(state).await
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

/// Counts each answered request by its route template; applied per route
/// (`Router::layer`), so the template (`MatchedPath`) is known.
///
/// A tower layer rather than `middleware::from_fn`, because it runs on
/// every request: it boxes nothing and clones no shared state per request
/// (from_fn boxes the future and the rest of the stack and clones the
/// state). The route's series are looked up before the request runs; the
/// count is made when the response head is ready.
#[derive(Clone, Debug)]
pub struct CountRequestsLayer {
    metrics: &'static RequestMetrics,
}

impl CountRequestsLayer {
    /// `None` when metrics are off: then no layer at all.
    pub fn new(metrics: &crate::metrics::Metrics) -> Option<CountRequestsLayer> {
        metrics
            .request_metrics()
            .map(|metrics| CountRequestsLayer { metrics })
    }
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests {
            inner,
            metrics: self.metrics,
        }
    }
}

/// The service of [`CountRequestsLayer`].
#[derive(Clone, Debug)]
pub struct CountRequests<S> {
    inner: S,
    metrics: &'static RequestMetrics,
}

impl<S, B> Service<axum::http::Request<B>> for CountRequests<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Counted<S::Future> {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        let series = self.metrics.route(route);
        let method = req.method().clone();
        let started = Instant::now();
        Counted {
            inner: self.inner.call(req),
            series,
            method,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response on its way, counted when it is ready.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        series: &'static Route,
        method: Method,
        started: Instant,
    }
}

impl<F, E> Future for Counted<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            this.series
                .observe(this.method, resp.status().as_u16(), this.started.elapsed());
        }
        Poll::Ready(out)
    }
}

/// The plain-HTTP listener of `--metrics-listen`: `/metrics` without a
/// token, nothing else. For a scraper on a trusted network.
pub fn open_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): St| async move { render(state).await }),
        )
        .with_state(state)
}
