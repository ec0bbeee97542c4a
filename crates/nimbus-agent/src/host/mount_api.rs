//! The kernel's new mount API (`open_tree`, `mount_setattr`,
//! `move_mount`), through raw syscalls: nix 0.29 has none of them. A
//! detached clone of a mount tree can be given attributes (read-only, an
//! id mapping) and then attached elsewhere, also in another mount
//! namespace that the caller has joined since (a container's, see
//! `volume/live.rs`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

/// A detached clone of the mount at `source` (not its submounts), held
/// by the returned descriptor; closing it unmounts the clone.
pub fn open_tree_clone(source: &Path) -> std::io::Result<OwnedFd> {
    let source_c = c_path(source)?;
    // SAFETY: open_tree takes a NUL-terminated path that outlives the call; the
    // returned descriptor is checked and then owned by the `OwnedFd`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open_tree and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Set `attr_set` (`MOUNT_ATTR_*`) on the detached mount `tree`; with
/// `MOUNT_ATTR_IDMAP`, `userns` gives the mapping.
pub fn set_attributes(
    tree: &OwnedFd,
    attr_set: u64,
    userns: Option<&OwnedFd>,
) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let empty = c"";
    // SAFETY: `attr` is a properly laid out mount_attr living across the call and its
    // size is passed; `tree` is a valid detached mount descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attach the detached mount `tree` at `target`, resolved in the caller's
/// mount namespace and root.
pub fn move_mount_to(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let target_c = c_path(target)?;
    let empty = c"";
    // SAFETY: both paths are NUL-terminated and live across the call; `tree` is valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
