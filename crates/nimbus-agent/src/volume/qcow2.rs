//! The default backend: one sparse qcow2 file per volume under
//! `<data>/volumes/<id>.qcow2`, changed through `qemu-img`. Snapshots are
//! qcow2 internal snapshots, so a volume's snapshots live and go with its
//! file. The directory is root's alone (0700) and every file 0600: other
//! local users read no tenant's data.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::holder::{self, Holder};
use super::{AttachInfo, Observed, VolumeBackend, VolumeError};

pub struct Qcow2Backend {
    dir: PathBuf,
    qemu_img: PathBuf,
}

impl Qcow2Backend {
    /// Keeps volumes in `dir`, made (0700) if missing.
    pub fn open(dir: &Path) -> Result<Qcow2Backend, VolumeError> {
        let io = |what: &str, source| VolumeError::Io {
            what: format!("{what} {}", dir.display()),
            volume_id: "-".into(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restricting", e))?;
        Ok(Qcow2Backend {
            dir: dir.to_path_buf(),
            qemu_img: PathBuf::from("qemu-img"),
        })
    }

    pub fn path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.qcow2"))
    }

    /// Where a volume is made before it is renamed into place: a crash
    /// mid-way leaves no half-made volume under the real name.
    fn partial_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!(".{volume_id}.qcow2.partial"))
    }

    fn run(&self, volume_id: &str, args: &[&str]) -> Result<Vec<u8>, VolumeError> {
        let command = format!("qemu-img {}", args.join(" "));
        let out = Command::new(&self.qemu_img)
            .args(args)
            .output()
            .map_err(|e| VolumeError::Io {
                what: format!("running `{command}` (is qemu-utils installed?)"),
                volume_id: volume_id.to_string(),
                source: e,
            })?;
        if !out.status.success() {
            return Err(VolumeError::Tool {
                command,
                volume_id: volume_id.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    fn io(&self, what: &str, volume_id: &str, source: std::io::Error) -> VolumeError {
        VolumeError::Io {
            what: what.to_string(),
            volume_id: volume_id.to_string(),
            source,
        }
    }

    /// Make the partial file private, durable, and the volume.
    fn publish(&self, volume_id: &str) -> Result<(), VolumeError> {
        let partial = self.partial_path(volume_id);
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| self.io("restricting the new volume file", volume_id, e))?;
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.io("syncing the new volume file", volume_id, e))?;
        std::fs::rename(&partial, self.path(volume_id))
            .map_err(|e| self.io("renaming the new volume file into place", volume_id, e))?;
        self.sync_dir(volume_id)
    }

    fn sync_dir(&self, volume_id: &str) -> Result<(), VolumeError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("syncing the volumes directory", volume_id, e))
    }

    fn remove_partial(&self, volume_id: &str) -> Result<(), VolumeError> {
        match std::fs::remove_file(self.partial_path(volume_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(self.io("removing a half-made volume file", volume_id, e))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Copy)]
enum SnapshotOp {
    Create,
    Delete,
}

impl SnapshotOp {
    fn qemu_img_flag(self) -> &'static str {
        match self {
            SnapshotOp::Create => "-c",
            SnapshotOp::Delete => "-d",
        }
    }

    fn qmp_command(self) -> &'static str {
        match self {
            SnapshotOp::Create => "blockdev-snapshot-internal-sync",
            SnapshotOp::Delete => "blockdev-snapshot-delete-internal-sync",
        }
    }
}

impl Qcow2Backend {
    /// An internal qcow2 snapshot made or removed by `qemu-img` on a
    /// detached volume, or by the holder's QEMU (which has the image open
    /// and locked) on an attached one. Either way it lands in the same
    /// snapshot table, so listing and cloning see no difference.
    fn snapshot_op(
        &self,
        volume_id: &str,
        snapshot: &str,
        holder: Option<&Holder>,
        op: SnapshotOp,
    ) -> Result<(), VolumeError> {
        match holder {
            Some(h) => {
                let arguments = serde_json::json!({"device": h.node_name, "name": snapshot});
                holder::qmp_execute(h, volume_id, op.qmp_command(), arguments).map(|_| ())
            }
            None => {
                let path = self.path(volume_id);
                let p = path.to_string_lossy();
                self.run(volume_id, &["snapshot", op.qemu_img_flag(), snapshot, &p])
                    .map(|_| ())
            }
        }
    }
}

/// The fields of `qemu-img info --output=json` a volume's status needs.
pub fn parse_info(volume_id: &str, json: &[u8]) -> Result<Observed, VolumeError> {
    let info = |detail: String| VolumeError::Info {
        volume_id: volume_id.to_string(),
        detail,
    };
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| info(format!("not JSON: {e}")))?;
    let size_bytes = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| info("no virtual-size".into()))?;
    let snapshots = v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Observed {
        size_bytes,
        allocated_bytes: v["actual-size"].as_u64().unwrap_or(0),
        snapshots,
    })
}

impl VolumeBackend for Qcow2Backend {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    fn inspect(&self, volume_id: &str) -> Result<Option<Observed>, VolumeError> {
        let path = self.path(volume_id);
        if !path.exists() {
            return Ok(None);
        }
        let p = path.to_string_lossy();
        // `-U`: read while a consumer holds the image's lock.
        let out = self.run(
            volume_id,
            &["info", "-U", "-f", "qcow2", "--output=json", &p],
        )?;
        parse_info(volume_id, &out).map(Some)
    }

