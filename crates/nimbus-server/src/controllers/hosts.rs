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

pub async fn run(state: Arc<AppState>) {
    let timeout = chrono::Duration::milliseconds(state.config.host_timeout_ms as i64);
    loop {
        tokio::time::sleep(Duration::from_millis(state.config.host_timeout_ms / 3 + 1)).await;
        if let Err(e) = check_once(&state, timeout).await {
            tracing::warn!(error = %e, "host liveness check failed");
        }
    }
}

async fn check_once(state: &AppState, timeout: chrono::Duration) -> Result<(), crate::ServerError> {
    let hosts = state
        .repo
        .list::<Host>(None, &ListOptions::default(), |_| true)
        .await?;
    let now = Utc::now();
    // Its writes hold only while this server leads (see `cluster::leader`).
    let repo = state.leader_repo();
    for host in hosts.items {
        let stale = host.status.last_heartbeat.is_none_or(|t| now - t > timeout);
        if host.status.phase == HostPhase::Ready && stale {
            let name = host.metadata.name.clone();
            tracing::warn!(host = %name, "host missed its heartbeats; marking it unreachable");
            repo.modify::<Host, _>(None, &name, |h| {
                h.status.phase = HostPhase::Unreachable;
                Ok(())
            })
            .await?;
            let on_host = state
                .repo
                .list::<Instance>(None, &ListOptions::default(), |i| {
                    i.status.host.as_deref() == Some(&name) && !i.status.phase.is_terminal()
                })
                .await?;
            // One `host_unreachable` event per project, written with the
            // first of its instances to be marked failed.
            let mut by_project: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for i in &on_host.items {
                by_project
                    .entry(i.metadata.project.clone().unwrap_or_default())
                    .or_default()
                    .push(i.metadata.name.clone());
            }
            for (project, names) in by_project {
                let mut announced = false;
                for instance in &names {
                    let result = repo
                        .modify_with::<Instance, _>(Some(&project), instance, |i| {
                            let before = i.clone();
                            if i.metadata.deletion_requested_at.is_none() {
                                i.status.phase = InstancePhase::Failed;
                                i.status.reason = Some(format!("host {name:?} is unreachable"));
                            }
                            let mut drafts = Vec::new();
                            if !announced {
                                drafts.push(domain::host_unreachable(&name, &names));
                            }
                            drafts.extend(domain::instance_transitions(&before, i));
                            let mut ops = crate::events::ops(&project, drafts, Utc::now())?;
                            ops.extend(crate::usage::instance_change(&before, i)?);
                            Ok(ops)
                        })
                        .await;
                    announced |= result.is_ok();
                }
            }
        }
    }
    Ok(())
}
