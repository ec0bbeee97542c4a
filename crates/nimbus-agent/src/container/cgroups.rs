//! The instance's cgroup directories, read and removed without libcontainer's state
//! (crash recovery has none) and inspected for OOM kills.
//!
//! libcontainer creates `/nimbus/<instance_id>` in every v1 hierarchy (or once under
//! the v2 root), so the directories are found by name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ShimError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Every existing cgroup directory of the instance, across hierarchies.
pub fn instance_cgroup_dirs(instance_id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let relative = Path::new("nimbus").join(instance_id);
    let v2 = Path::new(CGROUP_ROOT).join(&relative);
    if v2.is_dir() {
        dirs.push(v2);
    }
    if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
        for entry in entries.flatten() {
            let dir = entry.path().join(&relative);
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// How many processes the kernel OOM-killed in the instance's memory cgroup.
pub fn oom_kill_count(instance_id: &str) -> u64 {
    let relative = Path::new("nimbus").join(instance_id);
    let candidates = [
        Path::new(CGROUP_ROOT)
            .join("memory")
            .join(&relative)
            .join("memory.oom_control"),
        Path::new(CGROUP_ROOT).join(&relative).join("memory.events"),
    ];
    candidates
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| {
            text.lines()
                .filter_map(|line| line.strip_prefix("oom_kill "))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Pids still in any of the instance's cgroups.
pub fn instance_pids(instance_id: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = instance_cgroup_dirs(instance_id)
        .iter()
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGKILLs whatever is left in the instance's cgroups and removes the directories,
/// waiting up to `timeout` for the processes to die.
pub fn kill_and_remove(instance_id: &str, timeout: Duration) -> Result<(), ShimError> {
    let deadline = Instant::now() + timeout;
    loop {
        for pid in instance_pids(instance_id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut left = Vec::new();
        for dir in instance_cgroup_dirs(instance_id) {
            if std::fs::remove_dir(&dir).is_err() {
                left.push(dir);
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ShimError::Cgroup(format!(
                "cgroup(s) of instance {instance_id} still busy: {}",
                left.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start a cgroup migration in a throwaway child, so that the kernel's
/// wait for an RCU grace period (taken by the first cgroup migration after
/// a quiet spell, 10–15 ms here) overlaps the shim's rootfs and bundle work
/// instead of stalling libcontainer when it moves the container's first
/// process into its cgroups. The child moves itself to the root of the pids
/// hierarchy and exits; the shim's reaper collects it.
pub fn warm_cgroup_migration() {
    let procs = Path::new("/sys/fs/cgroup/pids/cgroup.procs");
    if !procs.exists() {
        return;
    }
    // SAFETY: the shim is single-threaded here; the child only writes a file
    // and calls _exit, both safe after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = std::fs::write(procs, "0");
            // SAFETY: leaving the child without running the parent's atexit
            // handlers or destructors.
            unsafe { libc::_exit(0) };
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) | Err(_) => {}
    }
}
