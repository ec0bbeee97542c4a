//! The shim's side of the control socket: one task per connection.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, oneshot};

use super::control::{ShimRequest, ShimResponse, MAX_LINE_BYTES, SOCKET_FILE};
use super::shim::{Command, Shim};
use super::ShimError;

/// A client has this long to send its request line.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of a shim (container or VM) in `dir`, root only.
pub(crate) fn listen(dir: &Path) -> Result<UnixListener, ShimError> {
    let path = dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let io = |what: &str| {
        let what = format!("{what} control socket {}", path.display());
        move |source| ShimError::Io { what, source }
    };
    let listener = UnixListener::bind(&path).map_err(io("bind"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod"))?;
    Ok(listener)
}

pub(super) async fn serve(shim: Rc<Shim>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::task::spawn_local(handle_connection(shim.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(instance_id = %shim.spec.instance_id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts live connections so the shim can let them flush before it exits.
struct ConnectionGuard(Rc<Shim>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0
            .connections
            .set(self.0.connections.get().saturating_sub(1));
        self.0.connection_closed.notify_one();
    }
}

pub(super) async fn write_response(
    writer: &mut OwnedWriteHalf,
    resp: &ShimResponse,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

async fn handle_connection(shim: Rc<Shim>, stream: UnixStream) {
    shim.connections.set(shim.connections.get() + 1);
    let _guard = ConnectionGuard(shim.clone());
    let (read_half, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(1..))) {
        return;
    }
    let request = match serde_json::from_str::<ShimRequest>(line.trim_end()) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("bad request {:?}: {e}", line.trim_end());
            let _ = write_response(&mut writer, &ShimResponse::Error { message }).await;
            return;
        }
    };
    match request {
        ShimRequest::Status => {
            let _ = write_response(
                &mut writer,
                &ShimResponse::State {
                    state: shim.state(),
                },
            )
            .await;
        }
        ShimRequest::Subscribe => subscribe(&shim, reader, writer).await,
        ShimRequest::Stop { grace_ms } => {
            let (reply, answer) = oneshot::channel();
            let state = match shim.commands.send(Command::Stop { grace_ms, reply }) {
                Ok(()) => answer.await.unwrap_or_else(|_| shim.state()),
                Err(_) => shim.state(),
            };
            let _ = write_response(&mut writer, &ShimResponse::State { state }).await;
        }
        ShimRequest::Exec(req) => super::exec_stream::run(shim.clone(), reader, writer, req).await,
        ShimRequest::Pause | ShimRequest::Resume | ShimRequest::Console => {
            let message = "pause, resume and console are for virtual machines; this instance is a container (use exec)".to_string();
            let _ = write_response(&mut writer, &ShimResponse::Error { message }).await;
        }
    }
}

async fn subscribe(
    shim: &Rc<Shim>,
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
) {
    let mut events = shim.events.subscribe();
    let mut state = shim.state();
    let mut probe = [0u8; 64];
    loop {
        let last = state.phase.is_final();
        if write_response(&mut writer, &ShimResponse::State { state })
            .await
            .is_err()
            || last
        {
            return;
        }
        state = tokio::select! {
            event = events.recv() => match event {
                Ok(next) => next,
                Err(broadcast::error::RecvError::Lagged(_)) => shim.state(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // The client sends nothing more; a read returning means it hung up.
            _ = reader.read(&mut probe) => return,
        };
    }
}
