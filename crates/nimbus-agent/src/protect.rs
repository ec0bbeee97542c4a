//! Keeping the control plane alive when tenants exhaust the host.
//!
//! Three layers, each cheap and independent, so one that the host refuses
//! (no root, no cgroup controller) leaves the others working:
//! - OOM scores: `nimbus up`/`nimbus server` run at [`DAEMON_OOM_SCORE_ADJ`]
//!   and shims at [`SHIM_OOM_SCORE_ADJ`], so the kernel's OOM killer picks
//!   a workload long before the control plane. Workloads never inherit
//!   this: container init, exec'd processes and QEMU are reset to
//!   [`WORKLOAD_OOM_SCORE_ADJ`] before they run tenant code. Lowering a
//!   score needs `CAP_SYS_RESOURCE`, which some hosts withhold (a
//!   container or sandbox running Nimbus); there the control plane stays
//!   at 0 and workloads are raised to [`RAISED_WORKLOAD_OOM_SCORE_ADJ`]
//!   instead, which keeps the same order.
//! - CPU: the daemon (and the shims it spawns) live in the `nimbus-system`
//!   cgroup with [`SYSTEM_CPU_SHARES`], four times the weight of the
//!   instances' parent `nimbus`, so a busy tenant cannot starve the API.
//! - Memory: the instances' parent cgroup `nimbus` is limited to the host's
//!   memory minus a reserve, so all instances together cannot exhaust the
//!   host; the reserve is what the control plane and the host keep.

use std::path::{Path, PathBuf};

/// OOM score of `nimbus up` and `nimbus server`: far below any workload,
/// yet not immune, so a leaking daemon can still be stopped by the kernel
/// before the host dies.
pub const DAEMON_OOM_SCORE_ADJ: i32 = -900;
/// OOM score of a shim: never chosen. A shim is about 2 MiB, and killing it
/// would orphan its workload's supervision and exit status.
pub const SHIM_OOM_SCORE_ADJ: i32 = -1000;
/// OOM score of every workload process (container init, exec, QEMU)
/// when the control plane could lower its own.
pub const WORKLOAD_OOM_SCORE_ADJ: i32 = 0;
/// OOM score of workload processes when the host did not let the control
/// plane lower its own (no `CAP_SYS_RESOURCE`): raising needs no privilege,
/// and +500 makes a workload look half the host's memory bigger than it
/// is, so the kernel picks it before a shim or the daemon.
pub const RAISED_WORKLOAD_OOM_SCORE_ADJ: i32 = 500;

/// `cpu.shares` (cgroup v1) of the control plane's cgroup; the instances'
/// parent keeps the kernel's default of 1024.
pub const SYSTEM_CPU_SHARES: u64 = 4096;
/// `cpu.shares` of the instances' parent cgroup `nimbus`.
pub const INSTANCES_CPU_SHARES: u64 = 1024;
/// `cpu.weight` (cgroup v2) equivalents of the shares above.
const SYSTEM_CPU_WEIGHT: u64 = 400;
const INSTANCES_CPU_WEIGHT: u64 = 100;

/// The control plane's cgroup, beside the instances' `nimbus`.
pub const SYSTEM_CGROUP: &str = "nimbus-system";
/// The parent of every instance's cgroup (`nimbus/<instance id>`).
pub const INSTANCES_CGROUP: &str = "nimbus";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The path a forked child writes [`WORKLOAD_OOM_SCORE_ADJ`] to before
/// exec; a C string so it can be used between fork and exec.
pub const OWN_OOM_SCORE_ADJ_PATH: &std::ffi::CStr = c"/proc/self/oom_score_adj";

#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    #[error("cannot set the OOM score adjustment to {value} ({path}): {source}; run as root")]
    OomScore {
        value: i32,
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot {what} {}: {source}", path.display())]
    Cgroup {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the host's memory size from /proc/meminfo: {0}")]
    MemInfo(String),
    #[error(
        "the memory reserve of {reserve_bytes} bytes leaves nothing of the host's {total_bytes} bytes for instances; give a smaller --reserved-memory"
    )]
    ReserveTooLarge {
        reserve_bytes: u64,
        total_bytes: u64,
    },
}

/// Sets the calling process's `oom_score_adj`. Lowering it needs
/// `CAP_SYS_RESOURCE`; raising it (a workload going back to 0) does not.
pub fn set_own_oom_score_adj(value: i32) -> Result<(), ProtectError> {
    const PATH: &str = "/proc/self/oom_score_adj";
    std::fs::write(PATH, value.to_string()).map_err(|source| ProtectError::OomScore {
        value,
        path: PATH,
        source,
    })
}

