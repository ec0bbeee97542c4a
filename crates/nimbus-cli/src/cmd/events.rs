//! `nimbus events`: what happened in a project (instances scheduled,
//! started, exited, restarted, failed, stopped, deleted; hosts
//! unreachable), newest first, or followed as it happens.

use clap::Args;
use futures::StreamExt;
use nimbus_api::client::query_escape;
use nimbus_api::{Event, ResourceList, WatchEvent, WatchEventType};

use crate::ctx::Globals;
use crate::output::{print, table};

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events as they happen (oldest first), after the
    /// latest `--limit` ones.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Events per page (with --follow: how many earlier ones to show first).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Continue a listing from the token its previous page printed.
    #[arg(long = "continue", conflicts_with = "follow")]
    pub continue_token: Option<String>,
}

fn object(e: &Event) -> String {
    format!("{}/{}", e.object.kind, e.object.name)
}

fn time(e: &Event) -> String {
    e.metadata
        .created_at
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn row(e: &Event) -> Vec<String> {
    vec![
        time(e),
        e.event_type.as_str().to_string(),
        object(e),
        e.message.clone(),
    ]
}

const HEADERS: [&str; 4] = ["time", "type", "object", "message"];

/// One followed event as a line: fixed columns for people, JSON for scripts.
fn follow_line(g: &Globals, e: &Event) -> anyhow::Result<String> {
    if g.json() {
        return Ok(serde_json::to_string(e)?);
    }
    Ok(format!(
        "{:<19}  {:<16}  {:<24}  {}",
        time(e),
        e.event_type.as_str(),
        object(e),
        e.message
    ))
}

pub async fn run(g: &Globals, args: EventsArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let base = format!("/v1/projects/{}/events", query_escape(&g.project));
    let mut q = vec![format!("limit={}", args.limit.unwrap_or(100))];
    if let Some(token) = &args.continue_token {
        q.push(format!("continue={}", query_escape(token)));
    }
    let page: ResourceList<Event> = client.get(&format!("{base}?{}", q.join("&"))).await?;
    if !args.follow {
        print(g, &page, || {
            table(&HEADERS, page.items.iter().map(row).collect())
        })?;
        if let (false, Some(token)) = (g.json(), &page.continue_token) {
            eprintln!(
                "older events: run nimbus events --project {} --continue {token}",
                g.project
            );
        }
        return Ok(());
    }
    if !g.json() {
        crate::outln!("{:<19}  {:<16}  {:<24}  MESSAGE", "TIME", "TYPE", "OBJECT")?;
    }
    for e in page.items.iter().rev() {
        crate::outln!("{}", follow_line(g, e)?)?;
    }
    let mut revision = page.revision;
    loop {
        let path = format!("{base}?watch=true&revision={revision}");
        let mut stream = Box::pin(client.watch_lines::<WatchEvent<Event>>(&path).await?);
        let mut relist = false;
        while let Some(item) = stream.next().await {
            let ev = item?;
            match ev.event_type {
                WatchEventType::Added => {
                    revision = revision.max(ev.revision);
                    if let Some(e) = &ev.object {
                        crate::outln!("{}", follow_line(g, e)?)?;
                    }
                }
                WatchEventType::Modified | WatchEventType::Deleted => {
                    // Events change only when pruned.
                    revision = revision.max(ev.revision);
                }
                WatchEventType::Error => {
                    relist = true;
                    break;
                }
            }
        }
        if relist {
            // History is gone: start again from now; events in between
            // are in `nimbus events`.
            let page: ResourceList<Event> = client.get(&format!("{base}?limit=1")).await?;
            revision = page.revision;
            eprintln!("the watch fell behind; some events may be missing here: list them with `nimbus events`");
        }
    }
}
