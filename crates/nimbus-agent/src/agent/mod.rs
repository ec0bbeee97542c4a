//! The host agent: registration, heartbeats, and the reconcile loop that
//! turns instance specs bound to this host into running shims.

mod context;
pub mod decision;
pub mod error;
pub mod fence;
#[cfg(test)]
mod heartbeat_tests;
pub mod hostinfo;
pub mod hostio;
pub mod idmap;
pub mod network;
pub mod reconcile;
mod signature_policy;
pub mod skew;
pub mod stats;
pub mod translate;
mod tunnel;
#[cfg(test)]
mod worker_tests;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use nimbus_api::client::{Client, ClientError};
use nimbus_api::{Instance, RegisterHost, ResourceList, WatchEvent, WatchEventType};
use nimbus_image::{ImageStore, Limits};
use tokio::sync::mpsc;

use crate::blobs::{BlobSource, RemoteBlobs, SharedStore};
use crate::driver::Drivers;

/// A container's writable layer when nobody asked for a size.
pub const DEFAULT_CONTAINER_DISK_BYTES: u64 = nimbus_api::DEFAULT_CONTAINER_DISK_BYTES;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub host_name: String,
    pub data_dir: PathBuf,
    /// Where image layers live (shared with the server on one machine).
    pub images_dir: PathBuf,
    /// The shim executable, run as `<exe> shim <dir>`: `nimbus-shim` or
    /// `nimbus` itself (see [`crate::shim::shim_executable`]).
    pub exe: PathBuf,
    pub heartbeat_ms: u64,
    /// Self-fencing lease (see `fence.rs`): with one, the agent stops every
    /// instance once no heartbeat was accepted for this long, and beats at
    /// least three times per lease. `None` (`nimbus up`): never.
    pub fence_after_ms: Option<u64>,
    /// How often the instances' statistics are pushed (`stats.rs`); 0: never.
    pub stats_ms: u64,
    /// First host uid handed out; each instance gets `id_range` ids (a
    /// container maps its user namespace onto them, a VM's QEMU runs as the
    /// first).
    pub id_base: u32,
    pub id_range: u32,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Host TCP ports Nimbus's own listeners use on this host (the API's
    /// TLS port under `nimbus up`): never forwarded to an instance.
    pub reserved_tcp_ports: Vec<u16>,
    /// Memory the host offers instances: the host's memory minus the
    /// control plane's reserve, when `nimbus up` set one
    /// (`protect::reserve_host_memory`). The scheduler fills hosts up to
    /// it, so it never places more than the instances' cgroup allows.
    pub instances_memory_bytes: Option<u64>,
    /// Size of a container's writable layer (its own ext4 filesystem)
    /// when neither the instance nor its project sets `disk_bytes`.
    pub container_disk_bytes: u64,
    /// How often a host with its own image store collects the blobs no
    /// instance here uses (also soon after an instance is removed).
    pub blob_collect_ms: u64,
    /// A fetched blob or unpacked layer younger than this is never
    /// collected: an instance may be starting from it.
    pub blob_min_age_ms: u64,
    /// Where this host meets the others for networks that span hosts
    /// (VXLAN); `None`: its networks stay on this host (`nimbus up`).
    pub tunnel: Option<nimbus_net::vxlan::Underlay>,
    /// Where this agent serves its instances' I/O to the servers
    /// (`crate::io_endpoint`), reported in its host status; `None` under
    /// `nimbus up`, whose server reaches them directly.
    pub io_endpoint: Option<crate::io_endpoint::Advertised>,
}

impl AgentConfig {
    pub fn new(host_name: String, data_dir: PathBuf, exe: PathBuf) -> Self {
        AgentConfig {
            host_name,
            images_dir: data_dir.join("images"),
            data_dir,
            exe,
            heartbeat_ms: 5_000,
            fence_after_ms: None,
            stats_ms: 2_000,
            id_base: 100_000,
            id_range: 65_536,
            labels: Default::default(),
            reserved_tcp_ports: Vec::new(),
            instances_memory_bytes: None,
            container_disk_bytes: DEFAULT_CONTAINER_DISK_BYTES,
            blob_collect_ms: 10 * 60 * 1000,
            blob_min_age_ms: 10 * 60 * 1000,
            tunnel: None,
            io_endpoint: None,
        }
    }

