//! `nimbus shim <instance_dir>`: picks the driver whose spec is in the
//! directory and runs the shared shim with it.
//!
//! The drivers come from the registry (`driver/registry.rs`, the one file
//! that names them), so neither the shared [`crate::shim`] plumbing nor one
//! driver has to know another.

use std::path::Path;

use crate::shim::daemon::{run_in_background, PrepareSupervisor};

/// Entry point of `nimbus shim <instance_dir>` (and of `nimbus-shim`).
///
/// Forks the supervisor into the background and returns once it has started the
/// instance (`Ok`) or given up (`Err` with the reason); the supervisor itself never
/// returns. Must be called before the process starts any thread or runtime.
pub fn run_shim(instance_dir: &Path) -> anyhow::Result<()> {
    run_in_background(instance_dir, driver_for(instance_dir))
}

/// The driver that owns `dir`, from the registry's shim table. A directory
/// with no driver's spec goes to the table's last driver (the container
/// driver), whose loader records that its spec is missing.
fn driver_for(dir: &Path) -> PrepareSupervisor {
    let table = &crate::driver::SHIM_SUPERVISORS;
    table
        .iter()
        .find(|(owns, _)| owns(dir))
        .or(table.last())
        .map(|(_, prepare)| *prepare)
        .expect("the shim table names at least one driver")
}
