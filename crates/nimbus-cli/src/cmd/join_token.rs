//! `nimbus host join-token`: one-time tokens new hosts join with.

use clap::Subcommand;
use nimbus_api::client::Method;
use nimbus_api::{CreateJoinToken, JoinToken, JoinTokenCreated, ResourceList};

use crate::ctx::Globals;
use crate::output::{print, table};

#[derive(Subcommand)]
pub enum JoinTokenCmd {
    /// Make a one-time token a new host's agent joins with (system
    /// administrators); printed once, with the server CA's SHA-256 in it.
    #[command(
        after_help = "Examples:\n  nimbus host join-token create --ttl 30m\n  nimbus host join-token create --host node7 -o json"
    )]
    Create {
        /// How long it stays usable, e.g. 10m, 1h, 24h (at most 24h).
        #[arg(long, default_value = "1h", value_parser = nimbus_api::units::parse_duration_secs)]
        ttl: u64,
        /// Only an agent joining as this host name may use it.
        #[arg(long)]
        host: Option<String>,
    },
    /// Unused join tokens, without their secrets.
    #[command(alias = "ls")]
    List,
    /// Revoke an unused join token.
    #[command(alias = "delete")]
    Rm { id: String },
}

pub async fn run(g: &Globals, cmd: JoinTokenCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    match cmd {
        JoinTokenCmd::Create { ttl, host } => {
            let req = CreateJoinToken {
                ttl_secs: Some(ttl),
                host,
            };
            let created: JoinTokenCreated = client.post("/v1/hosts/join-tokens", &req).await?;
            print(g, &created, || created_text(&created))
        }
        JoinTokenCmd::List => {
            let l: ResourceList<JoinToken> = client.list_all("/v1/hosts/join-tokens").await?;
            print(g, &l, || rows(&l.items))
        }
        JoinTokenCmd::Rm { id } => {
            let path = format!("/v1/hosts/join-tokens/{id}");
            client.request_bytes(Method::DELETE, &path, None).await?;
            print(g, &serde_json::json!({"deleted": id}), || {
                format!("join token {id} revoked")
            })
        }
    }
}

fn created_text(c: &JoinTokenCreated) -> String {
    let t = &c.join_token;
    let host = t
        .spec
        .host
        .as_deref()
        .map(|h| format!(", for host {h:?} only"))
        .unwrap_or_default();
    format!(
        "join token {} (one use, until {}{host}; shown once):\n{}\n\nserver CA: sha256:{}\non the new host: nimbus agent --server https://<server>:7443 --join {}",
        t.metadata.name,
        t.spec.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
        c.token,
        t.spec.ca_sha256,
        c.token
    )
}

fn rows(items: &[JoinToken]) -> String {
    let now = chrono::Utc::now();
    table(
        &["id", "host", "expires", "state"],
        items
            .iter()
            .map(|t| {
                vec![
                    t.metadata.name.clone(),
                    t.spec.host.clone().unwrap_or_else(|| "-".into()),
                    t.spec.expires_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    if t.spec.expires_at < now {
                        "expired"
                    } else {
                        "usable"
                    }
                    .to_string(),
                ]
            })
            .collect(),
    )
}
