//! Instances: what a spec must satisfy against its image, the limits it is
//! given when it sets none, what a replace may change, what each action
//! does to the spec, and how an agent's status report is merged into the
//! stored status.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use nimbus_api::{
    DesiredState, Image, Instance, InstanceDefaults, InstanceKind, InstancePhase, InstanceSpec,
    InstanceStatus, Metadata, Protocol, Resources, RestartMode, SECRET_REDACTED,
};

use crate::hostports::Claim;

/// Guest RAM when a VM asks for none.
pub const DEFAULT_VM_MEMORY_BYTES: u64 = 512 << 20;
/// Guest RAM when a unikernel asks for none.
pub const DEFAULT_UNIKERNEL_MEMORY_BYTES: u64 = 64 << 20;
/// Smallest memory limit of a container.
pub const MIN_CONTAINER_MEMORY_BYTES: u64 = 4 << 20;
/// Smallest guest RAM of a VM or unikernel.
pub const MIN_VM_MEMORY_BYTES: u64 = 16 << 20;
/// Most virtual CPUs a VM may ask for.
pub const MAX_VCPUS: u32 = 64;
/// Largest user-data accepted (cloud-init's NoCloud seed is a small disk).
pub const MAX_USER_DATA_BYTES: usize = 256 << 10;
/// Lowest host port a VM may forward from.
pub const MIN_FORWARD_HOST_PORT: u16 = 1024;

