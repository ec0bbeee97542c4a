//! Server configuration, with embedded defaults for a single machine.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the server keeps its state (`--store`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreBackend {
    /// `sqlite`: the data directory's `store.db`, the one-machine default.
    #[default]
    Sqlite,
    /// `etcd://host:port,host:port[/prefix]`: an etcd v3 cluster, for several servers.
    Etcd(nimbus_store::EtcdConfig),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreBackendError {
    #[error("unknown store {0:?}; give sqlite (the data directory's store.db) or etcd://host:port[,host:port...]")]
    Unknown(String),
    #[error(transparent)]
    Etcd(#[from] nimbus_store::EtcdUrlError),
}

impl std::str::FromStr for StoreBackend {
    type Err = StoreBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sqlite" {
            Ok(StoreBackend::Sqlite)
        } else if s.starts_with("etcd://") {
            Ok(StoreBackend::Etcd(nimbus_store::EtcdConfig::from_url(s)?))
        } else {
            Err(StoreBackendError::Unknown(s.to_string()))
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Everything the server keeps: store, images, TLS material, tokens.
    pub data_dir: PathBuf,
    /// Where the cluster state lives: SQLite in the data directory by default.
    pub store: StoreBackend,
    /// The local API socket.
    pub socket_path: PathBuf,
    /// Group whose members may connect to the socket (mode 0660); when no
    /// group of that name exists the socket is root's alone (0600).
    pub socket_group: String,
    /// TCP address for HTTPS; `None` serves the Unix socket only.
    pub listen: Option<SocketAddr>,
    /// Other ports this process serves (e.g. the S3 endpoint): no
    /// published port may take them either.
    pub other_listeners: Vec<SocketAddr>,
    /// Certificate and key to serve; generated self-signed when absent.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest JSON request body accepted.
    pub max_body_bytes: usize,
    /// Largest image archive accepted on import.
    pub max_image_bytes: u64,
    /// Largest total unpacked size of an image.
    pub max_unpacked_bytes: u64,
    /// A host that has not sent a heartbeat for this long is unreachable.
    pub host_timeout_ms: u64,
    /// Long-lived streams (watch, logs --follow, exec, console) one token
    /// may hold open at once; more are refused with 429.
    pub max_streams_per_token: usize,
    /// The same across all tokens of one user.
    pub max_streams_per_user: usize,
    /// Audit records kept; the oldest are pruned past this.
    pub audit_max_records: usize,
    /// Audit records older than this are pruned (checked from start-up on).
    pub audit_max_age: std::time::Duration,
    /// Send a copy of each audit record to this syslog socket (`/dev/log`).
    pub audit_syslog: Option<PathBuf>,
    /// Events older than this are pruned (checked from start-up on).
    pub events_max_age: std::time::Duration,
    /// Events kept across all projects; the oldest are pruned past this.
    pub events_max_records: usize,
    /// Usage records closed longer ago than this are pruned.
    pub usage_max_age: std::time::Duration,
    /// Concurrent connections on the TLS listener; `None` derives it from
    /// the open-file limit, leaving room for the local socket and the store.
    pub max_connections: Option<usize>,
    /// Count requests, store writes and placements and serve `/metrics`
    /// (`--metrics=false` turns it all off, e.g. to measure its cost).
    pub metrics: bool,
    /// Also serve `/metrics` without a token on this plain-HTTP address.
    pub metrics_listen: Option<SocketAddr>,
    /// This server's name among the servers sharing the store
    /// (`--server-name`); each must have its own.
    pub server_name: String,
    /// How long the leader's etcd lease outlives its last renewal: how long
    /// the servers wait for a dead leader before one of them takes over.
    pub leader_lease: std::time::Duration,
    /// The most an instance's output log may take on its host's disk
    /// (`nimbus up --log-max`): given to instances that set none, the
    /// ceiling for those that do, and counted in disk quotas.
    pub log_max_bytes: u64,
}

/// An instance's log cap when `nimbus up --log-max` is not given.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 << 20;

impl ServerConfig {
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        ServerConfig {
            socket_path: data_dir.join("api.sock"),
            data_dir,
            store: StoreBackend::Sqlite,
            socket_group: crate::server::SOCKET_GROUP.to_string(),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7443))),
            other_listeners: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 1 << 20,
            max_image_bytes: 4 << 30,
            max_unpacked_bytes: 8 << 30,
            host_timeout_ms: 30_000,
            max_streams_per_token: 32,
            max_streams_per_user: 64,
            audit_max_records: 100_000,
            audit_max_age: std::time::Duration::from_secs(90 * 86_400),
            audit_syslog: None,
            events_max_age: std::time::Duration::from_secs(7 * 86_400),
            events_max_records: 100_000,
            usage_max_age: std::time::Duration::from_secs(400 * 86_400),
            max_connections: None,
            metrics: true,
            metrics_listen: None,
            server_name: "local".to_string(),
            leader_lease: std::time::Duration::from_secs(5),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store.db")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
    /// The key that seals instances' secret environment values (0600).
    pub fn secrets_key_path(&self) -> PathBuf {
        self.data_dir.join("secrets.key")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

#[cfg(test)]
mod store_backend_tests {
    use super::*;

    #[test]
    fn store_flag_values_parse() {
        assert_eq!("sqlite".parse(), Ok(StoreBackend::Sqlite));
        let Ok(StoreBackend::Etcd(etcd)) = "etcd://127.0.0.1:2379,127.0.0.1:22379".parse() else {
            panic!("an etcd URL parses as etcd");
        };
        assert_eq!(etcd.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert_eq!(etcd.prefix, nimbus_store::DEFAULT_ETCD_PREFIX);
        let err = "postgres://db".parse::<StoreBackend>().unwrap_err();
        assert!(err.to_string().contains("\"postgres://db\""), "{err}");
        assert!("etcd://nohost".parse::<StoreBackend>().is_err());
    }
}
