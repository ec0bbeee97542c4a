//! The embedder's say in an object's end: when a stored object version
//! stops being stored (overwritten by a new version, or deleted), the
//! embedder may add store writes to the same transaction that retires it,
//! so a record of how long it was stored commits with the change itself
//! (no extra commit on the PUT path, nothing lost or counted twice across
//! a restart). A fresh PUT that replaces nothing adds nothing.

use chrono::{DateTime, Utc};
use nimbus_store::Op;

use crate::records::ObjectRecord;

/// Told of every object version that stops being stored.
pub trait RetiredObjects: Send + Sync {
    /// The writes recording that `old`, stored at `bucket`/`key` in a
    /// bucket of `project`, was stored until `until`.
    fn retired(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        old: &ObjectRecord,
        until: DateTime<Utc>,
    ) -> Vec<Op>;
}