/// A request the API refuses as invalid (422): the message names the field,
/// the value and what to give instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Name(String),
    #[error("image {image:?} not found in project {project:?}; import it with `{import} --name {image}`")]
    ImageNotFound {
        image: String,
        project: String,
        import: &'static str,
    },
    #[error("a unikernel cannot join a network; drop --network")]
    UnikernelOnNetwork,
    #[error("a VM on a network is reached through it; drop --forward and publish ports with `nimbus address publish`")]
    ForwardsOnNetwork,
    #[error("vm settings (vcpus, disk, ssh keys, user-data) apply to kind vm or unikernel only")]
    VmSettingsForContainer,
    #[error("image {image:?} is a {format} image for virtual machines; run it with --kind vm{or_unikernel}")]
    VmImageForContainer {
        image: String,
        format: String,
        or_unikernel: &'static str,
    },
    #[error("image {0:?} has no default command; give one after `--`, e.g. `-- sh -c 'echo hi'`")]
    NoCommand(String),
    #[error("memory limit of {0} bytes is below the 4 MiB minimum; ask for at least 4MiB")]
    ContainerMemoryTooSmall(u64),
    #[error("cpu of 0 would never run; give at least 1 millicpu (e.g. 500 for half a CPU)")]
    ZeroCpu,
    #[error("pids limit {0} is below 1; give at least 1")]
    PidsTooSmall(i64),
    #[error("max_retries applies to the on_failure restart policy only")]
    MaxRetriesWithoutOnFailure,
    #[error("environment variable name {0:?} is invalid; it must be non-empty without '='")]
    EnvName(String),
    #[error("environment variable {0:?} is given both as --env and --secret-env; give it once")]
    EnvGivenTwice(String),
    #[error("the value of secret environment variable {0:?} contains a NUL byte, which an environment cannot carry")]
    SecretEnvNul(String),
    #[error("user {0:?} is invalid; give a numeric uid or uid:gid below 65536")]
    User(String),
    #[error("an instance can join one network for now; give a single --network")]
    TooManyNetworks,
    #[error("security group {group:?} not found in project {project:?}; create it with `nimbus secgroup create {group} --allow tcp:80`")]
    SecgroupNotFound { group: String, project: String },
    #[error("security groups filter network traffic, but the instance joins no network; add --network <name>")]
    SecgroupsWithoutNetwork,
    #[error("network {network:?} not found in project {project:?}; create it with `nimbus network create {network} --subnet 10.20.0.0/24`")]
    NetworkNotFound { network: String, project: String },
    #[error("image {0:?} is not a kernel image; a unikernel boots from one imported with `nimbus image import-kernel`")]
    UnikernelNeedsKernel(String),
    #[error("image {image:?} is a {format} image for containers; a vm boots from `nimbus image import-disk` or `import-kernel` images")]
    ContainerImageForVm { image: String, format: String },
    #[error("a unikernel gets no disk, cloud-init data or network; drop --disk, --ssh-key, --user-data and --forward")]
    UnikernelExtras,
    #[error("--kernel-image boots a disk image's VM directly; image {0:?} is not a disk image")]
    KernelImageWithoutDisk(String),
    #[error("image {0:?} is not a kernel image; import one with `nimbus image import-kernel`")]
    NotAKernelImage(String),
    #[error("kernel image {kernel:?} not found in project {project:?}; import it with `nimbus image import-kernel <vmlinux> --initrd <initrd> --name {kernel}`")]
    KernelImageNotFound { kernel: String, project: String },
    #[error("image {0:?} boots from its disk through firmware, so a kernel command line cannot be given; drop the arguments after `--` or boot a kernel with --kernel-image")]
    ArgsWithFirmwareBoot(String),
    #[error(
        "memory of {memory_bytes} bytes is below the 16 MiB a {kind} needs; ask for at least 16MiB"
    )]
    VmMemoryTooSmall {
        memory_bytes: u64,
        kind: &'static str,
    },
    #[error("restart policies apply to containers for now; a {0} runs until it powers off or is stopped; start it again with `nimbus instance start`")]
    RestartPolicyForVm(&'static str),
    #[error("--cpus and --pids limit containers; a {0} takes --vcpus")]
    ContainerLimitsForVm(&'static str),
    #[error("vcpus {0} is not between 1 and {max}", max = MAX_VCPUS)]
    Vcpus(u32),
    #[error("disk of {want} bytes is smaller than image {image:?} ({image_bytes} bytes); ask for at least its size")]
    DiskTooSmall {
        want: u64,
        image: String,
        image_bytes: u64,
    },
    #[error("image {0:?} is a kernel image without a disk; --disk applies to disk images")]
    DiskForKernelImage(String),
    #[error("user-data is {0} bytes, more than {max}; keep it smaller or fetch the rest from the guest", max = MAX_USER_DATA_BYTES)]
    UserDataTooLarge(usize),
    #[error(
        "user-data must start with `#cloud-config` or a `#!` script line, as cloud-init expects"
    )]
    UserDataFormat,
    #[error("{0:?} is not an SSH public key line; pass the .pub file, e.g. --ssh-key ~/.ssh/id_ed25519.pub")]
    SshKey(String),
    #[error("port forward {host_port}:{guest_port} is invalid; give distinct HOST:GUEST ports with HOST from 1024 up")]
    PortForward { host_port: u16, guest_port: u16 },
    #[error("--env, --secret-env, --workdir and --user apply to containers; give a {0} its settings through --user-data")]
    ContainerSettingsForVm(&'static str),
    #[error("secret environment variable {key:?} has the placeholder value {placeholder:?} but no stored value to keep; give its real value", placeholder = SECRET_REDACTED)]
    SecretPlaceholderWithoutValue { key: String },
    #[error(
        "the body names instance {body:?} but the path names {path:?}; instances cannot be renamed"
    )]
    Renamed { body: String, path: String },
    #[error(
        "the networks of instance {0:?} cannot change; create a new instance on the other network"
    )]
    NetworksChanged(String),
    #[error("the {what} of instance {name:?} cannot change; delete it and run a new one")]
    FixedField { what: &'static str, name: String },
    #[error("{action} works on virtual machines and unikernels; instance {name:?} is a container (use `nimbus instance exec` or stop it)")]
    NotAVm { action: &'static str, name: String },
    #[error("exec needs a command, e.g. `nimbus instance exec web -- ps`")]
    NoExecCommand,
}

/// A request that conflicts with the instance's current state (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("instance {0:?} is being deleted")]
    BeingDeleted(String),
    #[error("instance {0:?} was not being deleted; not finalizing")]
    NotBeingDeleted(String),
    #[error(
        "instance {name:?} is {phase}, not running; start it with `nimbus instance start {name}`"
    )]
    NotRunning { name: String, phase: &'static str },
    #[error("instance {name:?} is {phase}; only a {wanted} instance can be {action}d")]
    WrongPhase {
        name: String,
        phase: &'static str,
        wanted: &'static str,
        action: &'static str,
    },
}

/// What a spec names in the store, fetched by the handler before
/// validating: the image, the kernel image of `vm.kernel_image`, and which
/// of `secgroups` exist.
#[derive(Debug, Default, Clone, Copy)]
pub struct Named<'a> {
    pub image: Option<&'a Image>,
    pub kernel_image: Option<&'a Image>,
    pub secgroups: Option<&'a BTreeSet<String>>,
}

fn vm_kind_word(kind: InstanceKind) -> &'static str {
    if kind == InstanceKind::Vm {
        "vm"
    } else {
        "unikernel"
    }
}

