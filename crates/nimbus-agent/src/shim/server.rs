//! The shim's side of the control socket: one task per connection.
//!
//! The server reads the request line (within [`REQUEST_TIMEOUT`] and
//! [`MAX_LINE_BYTES`]), answers `status` and `subscribe` from the shim's
//! [`LiveState`], has the driver carry out `stop`, and hands the requests only
//! some workloads offer (`exec`, `pause`, `resume`, `console`) to the driver's
//! [`ShimHandler`], or refuses them with the driver's words when it does not
//! offer them. Every connection is counted, so a shim can let its clients read
//! the final state before it exits ([`Connections::wait_closed`]).

use std::cell::Cell;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Notify};

use super::control::{ExecRequest, ShimRequest, ShimResponse, MAX_LINE_BYTES, SOCKET_FILE};
use super::state::{LiveState, ShimState};
use super::ShimError;

/// A client has this long to send its request line.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after a failed accept (out of descriptors),
/// so that it does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The requests a shim answers only if its workload has the feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptionalRequest {
    Exec,
    Pause,
    Resume,
    Console,
}

impl OptionalRequest {
    /// The request's `op` on the wire.
    pub(crate) fn op(self) -> &'static str {
        match self {
            OptionalRequest::Exec => "exec",
            OptionalRequest::Pause => "pause",
            OptionalRequest::Resume => "resume",
            OptionalRequest::Console => "console",
        }
    }
}

/// One client connection after its request line was read: the rest of the
/// input (frames, for interactive requests) and the output.
pub(crate) struct Connection {
    pub(crate) reader: BufReader<OwnedReadHalf>,
    pub(crate) writer: OwnedWriteHalf,
}

impl Connection {
    /// Sends one response line.
    pub(crate) async fn respond(&mut self, resp: &ShimResponse) -> std::io::Result<()> {
        write_response(&mut self.writer, resp).await
    }

    /// Answers with an error and ends the request.
    pub(crate) async fn refuse(mut self, message: String) {
        let _ = self.respond(&ShimResponse::Error { message }).await;
    }
}

/// What one kind of workload's shim does for the control socket beyond the
/// requests every shim answers alike. The shim is single-threaded, so the
/// handler lives in an `Rc` and its futures need not be `Send`.
pub(crate) trait ShimHandler: 'static {
    /// Names the instance in the server's logs.
    fn instance_id(&self) -> &str;

    /// The state `status` and `subscribe` report.
    fn live_state(&self) -> &LiveState;

    /// The count the shim waits on before it exits.
    fn connections(&self) -> &Connections;

    /// Stops the workload for good (no restart), `grace_ms` before it is
    /// killed (the spec's stop grace if `None`); resolves to the state to
    /// answer with, the final one once the shim has torn down.
    async fn stop(&self, grace_ms: Option<u64>) -> ShimState;

    /// `Ok` if this shim answers `request`; otherwise the refusal the
    /// client gets, saying what to use instead.
    fn offers(&self, request: OptionalRequest) -> Result<(), String>;

    /// Runs a process in the workload and streams it over the connection.
    /// Called only if [`ShimHandler::offers`] accepts `exec`.
    async fn exec(self: Rc<Self>, conn: Connection, _req: ExecRequest) {
        conn.refuse(not_offered(OptionalRequest::Exec)).await;
    }

    /// Pauses (`true`) or resumes the workload; the new state, or why not.
    /// Called only if [`ShimHandler::offers`] accepts `pause` / `resume`.
    async fn pause(&self, paused: bool) -> Result<ShimState, String> {
        Err(not_offered(if paused {
            OptionalRequest::Pause
        } else {
            OptionalRequest::Resume
        }))
    }

    /// Attaches the client to the workload's console.
    /// Called only if [`ShimHandler::offers`] accepts `console`.
    async fn console(self: Rc<Self>, conn: Connection) {
        conn.refuse(not_offered(OptionalRequest::Console)).await;
    }
}

fn not_offered(request: OptionalRequest) -> String {
    format!("this instance's shim does not offer `{}`", request.op())
}

