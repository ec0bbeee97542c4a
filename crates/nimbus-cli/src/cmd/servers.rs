//! `nimbus server list`: the servers sharing the store and the leader.

use nimbus_api::ServerList;

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
                s.record.version.clone(),
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
