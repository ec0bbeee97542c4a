//! The VM shim's side of the control socket: the container shim's protocol
//! (`status`, `subscribe`, `stop`) plus `pause`, `resume` and `console`.

use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::shim::{VmCommand, VmShim};
use crate::container::control::{
    encode_frame, frame, read_frame_async, ShimRequest, ShimResponse, MAX_LINE_BYTES,
};

use crate::container::server::REQUEST_TIMEOUT;
/// Console output chunks buffered for a slow client before it is detached.
const CONSOLE_BUFFER_CHUNKS: usize = 256;

pub(super) async fn serve(shim: Rc<VmShim>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::task::spawn_local(handle(shim.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(instance_id = %shim.spec.instance_id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct ConnectionGuard(Rc<VmShim>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0
            .connections
            .set(self.0.connections.get().saturating_sub(1));
        self.0.connection_closed.notify_one();
    }
}

async fn respond(writer: &mut OwnedWriteHalf, resp: &ShimResponse) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

async fn handle(shim: Rc<VmShim>, stream: UnixStream) {
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
            let _ = respond(&mut writer, &ShimResponse::Error { message }).await;
            return;
        }
    };
    let error = |message: String| ShimResponse::Error { message };
    match request {
        ShimRequest::Status => {
            let state = shim.state();
            let _ = respond(&mut writer, &ShimResponse::State { state }).await;
        }
        ShimRequest::Subscribe => subscribe(&shim, reader, writer).await,
        ShimRequest::Stop { grace_ms } => {
            let (reply, answer) = oneshot::channel();
            let state = match shim.commands.send(VmCommand::Stop { grace_ms, reply }) {
                Ok(()) => answer.await.unwrap_or_else(|_| shim.state()),
                Err(_) => shim.state(),
            };
            let _ = respond(&mut writer, &ShimResponse::State { state }).await;
        }
        ShimRequest::Pause | ShimRequest::Resume => {
            let paused = request == ShimRequest::Pause;
            let (reply, answer) = oneshot::channel();
            let resp = match shim.commands.send(VmCommand::Pause { paused, reply }) {
                Ok(()) => match answer.await {
                    Ok(Ok(state)) => ShimResponse::State { state },
                    Ok(Err(message)) => error(message),
                    Err(_) => error("the VM has ended".into()),
                },
                Err(_) => error("the VM has ended".into()),
            };
            let _ = respond(&mut writer, &resp).await;
        }
        ShimRequest::Console => console(&shim, reader, writer).await,
        ShimRequest::Exec(_) => {
            let message = "exec runs in containers; for a VM use `nimbus instance console` or SSH"
                .to_string();
            let _ = respond(&mut writer, &error(message)).await;
        }
    }
}

async fn subscribe(
    shim: &Rc<VmShim>,
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
) {
    let mut events = shim.events.subscribe();
    let mut state = shim.state();
    let mut probe = [0u8; 64];
    loop {
        let last = state.phase.is_final();
        if respond(&mut writer, &ShimResponse::State { state })
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
            _ = reader.read(&mut probe) => return,
        };
    }
}

/// One interactive client at a time: serial output to it as STDOUT frames,
/// its STDIN frames to the guest. Ends with an EXIT frame when the VM ends;
/// the client detaches by closing the connection.
async fn console(
    shim: &Rc<VmShim>,
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
) {
    if shim.state().phase.is_final() {
        let _ = respond(
            &mut writer,
            &ShimResponse::Error {
                message: "the VM has ended".into(),
            },
        )
        .await;
        return;
    }
    let busy = shim
        .console_out
        .borrow()
        .as_ref()
        .is_some_and(|tx| !tx.is_closed());
    if busy {
        let message = "another console session is attached; detach it first (Ctrl-])".to_string();
        let _ = respond(&mut writer, &ShimResponse::Error { message }).await;
        return;
    }
    let (tx, mut output) = mpsc::channel(CONSOLE_BUFFER_CHUNKS);
    *shim.console_out.borrow_mut() = Some(tx);
    if respond(&mut writer, &ShimResponse::ConsoleAttached)
        .await
        .is_err()
    {
        shim.console_out.borrow_mut().take();
        return;
    }
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(bytes) => {
                    if writer.write_all(&encode_frame(frame::STDOUT, &bytes)).await.is_err() {
                        break;
                    }
                }
                None => {
                    // The VM ended (or this session was replaced).
                    let code = shim.state().exit_code.unwrap_or(0);
                    let _ = writer.write_all(&encode_frame(frame::EXIT, &code.to_be_bytes())).await;
                    break;
                }
            },
            input = read_frame_async(&mut reader) => match input {
                Ok(Some((frame::STDIN, bytes))) => {
                    let _ = shim.console_in.send(bytes);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    shim.console_out.borrow_mut().take();
}
