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

/// The directory of volume `name`'s attachment to the instance in
/// `instance_dir`.
pub fn attachment_dir(instance_dir: &Path, name: &str) -> PathBuf {
    instance_dir.join(VOLUMES_DIR).join(name)
}

/// The names of the volumes with an attachment directory (mounted, or
/// half made or half undone) in `instance_dir`.
pub fn attached_names(instance_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(instance_dir.join(VOLUMES_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A directory the container's root (an unprivileged host uid) passes
/// through to reach `mnt`; `work` stays root's alone.
fn searchable(d: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(d)
        .and_then(|()| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)))
        .map_err(|e| io(format!("preparing {}", d.display()), d, e))
}

/// Mount volume `m` (its qcow2 `file`) for the instance in `instance_dir`
/// under `<dir>/volumes/<name>/mnt`, its filesystem made on first use
/// with its root owned by `owner`; what the container bind-mounts. What
/// an earlier attachment of the same name left is undone first; on
/// failure, everything mounted here is undone.
pub fn attach_one(
    instance_dir: &Path,
    m: &VolumeMount,
    file: &Path,
    owner: (u32, u32),
) -> Result<VolumeBind, VolumeError> {
    searchable(&instance_dir.join(VOLUMES_DIR))?;
    let dir = attachment_dir(instance_dir, &m.volume);
    detach_dir(&dir)?;
    searchable(&dir)?;
    mount::attach(file, &dir.join("work"), &dir.join("mnt"), owner)?;
    Ok(VolumeBind {
        source: dir.join("mnt"),
        destination: m.path.clone(),
        read_only: m.read_only,
    })
}

/// Mount each volume for the instance in `instance_dir` ([`attach_one`])
/// and say what the container bind-mounts. What an earlier start left is
/// undone first; on failure, everything mounted here is undone.
pub fn attach_all(
    instance_dir: &Path,
    volumes: &[(VolumeMount, PathBuf)],
    owner: (u32, u32),
) -> Result<Vec<VolumeBind>, VolumeError> {
    detach_all(instance_dir)?;
    if volumes.is_empty() {
        return Ok(Vec::new());
    }
    let mut binds = Vec::new();
    for (m, file) in volumes {
        match attach_one(instance_dir, m, file, owner) {
            Ok(bind) => binds.push(bind),
            Err(e) => {
                if let Err(undo) = detach_all(instance_dir) {
                    tracing::warn!(error = %undo, dir = %instance_dir.display(), "undoing a failed volume attach");
                }
                return Err(e);
            }
        }
    }
    Ok(binds)
}

/// Undo the attachment in `dir` (`<instance>/volumes/<name>`) and remove
/// it. Safe to repeat; a mount point still mounted (held by a live
/// process) is an error and is never removed with what it holds.
fn detach_dir(dir: &Path) -> Result<(), VolumeError> {
    mount::detach(&dir.join("work"))?;
    // `remove_dir`, never `remove_dir_all`: a mount point that is
    // somehow still mounted is not emptied.
    for d in [dir.join("mnt"), dir.to_path_buf()] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", d.display()), &d, e)),
        }
    }
    Ok(())
}

/// Undo volume `name`'s attachment to the instance in `instance_dir`.
pub fn detach_one(instance_dir: &Path, name: &str) -> Result<(), VolumeError> {
    detach_dir(&attachment_dir(instance_dir, name))
}

/// Unmount every volume of the instance in `instance_dir` and remove the
/// directories. Safe to repeat.
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
        detach_dir(&dir)?;
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
