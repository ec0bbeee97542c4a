//! `nimbus`: every role of Nimbus in one binary, and its command-line client.
//!
//! The binary only parses arguments and wires the library crates together:
//! the work is done in nimbus-server, nimbus-agent and nimbus-image.

mod cmd;
mod ctx;
mod output;
mod starter;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::ctx::Globals;

const EXAMPLES: &str = "\
Examples:
  nimbus up                                   # start a one-machine cloud
  nimbus project create ops
  nimbus image import ./rootfs.tar --name busybox
  nimbus instance run web --image busybox --memory 64MiB -- sh -c 'echo hi; sleep 600'
  nimbus instance list
  nimbus instance logs web --follow
  nimbus instance exec web -- ps
  nimbus instance rm web
  nimbus network create backend --subnet 10.20.0.0/24
  nimbus secgroup create web --allow tcp:80 --allow-from-group web
  nimbus instance run api --image busybox --network backend --secgroup web -- httpd -f -p 80
  nimbus address publish api --port 8080:80
  nimbus vulndb import ./osv-debian.zip && nimbus image scan busybox
  nimbus policy set --max-severity high
";

#[derive(Parser)]
#[command(name = "nimbus", version = version_text(), about = "Nimbus: a private cloud in one binary", after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the control plane and a local host agent in one process.
    Up(cmd::up::UpArgs),
    /// Start the control plane only (several may share one etcd store);
    /// `nimbus server list` shows them and the leader.
    Server(cmd::up::ServerCommand),
    /// Run this host's agent alone, joined to the servers with a one-time
    /// token (`nimbus host join-token create`).
    Agent(cmd::agent::AgentArgs),
    /// Supervise one instance (started by the agent).
    #[command(hide = true)]
    Shim { dir: PathBuf },
    /// Projects: the unit of tenancy.
    #[command(subcommand)]
    Project(cmd::project::ProjectCmd),
    /// Images: import root filesystems and OCI archives.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Signing keys (cosign-compatible ECDSA P-256).
    #[command(subcommand)]
    Key(cmd::key::KeyCmd),
    /// A project's launch policy: image signatures by trusted keys, the highest vulnerability severity.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// Instances: containers (and later VMs and unikernels).
    #[command(subcommand)]
    Instance(cmd::instance::InstanceCmd),
    /// Private networks of a project.
    #[command(subcommand)]
    Network(cmd::network::NetworkCmd),
    /// Security groups: stateful ingress filters for instances.
    #[command(subcommand)]
    Secgroup(cmd::network::SecgroupCmd),
    /// Host ports published to instances.
    #[command(subcommand)]
    Address(cmd::network::AddressCmd),
    /// Buckets of the project's object storage.
    #[command(subcommand)]
    Bucket(cmd::bucket::BucketCmd),
    /// The S3 endpoint: access keys.
    #[command(subcommand)]
    S3(cmd::bucket::S3Cmd),
    /// Block volumes of the project and their snapshots.
    #[command(subcommand)]
    Volume(cmd::volume::VolumeCmd),
    /// Limits on a project's volumes.
    #[command(subcommand)]
    Quota(cmd::volume::QuotaCmd),
    /// The offline vulnerability database images are scanned against.
    #[command(subcommand)]
    Vulndb(cmd::vulns::VulnDbCmd),
    /// Users of the cloud.
    #[command(subcommand)]
    User(cmd::admin::UserCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(cmd::admin::TokenCmd),
    /// Roles of users in projects.
    #[command(subcommand)]
    Role(cmd::admin::RoleCmd),
    /// Hosts that run instances.
    #[command(subcommand)]
    Host(cmd::admin::HostCmd),
    /// The audit log of mutating calls.
    #[command(subcommand)]
    Audit(cmd::admin::AuditCmd),
    /// What happened in a project: instances scheduled, started, exited,
    /// restarted, failed, stopped, deleted; hosts unreachable. Newest first.
    Events(cmd::events::EventsArgs),
    /// Usage of a project per hour, day or in total: instance-hours by
    /// kind, vCPU-hours, memory-GiB-hours, image GiB-hours.
    Usage(cmd::usage::UsageArgs),
    /// Who the current token acts as.
    Whoami,
    /// This client's release and protocol level, and the server's (with the
    /// agent levels it accepts); `nimbus --version` shows this binary's only.
    Version,
    /// Print shell completions: `nimbus completions bash > /etc/bash_completion.d/nimbus`.
    Completions { shell: clap_complete::Shell },
}

/// `nimbus --version`: the release and the protocol level (see
/// `nimbus_api::version`).
fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| nimbus_api::BuildVersion::current().to_string())
}

