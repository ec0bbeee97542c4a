//! Users, tokens, roles, hosts, audit and whoami.

use clap::Subcommand;
use nimbus_api::client::{query_escape, Method};
use nimbus_api::units::format_size;
use nimbus_api::{
    AuditRecord, CreateRequest, CreateToken, Host, ResourceList, Role, RoleBinding,
    RoleBindingSpec, Token, TokenCreated, User, UserSpec, WhoAmI,
};

use crate::ctx::Globals;
use crate::output::{age, opt, print, table};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user (system administrators).
    Create {
        name: String,
        /// Make the user a system administrator.
        #[arg(long)]
        system_admin: bool,
        /// A monitoring system's user: its tokens read `/metrics` and
        /// nothing else.
        #[arg(long, conflicts_with = "system_admin")]
        metrics_reader: bool,
    },
    #[command(alias = "ls")]
    List,
    #[command(alias = "delete")]
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    #[command(
        after_help = "Examples:\n  nimbus token create --user alice   # as an administrator\n  nimbus token create --expires-in 12h --description ci"
    )]
    Create {
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// The token stops working after this long, e.g. 90s, 30m, 12h, 7d.
        #[arg(long, value_parser = nimbus_api::units::parse_duration_secs)]
        expires_in: Option<u64>,
    },
    #[command(alias = "ls")]
    List,
    /// Revoke a token.
    #[command(alias = "delete")]
    Rm { id: String },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Give a user a role (reader, member, admin) in the project (--project).
    #[command(after_help = "Example:\n  nimbus role grant alice member --project ops")]
    Grant { user: String, role: Role },
    /// Take a user's role in the project away.
    Revoke { user: String },
    /// List role bindings of the project.
    #[command(alias = "ls")]
    List,
}

#[derive(Subcommand)]
pub enum HostCmd {
    #[command(alias = "ls")]
    List,
    Get {
        name: String,
    },
    /// Place nothing new on the host; what runs there keeps running
    /// (system administrators).
    Cordon {
        name: String,
    },
    /// Let the scheduler place instances on the host again.
    Uncordon {
        name: String,
    },
    /// Remove a decommissioned or dead host: instances being deleted there
    /// are finalized, the others placed again elsewhere (system
    /// administrators).
    #[command(alias = "remove")]
    Rm {
        name: String,
        /// Remove it even though its agent still heartbeats.
        #[arg(long)]
        force: bool,
    },
    /// One-time tokens new hosts join with (`nimbus agent --join`).
    #[command(subcommand)]
    JoinToken(crate::cmd::join_token::JoinTokenCmd),
}

/// Which audit records to show or export.
#[derive(clap::Args, Debug, Default)]
pub struct AuditFilters {
    /// Only the records of the project given with --project (a project
    /// admin must pass it).
    #[arg(long)]
    only_project: bool,
    /// Only calls made by this user (`-` for unauthenticated calls).
    #[arg(long)]
    actor: Option<String>,
    /// Only calls with this HTTP method, e.g. POST or DELETE.
    #[arg(long)]
    method: Option<String>,
    /// Only calls whose path starts with this, e.g. /v1/projects/ops/instances.
    #[arg(long)]
    path_prefix: Option<String>,
    /// Only calls that ended with this HTTP status (404) or class (4xx).
    #[arg(long)]
    status: Option<String>,
    /// Only records since this time: RFC 3339 or a duration ago (30m, 12h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only records until this time, in the same forms as --since.
    #[arg(long)]
    until: Option<String>,
}