    fn create(&self, volume_id: &str, size_bytes: u64) -> Result<(), VolumeError> {
        self.remove_partial(volume_id)?;
        let partial = self.partial_path(volume_id);
        let size = size_bytes.to_string();
        self.run(
            volume_id,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                &partial.to_string_lossy(),
                &size,
            ],
        )?;
        self.publish(volume_id)
    }

    fn clone_from_snapshot(
        &self,
        volume_id: &str,
        source_id: &str,
        snapshot: &str,
        size_bytes: u64,
    ) -> Result<(), VolumeError> {
        self.remove_partial(volume_id)?;
        let partial = self.partial_path(volume_id);
        let partial = partial.to_string_lossy();
        let source = self.path(source_id);
        let select = format!("snapshot.name={snapshot}");
        self.run(
            volume_id,
            &[
                "convert",
                "-U",
                "-f",
                "qcow2",
                "-O",
                "qcow2",
                "-l",
                &select,
                &source.to_string_lossy(),
                &partial,
            ],
        )?;
        // The copy has the source's size now, which may be larger than the
        // snapshot's: set the clone's own size. It is never below the
        // snapshot's size (the server refuses that), so `--shrink` only
        // drops the zeros past the snapshot's end.
        let size = size_bytes.to_string();
        self.run(
            volume_id,
            &["resize", "-q", "--shrink", "-f", "qcow2", &partial, &size],
        )?;
        self.publish(volume_id)
    }

    fn resize(
        &self,
        volume_id: &str,
        size_bytes: u64,
        holder: Option<&Holder>,
    ) -> Result<(), VolumeError> {
        if let Some(h) = holder {
            // The holder has the image open: it grows the qcow2 and tells
            // its consumers (a VM's disk, a daemon's export) the new size.
            let arguments = serde_json::json!({"node-name": h.node_name, "size": size_bytes});
            return holder::qmp_execute(h, volume_id, "block_resize", arguments).map(|_| ());
        }
        let size = size_bytes.to_string();
        let path = self.path(volume_id);
        self.run(
            volume_id,
            &[
                "resize",
                "-q",
                "-f",
                "qcow2",
                &path.to_string_lossy(),
                &size,
            ],
        )?;
        Ok(())
    }

    fn snapshot(
        &self,
        volume_id: &str,
        snapshot: &str,
        holder: Option<&Holder>,
    ) -> Result<(), VolumeError> {
        self.snapshot_op(volume_id, snapshot, holder, SnapshotOp::Create)
    }

    fn delete_snapshot(
        &self,
        volume_id: &str,
        snapshot: &str,
        holder: Option<&Holder>,
    ) -> Result<(), VolumeError> {
        self.snapshot_op(volume_id, snapshot, holder, SnapshotOp::Delete)
    }

    fn delete(&self, volume_id: &str) -> Result<(), VolumeError> {
        self.remove_partial(volume_id)?;
        match std::fs::remove_file(self.path(volume_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(self.io("removing the volume file", volume_id, e))
            }
            _ => {}
        }
        self.sync_dir(volume_id)
    }

    fn attach_info(&self, volume_id: &str) -> AttachInfo {
        let path = self.path(volume_id);
        AttachInfo {
            driver: "qcow2",
            blockdev: serde_json::json!({
                "driver": "qcow2",
                "file": {"driver": "file", "filename": path.to_string_lossy()},
            }),
            path: Some(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_gives_size_allocation_and_snapshots() {
        let json = br#"{"virtual-size": 33554432, "actual-size": 208896, "format": "qcow2",
            "snapshots": [{"name": "s1", "id": "1"}, {"name": "before-upgrade", "id": "2"}]}"#;
        let o = parse_info("v1", json).expect("parses");
        assert_eq!(o.size_bytes, 32 << 20);
        assert_eq!(o.allocated_bytes, 208896);
        assert_eq!(o.snapshots, vec!["s1", "before-upgrade"]);
        let none = parse_info("v1", br#"{"virtual-size": 1}"#).expect("no snapshots");
        assert!(none.snapshots.is_empty());
        let e = parse_info("v1", b"{}").expect_err("no size");
        assert!(e.to_string().contains("volume v1"), "{e}");
    }

    /// Runs the real `qemu-img` when it is installed: create, snapshot,
    /// grow, clone from the snapshot, delete; files are private.
    #[test]
    fn qemu_img_round_trip() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let b = Qcow2Backend::open(&tmp.path().join("volumes")).expect("open");
        assert_eq!(b.inspect("a").expect("inspect"), None);
        b.create("a", 16 << 20).expect("create");
        let mode = std::fs::metadata(b.path("a"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(tmp.path().join("volumes"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        b.snapshot("a", "s1", None).expect("snapshot");
        b.resize("a", 32 << 20, None).expect("resize");
        let o = b.inspect("a").expect("inspect").expect("exists");
        assert_eq!(o.size_bytes, 32 << 20);
        assert_eq!(o.snapshots, vec!["s1"]);
        b.clone_from_snapshot("b", "a", "s1", 24 << 20)
            .expect("clone");
        let c = b.inspect("b").expect("inspect").expect("exists");
        assert_eq!(c.size_bytes, 24 << 20);
        assert!(c.snapshots.is_empty());
        b.delete_snapshot("a", "s1", None).expect("delete snapshot");
        b.delete("a").expect("delete");
        b.delete("a").expect("delete again");
        assert_eq!(b.inspect("a").expect("inspect"), None);
        let e = b
            .clone_from_snapshot("c", "a", "s1", 16 << 20)
            .expect_err("no source");
        assert!(e.to_string().contains("qemu-img convert"), "{e}");
        assert!(!b.partial_path("c").exists() || b.remove_partial("c").is_ok());
    }
}
