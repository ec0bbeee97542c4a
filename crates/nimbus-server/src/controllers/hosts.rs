//! Host liveness: a host whose agent stops sending heartbeats becomes
//! unreachable, and its instances are marked failed with the reason. Each
//! project of those instances gets a `host_unreachable` event (events are
//! per project; the host list shows the host's phase to administrators).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nimbus_api::{Host, HostPhase, Instance, InstancePhase, ListOptions};

use crate::domain::events as domain;
use crate::state::AppState;

/// How long after a self-fencing host's lease has run out the server still
/// waits before moving its instances: the time its agent may take to see the
/// lease gone and kill every instance.
pub const FENCE_MARGIN_MS: u64 = 4_000;

pub async fn run(state: Arc<AppState>) {
    // Checked at least every second, so a self-fencing host's instances move
    // within a second of its deadline.
    let every = (state.config.host_timeout_ms / 3).clamp(1, 1_000);
    loop {
        tokio::time::sleep(Duration::from_millis(every)).await;
        if let Err(e) = check_once(&state).await {
            tracing::warn!(error = %e, "host liveness check failed");
        }
    }
}

/// How long `host` may go without a heartbeat: its fencing lease plus the
/// margin when its agent fences itself, else `--host-timeout`.
pub fn heartbeat_deadline(host: &Host, host_timeout_ms: u64) -> chrono::Duration {
    let ms = match host.status.fence_after_ms {
        Some(lease) => lease + FENCE_MARGIN_MS,
        None => host_timeout_ms,
    };
    chrono::Duration::milliseconds(ms as i64)
}

async fn check_once(state: &AppState) -> Result<(), crate::ServerError> {
    let hosts = state
        .repo
        .list::<Host>(None, &ListOptions::default(), |_| true)
        .await?;
    let now = Utc::now();
    // Its writes hold only while this server leads (see `cluster::leader`).
    let repo = state.leader_repo();
    for host in hosts.items {
        let deadline = heartbeat_deadline(&host, state.config.host_timeout_ms);
        let stale = host
            .status
            .last_heartbeat
            .is_none_or(|t| now - t > deadline);
        if host.status.phase == HostPhase::Ready && stale {
            let name = host.metadata.name.clone();
            tracing::warn!(host = %name, "host missed its heartbeats; marking it unreachable");
            repo.modify::<Host, _>(None, &name, |h| {
                h.status.phase = HostPhase::Unreachable;
                Ok(())
            })
            .await?;
            lose_instances(state, &repo, &name, host.status.fence_after_ms.is_some()).await?;
        }
    }
    Ok(())
}

/// The instances of unreachable host `name`. On a host that fenced itself
/// (it has stopped them) those with a restart policy are placed again
/// elsewhere and those being deleted are finalized; the others, and all on
/// a host that does not fence, are marked failed. Each project gets one
/// `host_unreachable` event.
async fn lose_instances(
    state: &AppState,
    repo: &crate::repo::Repo,
    name: &str,
    fenced: bool,
) -> Result<(), crate::ServerError> {
    use crate::domain::instances::{release_from_lost_host, HostRemoval};
    let on_host = repo
        .list::<Instance>(None, &ListOptions::default(), |i| {
            i.status.host.as_deref() == Some(name) && !i.status.phase.is_terminal()
        })
        .await?;
    let mut by_project: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in &on_host.items {
        by_project
            .entry(i.metadata.project.clone().unwrap_or_default())
            .or_default()
            .push(i.metadata.name.clone());
    }
    let mut moved = false;
    for (project, names) in by_project {
        let mut announced = false;
        for instance in &names {
            let mut outcome = None;
            let result = repo
                .modify_with::<Instance, _>(Some(&project), instance, |i| {
                    let before = i.clone();
                    outcome = if fenced {
                        release_from_lost_host(i, name)
                    } else {
                        None
                    };
                    if outcome.is_none() && i.metadata.deletion_requested_at.is_none() {
                        i.status.phase = InstancePhase::Failed;
                        i.status.reason = Some(format!("host {name:?} is unreachable"));
                    }
                    let mut drafts = Vec::new();
                    if !announced {
                        drafts.push(domain::host_unreachable(name, &names));
                    }
                    drafts.extend(domain::instance_transitions(&before, i));
                    let mut ops = crate::events::ops(&project, drafts, Utc::now())?;
                    ops.extend(crate::usage::instance_change(&before, i)?);
                    Ok(ops)
                })
                .await;
            announced |= result.is_ok();
            match (result, outcome) {
                (Ok(saved), Some(HostRemoval::Finalize)) => {
                    crate::api::instances::actions::finalize(repo, &saved).await?;
                }
                (Ok(_), Some(HostRemoval::Release)) => moved = true,
                (Err(e), _) => {
                    tracing::warn!(instance = %instance, host = %name, error = %e, "could not record the loss of an instance's host");
                }
                _ => {}
            }
        }
    }
    if moved {
        crate::scheduler::nudge(state);
    }
    Ok(())
}
