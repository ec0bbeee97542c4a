//! The instance rootfs: an overlay of the shared image layers under a private upper dir.
//!
//! Layers are owned by image ids (root = 0) and shared by every instance, so they are
//! never chowned. Each layer is bind-mounted read-only at `<dir>/lower/<n>` through an
//! *idmapped* mount (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`)
//! that shifts its ids into the instance's host range; the overlay at `<dir>/rootfs`
//! stacks those under the upper dir (owned by the instance's host root, kept across
//! restarts as the writable layer; on the instance's own sized filesystem, see
//! [`super::disk`], or at `<dir>/upper` for a spec without a size).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{chown, fork, ForkResult, Gid, Uid};

use super::disk::{disk_mount_dir, prepare_writable_layer, HostTools};
use super::rootfs_error;
use super::spec::{IdMap, ShimSpec};
use crate::host::mounts::{mount_points_under, unmount_all_under};
use crate::shim::ShimError;

use crate::host::mount_api::{
    move_mount_to, open_tree_clone, set_attributes, MOUNT_ATTR_IDMAP, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_RDONLY,
};

pub fn rootfs_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("rootfs")
}
pub fn lower_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("lower")
}
/// Put the network's resolver files in the upper layer, where they hide
/// the image's, owned by the container's root so it may edit them.
fn place_etc_files(upper: &Path, spec: &ShimSpec, owner: (Uid, Gid)) -> Result<(), ShimError> {
    let files = [
        (&spec.resolv_conf, "resolv.conf"),
        (&spec.hosts_file, "hosts"),
    ];
    if files.iter().all(|(f, _)| f.is_none()) {
        return Ok(());
    }
    let etc = upper.join("etc");
    if !etc.is_dir() {
        std::fs::create_dir_all(&etc).map_err(io_err(format!("create {}", etc.display())))?;
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", etc.display())))?;
        chown(etc.as_path(), Some(owner.0), Some(owner.1))
            .map_err(|e| rootfs_error(format!("chown {}: {e}", etc.display())))?;
    }
    for (src, name) in files {
        let Some(src) = src else { continue };
        let dest = etc.join(name);
        let _ = std::fs::remove_file(&dest);
        std::fs::copy(src, &dest).map_err(io_err(format!(
            "copy {} to {}",
            src.display(),
            dest.display()
        )))?;
        chown(dest.as_path(), Some(owner.0), Some(owner.1))
            .map_err(|e| rootfs_error(format!("chown {}: {e}", dest.display())))?;
        // The agent writes the source root-only; in the container every
        // user must read its resolver files.
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(format!("chmod {}", dest.display())))?;
    }
    Ok(())
}

pub fn upper_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("upper")
}
pub fn work_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("work")
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ShimError {
    move |source| ShimError::Io { what, source }
}

/// Mounts the rootfs unless it is already mounted (a restart reuses it).
pub fn mount_rootfs(instance_dir: &Path, spec: &ShimSpec) -> Result<PathBuf, ShimError> {
    let rootfs = rootfs_dir(instance_dir);
    if mount_points_under(instance_dir)
        .map(|m| m.iter().any(|p| p == &rootfs))
        .unwrap_or(false)
    {
        return Ok(rootfs);
    }
    if let Some(parent) = instance_dir.parent() {
        check_searchable(parent)?;
    }
    secure_instance_dir(instance_dir, spec.id_map)?;
    // overlayfs splits its options on ',' and lowerdir on ':'.
    let text = instance_dir.to_string_lossy();
    if text.contains(',') || text.contains(':') {
        return Err(rootfs_error(format!(
            "instance dir {text:?} contains ',' or ':', which overlayfs options cannot carry"
        )));
    }
    for layer in &spec.layers {
        if !layer.is_dir() {
            return Err(rootfs_error(format!(
                "image layer {} is missing",
                layer.display()
            )));
        }
    }
    // Anything mounted so far (the writable layer's filesystem, layers)
    // comes off again if a later step fails.
    let result = mount_over_layers(instance_dir, spec, &rootfs);
    if result.is_err() {
        let _ = unmount_all_under(instance_dir);
    }
    result.map(|_| rootfs)
}

/// The writable layer, the idmapped layers and the overlay of [`mount_rootfs`].
fn mount_over_layers(instance_dir: &Path, spec: &ShimSpec, rootfs: &Path) -> Result<(), ShimError> {
    let (upper, work) = prepare_writable_layer(&HostTools, instance_dir, spec.disk_bytes)?;
    for dir in [rootfs, &upper, &work, &lower_dir(instance_dir)] {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let host_root = (
        Uid::from_raw(spec.id_map.host_id),
        Gid::from_raw(spec.id_map.host_id),
    );
    for dir in [&upper, &work] {
        chown(dir.as_path(), Some(host_root.0), Some(host_root.1)).map_err(|e| {
            rootfs_error(format!("chown {} to {}: {e}", dir.display(), host_root.0))
        })?;
    }
    // The upper dir's mode is the container's `/`: everyone in the
    // container must be able to search it, whatever the daemon's umask.
    std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("chmod {}", upper.display())))?;
    place_etc_files(&upper, spec, host_root)?;
    // The container root reaches its rootfs through this path from inside its user
    // namespace: the instance dir lets it through by group (see
    // `secure_instance_dir`), the rootfs mount point is the container's own.
    std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("chmod {}", rootfs.display())))?;
    mount_layers(instance_dir, spec, rootfs, &upper, &work)
}

