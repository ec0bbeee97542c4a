//! What a VM's shim adds to the shared control socket: `pause` and `resume`
//! (QMP `stop` / `cont`), the serial `console`, and `stop` as a power-off
//! carried out by the supervisor. `exec` is for containers and is refused.

use std::rc::Rc;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::error::VmError;
use super::shim::{VmCommand, VmShim};
use crate::shim::control::{encode_frame, frame, read_frame_async, ShimResponse};
use crate::shim::server::{Connection, Connections, OptionalRequest, ShimHandler};
use crate::shim::state::{LiveState, ShimState};
use crate::shim::ShimError;

/// Console output chunks buffered for a slow client before it is detached.
const CONSOLE_BUFFER_CHUNKS: usize = 256;

impl ShimHandler for VmShim {
    fn instance_id(&self) -> &str {
        &self.spec.instance_id
    }

    fn live_state(&self) -> &LiveState {
        &self.live
    }

    fn connections(&self) -> &Connections {
        &self.connections
    }

    async fn stop(&self, grace_ms: Option<u64>) -> ShimState {
        let (reply, answer) = oneshot::channel();
        match self.commands.send(VmCommand::Stop { grace_ms, reply }) {
            Ok(()) => answer.await.unwrap_or_else(|_| self.state()),
            Err(_) => self.state(),
        }
    }

    fn offers(&self, request: OptionalRequest) -> Result<(), ShimError> {
        match request {
            OptionalRequest::Pause | OptionalRequest::Resume | OptionalRequest::Console => Ok(()),
            OptionalRequest::Exec => Err(ShimError::Refused(
                "exec runs in containers; for a VM use `nimbus instance console` or SSH"
                    .to_string(),
            )),
        }
    }

    async fn pause(&self, paused: bool) -> Result<ShimState, ShimError> {
        let (reply, answer) = oneshot::channel();
        let result = match self.commands.send(VmCommand::Pause { paused, reply }) {
            Ok(()) => answer.await.unwrap_or(Err(VmError::Ended)),
            Err(_) => Err(VmError::Ended),
        };
        Ok(result?)
    }

    async fn console(self: Rc<Self>, conn: Connection) {
        console(&self, conn).await
    }
}

/// One interactive client at a time: serial output to it as STDOUT frames,
/// its STDIN frames to the guest. Ends with an EXIT frame when the VM ends;
/// the client detaches by closing the connection.
async fn console(shim: &Rc<VmShim>, mut conn: Connection) {
    if shim.state().phase.is_final() {
        conn.refuse(VmError::Ended.into()).await;
        return;
    }
    let busy = shim
        .console_out
        .borrow()
        .as_ref()
        .is_some_and(|tx| !tx.is_closed());
    if busy {
        conn.refuse(VmError::ConsoleBusy.into()).await;
        return;
    }
    let (tx, mut output) = mpsc::channel(CONSOLE_BUFFER_CHUNKS);
    *shim.console_out.borrow_mut() = Some(tx);
    if conn.respond(&ShimResponse::ConsoleAttached).await.is_err() {
        shim.console_out.borrow_mut().take();
        return;
    }
    let Connection {
        mut reader,
        mut writer,
    } = conn;
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
