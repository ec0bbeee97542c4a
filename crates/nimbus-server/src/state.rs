//! Shared server state handed to every handler.

use std::sync::{Arc, RwLock};

use nimbus_image::ImageStore;

use crate::auth::TokenCache;
use crate::config::ServerConfig;
use crate::hostio::{HostIo, LocalHost};
use crate::repo::Repo;

pub struct AppState {
    pub config: ServerConfig,
    pub repo: Repo,
    pub tokens: TokenCache,
    pub images: Arc<ImageStore>,
    /// Where image signatures are read for the launch policy (see
    /// `signatures`): the registry's `sha256-<hex>.sig` tags.
    pub signatures: Arc<dyn crate::signatures::SignatureSource>,
    /// Seals and opens instances' secret environment values.
    pub secrets: crate::secrets::SecretBox,
    /// The agent of `nimbus up`, which serves its own host's instances
    /// directly; other hosts are reached through their I/O endpoints.
    pub host_io: RwLock<Option<LocalHost>>,
    /// Held while a host port claim is checked and written
    /// (`hostports::check`), so concurrent claims cannot overrun a
    /// project's count.
    pub host_port_claims: crate::hostports::ClaimLock,
    /// Wakes the scheduler when an instance is created.
    pub schedule_now: tokio::sync::Notify,
    /// Imports hold it shared, garbage collection exclusively: the image
    /// store must not collect blobs an import is still writing.
    pub image_lock: tokio::sync::RwLock<()>,
    /// Archive bytes of imports in progress, per project, for the image
    /// quota (`image_quota`): their staging on disk names no project.
    pub image_imports: Arc<crate::image_quota::ImportsInFlight>,
    /// Whole list responses while the store is unchanged.
    pub list_cache: crate::api::watch::ListResponseCache,
    /// The collections the hosts' network peers are made of, read once
    /// per change for every agent waiting (see `api::network_peers`).
    pub peer_snapshots: crate::api::network_peers::Snapshots,
    /// Open long-lived sessions per token and user (see `auth::session`).
    pub streams: Arc<crate::auth::session::StreamLimiter>,
    /// Audit records written and failed-authentication windows (see
    /// `auth::audit`).
    pub audit: crate::auth::audit::AuditLog,
    /// Counters, histograms and the agents' latest statistics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Signed-in browsers of the web console (see `auth::cookie`).
    pub browser_sessions: crate::auth::cookie::CookieSessions,
    /// This server's part in the election among the servers sharing the
    /// store (see `cluster`): the leader runs the controllers.
    pub election: Arc<dyn nimbus_store::Election>,
    /// While this server leads, its leadership's fence (`None` otherwise, and
    /// with an election that has no one to race, as `nimbus up`'s).
    pub leader_fence: RwLock<Option<nimbus_store::Compare>>,
    /// Held while the server runs (see `server::lock_data_dir`).
    pub _data_dir_lock: crate::server::DataDirLock,
}

impl AppState {
    /// The repo leader tasks write through: each update also requires this
    /// server's leadership, so one sent after it passed to another server
    /// is refused instead of undoing the new leader's decision.
    pub fn leader_repo(&self) -> crate::repo::Repo {
        let fence = self.leader_fence.read().ok().and_then(|f| f.clone());
        self.repo.fenced(fence.as_ref())
    }

    /// The host I/O of `host` (`None`: not placed yet), if any reaches it
    /// (see `hostio::pick`).
    pub fn host_io_on(&self, host: Option<&str>) -> Option<Arc<dyn HostIo>> {
        let local = self.host_io.read().ok().and_then(|g| g.clone());
        crate::hostio::pick(local, &self.repo, host)
    }

    /// The host I/O that reaches `instance` for `what` (logs, exec, a
    /// console, pause), or why none can: it is on no host yet.
    pub fn host_io_for(
        &self,
        instance: &nimbus_api::Instance,
        what: &str,
    ) -> Result<Arc<dyn HostIo>, nimbus_api::ApiError> {
        self.host_io_on(instance.status.host.as_deref()).ok_or_else(|| {
            let name = &instance.metadata.name;
            nimbus_api::ApiError::conflict(format!(
                "instance {name:?} is on no host yet, so there is no {what} to reach; wait until `nimbus instance get {name}` shows its host"
            ))
        })
    }
}
