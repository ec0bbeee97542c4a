//! Growing a volume, also while an instance holds it open.
//!
//! A detached volume grows with the backend's own tool. A held one grows
//! through its holder (`block_resize` on the holder's QMP monitor): a VM's
//! QEMU then tells the guest its disk is larger (growing the guest's
//! filesystem is the guest's job); a container's qemu-storage-daemon
//! serves a larger FUSE file, so the loop device above it is told to read
//! its capacity again (`LOOP_SET_CAPACITY`) and the mounted ext4 is grown
//! online (`resize2fs`), and `df` in the container shows the new size.
//! The kernel grows a mounted ext4 only for a process with
//! `CAP_SYS_RESOURCE`; an agent without it (as on the build machines)
//! says the filesystem grows at its next mount (`mount.rs` grows it
//! offline before mounting), and the volume is still grown.

use std::path::Path;
use std::time::{Duration, Instant};

use super::holder::{HolderLookup, Quiesce};
use super::{mount, VolumeBackend, VolumeError};

/// How long the FUSE export may take to show its new size to the loop
/// device (the kernel caches the file's attributes for a second).
const CAPACITY_TIMEOUT: Duration = Duration::from_secs(10);

nix::ioctl_none!(loop_set_capacity, 0x4C, 0x07);

/// What the user should know after a grow that went through: the
/// container's filesystem grows only at its next mount, because this host
/// refuses online ext4 growth.
pub const GROWS_AT_NEXT_MOUNT: &str = "the volume grew, but the filesystem of the container holding it grows when it is next mounted: this host refuses to grow a mounted ext4 (the agent lacks CAP_SYS_RESOURCE); detach and attach the volume, or restart the instance";

/// Grow volume `id` to `size_bytes`, through whoever holds it; a
/// container's mounted filesystem with it where the host allows
/// ([`pending_fs_growth`] says when it does not).
pub fn grow(
    backend: &dyn VolumeBackend,
    holders: &dyn HolderLookup,
    id: &str,
    size_bytes: u64,
) -> Result<(), VolumeError> {
    let holder = holders.holder(id);
    backend.resize(id, size_bytes, holder.as_ref())?;
    let Some(Quiesce::HostFs { device, .. }) = holder.as_ref().map(|h| &h.quiesce) else {
        return Ok(());
    };
    let fs_error = |detail: String| VolumeError::FsGrow {
        volume_id: id.to_string(),
        size_bytes,
        device: device.display().to_string(),
        detail,
    };
    refresh_capacity(device, size_bytes).map_err(fs_error)?;
    if !may_grow_mounted_ext4() {
        return Ok(());
    }
    mount::grow_ext4_online(Path::new(id), device).map_err(|e| fs_error(e.to_string()))
}

/// [`GROWS_AT_NEXT_MOUNT`] while a container holds volume `id` with an
/// ext4 smaller than its device (grown, but not online). Asked on every
/// pass, so the note stays exactly as long as it holds.
pub fn pending_fs_growth(holders: &dyn HolderLookup, id: &str) -> Option<String> {
    let Quiesce::HostFs { device, .. } = holders.holder(id)?.quiesce else {
        return None;
    };
    let fs = mount::ext4_bytes(&device).ok()?;
    let whole = mount::device_bytes(&device).ok()?;
    (fs < whole).then(|| GROWS_AT_NEXT_MOUNT.to_string())
}

/// Whether this process has `CAP_SYS_RESOURCE` (bit 24 of `CapEff`),
/// which the kernel asks of an online ext4 resize.
fn may_grow_mounted_ext4() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The loop device `device` re-reads its backing file's size until it is
/// `size_bytes`.
fn refresh_capacity(device: &Path, size_bytes: u64) -> Result<(), String> {
    let file = std::fs::File::open(device).map_err(|e| format!("opening: {e}"))?;
    let deadline = Instant::now() + CAPACITY_TIMEOUT;
    loop {
        // SAFETY: LOOP_SET_CAPACITY takes no argument; `file` is an open
        // loop device that outlives the call.
        unsafe { loop_set_capacity(std::os::fd::AsRawFd::as_raw_fd(&file)) }
            .map_err(|e| format!("LOOP_SET_CAPACITY: {e}"))?;
        let now = mount::device_bytes(device).map_err(|e| format!("reading its size: {e}"))?;
        if now >= size_bytes {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the loop device still has {now} bytes after {}s",
                CAPACITY_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