/// What this executable's builder stamped on it, if anything: the release
/// in `NIMBUS_BUILD_RELEASE` (a packager's `0.1.0+deb12u1`) and the
/// protocol level in `NIMBUS_BUILD_PROTOCOL` (`scripts/build-next` makes
/// the stand-in for the next release with both). Read at compile time; only
/// this crate recompiles when they change.
const STAMPED_RELEASE: Option<&str> = option_env!("NIMBUS_BUILD_RELEASE");
const STAMPED_PROTOCOL: Option<u32> = match option_env!("NIMBUS_BUILD_PROTOCOL") {
    None => None,
    Some(level) => match u32::from_str_radix(level, 10) {
        Ok(level) => Some(level),
        Err(_) => panic!("NIMBUS_BUILD_PROTOCOL must be a whole number"),
    },
};

fn main() -> ExitCode {
    nimbus_api::version::stamp(STAMPED_RELEASE, STAMPED_PROTOCOL);
    // The shim is started once per instance launch: it skips building the
    // whole command-line parser, which costs time and memory it never needs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "shim" {
        return run_shim(std::path::Path::new(&args[2]));
    }
    // The agent's single-threaded helper that mounts a volume into a
    // running container (`nimbus_agent::volume::live`).
    if let Some(code) = nimbus_agent::volume::live::helper_main(&args) {
        return code;
    }
    let cli = Cli::parse();
    if let Command::Shim { dir } = &cli.command {
        return run_shim(dir);
    }
    // SIGPIPE stays ignored (Rust's default) in every role: a client whose
    // upload the server refused part-way must survive its failed write to
    // show the server's answer. A closed stdout (`| head`) is handled where
    // the client writes (see `output`).
    if let Command::Completions { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "nimbus", &mut script);
        return exit_code(output::stdout_bytes(&script));
    }
    let daemon = match &cli.command {
        Command::Up(_) | Command::Agent(_) => true,
        Command::Server(server) => server.action.is_none(),
        _ => false,
    };
    init_tracing(daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit_code(runtime.block_on(run(cli)))
}

/// Success, a quiet [`output::STDOUT_CLOSED_EXIT_STATUS`] when the reader
/// of our output went away, or the error on stderr and failure.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if output::is_stdout_closed(&e) => ExitCode::from(output::STDOUT_CLOSED_EXIT_STATUS),
        Err(e) => {
            // Not `eprintln!`: it panics when stderr is a closed pipe.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_shim(dir: &std::path::Path) -> ExitCode {
    // The shim runs without tokio's multi-threaded runtime and daemonizes itself.
    match nimbus_agent::run_shim(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nimbus shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A log line that cannot be written (stderr on a full disk) is dropped:
    // the subscriber's own report of it would go through `eprintln!`, which
    // panics on the same full disk and takes the request being served with it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.globals;
    match cli.command {
        Command::Up(args) => cmd::up::up(&g, args).await,
        Command::Agent(args) => cmd::agent::agent(&g, args).await,
        Command::Server(server) => match server.action {
            None => cmd::up::server(&g, server.args).await,
            Some(action) => cmd::servers::run(&g, action).await,
        },
        Command::Project(c) => cmd::project::run(&g, c).await,
        Command::Image(c) => cmd::image::run(&g, c).await,
        Command::Key(c) => cmd::key::run(&g, c).await,
        Command::Policy(c) => cmd::policy::run(&g, c).await,
        Command::Instance(c) => cmd::instance::run(&g, c).await,
        Command::Network(c) => cmd::network::network(&g, c).await,
        Command::Secgroup(c) => cmd::network::secgroup(&g, c).await,
        Command::Address(c) => cmd::network::address(&g, c).await,
        Command::Bucket(c) => cmd::bucket::bucket(&g, c).await,
        Command::S3(c) => cmd::bucket::s3(&g, c).await,
        Command::Volume(c) => cmd::volume::volume(&g, c).await,
        Command::Quota(c) => cmd::volume::quota(&g, c).await,
        Command::Vulndb(c) => cmd::vulns::vulndb(&g, c).await,
        Command::User(c) => cmd::admin::user(&g, c).await,
        Command::Token(c) => cmd::admin::token(&g, c).await,
        Command::Role(c) => cmd::admin::role(&g, c).await,
        Command::Host(c) => cmd::admin::host(&g, c).await,
        Command::Audit(c) => cmd::admin::audit(&g, c).await,
        Command::Events(args) => cmd::events::run(&g, args).await,
        Command::Usage(args) => cmd::usage::run(&g, args).await,
        Command::Whoami => cmd::admin::whoami(&g).await,
        Command::Version => cmd::servers::version(&g).await,
        Command::Shim { .. } | Command::Completions { .. } => Ok(()),
    }
}
