//! An instance's volumes on this host: each is mounted (`mount.rs`) under
//! the instance directory, `<dir>/volumes/<name>/{work,mnt}`, and the
//! container bind-mounts `mnt`. Everything an attachment holds is named
//! by files under that directory, so the clean-up after a stop, a failed
//! start, a delete or an agent restart finds and undoes it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nimbus_api::{Volume, VolumeMount, VolumePhase};

use super::{mount, VolumeError};
use crate::container::spec::VolumeBind;

const VOLUMES_DIR: &str = "volumes";

fn io(what: String, dir: &Path, source: std::io::Error) -> VolumeError {
    VolumeError::Io {
        what,
        volume_id: dir.display().to_string(),
        source,
    }
}

/// The file of `volume` if it lives on `host` and is available; otherwise
/// why it cannot be mounted here.
pub fn local_file(volume: &Volume, host: &str) -> Result<PathBuf, String> {
    if volume.spec.host.as_deref() != Some(host) {
        return Err(format!(
            "it is kept on host {:?}, not this host {host:?}",
            volume.spec.host.as_deref().unwrap_or("-")
        ));
    }
    if volume.metadata.deletion_requested_at.is_some()
        || volume.status.phase != VolumePhase::Available
    {
        return Err(format!(
            "it is {}, not available (`nimbus volume get {}`)",
            volume.status.phase.as_str(),
            volume.metadata.name
        ));
    }
    volume
        .status
        .location
        .as_ref()
        .map(PathBuf::from)
        .ok_or_else(|| "its host has not reported where its data is".to_string())
}

/// Mount each volume for the instance in `instance_dir` (its filesystem
/// made on first use, its root owned by `owner`, the container's mapped
/// root) and say what the container bind-mounts. What an earlier start
/// left is undone first; on failure, everything mounted here is undone.
pub fn attach_all(
    instance_dir: &Path,
    volumes: &[(VolumeMount, PathBuf)],
    owner: (u32, u32),
) -> Result<Vec<VolumeBind>, VolumeError> {
    detach_all(instance_dir)?;
    if volumes.is_empty() {
        return Ok(Vec::new());
    }
    let base = instance_dir.join(VOLUMES_DIR);
    // The container's root (an unprivileged host uid) passes through to
    // reach `mnt`; `work` stays root's alone.
    let searchable = |d: &Path| {
        std::fs::create_dir_all(d)
            .and_then(|()| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)))
            .map_err(|e| io(format!("preparing {}", d.display()), d, e))
    };
    searchable(&base)?;
    let mut binds = Vec::new();
    for (m, file) in volumes {
        let dir = base.join(&m.volume);
        let attached = searchable(&dir)
            .and_then(|()| mount::attach(file, &dir.join("work"), &dir.join("mnt"), owner));
        if let Err(e) = attached {
            if let Err(undo) = detach_all(instance_dir) {
                tracing::warn!(error = %undo, dir = %instance_dir.display(), "undoing a failed volume attach");
            }
            return Err(e);
        }
        binds.push(VolumeBind {
            source: dir.join("mnt"),
            destination: m.path.clone(),
            read_only: m.read_only,
        });
    }
    Ok(binds)
}

/// Unmount every volume of the instance in `instance_dir` and remove the
/// directories. Safe to repeat; a mount point still mounted (held by a
/// live process) is an error and is never removed with what it holds.
pub fn detach_all(instance_dir: &Path) -> Result<(), VolumeError> {
    let base = instance_dir.join(VOLUMES_DIR);
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("listing {}", base.display()), &base, e)),
    };
    for entry in entries {
        let dir = entry
            .map_err(|e| io(format!("listing {}", base.display()), &base, e))?
            .path();
        mount::detach(&dir.join("work"))?;
        // `remove_dir`, never `remove_dir_all`: a mount point that is
        // somehow still mounted is not emptied.
        let mnt = dir.join("mnt");
        match std::fs::remove_dir(&mnt) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", mnt.display()), &mnt, e)),
        }
        std::fs::remove_dir(&dir)
            .map_err(|e| io(format!("removing {}", dir.display()), &dir, e))?;
    }
    std::fs::remove_dir(&base).map_err(|e| io(format!("removing {}", base.display()), &base, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::Metadata;

    fn volume(host: &str, phase: VolumePhase) -> Volume {
        Volume {
            metadata: Metadata::new("data", Some("p")),
            spec: nimbus_api::VolumeSpec {
                size_bytes: 1 << 30,
                host: Some(host.into()),
                ..Default::default()
            },
            status: nimbus_api::VolumeStatus {
                phase,
                location: Some("/var/lib/nimbus/volumes/v1.qcow2".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn only_an_available_volume_of_this_host_is_mounted() {
        let ok = local_file(&volume("h1", VolumePhase::Available), "h1").expect("here");
        assert_eq!(ok, PathBuf::from("/var/lib/nimbus/volumes/v1.qcow2"));
        let e = local_file(&volume("h2", VolumePhase::Available), "h1").expect_err("there");
        assert!(e.contains("kept on host \"h2\""), "{e}");
        let e = local_file(&volume("h1", VolumePhase::Pending), "h1").expect_err("pending");
        assert!(e.contains("pending, not available"), "{e}");
    }

    #[test]
    fn detaching_nothing_succeeds_and_repeats() {
        let tmp = tempfile::tempdir().expect("tempdir");
        detach_all(tmp.path()).expect("nothing attached");
        assert_eq!(attach_all(tmp.path(), &[], (1, 1)).expect("none"), vec![]);
        // A half-made attachment (a crash before the daemon started) goes.
        std::fs::create_dir_all(tmp.path().join("volumes/data/work")).expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("volumes/data/mnt")).expect("mkdir");
        detach_all(tmp.path()).expect("leftover");
        assert!(!tmp.path().join("volumes").exists());
        detach_all(tmp.path()).expect("again");
    }
}
