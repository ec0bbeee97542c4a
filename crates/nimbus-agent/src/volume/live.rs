//! A volume mounted into, or taken out of, a container that is running.
//!
//! The host side is the same as at start (`attach.rs`: qemu-storage-daemon,
//! loop device, ext4 under `<instance>/volumes/<name>/mnt`). What differs is
//! the last step: the container's mount namespace is not the host's, and
//! joining it (`setns(CLONE_NEWNS)`) fails in a multi-threaded process
//! such as the agent. So the agent runs a short helper, `nimbus-shim
//! container-mount|container-unmount ...` (the shim executable with other
//! arguments), which is single-threaded from its first instruction:
//! it clones the host-side mount (`open_tree(OPEN_TREE_CLONE)`) while
//! still in the host's namespace, joins the container's, makes the mount
//! point if missing (owned by the container's root) and attaches the clone
//! there (`move_mount`). A helper process rather than a request to the
//! shim: it works for shims an older agent started, a failure cannot take
//! the shim (and its container) down, and the shim's event loop never
//! blocks on a mount.
//!
//! The container's root is mounted `rslave` (libcontainer's default), so
//! nothing mounted inside it propagates back to the host, and a host
//! mount point under the instance directory never shows up inside.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::mount::MntFlags;
use nix::sched::{setns, CloneFlags};
use nix::unistd::{chown, Gid, Uid};

use super::VolumeError;
use crate::host::mount_api::{
    move_mount_to, open_tree_clone, set_attributes, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
};

/// The helper's sub-commands (`nimbus-shim <sub> ...`, `nimbus <sub> ...`).
pub const MOUNT_SUBCOMMAND: &str = "container-mount";
pub const UNMOUNT_SUBCOMMAND: &str = "container-unmount";

/// What taking a volume out of a running container did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted, nothing held it.
    Done,
    /// A process in the container holds files on it: detached lazily, the
    /// filesystem lives on until they close them.
    Lazy,
    /// Nothing was mounted there (an earlier pass did it).
    Absent,
}

impl Unmounted {
    fn word(self) -> &'static str {
        match self {
            Unmounted::Done => "unmounted",
            Unmounted::Lazy => "lazy",
            Unmounted::Absent => "absent",
        }
    }

    fn from_word(word: &str) -> Option<Unmounted> {
        [Unmounted::Done, Unmounted::Lazy, Unmounted::Absent]
            .into_iter()
            .find(|u| u.word() == word)
    }
}

fn helper_error(what: String, detail: String) -> VolumeError {
    VolumeError::Tool {
        command: what,
        volume_id: "-".into(),
        stderr: detail,
    }
}

/// Run the helper `exe` with `args`; its standard output.
fn run_helper(exe: &Path, args: &[OsString]) -> Result<String, VolumeError> {
    let shown = format!(
        "{} {}",
        exe.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new(exe)
        .args(args)
        .output()
        .map_err(|e| helper_error(shown.clone(), e.to_string()))?;
    if !out.status.success() {
        return Err(helper_error(
            shown,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Mount the host-side mount `source` at `destination` inside the
/// container whose init is `pid` (through the helper `exe`), read-only
/// when asked; a missing mount point is made, owned by `owner`.
pub fn mount_into(
    exe: &Path,
    pid: i32,
    source: &Path,
    destination: &str,
    owner: (u32, u32),
    read_only: bool,
) -> Result<(), VolumeError> {
    let args: Vec<OsString> = vec![
        MOUNT_SUBCOMMAND.into(),
        pid.to_string().into(),
        source.into(),
        destination.into(),
        owner.0.to_string().into(),
        owner.1.to_string().into(),
        if read_only { "ro" } else { "rw" }.into(),
    ];
    run_helper(exe, &args).map(drop)
}

/// Unmount `destination` inside the container whose init is `pid`, after
/// flushing the filesystem mounted at `host_side` (the same ext4).
pub fn unmount_from(
    exe: &Path,
    pid: i32,
    host_side: &Path,
    destination: &str,
) -> Result<Unmounted, VolumeError> {
    if let Ok(dir) = File::open(host_side) {
        if let Err(e) = nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) {
            tracing::warn!(path = %host_side.display(), error = %e, "flushing a volume before detaching it");
        }
    }
    let args: Vec<OsString> = vec![
        UNMOUNT_SUBCOMMAND.into(),
        pid.to_string().into(),
        destination.into(),
    ];
    let word = run_helper(exe, &args)?;
    Unmounted::from_word(&word).ok_or_else(|| {
        helper_error(
            format!("{UNMOUNT_SUBCOMMAND} {pid} {destination}"),
            format!("unexpected answer {word:?}"),
        )
    })
}

/// Whether the filesystem on `device` is still mounted somewhere (a lazily
/// detached mount that a process holds): the kernel then refuses an
/// exclusive open of the block device.
pub fn device_busy(device: &Path) -> bool {
    matches!(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(device),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY)
    )
}

/// The helper's entry point, for both binaries: `Some(exit code)` when
/// `args` (the process's, program name first) call a helper sub-command.
/// Must run before the process starts any thread.
pub fn helper_main(args: &[OsString]) -> Option<ExitCode> {
    let sub = args.get(1)?.to_str()?;
    let rest = &args[2..];
    let result = match sub {
        MOUNT_SUBCOMMAND => mount_command(rest).map(|()| String::new()),
        UNMOUNT_SUBCOMMAND => unmount_command(rest).map(|u| u.word().to_string()),
        _ => return None,
    };
    Some(match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    })
}

fn arg<'a>(args: &'a [OsString], i: usize, what: &str) -> Result<&'a OsString, String> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {i} ({what}); the agent runs this helper"))
}

