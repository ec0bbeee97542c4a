//! Nimbus API: the resource types every component shares, the API error
//! format, and the client that speaks the public REST API.
//!
//! This crate holds data and the wire protocol only. It must never touch the
//! host (no mounts, processes or files beyond reading a token or certificate
//! for the client) and never depend on the store or a driver.

pub mod cidr;
pub mod client;
pub mod error;
pub mod exec;
pub mod hostio;
pub mod join;
pub mod meta;
pub mod registry;
pub mod resources;
pub mod servers;
pub mod stats;
mod tls_trust;
mod trust;
pub mod units;
pub mod usage;
pub mod version;
pub mod volumes;
pub mod vulns;

pub use error::{ApiError, ErrorCode};
pub use join::{
    CreateJoinToken, JoinRequest, JoinResponse, JoinToken, JoinTokenCreated, JoinTokenSpec,
    JoinTokenStatus,
};
pub use meta::{ListOptions, Metadata, ResourceList, WatchEvent, WatchEventType};
pub use registry::{Repository, RepositoryStatus, StoredManifest};
pub use resources::*;
pub use servers::{ServerInfo, ServerList, ServerRecord};
pub use trust::{
    ImageSignatures, ImageSignaturesSpec, Policy, PolicySpec, PolicyUpdate, SignatureAdded,
    SignatureUpload, TrustedKey, POLICY_NAME,
};
pub use usage::{InstanceHours, UsageHour, UsageReport, UsageTotals};
pub use version::{BuildVersion, ServerVersion};
pub use volumes::{
    AttachVolume, AttachedVolume, CreateSnapshot, DetachVolume, ProjectQuota, ResizeVolume,
    SnapshotConsistency, Volume, VolumeMount, VolumePhase, VolumeSnapshot, VolumeSpec,
    VolumeStatus,
};
pub use vulns::{
    Finding, ImageScan, ImageScanStatus, ScanSummary, Severity, VulnDb, VulnDbInfo, VulnDbStatus,
    VULNDB_NAME,
};
