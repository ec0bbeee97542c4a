//! VM and unikernel driver: QEMU supervised by the per-instance shim.
//!
//! # Design
//!
//! The agent prepares the instance directory ([`prepare`]): a qcow2 overlay on
//! the image's base disk (the base is shared and never written), a NoCloud
//! seed ([`seed`]), and `vm.json` ([`VmShimSpec`]). It then runs the same
//! `nimbus shim <dir>` as for containers; the shim sees `vm.json` and
//! supervises QEMU instead ([`shim`]). The background process, state file,
//! console log and control socket are the shared [`crate::shim`] plumbing:
//! `shim.sock` answers status, subscribe and stop as for every instance, plus
//! `pause`, `resume` and `console` (`handler.rs`), so the agent's reconcile
//! loop, re-adoption after an agent crash and status reporting are shared with
//! containers.
//!
//! QEMU is the shim's child, started with `-nodefaults -no-user-config
//! -display none`, the seccomp sandbox and `-run-with user=UID:GID`
//! ([`cmdline`]); it opens its files as root, then drops to the instance's
//! own ids ([`RunAs`]), the base of the host id range the agent allocated
//! to it, so no two QEMUs share a uid. Its
//! serial port is its stdio, a socket pair held by the shim, which tees the
//! output into the size-capped `console.log` and to one attached console
//! client. QMP ([`qmp`]), over a second socket pair, is held by the shim:
//! power-down,
//! pause (`stop`/`cont`), status and events. The accelerator is chosen once
//! per agent by [`probe`].
//!
//! Volumes are virtio disks ([`disks`]): named at start on QEMU's command
//! line, hot-plugged into a running VM over a second QMP monitor that
//! QEMU serves itself, `qmp-block.sock` ([`hotplug`]).
//!
//! Instance directory (besides every shim's `state.json`,
//! `shim.sock`, `console.log*`): `vm.json`, `root.qcow2` (overlay, kept
//! across stop/start), `seed.img`, and `qemu.pid`, `qmp-block.sock` and
//! `qga.sock` (the guest agent's channel, used to freeze the guest's
//! filesystems for snapshots of its volumes) while running.

pub mod cmdline;
mod console;
pub mod disks;
pub mod driver;
pub mod error;
mod exit;
mod handler;
pub mod hotplug;
pub mod prepare;
pub mod probe;
mod qemu;
pub mod qmp;
pub mod seed;
pub(crate) mod shim;
pub mod spec;

pub use disks::{holder as volume_disk_holder, DiskHolder};
pub use error::VmError;
pub use prepare::{prepare_instance, write_seed, OVERLAY_FILE};
pub use probe::{probe, ProbeResult};
pub(crate) use shim::{owns_instance_dir, prepare_supervisor};
pub use spec::{Accelerator, Boot, RunAs, VmKind, VmShimSpec, VmVolume, VM_SPEC_FILE};
