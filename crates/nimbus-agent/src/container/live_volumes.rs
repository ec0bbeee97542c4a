//! A running container's volumes brought to what its instance names
//! (`Driver::sync_volumes`), on each pass of its reconcile worker.
//!
//! `spec.json`'s `volumes` records what is mounted in the container (the
//! shim reads it again before each restart, so a restarted container
//! mounts the same). A volume named but not recorded is mounted on the
//! host (`volume::attach`) and moved into the container
//! (`volume::live`), then recorded; a recorded one no longer named is
//! flushed and unmounted inside, its record dropped, and its host side
//! released. An attachment directory with no record is being released:
//! while a process in the container still holds the lazily unmounted
//! filesystem, it stays (and is reported `detaching`); once free, the
//! loop device and daemon go. Level-triggered: a pass repeats what the
//! last one did not finish.

use std::path::{Path, PathBuf};

use nimbus_api::{AttachedVolume, Instance, VolumeMount};

use super::spec::{ShimSpec, VolumeBind};
use crate::agent::error::{blocking, AgentError};
use crate::driver::DriverContext;
use crate::volume::{attach, live, mount};

/// The volume a host-side bind source (`<dir>/volumes/<name>/mnt`) serves.
fn bind_name(b: &VolumeBind) -> String {
    b.source
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What one pass changes: volumes to mount (with their files, or why
/// none), recorded volumes to take out, and the ones left as they are.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub mount: Vec<VolumeMount>,
    pub unmount: Vec<VolumeBind>,
    pub kept: Vec<String>,
}

/// Pure: compare the instance's volumes with the recorded mounts.
pub fn plan(wanted: &[VolumeMount], recorded: &[VolumeBind]) -> Changes {
    let mut c = Changes::default();
    for m in wanted {
        if recorded.iter().any(|b| bind_name(b) == m.volume) {
            c.kept.push(m.volume.clone());
        } else {
            c.mount.push(m.clone());
        }
    }
    c.unmount = recorded
        .iter()
        .filter(|b| !wanted.iter().any(|m| m.volume == bind_name(b)))
        .cloned()
        .collect();
    c
}

fn state(volume: &str, state: &str, message: Option<String>) -> AttachedVolume {
    AttachedVolume {
        volume: volume.to_string(),
        state: state.to_string(),
        message,
    }
}

/// Converge the volumes of the container running in `dir`; `None` when it
/// is not running (no init process).
pub async fn sync(
    cx: &dyn DriverContext,
    instance: &Instance,
    dir: &Path,
) -> Option<Vec<AttachedVolume>> {
    let spec = ShimSpec::load(dir).ok()?;
    let pid = crate::shim::read_state(dir)?.pid?;
    let changes = plan(&instance.spec.volumes, &spec.volumes);
    let project = instance.metadata.project.as_deref().unwrap_or_default();
    let mut files = Vec::new();
    for m in changes.mount.iter().cloned() {
        let file = cx
            .volume_file(project, &m.volume)
            .await
            .map_err(|e| e.to_string());
        files.push((m, file));
    }
    let pass = Pass {
        dir: dir.to_path_buf(),
        pid,
        helper: cx.shim_exe(),
        owner: (spec.id_map.host_id, spec.id_map.host_id),
    };
    let wanted = instance.spec.volumes.clone();
    let outcome = blocking("changing a running container's volumes", move || {
        Ok::<_, AgentError>(pass.run(changes, files, &wanted))
    })
    .await;
    match outcome {
        Ok(states) => Some(states),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "changing a running container's volumes");
            None
        }
    }
}

/// One pass over a running container's volumes, on a blocking thread.
struct Pass {
    dir: PathBuf,
    pid: i32,
    helper: PathBuf,
    owner: (u32, u32),
}

impl Pass {
    fn run(
        &self,
        changes: Changes,
        files: Vec<(VolumeMount, Result<PathBuf, String>)>,
        wanted: &[VolumeMount],
    ) -> Vec<AttachedVolume> {
        let mut states: Vec<AttachedVolume> = changes
            .kept
            .iter()
            .map(|v| state(v, "attached", None))
            .collect();
        if let Err(e) = self.check_pid() {
            let failed = |v: &str| state(v, "failed", Some(e.clone()));
            states.extend(files.iter().map(|(m, _)| failed(&m.volume)));
            states.extend(changes.unmount.iter().map(|b| failed(&bind_name(b))));
            return states;
        }
        for b in &changes.unmount {
            if let Err(e) = self.unmount(b) {
                states.push(state(&bind_name(b), "detaching", Some(e)));
            }
        }
        states.extend(self.release_unrecorded(wanted));
        for (m, file) in files {
            let attached = file.and_then(|f| self.mount(&m, &f));
            states.push(match attached {
                Ok(()) => state(&m.volume, "attached", None),
                Err(e) => state(&m.volume, "failed", Some(e)),
            });
        }
        states
    }

