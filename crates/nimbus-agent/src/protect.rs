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

use crate::host::cgroupfs::{CgroupFs, HostCgroupFs};
use crate::host::layout::{
    current, prepare_delegated_on, CgroupLayout, CgroupLayoutError, SUPERVISOR_LEAF,
};

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
    #[error(transparent)]
    Layout(#[from] CgroupLayoutError),
}

/// Sets the calling process's `oom_score_adj`. Lowering it needs
/// `CAP_SYS_RESOURCE`; raising it (a workload going back to 0) does not.
pub fn set_own_oom_score_adj(value: i32) -> Result<(), ProtectError> {
    set_own_oom_score_adj_on(&HostCgroupFs, value)
}

fn set_own_oom_score_adj_on(fs: &dyn CgroupFs, value: i32) -> Result<(), ProtectError> {
    const PATH: &str = "/proc/self/oom_score_adj";
    fs.write(Path::new(PATH), &value.to_string())
        .map_err(|source| ProtectError::OomScore {
            value,
            path: PATH,
            source,
        })
}

/// The score a workload started by the calling process gets: 0 when the
/// caller is protected (negative), else [`RAISED_WORKLOAD_OOM_SCORE_ADJ`],
/// so the workload always ranks above its supervisor for the OOM killer.
pub fn workload_oom_score_adj() -> i32 {
    workload_oom_score_adj_on(&HostCgroupFs)
}

fn workload_oom_score_adj_on(fs: &dyn CgroupFs) -> i32 {
    let own = oom_score_adj_of_self(fs).unwrap_or(0);
    if own < 0 {
        WORKLOAD_OOM_SCORE_ADJ
    } else {
        RAISED_WORKLOAD_OOM_SCORE_ADJ.max(own)
    }
}