impl AuditFilters {
    /// The query string of these filters (without `?`).
    fn query(&self, project: &str) -> Vec<String> {
        let mut q = Vec::new();
        let mut add = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                q.push(format!("{key}={}", query_escape(v)));
            }
        };
        add("project", self.only_project.then_some(project));
        add("actor", self.actor.as_deref());
        add("method", self.method.as_deref());
        add("path_prefix", self.path_prefix.as_deref());
        add("status", self.status.as_deref());
        add("since", self.since.as_deref());
        add("until", self.until.as_deref());
        q
    }
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// List audit records, newest first (all, or --project's with
    /// --only-project for a project admin).
    #[command(
        alias = "ls",
        after_help = "Examples:\n  nimbus audit list --actor alice --since 1h\n  nimbus audit list --method DELETE --status 2xx --path-prefix /v1/projects/ops/\n  nimbus audit list --project ops --only-project --limit 50"
    )]
    List {
        #[command(flatten)]
        filters: AuditFilters,
        /// Records per page (default 100, at most 5000).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue from the page before: the token the last page printed.
        #[arg(long = "continue", value_name = "TOKEN")]
        continue_token: Option<String>,
    },
    /// Write every matching record as JSON lines to stdout, oldest first.
    #[command(after_help = "Example:\n  nimbus audit export --since 30d > audit.jsonl")]
    Export {
        #[command(flatten)]
        filters: AuditFilters,
    },
}

pub async fn user(g: &Globals, cmd: UserCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    match cmd {
        UserCmd::Create {
            name,
            system_admin,
            metrics_reader,
        } => {
            let req = CreateRequest {
                name,
                labels: Default::default(),
                spec: UserSpec {
                    system_admin,
                    metrics_reader,
                    description: String::new(),
                },
            };
            let u: User = client.post("/v1/users", &req).await?;
            print(g, &u, || format!("user {:?} created", u.metadata.name))
        }
        UserCmd::List => {
            let l: ResourceList<User> = client.list_all("/v1/users").await?;
            print(g, &l, || {
                table(
                    &["name", "system admin", "age"],
                    l.items
                        .iter()
                        .map(|u| {
                            vec![
                                u.metadata.name.clone(),
                                u.spec.system_admin.to_string(),
                                age(Some(u.metadata.created_at)),
                            ]
                        })
                        .collect(),
                )
            })
        }
        UserCmd::Rm { name } => {
            client
                .request_bytes(Method::DELETE, &format!("/v1/users/{name}"), None)
                .await?;
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("user {name:?} deleted")
            })
        }
    }
}

pub async fn token(g: &Globals, cmd: TokenCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    match cmd {
        TokenCmd::Create {
            user,
            description,
            expires_in,
        } => {
            let expires_at = match expires_in {
                Some(secs) => Some(
                    chrono::Utc::now()
                        + chrono::Duration::try_seconds(secs as i64)
                            .ok_or_else(|| anyhow::anyhow!("--expires-in is too long"))?,
                ),
                None => None,
            };
            let t: TokenCreated = client
                .post(
                    "/v1/tokens",
                    &CreateToken {
                        user,
                        description,
                        expires_at,
                    },
                )
                .await?;
            print(g, &t, || {
                format!(
                    "token {} for user {:?} (shown once, keep it):\n{}",
                    t.token.metadata.name, t.token.spec.user, t.secret
                )
            })
        }
        TokenCmd::List => {
            let l: ResourceList<Token> = client.list_all("/v1/tokens").await?;
            print(g, &l, || {
                table(
                    &["id", "user", "description", "expires", "age"],
                    l.items
                        .iter()
                        .map(|t| {
                            vec![
                                t.metadata.name.clone(),
                                t.spec.user.clone(),
                                t.spec.description.clone(),
                                t.spec
                                    .expires_at
                                    .map(|e| e.format("%Y-%m-%d %H:%M:%SZ").to_string())
                                    .unwrap_or_else(|| "never".into()),
                                age(Some(t.metadata.created_at)),
                            ]
                        })
                        .collect(),
                )
            })
        }
        TokenCmd::Rm { id } => {
            client
                .request_bytes(Method::DELETE, &format!("/v1/tokens/{id}"), None)
                .await?;
            print(g, &serde_json::json!({"deleted": id}), || {
                format!("token {id} revoked")
            })
        }
    }
}

