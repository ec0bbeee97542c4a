//! Recording usage: what `domain::usage` decides becomes store writes
//! (`/usage/<project>/<start unix-nanos>-<id>`), applied in the same store
//! transaction as the change they meter, so a control-plane restart neither
//! loses an interval nor counts one twice. Read through `api/usage.rs`;
//! kept for `usage_max_age` by `retention.rs`.

pub mod objects;
pub mod retention;

use chrono::{DateTime, Utc};
use nimbus_api::{ApiError, Image, Instance, Volume};
use nimbus_store::{KeyValue, Op};

use crate::domain::usage::{self as domain, unix_nanos, UsageRecord};
use crate::error::{ApiResult, ServerError};
use crate::repo::Repo;

/// Every usage record of every project lives under this prefix.
pub const PREFIX: &str = "/usage/";

/// Keys read from the store per step.
const SCAN_BATCH: usize = 1000;

/// Where `record` is stored: the same interval always has the same key.
pub fn key(record: &UsageRecord) -> String {
    format!("{PREFIX}{}/{}", record.project, record.record_name())
}

fn project_prefix(project: &str) -> String {
    format!("{PREFIX}{project}/")
}

/// The store writes of `records`.
pub fn ops(records: impl IntoIterator<Item = UsageRecord>) -> ApiResult<Vec<Op>> {
    records
        .into_iter()
        .map(|r| {
            let value = serde_json::to_vec(&r).map_err(|e| {
                ServerError(ApiError::internal(format!(
                    "encoding the usage record of {:?}: {e}",
                    r.name
                )))
            })?;
            Ok(Op::Put {
                key: key(&r),
                value,
            })
        })
        .collect()
}

/// The usage records of an instance's change from `before` to `after`, as
/// writes to apply with it.
pub fn instance_change(before: &Instance, after: &Instance) -> ApiResult<Vec<Op>> {
    ops(domain::instance_transitions(before, after, Utc::now()))
}

/// The record an instance's removal closes, as a write to apply with it.
pub fn instance_deleted(instance: &Instance) -> ApiResult<Vec<Op>> {
    ops(domain::instance_deleted(instance, Utc::now()))
}

/// The record an image opens when it is stored, as a write to apply with it.
pub fn image_created(image: &Image) -> ApiResult<Vec<Op>> {
    ops([domain::image_created(image)])
}

/// The record an image's removal closes, as a write to apply with it.
pub fn image_deleted(image: &Image) -> ApiResult<Vec<Op>> {
    ops([domain::image_deleted(image, Utc::now())])
}

/// The record a volume opens when it is recorded, as a write to apply with it.
pub fn volume_created(volume: &Volume) -> ApiResult<Vec<Op>> {
    ops([domain::volume_created(volume)])
}

/// The records of a volume's change from `before` to `after` (which keeps
/// when its counted size began), as writes to apply with it.
pub fn volume_changed(before: &Volume, after: &mut Volume) -> ApiResult<Vec<Op>> {
    ops(domain::volume_changed(before, after, Utc::now()))
}

/// The record a volume's deletion closes, as a write to apply with it.
pub fn volume_deleted(volume: &Volume) -> ApiResult<Vec<Op>> {
    ops([domain::volume_deleted(volume, Utc::now())])
}

pub fn decode(kv: &KeyValue) -> ApiResult<UsageRecord> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        ServerError(ApiError::internal(format!(
            "stored usage record at {} is corrupt ({e}); restore it from a backup or delete the key",
            kv.key
        )))
    })
}

/// The records of `project` that began before `before`, oldest first.
pub async fn records_before(
    repo: &Repo,
    project: &str,
    before: DateTime<Utc>,
) -> ApiResult<Vec<UsageRecord>> {
    let prefix = project_prefix(project);
    let end = format!("{prefix}{:020}", unix_nanos(before));
    let mut out = Vec::new();
    let mut start_after: Option<String> = None;
    loop {
        let page = repo
            .store
            .list(&prefix, start_after.as_deref(), SCAN_BATCH)
            .await?;
        for kv in &page.kvs {
            if kv.key >= end {
                return Ok(out);
            }
            out.push(decode(kv)?);
        }
        match page.kvs.last() {
            Some(kv) if page.more => start_after = Some(kv.key.clone()),
            _ => return Ok(out),
        }
    }
}