fn oom_score_adj_of_self(fs: &dyn CgroupFs) -> Option<i32> {
    fs.read(Path::new("/proc/self/oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The `oom_score_adj` of process `pid`, if it still exists.
pub fn oom_score_adj_of(pid: i32) -> Option<i32> {
    HostCgroupFs
        .read(Path::new(&format!("/proc/{pid}/oom_score_adj")))
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
        let own = oom_score_adj_of_self(&HostCgroupFs).unwrap_or(0);
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
fn v1_hierarchy(fs: &dyn CgroupFs, controller: &str) -> Option<PathBuf> {
    let dir = Path::new(CGROUP_ROOT).join(controller);
    fs.exists(&dir.join("cgroup.procs")).then_some(dir)
}

/// The unified (v2) hierarchy when it is mounted at the root.
fn v2_root(fs: &dyn CgroupFs) -> Option<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    fs.exists(&root.join("cgroup.controllers"))
        .then(|| root.to_path_buf())
}

fn write_cgroup_file(fs: &dyn CgroupFs, path: &Path, value: &str) -> Result<(), ProtectError> {
    fs.write(path, value)
        .map_err(|source| ProtectError::Cgroup {
            what: "write",
            path: path.to_path_buf(),
            source,
        })
}

fn make_cgroup(fs: &dyn CgroupFs, path: &Path) -> Result<(), ProtectError> {
    fs.create_dir_all(path)
        .map_err(|source| ProtectError::Cgroup {
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
    join_system_cpu_cgroup_on(&HostCgroupFs, std::process::id())
}

/// [`join_system_cpu_cgroup`] for the process `pid`, on the files `fs`.
fn join_system_cpu_cgroup_on(fs: &dyn CgroupFs, pid: u32) -> Result<PathBuf, ProtectError> {
    let me = pid.to_string();
    if let Some(cpu) = v1_hierarchy(fs, "cpu") {
        let system = cpu.join(SYSTEM_CGROUP);
        let instances = cpu.join(INSTANCES_CGROUP);
        make_cgroup(fs, &system)?;
        make_cgroup(fs, &instances)?;
        write_cgroup_file(
            fs,
            &system.join("cpu.shares"),
            &SYSTEM_CPU_SHARES.to_string(),
        )?;
        write_cgroup_file(
            fs,
            &instances.join("cpu.shares"),
            &INSTANCES_CPU_SHARES.to_string(),
        )?;
        write_cgroup_file(fs, &system.join("cgroup.procs"), &me)?;
        return Ok(system);
    }
    if let Some(root) = v2_root(fs) {
        let system = root.join(SYSTEM_CGROUP);
        let instances = root.join(INSTANCES_CGROUP);
        make_cgroup(fs, &system)?;
        make_cgroup(fs, &instances)?;
        // cpu.weight exists only where the root delegates the cpu
        // controller; without it the move still groups the control plane.
        if fs.exists(&system.join("cpu.weight")) {
            write_cgroup_file(
                fs,
                &system.join("cpu.weight"),
                &SYSTEM_CPU_WEIGHT.to_string(),
            )?;
            write_cgroup_file(
                fs,
                &instances.join("cpu.weight"),
                &INSTANCES_CPU_WEIGHT.to_string(),
            )?;
        }
        write_cgroup_file(fs, &system.join("cgroup.procs"), &me)?;
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
    host_memory_bytes_on(&HostCgroupFs)
}

fn host_memory_bytes_on(fs: &dyn CgroupFs) -> Result<u64, ProtectError> {
    let text = fs
        .read(Path::new("/proc/meminfo"))
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
    reserve_host_memory_on(&HostCgroupFs, reserve_bytes)
}

fn reserve_host_memory_on(
    fs: &dyn CgroupFs,
    reserve_bytes: Option<u64>,
) -> Result<u64, ProtectError> {
    let total = host_memory_bytes_on(fs)?;
    let reserve = reserve_bytes.unwrap_or_else(|| default_memory_reserve(total));
    let limit = instances_memory_limit(total, reserve)?;
    if let Some(memory) = v1_hierarchy(fs, "memory") {
        let instances = memory.join(INSTANCES_CGROUP);
        make_cgroup(fs, &instances)?;
        // Children count against the parent only with hierarchical
        // accounting; recent kernels have it always on and refuse the
        // write, which is fine.
        let _ = fs.write(&instances.join("memory.use_hierarchy"), "1");
        write_cgroup_file(
            fs,
            &instances.join("memory.limit_in_bytes"),
            &limit.to_string(),
        )?;
        return Ok(limit);
    }
    if let Some(root) = v2_root(fs) {
        let instances = root.join(INSTANCES_CGROUP);
        make_cgroup(fs, &instances)?;
        write_cgroup_file(fs, &instances.join("memory.max"), &limit.to_string())?;
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
///
/// On a unified host under systemd the cgroup steps happen only inside the
/// delegated subtree (see [`crate::host::layout`]); `nimbus up` outside one
/// is refused, since its instances would have nowhere to go.
pub fn protect_daemon(reserve: Option<Option<u64>>) -> Result<Option<u64>, ProtectError> {
    protect_daemon_on(
        &HostCgroupFs,
        current().cloned(),
        std::process::id(),
        reserve,
    )
}

fn protect_daemon_on(
    fs: &dyn CgroupFs,
    layout: Result<CgroupLayout, CgroupLayoutError>,
    pid: u32,
    reserve: Option<Option<u64>>,
) -> Result<Option<u64>, ProtectError> {
    match set_own_oom_score_adj_on(fs, DAEMON_OOM_SCORE_ADJ) {
        Ok(()) => tracing::info!(oom_score_adj = DAEMON_OOM_SCORE_ADJ, "OOM protection set"),
        Err(e) => tracing::warn!(error = %e, "running without OOM protection"),
    }
    let layout = match layout {
        Ok(layout) => layout,
        // A server without instances writes no cgroup anyway.
        Err(e) if reserve.is_none() => {
            tracing::warn!(error = %e, "control plane left in the cgroup it was started in");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if layout.delegated.is_some() {
        return protect_delegated_on(fs, &layout, reserve);
    }
    match join_system_cpu_cgroup_on(fs, pid) {
        Ok(dir) => tracing::info!(cgroup = %dir.display(), "control plane in its own CPU cgroup"),
        Err(e) => tracing::warn!(error = %e, "control plane shares the CPU cgroup of its parent"),
    }
    let Some(reserve) = reserve else {
        return Ok(None);
    };
    match reserve_host_memory_on(fs, reserve) {
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

/// [`protect_daemon_on`] inside a delegated subtree: prepares it (the
/// root's processes into `supervisor`, controllers enabled), weighs
/// `supervisor` above `instances` where the cpu controller is there, and
/// limits `instances` to the host's memory minus the reserve. Every write
/// is checked: a daemon that cannot place instances must not start.
fn protect_delegated_on(
    fs: &dyn CgroupFs,
    layout: &CgroupLayout,
    reserve: Option<Option<u64>>,
) -> Result<Option<u64>, ProtectError> {
    let Some(reserve) = reserve else {
        return Ok(None);
    };
    let Some(instances) = prepare_delegated_on(fs, layout)? else {
        return Ok(None);
    };
    let supervisor = instances.with_file_name(SUPERVISOR_LEAF);
    if fs.exists(&supervisor.join("cpu.weight")) {
        write_cgroup_file(
            fs,
            &supervisor.join("cpu.weight"),
            &SYSTEM_CPU_WEIGHT.to_string(),
        )?;
        write_cgroup_file(
            fs,
            &instances.join("cpu.weight"),
            &INSTANCES_CPU_WEIGHT.to_string(),
        )?;
    }
    let total = host_memory_bytes_on(fs)?;
    let limit = instances_memory_limit(
        total,
        reserve.unwrap_or_else(|| default_memory_reserve(total)),
    )?;
    write_cgroup_file(fs, &instances.join("memory.max"), &limit.to_string())?;
    tracing::info!(
        cgroup = %instances.display(),
        instances_memory_limit_bytes = limit,
        "instances live in the delegated cgroup subtree"
    );
    Ok(Some(limit))
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

    use crate::host::cgroupfs::FakeCgroupFs;
    use crate::host::layout::detect_on;

    const GIB: u64 = 1 << 30;

    /// A host with `memory_gib` of memory and v1 cpu and memory hierarchies.
    fn v1_host(memory_gib: u64) -> FakeCgroupFs {
        let fs = FakeCgroupFs::new();
        fs.add_file(
            "/proc/meminfo",
            &format!("MemTotal:       {} kB\nMemFree: 1 kB\n", memory_gib << 20),
        );
        fs.add_file("/proc/self/oom_score_adj", "0\n");
        fs.add_cgroup("/sys/fs/cgroup/cpu", &[1]);
        fs.add_cgroup("/sys/fs/cgroup/memory", &[1]);
        fs
    }

    fn v2_host(memory_gib: u64) -> FakeCgroupFs {
        let fs = FakeCgroupFs::new();
        fs.add_file(
            "/proc/meminfo",
            &format!("MemTotal: {} kB\n", memory_gib << 20),
        );
        fs.add_cgroup("/sys/fs/cgroup", &[1]);
        fs.add_file("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
        fs
    }

    #[test]
    fn the_instances_parent_is_limited_to_the_host_memory_minus_the_reserve() {
        let fs = v1_host(24);
        let limit = reserve_host_memory_on(&fs, None).expect("a limit");
        // A tenth of 24 GiB, rounded down to whole MiB.
        let expected = (24 * GIB - 24 * GIB / 10) / (1 << 20) * (1 << 20);
        assert_eq!(limit, expected);
        assert_eq!(
            fs.file("/sys/fs/cgroup/memory/nimbus/memory.limit_in_bytes"),
            Some(expected.to_string())
        );
        // An operator's reserve replaces the default.
        let limit = reserve_host_memory_on(&fs, Some(4 * GIB)).expect("a limit");
        assert_eq!(limit, 20 * GIB);
        // Small hosts keep at least 1 GiB.
        assert_eq!(
            reserve_host_memory_on(&v1_host(4), None).ok(),
            Some(3 * GIB)
        );
    }

    #[test]
    fn a_kernel_refusing_use_hierarchy_still_gets_the_limit() {
        let fs = v1_host(8);
        fs.tree().refused.insert(PathBuf::from(
            "/sys/fs/cgroup/memory/nimbus/memory.use_hierarchy",
        ));
        assert_eq!(reserve_host_memory_on(&fs, Some(GIB)).ok(), Some(7 * GIB));
    }

    #[test]
    fn v2_hosts_get_memory_max_and_cpu_weight_where_delegated() {
        let fs = v2_host(8);
        assert_eq!(reserve_host_memory_on(&fs, Some(GIB)).ok(), Some(7 * GIB));
        assert_eq!(
            fs.file("/sys/fs/cgroup/nimbus/memory.max"),
            Some((7 * GIB).to_string())
        );
        // No cpu controller delegated: the move still happens, no weight.
        let dir = join_system_cpu_cgroup_on(&fs, 4242).expect("joined");
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/nimbus-system"));
        assert_eq!(
            fs.file("/sys/fs/cgroup/nimbus-system/cgroup.procs"),
            Some("4242\n".into())
        );
        assert!(fs.file("/sys/fs/cgroup/nimbus-system/cpu.weight").is_none());
        fs.add_file("/sys/fs/cgroup/nimbus-system/cpu.weight", "100");
        join_system_cpu_cgroup_on(&fs, 4242).expect("joined");
        assert_eq!(
            fs.file("/sys/fs/cgroup/nimbus-system/cpu.weight"),
            Some("400".into())
        );
        assert_eq!(
            fs.file("/sys/fs/cgroup/nimbus/cpu.weight"),
            Some("100".into())
        );
    }

    #[test]
    fn the_control_plane_weighs_four_times_the_instances_on_v1() {
        let fs = v1_host(8);
        let dir = join_system_cpu_cgroup_on(&fs, 4242).expect("joined");
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/cpu/nimbus-system"));
        assert_eq!(
            fs.file("/sys/fs/cgroup/cpu/nimbus-system/cpu.shares"),
            Some("4096".into())
        );
        assert_eq!(
            fs.file("/sys/fs/cgroup/cpu/nimbus/cpu.shares"),
            Some("1024".into())
        );
        assert_eq!(
            fs.file("/sys/fs/cgroup/cpu/nimbus-system/cgroup.procs"),
            Some("4242\n".into())
        );
    }

    #[test]
    fn a_daemon_is_protected_by_every_layer_the_host_allows() {
        let fs = v1_host(16);
        let limit =
            protect_daemon_on(&fs, detect_on(&fs, None), 4242, Some(None)).expect("protected");
        assert!(limit.is_some());
        assert_eq!(fs.file("/proc/self/oom_score_adj"), Some("-900".into()));
        assert!(fs
            .file("/sys/fs/cgroup/cpu/nimbus-system/cpu.shares")
            .is_some());

        // No root: OOM score and cgroups refused, the default reserve is
        // skipped, the daemon still starts.
        let bare = FakeCgroupFs::new();
        bare.add_file("/proc/meminfo", "MemTotal: 16777216 kB\n");
        bare.tree()
            .refused
            .insert(PathBuf::from("/proc/self/oom_score_adj"));
        assert_eq!(
            protect_daemon_on(&bare, detect_on(&bare, None), 1, Some(None)).ok(),
            Some(None)
        );
        assert_eq!(
            protect_daemon_on(&bare, detect_on(&bare, None), 1, None).ok(),
            Some(None)
        );
        // A reserve the operator asked for must hold.
        let err = protect_daemon_on(&bare, detect_on(&bare, None), 1, Some(Some(GIB))).unwrap_err();
        assert!(err.to_string().contains("/sys/fs/cgroup"), "{err}");
        let small = v1_host(1);
        let err =
            protect_daemon_on(&small, detect_on(&small, None), 1, Some(Some(2 * GIB))).unwrap_err();
        assert!(err.to_string().contains("--reserved-memory"), "{err}");
    }

    #[test]
    fn workloads_always_rank_above_their_supervisor_for_the_oom_killer() {
        let fs = FakeCgroupFs::new();
        for (own, workload) in [("-900", 0), ("-1000", 0), ("0", 500), ("700", 700)] {
            fs.add_file("/proc/self/oom_score_adj", own);
            assert_eq!(
                workload_oom_score_adj_on(&fs),
                workload,
                "supervisor at {own}"
            );
        }
        // Unreadable: treated as unprotected.
        assert_eq!(workload_oom_score_adj_on(&FakeCgroupFs::new()), 500);
    }

    /// A unified host under systemd; the daemon in `nimbus.service`, the
    /// subtree `nimbus-cgroup.service` delegated with its holder (pid 300).
    fn v2_systemd_host(memory_gib: u64) -> FakeCgroupFs {
        let fs = v2_host(memory_gib);
        fs.add_file("/proc/self/oom_score_adj", "0\n");
        fs.add_file("/proc/1/comm", "systemd\n");
        fs.add_file("/proc/self/cgroup", "0::/system.slice/nimbus.service\n");
        let unit = "/sys/fs/cgroup/system.slice/nimbus-cgroup.service";
        fs.add_cgroup(unit, &[300]);
        fs.add_file(format!("{unit}/cgroup.controllers"), "cpu memory pids\n");
        fs.tree().delegated.insert(PathBuf::from(unit));
        fs
    }

    #[test]
    fn under_systemd_the_daemon_writes_only_inside_its_delegated_subtree() {
        let fs = v2_systemd_host(8);
        let layout = detect_on(&fs, Some("/system.slice/nimbus-cgroup.service"));
        let limit = protect_daemon_on(&fs, layout, 4242, Some(Some(GIB))).expect("protected");
        assert_eq!(limit, Some(7 * GIB));
        let unit = "/sys/fs/cgroup/system.slice/nimbus-cgroup.service";
        assert_eq!(
            fs.file(format!("{unit}/instances/memory.max")),
            Some((7 * GIB).to_string())
        );
        assert!(!fs.is_dir(Path::new("/sys/fs/cgroup/nimbus")));
        assert!(!fs.is_dir(Path::new("/sys/fs/cgroup/nimbus-system")));
        let outside: Vec<_> = fs
            .tree()
            .writes
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| p.starts_with("/sys") && !p.starts_with(unit))
            .collect();
        assert!(outside.is_empty(), "wrote outside the subtree: {outside:?}");
    }

    #[test]
    fn nimbus_up_outside_a_delegated_cgroup_is_refused_and_a_server_is_not() {
        let fs = v2_systemd_host(8);
        fs.add_file(
            "/proc/self/cgroup",
            "0::/user.slice/user-0.slice/session-1.scope\n",
        );
        let err = protect_daemon_on(&fs, detect_on(&fs, None), 1, Some(None)).unwrap_err();
        assert!(
            err.to_string().contains("systemd-run -p Delegate=yes"),
            "{err}"
        );
        assert_eq!(
            protect_daemon_on(&fs, detect_on(&fs, None), 1, None).ok(),
            Some(None)
        );
        assert!(!fs.is_dir(Path::new("/sys/fs/cgroup/nimbus-system")));
    }
}
