//! Recording events: what `domain::events` drafts becomes store writes
//! (`/events/<project>/<unix-nanos>-<id>`), applied in the same store
//! transaction as the change they describe, so a control-plane restart
//! neither loses nor repeats one. Read through `api/events.rs`; kept
//! bounded by `retention.rs`.

pub mod retention;

use chrono::{DateTime, Utc};
use nimbus_api::{Event, Instance};
use nimbus_store::Op;

use crate::domain::events::{self as domain, EventDraft};
use crate::error::ApiResult;
use crate::repo;

/// Every event of every project lives under this prefix.
pub const PREFIX: &str = "/events/";

/// The store writes of `drafts`, events of `project` at `now`.
pub fn ops(project: &str, drafts: Vec<EventDraft>, now: DateTime<Utc>) -> ApiResult<Vec<Op>> {
    domain::build(project, drafts, now)
        .into_iter()
        .map(|e| {
            Ok(Op::Put {
                key: repo::key::<Event>(Some(project), &e.metadata.name),
                value: repo::encode(&e)?,
            })
        })
        .collect()
}

/// The events of an instance's change from `before` to `after`, as writes
/// to apply with it.
pub fn instance_change(before: &Instance, after: &Instance) -> ApiResult<Vec<Op>> {
    let drafts = domain::instance_transitions(before, after);
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    let project = after.metadata.project.as_deref().unwrap_or_default();
    ops(project, drafts, Utc::now())
}

/// The `deleted` event of an instance, as a write to apply with its removal.
pub fn instance_deleted(instance: &Instance) -> ApiResult<Vec<Op>> {
    let project = instance.metadata.project.as_deref().unwrap_or_default();
    ops(
        project,
        vec![domain::instance_deleted(instance)],
        Utc::now(),
    )
}

/// Change an instance with `change` and record the events (and the usage
/// intervals, `crate::usage`) of that change in the same store write.
pub async fn modify_instance<F>(
    repo: &repo::Repo,
    project: Option<&str>,
    name: &str,
    mut change: F,
) -> ApiResult<Instance>
where
    F: FnMut(&mut Instance) -> ApiResult<()>,
{
    repo.modify_with::<Instance, _>(project, name, |i| {
        let before = i.clone();
        change(i)?;
        let mut ops = instance_change(&before, i)?;
        ops.extend(crate::usage::instance_change(&before, i)?);
        Ok(ops)
    })
    .await
}
