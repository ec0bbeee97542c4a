//! Long-lived instance streams: followed logs, exec and the serial
//! console. Each counts against the caller's stream limits and ends when
//! the caller loses their role or token (`auth::session`). Watching
//! instances is the `watch=true` form of the lists in `crud.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use nimbus_api::exec::ExecRequest;
use nimbus_api::{ApiError, Instance, Role};

use super::running_vm;
use crate::api::params::InstancePath;
use crate::api::St;
use crate::auth::{self, Caller};
use crate::domain::instances as domain;
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Keep streaming new lines until the instance stops.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
}

#[utoipa::path(get, tag = "instances", path = "/v1/projects/{project}/instances/{name}/logs", operation_id = "get_instance_logs", params(InstancePath, LogQuery),
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Lines `<RFC 3339 time> <stdout|stderr> <text>`. With `follow=true` the body is streamed (chunked): new lines arrive as the workload writes them, until the instance stops or the caller loses their role or token")))]
pub async fn logs(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    let instance: Instance = state.repo.get(Some(&project), &name).await?;
    let io = state.host_io_for(&instance, "logs")?;
    // Counted against the caller's stream limits only when it is long-lived.
    let session = if q.follow {
        Some(crate::api::watch::Guard::role(caller, &project, Role::Reader).open(&state)?)
    } else {
        None
    };
    let req = crate::hostio::LogRequest {
        tail: q.tail,
        follow: q.follow,
    };
    let lines = io.logs(&instance, req).await?;
    // A followed log ends when the instance stops, or when the caller
    // loses their role in the project or their token.
    use futures::StreamExt;
    let lines = lines.take_until(until_stopped(state.clone(), instance));
    let stream = match session {
        Some(session) => lines.take_until(session.revoked(state.clone())).boxed(),
        None => lines.boxed(),
    };
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .map_err(|e| ServerError(ApiError::internal(e.to_string())))
}

/// Resolves once `instance` is gone or in a terminal phase (checked every
/// second): a followed log then ends.
async fn until_stopped(state: Arc<AppState>, instance: Instance) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now: Option<Instance> = state
            .repo
            .try_get(
                instance.metadata.project.as_deref(),
                &instance.metadata.name,
            )
            .await
            .ok()
            .flatten();
        match now {
            Some(i) if !i.status.phase.is_terminal() => {}
            _ => return,
        }
    }
}

/// Run a command in a running instance, its input and output relayed over
/// the upgraded connection.
///
/// The request carries `Connection: upgrade` and `Upgrade: nimbus-exec`;
/// the server answers 101 and from then on the connection carries frames
/// in both directions, each `[kind u8][length u32 big-endian][payload]`,
/// payloads of at most 1 MiB. Client to server: 0 STDIN (bytes for the
/// process's stdin), 4 RESIZE (terminal rows u16 BE, then cols u16 BE),
/// 5 STDIN_EOF (no more stdin). Server to client: 1 STDOUT, 2 STDERR,
/// 3 EXIT (last frame: the exit code as i32 BE, 128+n if killed by signal
/// n). The session ends when the process exits, or when the caller loses
/// the member role in the project or their token.
#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/exec", operation_id = "exec_in_instance",
    params(InstancePath, ("Upgrade" = String, Header, description = "`nimbus-exec`, with `Connection: upgrade`")),
    request_body = ExecRequest,
    responses(
        (status = 101, description = "Switching Protocols: the connection becomes a framed exec stream (see the operation's description)",
            headers(("Upgrade" = String, description = "`nimbus-exec`"), ("Connection" = String, description = "`upgrade`"))),
        (status = 409, description = "The instance is not running"),
        (status = 422, description = "No command given")))]
pub async fn exec(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    mut req: Request,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    // Counted before the shim is asked for anything.
    let session = crate::api::watch::Guard::role(caller, &project, Role::Member).open(&state)?;
    let instance: Instance = state.repo.get(Some(&project), &name).await?;
    domain::check_exec_phase(&instance)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 64 << 10)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the exec request: {e}")))?;
    let exec_req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the exec request is not valid JSON: {e}")))?;
    domain::check_exec_command(&exec_req.args)?;
    let io = state.host_io_for(&instance, "exec")?;
    let shim = io.exec(&instance, &exec_req).await?;
    // The session ends when the caller loses member in the project or
    // their token.
    upgrade_to_relay(&state, session, on_upgrade, shim, "exec")
}

