//! `nimbus server list`: the servers sharing the store and the leader;
//! `nimbus version`: this client's and the answering server's versions.

use nimbus_api::{BuildVersion, ServerList, ServerVersion};

use crate::cmd::up::ServerAction;
use crate::ctx::Globals;
use crate::output::{age, print, table};

pub async fn run(g: &Globals, action: ServerAction) -> anyhow::Result<()> {
    let client = g.client()?;
    match action {
        ServerAction::List => {
            let list: ServerList = client.get("/v1/servers").await?;
            print(g, &list, || server_rows(&list))
        }
    }
}

fn server_rows(list: &ServerList) -> String {
    let rows = list
        .items
        .iter()
        .map(|s| {
            vec![
                s.record.name.clone(),
                if s.leader { "leader" } else { "follower" }.to_string(),
                s.record.endpoint.clone(),
                version_cell(&s.record.version, s.record.protocol),
                age(Some(s.record.started_at)),
            ]
        })
        .collect();
    let mut out = table(&["name", "role", "endpoint", "version", "started"], rows);
    if list.leader.is_none() {
        out.push_str("\n\nno leader at the moment: an election is under way (the scheduler and controllers wait for it)");
    }
    out
}

/// A release and protocol level in one table cell: `0.1.0/p1`.
pub fn version_cell(release: &str, protocol: u32) -> String {
    match release {
        "" => "-".to_string(),
        r => format!("{r}/p{protocol}"),
    }
}

/// `nimbus version -o json`.
#[derive(serde::Serialize)]
struct Versions {
    client: BuildVersion,
    server: ServerVersion,
}

/// `nimbus version`: this client's release and protocol level, and the
/// answering server's with the agent levels it accepts.
pub async fn version(g: &crate::ctx::Globals) -> anyhow::Result<()> {
    let client = BuildVersion::current();
    let server: ServerVersion = g.client()?.get("/v1/version").await.map_err(|e| {
        anyhow::anyhow!(
            "this client is nimbus {client}; asking the server for its version failed: {e}"
        )
    })?;
    let both = Versions { client, server };
    print(g, &both, || {
        let s = &both.server;
        format!(
            "client: nimbus {}\nserver: nimbus {} ({}); accepts agents at protocol {} to {}",
            both.client, s.build, s.server, s.min_agent_protocol, s.max_agent_protocol
        )
    })
}
