//! Nimbus host agent and the per-instance shim.
//!
//! The agent makes the instances bound to its host real: it prepares each
//! instance's directory, starts a `nimbus shim` for it, relays its status to
//! the server through the public API, and cleans up on deletion. It never
//! writes the store directly, and it never holds a workload itself: the
//! shims do, so workloads survive the agent's crash or upgrade.

pub mod agent;
pub mod blobs;
pub mod container;
pub mod driver;
pub mod host;
pub mod io_endpoint;
pub mod join;
pub mod protect;
pub mod shim;
mod shim_entry;
pub mod vm;
pub mod volume;

pub use agent::{Agent, AgentConfig};
/// The underlay settings the CLI hands the agent (`--tunnel-address`).
pub use nimbus_net::vxlan;
pub use shim_entry::run_shim;