/// The resource name of a new instance.
pub fn validate_instance_name(name: &str) -> Result<(), SpecError> {
    nimbus_api::validate_name("instance", name).map_err(SpecError::Name)
}

/// Check a spec against its image and sane bounds; returns the id of the
/// image it names. Rules are checked in a fixed order, so a spec with
/// several faults is always refused with the same message.
pub fn validate_spec(
    project: &str,
    spec: &InstanceSpec,
    named: Named<'_>,
) -> Result<String, SpecError> {
    let Some(image) = named.image else {
        let import = match spec.kind {
            InstanceKind::Container => "nimbus image import <file>",
            InstanceKind::Vm => "nimbus image import-disk <file>",
            InstanceKind::Unikernel => "nimbus image import-kernel <file>",
        };
        return Err(SpecError::ImageNotFound {
            image: spec.image.clone(),
            project: project.to_string(),
            import,
        });
    };
    if spec.kind == InstanceKind::Unikernel && !spec.networks.is_empty() {
        return Err(SpecError::UnikernelOnNetwork);
    }
    if spec.kind == InstanceKind::Vm
        && !spec.networks.is_empty()
        && spec
            .vm
            .as_ref()
            .is_some_and(|v| !v.port_forwards.is_empty())
    {
        return Err(SpecError::ForwardsOnNetwork);
    }
    if spec.kind != InstanceKind::Container {
        validate_vm_spec(project, spec, image, named.kernel_image)?;
        return Ok(image.metadata.id.clone());
    }
    validate_container_spec(project, spec, image, named.secgroups)?;
    Ok(image.metadata.id.clone())
}

fn validate_container_spec(
    project: &str,
    spec: &InstanceSpec,
    image: &Image,
    secgroups: Option<&BTreeSet<String>>,
) -> Result<(), SpecError> {
    if spec.vm.is_some() {
        return Err(SpecError::VmSettingsForContainer);
    }
    if image.status.disk.is_some() || image.status.kernel.is_some() {
        return Err(SpecError::VmImageForContainer {
            image: spec.image.clone(),
            format: image.status.format.clone(),
            or_unikernel: if image.status.kernel.is_some() {
                " or --kind unikernel"
            } else {
                ""
            },
        });
    }
    if spec.args.is_empty()
        && image.status.defaults.entrypoint.is_empty()
        && image.status.defaults.cmd.is_empty()
    {
        return Err(SpecError::NoCommand(spec.image.clone()));
    }
    if let Some(m) = spec.resources.memory_bytes {
        if m < MIN_CONTAINER_MEMORY_BYTES {
            return Err(SpecError::ContainerMemoryTooSmall(m));
        }
    }
    if spec.resources.cpu_millis == Some(0) {
        return Err(SpecError::ZeroCpu);
    }
    if let Some(p) = spec.resources.pids_max {
        if p < 1 {
            return Err(SpecError::PidsTooSmall(p));
        }
    }
    if spec.restart_policy.max_retries.is_some()
        && spec.restart_policy.mode != RestartMode::OnFailure
    {
        return Err(SpecError::MaxRetriesWithoutOnFailure);
    }
    for key in spec.env.keys().chain(spec.secret_env.keys()) {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(SpecError::EnvName(key.clone()));
        }
    }
    if let Some(key) = spec.secret_env.keys().find(|k| spec.env.contains_key(*k)) {
        return Err(SpecError::EnvGivenTwice(key.clone()));
    }
    if let Some((key, _)) = spec.secret_env.iter().find(|(_, v)| v.contains('\0')) {
        return Err(SpecError::SecretEnvNul(key.clone()));
    }
    if let Some(u) = &spec.user {
        let ok = u
            .split(':')
            .all(|p| !p.is_empty() && p.parse::<u32>().map(|n| n < 65536).unwrap_or(false))
            && u.split(':').count() <= 2;
        if !ok {
            return Err(SpecError::User(u.clone()));
        }
    }
    if spec.networks.len() > 1 {
        return Err(SpecError::TooManyNetworks);
    }
    for g in &spec.secgroups {
        if !secgroups.is_some_and(|found| found.contains(g)) {
            return Err(SpecError::SecgroupNotFound {
                group: g.clone(),
                project: project.to_string(),
            });
        }
    }
    if !spec.secgroups.is_empty() && spec.networks.is_empty() {
        return Err(SpecError::SecgroupsWithoutNetwork);
    }
    Ok(())
}

