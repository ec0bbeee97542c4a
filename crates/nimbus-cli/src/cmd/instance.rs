//! `nimbus instance ...`

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use nimbus_api::client::{Client, Method};
use nimbus_api::units::{format_size, parse_size};
use nimbus_api::{
    CreateRequest, Instance, InstanceKind, InstancePhase, InstanceSpec, ResourceList, Resources,
    RestartMode, RestartPolicy,
};

use crate::cmd::wait::{self, Waited};
use crate::ctx::Globals;
use crate::output::{age, opt, print, table};

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Create and start an instance.
    #[command(
        after_help = "Examples:\n  nimbus instance run web --image busybox --memory 64MiB -- sh -c 'echo hi; sleep 600'\n  nimbus instance run job --image busybox --restart on-failure:3 -- sh -c 'exit 1'\n  nimbus instance run api --image busybox --network backend --secgroup web -- httpd -f -p 80\n  nimbus instance run db --image busybox --volume data:/var/lib/db -- sleep 600\n  nimbus instance run batch --image busybox --network none -- true"
    )]
    Run(Box<RunArgs>),
    /// List instances of the project.
    #[command(alias = "ls")]
    List {
        /// Label selector, e.g. `tier=web,env!=prod`.
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
    /// Show one instance.
    Get { name: String },
    /// Print the instance's output.
    Logs {
        name: String,
        /// Keep printing new output until the instance stops.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Show the time and stream of each line.
        #[arg(long, short = 't')]
        timestamps: bool,
    },
    /// Run a command inside a running instance.
    #[command(
        after_help = "Examples:\n  nimbus instance exec web -- ps\n  nimbus instance exec -it web -- sh"
    )]
    Exec {
        name: String,
        /// Allocate a terminal.
        #[arg(long, short = 't')]
        tty: bool,
        /// Keep standard input open (implied by --tty).
        #[arg(long, short = 'i')]
        interactive: bool,
        #[arg(long, short = 'e')]
        env: Vec<String>,
        #[arg(long, short = 'w')]
        workdir: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to a VM's serial console (detach with Ctrl-]).
    Console { name: String },
    /// Pause a VM's virtual CPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Stop: SIGTERM (a VM: the ACPI power button), then a kill after the grace period.
    Stop {
        name: String,
        /// Return without waiting for it to stop.
        #[arg(long)]
        no_wait: bool,
    },
    /// Start a stopped or exited instance.
    Start {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Restart the instance's workload.
    Restart {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete an instance and everything it had on its host.
    #[command(alias = "delete")]
    Rm {
        name: String,
        #[arg(long)]
        no_wait: bool,
        /// Kill a running workload at once instead of giving it its stop
        /// grace period (SIGKILL; a VM's QEMU is killed).
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(Args)]
pub struct RunArgs {
    pub name: String,
    #[arg(long)]
    pub image: String,
    /// container, vm or unikernel.
    #[arg(long, default_value = "container")]
    pub kind: String,
    /// Memory limit, e.g. 64MiB (a VM's RAM; default 512MiB, unikernel 64MiB).
    #[arg(long)]
    pub memory: Option<String>,
    /// VMs: virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Root disk size, e.g. 10GiB: a VM's disk (VMs from disk images;
    /// default: the image's) or a container's writable layer, where a write
    /// past it fails with "No space left on device" (default: the host's,
    /// 10GiB; at least 16MiB).
    #[arg(long)]
    pub disk: Option<String>,
    /// VMs: an SSH public key file for the default user (repeatable).
    #[arg(long)]
    pub ssh_key: Vec<std::path::PathBuf>,
    /// VMs: cloud-init user-data file (`#cloud-config` or a `#!` script).
    #[arg(long)]
    pub user_data: Option<std::path::PathBuf>,
    /// VMs from disk images: boot this kernel image directly, the disk as root;
    /// the arguments after `--` are the kernel command line.
    #[arg(long)]
    pub kernel_image: Option<String>,
    /// VMs: HOST:GUEST, forward 127.0.0.1:HOST to the guest's TCP port (repeatable).
    #[arg(long)]
    pub forward: Vec<String>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Most processes the instance may have.
    #[arg(long)]
    pub pids: Option<i64>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// Secret environment variable (repeatable): KEY=VALUE, or KEY alone to
    /// take the value from this command's own environment (then it is not
    /// on the command line, which other local users can see). The API never
    /// shows the value again; the store keeps it encrypted.
    #[arg(long = "secret-env", value_name = "KEY[=VALUE]")]
    pub secret_env: Vec<String>,
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// uid or uid:gid inside the instance.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// never, on-failure[:max-retries] or always.
    #[arg(long, default_value = "never")]
    pub restart: String,
    /// Seconds between SIGTERM and SIGKILL on stop.
    #[arg(long)]
    pub stop_timeout: Option<u64>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long, short = 'l')]
    pub label: Vec<String>,
    /// Placement: `--spread host` (default) puts it on the host running
    /// fewest instances.
    #[arg(long, value_name = "host", value_parser = ["host"], conflicts_with = "pack", help_heading = "Placement")]
    pub spread: Option<String>,
    /// Placement: put it on the fullest host that still fits.
    #[arg(long, help_heading = "Placement")]
    pub pack: bool,
    /// Placement: only hosts with this host label, `label:KEY=VALUE`
    /// (repeatable; hosts get labels from `nimbus up --host-label`).
    #[arg(long, value_name = "label:KEY=VALUE", help_heading = "Placement")]
    pub require: Vec<String>,
    /// Placement: hosts with this host label first, `label:KEY=VALUE` (repeatable).
    #[arg(long, value_name = "label:KEY=VALUE", help_heading = "Placement")]
    pub prefer: Vec<String>,
    /// Placement: only hosts already running an instance of the project
    /// labelled KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Placement")]
    pub affinity: Vec<String>,
    /// Placement: no host running an instance of the project labelled
    /// KEY=VALUE (repeatable); give replicas `--label app=web
    /// --anti-affinity app=web` to put each on its own host.
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Placement")]
    pub anti_affinity: Vec<String>,
    /// Placement: only hosts of this CPU architecture, e.g. x86_64.
    #[arg(long, help_heading = "Placement")]
    pub arch: Option<String>,
    /// Network to join. Without it, containers and VMs join the project's
    /// `default` network (created on demand), except unikernels and VMs
    /// with --forward; `none`: loopback only.
    #[arg(long)]
    pub network: Vec<String>,
    /// Security group filtering ingress (repeatable).
    #[arg(long)]
    pub secgroup: Vec<String>,
    /// Volume of the project to mount, VOLUME:PATH or VOLUME:PATH:ro
    /// (repeatable); the instance runs on the volume's host.
    #[arg(long, value_name = "VOLUME:PATH[:ro]")]
    pub volume: Vec<String>,
    /// Return at once instead of waiting until it runs.
    #[arg(long)]
    pub no_wait: bool,
    /// Delete the instance when its workload ends and its restart policy
    /// does not restart it (exited, failed or stopped).
    #[arg(long)]
    pub rm: bool,
    /// Command and arguments (after `--`); default: the image's.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The networks of a run request. No `--network`: the project's `default`
/// network, except for a unikernel or a VM reached through `--forward`
/// (user-mode networking), which join none; `--network none`: loopback only.
fn networks_of(a: &RunArgs, kind: InstanceKind) -> anyhow::Result<Vec<String>> {
    if a.network.iter().any(|n| n == "none") {
        if a.network.len() > 1 {
            anyhow::bail!("--network none means no network; drop the other --network flags");
        }
        return Ok(Vec::new());
    }
    if !a.network.is_empty() {
        return Ok(a.network.clone());
    }
    let own_networking = kind == InstanceKind::Unikernel || !a.forward.is_empty();
    Ok(if own_networking {
        Vec::new()
    } else {
        vec!["default".to_string()]
    })
}

/// The `vm` part of a run request, from the VM flags; `None` without any.
fn vm_spec(a: &RunArgs) -> anyhow::Result<Option<nimbus_api::VmSpec>> {
    // A container's --disk sizes its writable layer (`resources.disk_bytes`).
    let vm_disk = a.disk.as_deref().filter(|_| a.kind != "container");
    if a.vcpus.is_none()
        && vm_disk.is_none()
        && a.ssh_key.is_empty()
        && a.user_data.is_none()
        && a.forward.is_empty()
        && a.kernel_image.is_none()
    {
        return Ok(None);
    }
    let mut keys = Vec::new();
    for path in &a.ssh_key {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "reading SSH key {}: {e}; pass a public key file (.pub)",
                path.display()
            )
        })?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    let user_data = match &a.user_data {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading user-data {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let port_forwards = a
        .forward
        .iter()
        .map(|f| {
            let (h, g) = f.split_once(':').ok_or_else(|| {
                anyhow::anyhow!("--forward {f:?} must be HOST:GUEST, e.g. 2222:22")
            })?;
            Ok(nimbus_api::PortForward {
                host_port: h
                    .parse()
                    .map_err(|_| anyhow::anyhow!("host port {h:?} is not a port number"))?,
                guest_port: g
                    .parse()
                    .map_err(|_| anyhow::anyhow!("guest port {g:?} is not a port number"))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(nimbus_api::VmSpec {
        vcpus: a.vcpus,
        disk_bytes: vm_disk
            .map(parse_size)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        ssh_authorized_keys: keys,
        user_data,
        kernel_image: a.kernel_image.clone(),
        port_forwards,
    }))
}

pub(crate) fn parse_kv(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("{what} {kv:?} must be KEY=VALUE"))
        })
        .collect()
}

/// `KEY=VALUE`, or `KEY` with the value from this process's environment.
fn parse_secret_env(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => std::env::var(item)
                .map(|v| (item.clone(), v))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "secret environment variable {item:?} is not set in this shell; export it first or give --secret-env {item}=VALUE"
                    )
                }),
        })
        .collect()
}

