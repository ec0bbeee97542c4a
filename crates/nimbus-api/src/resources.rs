//! The resources of the Nimbus API. Each has `metadata`, a `spec` (what the
//! user wants) and a `status` (what controllers observed).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::meta::Metadata;

/// Implemented by every stored resource so the server can handle them generically.
pub trait Object: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {
    /// Collection name in URLs and store keys, e.g. `instances`.
    const COLLECTION: &'static str;
    /// Singular, for messages: `instance "web"`.
    const KIND: &'static str;
    /// Whether it lives inside a project.
    const PROJECT_SCOPED: bool;
    fn metadata(&self) -> &Metadata;
    fn metadata_mut(&mut self) -> &mut Metadata;
    /// Remove what must never leave the server (token hashes).
    fn redact(&mut self) {}
}

macro_rules! object {
    ($ty:ty, $coll:literal, $kind:literal, $scoped:literal) => {
        impl Object for $ty {
            const COLLECTION: &'static str = $coll;
            const KIND: &'static str = $kind;
            const PROJECT_SCOPED: bool = $scoped;
            fn metadata(&self) -> &Metadata {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut Metadata {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use object;

// ---------------------------------------------------------------- projects

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ProjectSpec {
    #[serde(default)]
    pub description: String,
    /// Limits given to instances that do not set their own. Unset fields
    /// fall back to the built-in defaults (`InstanceDefaults::BUILT_IN`).
    #[serde(default)]
    pub instance_defaults: Resources,
    /// Host ports the project's members may publish (and claim as VM
    /// forwards). Only a system administrator changes it.
    #[serde(default)]
    pub host_ports: HostPortPolicy,
    /// Limits on the project's volumes, instances and images (`nimbus quota set`). Only a
    /// system administrator changes it.
    #[serde(
        default,
        skip_serializing_if = "crate::volumes::ProjectQuota::is_unlimited"
    )]
    pub quota: crate::volumes::ProjectQuota,
}

/// Which host ports a project may claim, and how many at once.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct HostPortPolicy {
    /// Lowest host port the project may claim (never below 1024).
    pub min: u16,
    /// Highest host port the project may claim.
    pub max: u16,
    /// How many host ports the project may hold at once (published ports
    /// and VM forwards together).
    pub max_count: u32,
}

impl HostPortPolicy {
    pub const DEFAULT_MAX_COUNT: u32 = 64;
}

impl Default for HostPortPolicy {
    fn default() -> Self {
        HostPortPolicy {
            min: 1024,
            max: 65535,
            max_count: Self::DEFAULT_MAX_COUNT,
        }
    }
}

/// The limits an instance gets when neither it nor its project sets them.
pub struct InstanceDefaults;

impl InstanceDefaults {
    /// 1 GiB of memory, one CPU, 1024 processes.
    pub const BUILT_IN: Resources = Resources {
        memory_bytes: Some(1 << 30),
        cpu_millis: Some(1000),
        pids_max: Some(1024),
        disk_bytes: None,
    };

    /// `spec`'s unset fields filled from the project's defaults, then from
    /// the built-in ones.
    pub fn effective(spec: &Resources, project: &Resources) -> Resources {
        let b = Self::BUILT_IN;
        Resources {
            memory_bytes: spec
                .memory_bytes
                .or(project.memory_bytes)
                .or(b.memory_bytes),
            cpu_millis: spec.cpu_millis.or(project.cpu_millis).or(b.cpu_millis),
            pids_max: spec.pids_max.or(project.pids_max).or(b.pids_max),
            // No built-in size: the host's default applies (the agent's).
            disk_bytes: spec.disk_bytes.or(project.disk_bytes),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ProjectStatus {}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Project {
    pub metadata: Metadata,
    pub spec: ProjectSpec,
    #[serde(default)]
    pub status: ProjectStatus,
}
object!(Project, "projects", "project", false);

// ---------------------------------------------------------------- users, tokens, roles

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UserSpec {
    /// A system administrator may manage every project, user and host.
    #[serde(default)]
    pub system_admin: bool,
    /// May read `/metrics` and nothing else (a monitoring system's user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_reader: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UserStatus {}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct User {
    pub metadata: Metadata,
    pub spec: UserSpec,
    #[serde(default)]
    pub status: UserStatus,
}
object!(User, "users", "user", false);

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TokenSpec {
    /// The user this token acts as.
    pub user: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// For host agents: the host this token may report for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TokenStatus {
    /// Hex SHA-256 of the secret; the secret itself is never stored, and
    /// the API blanks this field in every response.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An API token. Its name is its id; the secret is shown once, at creation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Token {
    pub metadata: Metadata,
    pub spec: TokenSpec,
    #[serde(default)]
    pub status: TokenStatus,
}
impl Object for Token {
    const COLLECTION: &'static str = "tokens";
    const KIND: &'static str = "token";
    const PROJECT_SCOPED: bool = false;
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }
    fn redact(&mut self) {
        self.status.secret_sha256.clear();
    }
}

/// Returned once by token creation: keep `secret`, it cannot be shown again.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: Token,
    pub secret: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Reader,
    Member,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(Role::Reader),
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: use reader, member or admin")),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RoleBindingSpec {
    pub user: String,
    pub role: Role,
}

/// Grants a user a role in one project. Its name is the user's name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RoleBinding {
    pub metadata: Metadata,
    pub spec: RoleBindingSpec,
    #[serde(default)]
    pub status: ProjectStatus,
}
object!(RoleBinding, "rolebindings", "role binding", true);

// ---------------------------------------------------------------- hosts

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HostSpec {
    /// Where the agent can be reached, informational for now.
    #[serde(default)]
    pub address: String,
    /// Cordon: the scheduler places nothing new here.
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostPhase {
    #[default]
    Registering,
    Ready,
    Unreachable,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HostStatus {
    pub phase: HostPhase,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Size of the filesystem holding the agent's data dir.
    pub disk_bytes: u64,
    /// What is free on it for Nimbus, at the last heartbeat (0: not
    /// reported, by an older agent).
    #[serde(default)]
    pub disk_available_bytes: u64,
    pub architecture: String,
    pub kernel: String,
    /// Which cgroup layout the host has (`v1`, `v2`, `hybrid`).
    #[serde(default)]
    pub cgroup: String,
    /// The cgroup subtree systemd delegated to Nimbus, relative to the v2
    /// root (`/system.slice/nimbus-cgroup.service`); empty where Nimbus
    /// uses the hierarchies' roots (v1, hybrid, v2 without systemd).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup_delegated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The agent's release (`nimbus_api::version::RELEASE`).
    #[serde(default)]
    pub agent_version: String,
    /// The agent's protocol level (`nimbus_api::version`); 0 from agents
    /// older than protocol levels.
    #[serde(default)]
    pub agent_protocol: u32,
    #[serde(default)]
    pub instances: u32,
    /// How virtual machines run here: `kvm` or `tcg`, chosen by probing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub accelerator: String,
    /// Why that accelerator, in words (e.g. what KVM failed to run).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub accelerator_reason: String,
    /// The agent's self-fencing lease: it stops every instance of the host
    /// once no heartbeat has been accepted for this long. Set only by agents
    /// that fence; the server then moves the host's instances that have a
    /// restart policy to other hosts when the host goes unreachable (no
    /// sooner than this lease plus a margin after its last heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_after_ms: Option<u64>,
    /// The host's underlay ("data-centre") address: where other hosts send
    /// the VXLAN traffic of networks that span hosts. `None`: the agent has
    /// none (one host, or the servers reached over loopback), and its
    /// networks stay on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tunnel_address: Option<std::net::Ipv4Addr>,
    /// UDP port of the host's VXLAN endpoint (4789 unless configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_port: Option<u16>,
    /// Where the agent serves logs, exec, consoles and pause of its
    /// instances to the servers (`IP:PORT`, HTTPS); empty when it does not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub io_endpoint: String,
    /// Hex SHA-256 of that endpoint's certificate: the servers trust only
    /// it when they connect.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub io_certificate_sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Host {
    pub metadata: Metadata,
    pub spec: HostSpec,
    #[serde(default)]
    pub status: HostStatus,
}
object!(Host, "hosts", "host", false);

// ---------------------------------------------------------------- images

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageSpec {
    /// Where it came from, informational (e.g. the file name imported).
    #[serde(default)]
    pub source: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageDefaults {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageStatus {
    /// `oci`, `docker-archive`, `rootfs`, `disk` or `kernel`.
    pub format: String,
    /// Manifest digest (`sha256:...`).
    pub digest: String,
    /// Layer blob digests, lowest first.
    pub layers: Vec<String>,
    pub size_bytes: u64,
    /// The default platform's architecture (OCI name, e.g. `amd64`); `digest`,
    /// `layers` and `defaults` describe that platform.
    pub architecture: String,
    #[serde(default)]
    pub defaults: ImageDefaults,
    /// Every platform of an image imported from an OCI layout or a docker-archive, the
    /// default first; an instance runs the one of its host's architecture. Empty for
    /// root filesystems, disks and kernels, which run on any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<ImagePlatformStatus>,
    /// For `format: disk`: the base disk of virtual machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskImage>,
    /// For `format: kernel`: a kernel booted directly (VMs and unikernels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelImage>,
    /// The last vulnerability scan of this digest in the project, when one
    /// was made. Filled when one image is read (`GET`), never stored with
    /// the image; absent from lists and watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerabilities: Option<crate::vulns::ScanSummary>,
}

/// One platform of a multi-architecture image.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImagePlatformStatus {
    /// `linux`.
    pub os: String,
    /// OCI name: `amd64`, `arm64`, ...
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// This platform's manifest digest (`sha256:...`).
    pub digest: String,
    /// Its layer blob digests, lowest first.
    pub layers: Vec<String>,
    #[serde(default)]
    pub defaults: ImageDefaults,
}

/// A disk image: stored once, never written; each VM gets a qcow2 overlay on it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DiskImage {
    /// Blob digest of the base file (`sha256:...`).
    pub digest: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The size the guest sees.
    pub virtual_size_bytes: u64,
}

/// A kernel image: an ELF with a PVH or multiboot entry, and an optional initrd.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct KernelImage {
    /// Blob digest of the kernel ELF.
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// `pvh` or `multiboot`.
    pub entry: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Image {
    pub metadata: Metadata,
    pub spec: ImageSpec,
    #[serde(default)]
    pub status: ImageStatus,
}
object!(Image, "images", "image", true);

// ---------------------------------------------------------------- instances

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceKind {
    #[default]
    Container,
    Vm,
    Unikernel,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a CPU (1000 = one full CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<i64>,
    /// Containers: size of the writable root filesystem layer (an ext4
    /// filesystem of its own; a write past it fails with ENOSPC). Unset:
    /// the project's default, then the host's (`nimbus up
    /// --container-disk`, 10 GiB). A VM's disk is `vm.disk_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartMode {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RestartPolicy {
    #[serde(default)]
    pub mode: RestartMode,
    /// With `on_failure`: give up after this many restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    #[default]
    Running,
    Stopped,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InstanceSpec {
    #[serde(default)]
    pub kind: InstanceKind,
    /// Image name in the same project.
    pub image: String,
    /// Command and arguments; empty means the image's entrypoint and cmd.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment of the container, shown to every reader of the project.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment whose values are never shown: responses carry the names
    /// with the value `<secret>` (`SECRET_REDACTED`), and the store holds
    /// them sealed. Only the agent of the instance's host gets the values,
    /// to start the workload. In a replace, `<secret>` keeps a value and a
    /// name left out removes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `uid` or `uid:gid` inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub desired_state: DesiredState,
    /// Bumped by `restart`: the agent restarts the workload when it changes.
    #[serde(default)]
    pub restart_generation: u64,
    /// Time between SIGTERM and SIGKILL on stop (default 10000). For VMs:
    /// between the ACPI power-down request and killing QEMU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    /// Networks of the same project to attach to (one for now). Empty:
    /// loopback only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// Security groups of the same project; they filter ingress on every
    /// network of the instance. Empty: ingress is not filtered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secgroups: Vec<String>,
    /// Virtual hardware and first-boot data of `vm` and `unikernel` instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmSpec>,
    /// Delete the instance once its workload has ended for good: when it
    /// reaches `exited`, `failed` or `stopped` (its restart policy will
    /// not start it again). `nimbus instance run --rm`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
    /// Volumes of the same project mounted into the container or given to
    /// the VM as virtio disks; the instance is placed on their host.
    /// `nimbus instance run --volume`, `nimbus volume attach|detach`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::volumes::VolumeMount>,
    /// Where the scheduler may and should put the instance.
    #[serde(default, skip_serializing_if = "Placement::is_default")]
    pub placement: Placement,
    /// The most the instance's output log (container stdout and stderr, a
    /// VM's serial console) takes on its host's disk, rotated files
    /// together; the oldest lines go first. Set by the server from `nimbus
    /// up --log-max` when not given, never above it, and counted in the
    /// project's disk quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_bytes: Option<u64>,
}

/// A container's writable layer when neither it nor its project sets a
/// size: the agent's default (`nimbus up --container-disk`), and what a
/// project with a disk quota is given.
pub const DEFAULT_CONTAINER_DISK_BYTES: u64 = 10 << 30;

impl InstanceSpec {
    /// Bytes of host disk it may take: its writable layer (a container's
    /// `resources.disk_bytes`, a VM's `vm.disk_bytes`; unset counts 0, see
    /// the server's defaults) plus its log cap.
    pub fn disk_demand_bytes(&self) -> u64 {
        let disk = match self.kind {
            InstanceKind::Container => self.resources.disk_bytes,
            InstanceKind::Vm | InstanceKind::Unikernel => {
                self.vm.as_ref().and_then(|v| v.disk_bytes)
            }
        };
        disk.unwrap_or(0)
            .saturating_add(self.log_max_bytes.unwrap_or(0))
    }

    /// vCPUs it counts against the project's quota: a VM's vcpus (default
    /// 1), a container's CPU limit rounded up, at least 1.
    pub fn quota_vcpus(&self) -> u64 {
        match self.kind {
            InstanceKind::Container => self.resources.cpu_millis.unwrap_or(0).div_ceil(1000).max(1),
            InstanceKind::Vm | InstanceKind::Unikernel => {
                u64::from(self.vm.as_ref().and_then(|v| v.vcpus).unwrap_or(1))
            }
        }
    }
}

/// How hosts are ranked once they fit.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// Prefer the host running fewest instances (`--spread host`).
    #[default]
    Spread,
    /// Prefer the fullest host that still fits (`--pack`).
    Pack,
}

/// Constraints and preferences for choosing a host. Labels are host labels
/// (`nimbus up --host-label site=bj`); affinity labels are labels of other
/// instances in the same project (`nimbus instance run --label app=web`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Placement {
    #[serde(default)]
    pub strategy: PlacementStrategy,
    /// Only hosts carrying all of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require_labels: BTreeMap<String, String>,
    /// Among fitting hosts, those with more of these labels first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefer_labels: BTreeMap<String, String>,
    /// Only hosts already running an instance of the project with all of
    /// these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub affinity: BTreeMap<String, String>,
    /// No host running an instance of the project with any of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub anti_affinity: BTreeMap<String, String>,
    /// Only hosts of this CPU architecture (as `uname -m`, e.g. `x86_64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

impl Placement {
    pub fn is_default(&self) -> bool {
        *self == Placement::default()
    }

    /// Every label key and value is a valid name-like token.
    pub fn validate(&self) -> Result<(), String> {
        let maps = [
            ("require label", &self.require_labels),
            ("prefer label", &self.prefer_labels),
            ("affinity label", &self.affinity),
            ("anti-affinity label", &self.anti_affinity),
        ];
        for (what, map) in maps {
            for (k, v) in map {
                let ok = |t: &str| {
                    !t.is_empty()
                        && t.len() <= 63
                        && t.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
                };
                if !ok(k) || !(v.is_empty() || ok(v)) {
                    return Err(format!(
                        "{what} {k:?}={v:?} is not valid: keys and values are up to 63 of a-z, A-Z, 0-9, '-', '_', '.', '/'"
                    ));
                }
            }
        }
        if let Some(a) = &self.architecture {
            if a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "architecture {a:?} is not valid: give it as `uname -m` prints it, e.g. x86_64 or aarch64"
                ));
            }
        }
        Ok(())
    }
}

/// What a virtual machine (or unikernel) gets besides memory (`resources.memory_bytes`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VmSpec {
    /// Virtual CPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Root disk size for disk images (default: the image's size); the
    /// overlay grows up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// SSH public keys for the default user, through cloud-init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// cloud-init user-data: a `#cloud-config` document or a `#!` script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// For a VM from a disk image: boot this kernel image (same project)
    /// directly, with the disk as its root; the instance's arguments are the
    /// kernel command line (e.g. `root=/dev/vda1`). Skips firmware and
    /// bootloader, which is much faster under TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_image: Option<String>,
    /// Guest TCP ports reachable on the host's loopback through QEMU's user
    /// network (until the VM joins a Nimbus network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwards: Vec<PortForward>,
}

/// `127.0.0.1:host_port` on the host reaches `guest_port` in the guest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PortForward {
    pub host_port: u16,
    pub guest_port: u16,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstancePhase {
    /// Waiting for the scheduler.
    #[default]
    Pending,
    /// Bound to a host; the agent has not started it yet.
    Scheduled,
    Starting,
    Running,
    /// A virtual machine whose CPUs are stopped on request (`resume` continues).
    Paused,
    /// Exited and waiting to be restarted by its restart policy.
    Backoff,
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Exited by itself and will not be restarted.
    Exited,
    /// Could not be started, or the host lost it.
    Failed,
    Deleting,
}

impl InstancePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            InstancePhase::Pending => "pending",
            InstancePhase::Scheduled => "scheduled",
            InstancePhase::Starting => "starting",
            InstancePhase::Running => "running",
            InstancePhase::Paused => "paused",
            InstancePhase::Backoff => "backoff",
            InstancePhase::Stopping => "stopping",
            InstancePhase::Stopped => "stopped",
            InstancePhase::Exited => "exited",
            InstancePhase::Failed => "failed",
            InstancePhase::Deleting => "deleting",
        }
    }
    /// The workload is not running and will not run again without a request.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            InstancePhase::Stopped | InstancePhase::Exited | InstancePhase::Failed
        )
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InstanceStatus {
    #[serde(default)]
    pub phase: InstancePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub restart_count: u32,
    /// Why it is in this phase, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The spec `restart_generation` the agent last acted on.
    #[serde(default)]
    pub observed_generation: u64,
    /// User-namespace range on the host: container uid 0 is this host uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_uid: Option<u32>,
    /// The id of the image resolved when the instance was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The image platform its host runs (`linux/arm64`), chosen when the
    /// instance is placed; none for images without platforms (root
    /// filesystems, disks, kernels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// VMs: `kvm` or `tcg`, and why (from the host's probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_reason: Option<String>,
    /// VMs: the QEMU process on the host while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<i32>,
    /// VMs: the serial console log on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_log: Option<String>,
    /// Why the workload ended, in words, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    /// Addresses allocated by the server on each network, at creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<InstanceAddress>,
    /// How its volumes are attached on the host (VMs: hot-plug state).
    /// A report without it keeps what the last one said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<crate::volumes::AttachedVolume>>,
}

