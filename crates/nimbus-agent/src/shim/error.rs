//! The one error type of the shims and their client.
//!
//! The agent talks to every shim through the same [`super::ShimClient`], so
//! what a shim, its plumbing and its client can fail with is one enum. A
//! driver's own steps (a container's root filesystem, workload, exec) fail
//! with [`ShimError::Driver`], which carries the step in the driver's words,
//! so this shared type names no driver; a driver with its own error enum
//! hands it over boxed as [`ShimError::Workload`].

/// Everything a shim can fail with; each message names the thing and the
/// value involved.
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
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// A step of one driver failed; `step` names it in that driver's words
    /// (e.g. "image rootfs could not be mounted").
    #[error("{step}: {message}")]
    Driver { step: &'static str, message: String },
    #[error("unmounting: {0}")]
    Unmount(String),
    #[error("shim protocol: {0}")]
    Protocol(String),
    /// The shim answered a request with an error; the text is the shim's.
    /// A handler that refuses a request returns this too: the server sends
    /// the text as is, so the client gets the same `Refused`.
    #[error("shim refused: {0}")]
    Refused(String),
    /// A driver's own typed error (e.g. a VM's QEMU or QMP failure), told in
    /// that driver's words; downcast it to the driver's type to tell the
    /// cases apart.
    #[error(transparent)]
    Workload(Box<dyn std::error::Error + Send + Sync>),
    #[error("spawning the shim failed: {0}")]
    Spawn(String),
    #[error("cleanup of {0}")]
    Cleanup(String),
}
