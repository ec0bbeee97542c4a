//! Block volumes: a project's disks that outlive instances. The server
//! records what the user wants (`spec`); the agent of the volume's host
//! makes the file real and reports what it found (`status`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::meta::Metadata;
use crate::resources::Object;

/// What a volume should be.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VolumeSpec {
    /// Size of the disk in bytes; only grows.
    pub size_bytes: u64,
    /// The host keeping the volume's data. Chosen by the server at create
    /// (a ready host, or the source volume's host for a clone) unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `volume@snapshot` this volume was created from, in the same project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Snapshots that should exist, oldest first.
    #[serde(default)]
    pub snapshots: Vec<VolumeSnapshot>,
    /// Set by the server (ignored in requests): when the bytes the volume
    /// counts (its size plus its snapshots') last changed; usage metering
    /// bills the current size from here. Unset: since creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_since: Option<DateTime<Utc>>,
}

/// A point-in-time copy of a volume, kept inside the volume.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VolumeSnapshot {
    pub name: String,
    /// The volume's size when the snapshot was asked for: what it counts
    /// against the project's `volume_bytes` quota.
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumePhase {
    /// Recorded; the host's agent has not made it yet.
    #[default]
    Pending,
    /// The data exists on the host at the spec's size with its snapshots.
    Available,
    /// The agent could not converge; `message` says why.
    Error,
    /// `rm` was asked; the agent removes the data, then the record goes.
    Deleting,
}

impl VolumePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumePhase::Pending => "pending",
            VolumePhase::Available => "available",
            VolumePhase::Error => "error",
            VolumePhase::Deleting => "deleting",
        }
    }
}

/// What a snapshot's data holds, as far as the agent could make it so.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotConsistency {
    /// Nothing held the volume open: its data was at rest.
    Detached,
    /// A container's filesystem on the host was frozen (`FIFREEZE`).
    HostFrozen,
    /// A VM's guest agent froze the guest's filesystems.
    GuestFrozen,
    /// Taken while the volume was in use with nothing frozen (a VM whose
    /// guest agent did not answer): as after a power cut.
    CrashConsistent,
}

impl SnapshotConsistency {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotConsistency::Detached => "detached",
            SnapshotConsistency::HostFrozen => "host-frozen",
            SnapshotConsistency::GuestFrozen => "guest-frozen",
            SnapshotConsistency::CrashConsistent => "crash-consistent",
        }
    }
}

/// What the agent of the volume's host observed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VolumeStatus {
    #[serde(default)]
    pub phase: VolumePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The size the data has on the host now.
    #[serde(default)]
    pub size_bytes: u64,
    /// Bytes the host's disk holds for it (sparse files use less).
    #[serde(default)]
    pub allocated_bytes: u64,
    /// Names of the snapshots that exist on the host.
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// How consistent each snapshot's data is, by snapshot name, as the
    /// agent recorded when it took it (absent for snapshots taken before
    /// this was recorded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshot_consistency: BTreeMap<String, SnapshotConsistency>,
    /// Where the data lives on its host (a path for the qcow2 backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The agent has removed the data of a deleting volume: the server
    /// removes the record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finalized: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub metadata: Metadata,
    pub spec: VolumeSpec,
    #[serde(default)]
    pub status: VolumeStatus,
}

impl Object for Volume {
    const COLLECTION: &'static str = "volumes";
    const KIND: &'static str = "volume";
    const PROJECT_SCOPED: bool = true;
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }
}

impl Volume {
    /// Bytes it counts against the project's quota: its size plus the size
    /// each snapshot had when taken.
    pub fn counted_bytes(&self) -> u64 {
        self.spec
            .snapshots
            .iter()
            .fold(self.spec.size_bytes, |sum, s| {
                sum.saturating_add(s.size_bytes)
            })
    }
}

