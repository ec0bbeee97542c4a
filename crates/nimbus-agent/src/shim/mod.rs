//! What every shim shares, whatever it supervises: the background process,
//! the control socket, the state file and the console log.
//!
//! # Design
//!
//! One `nimbus shim <instance_dir>` process supervises each running instance. The
//! agent writes the driver's spec into the directory and runs the shim, which
//! returns once the workload runs or failed. The shim daemonizes (`daemon.rs`:
//! fork, setsid, fork; stdio on /dev/null), so killing the agent leaves the shim
//! and its workload running; a new agent finds it again through `shim.sock` and
//! `state.json`.
//!
//! The shim is single-threaded (a tokio current-thread runtime, no blocking pool),
//! because a driver may fork its workload from the shim itself, and `fork` is only
//! safe in a single-threaded process. A driver that needs a helper thread joins it
//! before anything forks again.
//!
//! Every shim answers the same control protocol on `shim.sock` ([`control`]:
//! one JSON request line per connection, JSON response lines, frames for
//! interactive streams). `server.rs` owns the socket: the accept loop, the request
//! timeout, the connection count a shim waits on before it exits, and the
//! requests every workload answers alike (`status`, `subscribe`, `stop`). What
//! differs (how a stop is carried out, exec, pause/resume, the console) the
//! driver provides through its `ShimHandler`; a request its driver does not
//! offer is refused by the server with a message saying what to use instead.
//!
//! Instance directory, the files every shim keeps:
//! - `state.json` — [`ShimState`], rewritten atomically at every change ([`state`]).
//! - `shim.sock` — control socket, see [`ShimRequest`] / [`ShimResponse`].
//! - `console.log`, `console.log.N` — timestamped output lines, rotated ([`logs`]).
//!
//! After its workload starts, a shim gives back the pages only start-up used
//! (`trim.rs`): one shim runs per instance, so its resident size is what every
//! instance costs the host.
//!
//! This module never names its users: the drivers import it, never the other
//! way, and `crate::shim_entry` picks the driver for a directory.

pub(crate) mod cgroup;
pub mod control;
pub(crate) mod daemon;
mod error;
pub mod logs;
pub(crate) mod server;
mod spawn;
pub mod state;
pub(crate) mod trim;

pub use control::{
    encode_frame, frame, read_frame, read_frame_async, AsyncStateStream, ExecRequest, ShimClient,
    ShimRequest, ShimResponse, StateStream,
};
pub use error::ShimError;
pub use spawn::{
    clean_up_after_shim, instance_id_from_dir, shim_executable, spawn_shim, spawn_shim_async,
    SHIM_EXE_NAME,
};
pub use state::{read_state, Phase, ShimState};
