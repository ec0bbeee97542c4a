//! The writable layer of a container, sized: a sparse ext4 image of the
//! instance's `disk_bytes` at `<dir>/disk.img`, loop-mounted at `<dir>/disk`,
//! holds the overlay's `upper` and `work` dirs. A container that writes past
//! its size gets ENOSPC from its own filesystem; the host's disk only ever
//! holds the blocks the container really wrote (the image is sparse and
//! mounted with `discard`, so deleted files give their blocks back).
//!
//! The filesystem is made at the first start and kept across stops and
//! restarts like the upper dir was: a sparse copy of a formatted template
//! of that size (`<data>/disk-templates/ext4-<bytes>.img`, made once with
//! `mkfs.ext4`: no journal, the inode tables left uninitialised and never
//! zeroed behind the container's back, see [`MOUNT_OPTIONS`]), which moves
//! only the few MiB of metadata instead of running mkfs (about 70 ms for
//! 10 GiB) at every launch. The loop device is attached by mount(8)
//! with autoclear, so unmounting the filesystem (teardown, or the agent's
//! clean-up after a dead shim, which unmounts everything under the instance
//! dir) also frees the loop device; removing the instance dir removes the
//! image.
//!
//! Host effects go through [`DiskHost`]; what to do for an instance dir is
//! decided by [`plan_writable_layer`], tested without root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::mounts::mount_points_under;
use crate::shim::ShimError;

/// The image file of the writable layer, inside the instance dir.
pub const DISK_IMAGE: &str = "disk.img";
/// Where the image is mounted, inside the instance dir.
pub const DISK_MOUNT: &str = "disk";
/// `noinit_itable`: the kernel would otherwise zero the inode tables in the
/// background, writing tens of MiB per GiB into the sparse image on the
/// host's disk for no tenant's benefit (`uninit_bg` keeps unused tables
/// safe). `discard`: deletions punch holes back into the image.
pub const MOUNT_OPTIONS: &str = "loop,nodev,nosuid,noinit_itable,discard";

pub fn disk_image(instance_dir: &Path) -> PathBuf {
    instance_dir.join(DISK_IMAGE)
}

pub fn disk_mount_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join(DISK_MOUNT)
}

/// Where an instance's upper and work dirs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritableLayer {
    /// Directly on the host's filesystem, without a limit: a spec without a
    /// size (written by an older agent), or an instance whose upper dir was
    /// made before sizes existed (its files stay where they are).
    HostDirs,
    /// In the instance's own filesystem of `bytes`; `format` when the image
    /// does not exist yet.
    OwnDisk { bytes: u64, format: bool },
}

/// What the instance dir needs, from the spec's size and what is on disk.
pub fn plan_writable_layer(
    disk_bytes: Option<u64>,
    host_upper_exists: bool,
    image_exists: bool,
) -> WritableLayer {
    match disk_bytes {
        None => WritableLayer::HostDirs,
        Some(_) if host_upper_exists && !image_exists => WritableLayer::HostDirs,
        Some(bytes) => WritableLayer::OwnDisk {
            bytes,
            format: !image_exists,
        },
    }
}

/// Making and mounting the layer's filesystem.
pub trait DiskHost {
    /// Creates `image` as a sparse file of `bytes` holding an empty ext4
    /// filesystem; nothing is left at `image` if it fails.
    fn make_filesystem(&self, image: &Path, bytes: u64) -> Result<(), ShimError>;
    /// Loop-mounts `image` at `target` (an existing directory).
    fn mount_image(&self, image: &Path, target: &Path) -> Result<(), ShimError>;
    /// Whether something is mounted at `target`.
    fn is_mounted(&self, target: &Path) -> bool;
}

/// The real host: `mkfs.ext4` and `mount(8)` from e2fsprogs and util-linux.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostTools;

/// The writable layer's filesystem could not be made or mounted.
pub(crate) fn disk_error(message: impl Into<String>) -> ShimError {
    ShimError::Driver {
        step: "writable layer could not be made",
        message: message.into(),
    }
}

/// A system tool by absolute path: the shim may run with a bare `PATH`.
fn tool(name: &str) -> Result<PathBuf, ShimError> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            disk_error(format!(
                "{name} was not found in /usr/sbin, /sbin, /usr/bin or /bin; install {}",
                if name == "mount" {
                    "util-linux"
                } else {
                    "e2fsprogs"
                }
            ))
        })
}

fn run(mut command: Command, what: String) -> Result<(), ShimError> {
    let out = command
        .output()
        .map_err(|e| disk_error(format!("{what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(disk_error(format!(
        "{what}: {} ({})",
        String::from_utf8_lossy(&out.stderr).trim(),
        out.status
    )))
}

/// Where formatted, never-mounted images of each size are kept: beside the
/// instances dir (`<data>/disk-templates/`), so a new instance's layer is a
/// sparse copy of a few MiB instead of a `mkfs.ext4` run. `None` for an
/// instance dir with no grandparent (then every image is made afresh).
fn templates_dir(instance_dir: &Path) -> Option<PathBuf> {
    Some(instance_dir.parent()?.parent()?.join("disk-templates"))
}

