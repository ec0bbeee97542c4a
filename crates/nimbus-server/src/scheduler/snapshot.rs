//! What the placement loop reads: each host's capacity and what is placed
//! on it, and what an instance asks for. Built once per pass from the
//! store, then updated in memory as instances are placed.

use std::collections::{BTreeMap, HashMap, HashSet};

use nimbus_api::{DesiredState, Host, HostPhase, Instance, InstanceKind, Placement};

/// Key for "an instance of `project` with label `key=value`".
pub fn label_key(project: &str, key: &str, value: &str) -> String {
    format!("{project}\u{0}{key}={value}")
}

/// One host as the filters and scorers see it.
#[derive(Clone, Debug, Default)]
pub struct HostView {
    pub name: String,
    pub ready: bool,
    pub cordoned: bool,
    pub architecture: String,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis_total: u64,
    pub memory_bytes_total: u64,
    pub disk_bytes_total: u64,
    /// Free on the host's data disk at its last heartbeat (0: unknown).
    pub disk_bytes_available: u64,
    pub used: Usage,
    /// Instances placed here, per `label_key`.
    pub instance_labels: HashMap<String, u32>,
}

impl HostView {
    pub fn from_host(h: &Host) -> Self {
        HostView {
            name: h.metadata.name.clone(),
            ready: h.status.phase == HostPhase::Ready,
            cordoned: h.spec.unschedulable,
            architecture: h.status.architecture.clone(),
            labels: h.metadata.labels.clone(),
            cpu_millis_total: u64::from(h.status.cpus) * 1000,
            memory_bytes_total: h.status.memory_bytes,
            disk_bytes_total: h.status.disk_bytes,
            disk_bytes_available: h.status.disk_available_bytes,
            used: Usage::default(),
            instance_labels: HashMap::new(),
        }
    }

    /// Count `demand` as placed here.
    pub fn add(&mut self, demand: &Demand) {
        self.used.instances += 1;
        self.used.cpu_millis += demand.cpu_millis;
        self.used.memory_bytes += demand.memory_bytes;
        self.used.disk_bytes += demand.disk_bytes;
        for k in &demand.own_label_keys {
            *self.instance_labels.entry(k.clone()).or_default() += 1;
        }
    }

    /// Disk not promised to the instances placed here and, when the host
    /// reports it, really free; `None` when the host reports no disk.
    pub fn disk_bytes_free(&self) -> Option<u64> {
        if self.disk_bytes_total == 0 {
            return None;
        }
        let unpromised = self.disk_bytes_total.saturating_sub(self.used.disk_bytes);
        Some(match self.disk_bytes_available {
            0 => unpromised,
            available => unpromised.min(available),
        })
    }

    pub fn memory_bytes_free(&self) -> u64 {
        self.memory_bytes_total
            .saturating_sub(self.used.memory_bytes)
    }
}

/// Resources counted against a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub instances: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// What one instance asks of a host, with its placement rules turned into
/// the keys the filters look up.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub placement: Placement,
    /// `label_key`s of the instance's own labels.
    pub own_label_keys: Vec<String>,
    /// `label_key`s a host must not run (anti-affinity).
    pub anti_affinity_keys: Vec<(String, String)>,
    /// `label_key`s a host must run (affinity).
    pub affinity_keys: Vec<(String, String)>,
    /// The one host holding the instance's volumes, if it names any.
    pub volumes_host: Option<String>,
    /// The architectures (OCI names) the instance's image has platforms
    /// for; empty: the image runs on any host.
    pub image_architectures: Vec<String>,
}

/// What placing a pending instance needs beyond the instance itself.
#[derive(Clone, Debug, Default)]
pub struct PendingContext {
    /// The one host holding the instance's volumes, if it names any.
    pub volumes_host: Option<String>,
    /// See [`Demand::image_architectures`].
    pub image_architectures: Vec<String>,
}

impl Demand {
    /// What `i` reserves: nothing once it is meant to be stopped. Memory is
    /// its limit (none: best effort, as without a request in Kubernetes);
    /// CPU is a VM's vcpus or a container's CPU limit; disk is its writable
    /// layer or VM disk, when sized, plus its log cap.
    pub fn of(i: &Instance) -> Self {
        let project = i.metadata.project.as_deref().unwrap_or("");
        let keys = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
            m.iter()
                .map(|(k, v)| (label_key(project, k, v), format!("{k}={v}")))
                .collect()
        };
        let own_label_keys = i
            .metadata
            .labels
            .iter()
            .map(|(k, v)| label_key(project, k, v))
            .collect();
        let mut d = Demand {
            placement: i.spec.placement.clone(),
            own_label_keys,
            anti_affinity_keys: keys(&i.spec.placement.anti_affinity),
            affinity_keys: keys(&i.spec.placement.affinity),
            ..Default::default()
        };
        if i.spec.desired_state == DesiredState::Stopped {
            return d;
        }
        d.memory_bytes = i.spec.resources.memory_bytes.unwrap_or(0);
        d.cpu_millis = match i.spec.kind {
            InstanceKind::Container => i.spec.resources.cpu_millis.unwrap_or(0),
            InstanceKind::Vm | InstanceKind::Unikernel => {
                u64::from(i.spec.vm.as_ref().and_then(|v| v.vcpus).unwrap_or(1)) * 1000
            }
        };
        d.disk_bytes = i.spec.disk_demand_bytes();
        d
    }
}

/// Hosts with what is already placed on them counted.
pub fn build_hosts<'a>(
    hosts: &[Host],
    placed: impl IntoIterator<Item = &'a Instance>,
) -> Vec<HostView> {
    let mut views: Vec<HostView> = hosts.iter().map(HostView::from_host).collect();
    let index: HashMap<String, usize> = views
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.clone(), i))
        .collect();
    let mut seen = HashSet::new();
    for i in placed {
        let Some(h) = i.status.host.as_deref() else {
            continue;
        };
        if !seen.insert(i.metadata.id.clone()) {
            continue;
        }
        if let Some(&at) = index.get(h) {
            views[at].add(&Demand::of(i));
        }
    }
    views
}
