//! A qcow2 volume as a mounted ext4 filesystem, for containers. The kernel
//! here has no NBD, so `qemu-storage-daemon` exports a raw view of the
//! qcow2 as a FUSE file, a loop device backs that file, and the ext4 on it
//! (made on first use, its root owned by the container's mapped root) is
//! mounted. Everything an attachment holds is named by files in its work
//! directory (`qsd.pid`, `loop`, `mountpoint`), so `detach` undoes it after
//! an agent restart as well as at once. The daemon's QMP monitor listens on
//! `qmp.sock` there and the qcow2 is its block node [`super::node_name`]
//! (recorded in `node`), so snapshots of the attached volume go through it
//! (`holder.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::holder::{Holder, Quiesce};
use super::VolumeError;

/// The host effects of an attachment, so the order of steps and the
/// undoing of a half-made attachment are tested without root
/// (`HostTools` runs the real commands).
pub trait MountHost {
    /// Serve `volume` as a raw FUSE file at `<work_dir>/export.raw`, its
    /// qcow2 as block node `node_name`, with a QMP monitor on
    /// `<work_dir>/qmp.sock`; the daemon's pid goes to `<work_dir>/qsd.pid`.
    fn start_export(
        &self,
        volume: &Path,
        work_dir: &Path,
        node_name: &str,
    ) -> Result<(), VolumeError>;
    /// A loop device backing `file`.
    fn loop_attach(&self, volume: &Path, file: &Path) -> Result<String, VolumeError>;
    fn loop_detach(&self, volume: &Path, device: &str);
    /// Whether `device` holds a filesystem already.
    fn has_filesystem(&self, volume: &Path, device: &str) -> Result<bool, VolumeError>;
    fn make_ext4(&self, volume: &Path, device: &str, owner: (u32, u32)) -> Result<(), VolumeError>;
    /// Grow the ext4 on `device`, not mounted, to fill the device (a
    /// volume grown since it was last mounted); nothing when it fills it.
    fn grow_ext4(&self, volume: &Path, device: &str) -> Result<(), VolumeError>;
    fn mount_ext4(&self, volume: &Path, device: &str, mountpoint: &Path)
        -> Result<(), VolumeError>;
    fn unmount(&self, volume: &Path, path: &Path, lazy: bool) -> Result<(), VolumeError>;
    fn is_mounted(&self, path: &Path) -> bool;
    /// SIGTERM the daemon and wait (bounded) for it to flush and end.
    fn stop_daemon(&self, pid: i32);
}

/// The real host: qemu-storage-daemon, losetup, blkid, mkfs.ext4, mount(2).
pub struct HostTools;

impl MountHost for HostTools {
    fn start_export(&self, v: &Path, work_dir: &Path, node: &str) -> Result<(), VolumeError> {
        let file_node = format!(
            "driver=file,filename={},node-name=file",
            v.to_string_lossy().replace(',', ",,")
        );
        let export_opt = format!(
            "type=fuse,id=volume,node-name={node},mountpoint={},writable=on",
            work_dir.join(EXPORT).to_string_lossy().replace(',', ",,")
        );
        // The monitor's path is relative to the work directory, where the
        // daemon starts: a Unix socket path holds 108 bytes at most.
        let monitor = format!("socket,id=qmp,path={QMP_SOCKET},server=on,wait=off");
        // `--daemonize` returns once the export is served.
        run_in(
            v,
            Some(work_dir),
            "qemu-storage-daemon",
            &[
                "--daemonize",
                "--pidfile",
                &work_dir.join(PID_FILE).to_string_lossy(),
                "--chardev",
                &monitor,
                "--monitor",
                "chardev=qmp",
                "--blockdev",
                &file_node,
                "--blockdev",
                &format!("driver=qcow2,file=file,node-name={node}"),
                "--export",
                &export_opt,
            ],
        )
        .map(|_| ())
    }

