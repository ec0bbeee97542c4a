//! The scheduler: binds pending instances to hosts. Filter (ready,
//! schedulable, enough memory left), then score (most free memory).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_api::{Host, HostPhase, Instance, InstancePhase, ListOptions};

use crate::error::ServerError;
use crate::state::AppState;

/// Ask the scheduler to run now rather than at its next tick.
pub fn nudge(state: &AppState) {
    state.schedule_now.notify_one();
}

pub async fn run(state: Arc<AppState>) {
    loop {
        if let Err(e) = schedule_pending(&state).await {
            tracing::warn!(error = %e, "scheduling pass failed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), state.schedule_now.notified()).await;
    }
}

/// Memory an instance reserves on its host: its limit while it is meant to
/// run. Without a limit it reserves nothing (best effort, as without a
/// request in Kubernetes).
fn reserved_bytes(i: &Instance) -> u64 {
    if i.spec.desired_state == nimbus_api::DesiredState::Stopped {
        return 0;
    }
    i.spec.resources.memory_bytes.unwrap_or(0)
}

/// Choose the host for `instance`, or say in words why none fits.
pub fn choose_host(
    instance: &Instance,
    hosts: &[Host],
    used: &HashMap<String, u64>,
) -> Result<String, String> {
    let need = reserved_bytes(instance);
    let mut best: Option<(&Host, u64)> = None;
    let mut reasons = Vec::new();
    for h in hosts {
        let name = &h.metadata.name;
        if h.status.phase != HostPhase::Ready {
            reasons.push(format!("{name}: not ready"));
            continue;
        }
        if h.spec.unschedulable {
            reasons.push(format!("{name}: cordoned"));
            continue;
        }
        let free = h
            .status
            .memory_bytes
            .saturating_sub(used.get(name).copied().unwrap_or(0));
        if free < need {
            reasons.push(format!(
                "{name}: {free} bytes of memory free, {need} needed"
            ));
            continue;
        }
        if best.is_none_or(|(_, f)| free > f) {
            best = Some((h, free));
        }
    }
    match best {
        Some((h, _)) => Ok(h.metadata.name.clone()),
        None if hosts.is_empty() => {
            Err("no hosts are registered; start an agent (`nimbus up` runs one)".into())
        }
        None => Err(format!("no host fits: {}", reasons.join("; "))),
    }
}

async fn schedule_pending(state: &AppState) -> Result<(), ServerError> {
    let all = ListOptions {
        limit: Some(5000),
        ..Default::default()
    };
    let pending = state
        .repo
        .list::<Instance>(None, &all, |i| {
            i.status.host.is_none() && i.metadata.deletion_requested_at.is_none()
        })
        .await?;
    if pending.items.is_empty() {
        return Ok(());
    }
    let hosts = state.repo.list::<Host>(None, &all, |_| true).await?.items;
    let placed = state
        .repo
        .list::<Instance>(None, &all, |i| {
            i.status.host.is_some() && !i.status.phase.is_terminal()
        })
        .await?;
    let mut used: HashMap<String, u64> = HashMap::new();
    for i in &placed.items {
        if let Some(h) = &i.status.host {
            *used.entry(h.clone()).or_default() += reserved_bytes(i);
        }
    }
    for instance in pending.items {
        let project = instance.metadata.project.clone();
        let name = instance.metadata.name.clone();
        let hosts =
            crate::api::volumes::hosts_holding_volumes(&state.repo, &instance, &hosts).await;
        let choice = choose_host(&instance, &hosts, &used);
        if let Ok(h) = &choice {
            *used.entry(h.clone()).or_default() += reserved_bytes(&instance);
        }
        let result = crate::events::modify_instance(&state.repo, project.as_deref(), &name, |i| {
            if i.status.host.is_some() {
                return Ok(());
            }
            match &choice {
                Ok(h) => {
                    i.status.host = Some(h.clone());
                    i.status.phase = InstancePhase::Scheduled;
                    i.status.reason = Some(format!("placed on host {h:?}"));
                }
                Err(why) => {
                    i.status.phase = InstancePhase::Pending;
                    i.status.reason = Some(why.clone());
                }
            }
            Ok(())
        })
        .await;
        match (&result, &choice) {
            (Ok(saved), Ok(h)) if saved.status.host.as_ref() == Some(h) => {
                let waited = (chrono::Utc::now() - saved.metadata.created_at)
                    .to_std()
                    .unwrap_or_default();
                state.metrics.observe_placement(waited);
            }
            (Err(e), _) => {
                tracing::debug!(instance = %name, error = %e, "could not bind instance");
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::{HostSpec, HostStatus, InstanceSpec, Metadata, Resources};

    fn host(name: &str, mem: u64, phase: HostPhase) -> Host {
        Host {
            metadata: Metadata::new(name, None),
            spec: HostSpec::default(),
            status: HostStatus {
                phase,
                memory_bytes: mem,
                ..Default::default()
            },
        }
    }

    fn instance(mem: u64) -> Instance {
        Instance {
            metadata: Metadata::new("i", Some("p")),
            spec: InstanceSpec {
                image: "x".into(),
                resources: Resources {
                    memory_bytes: Some(mem),
                    ..Default::default()
                },
                ..Default::default()
            },
            status: Default::default(),
        }
    }

    #[test]
    fn picks_the_ready_host_with_most_free_memory() {
        let hosts = vec![
            host("a", 1 << 30, HostPhase::Ready),
            host("b", 4 << 30, HostPhase::Unreachable),
            host("c", 2 << 30, HostPhase::Ready),
        ];
        let used = HashMap::from([("c".to_string(), 1u64 << 29)]);
        assert_eq!(choose_host(&instance(1 << 20), &hosts, &used).unwrap(), "c");
        let err = choose_host(&instance(8 << 30), &hosts, &used).unwrap_err();
        assert!(err.contains("b: not ready"), "{err}");
        assert!(err.contains("a: "), "{err}");
        assert!(choose_host(&instance(1), &[], &used)
            .unwrap_err()
            .contains("no hosts"));
    }
}