fn validate_vm_spec(
    project: &str,
    spec: &InstanceSpec,
    image: &Image,
    kernel_image: Option<&Image>,
) -> Result<(), SpecError> {
    let vm = spec.vm.clone().unwrap_or_default();
    let kind = vm_kind_word(spec.kind);
    match (spec.kind, &image.status.disk, &image.status.kernel) {
        (InstanceKind::Unikernel, _, None) => {
            return Err(SpecError::UnikernelNeedsKernel(spec.image.clone()))
        }
        (InstanceKind::Vm, None, None) => {
            return Err(SpecError::ContainerImageForVm {
                image: spec.image.clone(),
                format: image.status.format.clone(),
            })
        }
        _ => {}
    }
    if spec.kind == InstanceKind::Unikernel
        && (vm.disk_bytes.is_some()
            || !vm.ssh_authorized_keys.is_empty()
            || vm.user_data.is_some()
            || !vm.port_forwards.is_empty())
    {
        return Err(SpecError::UnikernelExtras);
    }
    if let Some(k) = &vm.kernel_image {
        if spec.kind != InstanceKind::Vm || image.status.disk.is_none() {
            return Err(SpecError::KernelImageWithoutDisk(spec.image.clone()));
        }
        match kernel_image {
            Some(kimg) if kimg.status.kernel.is_some() => {}
            Some(_) => return Err(SpecError::NotAKernelImage(k.clone())),
            None => {
                return Err(SpecError::KernelImageNotFound {
                    kernel: k.clone(),
                    project: project.to_string(),
                })
            }
        }
    } else if image.status.disk.is_some() && !spec.args.is_empty() {
        return Err(SpecError::ArgsWithFirmwareBoot(spec.image.clone()));
    }
    if let Some(m) = spec.resources.memory_bytes {
        if m < MIN_VM_MEMORY_BYTES {
            return Err(SpecError::VmMemoryTooSmall {
                memory_bytes: m,
                kind,
            });
        }
    }
    if spec.restart_policy.mode != RestartMode::Never {
        return Err(SpecError::RestartPolicyForVm(kind));
    }
    if spec.resources.pids_max.is_some() || spec.resources.cpu_millis.is_some() {
        return Err(SpecError::ContainerLimitsForVm(kind));
    }
    if let Some(v) = vm.vcpus {
        if !(1..=MAX_VCPUS).contains(&v) {
            return Err(SpecError::Vcpus(v));
        }
    }
    if let (Some(want), Some(disk)) = (vm.disk_bytes, &image.status.disk) {
        if want < disk.virtual_size_bytes {
            return Err(SpecError::DiskTooSmall {
                want,
                image: spec.image.clone(),
                image_bytes: disk.virtual_size_bytes,
            });
        }
    }
    if vm.disk_bytes.is_some() && image.status.disk.is_none() {
        return Err(SpecError::DiskForKernelImage(spec.image.clone()));
    }
    if let Some(ud) = &vm.user_data {
        if ud.len() > MAX_USER_DATA_BYTES {
            return Err(SpecError::UserDataTooLarge(ud.len()));
        }
        if !(ud.starts_with("#cloud-config") || ud.starts_with("#!")) {
            return Err(SpecError::UserDataFormat);
        }
    }
    for key in &vm.ssh_authorized_keys {
        let kind_ok = key.split_whitespace().next().is_some_and(|t| {
            t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-")
        });
        if !kind_ok || key.contains('\n') || key.split_whitespace().count() < 2 {
            return Err(SpecError::SshKey(key.chars().take(40).collect()));
        }
    }
    let mut seen = BTreeSet::new();
    for f in &vm.port_forwards {
        if f.host_port < MIN_FORWARD_HOST_PORT || f.guest_port == 0 || !seen.insert(f.host_port) {
            return Err(SpecError::PortForward {
                host_port: f.host_port,
                guest_port: f.guest_port,
            });
        }
    }
    if !spec.env.is_empty()
        || !spec.secret_env.is_empty()
        || spec.working_dir.is_some()
        || spec.user.is_some()
    {
        return Err(SpecError::ContainerSettingsForVm(kind));
    }
    Ok(())
}