    fn loop_attach(&self, v: &Path, file: &Path) -> Result<String, VolumeError> {
        run(v, "losetup", &["--find", "--show", &file.to_string_lossy()])
    }

    fn loop_detach(&self, v: &Path, device: &str) {
        // Gone already (a reboot) is fine.
        if Path::new(device).exists() {
            let _ = run(v, "losetup", &["-d", device]);
        }
    }

    fn has_filesystem(&self, v: &Path, device: &str) -> Result<bool, VolumeError> {
        // `blkid -p` exits 2 when the device holds no filesystem yet.
        let probe = Command::new("blkid")
            .args(["-p", device])
            .output()
            .map_err(|e| io("running blkid".into(), v, e))?;
        Ok(probe.status.code() != Some(2))
    }

    fn make_ext4(&self, v: &Path, device: &str, (uid, gid): (u32, u32)) -> Result<(), VolumeError> {
        let owner = format!("root_owner={uid}:{gid}");
        run(v, "mkfs.ext4", &["-q", "-E", &owner, device]).map(|_| ())
    }

    fn grow_ext4(&self, v: &Path, device: &str) -> Result<(), VolumeError> {
        let dev = Path::new(device);
        let sizes = ext4_bytes(dev).and_then(|fs| Ok((fs, device_bytes(dev)?)));
        let (fs, whole) = sizes.map_err(|e| io(format!("reading the sizes of {device}"), v, e))?;
        if fs >= whole {
            return Ok(());
        }
        // resize2fs grows an unmounted filesystem only after a full check;
        // `-p` repairs what is safe (exit 1 means it did).
        let check = Command::new("e2fsck")
            .args(["-f", "-p", device])
            .output()
            .map_err(|e| io("running e2fsck".into(), v, e))?;
        if !matches!(check.status.code(), Some(0 | 1)) {
            return Err(VolumeError::Tool {
                command: format!("e2fsck -f -p {device}"),
                volume_id: v.display().to_string(),
                stderr: String::from_utf8_lossy(&check.stdout).trim().to_string(),
            });
        }
        run(v, "resize2fs", &[device]).map(drop)
    }