/// The score a workload started by the calling process gets: 0 when the
/// caller is protected (negative), else [`RAISED_WORKLOAD_OOM_SCORE_ADJ`],
/// so the workload always ranks above its supervisor for the OOM killer.
pub fn workload_oom_score_adj() -> i32 {
    let own = oom_score_adj_of_self().unwrap_or(0);
    if own < 0 {
        WORKLOAD_OOM_SCORE_ADJ
    } else {
        RAISED_WORKLOAD_OOM_SCORE_ADJ.max(own)
    }
}

fn oom_score_adj_of_self() -> Option<i32> {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The `oom_score_adj` of process `pid`, if it still exists.
pub fn oom_score_adj_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// While alive, the calling shim runs at the workload's OOM score, so a
/// process it forks meanwhile (libcontainer forks the container's init from
/// the shim itself, and gives no hook between fork and the init's setup)
/// starts at [`workload_oom_score_adj`]; dropping it restores the shim's
/// own score. The window is the container's creation, a few milliseconds.
/// Restoring works without privilege when the shim was unprotected (it
/// only goes back down to the score it started with).
pub struct WorkloadOomScope {
    own: i32,
}

impl WorkloadOomScope {
    pub fn enter() -> Result<WorkloadOomScope, ProtectError> {
        let own = oom_score_adj_of_self().unwrap_or(0);
        set_own_oom_score_adj(workload_oom_score_adj())?;
        Ok(WorkloadOomScope { own })
    }
}

impl Drop for WorkloadOomScope {
    fn drop(&mut self) {
        if let Err(e) = set_own_oom_score_adj(self.own) {
            tracing::warn!(error = %e, "shim could not restore its OOM score");
        }
    }
}

/// Whether this host mounts the v1 hierarchy of `controller`.
fn v1_hierarchy(controller: &str) -> Option<PathBuf> {
    let dir = Path::new(CGROUP_ROOT).join(controller);
    dir.join("cgroup.procs").exists().then_some(dir)
}

/// The unified (v2) hierarchy when it is mounted at the root.
fn v2_root() -> Option<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    root.join("cgroup.controllers")
        .exists()
        .then(|| root.to_path_buf())
}

