//! `nimbus agent`: a host agent running alone, joined to the servers with
//! a one-time token; and the host options it shares with `nimbus up`.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use nimbus_agent::join::{self, Credential};
use nimbus_agent::{Agent, AgentConfig};

use crate::ctx::Globals;

/// What a host's agent is told about its host, under `nimbus up` and
/// `nimbus agent` alike.
#[derive(Args, Debug)]
pub struct HostAgentArgs {
    /// Name of this host (default: the machine's hostname).
    #[arg(long)]
    pub host_name: Option<String>,
    /// Memory kept for the control plane and the host: all instances
    /// together are limited to the host's memory minus this (default: a
    /// tenth of it, at least 1GiB, at most half).
    #[arg(long, value_parser = nimbus_api::units::parse_size)]
    pub reserved_memory: Option<u64>,
    /// Writable layer of a container that asks for no --disk (nor has a
    /// project default): its own ext4 filesystem of this size, so one
    /// container cannot fill the host's disk (at least 16MiB).
    #[arg(long, value_parser = nimbus_api::units::parse_size, default_value = "10GiB")]
    pub container_disk: u64,
    /// Label of this host, KEY=VALUE (repeatable), e.g. site=bj, rack=r12,
    /// jurisdiction=cn; shown by `nimbus host list` and matched by
    /// `instance run --require/--prefer label:KEY=VALUE`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub host_label: Vec<String>,
}

