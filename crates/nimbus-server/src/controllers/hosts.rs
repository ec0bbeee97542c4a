//! Host liveness: a host whose agent stops sending heartbeats becomes
//! unreachable, and its instances are marked failed with the reason.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nimbus_api::{Host, HostPhase, Instance, InstancePhase, ListOptions};

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
    for host in hosts.items {
        let stale = host.status.last_heartbeat.is_none_or(|t| now - t > timeout);
        if host.status.phase == HostPhase::Ready && stale {
            let name = host.metadata.name.clone();
            tracing::warn!(host = %name, "host missed its heartbeats; marking it unreachable");
            state
                .repo
                .modify::<Host, _>(None, &name, |h| {
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
            for i in on_host.items {
                let _ = state
                    .repo
                    .modify::<Instance, _>(i.metadata.project.as_deref(), &i.metadata.name, |i| {
                        if i.metadata.deletion_requested_at.is_none() {
                            i.status.phase = InstancePhase::Failed;
                            i.status.reason = Some(format!("host {name:?} is unreachable"));
                        }
                        Ok(())
                    })
                    .await;
            }
        }
    }
    Ok(())
}
