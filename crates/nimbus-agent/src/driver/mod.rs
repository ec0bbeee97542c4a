//! One trait over the kinds of instance a host runs.
//!
//! A [`Driver`] makes one family of instances real on this host: it
//! prepares the instance directory (image, disks or rootfs spec), attaches
//! the instance to its networks, starts the per-instance shim, stops it and
//! cleans up after it. The reconcile worker (`agent/reconcile.rs`) decides
//! *when* each step runs and never *how*: it finds the driver for an
//! instance, or for a directory on disk, through [`Drivers`], and holds no
//! knowledge of containers or VMs.
//!
//! What a driver needs from the agent (image layers and blobs, id ranges,
//! network attachments, secrets, the shim executable) comes through
//! [`DriverContext`], so a driver never names the agent or its worker.
//!
//! Adding a driver: a folder with a type implementing [`Driver`], and one
//! line in [`Drivers::builtin`] (`registry.rs`, the one file here that
//! names the drivers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_api::{HostStatus, Image, Instance, InstanceKind};
use nimbus_image::ImageStore;

use crate::agent::error::{blocking, AgentError};
use crate::agent::network::{Attachment, VmAttachment};
use crate::container::IdMap;
use crate::shim::{ShimClient, ShimState};

mod registry;
pub use registry::{Drivers, SHIM_SUPERVISORS};

/// The agent's services a driver may use while preparing an instance.
#[async_trait]
pub trait DriverContext: Send + Sync {
    /// Where image layers and disk blobs live.
    fn images(&self) -> Arc<ImageStore>;
    /// The shim executable, run as `<exe> shim <dir>`.
    fn shim_exe(&self) -> PathBuf;
    /// Size of a container's writable layer when neither it nor its
    /// project asks for one.
    fn default_container_disk_bytes(&self) -> u64 {
        crate::agent::DEFAULT_CONTAINER_DISK_BYTES
    }
    /// An image of `project` by name, from the server.
    async fn fetch_image(&self, project: &str, name: &str) -> Result<Image, AgentError>;
    /// The opened values of the instance's secret environment.
    async fn secret_env(&self, instance: &Instance)
        -> Result<BTreeMap<String, String>, AgentError>;
    /// The unpacked layer directories of a container image, lowest first,
    /// its blobs fetched first where this host lacks them.
    async fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, AgentError>;
    /// Brings every blob `image` needs (disk, kernel, initrd, layers) into
    /// [`DriverContext::images`] where this host lacks them.
    async fn ensure_blobs(&self, image: &Image) -> Result<(), AgentError>;
    /// The host id range of the instance in `dir`: the one it recorded, or
    /// a free one (taken until the instance is removed).
    async fn allocate_ids(&self, dir: &Path) -> Result<IdMap, AgentError>;
    /// The file holding volume `name` of `project` on this host, checked
    /// to be available here.
    async fn volume_file(&self, project: &str, name: &str) -> Result<PathBuf, AgentError> {
        Err(AgentError::VolumeNotReady {
            name: format!("{project}/{name}"),
            detail: "this agent cannot look volumes up".into(),
        })
    }
    /// Volume `name` of `project` as QEMU opens it on this host: its id and
    /// the backend's [`AttachInfo`](crate::volume::AttachInfo), checked to
    /// be available here.
    async fn volume_attach_info(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(String, crate::volume::AttachInfo), AgentError> {
        Err(AgentError::VolumeNotReady {
            name: format!("{project}/{name}"),
            detail: "this agent cannot look volumes up".into(),
        })
    }
    /// Plug a container into its networks (`None`: it has none).
    async fn attach_container_network(
        &self,
        instance: &Instance,
        dir: &Path,
    ) -> Result<Option<Attachment>, AgentError>;
    /// Make the tap of a VM on its network (`None`: it has none).
    async fn attach_vm_network(
        &self,
        instance: &Instance,
    ) -> Result<Option<VmAttachment>, AgentError>;
}

/// One instance being started: what [`Driver::prepare`] and
/// [`Driver::attach_networks`] work from.
#[derive(Clone, Copy)]
pub struct Launch<'a> {
    pub instance: &'a Instance,
    /// The instance's image, resolved by the server at create.
    pub image: &'a Image,
    /// The instance directory (may not exist yet).
    pub dir: &'a Path,
    /// Restarts already made by an earlier shim that was lost.
    pub restarts_before: u32,
}