pub async fn role(g: &Globals, cmd: RoleCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    match cmd {
        RoleCmd::Grant { user, role } => {
            let b: RoleBinding = client
                .post(
                    &format!("/v1/projects/{p}/rolebindings"),
                    &RoleBindingSpec { user, role },
                )
                .await?;
            print(g, &b, || {
                format!(
                    "user {:?} is now {} in project {p:?}",
                    b.spec.user, b.spec.role
                )
            })
        }
        RoleCmd::Revoke { user } => {
            client
                .request_bytes(
                    Method::DELETE,
                    &format!("/v1/projects/{p}/rolebindings/{user}"),
                    None,
                )
                .await?;
            print(g, &serde_json::json!({"revoked": user}), || {
                format!("user {user:?} has no role in project {p:?} now")
            })
        }
        RoleCmd::List => {
            let l: ResourceList<RoleBinding> = client
                .list_all(&format!("/v1/projects/{p}/rolebindings"))
                .await?;
            print(g, &l, || {
                table(
                    &["user", "role", "age"],
                    l.items
                        .iter()
                        .map(|b| {
                            vec![
                                b.spec.user.clone(),
                                b.spec.role.to_string(),
                                age(Some(b.metadata.created_at)),
                            ]
                        })
                        .collect(),
                )
            })
        }
    }
}

