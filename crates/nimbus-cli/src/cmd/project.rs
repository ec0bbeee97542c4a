//! `nimbus project ...`

use clap::Subcommand;
use nimbus_api::units::{format_size, parse_size};
use nimbus_api::{CreateRequest, InstanceDefaults, Project, ProjectSpec, ResourceList};

use crate::ctx::Globals;
use crate::output::{age, print, table};

#[derive(Subcommand)]
pub enum ProjectCmd {
    /// Create a project (system administrators).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the projects you can see.
    #[command(alias = "ls")]
    List,
    /// Show one project, with its instance defaults and host port policy.
    Get { name: String },
    /// Change a project's settings (system administrators). Unnamed
    /// settings keep their value.
    #[command(
        after_help = "Examples:\n  nimbus project set ops --default-memory 256MiB --default-cpus 0.5 --default-pids 512\n  nimbus project set ops --port-range 30000-30099 --max-ports 10"
    )]
    Set {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Memory of instances started without `--memory` (e.g. 256MiB).
        #[arg(long)]
        default_memory: Option<String>,
        /// CPUs of instances started without `--cpus` (e.g. 0.5).
        #[arg(long)]
        default_cpus: Option<f64>,
        /// Process limit of instances started without `--pids`.
        #[arg(long)]
        default_pids: Option<i64>,
        /// Host ports members may publish, `FROM-TO` (from 1024).
        #[arg(long)]
        port_range: Option<String>,
        /// How many host ports the project may hold at once.
        #[arg(long)]
        max_ports: Option<u32>,
    },
    /// Delete an empty project.
    #[command(alias = "delete")]
    Rm { name: String },
}

fn rows(items: &[Project]) -> String {
    table(
        &["name", "description", "default limits", "host ports", "age"],
        items
            .iter()
            .map(|p| {
                let limits =
                    InstanceDefaults::effective(&Default::default(), &p.spec.instance_defaults);
                let ports = &p.spec.host_ports;
                vec![
                    p.metadata.name.clone(),
                    p.spec.description.clone(),
                    format!(
                        "{} / {} CPU / {} pids",
                        limits.memory_bytes.map(format_size).unwrap_or_default(),
                        limits.cpu_millis.unwrap_or_default() as f64 / 1000.0,
                        limits.pids_max.unwrap_or_default()
                    ),
                    format!("{}-{} (at most {})", ports.min, ports.max, ports.max_count),
                    age(Some(p.metadata.created_at)),
                ]
            })
            .collect(),
    )
}

fn parse_port_range(text: &str) -> anyhow::Result<(u16, u16)> {
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    parsed.ok_or_else(|| {
        anyhow::anyhow!("port range {text:?} is not FROM-TO, e.g. --port-range 30000-30099")
    })
}

pub async fn run(g: &Globals, cmd: ProjectCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    match cmd {
        ProjectCmd::Create { name, description } => {
            let req = CreateRequest {
                name,
                labels: Default::default(),
                spec: ProjectSpec {
                    description,
                    ..Default::default()
                },
            };
            let p: Project = client.post("/v1/projects", &req).await?;
            print(g, &p, || format!("project {:?} created", p.metadata.name))
        }
        ProjectCmd::List => {
            let list: ResourceList<Project> = client.list_all("/v1/projects").await?;
            print(g, &list, || rows(&list.items))
        }
        ProjectCmd::Get { name } => {
            let p: Project = client.get(&format!("/v1/projects/{name}")).await?;
            print(g, &p, || rows(std::slice::from_ref(&p)))
        }
        ProjectCmd::Set {
            name,
            description,
            default_memory,
            default_cpus,
            default_pids,
            port_range,
            max_ports,
        } => {
            let current: Project = client.get(&format!("/v1/projects/{name}")).await?;
            let mut spec = current.spec;
            if let Some(d) = description {
                spec.description = d;
            }
            if let Some(m) = default_memory {
                spec.instance_defaults.memory_bytes =
                    Some(parse_size(&m).map_err(|e| anyhow::anyhow!("--default-memory: {e}"))?);
            }
            if let Some(c) = default_cpus {
                if !(c.is_finite() && c > 0.0) {
                    anyhow::bail!("--default-cpus {c} must be a positive number, e.g. 0.5");
                }
                spec.instance_defaults.cpu_millis = Some((c * 1000.0).round() as u64);
            }
            if let Some(p) = default_pids {
                spec.instance_defaults.pids_max = Some(p);
            }
            if let Some(r) = port_range {
                let (min, max) = parse_port_range(&r)?;
                spec.host_ports.min = min;
                spec.host_ports.max = max;
            }
            if let Some(n) = max_ports {
                spec.host_ports.max_count = n;
            }
            let p: Project = client.put(&format!("/v1/projects/{name}"), &spec).await?;
            print(g, &p, || rows(std::slice::from_ref(&p)))
        }
        ProjectCmd::Rm { name } => {
            client
                .request_bytes(
                    hyper_method("DELETE"),
                    &format!("/v1/projects/{name}"),
                    None,
                )
                .await?;
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("project {name:?} deleted")
            })
        }
    }
}

pub fn hyper_method(m: &str) -> nimbus_api::client::Method {
    nimbus_api::client::Method::from_bytes(m.as_bytes()).unwrap_or(nimbus_api::client::Method::GET)
}
