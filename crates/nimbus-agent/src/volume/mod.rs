//! Block volumes on this host: the backend trait that keeps a volume's
//! data (`qcow2.rs`, the default), the pure plan that says what to change
//! to make the data match the spec (`plan.rs`), and the controller that
//! watches the volumes bound to this host and converges them
//! (`controller.rs`). A volume held open by a process (a container's
//! qemu-storage-daemon, a VM's QEMU) is snapshotted through that process
//! (`holder.rs`), its filesystem frozen meanwhile (`quiesce.rs`), and
//! grown through it too, a container's ext4 online (`grow.rs`). A running
//! container gets and loses volumes through `live.rs`. The
//! server never touches the data; this module never writes the store, it
//! reports through the API.

pub mod attach;
pub mod controller;
pub mod grow;
pub mod guest_agent;
pub mod holder;
pub mod live;
pub mod mount;
pub mod plan;
pub mod qcow2;
pub mod quiesce;

use std::path::PathBuf;

/// What failed while changing a volume's data, with the volume and the
/// value; shown to the user as the volume's `status.message`.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{what} for volume {volume_id}: {source}")]
    Io {
        what: String,
        volume_id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` for volume {volume_id} failed: {stderr}")]
    Tool {
        command: String,
        volume_id: String,
        stderr: String,
    },
    #[error("reading what `qemu-img info` says about volume {volume_id}: {detail}")]
    Info { volume_id: String, detail: String },
    #[error("`{command}` on {socket} for volume {volume_id} (held open by a running instance) failed: {detail}; the snapshot is retried on the next pass, or stop the instance")]
    Qmp {
        volume_id: String,
        command: String,
        socket: String,
        detail: String,
    },
    #[error("volume {volume_id} was grown to {size_bytes} bytes but its filesystem on {device} was not: {detail}; the next pass tries again, or detach and attach the volume")]
    FsGrow {
        volume_id: String,
        size_bytes: u64,
        device: String,
        detail: String,
    },
    #[error("source volume {source_name:?} of this clone is not on this host (deleted, or on another host); create the volume from a snapshot of a volume that exists")]
    NoSource { source_name: String },
}

/// The QEMU block node name of a volume in whichever process holds it
/// (a container's qemu-storage-daemon, a VM's QEMU): `vol-` and the
/// volume id's first 27 characters, because QEMU refuses node names of
/// 32 characters or more (an id is 32 hex digits; 108 bits still tell
/// volumes apart).
pub fn node_name(volume_id: &str) -> String {
    let short: String = volume_id.chars().take(27).collect();
    format!("vol-{short}")
}

/// What the backend found for one volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub size_bytes: u64,
    /// Bytes the host's storage holds for it.
    pub allocated_bytes: u64,
    pub snapshots: Vec<String>,
}

/// How a consumer opens the volume: QEMU's block driver name and the
/// driver's options for `blockdev-add` (for qcow2, a `file` child with a
/// path; for Ceph, `rbd` with a pool and image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    pub driver: &'static str,
    /// The file for local backends; `None` for network ones.
    pub path: Option<PathBuf>,
    /// `blockdev-add` options as JSON.
    pub blockdev: serde_json::Value,
}

/// Keeps volumes' data. Methods block (they run tools or network I/O):
/// callers run them on a blocking thread. Volumes are named by their id,
/// which never changes, so a re-created name never meets old data.
/// Every method is idempotent where the plan may repeat it after a crash:
/// `create` and `clone_from_snapshot` make the volume appear whole or not
/// at all; `delete` of a missing volume succeeds.
pub trait VolumeBackend: Send + Sync {
    /// Short name shown in status (`qcow2`, `rbd`).
    fn name(&self) -> &'static str;
    /// What exists for the volume, `None` if nothing does.
    fn inspect(&self, volume_id: &str) -> Result<Option<Observed>, VolumeError>;
    /// An empty volume of `size_bytes`, allocated lazily.
    fn create(&self, volume_id: &str, size_bytes: u64) -> Result<(), VolumeError>;
    /// A new, independent volume holding the data `source_id` had at
    /// `snapshot`, grown to `size_bytes` if that is larger.
    fn clone_from_snapshot(
        &self,
        volume_id: &str,
        source_id: &str,
        snapshot: &str,
        size_bytes: u64,
    ) -> Result<(), VolumeError>;
    /// Grow to `size_bytes` (never shrinks); through `holder` when a
    /// process holds the volume open (it then sees the new size at once).
    fn resize(
        &self,
        volume_id: &str,
        size_bytes: u64,
        holder: Option<&holder::Holder>,
    ) -> Result<(), VolumeError>;
    /// Take `snapshot`; through `holder` when a process holds the volume
    /// open (the caller has quiesced it).
    fn snapshot(
        &self,
        volume_id: &str,
        snapshot: &str,
        holder: Option<&holder::Holder>,
    ) -> Result<(), VolumeError>;
    fn delete_snapshot(
        &self,
        volume_id: &str,
        snapshot: &str,
        holder: Option<&holder::Holder>,
    ) -> Result<(), VolumeError>;
    /// Remove the volume and its snapshots.
    fn delete(&self, volume_id: &str) -> Result<(), VolumeError>;
    /// How QEMU (or a mount helper) opens the volume.
    fn attach_info(&self, volume_id: &str) -> AttachInfo;
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_names_fit_qemu_and_keep_the_id() {
        let n = super::node_name("0123456789abcdef0123456789abcdef");
        assert_eq!(n, "vol-0123456789abcdef0123456789a");
        assert!(n.len() < 32);
        assert_eq!(super::node_name("abc"), "vol-abc");
    }
}
