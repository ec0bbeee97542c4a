//! Container driver: the per-instance shim and its client.
//!
//! # Design
//!
//! One `nimbus shim <instance_dir>` process supervises each running instance. The
//! agent writes `spec.json` ([`ShimSpec`]) and calls [`spawn_shim`], which runs the
//! shim and returns once the container runs or failed. The shim daemonizes (fork,
//! setsid, fork; stdio on /dev/null), so killing the agent leaves the shim and its
//! container running; a new agent finds it again through `shim.sock` and
//! `state.json`, and uses [`cleanup_instance_dir`] when the shim itself died.
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
//! Instance directory:
//! - `spec.json` — written by the agent.
//! - `state.json` — [`ShimState`], rewritten atomically at every change.
//! - `shim.sock` — control socket, see [`ShimRequest`] / [`ShimResponse`].
//! - `console.log`, `console.log.N` — timestamped stdout/stderr lines, rotated.
//! - `lower/<n>` — each image layer, idmapped into the instance's id range.
//! - `rootfs` — overlayfs of the lower mounts under `upper` (kept across restarts
//!   and stops) with `work`.
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
//! Files: `daemon.rs` turns `nimbus shim` into the background supervisor;
//! `shim.rs` runs the life cycle; `server.rs` / `exec_stream.rs` serve the socket;
//! `rootfs.rs` (overlay + idmapped layers), `bundle.rs` (OCI config), `exec.rs`
//! (joining a running container), `logs.rs`, `cgroups.rs`, `mounts.rs` and
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
//! Requirements on the caller: [`run_shim`] must run before the process starts any
//! thread or runtime (it checks). The container's root reaches its rootfs through
//! the instance directory's path from inside its user namespace, so every directory
//! on the way must be searchable by others (mode `o+x`); the shim checks and says so.

pub mod bundle;
pub(crate) mod cgroups;
mod cleanup;
pub mod control;
pub(crate) mod daemon;
pub mod driver;
pub mod exec;
mod exec_stream;
pub mod logs;
mod mounts;
mod pipes;
mod reaper;
pub mod rootfs;
pub(crate) mod server;
mod shim;
pub mod spec;
pub mod state;
pub(crate) mod trim;

pub use cleanup::{
    cleanup_instance_dir, shim_executable, spawn_shim, spawn_shim_async, SHIM_EXE_NAME,
};
pub use control::{
    encode_frame, frame, read_frame, read_frame_async, AsyncStateStream, ExecRequest, ShimClient,
    ShimRequest, ShimResponse, StateStream,
};
pub use daemon::run_shim;
pub use spec::{IdMap, Resources, RestartMode, RestartPolicy, ShimSpec, UserSpec};
pub use state::{read_state, Phase, ShimState};

/// Everything the container driver can fail with; each message names the thing and
/// the value involved.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),
    #[error("image rootfs could not be mounted: {0}")]
    Rootfs(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("container: {0}")]
    Container(String),
    #[error("exec: {0}")]
    Exec(String),
    #[error("shim protocol: {0}")]
    Protocol(String),
    #[error("shim refused: {0}")]
    Refused(String),
    #[error("spawning the shim failed: {0}")]
    Spawn(String),
    #[error("cleanup of {0}")]
    Cleanup(String),
}
