//! What a host agent observes of its instances (CPU, memory, network),
//! pushed to the server every few seconds for its metrics. Kept in the
//! server's memory only: these numbers change every report and must not
//! churn the store.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One host's report: every instance it runs, as observed just now.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HostStats {
    #[serde(default)]
    pub instances: Vec<InstanceStats>,
}

/// Counters and gauges of one instance, read from its cgroups, its network
/// interfaces and (VMs) its emulator's vCPU threads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InstanceStats {
    /// The instance's id (`metadata.id`).
    pub id: String,
    /// CPU time used by everything in the instance's cgroup.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Memory in use by the cgroup (page cache included), bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// The cgroup's memory limit; `None` when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Processes the kernel OOM-killed in the cgroup.
    #[serde(default)]
    pub oom_kills: u64,
    /// Traffic of the instance's interfaces (loopback excluded), as the
    /// instance sees it: `rx` is what it received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkCounters>,
    /// VMs: CPU time of the emulator's vCPU threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_seconds: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct NetworkCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}
