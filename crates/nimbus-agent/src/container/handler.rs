//! What a container's shim adds to the shared control socket: `exec` (streamed
//! by [`super::exec_stream`]) and `stop` as a signal to the container's init,
//! carried out by the supervisor loop. `pause`, `resume` and `console` are for
//! virtual machines and are refused.

use std::rc::Rc;

use tokio::sync::oneshot;

use super::shim::{Command, Shim};
use crate::shim::control::ExecRequest;
use crate::shim::server::{Connection, Connections, OptionalRequest, ShimHandler};
use crate::shim::state::{LiveState, ShimState};
use crate::shim::ShimError;

impl ShimHandler for Shim {
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
        match self.commands.send(Command::Stop { grace_ms, reply }) {
            Ok(()) => answer.await.unwrap_or_else(|_| self.state()),
            Err(_) => self.state(),
        }
    }

    fn offers(&self, request: OptionalRequest) -> Result<(), ShimError> {
        match request {
            OptionalRequest::Exec => Ok(()),
            OptionalRequest::Pause | OptionalRequest::Resume | OptionalRequest::Console => Err(
                ShimError::Refused("pause, resume and console are for virtual machines; this instance is a container (use exec)"
                    .to_string()),
            ),
        }
    }

    async fn exec(self: Rc<Self>, conn: Connection, req: ExecRequest) {
        super::exec_stream::run(self, conn.reader, conn.writer, req).await
    }
}