fn number<T: std::str::FromStr>(args: &[OsString], i: usize, what: &str) -> Result<T, String> {
    let a = arg(args, i, what)?;
    a.to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what} {a:?} is not a number"))
}

/// `container-mount <pid> <source> <destination> <uid> <gid> <rw|ro>`.
fn mount_command(args: &[OsString]) -> Result<(), String> {
    let pid: i32 = number(args, 0, "pid")?;
    let source = PathBuf::from(arg(args, 1, "source")?);
    let destination = PathBuf::from(arg(args, 2, "destination")?);
    let owner = (number(args, 3, "uid")?, number(args, 4, "gid")?);
    let read_only = arg(args, 5, "rw|ro")? == "ro";
    check_destination(&destination)?;
    let ns = open_mount_ns(pid)?;
    let tree = open_tree_clone(&source)
        .map_err(|e| format!("cloning the mount at {}: {e}", source.display()))?;
    let mut attributes = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if read_only {
        attributes |= MOUNT_ATTR_RDONLY;
    }
    set_attributes(&tree, attributes, None)
        .map_err(|e| format!("making the mount of {} read-only: {e}", source.display()))?;
    enter(&ns, pid)?;
    make_mount_point(&destination, owner)?;
    move_mount_to(&tree, &destination).map_err(|e| {
        format!(
            "mounting the volume at {} in container {pid}: {e}",
            destination.display()
        )
    })
}

/// `container-unmount <pid> <destination>`: prints what it did.
fn unmount_command(args: &[OsString]) -> Result<Unmounted, String> {
    let pid: i32 = number(args, 0, "pid")?;
    let destination = PathBuf::from(arg(args, 1, "destination")?);
    check_destination(&destination)?;
    // Read from the host's /proc before joining: inside, /proc is the
    // container's, where this process has no pid.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("reading the mounts of container {pid}: {e}"))?;
    if !mounted_at(&mountinfo, &destination) {
        return Ok(Unmounted::Absent);
    }
    let ns = open_mount_ns(pid)?;
    enter(&ns, pid)?;
    match nix::mount::umount2(&destination, MntFlags::empty()) {
        Ok(()) => Ok(Unmounted::Done),
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(&destination, MntFlags::MNT_DETACH)
            .map(|()| Unmounted::Lazy)
            .map_err(|e| format!("detaching {} lazily: {e}", destination.display())),
        Err(e) => Err(format!(
            "unmounting {} in container {pid}: {e}",
            destination.display()
        )),
    }
}

/// The server checks paths; the helper checks again, as it runs as root.
fn check_destination(path: &Path) -> Result<(), String> {
    let normal = path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !normal || path == Path::new("/") {
        return Err(format!(
            "{} is not an absolute path below / without ..",
            path.display()
        ));
    }
    Ok(())
}

/// Whether `mountinfo` (of the container's init) lists a mount at `path`.
pub fn mounted_at(mountinfo: &str, path: &Path) -> bool {
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    let wanted = wanted.trim_end_matches('/');
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted))
}

fn open_mount_ns(pid: i32) -> Result<File, String> {
    File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("opening the mount namespace of container process {pid}: {e}"))
}

/// Join the mount namespace `ns`: the root and working directory become
/// the container's root.
fn enter(ns: &File, pid: i32) -> Result<(), String> {
    setns(ns, CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("joining the mount namespace of container process {pid}: {e}"))
}

/// Make `path` and its missing parents (inside the container, whose root
/// is ours now), each owned by the container's root.
fn make_mount_point(path: &Path, (uid, gid): (u32, u32)) -> Result<(), String> {
    let mut at = PathBuf::from("/");
    for c in path.components().skip(1) {
        at.push(c);
        match std::fs::create_dir(&at) {
            Ok(()) => chown(&at, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| format!("giving {} to the container's root: {e}", at.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("making {} in the container: {e}", at.display())),
        }
    }
    if !path.is_dir() {
        return Err(format!(
            "{} exists in the container and is not a directory; attach the volume at another path",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_is_found_in_mountinfo() {
        let info = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 36 7:3 / /var/lib/my\\040db rw - ext4 /dev/loop3 rw\n";
        assert!(mounted_at(info, Path::new("/mnt1")));
        assert!(mounted_at(info, Path::new("/mnt1/")));
        assert!(mounted_at(info, Path::new("/var/lib/my db")));
        assert!(!mounted_at(info, Path::new("/mnt")));
    }

    #[test]
    fn the_helper_refuses_odd_arguments() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(helper_main(&args(&["nimbus-shim", "shim", "/d"])).is_none());
        assert!(check_destination(Path::new("/data")).is_ok());
        for bad in ["data", "/", "/a/../etc"] {
            assert!(check_destination(Path::new(bad)).is_err(), "{bad}");
        }
        let e = number::<i32>(&args(&["x"]), 0, "pid").expect_err("not a number");
        assert!(e.contains("pid \"x\""), "{e}");
        let e = arg(&args(&[]), 2, "destination").expect_err("missing");
        assert!(e.contains("destination"), "{e}");
        for word in ["unmounted", "lazy", "absent"] {
            assert_eq!(Unmounted::from_word(word).map(Unmounted::word), Some(word));
        }
    }
}
