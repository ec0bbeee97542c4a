//! `nimbus up` and `nimbus server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use nimbus_api::client::{Client, Endpoint};
use nimbus_api::{Metadata, Project, ProjectSpec, ProjectStatus};
use nimbus_server::{server, AppState, ServerConfig};

use crate::ctx::Globals;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TCP address for the HTTPS API.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Serve only the local Unix socket.
    #[arg(long)]
    pub no_tls: bool,
    /// Local group whose members may connect to the API socket (they still
    /// need a token). Without such a group the socket is root's alone.
    #[arg(long, default_value = nimbus_server::server::SOCKET_GROUP)]
    pub socket_group: String,
    /// Certificate (PEM) to serve instead of a generated self-signed one.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest JSON request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest image archive accepted on import, e.g. 4GiB.
    #[arg(long, default_value = "4GiB", value_parser = parse_size_arg)]
    pub max_image_size: u64,
    /// Largest total size an image may unpack to (decompression-bomb guard).
    #[arg(long, default_value = "8GiB", value_parser = parse_size_arg)]
    pub max_unpacked_size: u64,
    /// The most an instance's output log (stdout and stderr, a VM's serial
    /// console) takes on its host's disk, rotated files together; the
    /// oldest lines go first. Counted in the project's disk quota.
    #[arg(long, default_value = "16MiB", value_parser = parse_log_max_arg)]
    pub log_max: u64,
    /// Long-lived streams (watch, logs --follow, exec, console) one token
    /// may hold open; more get 429.
    #[arg(long, default_value_t = 32)]
    pub max_streams_per_token: usize,
    /// The same across all tokens of one user.
    #[arg(long, default_value_t = 64)]
    pub max_streams_per_user: usize,
    /// Audit records kept; the oldest are pruned past this.
    #[arg(long, default_value_t = 100_000)]
    pub audit_max_records: usize,
    /// Audit records older than this are pruned, e.g. 30d, 12h.
    #[arg(long, default_value = "90d", value_parser = parse_max_age_arg)]
    pub audit_max_age: u64,
    /// Also send each audit record to the local syslog (/dev/log) as one
    /// RFC 5424 line.
    #[arg(long)]
    pub audit_syslog: bool,
    /// Events older than this are pruned, e.g. 7d, 12h.
    #[arg(long, default_value = "7d", value_parser = parse_events_max_age_arg)]
    pub events_max_age: u64,
    /// Events kept across all projects; the oldest are pruned past this.
    #[arg(long, default_value_t = 100_000)]
    pub events_max_records: usize,
    /// Usage records closed longer ago than this are pruned, e.g. 400d.
    #[arg(long, default_value = "400d", value_parser = parse_usage_max_age_arg)]
    pub usage_max_age: u64,
    /// Where cluster state lives: `sqlite` (the data directory's store.db)
    /// or `etcd://host:port[,host:port...][/prefix]` (default prefix /nimbus/).
    #[arg(long, default_value = "sqlite")]
    pub store: nimbus_server::StoreBackend,
    /// Concurrent connections on the HTTPS port (default: from the
    /// open-file limit, leaving room for the local socket).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Count API requests, store writes and placements and serve
    /// `/metrics`; `--metrics=false` turns all of it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,
    /// Also serve `/metrics` on this plain-HTTP address, without a token
    /// (for a scraper on a trusted network). Off by default.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// TCP address of the S3 endpoint (TLS, the API's certificate).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub s3_listen: SocketAddr,
    /// Do not serve the S3 endpoint.
    #[arg(long)]
    pub no_s3: bool,
    /// Largest object one S3 PUT or upload part may store, e.g. 5GiB.
    #[arg(long, default_value = "5GiB", value_parser = parse_size_arg)]
    pub max_object_size: u64,
    /// This server's name among the servers sharing an etcd store (each
    /// needs its own). Default: the host name, with the --listen port.
    #[arg(long)]
    pub server_name: Option<String>,
    /// With an etcd store: how long the leader's lease outlives its last
    /// renewal, which is how long the other servers wait for a dead leader
    /// before one takes over the scheduler and controllers, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_leader_lease_arg)]
    pub leader_lease: u64,
    /// A host whose agent sent no heartbeat for this long turns
    /// unreachable (agents beat every 5s), e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_host_timeout_arg)]
    pub host_timeout: u64,
}

/// `nimbus server`: run a server, or ask about the servers.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerCommand {
    #[command(subcommand)]
    pub action: Option<ServerAction>,
    #[command(flatten)]
    pub args: ServerArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServerAction {
    /// The servers sharing the store, and which one leads (runs the
    /// scheduler and the controllers).
    List,
}

