//! Making a held volume's data consistent for the length of a snapshot.
//!
//! A container's volume is an ext4 mounted on this host (`mount.rs`):
//! `FIFREEZE` on its mount point flushes the filesystem (through the loop
//! device and the FUSE export into qemu-storage-daemon) and blocks new
//! writes until `FITHAW`. The thaw runs when the guard drops, so it
//! happens on every path, errors and panics included. A VM's filesystem
//! is frozen by its guest agent, when one answers (`guest_agent.rs`).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nimbus_api::SnapshotConsistency;

use super::holder::Quiesce;
use super::{guest_agent, VolumeError};

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// Holds the volume's data still; thaws when dropped.
#[must_use = "the filesystem thaws when this guard drops"]
pub enum Quiet {
    Nothing,
    HostFs {
        dir: std::fs::File,
        shown: PathBuf,
    },
    /// Thawed by the guest agent when dropped.
    GuestAgent {
        _frozen: guest_agent::Frozen,
    },
}

impl Quiet {
    /// What a snapshot taken under this guard holds: a held volume with
    /// nothing frozen is as after a power cut.
    pub fn consistency(&self) -> SnapshotConsistency {
        match self {
            Quiet::Nothing => SnapshotConsistency::CrashConsistent,
            Quiet::HostFs { .. } => SnapshotConsistency::HostFrozen,
            Quiet::GuestAgent { .. } => SnapshotConsistency::GuestFrozen,
        }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        if let Quiet::HostFs { dir, shown } = self {
            let mut unused: libc::c_int = 0;
            // SAFETY: `dir` is an open descriptor of the frozen mount's
            // root; FITHAW ignores its argument, which points at a live int.
            if let Err(e) = unsafe { fithaw(dir.as_raw_fd(), &mut unused) } {
                tracing::error!(mountpoint = %shown.display(), error = %e, "thawing a volume's filesystem failed; run `fsfreeze -u` on it");
            }
        }
    }
}

/// Freeze what `how` names. A host filesystem that cannot be frozen is an
/// error (the snapshot is not taken); a guest agent that does not answer
/// leaves the snapshot crash-consistent, as a power cut would.
pub fn quiesce(how: &Quiesce, volume_id: &str) -> Result<Quiet, VolumeError> {
    match how {
        Quiesce::None => Ok(Quiet::Nothing),
        Quiesce::HostFs { mountpoint, device } => freeze_host_fs(mountpoint, device, volume_id),
        Quiesce::GuestAgent { socket } => Ok(match guest_agent::freeze(socket) {
            Ok(frozen) => Quiet::GuestAgent { _frozen: frozen },
            Err(e) => {
                tracing::info!(volume_id, error = %e, "no guest agent froze the filesystems; the snapshot is crash-consistent");
                Quiet::Nothing
            }
        }),
    }
}

fn freeze_host_fs(mountpoint: &Path, device: &Path, volume_id: &str) -> Result<Quiet, VolumeError> {
    let io = |what: String, source| VolumeError::Io {
        what,
        volume_id: volume_id.to_string(),
        source,
    };
    let dir = std::fs::File::open(mountpoint)
        .map_err(|e| io(format!("opening {}", mountpoint.display()), e))?;
    // Freeze only the volume's own filesystem: were the mount point not
    // mounted (a detach racing), FIFREEZE would freeze the host's.
    let mounted = dir
        .metadata()
        .map_err(|e| io(format!("reading {}", mountpoint.display()), e))?
        .dev();
    let backing = std::fs::metadata(device)
        .map_err(|e| io(format!("reading {}", device.display()), e))?
        .rdev();
    if mounted != backing {
        return Err(io(
            format!(
                "{} is not the volume's filesystem on {} (detached meanwhile?); retry the snapshot",
                mountpoint.display(),
                device.display()
            ),
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    let mut unused: libc::c_int = 0;
    // SAFETY: `dir` is an open descriptor of the mount's root; FIFREEZE
    // ignores its argument, which points at a live int.
    unsafe { fifreeze(dir.as_raw_fd(), &mut unused) }.map_err(|e| {
        io(
            format!("freezing the filesystem at {}", mountpoint.display()),
            e.into(),
        )
    })?;
    Ok(Quiet::HostFs {
        dir,
        shown: mountpoint.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_the_volume_is_never_frozen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The temp dir is on the host's filesystem, not on /dev/null.
        let how = Quiesce::HostFs {
            mountpoint: tmp.path().to_path_buf(),
            device: PathBuf::from("/dev/null"),
        };
        let e = quiesce(&how, "v1").err().expect("refused");
        assert!(e.to_string().contains("not the volume's filesystem"), "{e}");
        let nothing = quiesce(&Quiesce::None, "v1").expect("nothing");
        assert!(matches!(nothing, Quiet::Nothing));
        assert_eq!(nothing.consistency(), SnapshotConsistency::CrashConsistent);
        // A guest agent that is not there: still a snapshot, marked so.
        let silent = Quiesce::GuestAgent {
            socket: tmp.path().join("qga.sock"),
        };
        let unfrozen = quiesce(&silent, "v1").expect("crash-consistent");
        assert_eq!(unfrozen.consistency(), SnapshotConsistency::CrashConsistent);
    }
}