fn parse_restart(text: &str) -> anyhow::Result<RestartPolicy> {
    let (mode, max) = text
        .split_once(':')
        .map(|(m, n)| (m, Some(n)))
        .unwrap_or((text, None));
    let mode = match mode {
        "never" | "no" => RestartMode::Never,
        "on-failure" | "on_failure" => RestartMode::OnFailure,
        "always" => RestartMode::Always,
        _ => anyhow::bail!("restart policy {text:?} is not one of never, on-failure[:N], always"),
    };
    let max_retries = match max {
        Some(n) => Some(
            n.parse()
                .map_err(|_| anyhow::anyhow!("restart limit {n:?} is not a number"))?,
        ),
        None => None,
    };
    Ok(RestartPolicy { mode, max_retries })
}

pub fn rows(items: &[Instance]) -> String {
    table(
        &[
            "name", "kind", "image", "phase", "host", "pid", "exit", "restarts", "memory", "age",
        ],
        items
            .iter()
            .map(|i| {
                vec![
                    i.metadata.name.clone(),
                    match i.spec.kind {
                        InstanceKind::Container => "container",
                        InstanceKind::Vm => "vm",
                        InstanceKind::Unikernel => "unikernel",
                    }
                    .into(),
                    i.spec.image.clone(),
                    i.status.phase.as_str().into(),
                    opt(i.status.host.clone()),
                    opt(i.status.pid),
                    opt(i.status.exit_code),
                    i.status.restart_count.to_string(),
                    i.spec
                        .resources
                        .memory_bytes
                        .map(format_size)
                        .unwrap_or_else(|| "-".into()),
                    age(Some(i.metadata.created_at)),
                ]
            })
            .collect(),
    )
}

