//! Where Nimbus's cgroups live on this host: the cgroup mode (v1, hybrid,
//! or unified v2) and, on a unified host run by systemd, the subtree
//! delegated to Nimbus.
//!
//! v1 and hybrid hosts (and a unified host without systemd, where nobody
//! else owns the tree) keep the historical layout: `nimbus/<id>` under
//! each hierarchy's root, the control plane in `nimbus-system`.
//!
//! Under systemd on a unified host the tree belongs to systemd, except a
//! subtree it delegates (`Delegate=yes`, marked with the `trusted.delegate`
//! extended attribute). Nimbus writes only there:
//! - `<delegated>/supervisor`: whatever was in the subtree's root (the
//!   daemon itself under `systemd-run -p Delegate=yes`, or the holder
//!   process of `nimbus-cgroup.service`), moved there because a cgroup that
//!   hands controllers to its children may hold no process itself;
//! - `<delegated>/instances/<id>`: one cgroup per instance, under a parent
//!   that carries the memory reserve of all instances together.
//!
//! The subtree is named by `NIMBUS_CGROUP_ROOT` (set by `nimbus.service` to
//! the holder unit's cgroup, which systemd never restarts: systemd 252
//! cannot start a service again in a cgroup that hands out controllers, so
//! the daemon's own unit must not be that cgroup), or else it is the
//! calling process's own cgroup (a shim is born in `…/supervisor`, whose
//! parent is the subtree).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::cgroupfs::{CgroupFs, HostCgroupFs};

/// Where cgroupfs is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The environment variable naming the delegated subtree, relative to the
/// unified hierarchy's root (e.g. `/system.slice/nimbus-cgroup.service`).
pub const CGROUP_ROOT_ENV: &str = "NIMBUS_CGROUP_ROOT";
/// The leaf that holds the processes found in the delegated subtree's root.
pub const SUPERVISOR_LEAF: &str = "supervisor";
/// The parent of the instances' cgroups inside the delegated subtree.
pub const INSTANCES_LEAF: &str = "instances";
/// The parent of every instance's cgroup on v1, hybrid and systemd-less v2.
pub const LEGACY_INSTANCES_CGROUP: &str = "nimbus";
/// Controllers Nimbus must have in its delegated subtree.
pub const REQUIRED_CONTROLLERS: [&str; 2] = ["memory", "pids"];
/// Controllers it uses when the subtree has them.
pub const OPTIONAL_CONTROLLERS: [&str; 1] = ["cpu"];

/// How the host mounts cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// One hierarchy per controller.
    V1,
    /// v1 controllers plus an (empty) v2 mount at `unified/`.
    Hybrid,
    /// Only the v2 hierarchy, at the root.
    Unified,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupMode::V1 => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::Unified => "v2",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CgroupLayoutError {
    #[error(
        "cgroup v2 under systemd: the cgroup {cgroup} is not delegated to Nimbus, and Nimbus never writes into cgroups systemd owns; run it through its unit (scripts/up installs nimbus.service) or with `systemd-run -p Delegate=yes nimbus up`"
    )]
    NotDelegated { cgroup: String },
    #[error("cannot read this process's cgroup from /proc/self/cgroup: {0}")]
    OwnCgroup(String),
    #[error(
        "the delegated cgroup {cgroup} lacks the {controller} controller (it has: {available}); give it with `Delegate=yes` in the unit"
    )]
    MissingController {
        cgroup: String,
        controller: &'static str,
        available: String,
    },
    #[error("cannot {what} {path}: {error}; is the cgroup delegated to Nimbus?")]
    Write {
        what: &'static str,
        path: String,
        error: String,
    },
}

/// The cgroup mode and, where systemd owns the tree, the subtree Nimbus
/// may write to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLayout {
    pub mode: CgroupMode,
    /// The delegated subtree, relative to the unified hierarchy's root
    /// (`/system.slice/nimbus-cgroup.service`); `None` for the historical
    /// layout at the hierarchies' roots.
    pub delegated: Option<PathBuf>,
}

impl CgroupLayout {
    /// The historical layout on a host of `mode`.
    pub fn legacy(mode: CgroupMode) -> CgroupLayout {
        CgroupLayout {
            mode,
            delegated: None,
        }
    }

    /// The parent of the instances' cgroups, relative to a hierarchy's root.
    pub fn instances_parent(&self) -> PathBuf {
        match &self.delegated {
            Some(root) => root.join(INSTANCES_LEAF),
            None => Path::new("/").join(LEGACY_INSTANCES_CGROUP),
        }
    }

