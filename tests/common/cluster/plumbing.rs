//! Host plumbing of a cluster: commands, the script that puts an agent in
//! its own namespaces and cgroup, cgroups made for it, and bind mounts into
//! a container's mount namespace.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::cgroup_mounts;

/// Run `cmd`, panicking with its output when it fails.
pub(super) fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(super) fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// The script that puts an agent into its cgroup, then into new mount and
/// cgroup namespaces with its own sysfs, cgroup mounts and `/run/nimbus`.
pub(super) fn agent_script() -> &'static str {
    r#"set -e
for f in $NIMBUS_CLUSTER_CGROUP_PROCS; do echo $$ > "$f"; done
exec unshare --mount --cgroup --propagation private sh -c '
set -e
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
echo "$NIMBUS_CLUSTER_CGROUP_MOUNTS" | while read -r fstype options dir; do
  [ -n "$dir" ] || continue
  mkdir -p "$dir"
  mount -t "$fstype" -o "$options" cgroup "$dir"
done
mkdir -p /run/nimbus
mount -t tmpfs -o mode=755 nimbus-run /run/nimbus
exec "$NIMBUS_EXE" "$@"
' agent-in-namespaces "$@"
"#
}

/// `fstype options mount-point` of each cgroup hierarchy, one a line.
pub(super) fn cgroup_mount_lines() -> String {
    cgroup_mounts()
        .iter()
        .map(|m| {
            let (fstype, options) = if m.unified {
                ("cgroup2", "rw".to_string())
            } else {
                ("cgroup", m.controllers.join(","))
            };
            format!("{fstype} {options} {}", m.mount_point.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Makes cgroup `relative` (and its parents) in every hierarchy; cpuset
/// cgroups get their parent's cpus and memory nodes, or no process could
/// join them.
pub(super) fn make_cgroups(relative: &str) {
    for m in cgroup_mounts() {
        let mut dir = m.mount_point.clone();
        for part in relative.trim_start_matches('/').split('/') {
            let parent = dir.clone();
            dir = dir.join(part);
            if dir.exists() {
                continue;
            }
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
            if m.controllers.iter().any(|c| c == "cpuset") {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(parent.join(f)).expect("parent cpuset");
                    std::fs::write(dir.join(f), value.trim())
                        .unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()));
                }
            }
        }
    }
}

pub(super) fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// Bind-mounts the host directory `source` at `target` (an existing
/// directory) inside the mount namespace of process `pid`, e.g. a
/// container's: Nimbus has no host-path mounts (a tenant must never reach
/// the host's files), so a test that needs a directory shared by containers
/// on several hosts puts it there itself. The tree is cloned here
/// (`open_tree`) and attached there (`move_mount`) by a child that joined
/// the namespace, as a multi-threaded process cannot.
pub fn mount_into(pid: i64, source: &Path, target: &str) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let src = CString::new(source.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let dst = CString::new(target).map_err(|e| e.to_string())?;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(format!(
            "open_tree {}: {}",
            source.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `tree` is a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("process {pid}'s mount namespace: {e}"))?;
    let (tree_fd, ns_fd) = (tree.as_raw_fd(), ns.as_raw_fd());
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", ":"]);
    // SAFETY: only async-signal-safe syscalls between fork and exec, on fds
    // and C strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let moved = libc::syscall(
                libc::SYS_move_mount,
                tree_fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            );
            if moved != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| {
        format!(
            "mounting {} at {target} in process {pid}'s namespace: {e}",
            source.display()
        )
    })?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("/bin/sh in process {pid}'s namespace: {status}"))
}
