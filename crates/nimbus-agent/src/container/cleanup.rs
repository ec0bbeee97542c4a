//! Spawning shims and cleaning up after dead ones (for the agent).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;

use super::cgroups::kill_and_remove;
use super::rootfs::{unmount_rootfs, work_dir};
use super::spec::ShimSpec;
use crate::shim::control::{ShimClient, SOCKET_FILE};
use crate::shim::state::{read_state, write_state, Phase, ShimState, STATE_FILE};
use crate::shim::ShimError;

/// File name of the dedicated shim executable, installed beside `nimbus`.
pub const SHIM_EXE_NAME: &str = "nimbus-shim";

/// The executable the agent runs as `<exe> shim <dir>`: `nimbus-shim` beside
/// `main_exe` when it is there (its code is a third of `nimbus`'s, so a
/// running shim keeps 1.5-2 MiB less resident), else `main_exe` itself,
/// which has the same `shim` subcommand.
pub fn shim_executable(main_exe: &Path) -> std::path::PathBuf {
    let dedicated = main_exe.with_file_name(SHIM_EXE_NAME);
    let executable = std::fs::metadata(&dedicated)
        .map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
        .unwrap_or(false);
    if executable {
        tracing::info!(shim = %dedicated.display(), "instances are supervised by the dedicated shim executable");
        dedicated
    } else {
        tracing::warn!(
            shim = %main_exe.display(),
            missing = %dedicated.display(),
            "no dedicated shim executable beside nimbus: instances are supervised by `nimbus shim` (install nimbus-shim beside nimbus to use less memory per instance)"
        );
        main_exe.to_path_buf()
    }
}

/// Runs `<exe> shim <instance_dir>` and waits until the shim reports that the
/// container runs or that it failed. Returns the state at that moment (a short-lived
/// container may already be `exited`; a failed one is `failed` with a reason).
/// Blocking: call it from `spawn_blocking` or use [`spawn_shim_async`].
pub fn spawn_shim(exe: &Path, instance_dir: &Path) -> Result<ShimState, ShimError> {
    refuse_if_supervised(instance_dir)?;
    let _ = std::fs::remove_file(instance_dir.join(STATE_FILE));
    let output = Command::new(exe)
        .arg("shim")
        .arg(instance_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| ShimError::Io {
            what: format!("run {} shim {}", exe.display(), instance_dir.display()),
            source,
        })?;
    reported_state(exe, instance_dir, &output.status, &output.stderr)
}

/// Async [`spawn_shim`] for the agent's runtime.
pub async fn spawn_shim_async(exe: &Path, instance_dir: &Path) -> Result<ShimState, ShimError> {
    if let Ok(client) = ShimClient::connect(instance_dir) {
        if let Ok(state) = client.status_async().await {
            return Err(already_supervised(instance_dir, &state));
        }
    }
    let _ = tokio::fs::remove_file(instance_dir.join(STATE_FILE)).await;
    let output = tokio::process::Command::new(exe)
        .arg("shim")
        .arg(instance_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| ShimError::Io {
            what: format!("run {} shim {}", exe.display(), instance_dir.display()),
            source,
        })?;
    reported_state(exe, instance_dir, &output.status, &output.stderr)
}

fn already_supervised(instance_dir: &Path, state: &ShimState) -> ShimError {
    ShimError::Refused(format!(
        "{} is already supervised by shim {} (phase {:?})",
        instance_dir.display(),
        state.shim_pid,
        state.phase
    ))
}

fn refuse_if_supervised(instance_dir: &Path) -> Result<(), ShimError> {
    if let Ok(client) = ShimClient::connect(instance_dir) {
        if let Ok(state) = client.status() {
            return Err(already_supervised(instance_dir, &state));
        }
    }
    Ok(())
}

fn reported_state(
    exe: &Path,
    instance_dir: &Path,
    status: &std::process::ExitStatus,
    stderr: &[u8],
) -> Result<ShimState, ShimError> {
    match read_state(instance_dir) {
        Some(state) if state.phase != Phase::Starting => Ok(state),
        _ => Err(ShimError::Spawn(format!(
            "{} shim {} ended with {status} without reporting a state: {}",
            exe.display(),
            instance_dir.display(),
            String::from_utf8_lossy(stderr).trim()
        ))),
    }
}

/// Removes what a dead shim left behind: the container's processes and cgroups,
/// the rootfs and layer mounts, runtime files and the socket. Keeps spec.json,
/// state.json, console logs and the upper dir. Refuses while a shim still answers.
pub fn cleanup_instance_dir(instance_dir: &Path) -> Result<(), ShimError> {
    refuse_if_supervised(instance_dir)?;
    let instance_id = match ShimSpec::load(instance_dir) {
        Ok(spec) => spec.instance_id,
        Err(_) => instance_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ShimError::InvalidSpec(format!(
                    "cannot tell the instance id of {}",
                    instance_dir.display()
                ))
            })?,
    };
    let mut problems = Vec::new();
    // Killing by cgroup membership, not by the recorded pid, which may be reused.
    if let Err(e) = kill_and_remove(&instance_id, Duration::from_secs(5)) {
        problems.push(e.to_string());
    }
    if let Err(e) = unmount_rootfs(instance_dir) {
        problems.push(e.to_string());
    }
    for dir in ["runtime", "bundle"]
        .map(|d| instance_dir.join(d))
        .into_iter()
        .chain([work_dir(instance_dir)])
    {
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                problems.push(format!("remove {}: {e}", dir.display()));
            }
        }
    }
    let _ = std::fs::remove_file(instance_dir.join(SOCKET_FILE));
    if let Some(mut state) = read_state(instance_dir) {
        if !state.phase.is_final() {
            state.phase = Phase::Failed;
            state.pid = None;
            state.finished_at = Some(Utc::now());
            state.reason = Some(format!(
                "shim {} died; cleaned up by the agent",
                state.shim_pid
            ));
            let _ = write_state(instance_dir, &state);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ShimError::Cleanup(format!(
            "{}: {}",
            instance_dir.display(),
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_dedicated_shim_is_used_only_when_installed_and_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nimbus = dir.path().join("nimbus");
        std::fs::write(&nimbus, b"").expect("write nimbus");
        assert_eq!(shim_executable(&nimbus), nimbus, "nothing beside nimbus");

        let dedicated = dir.path().join(SHIM_EXE_NAME);
        std::fs::write(&dedicated, b"").expect("write nimbus-shim");
        std::fs::set_permissions(&dedicated, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert_eq!(shim_executable(&nimbus), nimbus, "not executable");

        std::fs::set_permissions(&dedicated, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert_eq!(shim_executable(&nimbus), dedicated);
    }
}
