//! The work only the leader does: the scheduler, host liveness and the
//! retention of audit records, events and usage. Every server campaigns;
//! the one elected runs these tasks until its leadership is lost, then
//! stops them all before campaigning again.
//!
//! Fencing: an etcd leader gives up three quarters of a lease after its
//! last confirmed renewal, before etcd can expire the lease and elect
//! another, so two servers' loops do not overlap (clocks running at the
//! same rate). A write already sent when the loops stop may still land;
//! every leader write is a compare-and-swap on the revision it read
//! (binding, host phase), so it cannot undo a newer leader's decision, and
//! the scheduler's bindings and the host controller's updates also require
//! the leadership itself (`AppState::leader_repo`, the leader key's
//! revision as a compare), so none lands once another server leads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nimbus_store::{EventKind, Store};
use tokio::task::JoinSet;

use crate::state::AppState;

type LeaderTask = fn(Arc<AppState>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Everything the leader runs, by name.
const LEADER_TASKS: &[(&str, LeaderTask)] = &[
    ("scheduler", |s| Box::pin(crate::scheduler::run(s))),
    ("new-instance-watch", |s| {
        Box::pin(nudge_on_new_instances(s))
    }),
    ("host-liveness", |s| {
        Box::pin(crate::controllers::hosts::run(s))
    }),
    ("audit-retention", |s| {
        Box::pin(crate::auth::audit::retention::run(s))
    }),
    ("event-retention", |s| {
        Box::pin(crate::events::retention::run(s))
    }),
    ("usage-retention", |s| {
        Box::pin(crate::usage::retention::run(s))
    }),
];

/// Campaign, lead until the leadership is lost, and again, for ever.
pub async fn run(state: Arc<AppState>) {
    loop {
        let mut leadership = match state.election.campaign().await {
            Ok(leadership) => leadership,
            Err(e) => {
                tracing::warn!(error = %e, "campaigning for leadership failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(
            server = %state.config.server_name,
            "leading: running the scheduler and the controllers"
        );
        state.metrics.set_leader(true);
        set_fence(&state, leadership.fence().cloned());
        let mut tasks = JoinSet::new();
        for (name, task) in LEADER_TASKS {
            tracing::debug!(task = name, "starting leader task");
            tasks.spawn(task(state.clone()));
        }
        leadership.lost().await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        set_fence(&state, None);
        state.metrics.set_leader(false);
        tracing::warn!(
            server = %state.config.server_name,
            "no longer the leader: stopped the scheduler and the controllers"
        );
    }
}

/// The fence leader tasks' writes carry (`AppState::leader_repo`); set
/// before they start and cleared after the last has stopped.
fn set_fence(state: &AppState, fence: Option<nimbus_store::Compare>) {
    if let Ok(mut slot) = state.leader_fence.write() {
        *slot = fence;
    }
}

/// Instances created through other servers wake the scheduler too (their
/// own nudge reaches only their process).
async fn nudge_on_new_instances(state: Arc<AppState>) {
    let store: &dyn Store = state.repo.store.as_ref();
    loop {
        let watched = match store.current_revision().await {
            Ok(revision) => store.watch("/instances/", revision).await,
            Err(e) => Err(e),
        };
        match watched {
            Ok(mut events) => {
                while let Some(Ok(event)) = events.recv().await {
                    let created = event.kv.create_revision == event.kv.mod_revision;
                    if event.kind == EventKind::Put && created {
                        crate::scheduler::nudge(&state);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "watching for new instances failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
