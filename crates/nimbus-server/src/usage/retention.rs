//! Keeping usage records for `usage_max_age` (default 400 days: a year of
//! bills and their disputes) after they close, pruned as events are
//! (`events/retention.rs`): at start-up and then every tenth of the age,
//! between one second and ten minutes. An open record is never pruned: it
//! still counts.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use nimbus_store::StoreError;

use super::PREFIX;
use crate::auth::audit::retention::{age_check_interval, delete_keys, PRUNE_BATCH};
use crate::domain::usage::UsageRecord;
use crate::state::AppState;

const SCAN_BATCH: usize = 1000;

/// Which of `records` (key and record) to delete: those closed before
/// `cutoff`. A record that does not decode is kept for someone to look at.
pub fn select_for_pruning(
    records: Vec<(String, Option<UsageRecord>)>,
    cutoff: DateTime<Utc>,
) -> Vec<String> {
    records
        .into_iter()
        .filter(|(_, r)| matches!(r, Some(UsageRecord { end: Some(end), .. }) if *end < cutoff))
        .map(|(k, _)| k)
        .collect()
}

/// Delete the records closed longer ago than the maximum age; how many.
pub async fn prune(state: &AppState) -> Result<usize, StoreError> {
    let max_age =
        chrono::Duration::from_std(state.config.usage_max_age).unwrap_or(chrono::Duration::MAX);
    let Some(cutoff) = Utc::now().checked_sub_signed(max_age) else {
        return Ok(0);
    };
    let mut doomed = Vec::new();
    let mut start_after: Option<String> = None;
    loop {
        let page = state
            .repo
            .store
            .list(PREFIX, start_after.as_deref(), SCAN_BATCH)
            .await?;
        let read = page
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), serde_json::from_slice(&kv.value).ok()))
            .collect();
        doomed.extend(select_for_pruning(read, cutoff));
        match page.kvs.last() {
            Some(kv) if page.more => start_after = Some(kv.key.clone()),
            _ => break,
        }
    }
    let mut deleted = 0;
    for batch in doomed.chunks(PRUNE_BATCH) {
        deleted += delete_keys(state, batch.to_vec()).await?;
    }
    Ok(deleted)
}

/// Prune now and then periodically, for as long as the server runs.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(age_check_interval(state.config.usage_max_age));
    loop {
        tick.tick().await;
        match prune(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                max_age_secs = state.config.usage_max_age.as_secs(),
                "pruned usage records closed longer ago than the maximum age"
            ),
            Err(e) => tracing::error!(error = %e, "could not prune the usage records"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage::Metered;

    fn record(start: i64, end: Option<i64>) -> UsageRecord {
        UsageRecord {
            project: "ops".into(),
            metered: Metered::Container,
            name: "web".into(),
            id: "i".into(),
            start: DateTime::from_timestamp(start, 0).expect("time"),
            end: end.map(|e| DateTime::from_timestamp(e, 0).expect("time")),
            vcpu_millis: 1000,
            memory_bytes: 0,
            storage_bytes: 0,
        }
    }

    #[test]
    fn closed_records_past_the_age_go_open_and_corrupt_ones_stay() {
        let cutoff = DateTime::from_timestamp(1000, 0).expect("time");
        let records = vec![
            ("/usage/ops/old".to_string(), Some(record(10, Some(999)))),
            (
                "/usage/ops/recent".to_string(),
                Some(record(10, Some(1000))),
            ),
            ("/usage/ops/open".to_string(), Some(record(10, None))),
            ("/usage/ops/corrupt".to_string(), None),
        ];
        assert_eq!(select_for_pruning(records, cutoff), ["/usage/ops/old"]);
    }
}
