//! `nimbus project ...`

use clap::Subcommand;
use nimbus_api::{CreateRequest, Project, ProjectSpec, ResourceList};

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
    /// Show one project.
    Get { name: String },
    /// Delete an empty project.
    #[command(alias = "delete")]
    Rm { name: String },
}

fn rows(items: &[Project]) -> String {
    table(
        &["name", "description", "age"],
        items
            .iter()
            .map(|p| {
                vec![
                    p.metadata.name.clone(),
                    p.spec.description.clone(),
                    age(Some(p.metadata.created_at)),
                ]
            })
            .collect(),
    )
}

pub async fn run(g: &Globals, cmd: ProjectCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    match cmd {
        ProjectCmd::Create { name, description } => {
            let req = CreateRequest {
                name,
                labels: Default::default(),
                spec: ProjectSpec { description },
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