/// The agent's configuration for `host` from the shared host options.
pub fn agent_config(
    data_dir: &Path,
    host: String,
    args: &HostAgentArgs,
    instances_memory_bytes: Option<u64>,
) -> anyhow::Result<AgentConfig> {
    let min_disk = nimbus_agent::container::spec::MIN_DISK_BYTES;
    anyhow::ensure!(
        args.container_disk >= min_disk,
        "--container-disk {} is below the {} MiB a container's writable layer needs; give at least {}MiB",
        args.container_disk,
        min_disk >> 20,
        min_disk >> 20
    );
    let mut config = AgentConfig::new(
        host,
        data_dir.to_path_buf(),
        nimbus_agent::shim::shim_executable(
            &std::env::current_exe().context("finding the nimbus executable for the shims")?,
        ),
    );
    config.instances_memory_bytes = instances_memory_bytes;
    config.container_disk_bytes = args.container_disk;
    config.labels = crate::cmd::instance::parse_kv(&args.host_label, "--host-label")?;
    Ok(config)
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    nimbus host join-token create        # on a server, as an administrator\n  \
    nimbus agent --server https://10.0.0.1:7443,https://10.0.0.2:7443 --join nmbjoin_... \\\n      --host-name node7 --host-label site=bj --host-label rack=r12\n  \
    nimbus agent --server https://10.0.0.1:7443   # later starts: the kept credential")]
pub struct AgentArgs {
    /// The servers of the cloud, https://HOST:PORT, comma-separated; tried
    /// in turn when one cannot be reached.
    #[arg(long, env = "NIMBUS_SERVER")]
    pub server: String,
    /// One-time join token from `nimbus host join-token create`; needed
    /// only the first time (the credential is then kept in --data-dir).
    #[arg(long, env = "NIMBUS_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// Self-fencing lease: when no server has accepted a heartbeat for this
    /// long, the agent stops every instance on this host, and the servers,
    /// 4 s later, run those with a restart policy on other hosts (2s to
    /// 5m; heartbeats go out at least three times per lease).
    #[arg(long, default_value = "8s", value_parser = parse_fence_after)]
    pub fence_after: u64,
    /// This host's underlay ("data-centre") address: other hosts send the
    /// VXLAN traffic of networks that span hosts there. Default: the
    /// address this host reaches the first server from (none when that is
    /// loopback: networks then stay on this host).
    #[arg(long, value_name = "IP")]
    pub tunnel_address: Option<std::net::Ipv4Addr>,
    /// UDP port of this host's VXLAN endpoint; the same on every host.
    #[arg(long, default_value_t = nimbus_agent::vxlan::DEFAULT_PORT)]
    pub tunnel_port: u16,
    /// Where the servers reach this host's instances (logs, exec,
    /// consoles, pause): HTTPS on IP:PORT, its certificate made once in
    /// --data-dir and pinned by the servers (default: port 7444 on the
    /// address this host uses toward the first server).
    #[arg(long, value_name = "IP:PORT")]
    pub io_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub host: HostAgentArgs,
}

/// Where this host meets the others: `--tunnel-address`, else the source
/// of the route to the first server; checked to be this host's own.
fn underlay(
    args: &AgentArgs,
    toward: std::net::IpAddr,
) -> anyhow::Result<Option<nimbus_agent::vxlan::Underlay>> {
    // By default the address this host reaches the servers from, unless
    // that is loopback (the servers are on this machine).
    let address = args.tunnel_address.or(match toward {
        std::net::IpAddr::V4(a) if !a.is_loopback() && !a.is_unspecified() => Some(a),
        _ => None,
    });
    let Some(address) = address else {
        tracing::info!("no tunnel address (the servers are reached over loopback): this host's networks stay on it; give --tunnel-address to span hosts");
        return Ok(None);
    };
    let u = nimbus_agent::vxlan::Underlay {
        address,
        port: args.tunnel_port,
    };
    nimbus_agent::vxlan::check_underlay(&u).context("--tunnel-address")?;
    tracing::info!(tunnel_address = %address, port = u.port, "networks span hosts over VXLAN from this address");
    Ok(Some(u))
}

fn parse_fence_after(s: &str) -> Result<u64, String> {
    match nimbus_api::units::parse_duration_secs(s)? {
        secs @ 2..=300 => Ok(secs * 1000),
        _ => Err(format!(
            "--fence-after {s:?} is out of range; give 2s to 5m (e.g. 8s): shorter fences a host at the first slow heartbeat, longer leaves its instances down that long before they move"
        )),
    }
}

pub async fn agent(g: &Globals, args: AgentArgs) -> anyhow::Result<()> {
    nimbus_server::datadir::restrict_umask();
    std::fs::create_dir_all(&g.data_dir)
        .with_context(|| format!("creating the data directory {}", g.data_dir.display()))?;
    // Searchable, not listable: containers' roots pass through it.
    std::fs::set_permissions(
        &g.data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(nimbus_server::datadir::SEARCH_ONLY_MODE),
    )
    .with_context(|| format!("restricting the data directory {}", g.data_dir.display()))?;
    let _lock = nimbus_server::server::lock_data_dir(&g.data_dir).await?;
    let servers = join::parse_servers(&args.server)?;
    let (ca_pem, credential) = match &args.join {
        Some(token) => {
            let host = args
                .host
                .host_name
                .clone()
                .unwrap_or_else(crate::cmd::up::local_host_name);
            let joined = join::join(&servers, token, &host, &g.data_dir).await?;
            tracing::info!(host = %host, servers = %args.server, "joined the cloud; the credential is kept in the data directory");
            joined
        }
        None => join::load(&g.data_dir)?,
    };
    check_host_name(&args.host, &credential, &g.data_dir)?;
    let client = join::client(&servers, &ca_pem, Some(credential.token.clone()))?;
    check_credential(&client, &g.data_dir).await?;
    nimbus_agent::agent::skew::check_servers(&client, &credential.host).await?;
    let instances_memory = nimbus_agent::protect::protect_daemon(Some(args.host.reserved_memory))?;
    let mut config = agent_config(
        &g.data_dir,
        credential.host.clone(),
        &args.host,
        instances_memory,
    )?;
    config.fence_after_ms = Some(args.fence_after);
    let toward = toward_servers(&servers).await;
    config.tunnel = underlay(&args, toward)?;
    config.io_endpoint = start_io_endpoint(&args, toward, &config, &client).await;
    // Its own image store, in its data directory.
    let agent = Agent::new(config, client, None)?;
    tracing::info!(host = %credential.host, data_dir = %g.data_dir.display(), "host agent running");
    tokio::select! {
        result = agent.run() => result,
        _ = crate::cmd::up::shutdown_signal() => Ok(()),
    }
}

/// Serve this host's instances' I/O to the servers. Without it the agent
/// still runs its instances; only their logs, exec and consoles are out of
/// reach, which the servers say when asked.
async fn start_io_endpoint(
    args: &AgentArgs,
    toward: std::net::IpAddr,
    config: &nimbus_agent::AgentConfig,
    client: &nimbus_api::client::Client,
) -> Option<nimbus_agent::io_endpoint::Advertised> {
    let listen = args.io_listen.unwrap_or_else(|| {
        std::net::SocketAddr::new(toward, nimbus_agent::io_endpoint::DEFAULT_PORT)
    });
    let io = std::sync::Arc::new(nimbus_agent::agent::hostio::LocalHostIo {
        instances_dir: config.instances_dir(),
    });
    match nimbus_agent::io_endpoint::start(
        listen,
        toward,
        &config.data_dir,
        config.host_name.clone(),
        client.clone(),
        io,
    )
    .await
    {
        Ok(advertised) => {
            tracing::info!(endpoint = %advertised.endpoint, "serving instance logs, exec and consoles to the servers");
            Some(advertised)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no I/O endpoint: the servers cannot reach this host's instances' logs, exec or consoles");
            None
        }
    }
}

/// The local address this host uses toward the first server (no packet is
/// sent: a UDP socket is only connected); unspecified if none resolves.
async fn toward_servers(servers: &[join::ServerAddr]) -> std::net::IpAddr {
    let unspecified = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let Some(first) = servers.first() else {
        return unspecified;
    };
    let Some(server) = tokio::net::lookup_host(&first.addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        return unspecified;
    };
    let local = std::net::UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .and_then(|s| s.connect(server).and_then(|()| s.local_addr()));
    local.map_or(unspecified, |a| a.ip())
}

/// A data directory holds the credential of one host name.
fn check_host_name(
    args: &HostAgentArgs,
    credential: &Credential,
    data_dir: &Path,
) -> anyhow::Result<()> {
    match &args.host_name {
        Some(asked) if *asked != credential.host => anyhow::bail!(
            "{} holds the credential of host {:?}, not {asked:?}: start without --host-name, or join as {asked:?} with another --data-dir and a new token",
            data_dir.join(join::CREDENTIAL_FILE).display(),
            credential.host
        ),
        _ => Ok(()),
    }
}

/// A credential the servers no longer accept (host removed, or joined
/// again elsewhere) stops the agent with what to do, rather than retrying
/// for ever; unreachable servers are retried by the agent itself.
async fn check_credential(
    client: &nimbus_api::client::Client,
    data_dir: &Path,
) -> anyhow::Result<()> {
    match client.get::<nimbus_api::WhoAmI>("/v1/whoami").await {
        Err(e) if e.code() == Some(nimbus_api::ErrorCode::Unauthenticated) => anyhow::bail!(
            "the servers refuse the credential in {} ({e}); join again with --join and a token from `nimbus host join-token create`",
            data_dir.join(join::CREDENTIAL_FILE).display()
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the credential yet; the agent keeps trying");
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}
