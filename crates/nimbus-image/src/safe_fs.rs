//! Directory-descriptor based file operations that never follow a symlink.
//!
//! Every path below a layer root is reached one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`, and every final operation (`mkdirat`, `symlinkat`,
//! `linkat`, `unlinkat`, `fchownat(AT_SYMLINK_NOFOLLOW)`, ...) acts on a name inside an
//! already opened directory. So a symlink stored in an image (absolute or `../..`) can
//! exist, but extraction can never write through it.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat,
    Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

/// What kind of file a directory entry is, from `lstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    Regular,
    Symlink,
    Other,
}

pub(crate) fn kind_of(stat: &FileStat) -> Kind {
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::Regular,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn raw(fd: &OwnedFd) -> Option<RawFd> {
    Some(fd.as_raw_fd())
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: only called with a descriptor that openat just returned to us; nothing else
    // owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn timespec(mtime: i64) -> TimeSpec {
    TimeSpec::new(mtime, 0)
}

/// Opens a directory by absolute host path (the layer root we created ourselves).
pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let fd = openat(
        None,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(owned(fd))
}

/// Opens the subdirectory `name` of `parent`; fails with ELOOP/ENOTDIR on a symlink.
pub(crate) fn open_subdir(parent: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let fd = openat(
        raw(parent),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(owned(fd))
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub(crate) fn lstat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(raw(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Why a component-by-component walk stopped. `prefix` is the path walked so far,
/// including the offending component.
#[derive(Debug)]
pub(crate) enum WalkError {
    Symlink { prefix: PathBuf },
    NotDir { prefix: PathBuf },
    Missing { prefix: PathBuf },
    Io { prefix: PathBuf, source: io::Error },
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Symlink { prefix } => write!(f, "`{}` is a symlink", prefix.display()),
            WalkError::NotDir { prefix } => write!(f, "`{}` is not a directory", prefix.display()),
            WalkError::Missing { prefix } => write!(f, "`{}` does not exist", prefix.display()),
            WalkError::Io { prefix, source } => write!(f, "`{}`: {source}", prefix.display()),
        }
    }
}

/// Opens `root/components...` as a directory without following any symlink. With
/// `create`, missing directories are made (mode 0755, owned by the caller).
pub(crate) fn walk_dirs(
    root: &OwnedFd,
    components: &[OsString],
    create: bool,
) -> Result<OwnedFd, WalkError> {
    let mut current = root.try_clone().map_err(|source| WalkError::Io {
        prefix: PathBuf::new(),
        source,
    })?;
    let mut prefix = PathBuf::new();
    for name in components {
        prefix.push(name);
        let opened = match open_subdir(&current, name) {
            Err(Errno::ENOENT) if create => match mkdirat(
                raw(&current),
                name.as_os_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                // An implicit parent gets 0755 whatever the umask.
                Ok(()) => open_subdir(&current, name).and_then(|fd| {
                    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))?;
                    Ok(fd)
                }),
                Err(Errno::EEXIST) => open_subdir(&current, name),
                Err(e) => Err(e),
            },
            other => other,
        };
        current = match opened {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(WalkError::Missing { prefix }),
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return match lstat_at(&current, name) {
                    Ok(Some(stat)) if kind_of(&stat) == Kind::Symlink => {
                        Err(WalkError::Symlink { prefix })
                    }
                    Ok(_) => Err(WalkError::NotDir { prefix }),
                    Err(source) => Err(WalkError::Io { prefix, source }),
                }
            }
            Err(e) => {
                return Err(WalkError::Io {
                    prefix,
                    source: e.into(),
                })
            }
        };
    }
    Ok(current)
}