/// An instance's address on one network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct InstanceAddress {
    pub network: String,
    /// The network's id (its host-side links and namespaces are named after it).
    pub network_id: String,
    #[schema(value_type = String)]
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    #[schema(value_type = String)]
    pub gateway: std::net::Ipv4Addr,
    /// `02:..`, locally administered, derived from the instance id.
    pub mac: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Instance {
    pub metadata: Metadata,
    pub spec: InstanceSpec,
    #[serde(default)]
    pub status: InstanceStatus,
}
impl Object for Instance {
    const COLLECTION: &'static str = "instances";
    const KIND: &'static str = "instance";
    const PROJECT_SCOPED: bool = true;
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }
    /// Secret values never leave the server: only their names are shown.
    fn redact(&mut self) {
        for value in self.spec.secret_env.values_mut() {
            *value = SECRET_REDACTED.to_string();
        }
    }
}

/// The opened secret environment of an instance, for its host's agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SecretEnv {
    pub values: BTreeMap<String, String>,
}

/// What responses show instead of a secret environment value. Sent back in
/// a replace (PUT), it keeps the stored value.
pub const SECRET_REDACTED: &str = "<secret>";

// ---------------------------------------------------------------- networks

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct NetworkSpec {
    /// IPv4 subnet in CIDR form, /16 to /29, e.g. `10.20.0.0/24`.
    pub subnet: String,
    /// Default: the first address of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Resolver given to instances. Default: the gateway, where Nimbus
    /// answers for instance names of the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Search domain written to instances' resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_search: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct NetworkStatus {
    /// The gateway actually used (the spec's, or the subnet's first address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Addresses handed out.
    #[serde(default)]
    pub allocated: u32,
    /// Usable instance addresses in the subnet.
    #[serde(default)]
    pub capacity: u32,
    /// The network's VXLAN network identifier, unique in the cluster:
    /// hosts carry its frames to each other under this id. Given when the
    /// network is created (older networks: at their next launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

/// An instance of a network on another host, as a host agent needs it to
/// reach it over VXLAN: `GET /v1/hosts/{host}/network-peers`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct NetworkPeer {
    pub project: String,
    pub network: String,
    pub network_id: String,
    pub vni: u32,
    /// The instance's name (for DNS) and security groups (for group rules).
    pub instance: String,
    #[serde(default)]
    pub secgroups: Vec<String>,
    #[schema(value_type = String)]
    pub ip: std::net::Ipv4Addr,
    pub mac: String,
    /// The instance's host and that host's underlay address and port.
    pub host: String,
    #[schema(value_type = String)]
    pub tunnel_address: std::net::Ipv4Addr,
    pub tunnel_port: u16,
}

