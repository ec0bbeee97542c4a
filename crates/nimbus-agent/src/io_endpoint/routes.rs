//! The endpoint's calls. Each first admits its ticket (consumed through
//! the API, then checked against the call), then runs on the local host
//! I/O as `nimbus up` would.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_api::client::Client;
use nimbus_api::exec::ExecRequest;
use nimbus_api::hostio::ticket::{self, HostIoAction, HostIoTicket, TICKET_HEADER};
use nimbus_api::hostio::{HostIo, LogRequest};
use nimbus_api::{ApiError, Instance, Protocol};

pub struct EndpointState {
    pub host: String,
    pub client: Client,
    pub io: Arc<dyn HostIo>,
}

type St = State<Arc<EndpointState>>;

pub fn router(state: EndpointState) -> Router {
    Router::new()
        .route("/v1/io/instances/{id}/logs", get(logs))
        .route("/v1/io/instances/{id}/exec", post(exec))
        .route("/v1/io/instances/{id}/console", post(console))
        .route("/v1/io/instances/{id}/pause", post(pause))
        .route("/v1/io/instances/{id}/resume", post(resume))
        .route("/v1/io/listeners", get(listeners))
        .with_state(Arc::new(state))
}

/// An API error as this endpoint answers it (the API's error body).
struct Refused(ApiError);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0.body())).into_response()
    }
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused(e)
    }
}

/// The ticket of this call, consumed and checked to allow `action` on
/// instance `id`; the instance it names.
async fn admit(
    st: &EndpointState,
    headers: &HeaderMap,
    action: HostIoAction,
    id: Option<&str>,
) -> Result<Option<Instance>, Refused> {
    let refused = |why: String| {
        ApiError::unauthenticated(format!(
            "{why}: this endpoint serves the servers of the cloud only; use `nimbus logs`, `nimbus exec` or `nimbus console` through a server"
        ))
    };
    let ticket_id = headers
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused(format!("no host I/O ticket ({TICKET_HEADER})")))?;
    if !ticket::valid_ticket_id(ticket_id) {
        return Err(refused("not a host I/O ticket".into()).into());
    }
    let path = format!("/v1/hosts/{}/io-tickets/{ticket_id}", st.host);
    let consumed: HostIoTicket = st
        .client
        .post(&path, &serde_json::json!({}))
        .await
        .map_err(|e| refused(format!("the servers refused the ticket ({e})")))?;
    consumed
        .check_allows(action, id)
        .map_err(|e| refused(e.to_string()))?;
    Ok(consumed.instance)
}

/// [`admit`] for a call on an instance.
async fn admit_instance(
    st: &EndpointState,
    headers: &HeaderMap,
    action: HostIoAction,
    id: &str,
) -> Result<Instance, Refused> {
    admit(st, headers, action, Some(id))
        .await?
        .ok_or_else(|| Refused(ApiError::internal("the ticket names no instance")))
}

async fn logs(
    State(st): St,
    Path(id): Path<String>,
    Query(req): Query<LogRequest>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let instance = admit_instance(&st, &headers, HostIoAction::Logs, &id).await?;
    let lines = st.io.logs(&instance, req).await?;
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::internal(e.to_string()))?)
}

async fn exec(st: St, id: Path<String>, req: Request) -> Result<Response, Refused> {
    upgraded(st, id, req, HostIoAction::Exec).await
}

async fn console(st: St, id: Path<String>, req: Request) -> Result<Response, Refused> {
    upgraded(st, id, req, HostIoAction::Console).await
}

/// Exec or console: answer 101 and relay the upgraded connection to the
/// instance's stream until either side ends.
async fn upgraded(
    State(st): St,
    Path(id): Path<String>,
    mut req: Request,
    action: HostIoAction,
) -> Result<Response, Refused> {
    let instance = admit_instance(&st, req.headers(), action, &id).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 64 << 10)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request: {e}")))?;
    let mut stream = if action == HostIoAction::Exec {
        let exec_req: ExecRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the exec request: {e}")))?;
        st.io.exec(&instance, &exec_req).await?
    } else {
        st.io.console(&instance).await?
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let mut up = hyper_util::rt::TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut up, &mut stream).await;
            }
            Err(e) => tracing::warn!(error = %e, "host I/O upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "nimbus-exec")
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?)
}

async fn pause(st: St, id: Path<String>, headers: HeaderMap) -> Result<StatusCode, Refused> {
    set_paused(st, id, headers, true).await
}

async fn resume(st: St, id: Path<String>, headers: HeaderMap) -> Result<StatusCode, Refused> {
    set_paused(st, id, headers, false).await
}

async fn set_paused(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    paused: bool,
) -> Result<StatusCode, Refused> {
    let action = if paused {
        HostIoAction::Pause
    } else {
        HostIoAction::Resume
    };
    let instance = admit_instance(&st, &headers, action, &id).await?;
    st.io.set_paused(&instance, paused).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct ListenersQuery {
    protocol: Protocol,
    port: u16,
}

async fn listeners(
    State(st): St,
    Query(q): Query<ListenersQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<std::net::SocketAddr>>, Refused> {
    admit(&st, &headers, HostIoAction::Listeners, None).await?;
    let found = st
        .io
        .host_port_listeners(Some(&st.host), q.protocol, q.port)
        .await?;
    Ok(Json(found))
}