    /// The cgroup of instance `instance_id`, relative to a hierarchy's root
    /// (libcontainer's `cgroupsPath`).
    pub fn instance_cgroup(&self, instance_id: &str) -> PathBuf {
        self.instances_parent().join(instance_id)
    }

    /// The delegated subtree as a directory under [`CGROUP_ROOT`].
    pub fn delegated_dir(&self) -> Option<PathBuf> {
        self.delegated.as_deref().map(absolute)
    }
}

/// `relative` (a cgroup path as `/proc/self/cgroup` prints it) under
/// [`CGROUP_ROOT`].
pub fn absolute(relative: &Path) -> PathBuf {
    Path::new(CGROUP_ROOT).join(relative.strip_prefix("/").unwrap_or(relative))
}

/// The host's cgroup mode.
pub fn detect_mode_on(fs: &dyn CgroupFs) -> CgroupMode {
    let root = Path::new(CGROUP_ROOT);
    if fs.exists(&root.join("cgroup.controllers")) {
        CgroupMode::Unified
    } else if fs.exists(&root.join("unified")) {
        CgroupMode::Hybrid
    } else {
        CgroupMode::V1
    }
}

/// Whether systemd is PID 1.
fn systemd_is_init(fs: &dyn CgroupFs) -> bool {
    fs.read(Path::new("/proc/1/comm"))
        .is_ok_and(|comm| comm.trim() == "systemd")
}

/// The calling process's cgroup in the unified hierarchy (`0::/path`).
fn own_cgroup(fs: &dyn CgroupFs) -> Result<PathBuf, CgroupLayoutError> {
    let text = fs
        .read(Path::new("/proc/self/cgroup"))
        .map_err(|e| CgroupLayoutError::OwnCgroup(e.to_string()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim()))
        .ok_or_else(|| CgroupLayoutError::OwnCgroup(format!("no \"0::\" line in {text:?}")))
}

/// Finds the layout: the mode, and on a unified host under systemd the
/// delegated subtree (`env_root`, the value of [`CGROUP_ROOT_ENV`], or the
/// caller's own cgroup), refusing one that systemd did not delegate.
pub fn detect_on(
    fs: &dyn CgroupFs,
    env_root: Option<&str>,
) -> Result<CgroupLayout, CgroupLayoutError> {
    let mode = detect_mode_on(fs);
    if mode != CgroupMode::Unified || !systemd_is_init(fs) {
        return Ok(CgroupLayout::legacy(mode));
    }
    let root = match env_root.map(str::trim).filter(|r| !r.is_empty()) {
        Some(root) => PathBuf::from(root),
        None => {
            let own = own_cgroup(fs)?;
            if own.file_name().is_some_and(|n| n == SUPERVISOR_LEAF) {
                own.parent().map(Path::to_path_buf).unwrap_or(own)
            } else {
                own
            }
        }
    };
    if root == Path::new("/") || !fs.is_delegated(&absolute(&root)) {
        return Err(CgroupLayoutError::NotDelegated {
            cgroup: root.display().to_string(),
        });
    }
    Ok(CgroupLayout {
        mode,
        delegated: Some(root),
    })
}

/// The layout of this host, found once per process (the daemon and each
/// shim find the same one: a shim inherits [`CGROUP_ROOT_ENV`] or is born
/// in the daemon's `supervisor` leaf).
pub fn current() -> Result<&'static CgroupLayout, CgroupLayoutError> {
    static LAYOUT: OnceLock<Result<CgroupLayout, CgroupLayoutError>> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            detect_on(
                &HostCgroupFs,
                std::env::var(CGROUP_ROOT_ENV).ok().as_deref(),
            )
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The layout for reading and removing cgroups: [`current`], or the
/// historical one when the host refused (nothing was created then).
pub fn current_or_legacy() -> CgroupLayout {
    current()
        .cloned()
        .unwrap_or_else(|_| CgroupLayout::legacy(detect_mode_on(&HostCgroupFs)))
}