/// The life cycle of one kind of instance on this host.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Short name for logs (`container`, `vm`).
    fn name(&self) -> &'static str;

    /// Whether this driver runs instances of `kind`.
    fn serves(&self, kind: InstanceKind) -> bool;

    /// Whether its workload is an emulator in the host's network namespace
    /// (statistics then read vCPU threads and the instance's tap) rather
    /// than processes in namespaces of their own.
    fn runs_an_emulator(&self) -> bool {
        false
    }

    /// Whether `dir` is an instance directory this driver prepared.
    fn owns_dir(&self, dir: &Path) -> bool;

    /// Give a directory of this driver made by an older agent its private
    /// mode. Blocking.
    fn secure_dir(&self, dir: &Path) -> Result<(), AgentError>;

    /// Add what this driver knows about the host (e.g. its VM accelerator)
    /// to the status the agent registers and heartbeats.
    async fn describe_host(&self, _status: &mut HostStatus) {}

    /// Write everything the shim needs into the instance directory: id
    /// range, rootfs spec or disks, the shim's spec file.
    async fn prepare(&self, cx: &dyn DriverContext, launch: Launch<'_>) -> Result<(), AgentError>;

    /// Attach the instance to its networks and record the attachment where
    /// the shim reads it. Runs after [`Driver::prepare`].
    async fn attach_networks(
        &self,
        cx: &dyn DriverContext,
        launch: Launch<'_>,
    ) -> Result<(), AgentError>;

    /// Bring the volumes of the running instance in `dir` to what its spec
    /// names, where the kind can change them while it runs (a VM's
    /// hot-plugged disks); what each volume's attachment is now, or `None`
    /// when this driver changes nothing while it runs.
    async fn sync_volumes(
        &self,
        _cx: &dyn DriverContext,
        _instance: &Instance,
        _dir: &Path,
    ) -> Option<Vec<nimbus_api::AttachedVolume>> {
        None
    }

    /// Spawn the shim on the prepared directory; its first state (running,
    /// or already exited or failed).
    async fn start(&self, cx: &dyn DriverContext, dir: &Path) -> Result<ShimState, AgentError> {
        spawn_shim(cx.shim_exe(), dir).await
    }

    /// Stop the shim in `dir` (SIGTERM, then SIGKILL after `grace_ms`); its
    /// final state, or `None` when no shim answers there.
    async fn stop(&self, dir: &Path, grace_ms: u64) -> Result<Option<ShimState>, AgentError> {
        stop_shim(dir, grace_ms).await
    }

    /// Remove what a dead shim left running or mounted (after deletion or
    /// when its shim died). Keeps the directory and its records.
    async fn clean_up(&self, dir: &Path) -> Result<(), AgentError> {
        clean_up_after_shim(dir).await
    }
}

/// Runs the shim on `dir` and waits for its first reported state.
pub async fn spawn_shim(exe: PathBuf, dir: &Path) -> Result<ShimState, AgentError> {
    let dir = dir.to_path_buf();
    blocking("spawning the shim", move || {
        crate::shim::spawn_shim(&exe, &dir)
    })
    .await
}

/// Asks the shim in `dir` to stop; `None` when none answers.
pub async fn stop_shim(dir: &Path, grace_ms: u64) -> Result<Option<ShimState>, AgentError> {
    let Ok(client) = ShimClient::connect(dir) else {
        return Ok(None);
    };
    Ok(Some(client.stop_async(grace_ms).await?))
}

/// Kills (by cgroup) and unmounts what the shim of `dir` left behind, for a
/// driver with nothing of its own to remove, and for a half-made directory
/// no driver claims. The instance id is the directory's name.
pub async fn clean_up_after_shim(dir: &Path) -> Result<(), AgentError> {
    let dir = dir.to_path_buf();
    blocking("cleaning up after the shim", move || {
        let id = crate::shim::instance_id_from_dir(&dir)?;
        crate::shim::clean_up_after_shim(
            &dir,
            &id,
            || match crate::host::mounts::unmount_all_under(&dir) {
                Ok(()) => Vec::new(),
                Err(e) => vec![e.to_string()],
            },
        )
    })
    .await
}
