//! How the server reaches an instance's logs and exec on its host, and asks
//! a host about its own services. On one machine the local agent provides
//! this directly; across hosts an agent endpoint will.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::exec::ExecRequest;
use crate::{ApiError, Instance, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};

pub trait ExecStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ExecStream for T {}

#[async_trait::async_trait]
pub trait HostIo: Send + Sync {
    /// Log files of the instance, oldest first (rotated files, then current).
    async fn log_files(&self, instance: &Instance) -> Result<Vec<PathBuf>, ApiError>;
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
