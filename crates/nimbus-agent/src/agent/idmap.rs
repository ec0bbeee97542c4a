//! Host uid/gid ranges for user namespaces: each instance on this host gets
//! its own range, recorded in its spec.json so it survives restarts.

use std::collections::HashSet;
use std::path::Path;

use crate::container::spec::{IdMap, ShimSpec};

/// Serialises allocation across the agent's instance workers.
pub static ALLOCATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The range this instance already has, or the lowest free one.
pub fn allocate(
    instances_dir: &Path,
    instance_dir: &Path,
    base: u32,
    size: u32,
) -> Result<IdMap, String> {
    if let Ok(spec) = ShimSpec::load(instance_dir) {
        return Ok(spec.id_map);
    }
    let mut used = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(instances_dir) {
        for e in entries.flatten() {
            if let Ok(spec) = ShimSpec::load(&e.path()) {
                used.insert(spec.id_map.host_id);
            }
        }
    }
    let max_slots = (u32::MAX - base) / size;
    (0..max_slots)
        .map(|slot| base + slot * size)
        .find(|id| !used.contains(id))
        .map(|host_id| IdMap { host_id, size })
        .ok_or_else(|| {
            "no free user-namespace id range left on this host; remove instances".to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_instances_get_distinct_ranges() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        std::fs::create_dir_all(&a).unwrap();
        let first = allocate(root.path(), &a, 100_000, 65_536).unwrap();
        assert_eq!(first.host_id, 100_000);
        // Nothing saved yet for a, so b would get the same: allocation only
        // counts ranges recorded in spec.json files.
        let b = root.path().join("b");
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(
            allocate(root.path(), &b, 100_000, 65_536).unwrap().host_id,
            100_000
        );
    }
}
