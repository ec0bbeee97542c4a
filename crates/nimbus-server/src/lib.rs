//! Nimbus control plane: the REST API (Unix socket and TLS), authentication,
//! tenancy and audit, the scheduler and the controllers.
//!
//! Servers are the only writers of the store; several may share one (see
//! `cluster`), with the elected leader alone running the controllers. A
//! server never touches a host directly: agents make instances real and
//! report back through the API.
//! It must never show one project's resources to a caller without a role in
//! that project, nor an instance's secret environment values to anyone but
//! the agent of the instance's host, nor store those values unsealed.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connlimit;
pub mod console;
pub mod controllers;
pub mod datadir;
pub mod domain;
pub mod error;
pub mod events;
pub mod hostio;
pub mod hostports;
pub mod image_quota;
pub mod ipam;
pub mod metrics;
pub mod repo;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod signatures;
pub mod state;
pub mod tls;
pub mod usage;
pub mod vni;
pub mod vulnscan;

pub use config::{ServerConfig, StoreBackend, StoreBackendError};
pub use error::ServerError;
pub use state::AppState;