/// Makes a fresh ext4 image of `bytes` at `target` (through a partial file
/// renamed into place, so `target` is complete or absent).
fn make_image(target: &Path, bytes: u64) -> Result<(), ShimError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mkfs = tool("mkfs.ext4")?;
    let partial = partial_name(target);
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| disk_error(format!("create {}: {e}", partial.display())))?;
        file.set_len(bytes)
            .map_err(|e| disk_error(format!("size {} to {bytes} bytes: {e}", partial.display())))?;
        drop(file);
        let mut command = Command::new(mkfs);
        // No journal: the layer is a scratch area, and a journal costs
        // every write a second one. `-m 0`: the container gets all of it.
        command
            .args(["-q", "-F", "-O", "^has_journal", "-m", "0"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(&partial);
        run(
            command,
            format!("mkfs.ext4 on {} ({bytes} bytes)", partial.display()),
        )?;
        rename(&partial, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `<target>.partial-<pid>`: two shims making the same template at once
/// each write their own file, and the last rename wins whole.
fn partial_name(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

fn rename(from: &Path, to: &Path) -> Result<(), ShimError> {
    std::fs::rename(from, to).map_err(|e| {
        disk_error(format!(
            "rename {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

/// Copies `source` to `target` keeping its holes: only the data extents
/// (found with SEEK_DATA/SEEK_HOLE) are read and written, so a formatted
/// 10 GiB image costs a few MiB of I/O. Through a partial file renamed
/// into place.
pub fn sparse_copy(source: &Path, target: &Path) -> Result<(), ShimError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let partial = partial_name(target);
    let result = (|| {
        let src = std::fs::File::open(source)
            .map_err(|e| disk_error(format!("open {}: {e}", source.display())))?;
        let len = src
            .metadata()
            .map_err(|e| disk_error(format!("stat {}: {e}", source.display())))?
            .len();
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| disk_error(format!("create {}: {e}", partial.display())))?;
        dst.set_len(len)
            .map_err(|e| disk_error(format!("size {} to {len} bytes: {e}", partial.display())))?;
        let seek_err = |e: nix::Error| disk_error(format!("seek in {}: {e}", source.display()));
        let mut buf = vec![0u8; 1 << 20];
        let mut pos: i64 = 0;
        while (pos as u64) < len {
            let data = match nix::unistd::lseek(src.as_raw_fd(), pos, nix::unistd::Whence::SeekData)
            {
                Ok(off) => off,
                Err(nix::Error::ENXIO) => break,
                Err(e) => return Err(seek_err(e)),
            };
            let hole = nix::unistd::lseek(src.as_raw_fd(), data, nix::unistd::Whence::SeekHole)
                .map_err(seek_err)?;
            let mut off = data as u64;
            while off < hole as u64 {
                let want = buf.len().min((hole as u64 - off) as usize);
                let n = src
                    .read_at(&mut buf[..want], off)
                    .map_err(|e| disk_error(format!("read {}: {e}", source.display())))?;
                if n == 0 {
                    break;
                }
                dst.write_all_at(&buf[..n], off)
                    .map_err(|e| disk_error(format!("write {}: {e}", partial.display())))?;
                off += n as u64;
            }
            pos = hole;
        }
        drop(dst);
        rename(&partial, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

impl DiskHost for HostTools {
    fn make_filesystem(&self, image: &Path, bytes: u64) -> Result<(), ShimError> {
        use std::os::unix::fs::DirBuilderExt;
        let Some(templates) = image.parent().and_then(templates_dir) else {
            return make_image(image, bytes);
        };
        let template = templates.join(format!("ext4-{bytes}.img"));
        if !template.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&templates)
                .map_err(|e| disk_error(format!("create {}: {e}", templates.display())))?;
            make_image(&template, bytes)?;
        }
        sparse_copy(&template, image)
    }

    fn mount_image(&self, image: &Path, target: &Path) -> Result<(), ShimError> {
        let mut command = Command::new(tool("mount")?);
        command
            .args(["-t", "ext4", "-o", MOUNT_OPTIONS])
            .arg(image)
            .arg(target);
        run(
            command,
            format!("mount {} at {}", image.display(), target.display()),
        )
    }

    fn is_mounted(&self, target: &Path) -> bool {
        mount_points_under(target)
            .map(|points| points.iter().any(|p| p == target))
            .unwrap_or(false)
    }
}

/// Makes (on first use) and mounts the instance's writable layer, and
/// returns its upper and work dirs; they may not exist yet. Host dirs for
/// [`WritableLayer::HostDirs`]; an own filesystem already mounted (a
/// restart after a failed start) is used as it is.
pub fn prepare_writable_layer(
    host: &dyn DiskHost,
    instance_dir: &Path,
    disk_bytes: Option<u64>,
) -> Result<(PathBuf, PathBuf), ShimError> {
    let image = disk_image(instance_dir);
    let plan = plan_writable_layer(
        disk_bytes,
        super::rootfs::upper_dir(instance_dir).exists(),
        image.exists(),
    );
    let WritableLayer::OwnDisk { bytes, format } = plan else {
        return Ok((
            super::rootfs::upper_dir(instance_dir),
            super::rootfs::work_dir(instance_dir),
        ));
    };
    let mount_dir = disk_mount_dir(instance_dir);
    if format {
        host.make_filesystem(&image, bytes)?;
    }
    if !host.is_mounted(&mount_dir) {
        std::fs::create_dir_all(&mount_dir)
            .map_err(|e| disk_error(format!("create {}: {e}", mount_dir.display())))?;
        host.mount_image(&image, &mount_dir)?;
    }
    Ok((mount_dir.join("upper"), mount_dir.join("work")))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn a_sparse_copy_keeps_the_data_and_the_holes() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("t.img"), dir.path().join("c.img"));
        let file = std::fs::File::create(&source).unwrap();
        file.set_len(1 << 26).unwrap();
        file.write_all_at(b"superblock", 1024).unwrap();
        file.write_all_at(&[7u8; 8192], 32 << 20).unwrap();
        file.write_all_at(b"tail", (1 << 26) - 4).unwrap();
        drop(file);
        sparse_copy(&source, &target).unwrap();
        let copy = std::fs::read(&target).unwrap();
        assert_eq!(copy.len(), 1 << 26);
        assert_eq!(copy, std::fs::read(&source).unwrap());
        // 512-byte blocks: the copy holds its three extents, not 64 MiB.
        let blocks = std::fs::metadata(&target).unwrap().blocks();
        assert!(
            blocks * 512 < 1 << 20,
            "the copy allocated {} bytes",
            blocks * 512
        );
        assert!(!dir.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".partial")));
    }

    #[test]
    fn a_sized_spec_gets_its_own_filesystem_made_once() {
        assert_eq!(
            plan_writable_layer(Some(64 << 20), false, false),
            WritableLayer::OwnDisk {
                bytes: 64 << 20,
                format: true
            }
        );
        assert_eq!(
            plan_writable_layer(Some(64 << 20), false, true),
            WritableLayer::OwnDisk {
                bytes: 64 << 20,
                format: false
            }
        );
    }

    #[test]
    fn an_unsized_spec_or_an_older_upper_dir_stays_on_the_host() {
        assert_eq!(
            plan_writable_layer(None, false, false),
            WritableLayer::HostDirs
        );
        // The files of an instance made before sizes existed are not lost.
        assert_eq!(
            plan_writable_layer(Some(1 << 30), true, false),
            WritableLayer::HostDirs
        );
    }

    #[derive(Default)]
    struct FakeHost {
        calls: RefCell<Vec<String>>,
        mounted: RefCell<bool>,
        fail_mount: bool,
    }

    impl DiskHost for FakeHost {
        fn make_filesystem(&self, image: &Path, bytes: u64) -> Result<(), ShimError> {
            self.calls.borrow_mut().push(format!("mkfs {bytes}"));
            std::fs::write(image, b"").map_err(|e| disk_error(e.to_string()))
        }
        fn mount_image(&self, _image: &Path, _target: &Path) -> Result<(), ShimError> {
            self.calls.borrow_mut().push("mount".into());
            if self.fail_mount {
                return Err(disk_error("mount: no loop device"));
            }
            *self.mounted.borrow_mut() = true;
            Ok(())
        }
        fn is_mounted(&self, _target: &Path) -> bool {
            *self.mounted.borrow()
        }
    }

    #[test]
    fn the_layer_is_formatted_at_the_first_start_and_only_mounted_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = FakeHost::default();
        let (upper, work) =
            prepare_writable_layer(&host, dir.path(), Some(64 << 20)).expect("first start");
        assert_eq!(upper, dir.path().join("disk/upper"));
        assert_eq!(work, dir.path().join("disk/work"));
        // Already mounted: nothing to do.
        prepare_writable_layer(&host, dir.path(), Some(64 << 20)).expect("same start");
        // Stopped (unmounted), then started again: mounted, not formatted.
        *host.mounted.borrow_mut() = false;
        prepare_writable_layer(&host, dir.path(), Some(64 << 20)).expect("restart");
        assert_eq!(
            *host.calls.borrow(),
            vec!["mkfs 67108864", "mount", "mount"]
        );
    }

    #[test]
    fn a_failed_mount_is_reported_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = FakeHost {
            fail_mount: true,
            ..Default::default()
        };
        let err =
            prepare_writable_layer(&host, dir.path(), Some(64 << 20)).expect_err("mount fails");
        assert!(err.to_string().contains("no loop device"), "{err}");
    }

    #[test]
    fn an_unsized_spec_uses_the_host_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = FakeHost::default();
        let (upper, _) = prepare_writable_layer(&host, dir.path(), None).expect("host dirs");
        assert_eq!(upper, dir.path().join("upper"));
        assert!(host.calls.borrow().is_empty());
    }
}
