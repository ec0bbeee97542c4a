//! Spawning shims, and the part of cleaning up after a dead one that is the
//! same for every driver (for the agent).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;

use super::control::{ShimClient, SOCKET_FILE};
use super::state::{read_state, write_state, Phase, ShimState, STATE_FILE};
use super::ShimError;
use crate::host::cgroups::kill_and_remove;

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
/// instance runs or that it failed. Returns the state at that moment (a short-lived
/// workload may already be `exited`; a failed one is `failed` with a reason).
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

/// Removes what a dead shim left behind, for any driver: refuses while a
/// shim still answers; kills the instance's processes by cgroup membership
/// (not by a recorded pid, which may be reused) and removes its cgroups;
/// runs the driver's own part (`driver_part`: unmounts and scratch files,
/// returning the problems met); removes the socket; and records the end in
/// `state.json` if the shim did not. Keeps the spec, the state, the console
/// logs and whatever the driver keeps across restarts.
pub fn clean_up_after_shim(
    instance_dir: &Path,
    instance_id: &str,
    driver_part: impl FnOnce() -> Vec<String>,
) -> Result<(), ShimError> {
    refuse_if_supervised(instance_dir)?;
    let mut problems = Vec::new();
    if let Err(e) = kill_and_remove(instance_id, Duration::from_secs(5)) {
        problems.push(e.to_string());
    }
    problems.extend(driver_part());
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

/// The instance id of `instance_dir` when its spec cannot tell: the
/// directory's name (the agent names each directory after its instance).
pub fn instance_id_from_dir(instance_dir: &Path) -> Result<String, ShimError> {
    instance_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            ShimError::InvalidSpec(format!(
                "cannot tell the instance id of {}",
                instance_dir.display()
            ))
        })
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
