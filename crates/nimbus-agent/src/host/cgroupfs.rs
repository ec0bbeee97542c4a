//! The kernel's control files (the cgroup tree under `/sys/fs/cgroup`, and
//! `/proc` entries such as `oom_score_adj` and `meminfo`) and the signal
//! that empties a cgroup, behind [`CgroupFs`], so the logic that decides
//! which directories and values to write is tested without root against
//! [`FakeCgroupFs`], an in-memory tree that behaves like cgroupfs where it
//! matters: a new cgroup has an empty `cgroup.procs`, a cgroup with
//! processes cannot be removed, a killed process leaves every cgroup.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Reads and writes of kernel control files, and killing a process.
pub trait CgroupFs: Send + Sync {
    fn read(&self, path: &Path) -> io::Result<String>;
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Remove an (empty) cgroup directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn is_dir(&self, path: &Path) -> bool;
    fn exists(&self, path: &Path) -> bool;
    /// The entries of a directory, as full paths.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// SIGKILL `pid`; one already gone is fine.
    fn kill(&self, pid: i32);
    /// Whether systemd delegated the cgroup directory `path` (it marks one
    /// with the `trusted.delegate` extended attribute).
    fn is_delegated(&self, path: &Path) -> bool;
}

/// The real files, through `std::fs`, and `kill(2)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCgroupFs;

impl CgroupFs for HostCgroupFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(std::fs::read_dir(path)?
            .flatten()
            .map(|e| e.path())
            .collect())
    }

    fn kill(&self, pid: i32) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    fn is_delegated(&self, path: &Path) -> bool {
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        let mut value = [0u8; 8];
        // SAFETY: both strings are NUL-terminated and outlive the call; the
        // kernel writes at most `value.len()` bytes into `value`.
        let n = unsafe {
            libc::getxattr(
                c_path.as_ptr(),
                c"trusted.delegate".as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[0] == b'1'
    }
}

/// The in-memory tree of [`FakeCgroupFs`].
#[derive(Clone, Debug, Default)]
pub struct FakeTree {
    pub dirs: BTreeSet<PathBuf>,
    pub files: BTreeMap<PathBuf, String>,
    /// Every write, in order: (path, value).
    pub writes: Vec<(PathBuf, String)>,
    /// Pids signalled, in order.
    pub killed: Vec<i32>,
    /// Pids that survive SIGKILL (stuck in the kernel, say).
    pub unkillable: BTreeSet<i32>,
    /// Writes to these paths fail with `EACCES`.
    pub refused: BTreeSet<PathBuf>,
    /// Cgroups systemd delegated (`trusted.delegate`).
    pub delegated: BTreeSet<PathBuf>,
}

/// An in-memory cgroup tree (and `/proc` files) for tests.
#[derive(Debug, Default)]
pub struct FakeCgroupFs {
    tree: Mutex<FakeTree>,
}

impl FakeCgroupFs {
    pub fn new() -> FakeCgroupFs {
        FakeCgroupFs::default()
    }

    pub fn tree(&self) -> MutexGuard<'_, FakeTree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cgroup directory with its `cgroup.procs` holding `pids`.
    pub fn add_cgroup(&self, dir: impl AsRef<Path>, pids: &[i32]) {
        let dir = dir.as_ref();
        let mut t = self.tree();
        t.add_dirs(dir);
        let procs: String = pids.iter().map(|p| format!("{p}\n")).collect();
        t.files.insert(dir.join("cgroup.procs"), procs);
    }

    /// A file (and its directories).
    pub fn add_file(&self, path: impl AsRef<Path>, text: &str) {
        let path = path.as_ref();
        let mut t = self.tree();
        if let Some(dir) = path.parent() {
            t.add_dirs(dir);
        }
        t.files.insert(path.to_path_buf(), text.to_string());
    }

    /// The value a file holds now.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<String> {
        self.tree().files.get(path.as_ref()).cloned()
    }
}

impl FakeTree {
    fn add_dirs(&mut self, dir: &Path) {
        for d in dir.ancestors() {
            if d.as_os_str().is_empty() {
                continue;
            }
            self.dirs.insert(d.to_path_buf());
        }
    }

    fn pids_in(&self, dir: &Path) -> Vec<i32> {
        self.files
            .get(&dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl CgroupFs for FakeCgroupFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.tree()
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut t = self.tree();
        t.writes.push((path.to_path_buf(), value.to_string()));
        if t.refused.contains(path) {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        if !path.parent().is_some_and(|d| t.dirs.contains(d)) {
            return Err(not_found(path));
        }
        // Writing a pid to cgroup.procs moves the process there.
        if path.file_name().is_some_and(|n| n == "cgroup.procs") {
            let entry = t.files.entry(path.to_path_buf()).or_default();
            entry.push_str(value.trim());
            entry.push('\n');
            return Ok(());
        }
        t.files.insert(path.to_path_buf(), value.to_string());
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut t = self.tree();
        let new: Vec<PathBuf> = path
            .ancestors()
            .filter(|d| !d.as_os_str().is_empty() && !t.dirs.contains(*d))
            .map(Path::to_path_buf)
            .collect();
        for d in new {
            // A new cgroup comes with its (empty) process list.
            t.files.entry(d.join("cgroup.procs")).or_default();
            t.dirs.insert(d);
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut t = self.tree();
        if !t.dirs.contains(path) {
            return Err(not_found(path));
        }
        if !t.pids_in(path).is_empty() || t.dirs.iter().any(|d| d.parent() == Some(path)) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        t.dirs.remove(path);
        t.files.retain(|f, _| f.parent() != Some(path));
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.tree().dirs.contains(path)
    }

    fn exists(&self, path: &Path) -> bool {
        let t = self.tree();
        t.dirs.contains(path) || t.files.contains_key(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let t = self.tree();
        if !t.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(t.dirs
            .iter()
            .filter(|d| d.parent() == Some(path))
            .chain(t.files.keys().filter(|f| f.parent() == Some(path)))
            .cloned()
            .collect())
    }

    fn kill(&self, pid: i32) {
        let mut t = self.tree();
        t.killed.push(pid);
        if t.unkillable.contains(&pid) {
            return;
        }
        let gone = pid.to_string();
        for (path, text) in t.files.iter_mut() {
            if path.file_name().is_some_and(|n| n == "cgroup.procs") {
                *text = text
                    .lines()
                    .filter(|l| l.trim() != gone)
                    .map(|l| format!("{l}\n"))
                    .collect();
            }
        }
    }

    fn is_delegated(&self, path: &Path) -> bool {
        self.tree().delegated.contains(path)
    }
}