    /// The pid read from the shim's state is the container's init, not a
    /// process that took its number since: it is in the instance's cgroup.
    fn check_pid(&self) -> Result<(), String> {
        let id = crate::shim::instance_id_from_dir(&self.dir).map_err(|e| e.to_string())?;
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid))
            .map_err(|e| format!("the container's process {} is gone: {e}", self.pid))?;
        if cgroups.contains(&id) {
            Ok(())
        } else {
            Err(format!(
                "process {} is no longer the container's; the change is retried on the next pass",
                self.pid
            ))
        }
    }

    fn record(&self, change: impl FnOnce(&mut Vec<VolumeBind>)) -> Result<(), String> {
        let mut spec = ShimSpec::load(&self.dir).map_err(|e| e.to_string())?;
        change(&mut spec.volumes);
        spec.save(&self.dir).map_err(|e| e.to_string())
    }

    /// Mount `m` on the host, move it into the container, record it.
    fn mount(&self, m: &VolumeMount, file: &Path) -> Result<(), String> {
        if attach::attachment_dir(&self.dir, &m.volume).exists() {
            return Err("its earlier mount in this container is still held by a process there; it is mounted again once that process closes its files (or restart the instance)".into());
        }
        let bind = attach::attach_one(&self.dir, m, file, self.owner).map_err(|e| e.to_string())?;
        let moved = live::mount_into(
            &self.helper,
            self.pid,
            &bind.source,
            &bind.destination,
            self.owner,
            bind.read_only,
        )
        .and_then(|()| {
            self.record(|v| v.push(bind.clone()))
                .map_err(|e| tool_error(&m.volume, e))
        });
        if let Err(e) = moved {
            if let Err(undo) = attach::detach_one(&self.dir, &m.volume) {
                tracing::warn!(volume = %m.volume, error = %undo, "undoing a failed live volume attach");
            }
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Flush and unmount `b` in the container, then drop its record.
    fn unmount(&self, b: &VolumeBind) -> Result<(), String> {
        let how = live::unmount_from(&self.helper, self.pid, &b.source, &b.destination)
            .map_err(|e| e.to_string())?;
        if how == live::Unmounted::Lazy {
            tracing::warn!(volume = %bind_name(b), path = %b.destination, "a process in the container holds the volume: unmounted lazily");
        }
        self.record(|v| v.retain(|r| r != b))
    }

    /// Release each attachment with no record (unmounted in the container):
    /// the host mount first, then, once no lazily detached mount holds the
    /// filesystem, the loop device and daemon. A held one is `detaching`.
    fn release_unrecorded(&self, wanted: &[VolumeMount]) -> Vec<AttachedVolume> {
        let recorded: Vec<String> = ShimSpec::load(&self.dir)
            .map(|s| s.volumes.iter().map(bind_name).collect())
            .unwrap_or_default();
        let mut states = Vec::new();
        for name in attach::attached_names(&self.dir) {
            if recorded.contains(&name) {
                continue;
            }
            let state_now = match self.release(&name) {
                Ok(true) => continue,
                Ok(false) if wanted.iter().any(|m| m.volume == name) => continue,
                Ok(false) => state(
                    &name,
                    "detaching",
                    Some("a process in the container still has files open on the volume: it was unmounted lazily and is released when they are closed".into()),
                ),
                Err(e) => state(&name, "detaching", Some(e)),
            };
            states.push(state_now);
        }
        states
    }

    /// `Ok(true)` once the attachment of `name` is gone from the host.
    fn release(&self, name: &str) -> Result<bool, String> {
        let dir = attach::attachment_dir(&self.dir, name);
        let mnt = dir.join("mnt");
        if mount::is_mounted(&mnt) {
            nix::mount::umount2(&mnt, nix::mount::MntFlags::empty())
                .map_err(|e| format!("unmounting {}: {e}", mnt.display()))?;
        }
        if mount::loop_device(&dir.join("work")).is_some_and(|d| live::device_busy(&d)) {
            return Ok(false);
        }
        attach::detach_one(&self.dir, name).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

fn tool_error(volume: &str, detail: String) -> crate::volume::VolumeError {
    crate::volume::VolumeError::Tool {
        command: "recording the mount in spec.json".into(),
        volume_id: volume.to_string(),
        stderr: detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(name: &str, path: &str) -> VolumeBind {
        VolumeBind {
            source: PathBuf::from(format!("/i/volumes/{name}/mnt")),
            destination: path.into(),
            read_only: false,
        }
    }

    fn wanted(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            volume: name.into(),
            path: path.into(),
            read_only: false,
        }
    }

    #[test]
    fn only_the_difference_is_mounted_or_unmounted() {
        let c = plan(
            &[wanted("data", "/data"), wanted("logs", "/logs")],
            &[bind("data", "/data"), bind("old", "/old")],
        );
        assert_eq!(c.kept, ["data"]);
        assert_eq!(c.mount, [wanted("logs", "/logs")]);
        assert_eq!(c.unmount, [bind("old", "/old")]);
        assert_eq!(plan(&[], &[]), Changes::default());
    }
}
