//! The one error type of the shims and their client.
//!
//! The agent talks to every shim through the same [`super::ShimClient`], so
//! what a shim, its plumbing and its client can fail with is one enum; the
//! variants for one driver's set-up (root filesystem, workload creation,
//! exec) sit beside the shared ones rather than behind a second type the
//! agent would have to tell apart.

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
