//! The instance's cgroup directories, read and removed without libcontainer's state
//! (crash recovery has none) and inspected for OOM kills.
//!
//! libcontainer creates the instance's cgroup ([`CgroupLayout::instance_cgroup`]:
//! `/nimbus/<instance_id>` in every v1 hierarchy or under the v2 root, or
//! `<delegated>/instances/<instance_id>` under systemd), so the directories are
//! found by name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cgroupfs::{CgroupFs, HostCgroupFs};
use super::layout::{current_or_legacy, CgroupLayout, CGROUP_ROOT};
use crate::shim::ShimError;

/// Every existing cgroup directory of the instance, across hierarchies.
pub fn instance_cgroup_dirs(instance_id: &str) -> Vec<PathBuf> {
    instance_cgroup_dirs_on(&HostCgroupFs, &current_or_legacy(), instance_id)
}

/// [`instance_cgroup_dirs`] on the cgroup files `fs`, for the layout `layout`.
pub fn instance_cgroup_dirs_on(
    fs: &dyn CgroupFs,
    layout: &CgroupLayout,
    instance_id: &str,
) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let cgroup = layout.instance_cgroup(instance_id);
    let relative = cgroup.strip_prefix("/").unwrap_or(&cgroup);
    let v2 = Path::new(CGROUP_ROOT).join(relative);
    if fs.is_dir(&v2) {
        dirs.push(v2);
    }
    if layout.delegated.is_some() {
        // A unified host: no per-controller hierarchies to look in.
        return dirs;
    }
    if let Ok(entries) = fs.read_dir(Path::new(CGROUP_ROOT)) {
        for entry in entries {
            let dir = entry.join(relative);
            if fs.is_dir(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// How many processes the kernel OOM-killed in the instance's memory cgroup.
pub fn oom_kill_count(instance_id: &str) -> u64 {
    oom_kill_count_on(&HostCgroupFs, &current_or_legacy(), instance_id)
}

/// [`oom_kill_count`] on the cgroup files `fs`: v1 `memory.oom_control`
/// or v2 `memory.events`, whichever the host has.
pub fn oom_kill_count_on(fs: &dyn CgroupFs, layout: &CgroupLayout, instance_id: &str) -> u64 {
    let cgroup = layout.instance_cgroup(instance_id);
    let relative = cgroup.strip_prefix("/").unwrap_or(&cgroup);
    let candidates = [
        Path::new(CGROUP_ROOT)
            .join("memory")
            .join(relative)
            .join("memory.oom_control"),
        Path::new(CGROUP_ROOT).join(relative).join("memory.events"),
    ];
    candidates
        .iter()
        .filter_map(|path| fs.read(path).ok())
        .map(|text| {
            text.lines()
                .filter_map(|line| line.strip_prefix("oom_kill "))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// In a delegated subtree, makes the instance's cgroup before libcontainer
/// runs: libcontainer 0.7 joins an existing cgroup as it is, but for a new
/// one it enables every controller of the v2 root in each ancestor's
/// `cgroup.subtree_control`, from the root down, which would write into
/// cgroups systemd owns. The controllers the instance needs are already
/// enabled in `instances/` ([`super::layout::prepare_delegated`]). A no-op
/// for the historical layout, where libcontainer makes the cgroups itself.
pub fn make_delegated_instance_cgroup(instance_id: &str) -> Result<(), ShimError> {
    make_delegated_instance_cgroup_on(&HostCgroupFs, &current_or_legacy(), instance_id)
}

/// [`make_delegated_instance_cgroup`] on the cgroup files `fs`.
pub fn make_delegated_instance_cgroup_on(
    fs: &dyn CgroupFs,
    layout: &CgroupLayout,
    instance_id: &str,
) -> Result<(), ShimError> {
    if layout.delegated.is_none() {
        return Ok(());
    }
    let cgroup = layout.instance_cgroup(instance_id);
    let dir = Path::new(CGROUP_ROOT).join(cgroup.strip_prefix("/").unwrap_or(&cgroup));
    fs.create_dir_all(&dir)
        .map_err(|e| ShimError::Cgroup(format!("create {}: {e}", dir.display())))
}

/// Pids still in any of the instance's cgroups.
pub fn instance_pids_on(fs: &dyn CgroupFs, layout: &CgroupLayout, instance_id: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = instance_cgroup_dirs_on(fs, layout, instance_id)
        .iter()
        .filter_map(|dir| fs.read(&dir.join("cgroup.procs")).ok())
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
    kill_and_remove_on(&HostCgroupFs, &current_or_legacy(), instance_id, timeout)
}

/// [`kill_and_remove`] on the cgroup files `fs`.
pub fn kill_and_remove_on(
    fs: &dyn CgroupFs,
    layout: &CgroupLayout,
    instance_id: &str,
    timeout: Duration,
) -> Result<(), ShimError> {
    let deadline = Instant::now() + timeout;
    loop {
        for pid in instance_pids_on(fs, layout, instance_id) {
            fs.kill(pid);
        }
        let mut left = Vec::new();
        for dir in instance_cgroup_dirs_on(fs, layout, instance_id) {
            if fs.remove_dir(&dir).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroupfs::FakeCgroupFs;
    use crate::host::layout::CgroupMode;

    fn v1() -> CgroupLayout {
        CgroupLayout::legacy(CgroupMode::V1)
    }

    const ID: &str = "inst-1";

    /// A v1 host: one hierarchy per controller, the instance in some.
    fn v1_host(pids: &[i32]) -> FakeCgroupFs {
        let fs = FakeCgroupFs::new();
        for c in ["pids", "cpu", "memory", "freezer"] {
            fs.add_cgroup(format!("{CGROUP_ROOT}/{c}"), &[1]);
        }
        for c in ["pids", "memory"] {
            fs.add_cgroup(format!("{CGROUP_ROOT}/{c}/nimbus/{ID}"), pids);
        }
        fs.add_cgroup(format!("{CGROUP_ROOT}/pids/nimbus/other"), &[99]);
        fs
    }

    #[test]
    fn an_instance_has_its_directory_in_each_hierarchy_that_holds_it() {
        let fs = v1_host(&[]);
        let mut dirs = instance_cgroup_dirs_on(&fs, &v1(), ID);
        dirs.sort();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/nimbus/inst-1"),
                PathBuf::from("/sys/fs/cgroup/pids/nimbus/inst-1"),
            ]
        );
        let v2 = FakeCgroupFs::new();
        v2.add_cgroup(format!("{CGROUP_ROOT}/nimbus/{ID}"), &[]);
        assert_eq!(
            instance_cgroup_dirs_on(&v2, &CgroupLayout::legacy(CgroupMode::Unified), ID),
            vec![PathBuf::from("/sys/fs/cgroup/nimbus/inst-1")],
            "v2: one directory under the root"
        );
        assert!(instance_cgroup_dirs_on(&FakeCgroupFs::new(), &v1(), ID).is_empty());
    }

    #[test]
    fn pids_are_gathered_once_across_hierarchies() {
        let fs = v1_host(&[42, 7]);
        assert_eq!(instance_pids_on(&fs, &v1(), ID), vec![7, 42]);
    }

    #[test]
    fn kill_and_remove_kills_only_the_instance_and_removes_its_directories() {
        let fs = v1_host(&[42, 7]);
        kill_and_remove_on(&fs, &v1(), ID, Duration::from_secs(1)).expect("removed");
        assert!(instance_cgroup_dirs_on(&fs, &v1(), ID).is_empty());
        let mut killed = fs.tree().killed.clone();
        killed.sort();
        killed.dedup();
        assert_eq!(killed, vec![7, 42], "never another instance's process");
        assert!(fs
            .tree()
            .dirs
            .contains(Path::new("/sys/fs/cgroup/pids/nimbus/other")));
    }

    #[test]
    fn a_process_that_will_not_die_is_reported_with_the_busy_directories() {
        let fs = v1_host(&[42]);
        fs.tree().unkillable.insert(42);
        let err = kill_and_remove_on(&fs, &v1(), ID, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(err.contains("instance inst-1 still busy"), "{err}");
        assert!(err.contains("/sys/fs/cgroup/pids/nimbus/inst-1"), "{err}");
    }

    #[test]
    fn oom_kills_are_counted_from_v1_or_v2() {
        let fs = v1_host(&[]);
        fs.add_file(
            format!("{CGROUP_ROOT}/memory/nimbus/{ID}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        assert_eq!(oom_kill_count_on(&fs, &v1(), ID), 3);
        let v2 = FakeCgroupFs::new();
        v2.add_file(
            format!("{CGROUP_ROOT}/nimbus/{ID}/memory.events"),
            "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n",
        );
        assert_eq!(
            oom_kill_count_on(&v2, &CgroupLayout::legacy(CgroupMode::Unified), ID),
            2
        );
        assert_eq!(oom_kill_count_on(&FakeCgroupFs::new(), &v1(), ID), 0);
    }

    #[test]
    fn in_a_delegated_subtree_only_the_instance_cgroup_there_is_found_killed_and_removed() {
        let layout = CgroupLayout {
            mode: CgroupMode::Unified,
            delegated: Some(PathBuf::from("/system.slice/nimbus-cgroup.service")),
        };
        let dir = "/sys/fs/cgroup/system.slice/nimbus-cgroup.service/instances/inst-1";
        let fs = FakeCgroupFs::new();
        fs.add_cgroup(dir, &[42]);
        fs.add_cgroup("/sys/fs/cgroup/nimbus/inst-1", &[7]);
        fs.add_file(
            format!("{dir}/memory.events"),
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n",
        );
        assert_eq!(
            instance_cgroup_dirs_on(&fs, &layout, ID),
            vec![PathBuf::from(dir)]
        );
        assert_eq!(oom_kill_count_on(&fs, &layout, ID), 1);
        kill_and_remove_on(&fs, &layout, ID, Duration::from_secs(1)).expect("removed");
        make_delegated_instance_cgroup_on(&fs, &layout, ID).expect("made");
        assert!(fs.is_dir(Path::new(dir)), "made before libcontainer runs");
        let writes_before = fs.tree().writes.len();
        make_delegated_instance_cgroup_on(&fs, &v1(), "inst-2").expect("no-op");
        assert_eq!(fs.tree().writes.len(), writes_before);
        assert!(!fs.is_dir(Path::new("/sys/fs/cgroup/nimbus/inst-2")));
        kill_and_remove_on(&fs, &layout, ID, Duration::from_secs(1)).expect("removed");
        assert_eq!(fs.tree().killed, vec![42], "only the subtree's process");
        assert!(!fs.is_dir(Path::new(dir)));
        assert!(
            fs.is_dir(Path::new(
                "/sys/fs/cgroup/system.slice/nimbus-cgroup.service/instances"
            )),
            "the parent stays for the next instance"
        );
    }
}