/// A volume attached to an instance (`--volume data:/var/lib/db[:ro]`; a
/// VM also takes `--volume data[:ro]`). A container mounts it at `path`;
/// a VM sees a virtio disk whose serial is the volume's name
/// (`/dev/disk/by-id/virtio-<name>`), which the guest mounts itself.
/// A volume serves one instance at a time (read-only included: each
/// attachment opens the qcow2 for itself).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct VolumeMount {
    /// Volume name in the instance's project.
    pub volume: String,
    /// Absolute path inside the container; empty for a VM's disk (the
    /// guest chooses where to mount it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl VolumeMount {
    /// `data:/var/lib/db`, `data:/var/lib/db:ro`, or for a VM's disk
    /// `data` and `data:ro` (no path).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("--volume {text:?} is not VOLUME[:PATH][:ro], e.g. --volume data:/var/lib/db or data:/srv:ro (a VM also takes --volume data)")
        };
        let (volume, rest) = text.split_once(':').unwrap_or((text, ""));
        let (path, read_only) = match rest.rsplit_once(':') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some(_) => return Err(bad()),
            None if rest == "ro" => ("", true),
            None if rest == "rw" => ("", false),
            None => (rest, false),
        };
        if volume.is_empty() || !(path.is_empty() || path.starts_with('/')) {
            return Err(bad());
        }
        Ok(VolumeMount {
            volume: volume.to_string(),
            path: path.to_string(),
            read_only,
        })
    }
}

/// `POST /v1/projects/{project}/volumes/{name}/attach`: attach the volume
/// to an existing instance of the same project.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AttachVolume {
    pub instance: String,
    /// Where a container mounts it (required for a container); a VM's
    /// guest mounts its disk itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// `POST /v1/projects/{project}/volumes/{name}/detach`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct DetachVolume {
    pub instance: String,
}

/// How one of an instance's volumes is attached on its host, as the agent
/// last saw it (VMs: the hot-plugged disk's state).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AttachedVolume {
    pub volume: String,
    /// `attached`, `attaching`, `detaching` or `failed`.
    pub state: String,
    /// Why it is failed or still pending, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/projects/{project}/volumes/{name}/resize`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ResizeVolume {
    /// The new size in bytes: larger than the current one.
    pub size_bytes: u64,
}

/// `POST /v1/projects/{project}/volumes/{name}/snapshots`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshot {
    pub name: String,
}

/// Limits on a project's volumes, instances and images; unset means unlimited.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ProjectQuota {
    /// How many volumes the project may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<u32>,
    /// Bytes of volumes and their snapshots together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_bytes: Option<u64>,
    /// How many instances the project may hold (`nimbus quota set --instances`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// Virtual CPUs of all its instances together: a VM counts its vcpus, a
    /// container its CPU limit rounded up (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory limits of all its instances together, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Host disk of all its instances together, in bytes: each one's
    /// writable layer (a container's `--disk`, a VM's disk) plus its log
    /// cap (`nimbus quota set --disk`). Volumes count in `volume_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Bytes of image content the project holds in the server's image
    /// store (`nimbus quota set --image-bytes`): each distinct blob its
    /// images and registry repositories name, counted once, plus its open
    /// registry uploads. A blob another project also holds counts in both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
}

impl ProjectQuota {
    pub fn is_unlimited(&self) -> bool {
        self.volumes.is_none()
            && self.volume_bytes.is_none()
            && self.instances.is_none()
            && self.vcpus.is_none()
            && self.memory_bytes.is_none()
            && self.disk_bytes.is_none()
            && self.image_bytes.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::{ProjectQuota, VolumeMount};

    #[test]
    fn an_image_bytes_limit_makes_a_quota_limited() {
        assert!(ProjectQuota::default().is_unlimited());
        let images_only = ProjectQuota {
            image_bytes: Some(1 << 30),
            ..ProjectQuota::default()
        };
        assert!(!images_only.is_unlimited());
        let text = serde_json::to_string(&images_only).expect("json");
        assert_eq!(text, r#"{"image_bytes":1073741824}"#);
    }

    #[test]
    fn volume_flags_parse() {
        let m = VolumeMount::parse("data:/var/lib/db").expect("rw");
        assert_eq!(
            (m.volume.as_str(), m.path.as_str(), m.read_only),
            ("data", "/var/lib/db", false)
        );
        assert!(VolumeMount::parse("data:/srv:ro").expect("ro").read_only);
        let vm = VolumeMount::parse("data").expect("a VM's disk");
        assert_eq!((vm.path.as_str(), vm.read_only), ("", false));
        assert!(VolumeMount::parse("data:ro").expect("ro disk").read_only);
        for bad in ["data:rel", ":/x", "data:/x:rx", ":ro"] {
            let e = VolumeMount::parse(bad).expect_err(bad);
            assert!(e.contains("VOLUME[:PATH][:ro]"), "{e}");
        }
    }
}
