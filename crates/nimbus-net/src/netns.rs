//! Named network namespaces: made by a thread that unshares its network
//! namespace and bind-mounts it under `/run/nimbus/netns/`, so it outlives
//! every process in it (and the agent). Work inside one runs on a short-lived
//! thread that joined it: netlink sockets and `/proc/sys/net` follow the
//! calling thread's namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::{NetError, Result};

/// Create the namespace bind-mounted at `path` unless one is there already.
/// Returns whether it was created.
pub fn create(path: &Path) -> Result<bool> {
    if is_mounted(path) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| NetError::io(format!("create {}", dir.display()), e))?;
    }
    File::create(path).map_err(|e| NetError::io(format!("create {}", path.display()), e))?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::io("unshare the network namespace", e.into()))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            NetError::io(
                format!("bind-mount netns on {}", target.display()),
                e.into(),
            )
        })
    })
    .join()
    .map_err(|_| NetError::Invalid("namespace creation thread panicked".into()))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(true)
}

/// Whether a namespace is bind-mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// Unmount and remove a namespace; processes still in it keep it alive.
pub fn remove(path: &Path) -> Result<()> {
    if is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| NetError::io(format!("unmount {}", path.display()), e.into()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io(format!("remove {}", path.display()), e)),
    }
}

/// Namespaces under `dir` whose file name starts with `prefix`.
pub fn list(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| NetError::io(format!("open netns {}", path.display()), e))
}

/// Run `f` on a thread inside the namespace at `path` (`None`: the
/// namespace of the calling process). The thread is scoped, so `f` may
/// borrow from the caller.
pub fn run_in<T, F>(path: Option<&Path>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let ns = match path {
        Some(p) => Some(open(p)?),
        None => None,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                if let Some(ns) = ns {
                    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetError::io("join the network namespace", e.into()))?;
                }
                f()
            })
            .join()
            .map_err(|_| NetError::Invalid("network namespace thread panicked".into()))?
    })
}

/// Write a sysctl under `/proc/sys/` in the calling thread's namespace.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| NetError::io(format!("write {path}"), e))
}

/// Raw fd of an open namespace, for netlink's IFLA_NET_NS_FD.
pub fn raw(file: &File) -> i32 {
    file.as_raw_fd()
}
