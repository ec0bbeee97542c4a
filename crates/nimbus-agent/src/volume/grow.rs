//! Growing a volume, also while an instance holds it open.
//!
//! A detached volume grows with the backend's own tool. A held one grows
//! through its holder (`block_resize` on the holder's QMP monitor): a VM's
//! QEMU then tells the guest its disk is larger (growing the guest's
//! filesystem is the guest's job); a container's qemu-storage-daemon
//! serves a larger FUSE file, so the loop device above it is told to read
//! its capacity again (`LOOP_SET_CAPACITY`) and the mounted ext4 is grown
//! online (`resize2fs`), and `df` in the container shows the new size.

use std::path::Path;
use std::time::{Duration, Instant};

use super::holder::{HolderLookup, Quiesce};
use super::{mount, VolumeBackend, VolumeError};

/// How long the FUSE export may take to show its new size to the loop
/// device (the kernel caches the file's attributes for a second).
const CAPACITY_TIMEOUT: Duration = Duration::from_secs(10);

nix::ioctl_none!(loop_set_capacity, 0x4C, 0x07);

/// Grow volume `id` to `size_bytes`, through whoever holds it; a
/// container's mounted filesystem with it.
pub fn grow(
    backend: &dyn VolumeBackend,
    holders: &dyn HolderLookup,
    id: &str,
    size_bytes: u64,
) -> Result<(), VolumeError> {
    let holder = holders.holder(id);
    backend.resize(id, size_bytes, holder.as_ref())?;
    if let Some(Quiesce::HostFs { device, .. }) = holder.as_ref().map(|h| &h.quiesce) {
        grow_mounted_fs(id, device, size_bytes).map_err(|detail| VolumeError::FsGrow {
            volume_id: id.to_string(),
            size_bytes,
            device: device.display().to_string(),
            detail,
        })?;
    }
    Ok(())
}

/// The loop device `device` re-reads its backing file's size until it is
/// `size_bytes`, then the ext4 mounted from it grows to fill it.
fn grow_mounted_fs(id: &str, device: &Path, size_bytes: u64) -> Result<(), String> {
    let file = std::fs::File::open(device).map_err(|e| format!("opening: {e}"))?;
    let deadline = Instant::now() + CAPACITY_TIMEOUT;
    loop {
        // SAFETY: LOOP_SET_CAPACITY takes no argument; `file` is an open
        // loop device that outlives the call.
        unsafe { loop_set_capacity(std::os::fd::AsRawFd::as_raw_fd(&file)) }
            .map_err(|e| format!("LOOP_SET_CAPACITY: {e}"))?;
        let now = device_bytes(device)?;
        if now >= size_bytes {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the loop device still has {now} bytes after {}s",
                CAPACITY_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    mount::grow_ext4(Path::new(id), device).map_err(|e| e.to_string())
}

/// The size of block device `device` (`/sys/block/<name>/size`, in
/// 512-byte sectors).
fn device_bytes(device: &Path) -> Result<u64, String> {
    let name = device
        .file_name()
        .ok_or_else(|| "no device name".to_string())?;
    let sys = Path::new("/sys/block").join(name).join("size");
    let text = std::fs::read_to_string(&sys).map_err(|e| format!("reading {}: {e}", sys.display()))?;
    text.trim()
        .parse::<u64>()
        .map(|sectors| sectors * 512)
        .map_err(|e| format!("{}: {e}", sys.display()))
}