/// Every instance on another host of the networks a host serves.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct NetworkPeers {
    pub items: Vec<NetworkPeer>,
    /// Names this list: ask again with `after` set to it and `wait` to be
    /// answered only when the list differs (or the wait ends). Empty from
    /// servers that cannot wait.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// A private network of a project: on each host, its own router namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Network {
    pub metadata: Metadata,
    pub spec: NetworkSpec,
    #[serde(default)]
    pub status: NetworkStatus,
}
object!(Network, "networks", "network", true);

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Icmp,
    /// Every protocol.
    Any,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        }
    }
}

/// One ingress rule: traffic matching it may reach members of the group.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct SecurityRule {
    #[serde(default)]
    pub protocol: Protocol,
    /// First port (tcp/udp); none means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_from: Option<u16>,
    /// Last port, inclusive; defaults to `port_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_to: Option<u16>,
    /// Source CIDR; none means any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Source: members of this security group (same project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl SecurityRule {
    /// `tcp:80`, `tcp:8000-8080:10.0.0.0/8`, `any:group=web`.
    pub fn describe(&self) -> String {
        let mut s = self.protocol.as_str().to_string();
        if let Some(f) = self.port_from {
            s.push_str(&format!(":{f}"));
            if let Some(t) = self.port_to.filter(|t| *t != f) {
                s.push_str(&format!("-{t}"));
            }
        }
        if let Some(c) = &self.cidr {
            s.push_str(&format!(" from {c}"));
        }
        if let Some(g) = &self.group {
            s.push_str(&format!(" from group {g}"));
        }
        s
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SecurityGroupSpec {
    #[serde(default)]
    pub description: String,
    /// Ingress allowed on top of traffic from members of the group itself
    /// and replies to the members' own connections.
    #[serde(default)]
    pub rules: Vec<SecurityRule>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SecurityGroupStatus {}

/// Stateful ingress filter for instances: default deny from outside the group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SecurityGroup {
    pub metadata: Metadata,
    pub spec: SecurityGroupSpec,
    #[serde(default)]
    pub status: SecurityGroupStatus,
}
object!(SecurityGroup, "secgroups", "security group", true);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PublishedPortSpec {
    /// The instance (same project) that receives the traffic.
    pub instance: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Port on every address of the host.
    pub host_port: u16,
    /// Port inside the instance.
    pub instance_port: u16,
}

/// Whether the host of the instance forwards the port, as its agent
/// reports (`POST .../addresses/{name}/status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct PublishedPortStatus {
    /// The forwarding rules are in place on the instance's host: a
    /// connection to the host port now reaches the instance.
    #[serde(default)]
    pub applied: bool,
    /// The host whose agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Why the host does not forward the port (e.g. a host service
    /// listens on it), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A host port forwarded to an instance (`nimbus address publish`).
/// Its name is `<instance>-<protocol>-<host port>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PublishedPort {
    pub metadata: Metadata,
    pub spec: PublishedPortSpec,
    #[serde(default)]
    pub status: PublishedPortStatus,
}
object!(PublishedPort, "addresses", "published port", true);

