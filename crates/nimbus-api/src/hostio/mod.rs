//! How the server reaches an instance's logs and exec on its host, and asks
//! a host about its own services. On one machine the local agent provides
//! this directly; across hosts each agent serves it on its I/O endpoint
//! (`ticket` says who may call it, `pinned` how the server reaches it).

pub mod pinned;
pub mod ticket;

use std::net::SocketAddr;
use std::pin::Pin;

use crate::exec::ExecRequest;
use crate::{ApiError, Instance, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};

pub trait ExecStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ExecStream for T {}

/// An instance's log bytes (whole lines), as a host streams them.
pub type LogStream =
    Pin<Box<dyn futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static>>;

/// Which part of the log to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRequest {
    /// Only the last N lines of what is there.
    pub tail: Option<usize>,
    /// Then keep sending new lines until the stream is dropped.
    #[serde(default)]
    pub follow: bool,
}

#[async_trait::async_trait]
pub trait HostIo: Send + Sync {
    /// The instance's log, oldest first (rotated files, then current); with
    /// `follow`, new lines as they are written, until the stream is dropped.
    async fn logs(&self, instance: &Instance, req: LogRequest) -> Result<LogStream, ApiError>;
    /// Start a process in the running instance; the returned stream speaks
    /// the frames of `nimbus_api::exec`.
    async fn exec(
        &self,
        instance: &Instance,
        req: &ExecRequest,
    ) -> Result<Box<dyn ExecStream>, ApiError>;
    /// Attach to a VM's serial console; the stream speaks the exec frames
    /// (STDIN in, STDOUT out, EXIT when the console ends).
    async fn console(&self, instance: &Instance) -> Result<Box<dyn ExecStream>, ApiError> {
        Err(ApiError::invalid(format!(
            "instance {:?}: this host cannot attach consoles",
            instance.metadata.name
        )))
    }
    /// Pause (`true`) or resume (`false`) a running VM's CPUs.
    async fn set_paused(&self, instance: &Instance, paused: bool) -> Result<(), ApiError> {
        let _ = paused;
        Err(ApiError::invalid(format!(
            "instance {:?}: this host cannot pause instances",
            instance.metadata.name
        )))
    }
    /// Local addresses on which a service of the host that would forward
    /// host port `port` already accepts new flows (TCP listeners, unconnected
    /// UDP sockets; any address, IPv4 and IPv6). `host` is the host the
    /// instance is bound to, `None` before it is placed. Forwarding such a
    /// port would take that service's connections, so the server refuses
    /// to claim it. Asked of the host because only it sees its sockets.
    async fn host_port_listeners(
        &self,
        host: Option<&str>,
        protocol: Protocol,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ApiError>;
}
