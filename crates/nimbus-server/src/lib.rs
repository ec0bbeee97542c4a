//! Nimbus control plane: the REST API (Unix socket and TLS), authentication,
//! tenancy and audit, the scheduler and the controllers.
//!
//! The server is the only writer of the store. It never touches a host
//! directly: agents make instances real and report back through the API.
//! It must never show one project's resources to a caller without a role in
//! that project.

pub mod api;
pub mod auth;
pub mod config;
pub mod controllers;
pub mod error;
pub mod hostio;
pub mod hostports;
pub mod ipam;
pub mod repo;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod tls;

pub use config::ServerConfig;
pub use error::ServerError;
pub use state::AppState;
