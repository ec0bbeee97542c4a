//! Logs, exec, consoles and pause of this host's instances, and its
//! listening sockets: for the server of `nimbus up` directly, and for the
//! servers of a standalone agent through its I/O endpoint
//! (`crate::io_endpoint`).

pub mod logs;

use std::net::SocketAddr;
use std::path::PathBuf;

use nimbus_api::exec::ExecRequest;
use nimbus_api::hostio::{ExecStream, HostIo, LogRequest, LogStream};
use nimbus_api::{ApiError, Instance, Protocol};
use nimbus_net::listeners::{self, Transport};

use crate::shim::ShimClient;

pub struct LocalHostIo {
    pub instances_dir: PathBuf,
}

#[async_trait::async_trait]
impl HostIo for LocalHostIo {
    async fn logs(&self, instance: &Instance, req: LogRequest) -> Result<LogStream, ApiError> {
        let dir = self.instances_dir.join(&instance.metadata.id);
        let mut files: Vec<PathBuf> = (1..=16)
            .rev()
            .map(|n| dir.join(format!("console.log.{n}")))
            .filter(|p| p.exists())
            .collect();
        files.push(dir.join("console.log"));
        Ok(Box::pin(logs::stream(files, req.tail, req.follow)))
    }

    async fn exec(
        &self,
        instance: &Instance,
        req: &ExecRequest,
    ) -> Result<Box<dyn ExecStream>, ApiError> {
        let dir = self.instances_dir.join(&instance.metadata.id);
        let client = ShimClient::connect(&dir).map_err(|e| {
            ApiError::conflict(format!(
                "instance {:?} has no running supervisor: {e}",
                instance.metadata.name
            ))
        })?;
        let (_pid, stream) = client.exec_async(req).await.map_err(|e| {
            ApiError::invalid(format!("exec in {:?} failed: {e}", instance.metadata.name))
        })?;
        Ok(Box::new(stream))
    }

    async fn console(&self, instance: &Instance) -> Result<Box<dyn ExecStream>, ApiError> {
        let client = self.shim(instance)?;
        let stream = client.console_async().await.map_err(|e| {
            ApiError::conflict(format!(
                "cannot attach to the console of {:?}: {e}",
                instance.metadata.name
            ))
        })?;
        Ok(Box::new(stream))
    }

    async fn set_paused(&self, instance: &Instance, paused: bool) -> Result<(), ApiError> {
        let client = self.shim(instance)?;
        client.pause_async(paused).await.map(drop).map_err(|e| {
            ApiError::conflict(format!(
                "cannot {} {:?}: {e}",
                if paused { "pause" } else { "resume" },
                instance.metadata.name
            ))
        })
    }

    async fn host_port_listeners(
        &self,
        _host: Option<&str>,
        protocol: Protocol,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ApiError> {
        // One host: whichever instance it is, this host forwards the port.
        let transport = match protocol {
            Protocol::Tcp => Transport::Tcp,
            Protocol::Udp => Transport::Udp,
            other => {
                return Err(ApiError::invalid(format!(
                    "host ports are tcp or udp, not {}",
                    other.as_str()
                )))
            }
        };
        // The blocking pool's threads stay in the host's network namespace
        // (namespace work runs on threads of its own).
        tokio::task::spawn_blocking(move || listeners::accepting_on(transport, port))
            .await
            .map_err(|e| ApiError::internal(format!("checking host port {port}: {e}")))?
            .map_err(|e| {
                ApiError::internal(format!(
                    "cannot tell whether a host service listens on port {port}/{}: {e}",
                    transport.as_str()
                ))
            })
    }
}

impl LocalHostIo {
    fn shim(&self, instance: &Instance) -> Result<ShimClient, ApiError> {
        let dir = self.instances_dir.join(&instance.metadata.id);
        ShimClient::connect(&dir).map_err(|e| {
            ApiError::conflict(format!(
                "instance {:?} has no running supervisor: {e}; start it with `nimbus instance start {}`",
                instance.metadata.name, instance.metadata.name
            ))
        })
    }
}