/// Attach to the serial console of a running or paused VM or unikernel.
///
/// The request carries `Connection: upgrade` and `Upgrade: nimbus-exec`;
/// the server answers 101 and from then on the connection carries the exec
/// frames of `exec_in_instance`, each `[kind u8][length u32 big-endian]
/// [payload]`: 0 STDIN (keystrokes) from the client, 1 STDOUT (console
/// output) from the server. The console ends when the caller loses the
/// member role in the project or their token.
#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances/{name}/console", operation_id = "attach_instance_console",
    params(InstancePath, ("Upgrade" = String, Header, description = "`nimbus-exec`, with `Connection: upgrade`")),
    request_body(content = serde_json::Value, description = "An empty JSON object, `{}`"),
    responses(
        (status = 101, description = "Switching Protocols: the connection becomes the serial console of the VM or unikernel, carrying exec frames (see the operation's description): STDIN (0) in, STDOUT (1) out",
            headers(("Upgrade" = String, description = "`nimbus-exec`"), ("Connection" = String, description = "`upgrade`"))),
        (status = 409, description = "The instance is not running or paused"),
        (status = 422, description = "The instance is a container")))]
pub async fn console(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    mut req: Request,
) -> ApiResult<Response> {
    let instance = running_vm(&state, &caller, &project, &name, "console").await?;
    let session = crate::api::watch::Guard::role(caller, &project, Role::Member).open(&state)?;
    domain::check_console_phase(&instance)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The body (an empty JSON object) must be read before the upgrade.
    let _ = axum::body::to_bytes(req.into_body(), 4 << 10).await;
    let io = state.host_io_for(&instance, "the console")?;
    let shim = io.console(&instance).await?;
    // The console (often a root shell) ends when the caller loses member
    // in the project or their token.
    upgrade_to_relay(&state, session, on_upgrade, shim, "console")
}

/// Answer 101 and relay the upgraded connection to the shim's stream (exec
/// or console) until either ends, or until the session is revoked.
fn upgrade_to_relay(
    state: &Arc<AppState>,
    session: crate::auth::session::Session,
    on_upgrade: hyper::upgrade::OnUpgrade,
    shim: Box<dyn crate::hostio::ExecStream>,
    what: &'static str,
) -> ApiResult<Response> {
    let revoked = session.revoked(state.clone());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // Dropping the relay drops both directions and both
                // connections: nothing typed after revocation reaches the shim.
                tokio::select! {
                    _ = relay_exec(hyper_util::rt::TokioIo::new(upgraded), shim) => {}
                    _ = revoked => tracing::info!("{what} session ended: its caller is no longer allowed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "{what} upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "nimbus-exec")
        .body(Body::empty())
        .map_err(|e| ServerError(ApiError::internal(e.to_string())))
}

/// Relay an exec session. The shim's output is copied to its end even if
/// the other direction fails first, so the exit frame always arrives. Both
/// directions run inside this one future (no spawned task), so dropping it
/// ends the whole session.
async fn relay_exec<C, S>(client: C, shim: S)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut shim_rd, mut shim_wr) = tokio::io::split(shim);
    let input = async {
        let _ = tokio::io::copy(&mut client_rd, &mut shim_wr).await;
        let _ = shim_wr.shutdown().await;
    };
    let output = async {
        let _ = tokio::io::copy(&mut shim_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
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

#[cfg(test)]
mod relay_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Dropping a relay (as revocation does) must stop input at once: the
    /// old relay copied stdin in a spawned task that outlived it.
    #[tokio::test]
    async fn a_dropped_relay_forwards_no_more_input() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (shim, mut shim_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(super::relay_exec(client, shim));
        client_peer
            .write_all(b"before")
            .await
            .expect("write before");
        let mut got = [0u8; 6];
        shim_peer
            .read_exact(&mut got)
            .await
            .expect("relayed before");
        assert_eq!(&got, b"before");
        relay.abort();
        let _ = relay.await;
        // The relay is gone: the shim side sees the end of its stream,
        // never the bytes typed afterwards.
        let _ = client_peer.write_all(b"after").await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            shim_peer.read_to_end(&mut rest),
        )
        .await
        .expect("the shim side must be closed once the relay is dropped");
        assert!(read.is_ok());
        assert!(
            rest.is_empty(),
            "input after the relay ended reached the shim: {rest:?}"
        );
    }
}
