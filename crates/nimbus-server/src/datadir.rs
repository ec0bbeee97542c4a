//! Modes of the data directory. Everything under it is root's alone:
//! tenants' environment, user-data, disks, logs, images and the store.
//! Only two kinds of entries are open at all: the data directory and
//! `instances/` are 0711 (searchable, never listable), so a container's
//! root, an unprivileged uid on the host, can pass through to its own
//! instance directory, which lets only that uid's group in (0710, set by the
//! shim); and the API socket, which the server gives to the `nimbus` group.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The data directory and `instances/`: searchable by the containers'
/// unprivileged roots on the way to their rootfs, listable by root only.
pub const SEARCH_ONLY_MODE: u32 = 0o711;

/// The file-creation mask of the daemon: new files and directories are
/// root's alone unless made otherwise on purpose.
pub const DAEMON_UMASK: u32 = 0o077;

/// The directories whose content belongs to tenants' filesystems: modes
/// there are the image's and the workload's, never changed by the walk.
const INSTANCE_FILESYSTEMS: [&str; 4] = ["rootfs", "upper", "work", "lower"];

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{what} {}: {source}; fix it by hand (`chmod go-rwx {}`) or check the data directory's file system", path.display(), path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Make files the daemon creates private from now on.
pub fn restrict_umask() {
    // SAFETY: umask only replaces the process's file-creation mask; it
    // touches no memory and cannot fail.
    unsafe {
        libc::umask(DAEMON_UMASK as libc::mode_t);
    }
}

/// The mode an existing entry should have: no access for others, and for
/// its group only the search bit of a directory whose group is not root
/// (how an instance directory lets its container's root through).
pub fn tightened_mode(mode: u32, is_dir: bool, gid: u32) -> u32 {
    let keep_group_search = is_dir && gid != 0;
    let group_mask = if keep_group_search { 0o010 } else { 0 };
    mode & (0o7700 | group_mask)
}

/// Where the walk must not go: tenants' filesystems (image layers, an
/// instance's rootfs, upper, work and idmapped lower mounts).
fn is_tenant_filesystem(rel: &Path) -> bool {
    let parts: Vec<_> = rel.iter().filter_map(|c| c.to_str()).collect();
    match parts.as_slice() {
        ["images", "layers", _] => true,
        ["instances", _, name] => INSTANCE_FILESYSTEMS.contains(name),
        _ => false,
    }
}

/// Correct the modes of a data directory written by older versions, which
/// left the store, specs and logs readable by every local user. Walks what
/// exists once, without following symlinks or crossing mount points, and
/// returns how many entries it tightened.
pub fn secure_existing(data_dir: &Path) -> Result<usize, DataDirError> {
    let meta = std::fs::symlink_metadata(data_dir).map_err(io("stat", data_dir))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(SEARCH_ONLY_MODE))
        .map_err(io("restrict permissions of", data_dir))?;
    let instances = data_dir.join("instances");
    if instances.is_dir() {
        std::fs::set_permissions(
            &instances,
            std::fs::Permissions::from_mode(SEARCH_ONLY_MODE),
        )
        .map_err(io("restrict permissions of", &instances))?;
    }
    let mut changed = 0;
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Removed meanwhile (an instance being deleted).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let path = entry.path();
            let rel = path.strip_prefix(data_dir).unwrap_or(&path);
            if is_tenant_filesystem(rel) {
                continue;
            }
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("stat", &path)(e)),
            };
            if m.file_type().is_symlink() || m.dev() != meta.dev() {
                continue;
            }
            let is_dir = m.is_dir();
            if is_dir {
                stack.push(path.clone());
            }
            if path == instances {
                continue;
            }
            let mode = m.permissions().mode() & 0o7777;
            let wanted = tightened_mode(mode, is_dir, m.gid());
            if wanted != mode {
                match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted)) {
                    Ok(()) => changed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("restrict permissions of", &path)(e)),
                }
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_lose_group_and_other_access() {
        assert_eq!(tightened_mode(0o644, false, 0), 0o600);
        assert_eq!(tightened_mode(0o755, true, 0), 0o700);
        assert_eq!(tightened_mode(0o4755, false, 0), 0o4700);
        // An instance directory keeps its container's way through.
        assert_eq!(tightened_mode(0o750, true, 100_000), 0o710);
        assert_eq!(tightened_mode(0o664, false, 100_000), 0o600);
    }

    #[test]
    fn tenant_filesystems_are_left_alone() {
        assert!(is_tenant_filesystem(Path::new("images/layers/abc")));
        assert!(is_tenant_filesystem(Path::new("instances/1/rootfs")));
        assert!(is_tenant_filesystem(Path::new("instances/1/upper")));
        assert!(!is_tenant_filesystem(Path::new("instances/1/spec.json")));
        assert!(!is_tenant_filesystem(Path::new("images/blobs/sha256")));
    }

    #[test]
    fn an_open_data_dir_is_corrected() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::create_dir_all(data.join("instances/abc/bundle")).unwrap();
        std::fs::create_dir_all(data.join("instances/abc/upper/etc")).unwrap();
        std::fs::create_dir_all(data.join("images/layers/l1/bin")).unwrap();
        std::fs::write(data.join("store.db"), b"x").unwrap();
        std::fs::write(data.join("instances/abc/spec.json"), b"x").unwrap();
        std::fs::write(data.join("instances/abc/bundle/config.json"), b"x").unwrap();
        std::fs::write(data.join("images/layers/l1/bin/sh"), b"x").unwrap();
        for p in [
            "store.db",
            "instances/abc/spec.json",
            "instances/abc/bundle/config.json",
        ] {
            set(&data.join(p), 0o644);
        }
        set(&data.join("images/layers/l1/bin/sh"), 0o755);
        set(&data.join("instances/abc/upper/etc"), 0o755);
        set(data, 0o755);
        let changed = secure_existing(data).unwrap();
        assert!(changed >= 3, "{changed}");
        let mode = |p: &str| {
            std::fs::metadata(data.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(""), 0o711);
        assert_eq!(mode("instances"), 0o711);
        assert_eq!(mode("store.db"), 0o600);
        assert_eq!(mode("instances/abc/spec.json"), 0o600);
        assert_eq!(mode("instances/abc/bundle/config.json"), 0o600);
        assert_eq!(mode("instances/abc/bundle"), 0o700);
        // Tenants' files keep their modes.
        assert_eq!(mode("images/layers/l1/bin/sh"), 0o755);
        assert_eq!(mode("instances/abc/upper/etc"), 0o755);
        // A second walk has nothing left to do.
        assert_eq!(secure_existing(data).unwrap(), 0);
    }
}
