//! Volumes as a VM's virtio disks: their predictable names, the QEMU
//! options that open them, what to change to make a running VM's disks
//! match its instance's volumes, and which QEMU holds a volume.
//!
//! Names (documented in `docs/architecture.md`; snapshot code relies on
//! them): the block node and the device are both `vol-<volume id>` (the
//! id cut to 27 characters: QEMU's node names hold 31), the
//! disk's serial is the volume's name, and each disk sits on its own PCIe
//! root port `hp<N>`. The block monitor of the instance
//! (`<instance dir>/qmp-block.sock`) reaches them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::spec::{VmPaths, VmShimSpec, VmVolume, VM_SPEC_FILE};

/// virtio-blk keeps 20 bytes of serial; longer names are cut there.
pub const SERIAL_MAX_BYTES: usize = 20;

/// The start of every volume disk's node and device id (`volume::node_name`).
const PREFIX: &str = "vol-";

/// The block node and device id of a volume's disk: `vol-` and the
/// volume id, cut to the 31 bytes QEMU allows a node name (27 hex digits
/// of a random id stay unique).
pub fn disk_id(volume_id: &str) -> String {
    crate::volume::node_name(volume_id)
}

/// Whether a block node or device is a volume's disk ([`disk_id`]).
pub fn is_disk_id(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The disk's serial: the volume's name, cut to what virtio-blk keeps.
pub fn serial(name: &str) -> String {
    let mut end = name.len().min(SERIAL_MAX_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// The `blockdev-add` options of a volume's node: the backend's options
/// with the node name and mode; `file_name` replaces the local file's
/// name (a hot-plug passes `/dev/fdset/N`, QEMU being unprivileged).
pub fn blockdev(volume: &VmVolume, file_name: Option<&str>) -> Value {
    let mut options = volume.blockdev.clone();
    options["node-name"] = Value::from(disk_id(&volume.volume_id));
    options["read-only"] = Value::from(volume.read_only);
    if let (Some(name), Some(file)) = (file_name, options.get_mut("file")) {
        file["filename"] = Value::from(name);
    }
    options
}

/// The `device_add` options of a volume's disk on root port `port`.
pub fn device(volume: &VmVolume, port: &str) -> Value {
    serde_json::json!({
        "driver": "virtio-blk-pci",
        "id": disk_id(&volume.volume_id),
        "drive": disk_id(&volume.volume_id),
        "serial": serial(&volume.name),
        "bus": port,
    })
}

/// The name of root port `index`.
pub fn port_name(index: usize) -> String {
    format!("hp{index}")
}

/// What to change so the disks `present` (ids of `vol-*` devices) become
/// the `wanted` disk ids; nodes without a device (`orphans`, left
/// by an interrupted unplug) go too.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiskPlan {
    pub plug: Vec<String>,
    pub unplug: Vec<String>,
    pub drop_nodes: Vec<String>,
}

pub fn plan(wanted: &[String], present: &[String], nodes: &[String]) -> DiskPlan {
    DiskPlan {
        plug: wanted
            .iter()
            .filter(|w| !present.contains(w))
            .cloned()
            .collect(),
        unplug: present
            .iter()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect(),
        drop_nodes: nodes
            .iter()
            .filter(|n| !present.contains(n) && !wanted.contains(n))
            .cloned()
            .collect(),
    }
}

/// Where a volume's disk is open: the QMP socket of the QEMU holding it
/// and its block node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHolder {
    pub instance_dir: PathBuf,
    pub qmp_socket: PathBuf,
    pub node_name: String,
}

/// Which VM on this host holds volume `volume_id` as a disk, from the
/// `vm.json` of each instance directory under `instances_dir` (kept up to
/// date by hot-plug). `None` when no VM has it (a container's
/// qemu-storage-daemon may; see `volume::mount`). Blocking.
pub fn holder(instances_dir: &Path, volume_id: &str) -> Option<DiskHolder> {
    let entries = std::fs::read_dir(instances_dir).ok()?;
    entries.flatten().map(|e| e.path()).find_map(|dir| {
        if !dir.join(VM_SPEC_FILE).exists() {
            return None;
        }
        let spec = VmShimSpec::load(&dir).ok()?;
        spec.volumes.iter().find(|v| v.volume_id == volume_id)?;
        Some(DiskHolder {
            qmp_socket: VmPaths::new(&dir).block_qmp,
            node_name: disk_id(volume_id),
            instance_dir: dir,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(id: &str, name: &str, ro: bool) -> VmVolume {
        VmVolume {
            volume_id: id.into(),
            name: name.into(),
            blockdev: serde_json::json!({"driver": "qcow2", "file": {"driver": "file", "filename": "/v/x.qcow2"}}),
            file: Some("/v/x.qcow2".into()),
            read_only: ro,
        }
    }

    #[test]
    fn nodes_and_devices_are_named_after_the_volume_id() {
        let v = vol("0a1b", "data", true);
        let b = blockdev(&v, None);
        assert_eq!(b["node-name"], "vol-0a1b");
        assert_eq!(b["read-only"], true);
        assert_eq!(b["file"]["filename"], "/v/x.qcow2");
        let passed = blockdev(&v, Some("/dev/fdset/3"));
        assert_eq!(passed["file"]["filename"], "/dev/fdset/3");
        let d = device(&v, &port_name(2));
        assert_eq!(d["id"], "vol-0a1b");
        assert_eq!(d["drive"], "vol-0a1b");
        assert_eq!(d["serial"], "data");
        assert_eq!(d["bus"], "hp2");
        assert!(is_disk_id("vol-0a1b") && !is_disk_id("root"));
        let long = disk_id("0c8d84aea915bf9c607ccdb9fa5703ac");
        assert_eq!(long, "vol-0c8d84aea915bf9c607ccdb9fa5");
        assert_eq!(long.len(), 31, "QEMU's limit for a node name");
        assert_eq!(
            serial("a-very-long-volume-name-indeed"),
            "a-very-long-volume-n"
        );
    }

    #[test]
    fn the_plan_plugs_the_missing_and_unplugs_the_unwanted() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let p = plan(&s(&["a", "b"]), &s(&["b", "c"]), &s(&["b", "c", "d"]));
        assert_eq!(p.plug, s(&["a"]));
        assert_eq!(p.unplug, s(&["c"]));
        assert_eq!(p.drop_nodes, s(&["d"]), "a node left by a crash mid-unplug");
        assert_eq!(
            plan(&s(&["a"]), &s(&["a"]), &s(&["a"])),
            DiskPlan::default()
        );
    }

    #[test]
    fn the_holder_is_found_from_vm_json() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("i1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("container")).expect("mkdir");
        let mut spec: VmShimSpec = serde_json::from_value(serde_json::json!({
            "instance_id": "i1", "name": "db", "kind": "vm", "accelerator": "tcg",
            "accelerator_reason": "t", "memory_mib": 64, "vcpus": 1,
            "boot": {"from": "disk", "overlay": "/d/root.qcow2"}, "seed": null,
            "port_forwards": [], "run_as": null, "stop_grace_ms": 1, "log_max_bytes": 1,
            "log_files": 1,
        }))
        .expect("spec");
        spec.volumes = vec![vol("v9", "data", false)];
        spec.save(&dir).expect("save");
        let h = holder(tmp.path(), "v9").expect("held");
        assert_eq!(h.qmp_socket, dir.join("qmp-block.sock"));
        assert_eq!(h.node_name, "vol-v9");
        assert_eq!(holder(tmp.path(), "other"), None);
    }
}
