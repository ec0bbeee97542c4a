//! Instances: what a spec must satisfy against its image, the limits it is
//! given when it sets none and what a replace may change (`spec.rs`); what
//! each action does to the stored instance and how an agent's status report
//! is merged into it (`lifecycle.rs`). The errors of both are here.

mod lifecycle;
mod spec;

pub use lifecycle::*;
pub use spec::*;

use nimbus_api::SECRET_REDACTED;

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
    #[error("{0}")]
    Placement(String),
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
    #[error(
        "image {image:?} has {has}; {hosts}: import an image index that includes \
         your hosts' platform (`skopeo copy --all docker://IMAGE oci-archive:image.tar`) \
         or add a host of the image's architecture"
    )]
    NoPlatformForHosts {
        image: String,
        has: String,
        hosts: String,
    },
    #[error("image {0:?} has no default command; give one after `--`, e.g. `-- sh -c 'echo hi'`")]
    NoCommand(String),
    #[error("memory limit of {0} bytes is below the 4 MiB minimum; ask for at least 4MiB")]
    ContainerMemoryTooSmall(u64),
    #[error("disk of {0} bytes is below the {min} MiB minimum of a container's writable layer; ask for at least --disk {min}MiB", min = MIN_CONTAINER_DISK_BYTES >> 20)]
    ContainerDiskTooSmall(u64),
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
    #[error("resources.disk_bytes sizes a container's writable layer; a {0} sizes its disk with vm.disk_bytes (`--disk`)")]
    ContainerDiskForVm(&'static str),
    #[error("log_max_bytes of {} is above this cloud's cap of {}; ask for at most that (an administrator sets it with `nimbus up --log-max`)", nimbus_api::units::format_size(*asked), nimbus_api::units::format_size(*max))]
    LogCapTooLarge { asked: u64, max: u64 },
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

#[cfg(test)]
mod tests;