/// Record the limits the instance will really run with, so `instance get`
/// shows them and the scheduler counts them: a container without its own
/// limits gets the project's defaults, then the built-in ones (one tenant's
/// fork bomb or memory hog must not starve the host). A VM's or unikernel's
/// memory is its guest RAM, with a default of its own; their CPU is
/// `--vcpus` and QEMU's process count is capped by the agent, so those two
/// limits stay unset for them.
pub fn apply_default_limits(spec: &mut InstanceSpec, project_defaults: &Resources) {
    match spec.kind {
        InstanceKind::Container => {
            spec.resources = InstanceDefaults::effective(&spec.resources, project_defaults);
        }
        InstanceKind::Vm => {
            spec.resources
                .memory_bytes
                .get_or_insert(DEFAULT_VM_MEMORY_BYTES);
        }
        InstanceKind::Unikernel => {
            spec.resources
                .memory_bytes
                .get_or_insert(DEFAULT_UNIKERNEL_MEMORY_BYTES);
        }
    }
}

/// What becomes of one secret environment value given in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretValue {
    /// The placeholder was sent back: keep the stored (sealed) value.
    Keep(String),
    /// A new plain value, to be sealed before it is stored.
    Seal(String),
}

/// Decide, for each given secret value, whether the stored one is kept or
/// the given one sealed. `current` is what the store holds (on replace).
pub fn secret_env_changes(
    given: BTreeMap<String, String>,
    current: Option<&BTreeMap<String, String>>,
) -> Result<Vec<(String, SecretValue)>, SpecError> {
    let mut out = Vec::with_capacity(given.len());
    for (key, value) in given {
        let change = if value == SECRET_REDACTED {
            match current.and_then(|c| c.get(&key)) {
                Some(old) if crate::secrets::is_sealed(old) => SecretValue::Keep(old.clone()),
                _ => return Err(SpecError::SecretPlaceholderWithoutValue { key }),
            }
        } else {
            SecretValue::Seal(value)
        };
        out.push((key, change));
    }
    Ok(out)
}

/// A new instance as first stored: pending, waiting for the scheduler,
/// at restart generation 1 or more.
pub fn pending_instance(metadata: Metadata, mut spec: InstanceSpec, image_id: String) -> Instance {
    spec.restart_generation = spec.restart_generation.max(1);
    Instance {
        metadata,
        spec,
        status: InstanceStatus {
            phase: InstancePhase::Pending,
            reason: Some("waiting for the scheduler to choose a host".into()),
            image_id: Some(image_id),
            ..Default::default()
        },
    }
}