fn host_rows(items: &[Host]) -> String {
    table(
        &[
            "name",
            "phase",
            "cpus",
            "memory",
            "arch",
            "cgroup",
            "vm accel",
            "instances",
            "version",
            "heartbeat",
            "labels",
        ],
        items
            .iter()
            .map(|h| {
                vec![
                    h.metadata.name.clone(),
                    {
                        let phase = format!("{:?}", h.status.phase).to_lowercase();
                        if h.spec.unschedulable {
                            format!("{phase},cordoned")
                        } else {
                            phase
                        }
                    },
                    h.status.cpus.to_string(),
                    format_size(h.status.memory_bytes),
                    h.status.architecture.clone(),
                    h.status.cgroup.clone(),
                    if h.status.accelerator.is_empty() {
                        "-".into()
                    } else {
                        h.status.accelerator.clone()
                    },
                    h.status.instances.to_string(),
                    crate::cmd::servers::version_cell(
                        &h.status.agent_version,
                        h.status.agent_protocol,
                    ),
                    age(h.status.last_heartbeat),
                    if h.metadata.labels.is_empty() {
                        "-".into()
                    } else {
                        h.metadata
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                ]
            })
            .collect(),
    )
}

/// `nimbus host cordon|uncordon NAME`: `action` is the path's last part.
async fn set_cordon(
    g: &Globals,
    client: &nimbus_api::client::Client,
    name: &str,
    action: &str,
) -> anyhow::Result<()> {
    let h: Host = client
        .post(
            &format!("/v1/hosts/{name}/{action}"),
            &serde_json::json!({}),
        )
        .await?;
    print(g, &h, || {
        if h.spec.unschedulable {
            format!("host {name:?} cordoned: no new instances go there (`nimbus host uncordon {name}` undoes it)")
        } else {
            format!("host {name:?} uncordoned: it takes new instances")
        }
    })
}

/// `nimbus host rm NAME [--force]`.
async fn remove_host(
    g: &Globals,
    client: &nimbus_api::client::Client,
    name: &str,
    force: bool,
) -> anyhow::Result<()> {
    let query = if force { "?force=true" } else { "" };
    let removed: serde_json::Value = client.delete(&format!("/v1/hosts/{name}{query}")).await?;
    print(g, &removed, || {
        let names = |k: &str| -> Vec<String> {
            removed[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        let (released, finalized) = (names("released"), names("finalized"));
        format!(
            "host {name:?} removed; {} instance(s) released to be placed again{}{}; {} deleted instance(s) finalized",
            released.len(),
            if released.is_empty() { "" } else { ": " },
            released.join(", "),
            finalized.len()
        )
    })
}

pub async fn host(g: &Globals, cmd: HostCmd) -> anyhow::Result<()> {
    if let HostCmd::JoinToken(cmd) = cmd {
        return crate::cmd::join_token::run(g, cmd).await;
    }
    let client = g.client()?;

    match cmd {
        HostCmd::List => {
            let l: ResourceList<Host> = client.list_all("/v1/hosts").await?;
            print(g, &l, || host_rows(&l.items))
        }
        HostCmd::Get { name } => {
            let h: Host = client.get(&format!("/v1/hosts/{name}")).await?;
            print(g, &h, || {
                let mut out = host_rows(std::slice::from_ref(&h));
                if !h.status.cgroup_delegated.is_empty() {
                    out.push_str(&format!(
                        "\n\ncgroup: {}, delegated subtree {}",
                        h.status.cgroup, h.status.cgroup_delegated
                    ));
                }
                if !h.status.accelerator_reason.is_empty() {
                    out.push_str(&format!(
                        "\n\nvm accelerator: {} ({})",
                        h.status.accelerator, h.status.accelerator_reason
                    ));
                }
                out.push_str(&match h.status.tunnel_address {
                    Some(a) => format!(
                        "\n\ntunnel address: {a} (VXLAN, UDP {})",
                        h.status.tunnel_port.unwrap_or(nimbus_agent::vxlan::DEFAULT_PORT)
                    ),
                    None => "\n\ntunnel address: none (this host's networks stay on it; give the agent --tunnel-address)".into(),
                });
                out
            })
        }
        HostCmd::Cordon { name } => set_cordon(g, &client, &name, "cordon").await,
        HostCmd::Uncordon { name } => set_cordon(g, &client, &name, "uncordon").await,
        HostCmd::Rm { name, force } => remove_host(g, &client, &name, force).await,
        HostCmd::JoinToken(_) => Ok(()),
    }
}

pub async fn audit(g: &Globals, cmd: AuditCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    match cmd {
        AuditCmd::List {
            filters,
            limit,
            continue_token,
        } => {
            let mut q = filters.query(&g.project);
            q.push(format!("limit={}", limit.unwrap_or(100)));
            if let Some(token) = &continue_token {
                q.push(format!("continue={}", query_escape(token)));
            }
            let l: ResourceList<AuditRecord> =
                client.get(&format!("/v1/audit?{}", q.join("&"))).await?;
            print(g, &l, || {
                table(
                    &["time", "actor", "method", "path", "status", "result"],
                    l.items
                        .iter()
                        .map(|r| {
                            vec![
                                r.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                                r.actor.clone(),
                                r.method.clone(),
                                r.path.clone(),
                                r.status.to_string(),
                                r.result.clone(),
                            ]
                        })
                        .collect(),
                )
            })?;
            if let (false, Some(token)) = (g.json(), &l.continue_token) {
                eprintln!("more records: run {}", next_page_command(token));
            }
            Ok(())
        }
        AuditCmd::Export { filters } => {
            use futures::StreamExt;
            let q = filters.query(&g.project);
            let mut chunks = Box::pin(
                client
                    .stream(&format!("/v1/audit/export?{}", q.join("&")))
                    .await?,
            );
            while let Some(chunk) = chunks.next().await {
                crate::output::stdout_bytes(&chunk?)?;
            }
            Ok(())
        }
    }
}

/// This command line again, with `--continue token` instead of any it had.
fn next_page_command(token: &str) -> String {
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    for (i, arg) in std::env::args().enumerate() {
        if skip {
            skip = false;
        } else if arg == "--continue" {
            skip = true;
        } else if !arg.starts_with("--continue=") {
            args.push(if i == 0 {
                "nimbus".into()
            } else {
                shell_quote(&arg)
            });
        }
    }
    args.push("--continue".into());
    args.push(shell_quote(token));
    args.join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

pub async fn whoami(g: &Globals) -> anyhow::Result<()> {
    let client = g.client()?;
    let w: WhoAmI = client.get("/v1/whoami").await?;
    print(g, &w, || {
        let roles: Vec<String> = w.roles.iter().map(|(p, r)| format!("{p}={r}")).collect();
        format!(
            "user {:?}{}, token {}, roles: {}",
            w.user,
            if w.system_admin {
                " (system administrator)"
            } else {
                ""
            },
            w.token_id,
            if roles.is_empty() {
                "-".into()
            } else {
                roles.join(", ")
            }
        )
    })?;
    let _ = opt::<String>(None);
    Ok(())
}