fn detail(i: &Instance) -> String {
    let mut out = rows(std::slice::from_ref(i));
    let mut line = |k: &str, v: String| out.push_str(&format!("\n{k:<12} {v}"));
    line("", String::new());
    line("id:", i.metadata.id.clone());
    line(
        "command:",
        if i.spec.args.is_empty() {
            "(image default)".into()
        } else {
            format!("{:?}", i.spec.args)
        },
    );
    if let Some(p) = &i.status.platform {
        line("platform:", p.clone());
    }
    line("started:", opt(i.status.started_at.map(|t| t.to_rfc3339())));
    line(
        "finished:",
        opt(i.status.finished_at.map(|t| t.to_rfc3339())),
    );
    let r = &i.spec.resources;
    line(
        "limits:",
        format!(
            "memory {}, cpus {}, pids {}",
            r.memory_bytes
                .map(format_size)
                .unwrap_or_else(|| "unlimited".into()),
            r.cpu_millis
                .map(|m| format!("{}", m as f64 / 1000.0))
                .unwrap_or_else(|| match i.spec.kind {
                    InstanceKind::Container => "unlimited".into(),
                    _ => "see vcpus".into(),
                }),
            r.pids_max
                .map(|p| p.to_string())
                .unwrap_or_else(|| match i.spec.kind {
                    InstanceKind::Container => "unlimited".into(),
                    _ => "4096 (QEMU)".into(),
                }),
        ) + &r
            .disk_bytes
            .map(|d| format!(", disk {}", format_size(d)))
            .unwrap_or_default(),
    );
    if let Some(s) = i.status.signal {
        line("signal:", s.to_string());
    }
    if i.status.oom_killed {
        line("oom-killed:", "yes".into());
    }
    for a in &i.status.addresses {
        line(
            "address:",
            format!(
                "{}/{} on {} (gateway {}, mac {})",
                a.ip, a.prefix_len, a.network, a.gateway, a.mac
            ),
        );
    }
    if !i.spec.secgroups.is_empty() {
        line("secgroups:", i.spec.secgroups.join(", "));
    }
    for v in &i.spec.volumes {
        let mode = if v.read_only { " (read-only)" } else { "" };
        line("volume:", format!("{} at {}{mode}", v.volume, v.path));
    }
    line("reason:", opt(i.status.reason.clone()));
    if i.spec.kind != InstanceKind::Container {
        line(
            "accelerator:",
            match (&i.status.accelerator, &i.status.accelerator_reason) {
                (Some(a), Some(r)) => format!("{a} ({r})"),
                (Some(a), None) => a.clone(),
                _ => "-".into(),
            },
        );
        line("qemu pid:", opt(i.status.qemu_pid));
        line("console log:", opt(i.status.console_log.clone()));
        if let Some(vm) = &i.spec.vm {
            line("vcpus:", vm.vcpus.unwrap_or(1).to_string());
        }
    }
    if let Some(r) = &i.status.exit_reason {
        line("exit reason:", r.clone());
    }
    line("revision:", i.metadata.revision.to_string());
    out
}

