//! Readers of the host's mount and cgroup tables that fail loudly: a
//! missing file, instance or process is a panic that says what was found,
//! never an empty value. Shared by `tests/common` and the agent's
//! `container_support` (included there with `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A mounted cgroup hierarchy: v1 (one or more controllers each) or the
/// unified v2 one.
#[derive(Debug, Clone)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// The cgroup path mounted there (usually `/`).
    pub root: String,
    /// v1 controllers (`name=systemd` included); empty for v2.
    pub controllers: Vec<String>,
    pub unified: bool,
}

/// Every cgroup hierarchy mounted in this mount namespace (v1, hybrid or
/// unified hosts alike).
pub fn cgroup_mounts() -> Vec<CgroupMount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            let unified = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = if unified {
                Vec::new()
            } else {
                options
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("xattr"))
                    .map(str::to_string)
                    .collect()
            };
            Some(CgroupMount {
                mount_point: PathBuf::from(left.get(4)?),
                root: left.get(3)?.to_string(),
                controllers,
                unified,
            })
        })
        .collect()
}

impl CgroupMount {
    /// The directory of cgroup `path` (as in /proc/PID/cgroup) here.
    fn dir_of(&self, path: &str) -> PathBuf {
        let relative = path
            .strip_prefix(self.root.trim_end_matches('/'))
            .unwrap_or(path)
            .trim_start_matches('/');
        self.mount_point.join(relative)
    }
}

/// The hierarchy that holds `controller`'s files: the v1 mount of that
/// controller, or else the unified one (v2 and the v2 half of hybrid hosts).
pub fn cgroup_mount_for(controller: &str) -> CgroupMount {
    let mounts = cgroup_mounts();
    mounts
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == controller))
        .or_else(|| mounts.iter().find(|m| m.unified))
        .cloned()
        .unwrap_or_else(|| panic!("no cgroup hierarchy mounted for {controller}: {mounts:?}"))
}

/// The cgroup directory whose `controller` files govern process `pid`, on
/// v1, hybrid or unified hosts. Panics, quoting /proc/PID/cgroup, when the
/// process or its cgroup is gone or the controller is not enabled there.
pub fn cgroup_dir_of(pid: i64, controller: &str) -> PathBuf {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/cgroup ({e}): is process {pid} gone?"));
    let mount = cgroup_mount_for(controller);
    let line = membership.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if mount.unified {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_string())
    });
    let path = line.unwrap_or_else(|| {
        panic!("process {pid} is in no {controller} cgroup; /proc/{pid}/cgroup:\n{membership}")
    });
    let dir = mount.dir_of(&path);
    if mount.unified {
        let enabled = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_else(|e| {
            panic!(
                "cannot read {}/cgroup.controllers ({e}); /proc/{pid}/cgroup:\n{membership}",
                dir.display()
            )
        });
        assert!(
            enabled.split_whitespace().any(|c| c == controller),
            "the {controller} controller is not enabled in {} (it has: {enabled}); /proc/{pid}/cgroup:\n{membership}",
            dir.display()
        );
    }
    dir
}

/// The trimmed contents of `file` in process `pid`'s `controller` cgroup
/// ([`cgroup_dir_of`]). A missing file is a failure, never an empty value.
pub fn cgroup_file(pid: i64, controller: &str, file: &str) -> String {
    let dir = cgroup_dir_of(pid, controller);
    read_cgroup_file(&dir.join(file))
}

/// The trimmed contents of `file` in cgroup `path` (such as `/nimbus`) of
/// the hierarchy holding `controller`, on v1, hybrid or unified hosts.
pub fn cgroup_path_file(controller: &str, path: &str, file: &str) -> String {
    read_cgroup_file(&cgroup_mount_for(controller).dir_of(path).join(file))
}

pub fn read_cgroup_file(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read cgroup file {} ({e})", path.display()))
        .trim()
        .to_string()
}

/// A cgroup file read as a number; a missing or unparsable file fails.
pub fn cgroup_number(pid: i64, controller: &str, file: &str) -> u64 {
    let text = cgroup_file(pid, controller, file);
    text.parse().unwrap_or_else(|e| {
        panic!("{controller} {file} of process {pid} is {text:?}, not a number: {e}")
    })
}

/// One line of /proc/PID/mountinfo, the fields the masking tests look at.
#[derive(Debug)]
pub struct MountLine {
    /// The path inside the mounted filesystem that is mounted (for a bind
    /// mount of a file, that file: `/null` for /dev/null).
    pub root: String,
    pub mount_point: String,
    pub options: Vec<String>,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo text (proc(5)); lines it cannot read are a failure.
pub fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (left, right) = l
                .split_once(" - ")
                .unwrap_or_else(|| panic!("not a mountinfo line: {l:?}"));
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            assert!(
                left.len() >= 6 && right.len() >= 2,
                "short mountinfo line: {l:?}"
            );
            MountLine {
                root: left[3].to_string(),
                mount_point: left[4].to_string(),
                options: left[5].split(',').map(str::to_string).collect(),
                fstype: right[0].to_string(),
                source: right[1].to_string(),
            }
        })
        .collect()
}

/// Asserts the container's masked and read-only paths from its own
/// mountinfo: `/proc/keys` and `/proc/timer_list` have the null device bound
/// over them, `/proc/sys` is mounted read-only and `/sys/firmware` is a
/// tmpfs. The last mount of a path is the one a process sees.
pub fn assert_masked_mounts(mountinfo: &str) {
    let mounts = parse_mountinfo(mountinfo);
    let top = |path: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == path)
            .unwrap_or_else(|| {
                panic!("nothing is mounted on {path} in the container:\n{mountinfo}")
            })
    };
    for file in ["/proc/keys", "/proc/timer_list"] {
        let m = top(file);
        assert!(
            m.root.ends_with("/null") && m.fstype != "proc",
            "{file} must have /dev/null bound over it, but it is {m:?}"
        );
    }
    let sys = top("/proc/sys");
    assert!(
        sys.options.iter().any(|o| o == "ro"),
        "/proc/sys must be mounted read-only: {sys:?}"
    );
    let firmware = top("/sys/firmware");
    assert_eq!(
        firmware.fstype, "tmpfs",
        "/sys/firmware must be a tmpfs: {firmware:?}"
    );
}