fn write_cgroup_file(path: &Path, value: &str) -> Result<(), ProtectError> {
    std::fs::write(path, value).map_err(|source| ProtectError::Cgroup {
        what: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn make_cgroup(path: &Path) -> Result<(), ProtectError> {
    std::fs::create_dir_all(path).map_err(|source| ProtectError::Cgroup {
        what: "create",
        path: path.to_path_buf(),
        source,
    })
}

/// Moves the calling process (every thread: v1 `cgroup.procs` moves the
/// thread group) into the control plane's CPU cgroup, weighted above the
/// instances' parent. Shims started afterwards are born there too; each
/// container's init and QEMU are moved into their instance's cgroup, so
/// workloads never share the control plane's weight.
pub fn join_system_cpu_cgroup() -> Result<PathBuf, ProtectError> {
    let me = std::process::id().to_string();
    if let Some(cpu) = v1_hierarchy("cpu") {
        let system = cpu.join(SYSTEM_CGROUP);
        let instances = cpu.join(INSTANCES_CGROUP);
        make_cgroup(&system)?;
        make_cgroup(&instances)?;
        write_cgroup_file(&system.join("cpu.shares"), &SYSTEM_CPU_SHARES.to_string())?;
        write_cgroup_file(
            &instances.join("cpu.shares"),
            &INSTANCES_CPU_SHARES.to_string(),
        )?;
        write_cgroup_file(&system.join("cgroup.procs"), &me)?;
        return Ok(system);
    }
    if let Some(root) = v2_root() {
        let system = root.join(SYSTEM_CGROUP);
        let instances = root.join(INSTANCES_CGROUP);
        make_cgroup(&system)?;
        make_cgroup(&instances)?;
        // cpu.weight exists only where the root delegates the cpu
        // controller; without it the move still groups the control plane.
        if system.join("cpu.weight").exists() {
            write_cgroup_file(&system.join("cpu.weight"), &SYSTEM_CPU_WEIGHT.to_string())?;
            write_cgroup_file(
                &instances.join("cpu.weight"),
                &INSTANCES_CPU_WEIGHT.to_string(),
            )?;
        }
        write_cgroup_file(&system.join("cgroup.procs"), &me)?;
        return Ok(system);
    }
    Err(ProtectError::Cgroup {
        what: "find a cpu cgroup hierarchy under",
        path: PathBuf::from(CGROUP_ROOT),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// The host's memory (`MemTotal`), in bytes.
pub fn host_memory_bytes() -> Result<u64, ProtectError> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| ProtectError::MemInfo(e.to_string()))?;
    parse_mem_total(&text).ok_or_else(|| ProtectError::MemInfo("no MemTotal line".into()))
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// What the control plane and the host keep when nobody says: a tenth of
/// the host's memory, at least 1 GiB, but never more than half.
pub fn default_memory_reserve(total_bytes: u64) -> u64 {
    (total_bytes / 10).max(1 << 30).min(total_bytes / 2)
}

/// The limit of the instances' parent cgroup for a host of `total_bytes`
/// keeping `reserve_bytes`, in whole MiB: the kernel rounds a limit down
/// to pages, and the scheduler must see the very value the cgroup holds.
pub fn instances_memory_limit(total_bytes: u64, reserve_bytes: u64) -> Result<u64, ProtectError> {
    const MIB: u64 = 1 << 20;
    match total_bytes
        .checked_sub(reserve_bytes)
        .map(|l| l / MIB * MIB)
    {
        Some(limit) if limit > 0 => Ok(limit),
        _ => Err(ProtectError::ReserveTooLarge {
            reserve_bytes,
            total_bytes,
        }),
    }
}

/// Limits the instances' parent cgroup to the host's memory minus
/// `reserve_bytes` (default: [`default_memory_reserve`]), so all instances
/// together hit their common limit, and the OOM killer acts inside it,
/// before the host runs out. Returns the limit set.
pub fn reserve_host_memory(reserve_bytes: Option<u64>) -> Result<u64, ProtectError> {
    let total = host_memory_bytes()?;
    let reserve = reserve_bytes.unwrap_or_else(|| default_memory_reserve(total));
    let limit = instances_memory_limit(total, reserve)?;
    if let Some(memory) = v1_hierarchy("memory") {
        let instances = memory.join(INSTANCES_CGROUP);
        make_cgroup(&instances)?;
        // Children count against the parent only with hierarchical
        // accounting; recent kernels have it always on and refuse the
        // write, which is fine.
        let _ = std::fs::write(instances.join("memory.use_hierarchy"), "1");
        write_cgroup_file(&instances.join("memory.limit_in_bytes"), &limit.to_string())?;
        return Ok(limit);
    }
    if let Some(root) = v2_root() {
        let instances = root.join(INSTANCES_CGROUP);
        make_cgroup(&instances)?;
        write_cgroup_file(&instances.join("memory.max"), &limit.to_string())?;
        return Ok(limit);
    }
    Err(ProtectError::Cgroup {
        what: "find a memory cgroup hierarchy under",
        path: PathBuf::from(CGROUP_ROOT),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Everything above for a daemon (`nimbus up`, `nimbus server`): each
/// step that the host refuses is logged and skipped, since a control plane
/// without protection is still better than none, except a reserve the
/// operator asked for (`--reserved-memory`), which must hold. `reserve` is
/// `None` for a server without instances on its host, `Some(None)` for the
/// default reserve. Returns the memory left to instances when the reserve
/// is in force.
pub fn protect_daemon(reserve: Option<Option<u64>>) -> Result<Option<u64>, ProtectError> {
    match set_own_oom_score_adj(DAEMON_OOM_SCORE_ADJ) {
        Ok(()) => tracing::info!(oom_score_adj = DAEMON_OOM_SCORE_ADJ, "OOM protection set"),
        Err(e) => tracing::warn!(error = %e, "running without OOM protection"),
    }
    match join_system_cpu_cgroup() {
        Ok(dir) => tracing::info!(cgroup = %dir.display(), "control plane in its own CPU cgroup"),
        Err(e) => tracing::warn!(error = %e, "control plane shares the CPU cgroup of its parent"),
    }
    let Some(reserve) = reserve else {
        return Ok(None);
    };
    match reserve_host_memory(reserve) {
        Ok(limit) => {
            tracing::info!(
                instances_memory_limit_bytes = limit,
                "instances together are limited to the host's memory minus the reserve"
            );
            Ok(Some(limit))
        }
        Err(e) if reserve.is_some() => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "instances together have no memory limit");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_parsed_in_bytes() {
        let text = "MemTotal:       24684544 kB\nMemFree:          1058000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24684544 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn reserve_is_a_tenth_at_least_a_gib_at_most_half() {
        assert_eq!(default_memory_reserve(24 << 30), (24u64 << 30) / 10);
        assert_eq!(default_memory_reserve(4 << 30), 1 << 30);
        assert_eq!(default_memory_reserve(1 << 30), 512 << 20);
    }

    #[test]
    fn a_reserve_leaving_nothing_is_refused() {
        assert_eq!(instances_memory_limit(8 << 30, 1 << 30).ok(), Some(7 << 30));
        assert_eq!(
            instances_memory_limit((8 << 30) + 12345, 1 << 30).ok(),
            Some(7 << 30),
            "whole MiB, as the cgroup keeps it"
        );
        let err = instances_memory_limit(1 << 30, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("--reserved-memory"), "{err}");
    }
}
