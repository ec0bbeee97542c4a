//! Errors of importing a vulnerability database and scanning an image.

use std::path::PathBuf;

/// Why an OSV export was refused. Nothing is changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the upload is not a zip archive ({reason}); download an OSV export such as <ecosystem>/all.zip and import that file")]
    NotZip { reason: String },
    #[error("zip entry {entry:?} is not a valid OSV record: {reason}; fix or remove that entry and import again")]
    BadRecord { entry: String, reason: String },
    #[error("zip entry {entry:?} unpacks to more than {limit} bytes, more than any OSV record; the archive is damaged or hostile")]
    EntryTooLarge { entry: String, limit: u64 },
    #[error("the archive holds more than {limit} entries; split it per ecosystem and import the one you need")]
    TooManyEntries { limit: usize },
    #[error("the archive holds no OSV record (no .json entry)")]
    Empty,
    #[error("could not {action} {path}: {reason}")]
    Io {
        action: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Why a scan could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("could not read the image's package databases: {0}")]
    Image(String),
    #[error("the vulnerability database at {path} cannot be read: {reason}; import it again with `nimbus vulndb import FILE.zip`")]
    Database { path: PathBuf, reason: String },
}
