//! Nimbus vulnerability scanning: reads the package databases of an image (dpkg, apk)
//! through its merged layers, keeps an offline OSV database as a SQLite index, and
//! matches packages against it with each ecosystem's version ordering.
//!
//! Images and OSV exports are hostile input. This crate must never read outside an
//! image's layer directories (it goes through `nimbus_image::MergedView`), never read
//! an unbounded file or archive entry, and never replace the installed index with one
//! built from an archive that failed validation. It does no networking and keeps no
//! state besides the index file. Blocking work: call it from `spawn_blocking`.

mod db;
mod error;
pub mod inventory;
pub mod osv;
mod scan;
pub mod version;

pub use db::{import_zip, ImportSummary, VulnIndex, MAX_ENTRIES, MAX_RECORD_BYTES};
pub use error::{ImportError, ScanError};
pub use inventory::{read_inventory, ImageFiles, Inventory, MapFiles, Package};
pub use scan::{affects, match_inventory, AdvisorySource};

/// A scan of one image: what was read and what matched.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    pub inventory: Inventory,
    pub findings: Vec<nimbus_api::Finding>,
}

/// Reads the image's packages and matches them against the index.
pub fn scan_image(
    files: &dyn ImageFiles,
    index: &dyn AdvisorySource,
) -> Result<ScanReport, ScanError> {
    let inventory = read_inventory(files)?;
    let findings = match_inventory(&inventory, index)?;
    Ok(ScanReport {
        inventory,
        findings,
    })
}