fn path(g: &Globals, name: &str) -> String {
    format!("/v1/projects/{}/instances/{name}", g.project)
}

/// How long a command waits for an instance to start, stop or go.
const WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Wait until `done` holds for the instance (`None`: it is gone), on the
/// watch stream from the revision of `known` (the instance as the call
/// that changed it returned it).
async fn wait_for(
    client: &Client,
    g: &Globals,
    name: &str,
    known: Option<Instance>,
    what: &str,
    done: impl Fn(&Instance) -> bool,
) -> anyhow::Result<Option<Instance>> {
    let collection = format!("/v1/projects/{}/instances", g.project);
    match wait::until(client, &collection, name, known, WAIT_TIMEOUT, done).await? {
        Waited::Done(i) => Ok(Some(i)),
        Waited::Gone => Ok(None),
        Waited::TimedOut(i) => anyhow::bail!(
            "instance {name:?} is still {} after {} s waiting for it to {what}; see `nimbus instance get {name}`",
            i.status.phase.as_str(),
            WAIT_TIMEOUT.as_secs()
        ),
    }
}

fn started_or_done(i: &Instance) -> bool {
    matches!(
        i.status.phase,
        InstancePhase::Running
            | InstancePhase::Exited
            | InstancePhase::Failed
            | InstancePhase::Backoff
    ) && i.status.observed_generation >= i.spec.restart_generation
}