fn parse_leader_lease_arg(s: &str) -> Result<u64, String> {
    match nimbus_api::units::parse_duration_secs(s)? {
        secs @ 2..=300 => Ok(secs),
        _ => Err(format!(
            "--leader-lease {s:?} is out of range; give 2s to 300s (e.g. 5s): etcd refuses shorter leases, and a longer one leaves the cloud without a leader for that long"
        )),
    }
}

fn parse_host_timeout_arg(s: &str) -> Result<u64, String> {
    match nimbus_api::units::parse_duration_secs(s)? {
        secs @ 10..=3600 => Ok(secs),
        _ => Err(format!(
            "--host-timeout {s:?} is out of range; give 10s to 1h (e.g. 30s): agents beat every 5s, so a shorter timeout marks live hosts unreachable"
        )),
    }
}

fn parse_max_age_arg(s: &str) -> Result<u64, String> {
    match nimbus_api::units::parse_duration_secs(s)? {
        0 => Err(format!(
            "--audit-max-age {s:?} would delete every record as it is written; give at least 1s (e.g. 30d)"
        )),
        secs => Ok(secs),
    }
}

fn parse_events_max_age_arg(s: &str) -> Result<u64, String> {
    match nimbus_api::units::parse_duration_secs(s)? {
        0 => Err(format!(
            "--events-max-age {s:?} would delete every event as it is written; give at least 1s (e.g. 7d)"
        )),
        secs => Ok(secs),
    }
}

fn parse_usage_max_age_arg(s: &str) -> Result<u64, String> {
    match nimbus_api::units::parse_duration_secs(s)? {
        0 => Err(format!(
            "--usage-max-age {s:?} would delete every usage record as it closes; give at least 1s (e.g. 400d)"
        )),
        secs => Ok(secs),
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    nimbus_api::units::parse_size(s)
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub host: crate::cmd::agent::HostAgentArgs,
    /// Do not import the starter busybox image.
    #[arg(long)]
    pub no_starter_image: bool,
}

/// A log cap: a size of at least 64KiB (three files of a long line each).
fn parse_log_max_arg(text: &str) -> Result<u64, String> {
    let bytes = parse_size_arg(text)?;
    if bytes < 64 << 10 {
        return Err(format!(
            "{text:?} is below the 64KiB an instance's log needs; give at least 64KiB"
        ));
    }
    Ok(bytes)
}

fn server_config(g: &Globals, args: &ServerArgs) -> ServerConfig {
    let mut config = ServerConfig::with_data_dir(g.data_dir.clone());
    config.store = args.store.clone();
    config.listen = (!args.no_tls).then_some(args.listen);
    // Every port the daemon listens on, so no published port takes one.
    config.other_listeners = (!args.no_s3)
        .then_some(args.s3_listen)
        .into_iter()
        .chain(args.metrics_listen)
        .collect();
    config.socket_group = args.socket_group.clone();
    config.tls_cert = args.tls_cert.clone();
    config.tls_key = args.tls_key.clone();
    config.max_body_bytes = args.max_body_bytes;
    config.max_image_bytes = args.max_image_size;
    config.max_unpacked_bytes = args.max_unpacked_size;
    config.log_max_bytes = args.log_max;
    config.max_streams_per_token = args.max_streams_per_token;
    config.max_streams_per_user = args.max_streams_per_user;
    config.audit_max_records = args.audit_max_records;
    config.audit_max_age = std::time::Duration::from_secs(args.audit_max_age);
    config.audit_syslog = args
        .audit_syslog
        .then(|| std::path::PathBuf::from("/dev/log"));
    config.events_max_age = std::time::Duration::from_secs(args.events_max_age);
    config.events_max_records = args.events_max_records;
    config.usage_max_age = std::time::Duration::from_secs(args.usage_max_age);
    config.max_connections = args.max_connections;
    config.metrics = args.metrics;
    config.metrics_listen = args.metrics_listen;
    config.server_name = args
        .server_name
        .clone()
        .unwrap_or_else(|| default_server_name(config.listen));
    config.leader_lease = std::time::Duration::from_secs(args.leader_lease);
    config.host_timeout_ms = args.host_timeout * 1000;
    config
}

/// The host name, with the API port when there is one (two servers may
/// share a machine).
fn default_server_name(listen: Option<SocketAddr>) -> String {
    match listen {
        Some(addr) => format!("{}:{}", local_host_name(), addr.port()),
        None => local_host_name(),
    }
}

pub(crate) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down; instances keep running and are adopted at the next start");
}

