//! Finding and removing the mounts an instance left under its directory.

use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::shim::ShimError;

/// The mount table of this mount namespace, and unmounting from it.
pub trait MountTable {
    /// The text of `/proc/self/mountinfo`.
    fn mountinfo(&self) -> std::io::Result<String>;
    /// `umount2(2)`.
    fn unmount(&self, path: &Path, flags: MntFlags) -> nix::Result<()>;
}

/// The calling process's mount namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostMounts;

impl MountTable for HostMounts {
    fn mountinfo(&self) -> std::io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }

    fn unmount(&self, path: &Path, flags: MntFlags) -> nix::Result<()> {
        umount2(path, flags)
    }
}

/// Mount points at or below `dir` in this mount namespace, in mount order.
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>, ShimError> {
    mount_points_under_on(&HostMounts, dir)
}

/// [`mount_points_under`] in the mount table `mounts`.
pub fn mount_points_under_on(
    mounts: &dyn MountTable,
    dir: &Path,
) -> Result<Vec<PathBuf>, ShimError> {
    let text = mounts.mountinfo().map_err(|source| ShimError::Io {
        what: "read /proc/self/mountinfo".to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or below `dir`, newest first. A busy mount is detached
/// lazily so teardown never leaves it attached to the host tree.
pub fn unmount_all_under(dir: &Path) -> Result<(), ShimError> {
    unmount_all_under_on(&HostMounts, dir)
}

/// [`unmount_all_under`] in the mount table `mounts`.
pub fn unmount_all_under_on(mounts: &dyn MountTable, dir: &Path) -> Result<(), ShimError> {
    // Stacked mounts show up once per layer; loop until none is left.
    for _ in 0..16 {
        let points = mount_points_under_on(mounts, dir)?;
        if points.is_empty() {
            return Ok(());
        }
        for point in points.iter().rev() {
            match mounts.unmount(point.as_path(), MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(_) => {
                    let _ = mounts.unmount(
                        point.as_path(),
                        MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
                    );
                }
            }
        }
    }
    let left = mount_points_under_on(mounts, dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(ShimError::Unmount(format!(
            "could not unmount {} mount(s) under {}: {}",
            left.len(),
            dir.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A mount table in memory: mount points in mount order.
    #[derive(Default)]
    struct FakeMounts {
        points: RefCell<Vec<PathBuf>>,
        /// Unmounted only lazily (`MNT_DETACH`): a process holds them.
        busy: Vec<PathBuf>,
        /// Never unmounted.
        stuck: Vec<PathBuf>,
        /// (path, lazily) of every successful unmount, in order.
        unmounted: RefCell<Vec<(PathBuf, bool)>>,
    }

    impl FakeMounts {
        fn with(points: &[&str]) -> FakeMounts {
            FakeMounts {
                points: RefCell::new(points.iter().map(PathBuf::from).collect()),
                ..Default::default()
            }
        }

        fn order(&self) -> Vec<String> {
            self.unmounted
                .borrow()
                .iter()
                .map(|(p, lazy)| format!("{}{}", p.display(), if *lazy { " (lazy)" } else { "" }))
                .collect()
        }
    }

    impl MountTable for FakeMounts {
        fn mountinfo(&self) -> std::io::Result<String> {
            Ok(self
                .points
                .borrow()
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let escaped = p.to_string_lossy().replace(' ', "\\040");
                    format!(
                        "{} 1 0:{i} / {escaped} rw,relatime - tmpfs tmpfs rw\n",
                        100 + i
                    )
                })
                .collect())
        }

        fn unmount(&self, path: &Path, flags: MntFlags) -> nix::Result<()> {
            let lazy = flags.contains(MntFlags::MNT_DETACH);
            if self.stuck.iter().any(|s| s == path) {
                return Err(nix::errno::Errno::EBUSY);
            }
            if !lazy && self.busy.iter().any(|b| b == path) {
                return Err(nix::errno::Errno::EBUSY);
            }
            let mut points = self.points.borrow_mut();
            // The newest mount at a point goes first.
            let Some(i) = points.iter().rposition(|p| p == path) else {
                return Err(nix::errno::Errno::EINVAL);
            };
            points.remove(i);
            self.unmounted.borrow_mut().push((path.to_path_buf(), lazy));
            Ok(())
        }
    }

    #[test]
    fn only_mounts_at_or_below_the_dir_are_found_with_escapes_undone() {
        let m = FakeMounts::with(&[
            "/",
            "/data/i1",
            "/data/i1/rootfs",
            "/data/i10",
            "/data/i1/my dir",
        ]);
        assert_eq!(
            mount_points_under_on(&m, Path::new("/data/i1")).unwrap(),
            vec![
                PathBuf::from("/data/i1"),
                PathBuf::from("/data/i1/rootfs"),
                PathBuf::from("/data/i1/my dir"),
            ],
            "/data/i10 is another instance's"
        );
    }

    #[test]
    fn mounts_go_newest_first_so_inner_mounts_go_before_their_parents() {
        let m = FakeMounts::with(&[
            "/other",
            "/d",
            "/d/rootfs",
            "/d/rootfs/proc",
            "/d/rootfs/dev",
            "/d/rootfs/dev/pts",
        ]);
        unmount_all_under_on(&m, Path::new("/d")).unwrap();
        assert_eq!(
            m.order(),
            vec![
                "/d/rootfs/dev/pts",
                "/d/rootfs/dev",
                "/d/rootfs/proc",
                "/d/rootfs",
                "/d"
            ]
        );
        assert_eq!(*m.points.borrow(), vec![PathBuf::from("/other")]);
    }

    #[test]
    fn stacked_and_busy_mounts_are_all_removed() {
        let mut m = FakeMounts::with(&["/d/rootfs", "/d/rootfs", "/d/rootfs/tmp"]);
        m.busy.push(PathBuf::from("/d/rootfs/tmp"));
        unmount_all_under_on(&m, Path::new("/d")).unwrap();
        assert_eq!(
            m.order(),
            vec!["/d/rootfs/tmp (lazy)", "/d/rootfs", "/d/rootfs"]
        );
    }

    #[test]
    fn mounts_that_stay_are_named_in_the_error() {
        let mut m = FakeMounts::with(&["/d/rootfs", "/d/rootfs/proc"]);
        m.stuck.push(PathBuf::from("/d/rootfs/proc"));
        let err = unmount_all_under_on(&m, Path::new("/d"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("could not unmount 1 mount(s) under /d"),
            "{err}"
        );
        assert!(err.contains("/d/rootfs/proc"), "{err}");
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }
}
