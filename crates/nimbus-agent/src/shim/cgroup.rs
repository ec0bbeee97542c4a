//! The tracking cgroup of a workload the shim starts itself.
//!
//! A workload started by a runtime that manages its own cgroups needs none
//! of this; one the shim starts as a plain child (an emulator) joins the
//! instance's cgroups before exec, so that cleanup finds and kills it by
//! membership, as it does for any other instance, even when its shim died.

use std::path::{Path, PathBuf};

use super::ShimError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 hierarchies a workload started by the shim joins: pids to be found
/// and killed by membership, cpu and memory so that it runs under the
/// instances' parent (its CPU weight and the host's memory reserve) rather
/// than in the control plane's cgroup it was spawned from.
const TRACKING_V1_CONTROLLERS: [&str; 4] = ["pids", "cpu", "cpuacct", "memory"];

/// Makes the instance's cgroups (`nimbus/<id>` in the v1 pids, cpu, cpuacct
/// and memory hierarchies, or under the v2 root) for a workload the shim
/// starts itself, with `pids.max` set, and returns their `cgroup.procs`
/// paths: the workload joins them before exec, so cleanup finds and kills
/// it by membership even when its supervisor is gone. The first path is the
/// pids cgroup, which must be joined; the others are best effort.
pub fn create_tracking_cgroup(
    instance_id: &str,
    pids_max: u32,
) -> Result<Vec<std::ffi::CString>, ShimError> {
    let relative = Path::new("nimbus").join(instance_id);
    let v1_pids = Path::new(CGROUP_ROOT).join("pids");
    let dirs: Vec<PathBuf> = if v1_pids.join("cgroup.procs").exists() {
        TRACKING_V1_CONTROLLERS
            .iter()
            .map(|c| Path::new(CGROUP_ROOT).join(c))
            .filter(|h| h.join("cgroup.procs").exists())
            .map(|h| h.join(&relative))
            .collect()
    } else {
        vec![Path::new(CGROUP_ROOT).join(&relative)]
    };
    let mut procs = Vec::new();
    for dir in &dirs {
        std::fs::create_dir_all(dir)
            .map_err(|e| ShimError::Cgroup(format!("create {}: {e}", dir.display())))?;
        procs.push(
            std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes())
                .map_err(|e| ShimError::Cgroup(e.to_string()))?,
        );
    }
    if let Some(pids_dir) = dirs.first() {
        let _ = std::fs::write(pids_dir.join("pids.max"), pids_max.to_string());
    }
    Ok(procs)
}
