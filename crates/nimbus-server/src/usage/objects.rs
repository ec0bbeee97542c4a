//! Object storage usage. Two halves, so that a PUT costs no extra store
//! commit and no extra write when it replaces nothing:
//! - a version that stops being stored (overwritten or deleted) gets a
//!   closed record, written by [`ObjectUsage`] in the same transaction
//!   that retires it (`nimbus_objects::metering`);
//! - versions still stored are read from the object records themselves
//!   when a report is asked for ([`live_objects`]), counted up to now; in
//!   a versioned bucket that is every version (not only the newest), so
//!   old versions count as long as they are kept.
//!
//! Recording an open interval at every PUT would double the store writes
//! of the small-object path; reading live objects instead costs one scan
//! of the project's object records per report.

use chrono::{DateTime, Utc};
use nimbus_objects::keys;
use nimbus_objects::metering::RetiredObjects;
use nimbus_objects::records::{self, BucketRecord, ObjectRecord};
use nimbus_store::Op;

use crate::domain::usage::{object_record, UsageRecord};
use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;

/// Store keys read per step.
const SCAN_BATCH: usize = 1000;

/// Writes the closed usage record of every retired object version.
pub struct ObjectUsage;

impl RetiredObjects for ObjectUsage {
    fn retired(
        &self,
        project: &str,
        bucket: &str,
        key: &str,
        old: &ObjectRecord,
        until: DateTime<Utc>,
    ) -> Vec<Op> {
        let record = object_record(
            project,
            bucket,
            key,
            &old.data_id,
            old.size,
            old.last_modified,
            Some(until),
        );
        match super::ops([record]) {
            Ok(ops) => ops,
            Err(e) => {
                // Encoding a record of strings and numbers does not fail;
                // if it ever did, the object's change must still go through.
                tracing::error!(error = %e.0.message, bucket, key, "object usage record not written");
                Vec::new()
            }
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError(nimbus_api::ApiError::internal(format!(
        "reading {what} for usage: {e}; restore it from a backup or delete the key"
    )))
}

/// Every object version stored now in a bucket of `project` that was
/// stored before `before`, as open records.
pub async fn live_objects(
    repo: &Repo,
    project: &str,
    before: DateTime<Utc>,
) -> ApiResult<Vec<UsageRecord>> {
    let mut out = Vec::new();
    for bucket in list_all(repo, keys::BUCKETS).await? {
        let b: BucketRecord = records::decode("bucket", &bucket.key, &bucket.value)
            .map_err(|e| corrupt("a bucket", e))?;
        if b.project != project {
            continue;
        }
        // A versioned bucket's every version is stored (and counted); its
        // head records only repeat the newest one.
        let versioned = b.versioning.is_some();
        let prefix = match versioned {
            true => keys::versions_of(&b.name),
            false => keys::objects_of(&b.name),
        };
        for kv in list_all(repo, &prefix).await? {
            let o: ObjectRecord = records::decode("object", &kv.key, &kv.value)
                .map_err(|e| corrupt("an object", e))?;
            if o.is_delete_marker() {
                continue;
            }
            let rest = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key);
            let name = match versioned {
                true => keys::split_version(rest).map_or(rest, |(k, _)| k),
                false => rest,
            };
            let r = object_record(
                project,
                &b.name,
                name,
                &o.data_id,
                o.size,
                o.last_modified,
                None,
            );
            if r.start < before {
                out.push(r);
            }
        }
    }
    Ok(out)
}

async fn list_all(repo: &Repo, prefix: &str) -> ApiResult<Vec<nimbus_store::KeyValue>> {
    let mut out = Vec::new();
    let mut start_after: Option<String> = None;
    loop {
        let page = repo
            .store
            .list(prefix, start_after.as_deref(), SCAN_BATCH)
            .await?;
        let more = page.more;
        let last = page.kvs.last().map(|kv| kv.key.clone());
        out.extend(page.kvs);
        match last {
            Some(k) if more => start_after = Some(k),
            _ => return Ok(out),
        }
    }
}