// ---------------------------------------------------------------- audit

/// One mutating API call: who, what, when, and how it ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AuditRecord {
    pub id: String,
    pub time: DateTime<Utc>,
    /// The user name, or `-` when the caller could not be authenticated.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// HTTP status of the response; 0 while the call runs.
    pub status: u16,
    /// `ok`, or the error code; `in_progress` while the call runs (a
    /// record left so means the server stopped during the call).
    pub result: String,
    /// Where an unauthenticated call came from (peer address, or the local
    /// socket); unauthenticated failures are recorded once per source and
    /// window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For an aggregate record: how many calls it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

// ---------------------------------------------------------------- events

/// What happened to an object, as an [`Event`] names it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The scheduler bound the instance to a host.
    Scheduled,
    /// The workload is running.
    Started,
    /// The workload ended by itself: exit code, signal or OOM kill.
    Exited,
    /// The restart policy started the workload again (the restart count grew).
    Restarted,
    /// The workload could not be started, or its host lost it.
    Failed,
    /// Stopped on request.
    Stopped,
    /// The instance was removed.
    Deleted,
    /// A host running instances of the project stopped sending heartbeats.
    HostUnreachable,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Scheduled => "scheduled",
            EventType::Started => "started",
            EventType::Exited => "exited",
            EventType::Restarted => "restarted",
            EventType::Failed => "failed",
            EventType::Stopped => "stopped",
            EventType::Deleted => "deleted",
            EventType::HostUnreachable => "host_unreachable",
        }
    }
}

