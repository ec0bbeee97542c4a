//! The tracking cgroup of a workload the shim starts itself.
//!
//! A workload started by a runtime that manages its own cgroups needs none
//! of this; one the shim starts as a plain child (an emulator) joins the
//! instance's cgroups before exec, so that cleanup finds and kills it by
//! membership, as it does for any other instance, even when its shim died.

use std::path::{Path, PathBuf};

use super::ShimError;
use crate::host::cgroupfs::{CgroupFs, HostCgroupFs};
use crate::host::layout::{current, CgroupLayout, CGROUP_ROOT};

/// v1 hierarchies a workload started by the shim joins: pids to be found
/// and killed by membership, cpu and memory so that it runs under the
/// instances' parent (its CPU weight and the host's memory reserve) rather
/// than in the control plane's cgroup it was spawned from.
const TRACKING_V1_CONTROLLERS: [&str; 4] = ["pids", "cpu", "cpuacct", "memory"];

/// Makes the instance's cgroups (`nimbus/<id>` in the v1 pids, cpu, cpuacct
/// and memory hierarchies, under the v2 root, or in the delegated subtree
/// under systemd) for a workload the shim starts itself, with `pids.max`
/// set, and returns their `cgroup.procs` paths: the workload joins them
/// before exec, so cleanup finds and kills it by membership even when its
/// supervisor is gone. The first path is the pids cgroup, which must be
/// joined; the others are best effort.
pub fn create_tracking_cgroup(
    instance_id: &str,
    pids_max: u32,
) -> Result<Vec<std::ffi::CString>, ShimError> {
    let layout = current().map_err(|e| ShimError::Cgroup(e.to_string()))?;
    create_tracking_cgroup_on(&HostCgroupFs, layout, instance_id, pids_max)?
        .iter()
        .map(|p| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|e| ShimError::Cgroup(format!("{}: {e}", p.display())))
        })
        .collect()
}

/// [`create_tracking_cgroup`] on the cgroup files `fs`: the `cgroup.procs`
/// paths, pids cgroup first. Every write is checked: a cgroup without its
/// `pids.max` would let a runaway emulator fork without bound.
pub fn create_tracking_cgroup_on(
    fs: &dyn CgroupFs,
    layout: &CgroupLayout,
    instance_id: &str,
    pids_max: u32,
) -> Result<Vec<PathBuf>, ShimError> {
    let cgroup = layout.instance_cgroup(instance_id);
    let relative = cgroup.strip_prefix("/").unwrap_or(&cgroup);
    let v1_pids = Path::new(CGROUP_ROOT).join("pids");
    let dirs: Vec<PathBuf> =
        if layout.delegated.is_none() && fs.exists(&v1_pids.join("cgroup.procs")) {
            TRACKING_V1_CONTROLLERS
                .iter()
                .map(|c| Path::new(CGROUP_ROOT).join(c))
                .filter(|h| fs.exists(&h.join("cgroup.procs")))
                .map(|h| h.join(relative))
                .collect()
        } else {
            vec![Path::new(CGROUP_ROOT).join(relative)]
        };
    let mut procs = Vec::new();
    for dir in &dirs {
        fs.create_dir_all(dir)
            .map_err(|e| ShimError::Cgroup(format!("create {}: {e}", dir.display())))?;
        procs.push(dir.join("cgroup.procs"));
    }
    if let Some(pids_dir) = dirs.first() {
        let file = pids_dir.join("pids.max");
        fs.write(&file, &pids_max.to_string()).map_err(|e| {
            ShimError::Cgroup(format!(
                "write {pids_max} to {}: {e}; is the pids controller enabled for this cgroup?",
                file.display()
            ))
        })?;
    }
    Ok(procs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroupfs::FakeCgroupFs;
    use crate::host::layout::CgroupMode;

    #[test]
    fn v1_tracking_joins_each_hierarchy_with_pids_first_and_sets_pids_max() {
        let fs = FakeCgroupFs::new();
        for c in ["memory", "pids", "cpu"] {
            fs.add_cgroup(format!("/sys/fs/cgroup/{c}"), &[1]);
        }
        let procs =
            create_tracking_cgroup_on(&fs, &CgroupLayout::legacy(CgroupMode::Hybrid), "vm-1", 4096)
                .expect("made");
        assert_eq!(
            procs,
            vec![
                PathBuf::from("/sys/fs/cgroup/pids/nimbus/vm-1/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/cpu/nimbus/vm-1/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/memory/nimbus/vm-1/cgroup.procs"),
            ]
        );
        assert_eq!(
            fs.file("/sys/fs/cgroup/pids/nimbus/vm-1/pids.max")
                .as_deref(),
            Some("4096")
        );
    }

    #[test]
    fn delegated_tracking_is_one_cgroup_in_the_subtree() {
        let fs = FakeCgroupFs::new();
        fs.add_cgroup("/sys/fs/cgroup/system.slice/n.service/instances", &[]);
        let layout = CgroupLayout {
            mode: CgroupMode::Unified,
            delegated: Some(PathBuf::from("/system.slice/n.service")),
        };
        let procs = create_tracking_cgroup_on(&fs, &layout, "vm-1", 64).expect("made");
        assert_eq!(
            procs,
            vec![PathBuf::from(
                "/sys/fs/cgroup/system.slice/n.service/instances/vm-1/cgroup.procs"
            )]
        );
        assert_eq!(
            fs.file("/sys/fs/cgroup/system.slice/n.service/instances/vm-1/pids.max")
                .as_deref(),
            Some("64")
        );
    }

    #[test]
    fn a_refused_pids_max_is_an_error_naming_the_file() {
        let fs = FakeCgroupFs::new();
        let file = PathBuf::from("/sys/fs/cgroup/nimbus/vm-1/pids.max");
        fs.tree().refused.insert(file.clone());
        let err = create_tracking_cgroup_on(
            &fs,
            &CgroupLayout::legacy(CgroupMode::Unified),
            "vm-1",
            4096,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/sys/fs/cgroup/nimbus/vm-1/pids.max"), "{err}");
    }
}
