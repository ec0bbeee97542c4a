//! `nimbus project ...`

use clap::Subcommand;
use nimbus_api::units::{format_size, parse_size};
use std::time::{Duration, Instant};

use anyhow::Context;
use nimbus_api::client::{Client, ClientError};
use nimbus_api::{
    CreateRequest, ErrorCode, Image, Instance, InstanceDefaults, Network, Project, ProjectSpec,
    PublishedPort, ResourceList, SecurityGroup,
};

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
    /// Delete an empty project; with --force, first remove everything in
    /// it.
    #[command(alias = "delete")]
    Rm {
        name: String,
        /// Remove the project's published ports, instances (waiting until
        /// they are gone), security groups, networks and images first.
        #[arg(long)]
        force: bool,
    },
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
        ProjectCmd::Rm { name, force } => {
            if force {
                remove_contents(&client, &name).await?;
            }
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

/// How long `project rm --force` waits for the project's instances to be
/// torn down by their hosts.
const INSTANCES_GONE_TIMEOUT: Duration = Duration::from_secs(120);

/// Names of a project's resources of one collection.
async fn names_of<T: serde::de::DeserializeOwned + nimbus_api::resources::Object>(
    client: &Client,
    project: &str,
) -> anyhow::Result<Vec<String>> {
    let path = format!("/v1/projects/{project}/{}", T::COLLECTION);
    let list: ResourceList<T> = client
        .list_all(&path)
        .await
        .with_context(|| format!("listing the {} of project {project:?}", T::COLLECTION))?;
    Ok(list
        .items
        .iter()
        .map(|o| o.metadata().name.clone())
        .collect())
}

/// DELETE that treats "already gone" as done: something else may remove
/// the resource meanwhile.
async fn delete_if_present(client: &Client, path: &str) -> Result<(), ClientError> {
    match client
        .request_bytes(hyper_method("DELETE"), path, None)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Everything in a project, in dependency order: published ports point at
/// instances; instances use security groups, networks and images, and are
/// gone only once their host has torn them down.
async fn remove_contents(client: &Client, project: &str) -> anyhow::Result<()> {
    let base = format!("/v1/projects/{project}");
    for name in names_of::<PublishedPort>(client, project).await? {
        delete_if_present(client, &format!("{base}/addresses/{name}"))
            .await
            .with_context(|| format!("removing published port {name:?}"))?;
    }
    for name in names_of::<Instance>(client, project).await? {
        delete_if_present(client, &format!("{base}/instances/{name}"))
            .await
            .with_context(|| format!("removing instance {name:?}"))?;
    }
    let deadline = Instant::now() + INSTANCES_GONE_TIMEOUT;
    let mut delay = Duration::from_millis(20);
    loop {
        let left = names_of::<Instance>(client, project).await?;
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "instances of project {project:?} still being deleted after {} s: {}; see `nimbus instance list --project {project}` and run `nimbus project rm {project} --force` again",
                INSTANCES_GONE_TIMEOUT.as_secs(),
                left.join(", ")
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
    remove_security_groups(client, project).await?;
    for name in names_of::<Network>(client, project).await? {
        delete_if_present(client, &format!("{base}/networks/{name}"))
            .await
            .with_context(|| format!("removing network {name:?}"))?;
    }
    for name in names_of::<Image>(client, project).await? {
        delete_if_present(client, &format!("{base}/images/{name}"))
            .await
            .with_context(|| format!("removing image {name:?}"))?;
    }
    // A volume goes once its host removed the data.
    for name in names_of::<nimbus_api::Volume>(client, project).await? {
        delete_if_present(client, &format!("{base}/volumes/{name}"))
            .await
            .with_context(|| format!("removing volume {name:?}"))?;
    }
    let deadline = Instant::now() + INSTANCES_GONE_TIMEOUT;
    loop {
        let left = names_of::<nimbus_api::Volume>(client, project).await?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "volumes of project {project:?} still being deleted after {} s: {}; is the agent of their host running? See `nimbus volume list --project {project}`",
                INSTANCES_GONE_TIMEOUT.as_secs(),
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A group named as the source of another group's rule cannot be deleted
/// first: delete in rounds, and when a round makes no progress (groups
/// naming each other), drop the rules that name groups and go on.
async fn remove_security_groups(client: &Client, project: &str) -> anyhow::Result<()> {
    let base = format!("/v1/projects/{project}/secgroups");
    let mut rules_cleared = false;
    loop {
        let left = names_of::<SecurityGroup>(client, project).await?;
        if left.is_empty() {
            return Ok(());
        }
        let mut progress = false;
        let mut last_error = None;
        for name in &left {
            match delete_if_present(client, &format!("{base}/{name}")).await {
                Ok(()) => progress = true,
                Err(e) if e.code() == Some(ErrorCode::Conflict) => last_error = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("removing security group {name:?}"))
                }
            }
        }
        if progress {
            continue;
        }
        if rules_cleared {
            let e = last_error.map(|e| e.to_string()).unwrap_or_default();
            anyhow::bail!("security groups of project {project:?} cannot be removed: {e}");
        }
        for name in &left {
            let path = format!("{base}/{name}");
            let mut group: SecurityGroup = client.get(&path).await?;
            group.spec.rules.retain(|r| r.group.is_none());
            let _: SecurityGroup = client
                .put(&path, &group)
                .await
                .with_context(|| format!("dropping the group rules of security group {name:?}"))?;
        }
        rules_cleared = true;
    }
}