/// Creates a new regular file (never an existing one, never through a symlink).
pub(crate) fn create_file(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let fd = openat(
        raw(dir),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    Ok(File::from(owned(fd)))
}

pub(crate) fn make_dir(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(mkdirat(raw(dir), name, Mode::from_bits_truncate(0o700))?)
}

pub(crate) fn make_symlink(target: &OsStr, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(symlinkat(target, raw(dir), name)?)
}

/// Hard link without `AT_SYMLINK_FOLLOW`: links the named inode itself.
pub(crate) fn make_hard_link(
    target_dir: &OwnedFd,
    target_name: &OsStr,
    dir: &OwnedFd,
    name: &OsStr,
) -> io::Result<()> {
    Ok(linkat(
        raw(target_dir),
        target_name,
        raw(dir),
        name,
        AtFlags::empty(),
    )?)
}

pub(crate) fn make_fifo(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(mknodat(
        raw(dir),
        name,
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o600),
        0,
    )?)
}

/// An overlayfs whiteout: a character device with device number 0:0.
pub(crate) fn make_whiteout(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(mknodat(
        raw(dir),
        name,
        SFlag::S_IFCHR,
        Mode::empty(),
        libc::makedev(0, 0),
    )?)
}

/// Marks a directory opaque for overlayfs: lower layers' contents are hidden.
pub(crate) fn set_opaque(dir: &OwnedFd) -> io::Result<()> {
    let value = b"y";
    // SAFETY: the name is a valid NUL-terminated C string, the value pointer/length
    // describe a live byte slice, and the descriptor is open for the call's duration.
    let rc = unsafe {
        libc::fsetxattr(
            dir.as_raw_fd(),
            OPAQUE_XATTR.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn unlink(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    Ok(unlinkat(raw(dir), name, UnlinkatFlags::NoRemoveDir)?)
}

/// Sets owner, permission bits and mtime of an open file or directory. Owner first,
/// because `chown` clears setuid/setgid bits.
pub(crate) fn set_fd_metadata(
    fd: &impl AsRawFd,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Option<i64>,
) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    fchmod(fd, Mode::from_bits_truncate(mode))?;
    if let Some(mtime) = mtime {
        set_fd_mtime(fd, mtime)?;
    }
    Ok(())
}

pub(crate) fn set_fd_mtime(fd: RawFd, mtime: i64) -> io::Result<()> {
    Ok(futimens(fd, &timespec(mtime), &timespec(mtime))?)
}

/// Owner and mtime of `name` itself (a symlink is not followed).
pub(crate) fn set_link_metadata(
    dir: &OwnedFd,
    name: &OsStr,
    uid: u32,
    gid: u32,
    mtime: i64,
) -> io::Result<()> {
    fchownat(
        raw(dir),
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    utimensat(
        raw(dir),
        name,
        &timespec(mtime),
        &timespec(mtime),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Permission bits of a non-symlink node we just created ourselves in a directory only
/// this process writes to (Linux has no `fchmodat(AT_SYMLINK_NOFOLLOW)`).
pub(crate) fn set_mode_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(fchmodat(
        raw(dir),
        name,
        Mode::from_bits_truncate(mode),
        FchmodatFlags::FollowSymlink,
    )?)
}

/// Flushes the filesystem holding `fd`, so a renamed layer is complete on disk.
pub(crate) fn sync_filesystem(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: syncfs only reads the descriptor, which stays open for the call.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Closes a `DIR*` stream on every path out of [`read_dir_names`].
struct DirStream(*mut libc::DIR);

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful fdopendir and is closed exactly once.
        unsafe { libc::closedir(self.0) };
    }
}

/// Names in a directory (without `.` and `..`), read through its descriptor.
pub(crate) fn read_dir_names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let own = open_subdir(dir, OsStr::new("."))?.into_raw_fd();
    // SAFETY: `own` is an open directory descriptor we own; on success the DIR stream
    // takes ownership of it, on failure we close it ourselves.
    let stream = unsafe { libc::fdopendir(own) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `own` is still ours to close.
        unsafe { libc::close(own) };
        return Err(err);
    }
    let stream = DirStream(stream);
    let mut names = Vec::new();
    loop {
        Errno::clear();
        // SAFETY: the stream is valid until `stream` is dropped; the returned entry is
        // only read before the next readdir call.
        let entry = unsafe { libc::readdir(stream.0) };
        if entry.is_null() {
            match Errno::last() {
                Errno::UnknownErrno => break,
                e => return Err(e.into()),
            }
        }
        // SAFETY: d_name of a non-null dirent is a NUL-terminated string inside the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(OsStr::from_bytes(bytes).to_os_string());
        }
    }
    Ok(names)
}

/// Bytes of regular files below `dir`, each inode counted once (hard links), walked by
/// descriptor so deep trees and symlinks are harmless.
pub(crate) fn tree_size(dir: &OwnedFd) -> io::Result<u64> {
    let mut seen = std::collections::HashSet::new();
    tree_size_inner(dir, &mut seen)
}

fn tree_size_inner(
    dir: &OwnedFd,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> io::Result<u64> {
    let mut total = 0u64;
    for name in read_dir_names(dir)? {
        let Some(stat) = lstat_at(dir, &name)? else {
            continue;
        };
        match kind_of(&stat) {
            Kind::Dir => {
                let sub = open_subdir(dir, &name)?;
                total += tree_size_inner(&sub, seen)?;
            }
            Kind::Regular => {
                #[allow(clippy::useless_conversion)]
                let key = (u64::from(stat.st_dev), u64::from(stat.st_ino));
                if stat.st_nlink <= 1 || seen.insert(key) {
                    total += stat.st_size.max(0) as u64;
                }
            }
            Kind::Symlink | Kind::Other => {}
        }
    }
    Ok(total)
}

/// Whether `stat` is an overlayfs whiteout (a 0:0 character device).
pub(crate) fn is_whiteout(stat: &FileStat) -> bool {
    stat.st_mode & libc::S_IFMT == libc::S_IFCHR && stat.st_rdev == libc::makedev(0, 0)
}

/// Whether the directory was marked opaque by [`set_opaque`].
pub(crate) fn is_opaque(dir: &OwnedFd) -> bool {
    let mut value = [0u8; 1];
    // SAFETY: the name is a valid NUL-terminated C string, the buffer pointer/length
    // describe a live, writable byte array, and the descriptor is open for the call.
    let rc = unsafe {
        libc::fgetxattr(
            dir.as_raw_fd(),
            OPAQUE_XATTR.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    rc == 1 && value[0] == b'y'
}

/// The target of the symlink `name` in `dir`, never followed.
pub(crate) fn read_link_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OsString> {
    Ok(nix::fcntl::readlinkat(raw(dir), name)?)
}

/// Opens the regular file `name` in `dir` for reading; fails on a symlink.
pub(crate) fn open_file_at(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let fd = openat(
        raw(dir),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )?;
    Ok(File::from(owned(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(parts: &[&str]) -> Vec<OsString> {
        parts.iter().map(OsString::from).collect()
    }

    #[test]
    fn walk_refuses_symlinks_and_creates_missing_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("evil")).unwrap();
        let root = open_root(tmp.path()).unwrap();
        match walk_dirs(&root, &comps(&["evil", "x"]), true) {
            Err(WalkError::Symlink { prefix }) => assert_eq!(prefix, Path::new("evil")),
            other => panic!("expected symlink refusal, got {other:?}"),
        }
        assert!(matches!(
            walk_dirs(&root, &comps(&["a", "b"]), false),
            Err(WalkError::Missing { .. })
        ));
        walk_dirs(&root, &comps(&["a", "b"]), true).unwrap();
        assert!(tmp.path().join("a/b").is_dir());
    }

    #[test]
    fn tree_size_counts_hard_links_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/f"), [0u8; 100]).unwrap();
        std::fs::hard_link(tmp.path().join("d/f"), tmp.path().join("g")).unwrap();
        std::fs::write(tmp.path().join("h"), [0u8; 10]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("s")).unwrap();
        let root = open_root(tmp.path()).unwrap();
        assert_eq!(tree_size(&root).unwrap(), 110);
        let mut names = read_dir_names(&root).unwrap();
        names.sort();
        assert_eq!(names, comps(&["d", "g", "h", "s"]));
    }
}
