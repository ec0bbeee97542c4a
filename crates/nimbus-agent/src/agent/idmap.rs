//! Host uid/gid ranges: each instance on this host gets its own range,
//! recorded in its directory so it survives restarts. A container maps its
//! user namespace onto the range (`spec.json`); a VM's or unikernel's QEMU
//! runs as the range's first id (`vm.json`), so no two QEMUs, and no QEMU
//! and container, share a uid.

use std::collections::HashSet;
use std::path::Path;

use super::error::AgentError;
use crate::container::spec::{IdMap, ShimSpec};
use crate::vm::VmShimSpec;

/// The first host id of the range recorded in an instance directory, by a
/// container's `spec.json` or a VM's `vm.json`.
pub fn recorded_range(instance_dir: &Path) -> Option<u32> {
    if let Ok(spec) = ShimSpec::load(instance_dir) {
        return Some(spec.id_map.host_id);
    }
    VmShimSpec::load(instance_dir).ok()?.run_as?.allocated_uid()
}

/// Hands out ranges. The set of ranges in use is read from the instance
/// directories once, then kept in memory, so a launch does not read every
/// other instance's spec.
pub struct IdAllocator {
    base: u32,
    size: u32,
    used: tokio::sync::Mutex<Option<HashSet<u32>>>,
}

impl IdAllocator {
    pub fn new(base: u32, size: u32) -> Self {
        IdAllocator {
            base,
            size,
            used: tokio::sync::Mutex::new(None),
        }
    }

    /// The range this instance already has, or the lowest free one (now
    /// taken until `release`).
    pub async fn allocate(
        &self,
        instances_dir: &Path,
        instance_dir: &Path,
    ) -> Result<IdMap, AgentError> {
        if let Some(host_id) = recorded_range(instance_dir) {
            return Ok(IdMap {
                host_id,
                size: self.size,
            });
        }
        let mut guard = self.used.lock().await;
        let used = guard.get_or_insert_with(|| ranges_on_disk(instances_dir));
        let max_slots = (u32::MAX - self.base) / self.size;
        let host_id = (0..max_slots)
            .map(|slot| self.base + slot * self.size)
            .find(|id| !used.contains(id))
            .ok_or(AgentError::NoFreeIdRange)?;
        used.insert(host_id);
        Ok(IdMap {
            host_id,
            size: self.size,
        })
    }

    /// The instance is gone: its range may be handed out again.
    pub async fn release(&self, host_id: u32) {
        if let Some(used) = self.used.lock().await.as_mut() {
            used.remove(&host_id);
        }
    }
}

fn ranges_on_disk(instances_dir: &Path) -> HashSet<u32> {
    let mut used = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(instances_dir) {
        for e in entries.flatten() {
            if let Some(host_id) = recorded_range(&e.path()) {
                used.insert(host_id);
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn instances_get_distinct_ranges_and_released_ones_are_reused() {
        let root = tempfile::tempdir().unwrap();
        let ids = IdAllocator::new(100_000, 65_536);
        let dir = |n: &str| {
            let d = root.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let a = ids.allocate(root.path(), &dir("a")).await.unwrap();
        let b = ids.allocate(root.path(), &dir("b")).await.unwrap();
        assert_eq!(a.host_id, 100_000);
        assert_eq!(b.host_id, 165_536);
        ids.release(a.host_id).await;
        let c = ids.allocate(root.path(), &dir("c")).await.unwrap();
        assert_eq!(c.host_id, 100_000);
    }

    fn write_vm_spec(dir: &Path, run_as: serde_json::Value) {
        let spec = serde_json::json!({
            "instance_id": "i1", "name": "vm", "kind": "vm",
            "accelerator": "tcg", "accelerator_reason": "test",
            "memory_mib": 64, "vcpus": 1,
            "boot": {"from": "disk", "overlay": "/x/root.qcow2"},
            "seed": null, "port_forwards": [], "run_as": run_as,
            "stop_grace_ms": 1000, "log_max_bytes": 1024, "log_files": 1,
        });
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("vm.json"), spec.to_string()).unwrap();
    }

    #[tokio::test]
    async fn a_vm_keeps_the_range_its_qemu_runs_as_and_others_avoid_it() {
        let root = tempfile::tempdir().unwrap();
        let vm = root.path().join("vm");
        write_vm_spec(&vm, serde_json::json!({"uid": 100_000, "gid": 100_000}));
        // vm.json of an older agent: the shared user, no range of ours.
        let old = root.path().join("old");
        write_vm_spec(&old, serde_json::json!("nimbus-vm"));
        assert_eq!(recorded_range(&vm), Some(100_000));
        assert_eq!(recorded_range(&old), None);
        let ids = IdAllocator::new(100_000, 65_536);
        assert_eq!(
            ids.allocate(root.path(), &vm).await.unwrap().host_id,
            100_000
        );
        let other = root.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(
            ids.allocate(root.path(), &other).await.unwrap().host_id,
            165_536,
            "a range a VM's QEMU runs as is never handed out again"
        );
    }

    #[test]
    fn qemu_never_runs_as_root() {
        let root = tempfile::tempdir().unwrap();
        let vm = root.path().join("vm");
        write_vm_spec(&vm, serde_json::json!({"uid": 0, "gid": 0}));
        assert!(VmShimSpec::load(&vm).is_err());
    }
}
