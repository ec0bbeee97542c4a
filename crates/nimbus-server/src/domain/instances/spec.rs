//! Instance specs: validation against what they name, default limits,
//! secret values, the first stored form, and what a replace may change.

use std::collections::{BTreeMap, BTreeSet};

use nimbus_api::{
    Image, Instance, InstanceDefaults, InstanceKind, InstancePhase, InstanceSpec, InstanceStatus,
    Metadata, Protocol, Resources, RestartMode, SECRET_REDACTED,
};

use super::SpecError;
use crate::hostports::Claim;

/// Guest RAM when a VM asks for none.
pub const DEFAULT_VM_MEMORY_BYTES: u64 = 512 << 20;
/// Guest RAM when a unikernel asks for none.
pub const DEFAULT_UNIKERNEL_MEMORY_BYTES: u64 = 64 << 20;
/// Smallest memory limit of a container.
pub const MIN_CONTAINER_MEMORY_BYTES: u64 = 4 << 20;
/// Smallest writable layer of a container: ext4's own metadata takes a
/// few MiB, and a smaller layer could not even hold a package install.
pub const MIN_CONTAINER_DISK_BYTES: u64 = 16 << 20;
/// Smallest guest RAM of a VM or unikernel.
pub const MIN_VM_MEMORY_BYTES: u64 = 16 << 20;
/// Most virtual CPUs a VM may ask for.
pub const MAX_VCPUS: u32 = 64;
/// Largest user-data accepted (cloud-init's NoCloud seed is a small disk).
pub const MAX_USER_DATA_BYTES: usize = 256 << 10;
/// Lowest host port a VM may forward from.
pub const MIN_FORWARD_HOST_PORT: u16 = 1024;

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

/// An image with platforms runs only if some registered host has one of its
/// architectures (`host_architectures`, as hosts report them; none
/// registered yet: the instance waits for one, so this passes).
pub fn check_image_platform(
    image_name: &str,
    image: &nimbus_image::ImportedImage,
    host_architectures: &BTreeSet<String>,
) -> Result<(), SpecError> {
    if host_architectures.is_empty() || host_architectures.iter().any(|a| image.runs_on(a)) {
        return Ok(());
    }
    let names: Vec<String> = host_architectures
        .iter()
        .map(|a| format!("linux/{}", nimbus_image::oci_architecture(a)))
        .collect();
    let hosts = match names.as_slice() {
        [one] => format!("this host is {one}"),
        many => format!("the hosts are {}", many.join(", ")),
    };
    Err(SpecError::NoPlatformForHosts {
        image: image_name.to_string(),
        has: image.platform_names(),
        hosts,
    })
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
    spec.placement.validate().map_err(SpecError::Placement)?;
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
    if let Some(d) = spec.resources.disk_bytes {
        if d < MIN_CONTAINER_DISK_BYTES {
            return Err(SpecError::ContainerDiskTooSmall(d));
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
    if spec.resources.disk_bytes.is_some() {
        return Err(SpecError::ContainerDiskForVm(kind));
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

/// The log cap: the server's (`nimbus up --log-max`) when the spec sets
/// none; one above it is refused.
pub fn apply_log_cap(spec: &mut InstanceSpec, server_max_bytes: u64) -> Result<(), SpecError> {
    match spec.log_max_bytes {
        Some(asked) if asked > server_max_bytes => Err(SpecError::LogCapTooLarge {
            asked,
            max: server_max_bytes,
        }),
        Some(_) => Ok(()),
        None => {
            spec.log_max_bytes = Some(server_max_bytes);
            Ok(())
        }
    }
}

/// In a project with a disk quota, a container without a size gets the
/// agent's default one written down, so the quota counts what its host
/// will enforce.
pub fn size_for_disk_quota(spec: &mut InstanceSpec, quota: &nimbus_api::ProjectQuota) {
    if quota.disk_bytes.is_some() && spec.kind == InstanceKind::Container {
        spec.resources
            .disk_bytes
            .get_or_insert(nimbus_api::DEFAULT_CONTAINER_DISK_BYTES);
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
    } else if old_vm.disk_bytes != new_vm.disk_bytes
        || old.resources.disk_bytes != new.resources.disk_bytes
    {
        // A container's writable layer is made once, at its first start.
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