/// The object an event is about.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct EventObject {
    /// `instance` or `host`.
    pub kind: String,
    pub name: String,
}

/// Something the control plane observed happen in a project: an instance
/// scheduled, started, exited, restarted, failed, stopped or deleted, or
/// a host of its instances unreachable. Written by the server in the same
/// store write as the change it describes; kept for a bounded time.
/// `metadata.name` is `<unix-nanos>-<id>`, so name order is time order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Event {
    pub metadata: Metadata,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub object: EventObject,
    /// What happened, in words.
    pub message: String,
    /// The host involved, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<u32>,
}
object!(Event, "events", "event", true);

/// Who the caller is: returned by `GET /v1/whoami`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub system_admin: bool,
    /// May read `/metrics` and nothing else (a monitoring system's user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_reader: bool,
    pub token_id: String,
    pub roles: BTreeMap<String, Role>,
}

// ---------------------------------------------------------------- requests

/// `POST /v1/projects/{project}/instances/{name}/status`: an agent reports.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusUpdate {
    pub status: InstanceStatus,
    /// Set by the agent once all host resources of a deleting instance are gone.
    #[serde(default)]
    pub finalized: bool,
}

/// Validate a resource name: DNS-label style, 1–63 chars.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?} is invalid: use 1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// Body of every create call: a name, labels and the spec.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateRequest<S> {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub spec: S,
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateToken {
    /// Defaults to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// `POST /v1/hosts`: an agent registers (or re-registers) its host.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RegisterHost {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub spec: HostSpec,
    pub status: HostStatus,
}