/// The `default` project every cloud starts with.
async fn ensure_default_project(state: &AppState) -> anyhow::Result<()> {
    if state
        .repo
        .try_get::<Project>(None, "default")
        .await
        .ok()
        .flatten()
        .is_none()
    {
        let created = state
            .repo
            .create(Project {
                metadata: Metadata::new("default", None),
                spec: ProjectSpec {
                    description: "created at first start".into(),
                    ..Default::default()
                },
                status: ProjectStatus::default(),
            })
            .await;
        if let Err(e) = created {
            if e.0.code != nimbus_api::ErrorCode::AlreadyExists {
                anyhow::bail!("creating the default project: {e}");
            }
        }
    }
    Ok(())
}

/// Serve the S3 endpoint beside the API, unless `--no-s3`.
async fn start_s3(state: &Arc<AppState>, args: &ServerArgs) -> anyhow::Result<()> {
    if args.no_s3 {
        return Ok(());
    }
    let (cert, key) = nimbus_server::tls::ensure_certificate(
        &state.config.tls_dir(),
        state.config.tls_cert.as_deref(),
        state.config.tls_key.as_deref(),
        state.config.listen.map(|a| a.ip()),
    )?;
    nimbus_objects::listener::start(nimbus_objects::listener::EndpointConfig {
        listen: args.s3_listen,
        data_dir: state.config.data_dir.join("objects"),
        tls_cert: cert,
        tls_key: key,
        store: state.repo.store.clone(),
        sealer: Arc::new(nimbus_server::api::objects::ServerSealer(state.clone())),
        max_object_bytes: args.max_object_size,
        retired: Some(Arc::new(nimbus_server::usage::objects::ObjectUsage)),
    })
    .await
    .context("starting the S3 endpoint")?;
    Ok(())
}

pub async fn server(g: &Globals, args: ServerArgs) -> anyhow::Result<()> {
    // No instances run on a server-only host: no memory reserve to set.
    nimbus_agent::protect::protect_daemon(None)?;
    let state = server::open_state(server_config(g, &args)).await?;
    ensure_default_project(&state).await?;
    start_s3(&state, &args).await?;
    server::serve(state, shutdown_signal()).await
}

pub(crate) fn local_host_name() -> String {
    let raw =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

pub async fn up(g: &Globals, args: UpArgs) -> anyhow::Result<()> {
    let instances_memory = nimbus_agent::protect::protect_daemon(Some(args.host.reserved_memory))?;
    let state = server::open_state(server_config(g, &args.server)).await?;
    ensure_default_project(&state).await?;
    start_s3(&state, &args.server).await?;
    let host = args.host.host_name.clone().unwrap_or_else(local_host_name);
    let token = server::ensure_host_token(&state, &host, &g.data_dir.join("agent.token")).await?;
    let mut agent_config =
        crate::cmd::agent::agent_config(&g.data_dir, host.clone(), &args.host, instances_memory)?;
    // The server's own listeners, which no published port may take over.
    agent_config.reserved_tcp_ports = nimbus_server::hostports::reserved_by_nimbus(&state.config)
        .iter()
        .map(|c| c.port)
        .collect();
    // With --metrics=false no one reads the statistics: do not collect them.
    if !args.server.metrics {
        agent_config.stats_ms = 0;
    }
    *state
        .host_io
        .write()
        .map_err(|_| anyhow::anyhow!("host I/O lock poisoned"))? =
        Some(nimbus_server::hostio::LocalHost {
            host: host.clone(),
            io: Arc::new(nimbus_agent::agent::hostio::LocalHostIo {
                instances_dir: agent_config.instances_dir(),
            }),
        });
    let client = Client::new(
        Endpoint::Unix(state.config.socket_path.clone()),
        Some(token),
    )?;
    let agent = nimbus_agent::Agent::new(agent_config, client, Some(state.images.clone()))?;
    tokio::spawn(async move {
        if let Err(e) = agent.run().await {
            tracing::error!(error = %e, "the host agent stopped");
        }
    });
    if !args.no_starter_image {
        let g = g.clone();
        tokio::spawn(async move {
            match crate::starter::ensure_starter_image(&g).await {
                Ok(true) => tracing::info!(
                    "imported the starter image \"busybox\" into project \"default\""
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not import the starter image"),
            }
        });
    }
    tracing::info!(
        host = %host,
        data_dir = %g.data_dir.display(),
        "Nimbus is up; try: nimbus instance run hello --image busybox -- echo hello"
    );
    server::serve(state, shutdown_signal()).await
}