pub async fn run(g: &Globals, cmd: InstanceCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    match cmd {
        InstanceCmd::Run(a) => {
            let resources = Resources {
                memory_bytes: a
                    .memory
                    .as_deref()
                    .map(parse_size)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                cpu_millis: a.cpus.map(|c| (c * 1000.0).round() as u64),
                pids_max: a.pids,
                disk_bytes: match a.disk.as_deref() {
                    Some(d) if a.kind == "container" => {
                        Some(parse_size(d).map_err(anyhow::Error::msg)?)
                    }
                    _ => None,
                },
            };
            let kind = match a.kind.as_str() {
                "container" => InstanceKind::Container,
                "vm" => InstanceKind::Vm,
                "unikernel" => InstanceKind::Unikernel,
                other => anyhow::bail!("kind {other:?} is not container, vm or unikernel"),
            };
            let vm = vm_spec(&a)?;
            let networks = networks_of(&a, kind)?;
            let placement = placement_of(&a)?;
            let req = CreateRequest {
                name: a.name.clone(),
                labels: parse_kv(&a.label, "label")?,
                spec: InstanceSpec {
                    kind,
                    vm,
                    image: a.image,
                    args: a.command,
                    env: parse_kv(&a.env, "environment variable")?,
                    secret_env: parse_secret_env(&a.secret_env)?,
                    working_dir: a.workdir,
                    user: a.user,
                    resources,
                    restart_policy: parse_restart(&a.restart)?,
                    stop_grace_ms: a.stop_timeout.map(|s| s * 1000),
                    networks,
                    secgroups: a.secgroup,
                    auto_remove: a.rm,
                    volumes: a
                        .volume
                        .iter()
                        .map(|v| nimbus_api::VolumeMount::parse(v))
                        .collect::<Result<_, _>>()
                        .map_err(anyhow::Error::msg)?,
                    placement,
                    ..Default::default()
                },
            };
            let created: Instance = client
                .post(&format!("/v1/projects/{p}/instances"), &req)
                .await?;
            let shown = if a.no_wait {
                created
            } else {
                match wait_for(&client, g, &a.name, Some(created), "start", started_or_done).await?
                {
                    Some(i) => i,
                    // With --rm a short workload may be gone already.
                    None if a.rm => {
                        return print(g, &serde_json::json!({"deleted": a.name}), || {
                            format!("instance {:?} ended and was removed (--rm)", a.name)
                        })
                    }
                    None => anyhow::bail!("instance {:?} disappeared while starting", a.name),
                }
            };
            if shown.status.phase == InstancePhase::Failed {
                anyhow::bail!(
                    "instance {:?} failed to start: {}",
                    a.name,
                    shown.status.reason.unwrap_or_default()
                );
            }
            print(g, &shown, || rows(std::slice::from_ref(&shown)))
        }
        InstanceCmd::List { selector } => {
            let mut url = format!("/v1/projects/{p}/instances");
            if let Some(s) = selector {
                url.push_str(&format!(
                    "?selector={}",
                    nimbus_api::client::query_escape(&s)
                ));
            }
            let list: ResourceList<Instance> = client.list_all(&url).await?;
            print(g, &list, || rows(&list.items))
        }
        InstanceCmd::Get { name } => {
            let i: Instance = client.get(&path(g, &name)).await?;
            print(g, &i, || detail(&i))
        }
        InstanceCmd::Logs {
            name,
            follow,
            tail,
            timestamps,
        } => {
            let mut url = format!("{}/logs?follow={follow}", path(g, &name));
            if let Some(t) = tail {
                url.push_str(&format!("&tail={t}"));
            }
            let chunks = client.stream(&url).await?;
            let mut lines = Box::pin(nimbus_api::client::lines(chunks));
            while let Some(line) = lines.next().await {
                let line = line?;
                let text = String::from_utf8_lossy(&line);
                let mut parts = text.splitn(3, ' ');
                let (ts, stream, body) = (
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                // A closed stdout or stderr (`| head`) ends `--follow` too.
                if g.json() {
                    crate::outln!(
                        "{}",
                        serde_json::json!({"time": ts, "stream": stream, "line": body})
                    )?;
                } else if timestamps {
                    crate::outln!("{text}")?;
                } else if stream == "stderr" {
                    crate::output::stderr_bytes(format!("{body}\n").as_bytes())?;
                } else {
                    crate::outln!("{body}")?;
                }
            }
            Ok(())
        }
        InstanceCmd::Exec {
            name,
            tty,
            interactive,
            env,
            workdir,
            command,
        } => {
            let code = crate::cmd::exec::exec(
                &client,
                &path(g, &name),
                command,
                env,
                workdir,
                tty,
                interactive || tty,
            )
            .await?;
            std::process::exit(code);
        }
        InstanceCmd::Console { name } => {
            let code = crate::cmd::exec::console(&client, &path(g, &name), &name).await?;
            std::process::exit(code);
        }
        InstanceCmd::Pause { name } => {
            let i: Instance = client
                .post(&format!("{}/pause", path(g, &name)), &serde_json::json!({}))
                .await?;
            print(g, &i, || rows(std::slice::from_ref(&i)))
        }
        InstanceCmd::Resume { name } => {
            let i: Instance = client
                .post(
                    &format!("{}/resume", path(g, &name)),
                    &serde_json::json!({}),
                )
                .await?;
            print(g, &i, || rows(std::slice::from_ref(&i)))
        }
        InstanceCmd::Stop { name, no_wait } => {
            let changed: Instance = client
                .post(&format!("{}/stop", path(g, &name)), &serde_json::json!({}))
                .await?;
            finish(g, &client, &name, changed, no_wait, "stop", |i| {
                i.status.phase.is_terminal()
            })
            .await
        }
        InstanceCmd::Start { name, no_wait } => {
            let changed: Instance = client
                .post(&format!("{}/start", path(g, &name)), &serde_json::json!({}))
                .await?;
            finish(
                g,
                &client,
                &name,
                changed,
                no_wait,
                "start",
                started_or_done,
            )
            .await
        }
        InstanceCmd::Restart { name, no_wait } => {
            let changed: Instance = client
                .post(
                    &format!("{}/restart", path(g, &name)),
                    &serde_json::json!({}),
                )
                .await?;
            finish(
                g,
                &client,
                &name,
                changed,
                no_wait,
                "restart",
                started_or_done,
            )
            .await
        }
        InstanceCmd::Rm {
            name,
            no_wait,
            force,
        } => {
            let url = if force {
                format!("{}?force=true", path(g, &name))
            } else {
                path(g, &name)
            };
            let body = client.request_bytes(Method::DELETE, &url, None).await?;
            // 202 carries the instance being deleted; 204 (removed at once) nothing.
            let deleting = serde_json::from_slice::<Instance>(&body).ok();
            if !no_wait && deleting.is_some() {
                wait_for(&client, g, &name, deleting, "be removed", |_| false).await?;
            }
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("instance {name:?} deleted")
            })
        }
    }
}

