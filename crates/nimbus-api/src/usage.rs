//! Usage of a project per hour, as `GET /v1/projects/{project}/usage`
//! answers it: instance-hours by kind, vCPU-hours, memory-GiB-hours,
//! image storage GiB-hours and object storage GiB-hours. The server
//! computes them from the intervals its status transitions recorded;
//! these types are only the answer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Hours that instances of each kind were running.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InstanceHours {
    pub container: f64,
    pub vm: f64,
    pub unikernel: f64,
}

/// Usage summed over a period (an hour, a day, or the whole window).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageTotals {
    pub instance_hours: InstanceHours,
    /// vCPUs times hours running: a VM's `vcpus` (1 when unset), a
    /// container's CPU limit in CPUs (1 when unlimited).
    pub vcpu_hours: f64,
    /// GiB of memory times hours running: the instance's memory limit (a
    /// VM without one: 512 MiB, a unikernel: 64 MiB; a container: none).
    pub memory_gib_hours: f64,
    /// GiB of stored images times hours stored.
    pub image_gib_hours: f64,
    /// GiB of stored S3 objects times hours stored (each version from its
    /// Last-Modified second until it was overwritten or deleted).
    #[serde(default)]
    pub object_gib_hours: f64,
    /// GiB of block volumes times hours kept: a volume's size plus its
    /// snapshots' sizes, from creation until deletion was asked for.
    #[serde(default)]
    pub volume_gib_hours: f64,
}

/// The usage of one hour `[hour, hour + 1h)` (clipped to the window).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageHour {
    /// The start of the hour, UTC.
    pub hour: DateTime<Utc>,
    pub instance_hours: InstanceHours,
    pub vcpu_hours: f64,
    pub memory_gib_hours: f64,
    pub image_gib_hours: f64,
    #[serde(default)]
    pub object_gib_hours: f64,
    #[serde(default)]
    pub volume_gib_hours: f64,
}

/// `GET /v1/projects/{project}/usage`: every hour of `[from, to)`, oldest
/// first, and the totals of the window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageReport {
    pub project: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub hours: Vec<UsageHour>,
    pub totals: UsageTotals,
    /// Bytes of image content the project holds now, as its
    /// `image_bytes` quota counts them: each distinct blob its images and
    /// registry repositories name, once, plus its open registry uploads.
    #[serde(default)]
    pub image_bytes: u64,
}
