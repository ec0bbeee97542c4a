//! The agent's half: from an API instance and its image to a ready instance
//! directory (overlay, seed, `vm.json`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nimbus_api::{Image, Instance, InstanceKind};
use nimbus_image::ImageStore;

use super::probe::ProbeResult;
use super::seed::{Seed, SEED_FILE};
use super::spec::{Boot, RunAs, VmKind, VmShimSpec, VmVolume};
use crate::shim::ShimError;

/// What preparing a VM's or unikernel's directory can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("instance {name:?} is a container, not a VM; a container driver must start it")]
    NotAVm { name: String },
    #[error("cannot restrict {path}: {source}")]
    Restrict {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image:?} {what}: {source}")]
    Blob {
        image: String,
        what: &'static str,
        #[source]
        source: Box<nimbus_image::ImageError>,
    },
    #[error("image {image:?} is not a kernel image")]
    NotAKernelImage { image: String },
    #[error("image {image:?} is neither a disk nor a kernel image")]
    NeitherDiskNorKernel { image: String },
    #[error("cannot run qemu-img (install qemu-utils): {0}")]
    QemuImgMissing(#[source] std::io::Error),
    #[error("creating the VM disk {overlay} failed: {stderr}")]
    Overlay { overlay: PathBuf, stderr: String },
    /// The seed or `vm.json` could not be written, or `vm.json` is invalid.
    #[error(transparent)]
    Spec(#[from] ShimError),
}

/// The VM's root disk: a qcow2 overlay on the image's base file.
pub const OVERLAY_FILE: &str = "root.qcow2";

/// Free PCIe root ports a VM gets for disks hot-plugged later.
pub const HOTPLUG_PORTS: u32 = 4;

/// Memory when the spec gives none.
const DEFAULT_VM_MEMORY_MIB: u64 = 512;
const DEFAULT_UNIKERNEL_MEMORY_MIB: u64 = 64;

/// Write the VM's NoCloud seed (`dir/seed.img`): instance id, hostname,
/// SSH keys, user-data and, for a VM on a Nimbus network, the
/// `network-config` with its address. Blocking.
pub fn write_seed(
    dir: &Path,
    instance: &Instance,
    network_config: Option<String>,
) -> Result<PathBuf, PrepareError> {
    let vm = instance.spec.vm.clone().unwrap_or_default();
    let path = dir.join(SEED_FILE);
    Seed {
        instance_id: instance.metadata.id.clone(),
        hostname: instance.metadata.name.clone(),
        ssh_authorized_keys: vm.ssh_authorized_keys,
        user_data: vm.user_data,
        network_config,
    }
    .write(&path)?;
    Ok(path)
}

/// Writes everything the VM shim needs into `dir`. The overlay is created
/// once and kept across stop/start (the guest's disk persists); the seed is
/// rewritten at every start. QEMU runs as `run_as`. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn prepare_instance(
    dir: &Path,
    run_as: RunAs,
    instance: &Instance,
    image: &Image,
    kernel_image: Option<&Image>,
    images: &ImageStore,
    accel: &ProbeResult,
    volumes: Vec<VmVolume>,
    stop_grace_ms: u64,
    (log_max_bytes, log_files): (u64, u32),
) -> Result<VmShimSpec, PrepareError> {
    let kind = match instance.spec.kind {
        InstanceKind::Vm => VmKind::Vm,
        InstanceKind::Unikernel => VmKind::Unikernel,
        InstanceKind::Container => {
            return Err(PrepareError::NotAVm {
                name: instance.metadata.name.clone(),
            })
        }
    };
    // Root only (the agent, the shim, QEMU before it drops its ids): no
    // other instance's QEMU uid may even look up the disk and seed paths
    // in here, and the overlay qemu-img creates 0644 is never exposed
    // before it is restricted.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        PrepareError::Restrict {
            path: dir.to_path_buf(),
            source,
        }
    })?;
    let vm = instance.spec.vm.clone().unwrap_or_default();
    let memory_mib = instance
        .spec
        .resources
        .memory_bytes
        .map(|b| b.div_ceil(1 << 20))
        .unwrap_or(match kind {
            VmKind::Vm => DEFAULT_VM_MEMORY_MIB,
            VmKind::Unikernel => DEFAULT_UNIKERNEL_MEMORY_MIB,
        });
    let blob = |digest: &str, what: &'static str| {
        images
            .blob_path(digest)
            .map_err(|source| PrepareError::Blob {
                image: instance.spec.image.clone(),
                what,
                source: Box::new(source),
            })
    };
    let overlay_of = |disk: &nimbus_api::DiskImage| -> Result<PathBuf, PrepareError> {
        let base = blob(&disk.digest, "disk")?;
        let overlay = dir.join(OVERLAY_FILE);
        if !overlay.exists() {
            create_overlay(&base, &disk.format, &overlay, vm.disk_bytes)?;
        }
        Ok(overlay)
    };
    let boot = match (&image.status.disk, &image.status.kernel, kernel_image) {
        (Some(disk), None, Some(kimg)) => {
            let kernel =
                kimg.status
                    .kernel
                    .as_ref()
                    .ok_or_else(|| PrepareError::NotAKernelImage {
                        image: kimg.metadata.name.clone(),
                    })?;
            let kblob = |digest: &str, what: &'static str| {
                images
                    .blob_path(digest)
                    .map_err(|source| PrepareError::Blob {
                        image: kimg.metadata.name.clone(),
                        what,
                        source: Box::new(source),
                    })
            };
            Boot::Kernel {
                kernel: kblob(&kernel.digest, "kernel")?,
                initrd: match &kernel.initrd {
                    Some(d) => Some(kblob(d, "initrd")?),
                    None => None,
                },
                cmdline: instance.spec.args.join(" "),
                disk: Some(overlay_of(disk)?),
            }
        }
        (_, Some(kernel), _) => Boot::Kernel {
            kernel: blob(&kernel.digest, "kernel")?,
            initrd: match &kernel.initrd {
                Some(d) => Some(blob(d, "initrd")?),
                None => None,
            },
            cmdline: instance.spec.args.join(" "),
            disk: None,
        },
        (Some(disk), None, None) => Boot::Disk {
            overlay: overlay_of(disk)?,
        },
        (None, None, _) => {
            return Err(PrepareError::NeitherDiskNorKernel {
                image: instance.spec.image.clone(),
            })
        }
    };
    let seed = match kind {
        VmKind::Vm => Some(write_seed(dir, instance, None)?),
        VmKind::Unikernel => None,
    };
    let spec = VmShimSpec {
        instance_id: instance.metadata.id.clone(),
        name: instance.metadata.name.clone(),
        kind,
        accelerator: accel.accelerator,
        accelerator_reason: accel.reason.clone(),
        memory_mib,
        vcpus: vm.vcpus.unwrap_or(1),
        boot,
        seed,
        port_forwards: vm
            .port_forwards
            .iter()
            .map(|f| (f.host_port, f.guest_port))
            .collect(),
        tap_fd: None,
        qmp_fd: None,
        tap: None,
        run_as: Some(run_as),
        // A unikernel takes no volumes (the API refuses them) and stays
        // on microvm.
        hotplug_ports: match kind {
            VmKind::Vm => HOTPLUG_PORTS,
            VmKind::Unikernel => 0,
        },
        volumes,
        stop_grace_ms,
        log_max_bytes,
        log_files,
    };
    spec.validate()?;
    spec.save(dir)?;
    Ok(spec)
}

/// `qemu-img create -f qcow2 -F <fmt> -b <base> <overlay> [size]`.
fn create_overlay(
    base: &Path,
    format: &str,
    overlay: &Path,
    size_bytes: Option<u64>,
) -> Result<(), PrepareError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(overlay);
    if let Some(size) = size_bytes {
        cmd.arg(size.to_string());
    }
    let out = cmd.output().map_err(PrepareError::QemuImgMissing)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(overlay);
        return Err(PrepareError::Overlay {
            overlay: overlay.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // The guest's disk is the tenant's data: root only (QEMU opens it
    // before dropping to its unprivileged user).
    std::fs::set_permissions(overlay, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| PrepareError::Restrict {
            path: overlay.to_path_buf(),
            source,
        },
    )?;
    Ok(())
}
