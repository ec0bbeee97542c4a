//! Cleaning up after a dead container shim: the shared part
//! ([`crate::shim::clean_up_after_shim`]) plus the container's own mounts
//! and scratch directories.

use std::path::Path;

use super::rootfs::{unmount_rootfs, work_dir};
use super::spec::ShimSpec;
use crate::shim::{clean_up_after_shim, instance_id_from_dir, ShimError};

/// Removes what a dead shim left behind: the container's processes and cgroups,
/// the rootfs and layer mounts and the writable layer's mount (freeing its loop
/// device), runtime files and the socket. Keeps spec.json, state.json, console
/// logs and the upper dir or `disk.img`. Refuses while a shim still answers.
pub fn cleanup_instance_dir(instance_dir: &Path) -> Result<(), ShimError> {
    let instance_id = match ShimSpec::load(instance_dir) {
        Ok(spec) => spec.instance_id,
        Err(_) => instance_id_from_dir(instance_dir)?,
    };
    clean_up_after_shim(instance_dir, &instance_id, || {
        let mut problems = Vec::new();
        if let Err(e) = unmount_rootfs(instance_dir) {
            problems.push(e.to_string());
        }
        for dir in ["runtime", "bundle"]
            .map(|d| instance_dir.join(d))
            .into_iter()
            .chain([work_dir(instance_dir)])
        {
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    problems.push(format!("remove {}: {e}", dir.display()));
                }
            }
        }
        problems
    })
}
