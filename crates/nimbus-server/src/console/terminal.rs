//! The browser's exec and serial console: a WebSocket carrying the API's
//! exec frames (`nimbus_api::exec`), because a browser cannot send the
//! API's own `Upgrade: nimbus-exec`.
//!
//! `GET /ui/terminal/{project}/{name}[?mode=console]` is authenticated by
//! the session cookie and checked as `POST .../exec` (or `.../console`)
//! is: the member role, the instance's phase, the caller's stream limits.
//! The page's first message is JSON `{"csrf", "request": ExecRequest}`;
//! the CSRF secret must match the session's before anything reaches the
//! instance. Then binary messages from the page are written to the shim
//! as they are (whole frames), and the shim's bytes are sent back as
//! binary messages (the page reassembles frames). The session is re-checked
//! every `auth::session::RECHECK`, like every other stream, and ends when
//! its token, user or role is gone.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use nimbus_api::exec::ExecRequest;
use nimbus_api::{ApiError, Instance, Role};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::session::{Guard, Session};
use crate::auth::{self, audit, cookie, Caller};
use crate::domain::instances as domain;
use crate::error::{ApiResult, ServerError};
use crate::hostio::ExecStream;
use crate::state::AppState;

#[derive(Deserialize, Default)]
pub struct TerminalQuery {
    /// `console` for a VM's or unikernel's serial console; exec otherwise.
    #[serde(default)]
    mode: Option<String>,
}

/// The page's first message.
#[derive(Deserialize)]
struct Opening {
    csrf: String,
    #[serde(default)]
    request: Option<ExecRequest>,
}

pub async fn open(
    State(state): State<Arc<AppState>>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<TerminalQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let console = q.mode.as_deref() == Some("console");
    let authority = uri.authority().map(|a| a.to_string());
    match prepare(
        &state,
        &headers,
        authority.as_deref(),
        &project,
        &name,
        console,
    )
    .await
    {
        Ok((caller, session_id, instance, session)) => {
            let path = format!(
                "/v1/projects/{project}/instances/{name}/{}",
                if console { "console" } else { "exec" }
            );
            upgrade.on_upgrade(move |ws| async move {
                run(
                    state, ws, caller, session_id, instance, session, console, path,
                )
                .await
            })
        }
        Err(e) => e.into_response(),
    }
}

/// Everything checked before the upgrade, so refusals are plain HTTP
/// answers with the API's error body.
async fn prepare(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    authority: Option<&str>,
    project: &str,
    name: &str,
    console: bool,
) -> ApiResult<(Caller, String, Instance, Session)> {
    if !super::same_origin(headers, authority) {
        return Err(ServerError(ApiError::forbidden(
            "a console terminal can be opened only from this server's own /ui/ page",
        )));
    }
    let session_id = cookie::session_id(headers)
        .ok_or_else(|| ApiError::unauthenticated("not signed in: sign in with a token at /ui/"))?;
    let caller = auth::authenticate_cookie(state, headers, &session_id, false).await?;
    auth::require_role(&state.repo, &caller, project, Role::Member).await?;
    let instance: Instance = state.repo.get(Some(project), name).await?;
    if console {
        domain::check_is_vm(&instance, "console")?;
        domain::check_console_phase(&instance)?;
    } else {
        domain::check_exec_phase(&instance)?;
    }
    let session = Guard::role(caller.clone(), project, Role::Member).open(state)?;
    Ok((caller, session_id, instance, session))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    state: Arc<AppState>,
    mut ws: WebSocket,
    caller: Caller,
    session_id: String,
    instance: Instance,
    session: Session,
    console: bool,
    path: String,
) {
    let shim = match start(&state, &mut ws, &caller, &session_id, &instance, console).await {
        Ok(shim) => {
            audit::record(&state, &caller, &Method::POST, &path, (101, None)).await;
            shim
        }
        Err(e) => {
            audit::record(
                &state,
                &caller,
                &Method::POST,
                &path,
                (e.0.status(), Some(e.0.code)),
            )
            .await;
            let _ = ws.send(Message::Text(e.0.message.into())).await;
            let _ = ws.send(Message::Close(None)).await;
            return;
        }
    };
    tokio::select! {
        _ = relay(ws, shim) => {}
        _ = session.revoked(state.clone()) => {
            tracing::info!(user = %caller.user, "console terminal ended: its caller is no longer allowed");
        }
    }
}

/// Read the page's opening message, check its CSRF secret and start the
/// exec or console on the instance's host.
async fn start(
    state: &Arc<AppState>,
    ws: &mut WebSocket,
    caller: &Caller,
    session_id: &str,
    instance: &Instance,
    console: bool,
) -> ApiResult<Box<dyn ExecStream>> {
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), ws.recv())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok);
    let Some(Message::Text(text)) = first else {
        return Err(ServerError(ApiError::bad_request(
            "the terminal's first message must be JSON {\"csrf\", \"request\"} within 10 s",
        )));
    };
    let opening: Opening = serde_json::from_str(text.as_str()).map_err(|e| {
        ApiError::bad_request(format!("the terminal's first message is not valid: {e}"))
    })?;
    let session = state
        .browser_sessions
        .get(session_id)
        .ok_or_else(|| ApiError::unauthenticated("console session ended; sign in again at /ui/"))?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = opening.csrf.parse() {
        headers.insert(cookie::CSRF_HEADER, v);
    }
    if !cookie::csrf_matches(&headers, &session) {
        return Err(ServerError(ApiError::forbidden(
            "the terminal's CSRF token does not match the session's; reload the console at /ui/",
        )));
    }
    let what = if console { "the console" } else { "exec" };
    let io = state.host_io_for(instance, what)?;
    if console {
        Ok(io.console(instance).await?)
    } else {
        let req = opening.request.unwrap_or_else(|| ExecRequest {
            args: vec!["/bin/sh".into()],
            tty: true,
            ..Default::default()
        });
        domain::check_exec_command(&req.args)?;
        tracing::info!(user = %caller.user, instance = %instance.metadata.name, "console terminal opened");
        Ok(io.exec(instance, &req).await?)
    }
}

/// Relay page ↔ shim until either side ends. Both directions run in this
/// one future, so dropping it (revocation) ends the whole session.
async fn relay(ws: WebSocket, shim: Box<dyn ExecStream>) {
    use futures::{SinkExt, StreamExt};
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut shim_rd, mut shim_wr) = tokio::io::split(shim);
    let input = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if shim_wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = shim_wr.shutdown().await;
    };
    let output = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match shim_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if ws_tx.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::pin!(input, output);
    let mut input_done = false;
    loop {
        tokio::select! {
            _ = &mut input, if !input_done => input_done = true,
            _ = &mut output => return,
        }
    }
}