/// The host ports a spec claims: a VM's forwards bind host ports on
/// 127.0.0.1, claimed like published ports, under the same policy.
pub fn host_port_claims(spec: &InstanceSpec) -> Vec<Claim> {
    spec.vm
        .as_ref()
        .map(|vm| {
            vm.port_forwards
                .iter()
                .map(|f| Claim {
                    protocol: Protocol::Tcp,
                    port: f.host_port,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A replace body must name the instance of its path.
pub fn check_same_name(path_name: &str, body_name: &str) -> Result<(), SpecError> {
    if body_name != path_name {
        return Err(SpecError::Renamed {
            body: body_name.to_string(),
            path: path_name.to_string(),
        });
    }
    Ok(())
}

/// What an instance was made from stays across a replace: its networks,
/// its kind, and for VMs the image, boot kernel, disk size and forwards.
pub fn check_replace(name: &str, old: &InstanceSpec, new: &InstanceSpec) -> Result<(), SpecError> {
    if new.networks != old.networks {
        return Err(SpecError::NetworksChanged(name.to_string()));
    }
    let old_vm = old.vm.clone().unwrap_or_default();
    let new_vm = new.vm.clone().unwrap_or_default();
    let fixed = if old.kind != new.kind {
        Some("kind")
    } else if old.kind != InstanceKind::Container && old.image != new.image {
        Some("image")
    } else if old_vm.kernel_image != new_vm.kernel_image {
        Some("kernel image")
    } else if old_vm.disk_bytes != new_vm.disk_bytes {
        Some("disk size")
    } else if old_vm.port_forwards != new_vm.port_forwards {
        Some("port forwards")
    } else {
        None
    };
    match fixed {
        Some(what) => Err(SpecError::FixedField {
            what,
            name: name.to_string(),
        }),
        None => Ok(()),
    }
}

/// A spec change (start, stop, restart, replace) is refused once deletion
/// was requested.
pub fn check_not_deleting(instance: &Instance) -> Result<(), StateError> {
    if instance.metadata.deletion_requested_at.is_some() {
        return Err(StateError::BeingDeleted(instance.metadata.name.clone()));
    }
    Ok(())
}

/// `start` on an instance that wants to run and has not ended changes
/// nothing.
pub fn already_running(instance: &Instance) -> bool {
    instance.spec.desired_state == DesiredState::Running && !instance.status.phase.is_terminal()
}

/// `start` and `restart`: run, and move the generation on so the agent
/// starts the workload again.
pub fn request_restart(spec: &mut InstanceSpec) {
    spec.desired_state = DesiredState::Running;
    spec.restart_generation += 1;
}

/// `stop`.
pub fn request_stop(spec: &mut InstanceSpec) {
    spec.desired_state = DesiredState::Stopped;
}

/// Mark an instance bound to a host for deletion; its agent cleans up and
/// reports `finalized`. `force` records a stop grace of 0, so the agent
/// kills the workload at once.
pub fn request_deletion(instance: &mut Instance, force: bool, now: DateTime<Utc>) {
    if instance.metadata.deletion_requested_at.is_none() {
        instance.metadata.deletion_requested_at = Some(now);
    }
    if force {
        instance.spec.stop_grace_ms = Some(0);
    }
    instance.status.phase = InstancePhase::Deleting;
    instance.status.reason = Some("deletion requested; the host is cleaning up".into());
}

/// `finalized` is accepted only for an instance being deleted.
pub fn check_finalize(instance: &Instance) -> Result<(), StateError> {
    if instance.metadata.deletion_requested_at.is_none() {
        return Err(StateError::NotBeingDeleted(instance.metadata.name.clone()));
    }
    Ok(())
}

/// Merge the status an agent reports into the stored instance.
///
/// The agent owns what it observes (phase, pids, exit, restarts, generation
/// acted on, host uid, accelerator, ...); the server keeps what it decided:
/// the host the instance is bound to, the image id resolved at creation and
/// the addresses allocated on its networks. An instance being deleted stays
/// `deleting` whatever the agent saw. With `auto_remove`, a terminal phase
/// for the current generation requests deletion in the same write; the
/// ending phase itself is kept in that revision so a watcher sees how it
/// ended. A terminal phase reported for an older generation (the workload
/// before a restart) does not remove the instance.
pub fn merge_reported_status(
    instance: &mut Instance,
    reported: InstanceStatus,
    now: DateTime<Utc>,
) {
    let deleting = instance.metadata.deletion_requested_at.is_some();
    let host = instance.status.host.take();
    let image_id = instance.status.image_id.take();
    let addresses = std::mem::take(&mut instance.status.addresses);
    instance.status = reported;
    instance.status.host = host;
    instance.status.image_id = image_id;
    instance.status.addresses = addresses;
    if deleting {
        instance.status.phase = InstancePhase::Deleting;
    } else if instance.spec.auto_remove
        && instance.status.phase.is_terminal()
        && instance.status.observed_generation >= instance.spec.restart_generation
    {
        instance.metadata.deletion_requested_at = Some(now);
    }
}

/// Pause and resume apply to VMs and unikernels; console too.
pub fn check_is_vm(instance: &Instance, action: &'static str) -> Result<(), SpecError> {
    if instance.spec.kind == InstanceKind::Container {
        return Err(SpecError::NotAVm {
            action,
            name: instance.metadata.name.clone(),
        });
    }
    Ok(())
}

/// Pause needs a running instance, resume a paused one.
pub fn check_pause_phase(instance: &Instance, pause: bool) -> Result<(), StateError> {
    let (action, wanted) = if pause {
        ("pause", InstancePhase::Running)
    } else {
        ("resume", InstancePhase::Paused)
    };
    if instance.status.phase != wanted {
        return Err(StateError::WrongPhase {
            name: instance.metadata.name.clone(),
            phase: instance.status.phase.as_str(),
            wanted: wanted.as_str(),
            action,
        });
    }
    Ok(())
}

/// Exec needs a running workload.
pub fn check_exec_phase(instance: &Instance) -> Result<(), StateError> {
    if instance.status.phase != InstancePhase::Running {
        return Err(not_running(instance));
    }
    Ok(())
}

/// A console needs a running or paused VM.
pub fn check_console_phase(instance: &Instance) -> Result<(), StateError> {
    if !matches!(
        instance.status.phase,
        InstancePhase::Running | InstancePhase::Paused
    ) {
        return Err(not_running(instance));
    }
    Ok(())
}

fn not_running(instance: &Instance) -> StateError {
    StateError::NotRunning {
        name: instance.metadata.name.clone(),
        phase: instance.status.phase.as_str(),
    }
}

/// Exec needs a command.
pub fn check_exec_command(args: &[String]) -> Result<(), SpecError> {
    if args.is_empty() {
        return Err(SpecError::NoExecCommand);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