fn mount_layers(
    instance_dir: &Path,
    spec: &ShimSpec,
    rootfs: &Path,
    upper: &Path,
    work: &Path,
) -> Result<(), ShimError> {
    let userns = IdmapUserns::create(spec.id_map)?;
    let mut lowers = Vec::with_capacity(spec.layers.len());
    for (n, layer) in spec.layers.iter().enumerate() {
        let target = lower_dir(instance_dir).join(n.to_string());
        std::fs::create_dir_all(&target).map_err(io_err(format!("create {}", target.display())))?;
        idmapped_bind(layer, &target, &userns.fd).map_err(|e| {
            rootfs_error(format!(
                "idmapped mount of layer {} at {} failed: {e}",
                layer.display(),
                target.display()
            ))
        })?;
        lowers.push(target);
    }
    // overlayfs wants the topmost layer first.
    let lowerdir = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if options.len() >= 4000 {
        return Err(rootfs_error(format!(
            "overlay options for {} layers under {} exceed a page",
            lowers.len(),
            instance_dir.display()
        )));
    }
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| rootfs_error(format!("overlay mount at {}: {e}", rootfs.display())))
}

/// Clones the mount tree at `source` and attaches it at `target`, read-only, with its
/// ids shifted through `userns`.
fn idmapped_bind(source: &Path, target: &Path, userns: &OwnedFd) -> Result<(), std::io::Error> {
    let tree = open_tree_clone(source)?;
    set_attributes(
        &tree,
        MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV,
        Some(userns),
    )?;
    move_mount_to(&tree, target)
}

/// A user namespace carrying the instance's id mapping, held open by a descriptor.
/// A short-lived child creates it; its `/proc/<pid>/ns/user` outlives the child.
struct IdmapUserns {
    fd: OwnedFd,
}

impl IdmapUserns {
    fn create(map: IdMap) -> Result<IdmapUserns, ShimError> {
        let pipe_err = |e| rootfs_error(format!("pipe for id-map helper: {e}"));
        let (ready_r, ready_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err)?;
        let (hold_r, hold_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err)?;
        // SAFETY: the shim is single-threaded here; the child only makes raw syscalls
        // and leaves with _exit, never returning into Rust code that assumes one owner.
        let child = match unsafe { fork() } {
            Err(e) => return Err(rootfs_error(format!("fork id-map helper: {e}"))),
            Ok(ForkResult::Child) => {
                drop(ready_r);
                drop(hold_w);
                let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
                let mut ready = File::from(ready_w);
                let _ = ready.write_all(if ok { b"1" } else { b"0" });
                let mut byte = [0u8; 1];
                let _ = File::from(hold_r).read(&mut byte);
                // SAFETY: _exit is async-signal-safe and skips the parent's atexit state.
                unsafe { libc::_exit(0) }
            }
            Ok(ForkResult::Parent { child }) => child,
        };
        drop(ready_w);
        drop(hold_r);
        let result = (|| {
            let mut byte = [0u8; 1];
            let n = File::from(ready_r).read(&mut byte).unwrap_or(0);
            if n != 1 || byte[0] != b'1' {
                return Err(rootfs_error(
                    "id-map helper could not create a user namespace".to_string(),
                ));
            }
            let line = format!("0 {} {}\n", map.host_id, map.size);
            for file in ["uid_map", "gid_map"] {
                let path = format!("/proc/{child}/{file}");
                std::fs::write(&path, &line)
                    .map_err(|e| rootfs_error(format!("write {line:?} to {path}: {e}")))?;
            }
            let path = format!("/proc/{child}/ns/user");
            let ns = File::open(&path)
                .map_err(|e| rootfs_error(format!("open user namespace {path}: {e}")))?;
            Ok(IdmapUserns { fd: ns.into() })
        })();
        drop(hold_w);
        let _ = waitpid(child, None);
        result
    }
}

/// Fails with a clear reason when the container root could not reach its rootfs.
/// The instance dir is root's, with its group the instance's host root gid
/// and mode 0710: the container's root (that gid on the host) may pass
/// through it to its rootfs, nobody else may enter, and nobody but root may
/// list it. The files in it are 0600, so passing through reveals nothing.
pub fn secure_instance_dir(instance_dir: &Path, id_map: IdMap) -> Result<(), ShimError> {
    chown(
        instance_dir,
        Some(Uid::from_raw(0)),
        Some(Gid::from_raw(id_map.host_id)),
    )
    .map_err(|e| {
        rootfs_error(format!(
            "chown {} to root:{}: {e}",
            instance_dir.display(),
            id_map.host_id
        ))
    })?;
    std::fs::set_permissions(instance_dir, std::fs::Permissions::from_mode(0o710))
        .map_err(io_err(format!("chmod {}", instance_dir.display())))
}

/// Every directory above the instance dir must be searchable by "others":
/// the container's root is an unprivileged uid on the host.
fn check_searchable(instances_dir: &Path) -> Result<(), ShimError> {
    for dir in instances_dir.ancestors() {
        let mode = std::fs::metadata(dir)
            .map_err(io_err(format!("stat {}", dir.display())))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(rootfs_error(format!(
                "{} (mode {:o}) is not searchable by others, so the container's user \
                 namespace cannot reach its rootfs",
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// Unmounts the rootfs, the idmapped layers and the writable layer's
/// filesystem (which frees its loop device) and removes their mount points.
/// The upper and work dirs, or the image holding them, stay: they are the
/// instance's writable layer.
pub fn unmount_rootfs(instance_dir: &Path) -> Result<(), ShimError> {
    unmount_all_under(instance_dir)?;
    let _ = std::fs::remove_dir(rootfs_dir(instance_dir));
    let _ = std::fs::remove_dir(disk_mount_dir(instance_dir));
    let lower = lower_dir(instance_dir);
    if lower.exists() {
        std::fs::remove_dir_all(&lower).map_err(io_err(format!("remove {}", lower.display())))?;
    }
    Ok(())
}
