//! Container driver: the per-instance shim and its client.
//!
//! # Design
//!
//! One `nimbus shim <instance_dir>` process supervises each running instance. The
//! agent writes `spec.json` ([`ShimSpec`]) and calls [`spawn_shim`], which runs the
//! shim and returns once the container runs or failed. The shim's background
//! process, control socket, state file and console log are the shared
//! [`crate::shim`] plumbing; a new agent finds a running shim again through
//! `shim.sock` and `state.json`, and uses [`cleanup_instance_dir`] when the shim
//! itself died.
//!
//! The shim is single-threaded (a tokio current-thread runtime, no blocking pool),
//! because libcontainer forks the container init from the calling process and
//! `fork` is only safe in a single-threaded one. Blocking host work (mounts,
//! libcontainer create, exec set-up) runs inline; it takes milliseconds. The
//! one exception is libcontainer's delete after the workload exited: it runs
//! on a helper thread that is joined before the shim goes on, while nothing
//! forks (the init is gone, so exec is refused), so the exit reaches
//! subscribers without waiting for the kernel to remove the cgroups.
//!
//! Instance directory (besides every shim's `state.json`, `shim.sock` and
//! `console.log*`, see [`crate::shim`]; the console log holds the container's
//! stdout and stderr lines):
//! - `spec.json` — written by the agent.
//! - `lower/<n>` — each image layer, idmapped into the instance's id range.
//! - `rootfs` — overlayfs of the lower mounts under `upper` (kept across restarts
//!   and stops) with `work`; both in `disk/`, the loop mount of the sized ext4
//!   image `disk.img` (see [`disk`]), or in the instance dir for a spec
//!   without a size.
//! - `bundle/config.json` — the OCI spec; `runtime/` — libcontainer's state.
//!
//! Isolation: new pid, mount, UTS, IPC, network (loopback only, brought up by the
//! shim), cgroup and user namespaces, container root mapped to
//! `id_map.host_id`; the capability set of [`bundle::DEFAULT_CAPABILITIES`];
//! no-new-privileges; a seccomp filter that allows by default and fails
//! [`bundle::DENIED_SYSCALLS`] with EPERM; runc's masked and read-only paths; cgroup
//! `/nimbus/<instance_id>` with memory (swap = memory), CFS quota and pids limits and
//! a deny-by-default device list.
//!
//! Files: `shim.rs` runs the life cycle (and `prepare_supervisor` starts it in
//! the background process); `handler.rs` is what the container adds to the shared
//! control socket (`exec`, streamed by `exec_stream.rs`; `stop` as a signal to the
//! init); `rootfs.rs` (overlay + idmapped layers), `bundle.rs` (OCI config),
//! `exec.rs` (joining a running container), `cgroups.rs`, `mounts.rs` and
//! `cleanup.rs` (spawning and crash recovery for the agent).
//!
//! Life cycle: the container's exit is reaped by the shim (it is the shim's child);
//! the exit code, signal and OOM kills (from the memory cgroup) are recorded, then
//! the restart policy decides between `backoff` (100 ms doubling to 10 s, reset after
//! 10 s of running; a fresh libcontainer container on the same rootfs) and teardown.
//! `stop` (or SIGTERM to the shim) sends SIGTERM to the init — which, as pid 1 of its
//! namespace, only reacts if it installed a handler — then SIGKILL after the grace
//! period; phase `stopping` also covers the teardown after a final exit. Teardown deletes
//! the container and its cgroups, unmounts the rootfs and layer mounts, removes
//! `runtime/`, `bundle/`, `work/` and the socket, writes the final state, and only
//! then answers `stop`.
//!
//! Exec joins the container without libcontainer's tenant builder, which would not
//! enter the user namespace; see [`exec`].
//!
//! Requirements on the caller: `nimbus_agent::run_shim` must run before the process starts any
//! thread or runtime (it checks). The container's root reaches its rootfs through
//! the instance directory's path from inside its user namespace, so every directory
//! on the way must be searchable by others (mode `o+x`); the shim checks and says so.

pub mod bundle;
mod cleanup;
pub mod disk;
pub mod driver;
pub mod exec;
mod exec_stream;
mod handler;
mod live_volumes;
mod pipes;
mod reaper;
pub mod rootfs;
mod shim;
pub mod spec;

pub use cleanup::cleanup_instance_dir;

use crate::shim::ShimError;

/// The image's root filesystem could not be mounted (or unmounted).
pub(crate) fn rootfs_error(message: impl Into<String>) -> ShimError {
    ShimError::Driver {
        step: "image rootfs could not be mounted",
        message: message.into(),
    }
}

/// Creating, starting or deleting the container failed.
pub(crate) fn container_error(message: impl Into<String>) -> ShimError {
    ShimError::Driver {
        step: "container",
        message: message.into(),
    }
}

/// Joining the running container for an exec failed.
pub(crate) fn exec_error(message: impl Into<String>) -> ShimError {
    ShimError::Driver {
        step: "exec",
        message: message.into(),
    }
}
pub(crate) use shim::{owns_instance_dir, prepare_supervisor};
pub use spec::{IdMap, Resources, RestartMode, RestartPolicy, ShimSpec, UserSpec};