    fn mount_ext4(&self, v: &Path, device: &str, mountpoint: &Path) -> Result<(), VolumeError> {
        nix::mount::mount(
            Some(Path::new(device)),
            mountpoint,
            Some("ext4"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| {
            io(
                format!("mounting {device} at {}", mountpoint.display()),
                v,
                e.into(),
            )
        })
    }

    fn unmount(&self, v: &Path, path: &Path, lazy: bool) -> Result<(), VolumeError> {
        let flags = if lazy {
            nix::mount::MntFlags::MNT_DETACH
        } else {
            nix::mount::MntFlags::empty()
        };
        nix::mount::umount2(path, flags)
            .map_err(|e| io(format!("unmounting {}", path.display()), v, e.into()))
    }

    fn is_mounted(&self, path: &Path) -> bool {
        is_mounted(path)
    }

    fn stop_daemon(&self, pid: i32) {
        let pid = nix::unistd::Pid::from_raw(pid);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            // The daemon flushes the qcow2 and ends its FUSE export.
            let deadline = Instant::now() + Duration::from_secs(10);
            while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Grow the ext4 on `device`, mounted, online to fill the device (the
/// kernel asks for `CAP_SYS_RESOURCE`).
pub fn grow_ext4_online(volume: &Path, device: &Path) -> Result<(), VolumeError> {
    run(volume, "resize2fs", &[&device.to_string_lossy()]).map(drop)
}

/// The size of the ext4 on `device`, from its superblock (1024 bytes in):
/// the block count (low 32 bits at 4, high at 0x150 with the 64bit
/// feature) times the block size (1024 << the value at 24).
pub fn ext4_bytes(device: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut sb = [0u8; 1024];
    let mut f = std::fs::File::open(device)?;
    f.seek(SeekFrom::Start(1024))?;
    f.read_exact(&mut sb)?;
    Ok(ext4_size_from_superblock(&sb))
}

fn ext4_size_from_superblock(sb: &[u8; 1024]) -> u64 {
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]) as u64;
    const INCOMPAT_64BIT: u64 = 0x80;
    let mut blocks = u32_at(4);
    if u32_at(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u32_at(0x150) << 32;
    }
    blocks << (10 + u32_at(24).min(6))
}

/// The size of block device `device`, in bytes.
pub fn device_bytes(device: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(device)?.seek(SeekFrom::End(0))
}

/// What one attachment holds on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsAttachment {
    pub loop_device: PathBuf,
    pub mountpoint: PathBuf,
    pub daemon_pid: i32,
}

const EXPORT: &str = "export.raw";
const PID_FILE: &str = "qsd.pid";
const LOOP_FILE: &str = "loop";
const MOUNTPOINT_FILE: &str = "mountpoint";
const NODE_FILE: &str = "node";
const QMP_SOCKET: &str = "qmp.sock";

fn io(what: String, volume: &Path, source: std::io::Error) -> VolumeError {
    VolumeError::Io {
        what,
        volume_id: volume.display().to_string(),
        source,
    }
}

fn run(volume: &Path, program: &str, args: &[&str]) -> Result<String, VolumeError> {
    run_in(volume, None, program, args)
}

fn run_in(
    volume: &Path,
    dir: Option<&Path>,
    program: &str,
    args: &[&str],
) -> Result<String, VolumeError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| io(format!("running `{command}`"), volume, e))?;
    if !out.status.success() {
        return Err(VolumeError::Tool {
            command,
            volume_id: volume.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Mount the qcow2 `volume_file` at `mountpoint` through `work_dir`
/// (made, root's alone); a new volume gets an ext4 whose root directory
/// `owner` (uid, gid) owns. On failure, what was set up is undone.
pub fn attach(
    volume_file: &Path,
    work_dir: &Path,
    mountpoint: &Path,
    owner: (u32, u32),
) -> Result<FsAttachment, VolumeError> {
    attach_with(&HostTools, volume_file, work_dir, mountpoint, owner)
}

/// [`attach`] through `host`.
pub fn attach_with(
    host: &dyn MountHost,
    volume_file: &Path,
    work_dir: &Path,
    mountpoint: &Path,
    owner: (u32, u32),
) -> Result<FsAttachment, VolumeError> {
    let v = volume_file;
    std::fs::create_dir_all(work_dir)
        .and_then(|()| std::fs::set_permissions(work_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| io(format!("preparing {}", work_dir.display()), v, e))?;
    std::fs::write(
        work_dir.join(MOUNTPOINT_FILE),
        mountpoint.as_os_str().as_encoded_bytes(),
    )
    .map_err(|e| io("recording the mount point".into(), v, e))?;
    let result = attach_steps(host, v, work_dir, mountpoint, owner);
    if result.is_err() {
        if let Err(e) = detach_with(host, work_dir) {
            tracing::warn!(error = %e, dir = %work_dir.display(), "undoing a failed volume attach");
        }
    }
    result
}

fn attach_steps(
    host: &dyn MountHost,
    v: &Path,
    work_dir: &Path,
    mountpoint: &Path,
    owner: (u32, u32),
) -> Result<FsAttachment, VolumeError> {
    let export = work_dir.join(EXPORT);
    std::fs::File::create(&export).map_err(|e| io("creating the export file".into(), v, e))?;
    let pid_file = work_dir.join(PID_FILE);
    // The volume's file is `<volume id>.qcow2` (`qcow2.rs`).
    let volume_id = v.file_stem().unwrap_or_default().to_string_lossy();
    let node = super::node_name(&volume_id);
    std::fs::write(work_dir.join(NODE_FILE), &node)
        .map_err(|e| io("recording the block node name".into(), v, e))?;
    host.start_export(v, work_dir, &node)?;
    let daemon_pid = read_pid(&pid_file).ok_or_else(|| {
        io(
            "reading qemu-storage-daemon's pid file".into(),
            v,
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    let device = host.loop_attach(v, &export)?;
    std::fs::write(work_dir.join(LOOP_FILE), &device)
        .map_err(|e| io("recording the loop device".into(), v, e))?;
    let formatted = host.has_filesystem(v, &device)?;
    if !formatted {
        host.make_ext4(v, &device, owner)?;
    }
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| io(format!("creating {}", mountpoint.display()), v, e))?;
    if formatted {
        host.grow_ext4(v, &device)?;
    }
    host.mount_ext4(v, &device, mountpoint)?;
    Ok(FsAttachment {
        loop_device: PathBuf::from(device),
        mountpoint: mountpoint.to_path_buf(),
        daemon_pid,
    })
}

/// The attachment in `work_dir` if it serves block node `node_name` and
/// its daemon's monitor is there: how to snapshot it, and which
/// filesystem to freeze meanwhile.
pub fn holder_in(work_dir: &Path, node_name: &str) -> Option<Holder> {
    let node = std::fs::read_to_string(work_dir.join(NODE_FILE)).ok()?;
    let qmp_socket = work_dir.join(QMP_SOCKET);
    if node.trim() != node_name || !qmp_socket.exists() {
        return None;
    }
    let device = std::fs::read_to_string(work_dir.join(LOOP_FILE)).ok();
    let mountpoint = std::fs::read_to_string(work_dir.join(MOUNTPOINT_FILE)).ok();
    let quiesce = match (device, mountpoint) {
        (Some(d), Some(m)) => Quiesce::HostFs {
            mountpoint: PathBuf::from(m),
            device: PathBuf::from(d.trim()),
        },
        // Not mounted yet (an attach in progress): nothing to freeze.
        _ => Quiesce::None,
    };
    Some(Holder {
        qmp_socket,
        node_name: node_name.to_string(),
        quiesce,
    })
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The loop device the attachment in `work_dir` recorded.
pub fn loop_device(work_dir: &Path) -> Option<PathBuf> {
    let d = std::fs::read_to_string(work_dir.join(LOOP_FILE)).ok()?;
    Some(PathBuf::from(d.trim()))
}

/// Whether something is mounted at `path` in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == wanted))
}

/// Undo whatever `attach` set up in `work_dir` (all of it, part of it, or
/// nothing), then remove the directory. Safe to repeat.
pub fn detach(work_dir: &Path) -> Result<(), VolumeError> {
    detach_with(&HostTools, work_dir)
}

/// [`detach`] through `host`.
pub fn detach_with(host: &dyn MountHost, work_dir: &Path) -> Result<(), VolumeError> {
    let v = work_dir;
    if !work_dir.exists() {
        return Ok(());
    }
    if let Ok(m) = std::fs::read_to_string(work_dir.join(MOUNTPOINT_FILE)) {
        let m = PathBuf::from(m);
        if host.is_mounted(&m) {
            host.unmount(v, &m, false)?;
        }
    }
    if let Ok(device) = std::fs::read_to_string(work_dir.join(LOOP_FILE)) {
        host.loop_detach(v, device.trim());
    }
    if let Some(pid) = read_pid(&work_dir.join(PID_FILE)) {
        host.stop_daemon(pid);
    }
    let export = work_dir.join(EXPORT);
    if host.is_mounted(&export) {
        host.unmount(v, &export, true)?;
    }
    std::fs::remove_dir_all(work_dir)
        .map_err(|e| io(format!("removing {}", work_dir.display()), v, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    /// Records the steps; `fail` names the step that fails.
    #[derive(Default)]
    struct FakeHost {
        steps: Mutex<Vec<String>>,
        fail: &'static str,
        formatted: bool,
    }

    impl FakeHost {
        fn step(&self, name: &str) -> Result<(), VolumeError> {
            self.steps.lock().expect("steps").push(name.to_string());
            if self.fail == name {
                return Err(VolumeError::Tool {
                    command: name.into(),
                    volume_id: "v".into(),
                    stderr: "refused".into(),
                });
            }
            Ok(())
        }
        fn steps(&self) -> Vec<String> {
            self.steps.lock().expect("steps").clone()
        }
    }

    impl MountHost for FakeHost {
        fn start_export(&self, _: &Path, work: &Path, node: &str) -> Result<(), VolumeError> {
            self.step(&format!("export {node}"))?;
            std::fs::write(work.join(PID_FILE), b"4242\n").expect("pid file");
            std::fs::write(work.join(QMP_SOCKET), b"").expect("monitor");
            Ok(())
        }
        fn loop_attach(&self, _: &Path, _: &Path) -> Result<String, VolumeError> {
            self.step("loop").map(|()| "/dev/loop7".into())
        }
        fn loop_detach(&self, _: &Path, device: &str) {
            let _ = self.step(&format!("loop -d {device}"));
        }
        fn has_filesystem(&self, _: &Path, _: &str) -> Result<bool, VolumeError> {
            Ok(self.formatted)
        }
        fn make_ext4(&self, _: &Path, _: &str, (u, g): (u32, u32)) -> Result<(), VolumeError> {
            self.step(&format!("mkfs {u}:{g}"))
        }
        fn mount_ext4(&self, _: &Path, _: &str, _: &Path) -> Result<(), VolumeError> {
            self.step("mount")
        }
        fn grow_ext4(&self, _: &Path, _: &str) -> Result<(), VolumeError> {
            self.step("grow")
        }
        fn unmount(&self, _: &Path, p: &Path, lazy: bool) -> Result<(), VolumeError> {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            self.step(&format!("umount {name} lazy={lazy}"))
        }
        fn is_mounted(&self, p: &Path) -> bool {
            // The mount point is mounted once `mount` ran; the export always.
            let steps = self.steps();
            p.ends_with(EXPORT) || steps.iter().any(|s| s == "mount")
        }
        fn stop_daemon(&self, pid: i32) {
            let _ = self.step(&format!("stop {pid}"));
        }
    }

    #[test]
    fn a_new_volume_is_formatted_for_the_mapped_root_and_detach_undoes_all() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (work, mnt) = (tmp.path().join("work"), tmp.path().join("mnt"));
        let host = FakeHost::default();
        let a = attach_with(
            &host,
            Path::new("/v.qcow2"),
            &work,
            &mnt,
            (100_000, 100_000),
        )
        .expect("attach");
        assert_eq!(a.daemon_pid, 4242);
        assert_eq!(
            host.steps(),
            ["export vol-v", "loop", "mkfs 100000:100000", "mount"]
        );
        // Snapshots find the attachment by the volume's node name.
        assert_eq!(
            holder_in(&work, "vol-v"),
            Some(Holder {
                qmp_socket: work.join("qmp.sock"),
                node_name: "vol-v".into(),
                quiesce: Quiesce::HostFs {
                    mountpoint: mnt.clone(),
                    device: PathBuf::from("/dev/loop7"),
                },
            })
        );
        assert_eq!(holder_in(&work, "vol-other"), None);
        detach_with(&host, &work).expect("detach");
        assert_eq!(
            host.steps()[4..],
            [
                "umount mnt lazy=false",
                "loop -d /dev/loop7",
                "stop 4242",
                "umount export.raw lazy=true"
            ]
        );
        assert!(!work.exists());
    }

    #[test]
    fn the_ext4_size_is_read_from_its_superblock() {
        let mut sb = [0u8; 1024];
        sb[4..8].copy_from_slice(&65536u32.to_le_bytes());
        sb[24..28].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(ext4_size_from_superblock(&sb), 64 << 20);
        // 4 KiB blocks, 64bit with a high word.
        sb[24..28].copy_from_slice(&2u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            ext4_size_from_superblock(&sb),
            ((1u64 << 32) + 65536) * 4096
        );
    }

    #[test]
    fn a_failed_step_undoes_what_was_made_and_keeps_existing_data() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (work, mnt) = (tmp.path().join("work"), tmp.path().join("mnt"));
        let host = FakeHost {
            fail: "mount",
            formatted: true,
            ..Default::default()
        };
        let e = attach_with(&host, Path::new("/v.qcow2"), &work, &mnt, (1, 1))
            .expect_err("mount fails");
        assert!(e.to_string().contains("refused"), "{e}");
        // Formatted already: never made again; the loop device and the
        // daemon are undone, and the work directory is gone.
        let steps = host.steps();
        assert!(!steps.iter().any(|s| s.starts_with("mkfs")), "{steps:?}");
        assert!(
            steps.contains(&"loop -d /dev/loop7".to_string()),
            "{steps:?}"
        );
        assert!(steps.contains(&"stop 4242".to_string()), "{steps:?}");
        assert!(!work.exists());
    }

    /// As root with qemu-storage-daemon and /dev/fuse: the filesystem is
    /// made once, owned by the given root, keeps its files across detach
    /// and attach, and detach leaves no mount, loop device or daemon.
    #[test]
    fn attach_write_detach_reattach() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root
            || Command::new("qemu-storage-daemon")
                .arg("--version")
                .output()
                .is_err()
            || !Path::new("/dev/fuse").exists()
        {
            eprintln!("skipped: needs root, qemu-storage-daemon and /dev/fuse");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let qcow2 = tmp.path().join("v.qcow2");
        run(
            &qcow2,
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                &qcow2.to_string_lossy(),
                "64M",
            ],
        )
        .expect("qemu-img create");
        let work = tmp.path().join("work");
        let mnt = tmp.path().join("mnt");
        let a = attach(&qcow2, &work, &mnt, (100_000, 100_000)).expect("attach");
        assert_eq!(std::fs::metadata(&mnt).expect("root").uid(), 100_000);
        std::fs::write(mnt.join("kept"), b"data").expect("write");
        // Held open: the snapshot goes through the daemon's monitor, with
        // the filesystem frozen meanwhile, and `qemu-img` lists it.
        let holder = holder_in(&work, "vol-v").expect("the attachment holds the volume");
        let quiet = super::super::quiesce::quiesce(&holder.quiesce, "v").expect("frozen");
        super::super::holder::qmp_execute(
            &holder,
            "v",
            "blockdev-snapshot-internal-sync",
            serde_json::json!({"device": "vol-v", "name": "s1"}),
        )
        .expect("snapshot through QMP");
        drop(quiet);
        std::fs::write(mnt.join("after"), b"thawed").expect("writes go on after the thaw");
        let info = run(
            &qcow2,
            "qemu-img",
            &["snapshot", "-U", "-l", &qcow2.to_string_lossy()],
        )
        .expect("qemu-img snapshot -l");
        assert!(info.contains("s1"), "{info}");
        detach(&work).expect("detach");
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let tmp_text = tmp.path().to_string_lossy().to_string();
        assert!(!info.contains(&tmp_text), "a mount is left: {info}");
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(a.daemon_pid), None).is_err());
        let loops = run(&qcow2, "losetup", &["-a"]).expect("losetup");
        assert!(!loops.contains(&tmp_text), "a loop device is left: {loops}");
        assert!(!work.exists());
        attach(&qcow2, &work, &mnt, (1, 1)).expect("attach again");
        assert_eq!(std::fs::read(mnt.join("kept")).expect("read"), b"data");
        // Made once: the owner from the first attach stays.
        assert_eq!(std::fs::metadata(&mnt).expect("root").uid(), 100_000);
        detach(&work).expect("detach again");
        detach(&work).expect("detach is repeatable");
    }
}
