//! `vm.json`: what the agent asks the VM shim to run. Its presence in an
//! instance directory is what makes `nimbus shim` supervise QEMU instead of a
//! container.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shim::ShimError;

/// File name of the VM spec inside an instance directory.
pub const VM_SPEC_FILE: &str = "vm.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmKind {
    /// A virtual machine: ACPI power-down on stop, reboots stay inside QEMU.
    Vm,
    /// A kernel-only guest on `microvm` with the debug-exit port for its status.
    Unikernel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Boot {
    /// Firmware boots the root disk (a qcow2 overlay of the image's base).
    Disk { overlay: PathBuf },
    /// QEMU loads the kernel (PVH or multiboot ELF) directly; with `disk`,
    /// that overlay is the guest's first disk (its root).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
        #[serde(default)]
        disk: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShimSpec {
    pub instance_id: String,
    pub name: String,
    pub kind: VmKind,
    pub accelerator: Accelerator,
    /// Why this accelerator (from the host's probe), reported in the status.
    pub accelerator_reason: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub boot: Boot,
    /// The NoCloud seed image (label `cidata`), attached read-only.
    pub seed: Option<PathBuf>,
    /// `(host_port, guest_port)` over QEMU's user network on 127.0.0.1.
    pub port_forwards: Vec<(u16, u16)>,
    /// A tap device's descriptor passed to QEMU (`-netdev tap,fd=N`); set
    /// by the shim after it opened `tap`.
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// QEMU's end of the shim's QMP socket pair (`-chardev socket,fd=N`);
    /// set by the shim. Without one QEMU listens on `qmp.sock` instead (the
    /// boot benchmark's bare QEMU).
    #[serde(default)]
    pub qmp_fd: Option<i32>,
    /// The VM's port on a Nimbus network: a persistent tap in a router
    /// namespace, opened by the shim just before QEMU starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<TapRef>,
    /// Who QEMU runs as after opening its files.
    pub run_as: Option<RunAs>,
    /// Volumes given to the guest as virtio disks: those named at start,
    /// then kept up to date as disks are hot-plugged and unplugged
    /// (`super::hotplug`), so an agent restart knows what is attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VmVolume>,
    /// Free PCIe root ports for disks hot-plugged later. Non-zero makes a
    /// directly booted VM a PC (`q35`: microvm has no hot-plug) and opens
    /// the block monitor (`VmPaths::block_qmp`).
    #[serde(default)]
    pub hotplug_ports: u32,
    pub stop_grace_ms: u64,
    pub log_max_bytes: u64,
    pub log_files: u32,
}

/// A volume as a virtio disk of the guest: block node and device id
/// `vol-<volume id>` (see [`super::disks`]), serial the volume's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmVolume {
    pub volume_id: String,
    /// The volume's name: the disk's serial (`/dev/disk/by-id/virtio-<name>`).
    pub name: String,
    /// The backend's `blockdev-add` options (`AttachInfo::blockdev`).
    pub blockdev: serde_json::Value,
    /// The backend's local file, when it has one: opened by the agent and
    /// passed to QEMU for a hot-plug (QEMU then runs unprivileged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
}

/// The unprivileged identity QEMU drops to (`-run-with user=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunAs {
    /// This instance's own uid and gid, the base of the host id range the
    /// agent allocated to it: no other instance (VM or container) owns
    /// them, so an escaped QEMU reaches no other tenant's files or
    /// processes.
    Ids { uid: u32, gid: u32 },
    /// A named user; what `vm.json` files of older agents recorded (the
    /// shared `nimbus-vm`), kept so running VMs are still understood.
    User(String),
}

impl RunAs {
    /// The value of QEMU's `-run-with user=` (QEMU 10 takes `uid:gid`).
    pub fn qemu_user(&self) -> String {
        match self {
            RunAs::Ids { uid, gid } => format!("{uid}:{gid}"),
            RunAs::User(name) => name.clone(),
        }
    }

    /// The host uid, when it is one of Nimbus's id ranges.
    pub fn allocated_uid(&self) -> Option<u32> {
        match self {
            RunAs::Ids { uid, .. } => Some(*uid),
            RunAs::User(_) => None,
        }
    }
}

/// Where a VM's tap is, and the MAC its NIC must use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRef {
    pub netns: PathBuf,
    pub name: String,
    pub mac: String,
}

impl VmShimSpec {
    pub fn load(instance_dir: &Path) -> Result<VmShimSpec, ShimError> {
        let path = instance_dir.join(VM_SPEC_FILE);
        let text = std::fs::read(&path).map_err(|source| ShimError::Io {
            what: format!("read VM spec {}", path.display()),
            source,
        })?;
        let spec: VmShimSpec = serde_json::from_slice(&text).map_err(|e| {
            ShimError::InvalidSpec(format!("{} is not a valid VM spec: {e}", path.display()))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn save(&self, instance_dir: &Path) -> Result<(), ShimError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| ShimError::InvalidSpec(format!("cannot encode VM spec: {e}")))?;
        crate::shim::state::write_atomically(&instance_dir.join(VM_SPEC_FILE), &text)
    }

    pub fn validate(&self) -> Result<(), ShimError> {
        let bad = |m: String| Err(ShimError::InvalidSpec(m));
        if self.memory_mib < 16 {
            return bad(format!("memory {} MiB is below 16 MiB", self.memory_mib));
        }
        if !(1..=64).contains(&self.vcpus) {
            return bad(format!("{} vcpus is not between 1 and 64", self.vcpus));
        }
        if self.kind == VmKind::Unikernel && !matches!(self.boot, Boot::Kernel { .. }) {
            return bad("a unikernel boots from a kernel, not a disk".into());
        }
        if let Some(RunAs::Ids { uid: 0, .. } | RunAs::Ids { gid: 0, .. }) = self.run_as {
            return bad("QEMU must not run as uid or gid 0".into());
        }
        if let Boot::Kernel { cmdline, .. } = &self.boot {
            if cmdline.contains('\n') || cmdline.len() > 4096 {
                return bad("kernel command line has a newline or exceeds 4096 bytes".into());
            }
        }
        Ok(())
    }
}

/// Per-instance files the VM shim and QEMU use.
pub struct VmPaths {
    pub qmp_socket: PathBuf,
    /// A second QMP monitor for block work (hot-plug, snapshots of
    /// attached volumes), served by QEMU itself; the shim keeps its own
    /// monitor for the VM's life cycle.
    pub block_qmp: PathBuf,
    pub pidfile: PathBuf,
    /// The guest agent's channel (a virtio-serial port in Linux VMs),
    /// served by QEMU: the host end of `org.qemu.guest_agent.0`.
    pub guest_agent: PathBuf,
}

/// The guest agent socket's name in a VM's instance directory.
pub const GUEST_AGENT_SOCKET: &str = "qga.sock";

impl VmPaths {
    pub fn new(dir: &Path) -> VmPaths {
        VmPaths {
            qmp_socket: dir.join("qmp.sock"),
            block_qmp: dir.join("qmp-block.sock"),
            pidfile: dir.join("qemu.pid"),
            guest_agent: dir.join(GUEST_AGENT_SOCKET),
        }
    }
}
