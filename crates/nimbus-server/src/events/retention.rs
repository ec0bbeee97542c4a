//! Keeping events within their age (`events_max_age`, default 7 days) and
//! count (`events_max_records`, across projects), as the audit log is kept
//! (`auth/audit/retention.rs`, whose batch delete and check interval this
//! reuses): pruned at start-up and then every tenth of the age, between one
//! second and ten minutes. Events live under their project, so one pass
//! reads every event key and deletes by the time in its name.

use std::sync::Arc;

use chrono::Utc;
use nimbus_store::StoreError;

use super::PREFIX;
use crate::auth::audit::retention::{age_check_interval, delete_keys, PRUNE_BATCH};
use crate::domain::events::time_prefix;
use crate::state::AppState;

/// Keys read from the store per step.
const SCAN_BATCH: usize = 1000;

/// Which of `keys` (event keys) to delete: those named before `cutoff`
/// (a [`time_prefix`]), then the oldest past `max` of the rest.
pub fn select_for_pruning(keys: Vec<String>, cutoff: &str, max: usize) -> Vec<String> {
    // `/events/<project>/<time>-<id>`: the name is what comes after the last '/'.
    let name = |k: &String| k.rsplit('/').next().unwrap_or_default().to_string();
    let mut keyed: Vec<(String, String)> = keys.into_iter().map(|k| (name(&k), k)).collect();
    keyed.sort();
    let old = keyed.partition_point(|(n, _)| n.as_str() < cutoff);
    let excess = (keyed.len() - old).saturating_sub(max);
    keyed.truncate(old + excess);
    keyed.into_iter().map(|(_, k)| k).collect()
}

/// Delete the events past the maximum age or count; how many were deleted.
pub async fn prune(state: &AppState) -> Result<usize, StoreError> {
    let max_age =
        chrono::Duration::from_std(state.config.events_max_age).unwrap_or(chrono::Duration::MAX);
    let cutoff = Utc::now()
        .checked_sub_signed(max_age)
        .map(time_prefix)
        .unwrap_or_default();
    let mut keys = Vec::new();
    let mut start_after: Option<String> = None;
    loop {
        let page = state
            .repo
            .store
            .list(PREFIX, start_after.as_deref(), SCAN_BATCH)
            .await?;
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.kvs.last() {
            Some(kv) if page.more => start_after = Some(kv.key.clone()),
            _ => break,
        }
    }
    let doomed = select_for_pruning(keys, &cutoff, state.config.events_max_records.max(1));
    let mut deleted = 0;
    for batch in doomed.chunks(PRUNE_BATCH) {
        deleted += delete_keys(state, batch.to_vec()).await?;
    }
    Ok(deleted)
}

/// Prune now and then periodically, for as long as the server runs.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(age_check_interval(state.config.events_max_age));
    loop {
        tick.tick().await;
        match prune(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                max_age_secs = state.config.events_max_age.as_secs(),
                max_records = state.config.events_max_records,
                "pruned events past the maximum age or count"
            ),
            Err(e) => tracing::error!(error = %e, "could not prune the events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::select_for_pruning;

    #[test]
    fn old_events_go_then_the_oldest_past_the_count_across_projects() {
        let keys = vec![
            "/events/a/00000000000000000005-000x".to_string(),
            "/events/a/00000000000000000001-000x".to_string(),
            "/events/b/00000000000000000003-000x".to_string(),
            "/events/b/00000000000000000007-000x".to_string(),
            "/events/c/00000000000000000006-000x".to_string(),
        ];
        // Older than 2: only the event at 1.
        assert_eq!(
            select_for_pruning(keys.clone(), "00000000000000000002", 100),
            ["/events/a/00000000000000000001-000x"]
        );
        // And at most 2 kept: 3 and 5 go too, whatever their project.
        assert_eq!(
            select_for_pruning(keys, "00000000000000000002", 2),
            [
                "/events/a/00000000000000000001-000x",
                "/events/b/00000000000000000003-000x",
                "/events/a/00000000000000000005-000x",
            ]
        );
    }
}
