//! `nimbus shim <instance_dir>`: picks the driver whose spec is in the
//! directory and runs the shared shim with it.
//!
//! This is the one place that names every driver, so that neither the shared
//! [`crate::shim`] plumbing nor one driver has to know another.

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

/// Whether an instance directory holds a driver's spec.
type OwnsInstanceDir = fn(&Path) -> bool;

/// Each driver's test for its own instance directory, in the order asked.
const DRIVERS: [(OwnsInstanceDir, PrepareSupervisor); 2] = [
    (crate::vm::owns_instance_dir, crate::vm::prepare_supervisor),
    (
        crate::container::owns_instance_dir,
        crate::container::prepare_supervisor,
    ),
];

/// The driver that owns `dir`. A directory with neither spec goes to the
/// container driver, whose loader records that `spec.json` is missing.
fn driver_for(dir: &Path) -> PrepareSupervisor {
    DRIVERS
        .iter()
        .find(|(owns, _)| owns(dir))
        .map_or(crate::container::prepare_supervisor, |(_, prepare)| {
            *prepare
        })
}
