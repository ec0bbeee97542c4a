//! Who holds a volume open, so its snapshots go through that process.
//!
//! `qemu-img snapshot` cannot open a qcow2 that a running QEMU process
//! holds (the image's write lock), and must not (the process caches the
//! image's metadata). A held volume is snapshotted through the holder's
//! QMP monitor instead (`blockdev-snapshot-internal-sync`), on the block
//! node named [`super::node_name`]. For containers the holder is the
//! attachment's qemu-storage-daemon (`mount.rs`), whose monitor listens on
//! `qmp.sock` in the attachment's work directory; for VMs it is the VM's
//! QEMU, which plugs in through another [`HolderLookup`].

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::VolumeError;
use crate::vm::qmp::{Qmp, COMMAND_TIMEOUT};

/// How the data of a held volume is made consistent before a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quiesce {
    /// Nothing to freeze: the snapshot is crash-consistent.
    None,
    /// The ext4 on `device` mounted at `mountpoint` on this host (a
    /// container's volume): `FIFREEZE` it, thaw after.
    HostFs {
        mountpoint: PathBuf,
        device: PathBuf,
    },
    /// A VM's guest agent socket: `guest-fsfreeze-freeze` if it answers in
    /// time, else the snapshot is crash-consistent.
    GuestAgent { socket: PathBuf },
}

/// The process holding a volume open and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's QMP monitor (a Unix socket).
    pub qmp_socket: PathBuf,
    /// The block node of the volume's qcow2 in that process.
    pub node_name: String,
    pub quiesce: Quiesce,
}

/// Says who holds a volume open on this host; `None` when nobody does (the
/// volume is detached and `qemu-img` may open it).
pub trait HolderLookup: Send + Sync {
    fn holder(&self, volume_id: &str) -> Option<Holder>;
}

/// The first lookup that knows a holder wins (containers, then VMs).
pub struct Holders(pub Vec<Box<dyn HolderLookup>>);

impl HolderLookup for Holders {
    fn holder(&self, volume_id: &str) -> Option<Holder> {
        self.0.iter().find_map(|l| l.holder(volume_id))
    }
}

/// Nobody holds anything: every volume goes through `qemu-img`.
pub struct NoHolders;

impl HolderLookup for NoHolders {
    fn holder(&self, _: &str) -> Option<Holder> {
        None
    }
}

/// Containers' attachments: `<instances>/<id>/volumes/<name>/work`, each
/// naming its node (`node`), monitor (`qmp.sock`), loop device (`loop`)
/// and mount point (`mountpoint`) in files (`mount.rs`). A host holds few
/// instances, so a scan per snapshot is cheap, and the files are the
/// truth: nothing to keep in step after a crash.
pub struct ContainerHolders {
    pub instances_dir: PathBuf,
}

impl HolderLookup for ContainerHolders {
    fn holder(&self, volume_id: &str) -> Option<Holder> {
        let wanted = super::node_name(volume_id);
        let instances = std::fs::read_dir(&self.instances_dir).ok()?;
        instances
            .flatten()
            .filter_map(|i| std::fs::read_dir(i.path().join("volumes")).ok())
            .flat_map(|vols| vols.flatten())
            .map(|v| v.path().join("work"))
            .find_map(|work| super::mount::holder_in(&work, &wanted))
    }
}

/// A VM's QEMU holding the volume as a disk (`vm::disks::holder`: its
/// block monitor and node `vol-...`). Its filesystems are frozen through
/// the guest agent when the VM's directory has a guest-agent socket
/// (`qga.sock`); otherwise the snapshot is crash-consistent.
pub struct VmHolders {
    pub instances_dir: PathBuf,
}

impl HolderLookup for VmHolders {
    fn holder(&self, volume_id: &str) -> Option<Holder> {
        let disk = crate::vm::volume_disk_holder(&self.instances_dir, volume_id)?;
        let agent = crate::vm::spec::VmPaths::new(&disk.instance_dir).guest_agent;
        let quiesce = if agent.exists() {
            Quiesce::GuestAgent { socket: agent }
        } else {
            Quiesce::None
        };
        Some(Holder {
            qmp_socket: disk.qmp_socket,
            node_name: disk.node_name,
            quiesce,
        })
    }
}

/// Runs `command` on the holder's QMP monitor from a blocking thread.
/// The socket is reached through `/proc/self/fd/<dir>/qmp.sock`, so a deep
/// work directory never meets the 108-byte limit of Unix socket paths.
pub fn qmp_execute(
    holder: &Holder,
    volume_id: &str,
    command: &str,
    arguments: Value,
) -> Result<Value, VolumeError> {
    let qmp_error = |detail: String| VolumeError::Qmp {
        volume_id: volume_id.to_string(),
        command: command.to_string(),
        socket: holder.qmp_socket.display().to_string(),
        detail,
    };
    let dir = holder.qmp_socket.parent().unwrap_or(Path::new("/"));
    let file = holder
        .qmp_socket
        .file_name()
        .ok_or_else(|| qmp_error("the socket path has no file name".into()))?;
    let dir = std::fs::File::open(dir).map_err(|e| qmp_error(e.to_string()))?;
    let short = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(file);
    let shown = holder.qmp_socket.display().to_string();
    let exchange = async move {
        let stream = tokio::net::UnixStream::connect(&short)
            .await
            .map_err(|e| e.to_string())?;
        let mut qmp = Qmp::over(stream, &shown, COMMAND_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        qmp.execute::<Value>(command, Some(arguments))
            .await
            .map_err(|e| e.to_string())
    };
    let result = block_on(exchange);
    drop(dir);
    result.map_err(qmp_error)
}

/// Drives `f` to completion from a blocking thread: on the agent's runtime
/// when there is one (a `spawn_blocking` thread), else on a small one.
fn block_on<T, F: std::future::Future<Output = Result<T, String>>>(f: F) -> Result<T, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a tokio runtime: {e}"))?
            .block_on(f),
    }
}
