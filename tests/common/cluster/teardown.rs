//! Tearing a cluster down, also after a panic, and checking nothing is
//! left: processes, cgroups, loop devices, network namespaces, mounts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::common::{cgroup_mounts, mounts_under, processes_mentioning};

impl Cluster {
    /// Stops everything the cluster started and removes what it made:
    /// agents and server, every process left in its cgroups (shims and
    /// workloads outlive their agent), the cgroups, the loop devices of its
    /// hosts' disks (freed once their mount namespaces are gone), the
    /// network namespaces (the bridge and veths go with them). Returns what
    /// is still there afterwards.
    fn tear_down(&mut self) -> Vec<String> {
        self.stop_children();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = pids_under(&self.cgroup);
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: killing a process left in this cluster's cgroups.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_cgroups(&self.cgroup);
        let dir = self.dir.path().to_string_lossy().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !loop_devices_of(&dir).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut left: Vec<String> = loop_devices_of(&dir)
            .into_iter()
            .map(|(dev, file)| {
                let _ = Command::new("losetup").args(["-d", &dev]).status();
                format!("loop device {dev} on {file}")
            })
            .collect();
        for ns in self.netns_made.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            if Path::new("/run/netns").join(&ns).exists() {
                left.push(format!("network namespace {ns}"));
            }
        }
        left.extend(
            cgroup_dirs_under(&self.cgroup)
                .iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
        left.extend(
            processes_mentioning(&dir)
                .iter()
                .map(|pid| format!("process {pid} naming {dir}")),
        );
        left.extend(
            mounts_under(self.dir.path())
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        left
    }

    /// Tears the cluster down and fails on anything left behind.
    pub fn assert_torn_down(mut self) {
        let left = self.tear_down();
        assert!(left.is_empty(), "the cluster left behind: {left:#?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.tear_down();
    }
}

/// `(device, backing file)` of the loop devices backed by files under `dir`.
fn loop_devices_of(dir: &str) -> Vec<(String, String)> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(dev, file)| (dev.trim().to_string(), file.trim().to_string()))
        .filter(|(_, file)| file.starts_with(dir))
        .collect()
}

/// Every cgroup directory at or below `relative`, deepest first.
fn cgroup_dirs_under(relative: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    for m in cgroup_mounts() {
        let top = m.mount_point.join(relative.trim_start_matches('/'));
        if top.exists() {
            walk(&top, &mut out);
        }
    }
    out
}

fn pids_under(relative: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroup_dirs_under(relative)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn remove_cgroups(relative: &str) {
    for dir in cgroup_dirs_under(relative) {
        let _ = std::fs::remove_dir(&dir);
    }
}