async fn finish(
    g: &Globals,
    client: &Client,
    name: &str,
    changed: Instance,
    no_wait: bool,
    what: &str,
    done: impl Fn(&Instance) -> bool,
) -> anyhow::Result<()> {
    let i = if no_wait {
        changed
    } else {
        wait_for(client, g, name, Some(changed), what, done)
            .await?
            .ok_or_else(|| anyhow::anyhow!("instance {name:?} disappeared"))?
    };
    print(g, &i, || rows(std::slice::from_ref(&i)))
}

/// `label:KEY=VALUE` flags to a label map.
fn host_labels(
    flags: &[String],
    flag: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let stripped = flags
        .iter()
        .map(|f| {
            f.strip_prefix("label:").map(str::to_string).ok_or_else(|| {
                anyhow::anyhow!(
                    "--{flag} {f:?}: give a host label as label:KEY=VALUE, e.g. label:site=bj"
                )
            })
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    parse_kv(&stripped, &format!("--{flag} label"))
}

/// The placement flags of `instance run`.
fn placement_of(a: &RunArgs) -> anyhow::Result<nimbus_api::Placement> {
    Ok(nimbus_api::Placement {
        strategy: if a.pack {
            nimbus_api::PlacementStrategy::Pack
        } else {
            nimbus_api::PlacementStrategy::Spread
        },
        require_labels: host_labels(&a.require, "require")?,
        prefer_labels: host_labels(&a.prefer, "prefer")?,
        affinity: parse_kv(&a.affinity, "--affinity label")?,
        anti_affinity: parse_kv(&a.anti_affinity, "--anti-affinity label")?,
        architecture: a.arch.clone(),
    })
}