fn write(
    fs: &dyn CgroupFs,
    path: &Path,
    value: &str,
    what: &'static str,
) -> Result<(), CgroupLayoutError> {
    fs.write(path, value).map_err(|e| CgroupLayoutError::Write {
        what,
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

fn make(fs: &dyn CgroupFs, path: &Path) -> Result<(), CgroupLayoutError> {
    fs.create_dir_all(path)
        .map_err(|e| CgroupLayoutError::Write {
            what: "create",
            path: path.display().to_string(),
            error: e.to_string(),
        })
}

/// Makes the delegated subtree ready for instances (a no-op for the
/// historical layout): moves the processes of its root into the
/// `supervisor` leaf, enables the controllers Nimbus uses for its children
/// and for `instances/`, and returns the directory of `instances/`. Every
/// write is checked; nothing is written outside the subtree.
pub fn prepare_delegated_on(
    fs: &dyn CgroupFs,
    layout: &CgroupLayout,
) -> Result<Option<PathBuf>, CgroupLayoutError> {
    let Some(root) = layout.delegated_dir() else {
        return Ok(None);
    };
    let available = fs
        .read(&root.join("cgroup.controllers"))
        .unwrap_or_default();
    let has = |c: &str| available.split_whitespace().any(|a| a == c);
    let mut controllers = Vec::new();
    for c in REQUIRED_CONTROLLERS {
        if !has(c) {
            return Err(CgroupLayoutError::MissingController {
                cgroup: root.display().to_string(),
                controller: c,
                available: available.trim().to_string(),
            });
        }
        controllers.push(c);
    }
    controllers.extend(OPTIONAL_CONTROLLERS.iter().copied().filter(|c| has(c)));
    let supervisor = root.join(SUPERVISOR_LEAF);
    make(fs, &supervisor)?;
    let pids = fs
        .read(&root.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect::<Vec<_>>();
    for pid in pids {
        // A process that exited meanwhile is gone from the root anyway.
        if let Err(e) = fs.write(&supervisor.join("cgroup.procs"), &pid) {
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(CgroupLayoutError::Write {
                    what: "move a process into",
                    path: supervisor.join("cgroup.procs").display().to_string(),
                    error: format!("pid {pid}: {e}"),
                });
            }
        }
    }
    let instances = root.join(INSTANCES_LEAF);
    let enable: String = controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    write(
        fs,
        &root.join("cgroup.subtree_control"),
        &enable,
        "enable controllers in",
    )?;
    make(fs, &instances)?;
    write(
        fs,
        &instances.join("cgroup.subtree_control"),
        &enable,
        "enable controllers in",
    )?;
    Ok(Some(instances))
}

/// [`prepare_delegated_on`] for this host's [`current`] layout.
pub fn prepare_delegated() -> Result<Option<PathBuf>, CgroupLayoutError> {
    prepare_delegated_on(&HostCgroupFs, current()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroupfs::FakeCgroupFs;

    const UNIT: &str = "/system.slice/nimbus-cgroup.service";

    /// A unified host under systemd, the caller in `own`.
    fn v2_systemd(own: &str) -> FakeCgroupFs {
        let fs = FakeCgroupFs::new();
        fs.add_cgroup(CGROUP_ROOT, &[1]);
        fs.add_file(
            format!("{CGROUP_ROOT}/cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
        fs.add_file("/proc/1/comm", "systemd\n");
        fs.add_file("/proc/self/cgroup", &format!("0::{own}\n"));
        fs
    }

    fn delegate(fs: &FakeCgroupFs, relative: &str, pids: &[i32]) {
        let dir = absolute(Path::new(relative));
        fs.add_cgroup(&dir, pids);
        fs.add_file(dir.join("cgroup.controllers"), "cpu memory pids\n");
        fs.tree().delegated.insert(dir);
    }

    #[test]
    fn the_mode_is_told_by_the_root() {
        let v1 = FakeCgroupFs::new();
        v1.add_cgroup(format!("{CGROUP_ROOT}/pids"), &[1]);
        assert_eq!(detect_mode_on(&v1), CgroupMode::V1);
        v1.add_cgroup(format!("{CGROUP_ROOT}/unified"), &[1]);
        assert_eq!(detect_mode_on(&v1), CgroupMode::Hybrid);
        let v2 = v2_systemd("/");
        assert_eq!(detect_mode_on(&v2), CgroupMode::Unified);
        assert_eq!(
            [CgroupMode::V1, CgroupMode::Hybrid, CgroupMode::Unified].map(|m| m.to_string()),
            ["v1", "hybrid", "v2"]
        );
    }

    #[test]
    fn v1_hybrid_and_v2_without_systemd_keep_the_historical_paths() {
        let hybrid = FakeCgroupFs::new();
        hybrid.add_cgroup(format!("{CGROUP_ROOT}/unified"), &[1]);
        hybrid.add_file("/proc/1/comm", "systemd\n");
        let layout = detect_on(&hybrid, Some(UNIT)).expect("hybrid");
        assert_eq!(layout, CgroupLayout::legacy(CgroupMode::Hybrid));
        assert_eq!(layout.instance_cgroup("i-1"), PathBuf::from("/nimbus/i-1"));

        let bare = v2_systemd("/");
        bare.add_file("/proc/1/comm", "sh\n");
        let layout = detect_on(&bare, None).expect("no systemd, no owner");
        assert_eq!(layout.delegated, None);
        assert_eq!(layout.instance_cgroup("i-1"), PathBuf::from("/nimbus/i-1"));
        assert!(prepare_delegated_on(&bare, &layout)
            .expect("no-op")
            .is_none());
        assert!(bare.tree().writes.is_empty(), "nothing written");
    }

    #[test]
    fn under_systemd_instances_live_in_the_delegated_subtree() {
        let fs = v2_systemd("/system.slice/nimbus.service");
        delegate(&fs, UNIT, &[300]);
        let layout = detect_on(&fs, Some(UNIT)).expect("delegated");
        assert_eq!(layout.delegated.as_deref(), Some(Path::new(UNIT)));
        assert_eq!(
            layout.instance_cgroup("i-1"),
            PathBuf::from(format!("{UNIT}/instances/i-1"))
        );
        assert_eq!(
            layout.delegated_dir(),
            Some(PathBuf::from(format!("{CGROUP_ROOT}{UNIT}")))
        );
    }

    #[test]
    fn without_the_variable_the_own_cgroup_or_its_supervisor_parent_is_the_subtree() {
        let run = "/system.slice/run-u7.service";
        let fs = v2_systemd(run);
        delegate(&fs, run, &[42]);
        let daemon = detect_on(&fs, None).expect("daemon under systemd-run");
        assert_eq!(daemon.delegated.as_deref(), Some(Path::new(run)));
        fs.add_file("/proc/self/cgroup", &format!("0::{run}/supervisor\n"));
        let shim = detect_on(&fs, None).expect("shim born in supervisor");
        assert_eq!(shim, daemon, "the shim finds the daemon's subtree");
    }

    #[test]
    fn a_cgroup_systemd_did_not_delegate_is_refused_with_the_way_out() {
        let fs = v2_systemd("/user.slice/user-0.slice/session-3.scope");
        let err = detect_on(&fs, None).unwrap_err().to_string();
        assert!(
            err.contains("/user.slice/user-0.slice/session-3.scope"),
            "{err}"
        );
        assert!(err.contains("systemd-run -p Delegate=yes"), "{err}");
        assert!(err.contains("nimbus.service"), "{err}");
        let err = detect_on(&fs, Some("/")).unwrap_err().to_string();
        assert!(err.contains("not delegated"), "{err}");
    }

    #[test]
    fn preparing_moves_the_root_processes_to_a_leaf_and_enables_controllers_inside_only() {
        let fs = v2_systemd("/system.slice/nimbus.service");
        delegate(&fs, UNIT, &[300]);
        let layout = detect_on(&fs, Some(UNIT)).expect("delegated");
        let instances = prepare_delegated_on(&fs, &layout)
            .expect("prepared")
            .expect("delegated");
        let root = format!("{CGROUP_ROOT}{UNIT}");
        assert_eq!(instances, PathBuf::from(format!("{root}/instances")));
        assert_eq!(
            fs.file(format!("{root}/supervisor/cgroup.procs"))
                .as_deref(),
            Some("300\n")
        );
        assert_eq!(
            fs.file(format!("{root}/cgroup.subtree_control")).as_deref(),
            Some("+memory +pids +cpu")
        );
        assert_eq!(
            fs.file(format!("{root}/instances/cgroup.subtree_control"))
                .as_deref(),
            Some("+memory +pids +cpu")
        );
        let outside: Vec<_> = fs
            .tree()
            .writes
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| !p.starts_with(&root))
            .collect();
        assert!(outside.is_empty(), "wrote outside the subtree: {outside:?}");
    }

    #[test]
    fn a_refused_write_or_a_missing_controller_names_the_file() {
        let fs = v2_systemd("/system.slice/nimbus.service");
        delegate(&fs, UNIT, &[300]);
        let root = format!("{CGROUP_ROOT}{UNIT}");
        fs.tree()
            .refused
            .insert(PathBuf::from(format!("{root}/cgroup.subtree_control")));
        let layout = detect_on(&fs, Some(UNIT)).expect("delegated");
        let err = prepare_delegated_on(&fs, &layout).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{root}/cgroup.subtree_control")),
            "{err}"
        );
        fs.add_file(format!("{root}/cgroup.controllers"), "cpu memory\n");
        let err = prepare_delegated_on(&fs, &layout).unwrap_err().to_string();
        assert!(err.contains("lacks the pids controller"), "{err}");
    }
}