    pub fn instances_dir(&self) -> PathBuf {
        self.data_dir.join("instances")
    }

    pub fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.instances_dir().join(instance_id)
    }
}

pub struct Agent {
    pub config: AgentConfig,
    pub client: Client,
    /// This host's image store and how blobs reach it.
    pub blobs: Arc<dyn BlobSource>,
    /// Notified when an instance was removed (from the store, or here as
    /// an orphan): its images' blobs may be unused.
    pub blobs_unused: Arc<tokio::sync::Notify>,
    /// One worker per instance, fed with the latest version of its resource.
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Instance>>>,
    /// Images by id (resolved by the server when the instance was created),
    /// so a launch need not ask the server again.
    pub image_cache: Mutex<HashMap<String, nimbus_api::Image>>,
    /// Host id ranges of this host's instances (containers and VMs).
    pub ids: idmap::IdAllocator,
    /// Networks of this host's instances.
    pub net: Arc<network::NetDriver>,
    /// The drivers that make instances real here, one per family of kinds.
    pub drivers: Drivers,
    /// Self-fencing state: whether this host is cut off from the servers.
    pub fence: fence::Fence,
    /// Where this host keeps volumes; set once it opened (at `run`).
    pub volume_backend: std::sync::OnceLock<Arc<dyn crate::volume::VolumeBackend>>,
}

/// Give the instance directories made by older versions (root:root 0755)
/// their private modes, as each directory's driver wants them (a
/// container's lets only its root's group through); one no driver
/// recognises is root's alone (0700).
fn secure_instance_dirs(instances: &std::path::Path, drivers: &Drivers) {
    let Ok(entries) = std::fs::read_dir(instances) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let result = match drivers.for_dir(&dir) {
            Some(driver) => driver.secure_dir(&dir),
            None => std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| error::AgentError::io(format!("restricting {}", dir.display()), e)),
        };
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %e, "could not restrict an instance directory");
        }
    }
}

impl Agent {
    /// `images` shares the server's image store when both run in one
    /// process (`nimbus up`); otherwise the agent opens its own.
    pub fn new(
        config: AgentConfig,
        client: Client,
        images: Option<Arc<ImageStore>>,
    ) -> anyhow::Result<Arc<Agent>> {
        let drivers = Drivers::builtin(&config.data_dir);
        Agent::with_drivers(config, client, images, drivers)
    }

    /// [`Agent::new`] with the given drivers instead of the built-in ones.
    pub fn with_drivers(
        config: AgentConfig,
        client: Client,
        images: Option<Arc<ImageStore>>,
        drivers: Drivers,
    ) -> anyhow::Result<Arc<Agent>> {
        let instances = config.instances_dir();
        std::fs::create_dir_all(&instances)?;
        // Searchable, not listable: containers' roots pass through to their
        // own instance directory, nobody but root learns which exist.
        std::fs::set_permissions(&instances, std::fs::Permissions::from_mode(0o711))?;
        secure_instance_dirs(&instances, &drivers);
        let blobs: Arc<dyn BlobSource> = match images {
            Some(shared) => Arc::new(SharedStore(shared)),
            None => Arc::new(RemoteBlobs::new(
                Arc::new(ImageStore::open(&config.images_dir, Limits::default())?),
                client.clone(),
                Duration::from_millis(config.blob_min_age_ms),
            )),
        };
        Ok(Arc::new(Agent {
            fence: fence::Fence::new(config.fence_after_ms.map(Duration::from_millis)),
            client,
            blobs,
            blobs_unused: Arc::new(tokio::sync::Notify::new()),
            workers: Mutex::new(HashMap::new()),
            image_cache: Mutex::new(HashMap::new()),
            ids: idmap::IdAllocator::new(config.id_base, config.id_range),
            net: Arc::new(
                network::NetDriver::new(&config.data_dir, config.reserved_tcp_ports.clone())
                    .with_tunnel(config.tunnel),
            ),
            drivers,
            config,
            volume_backend: std::sync::OnceLock::new(),
        }))
    }

    async fn host_status(&self) -> nimbus_api::HostStatus {
        let mut status = hostinfo::collect(&self.config);
        for driver in self.drivers.iter() {
            driver.describe_host(&mut status).await;
        }
        status
    }

