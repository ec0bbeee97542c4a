//! How the server reaches instances on their hosts (logs, exec, consoles,
//! pause, host port listeners). The trait lives in nimbus-api so agents
//! implement it without depending on the server: `nimbus up` hands its own
//! agent's [`HostIo`] in as [`LocalHost`]; every other host is reached
//! through its agent's I/O endpoint ([`remote::RemoteHostIo`]), each call
//! opened by a one-time ticket ([`tickets`]).

pub mod remote;
pub mod tickets;

use std::sync::Arc;

pub use nimbus_api::hostio::{ExecStream, HostIo, LogRequest, LogStream};

/// The agent running inside this server's process (`nimbus up`) and the
/// host it serves.
#[derive(Clone)]
pub struct LocalHost {
    pub host: String,
    pub io: Arc<dyn HostIo>,
}

/// The host I/O for `host` (`None`: an instance not yet placed): the local
/// agent's for its own host (and for unplaced instances, which under
/// `nimbus up` land there by default), the remote endpoint's for any other
/// host; `None` with no host and no local agent.
pub fn pick(
    local: Option<LocalHost>,
    repo: &crate::repo::Repo,
    host: Option<&str>,
) -> Option<Arc<dyn HostIo>> {
    match (local, host) {
        (Some(local), None) => Some(local.io),
        (Some(local), Some(h)) if local.host == h => Some(local.io),
        (_, Some(h)) => Some(Arc::new(remote::RemoteHostIo::new(repo.clone(), h))),
        (None, None) => None,
    }
}