/// Counts live connections so the shim can let them flush before it exits.
#[derive(Default)]
pub(crate) struct Connections {
    open: Cell<usize>,
    closed: Notify,
}

impl Connections {
    /// Waits until every client has hung up, at most `timeout`.
    pub(crate) async fn wait_closed(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            while self.open.get() > 0 {
                self.closed.notified().await;
            }
        })
        .await;
    }
}

/// Held by each connection's task; the count drops however the task ends.
struct ConnectionGuard<H: ShimHandler>(Rc<H>);

impl<H: ShimHandler> ConnectionGuard<H> {
    fn new(handler: Rc<H>) -> Self {
        let connections = handler.connections();
        connections.open.set(connections.open.get() + 1);
        ConnectionGuard(handler)
    }
}

impl<H: ShimHandler> Drop for ConnectionGuard<H> {
    fn drop(&mut self) {
        let connections = self.0.connections();
        connections
            .open
            .set(connections.open.get().saturating_sub(1));
        connections.closed.notify_one();
    }
}

/// The control socket of a shim in `dir`, root only.
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

/// Accepts clients for as long as the shim runs, each on its own local task.
pub(crate) async fn serve<H: ShimHandler>(handler: Rc<H>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::task::spawn_local(handle_connection(handler.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(instance_id = %handler.instance_id(), error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Sends one response line.
pub(crate) async fn write_response(
    writer: &mut OwnedWriteHalf,
    resp: &ShimResponse,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

async fn handle_connection<H: ShimHandler>(handler: Rc<H>, stream: UnixStream) {
    let _guard = ConnectionGuard::new(handler.clone());
    let (read_half, writer) = stream.into_split();
    let mut conn = Connection {
        reader: BufReader::new(read_half),
        writer,
    };
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut conn.reader)
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
            conn.refuse(format!("bad request {:?}: {e}", line.trim_end()))
                .await;
            return;
        }
    };
    let optional = match &request {
        ShimRequest::Status | ShimRequest::Subscribe | ShimRequest::Stop { .. } => None,
        ShimRequest::Exec(_) => Some(OptionalRequest::Exec),
        ShimRequest::Pause => Some(OptionalRequest::Pause),
        ShimRequest::Resume => Some(OptionalRequest::Resume),
        ShimRequest::Console => Some(OptionalRequest::Console),
    };
    if let Some(Err(message)) = optional.map(|r| handler.offers(r)) {
        conn.refuse(message).await;
        return;
    }
    match request {
        ShimRequest::Status => {
            let state = handler.live_state().get();
            let _ = conn.respond(&ShimResponse::State { state }).await;
        }
        ShimRequest::Subscribe => subscribe(handler.live_state(), conn).await,
        ShimRequest::Stop { grace_ms } => {
            let state = handler.stop(grace_ms).await;
            let _ = conn.respond(&ShimResponse::State { state }).await;
        }
        ShimRequest::Exec(req) => handler.clone().exec(conn, req).await,
        ShimRequest::Pause | ShimRequest::Resume => {
            let resp = match handler.pause(request == ShimRequest::Pause).await {
                Ok(state) => ShimResponse::State { state },
                Err(message) => ShimResponse::Error { message },
            };
            let _ = conn.respond(&resp).await;
        }
        ShimRequest::Console => handler.clone().console(conn).await,
    }
}

/// The current state, then one line per change until the state is final or
/// the client hangs up.
async fn subscribe(live: &LiveState, mut conn: Connection) {
    let mut events = live.subscribe();
    let mut state = live.get();
    let mut probe = [0u8; 64];
    loop {
        let last = state.phase.is_final();
        if conn.respond(&ShimResponse::State { state }).await.is_err() || last {
            return;
        }
        state = tokio::select! {
            event = events.recv() => match event {
                Ok(next) => next,
                Err(broadcast::error::RecvError::Lagged(_)) => live.get(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // The client sends nothing more; a read returning means it hung up.
            _ = conn.reader.read(&mut probe) => return,
        };
    }
}
