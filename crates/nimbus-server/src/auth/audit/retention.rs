//! Keeping the audit log within its size (`audit_max_records`) and age
//! (`audit_max_age`): the oldest records are deleted, in batches, after
//! writes (size) and periodically from start-up on (age).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nimbus_store::{Op, StoreError, Txn};

use super::{time_key, PREFIX};
use crate::state::AppState;

/// Records deleted per store transaction when pruning.
pub(crate) const PRUNE_BATCH: usize = 500;

/// Slack past the maximum before pruning, so pruning runs in batches.
fn prune_slack(max: usize) -> usize {
    (max / 100).clamp(1, PRUNE_BATCH)
}

/// How often records past the maximum age are looked for: a tenth of the
/// age, between one second and ten minutes.
pub fn age_check_interval(max_age: Duration) -> Duration {
    (max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Count the new record, and prune the oldest ones past the maximum.
pub(super) async fn keep_bounded(state: &AppState) -> Result<(), StoreError> {
    let max = state.config.audit_max_records.max(1);
    let mut stored = state.audit.stored.lock().await;
    let count = match *stored {
        Some(n) => n + 1,
        None => count_records(state).await?,
    };
    *stored = Some(count);
    if count < max + prune_slack(max) {
        return Ok(());
    }
    let mut excess = count - max;
    while excess > 0 {
        let page = state
            .repo
            .store
            .list(PREFIX, None, excess.min(PRUNE_BATCH))
            .await?;
        if page.kvs.is_empty() {
            break;
        }
        let n = delete_keys(state, page.kvs.into_iter().map(|kv| kv.key).collect()).await?;
        excess = excess.saturating_sub(n);
        *stored = Some(stored.unwrap_or(n).saturating_sub(n));
    }
    Ok(())
}

/// Delete the records older than `audit_max_age`; how many were deleted.
pub async fn prune_by_age(state: &AppState) -> Result<usize, StoreError> {
    let max_age =
        chrono::Duration::from_std(state.config.audit_max_age).unwrap_or(chrono::Duration::MAX);
    let Some(cutoff) = Utc::now().checked_sub_signed(max_age) else {
        return Ok(0);
    };
    let cutoff_key = time_key(cutoff);
    let mut deleted = 0;
    loop {
        let page = state.repo.store.list(PREFIX, None, PRUNE_BATCH).await?;
        let old: Vec<String> = page
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .take_while(|k| *k < cutoff_key)
            .collect();
        if old.is_empty() {
            break;
        }
        let n = delete_keys(state, old).await?;
        deleted += n;
        let mut stored = state.audit.stored.lock().await;
        if let Some(count) = stored.as_mut() {
            *count = count.saturating_sub(n);
        }
    }
    Ok(deleted)
}

/// Prune by age now and then periodically, for as long as the server runs.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(age_check_interval(state.config.audit_max_age));
    loop {
        tick.tick().await;
        match prune_by_age(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                max_age_secs = state.config.audit_max_age.as_secs(),
                "pruned audit records past the maximum age"
            ),
            Err(e) => tracing::error!(error = %e, "could not prune the audit log by age"),
        }
    }
}

pub(crate) async fn delete_keys(state: &AppState, keys: Vec<String>) -> Result<usize, StoreError> {
    let n = keys.len();
    let success = keys.into_iter().map(|key| Op::Delete { key }).collect();
    state
        .repo
        .store
        .txn(Txn {
            success,
            ..Txn::default()
        })
        .await?;
    Ok(n)
}

async fn count_records(state: &AppState) -> Result<usize, StoreError> {
    let mut count = 0;
    let mut start_after: Option<String> = None;
    loop {
        let page = state
            .repo
            .store
            .list(PREFIX, start_after.as_deref(), 1000)
            .await?;
        count += page.kvs.len();
        match page.kvs.last() {
            Some(kv) if page.more => start_after = Some(kv.key.clone()),
            _ => return Ok(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn age_is_checked_often_enough_but_not_constantly() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            super::age_check_interval(90 * day),
            Duration::from_secs(600)
        );
        assert_eq!(
            super::age_check_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            super::age_check_interval(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
    }
}