    /// Register, then reconcile forever.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        self.register_until_ok().await;
        self.net.start(self.clone());
        let hb = self.clone();
        tokio::spawn(async move { hb.heartbeat_loop().await });
        tokio::spawn(fence::watchdog(self.clone()));
        tokio::spawn(self.clone().stats_loop());
        tokio::spawn(crate::blobs::run_collection(
            self.blobs.clone(),
            self.config.host_name.clone(),
            Duration::from_millis(self.config.blob_collect_ms.max(1_000)),
            self.blobs_unused.clone(),
        ));
        match crate::volume::qcow2::Qcow2Backend::open(&self.config.data_dir.join("volumes")) {
            Ok(b) => {
                let backend: Arc<dyn crate::volume::VolumeBackend> = Arc::new(b);
                let _ = self.volume_backend.set(backend.clone());
                let instances_dir = self.config.instances_dir();
                let volumes = crate::volume::controller::Volumes {
                    backend,
                    holders: Arc::new(crate::volume::holder::Holders(vec![
                        Box::new(crate::volume::holder::ContainerHolders {
                            instances_dir: instances_dir.clone(),
                        }),
                        Box::new(crate::volume::holder::VmHolders { instances_dir }),
                    ])),
                };
                tokio::spawn(crate::volume::controller::run(self.clone(), volumes));
            }
            Err(e) => tracing::error!(error = %e, "volumes are unavailable on this host"),
        }
        loop {
            if let Err(e) = self.clone().watch_and_reconcile().await {
                tracing::warn!(error = %e, "instance watch ended; re-listing");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn register_until_ok(&self) {
        let mut delay = Duration::from_millis(50);
        loop {
            let req = RegisterHost {
                name: self.config.host_name.clone(),
                labels: self.config.labels.clone(),
                spec: Default::default(),
                status: self.host_status().await,
            };
            match self
                .client
                .post::<_, nimbus_api::Host>("/v1/hosts", &req)
                .await
            {
                Ok(_) => {
                    tracing::info!(host = %self.config.host_name, "host registered");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registering the host failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The configured interval, or a third of the fencing lease if that is
    /// shorter, so one late heartbeat does not fence the host.
    fn heartbeat_every(&self) -> Duration {
        let every = self.config.heartbeat_ms;
        Duration::from_millis(match self.config.fence_after_ms {
            Some(lease) => every.min(lease / 3).max(50),
            None => every,
        })
    }

    /// How long one heartbeat may wait for its answer: the fencing lease
    /// (a later answer could not have kept the fence off anyway), else
    /// 10 s. A request stuck on a connection that died during a partition
    /// would otherwise wait out TCP's retransmission backoff, holding up the
    /// heartbeat that lifts the fence once the network is back.
    fn heartbeat_deadline(&self) -> Duration {
        Duration::from_millis(self.config.fence_after_ms.unwrap_or(10_000))
    }

    async fn heartbeat_loop(&self) {
        let path = format!("/v1/hosts/{}/status", self.config.host_name);
        loop {
            tokio::time::sleep(self.heartbeat_every()).await;
            let mut status = self.host_status().await;
            status.instances = self.workers.lock().map(|w| w.len() as u32).unwrap_or(0);
            let sent = tokio::time::timeout(
                self.heartbeat_deadline(),
                self.client.post::<_, nimbus_api::Host>(&path, &status),
            )
            .await;
            let Ok(sent) = sent else {
                tracing::warn!(
                    deadline_ms = self.heartbeat_deadline().as_millis() as u64,
                    "heartbeat unanswered within its deadline; sending the next"
                );
                continue;
            };
            if sent.is_ok() {
                self.fence.heartbeat_accepted();
            }
            if let Err(e) = sent {
                tracing::warn!(error = %e, "heartbeat failed");
                if e.code() == Some(nimbus_api::ErrorCode::NotFound) {
                    self.register_until_ok().await;
                }
            }
        }
    }

    /// List the instances bound here, hand each to its worker, then follow
    /// the watch from the list's revision. Also adopt or clean up instance
    /// directories the store no longer knows.
    async fn watch_and_reconcile(self: Arc<Self>) -> Result<(), ClientError> {
        let host = &self.config.host_name;
        let list: ResourceList<Instance> = self
            .client
            .list_all(&format!("/v1/instances?host={host}"))
            .await?;
        let known: std::collections::HashSet<String> =
            list.items.iter().map(|i| i.metadata.id.clone()).collect();
        self.clean_orphans(&known).await;
        for i in list.items {
            self.dispatch(i);
        }
        let mut events = Box::pin(
            self.client
                .watch_lines::<WatchEvent<Instance>>(&format!(
                    "/v1/instances?host={host}&watch=true&revision={}",
                    list.revision
                ))
                .await?,
        );
        let mut resync = tokio::time::interval(Duration::from_secs(15));
        resync.tick().await;
        loop {
            tokio::select! {
                ev = events.next() => {
                    let Some(ev) = ev else { return Ok(()) };
                    let ev = ev?;
                    match ev.event_type {
                        WatchEventType::Added | WatchEventType::Modified => {
                            if let Some(i) = ev.object { self.dispatch(i); }
                        }
                        WatchEventType::Deleted => {
                            if let Some(i) = ev.object { self.forget(&i.metadata.id); }
                        }
                        WatchEventType::Error => return Ok(()),
                    }
                }
                _ = resync.tick() => return Ok(()),
            }
        }
    }

    /// Instance directories with no instance in the store: removed while
    /// the agent was down. Stop their shims and remove them.
    async fn clean_orphans(&self, known: &std::collections::HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(self.config.instances_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            if known.contains(&id)
                || self
                    .workers
                    .lock()
                    .map(|w| w.contains_key(&id))
                    .unwrap_or(false)
            {
                continue;
            }
            let dir = entry.path();
            tracing::info!(instance_id = %id, "removing an instance that no longer exists");
            let driver = self.drivers.for_dir(&dir).cloned();
            if let Err(e) = reconcile::destroy_local(self, driver.as_deref(), &dir, 5_000).await {
                tracing::warn!(instance_id = %id, error = %e, "could not clean up orphaned instance");
            }
        }
        // Ports whose instance directory is already gone (killed mid-delete).
        for id in self.net.recorded_ports() {
            let busy = self
                .workers
                .lock()
                .map(|w| w.contains_key(&id))
                .unwrap_or(false);
            if !known.contains(&id) && !busy && !self.instance_dir(&id).exists() {
                tracing::info!(instance_id = %id, "removing the port of an instance that no longer exists");
                self.net.detach(&id).await;
            }
        }
    }

    fn dispatch(self: &Arc<Self>, instance: Instance) {
        tracing::debug!(instance = %instance.metadata.name, phase = instance.status.phase.as_str(), "event");
        self.net.observe_instance(&instance);
        if instance.status.host.as_deref() != Some(self.config.host_name.as_str()) {
            return;
        }
        let id = instance.metadata.id.clone();
        if instance.metadata.deletion_requested_at.is_some()
            && instance.spec.stop_grace_ms == Some(0)
        {
            self.kill_now(&id);
        }
        let Ok(mut workers) = self.workers.lock() else {
            return;
        };
        if let Some(tx) = workers.get(&id) {
            if tx.send(instance.clone()).is_ok() {
                return;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(instance);
        workers.insert(id.clone(), tx);
        let agent = self.clone();
        tokio::spawn(async move {
            reconcile::worker(agent.clone(), rx).await;
            if let Ok(mut w) = agent.workers.lock() {
                w.remove(&id);
            }
        });
    }

    /// `rm --force` may come while the instance's worker waits out a
    /// graceful stop (an earlier `rm`): the worker sees the new spec only
    /// afterwards, so ask the shim directly; a shim already stopping
    /// brings its kill forward, one that is gone is left alone.
    fn kill_now(&self, id: &str) {
        let dir = self.instance_dir(id);
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = crate::driver::stop_shim(&dir, 0).await {
                tracing::debug!(instance_id = %id, error = %e, "forced stop");
            }
        });
    }

    /// The instance is gone from the store (its worker cleaned up here
    /// before reporting it finalized): its images' blobs may be unused now.
    fn forget(&self, id: &str) {
        self.net.forget_instance(id);
        if let Ok(mut w) = self.workers.lock() {
            w.remove(id);
        }
        self.blobs_unused.notify_one();
    }

    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.config.instance_dir(id)
    }

    /// Whether `dir` looks like an instance directory made by one of this
    /// agent's drivers.
    pub fn is_instance_dir(&self, dir: &Path) -> bool {
        self.drivers.for_dir(dir).is_some()
    }
}
