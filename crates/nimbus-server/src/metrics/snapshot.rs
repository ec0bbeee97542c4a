//! What a scrape renders, read from the store and the agents' latest
//! reports at the moment of the scrape.

use std::collections::HashMap;

use nimbus_api::stats::InstanceStats;
use nimbus_api::{DesiredState, Host, Instance, Network, PublishedPort};

use crate::error::ApiResult;
use crate::state::AppState;

/// Everything rendered per scrape; plain data, so rendering is pure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub store_revision: i64,
    /// Instances not yet bound to a host.
    pub pending_instances: u64,
    pub hosts: Vec<HostRow>,
    pub instances: Vec<InstanceRow>,
    pub networks: Vec<NetworkRow>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostRow {
    pub name: String,
    pub phase: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// Memory limits of the instances bound here and meant to run.
    pub allocated_memory_bytes: u64,
    /// CPU limits (millicores) of the same instances.
    pub allocated_cpu_millis: u64,
    pub instances: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceRow {
    pub project: String,
    pub name: String,
    pub kind: String,
    pub host: String,
    pub phase: String,
    pub restarts: u32,
    /// What its agent last reported, if it did recently.
    pub stats: Option<InstanceStats>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkRow {
    pub project: String,
    pub name: String,
    pub addresses_allocated: u64,
    pub addresses_capacity: u64,
    /// Instances plugged into it (one port each on its bridge).
    pub ports: u64,
    /// Host ports published to instances on it.
    pub published_ports: u64,
}

const PAGE: usize = crate::repo::MAX_PAGE;

fn label<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Read the current state for one scrape.
pub async fn take(state: &AppState) -> ApiResult<Snapshot> {
    let store_revision = state.repo.store.current_revision().await?;
    let hosts = state.repo.list_every::<Host>(None, PAGE).await?;
    let instances = state.repo.list_every::<Instance>(None, PAGE).await?;
    let networks = state.repo.list_every::<Network>(None, PAGE).await?;
    let published = state.repo.list_every::<PublishedPort>(None, PAGE).await?;
    let mut stats = state.metrics.fresh_instance_stats();
    let mut snapshot = Snapshot {
        store_revision,
        ..Snapshot::default()
    };

    let mut allocated: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    let mut ports: HashMap<(&str, &str), u64> = HashMap::new();
    let mut network_of: HashMap<(&str, &str), &str> = HashMap::new();
    for i in &instances {
        let project = i.metadata.project.as_deref().unwrap_or_default();
        if i.status.host.is_none() && i.metadata.deletion_requested_at.is_none() {
            snapshot.pending_instances += 1;
        }
        if let Some(h) = i.status.host.as_deref() {
            if i.spec.desired_state != DesiredState::Stopped && !i.status.phase.is_terminal() {
                let a = allocated.entry(h).or_default();
                a.0 += i.spec.resources.memory_bytes.unwrap_or(0);
                a.1 += i.spec.resources.cpu_millis.unwrap_or(0);
                a.2 += 1;
            }
        }
        for n in &i.spec.networks {
            *ports.entry((project, n.as_str())).or_default() += 1;
            network_of
                .entry((project, i.metadata.name.as_str()))
                .or_insert(n.as_str());
        }
        snapshot.instances.push(InstanceRow {
            project: project.to_string(),
            name: i.metadata.name.clone(),
            kind: label(&i.spec.kind),
            host: i.status.host.clone().unwrap_or_default(),
            phase: label(&i.status.phase),
            restarts: i.status.restart_count,
            stats: stats.remove(&i.metadata.id),
        });
    }
    for h in &hosts {
        let (memory, cpu, count) = allocated
            .get(h.metadata.name.as_str())
            .copied()
            .unwrap_or_default();
        snapshot.hosts.push(HostRow {
            name: h.metadata.name.clone(),
            phase: label(&h.status.phase),
            cpus: h.status.cpus,
            memory_bytes: h.status.memory_bytes,
            disk_bytes: h.status.disk_bytes,
            allocated_memory_bytes: memory,
            allocated_cpu_millis: cpu,
            instances: count,
        });
    }
    let mut published_on: HashMap<(&str, &str), u64> = HashMap::new();
    for p in &published {
        let project = p.metadata.project.as_deref().unwrap_or_default();
        if let Some(n) = network_of.get(&(project, p.spec.instance.as_str())) {
            *published_on.entry((project, n)).or_default() += 1;
        }
    }
    for n in &networks {
        let project = n.metadata.project.as_deref().unwrap_or_default();
        let name = n.metadata.name.as_str();
        let capacity = crate::ipam::subnet_and_gateway(n)
            .map(|(subnet, _)| u64::from(subnet.host_count().saturating_sub(1)))
            .unwrap_or(0);
        let used = crate::ipam::used_addresses(&state.repo, project, name).await?;
        snapshot.networks.push(NetworkRow {
            project: project.to_string(),
            name: name.to_string(),
            addresses_allocated: used.len() as u64,
            addresses_capacity: capacity,
            ports: ports.get(&(project, name)).copied().unwrap_or(0),
            published_ports: published_on.get(&(project, name)).copied().unwrap_or(0),
        });
    }
    Ok(snapshot)
}
