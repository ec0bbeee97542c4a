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
    pub(crate) async fn refuse(mut self, error: ShimError) {
        let message = refusal_message(error);
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
    /// client gets ([`ShimError::Refused`]), saying what to use instead.
    fn offers(&self, request: OptionalRequest) -> Result<(), ShimError>;

    /// Runs a process in the workload and streams it over the connection.
    /// Called only if [`ShimHandler::offers`] accepts `exec`.
    async fn exec(self: Rc<Self>, conn: Connection, _req: ExecRequest) {
        conn.refuse(not_offered(OptionalRequest::Exec)).await;
    }

    /// Pauses (`true`) or resumes the workload; the new state, or why not.
    /// Called only if [`ShimHandler::offers`] accepts `pause` / `resume`.
    async fn pause(&self, paused: bool) -> Result<ShimState, ShimError> {
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

fn not_offered(request: OptionalRequest) -> ShimError {
    ShimError::Refused(format!(
        "this instance's shim does not offer `{}`",
        request.op()
    ))
}

/// The text an error goes over the wire as. A refusal is sent in its own
/// words, so the client's [`ShimError::Refused`] holds the same text the
/// handler refused with; any other error is sent as its message.
fn refusal_message(error: ShimError) -> String {
    match error {
        ShimError::Refused(message) => message,
        other => other.to_string(),
    }
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
    serve_with_timeout(handler, listener, REQUEST_TIMEOUT).await
}

async fn serve_with_timeout<H: ShimHandler>(
    handler: Rc<H>,
    listener: UnixListener,
    request_timeout: Duration,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::task::spawn_local(handle_connection(
                    handler.clone(),
                    stream,
                    request_timeout,
                ));
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

async fn handle_connection<H: ShimHandler>(
    handler: Rc<H>,
    stream: UnixStream,
    request_timeout: Duration,
) {
    let _guard = ConnectionGuard::new(handler.clone());
    let (read_half, writer) = stream.into_split();
    let mut conn = Connection {
        reader: BufReader::new(read_half),
        writer,
    };
    let mut line = String::new();
    let read = tokio::time::timeout(
        request_timeout,
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
            conn.refuse(ShimError::Refused(format!(
                "bad request {:?}: {e}",
                line.trim_end()
            )))
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
    if let Some(Err(refusal)) = optional.map(|r| handler.offers(r)) {
        conn.refuse(refusal).await;
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
                Err(error) => ShimResponse::Error {
                    message: refusal_message(error),
                },
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use tokio::io::AsyncBufReadExt;

    use super::*;
    use crate::shim::control::ShimClient;
    use crate::shim::state::Phase;

    /// A shim without a workload: stops are recorded and end the instance,
    /// `pause` is the one optional request it offers.
    struct FakeShim {
        live: LiveState,
        connections: Connections,
        stops: RefCell<Vec<Option<u64>>>,
    }

    const FAKE_REFUSAL: &str = "the fake workload has no such thing; use status";

    /// The fake driver's own typed error.
    #[derive(Debug, thiserror::Error)]
    #[error("the fake workload is already paused; resume it first")]
    struct AlreadyPaused;

    impl ShimHandler for FakeShim {
        fn instance_id(&self) -> &str {
            "fake"
        }

        fn live_state(&self) -> &LiveState {
            &self.live
        }

        fn connections(&self) -> &Connections {
            &self.connections
        }

        async fn stop(&self, grace_ms: Option<u64>) -> ShimState {
            self.stops.borrow_mut().push(grace_ms);
            self.live.update(|s| s.phase = Phase::Exited);
            self.live.get()
        }

        fn offers(&self, request: OptionalRequest) -> Result<(), ShimError> {
            match request {
                OptionalRequest::Pause => Ok(()),
                _ => Err(ShimError::Refused(FAKE_REFUSAL.to_string())),
            }
        }

        async fn pause(&self, paused: bool) -> Result<ShimState, ShimError> {
            if paused && self.live.get().phase == Phase::Paused {
                return Err(ShimError::Workload(Box::new(AlreadyPaused)));
            }
            self.live.update(|s| {
                s.phase = if paused {
                    Phase::Paused
                } else {
                    Phase::Running
                }
            });
            Ok(self.live.get())
        }
    }

    /// Serves a fake shim from a temporary instance directory on the
    /// current (local) task set.
    fn start(timeout: Duration) -> (tempfile::TempDir, Rc<FakeShim>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut initial = ShimState::new(42);
        initial.phase = Phase::Running;
        let shim = Rc::new(FakeShim {
            live: LiveState::new(dir.path(), "fake", initial),
            connections: Connections::default(),
            stops: RefCell::new(Vec::new()),
        });
        let listener = listen(dir.path()).expect("listen");
        tokio::task::spawn_local(serve_with_timeout(shim.clone(), listener, timeout));
        (dir, shim)
    }

    async fn in_local_set<F: std::future::Future>(test: F) -> F::Output {
        tokio::task::LocalSet::new().run_until(test).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn status_reports_the_live_state_and_the_socket_is_root_only() {
        in_local_set(async {
            let (dir, _shim) = start(REQUEST_TIMEOUT);
            let mode = std::fs::metadata(dir.path().join(SOCKET_FILE))
                .expect("socket")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let client = ShimClient::connect(dir.path()).expect("connect");
            let state = client.status_async().await.expect("status");
            assert_eq!((state.phase, state.shim_pid), (Phase::Running, 42));
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn subscribe_sends_every_change_and_ends_at_the_final_state() {
        in_local_set(async {
            let (dir, shim) = start(REQUEST_TIMEOUT);
            let client = ShimClient::connect(dir.path()).expect("connect");
            let mut states = client.subscribe_async().await.expect("subscribe");
            let first = states.next().await.expect("first").expect("state");
            assert_eq!(first.phase, Phase::Running);
            shim.live.update(|s| s.phase = Phase::Stopping);
            shim.live.update(|s| {
                s.phase = Phase::Exited;
                s.exit_code = Some(3);
            });
            let next = states.next().await.expect("stopping").expect("state");
            assert_eq!(next.phase, Phase::Stopping);
            let last = states.next().await.expect("exited").expect("state");
            assert_eq!((last.phase, last.exit_code), (Phase::Exited, Some(3)));
            assert!(
                states.next().await.is_none(),
                "the subscription ends after the final state"
            );
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stop_is_carried_out_by_the_driver_and_answered_with_its_state() {
        in_local_set(async {
            let (dir, shim) = start(REQUEST_TIMEOUT);
            let client = ShimClient::connect(dir.path()).expect("connect");
            let state = client.stop_async(250).await.expect("stop");
            assert_eq!(state.phase, Phase::Exited);
            assert_eq!(*shim.stops.borrow(), vec![Some(250)]);
            // The state file follows the live state.
            let on_disk = crate::shim::state::read_state(dir.path()).expect("state.json");
            assert_eq!(on_disk.phase, Phase::Exited);
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_the_driver_does_not_offer_are_refused_in_its_words() {
        in_local_set(async {
            let (dir, shim) = start(REQUEST_TIMEOUT);
            let client = ShimClient::connect(dir.path()).expect("connect");
            let exec: ExecRequest =
                serde_json::from_str(r#"{"args":["sh"]}"#).expect("exec request");
            for refused in [
                client.exec_async(&exec).await.map(|_| ()),
                client.console_async().await.map(|_| ()),
                client.pause_async(false).await.map(|_| ()),
            ] {
                match refused {
                    Err(ShimError::Refused(message)) => assert_eq!(message, FAKE_REFUSAL),
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
            // What it offers reaches it.
            let paused = client.pause_async(true).await.expect("pause");
            assert_eq!(paused.phase, Phase::Paused);
            assert_eq!(shim.live.get().phase, Phase::Paused);
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_driver_error_reaches_the_client_in_the_drivers_words() {
        in_local_set(async {
            let (dir, _shim) = start(REQUEST_TIMEOUT);
            let client = ShimClient::connect(dir.path()).expect("connect");
            client.pause_async(true).await.expect("first pause");
            match client.pause_async(true).await {
                Err(ShimError::Refused(message)) => {
                    assert_eq!(message, AlreadyPaused.to_string())
                }
                other => panic!("expected the driver's refusal, got {other:?}"),
            }
        })
        .await
    }

    /// Sends `request` as one line and returns the first response line.
    async fn exchange(dir: &Path, request: Vec<u8>) -> String {
        let stream = UnixStream::connect(dir.join(SOCKET_FILE))
            .await
            .expect("connect");
        let (read_half, mut write_half) = stream.into_split();
        // The server may stop reading before the whole line is in.
        tokio::task::spawn_local(async move {
            let _ = write_half.write_all(&request).await;
        });
        let mut line = String::new();
        BufReader::new(read_half)
            .read_line(&mut line)
            .await
            .expect("read response");
        line
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_line_over_the_limit_is_rejected() {
        in_local_set(async {
            let (dir, _shim) = start(REQUEST_TIMEOUT);
            let padded = |pad: usize| {
                format!(r#"{{"op":"status","pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
            };
            let mut fits = padded(MAX_LINE_BYTES - 100);
            fits.push(b'\n');
            let answer = exchange(dir.path(), fits).await;
            assert!(answer.starts_with(r#"{"type":"state""#), "{answer:.80}");
            let mut too_long = padded(MAX_LINE_BYTES + 1000);
            too_long.push(b'\n');
            let answer = exchange(dir.path(), too_long).await;
            assert!(
                answer.starts_with(r#"{"type":"error","message":"bad request"#),
                "{answer:.80}"
            );
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_sends_nothing_is_dropped_after_the_timeout() {
        in_local_set(async {
            let timeout = Duration::from_millis(200);
            let (dir, shim) = start(timeout);
            let mut silent = UnixStream::connect(dir.path().join(SOCKET_FILE))
                .await
                .expect("connect");
            let since = tokio::time::Instant::now();
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
                .await
                .expect("the shim hangs up before 10 s")
                .expect("read");
            assert_eq!(n, 0, "no answer, just the end of the connection");
            assert!(since.elapsed() >= timeout);
            // The connection no longer counts: the shim would not wait on it.
            let waited = tokio::time::Instant::now();
            shim.connections.wait_closed(Duration::from_secs(10)).await;
            assert!(waited.elapsed() < Duration::from_secs(5));
        })
        .await
    }
}
