//! Converges the volumes bound to this host: list and watch `/v1/volumes`,
//! and for each volume whose `spec.host` is this host, run the plan's
//! actions on the backend and report what the backend then observes.
//! Level-triggered: a re-list (on a watch end and every 15 s) repeats
//! whatever an earlier pass did not finish.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nimbus_api::client::ClientError;
use nimbus_api::{ResourceList, Volume, VolumePhase, VolumeStatus, WatchEvent, WatchEventType};

use super::plan::{plan, Action};
use super::{VolumeBackend, VolumeError};
use crate::agent::Agent;

/// Watch and converge forever.
pub async fn run(agent: Arc<Agent>, backend: Arc<dyn VolumeBackend>) {
    loop {
        if let Err(e) = watch_once(&agent, &backend).await {
            tracing::debug!(error = %e, "volume watch ended; re-listing");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pkey(v: &Volume) -> String {
    format!(
        "{}/{}",
        v.metadata.project.as_deref().unwrap_or_default(),
        v.metadata.name
    )
}

async fn watch_once(
    agent: &Arc<Agent>,
    backend: &Arc<dyn VolumeBackend>,
) -> Result<(), ClientError> {
    let list: ResourceList<Volume> = agent.client.list_all("/v1/volumes").await?;
    // Every project's volumes by `project/name`: a clone finds its source.
    let mut known: HashMap<String, Volume> =
        list.items.iter().map(|v| (pkey(v), v.clone())).collect();
    for v in &list.items {
        converge(agent, backend, v, &known).await;
    }
    let mut events = Box::pin(
        agent
            .client
            .watch_lines::<WatchEvent<Volume>>(&format!(
                "/v1/volumes?watch=true&revision={}",
                list.revision
            ))
            .await?,
    );
    let mut resync = tokio::time::interval(Duration::from_secs(15));
    resync.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { return Ok(()) };
                let ev = ev?;
                match (ev.event_type, ev.object) {
                    (WatchEventType::Added | WatchEventType::Modified, Some(v)) => {
                        known.insert(pkey(&v), v.clone());
                        converge(agent, backend, &v, &known).await;
                    }
                    (WatchEventType::Deleted, Some(v)) => {
                        known.remove(&pkey(&v));
                    }
                    (WatchEventType::Error, _) => return Ok(()),
                    _ => {}
                }
            }
            _ = resync.tick() => return Ok(()),
        }
    }
}

/// Run the plan for one volume of this host and report the outcome.
async fn converge(
    agent: &Arc<Agent>,
    backend: &Arc<dyn VolumeBackend>,
    volume: &Volume,
    known: &HashMap<String, Volume>,
) {
    if volume.spec.host.as_deref() != Some(agent.config.host_name.as_str()) {
        return;
    }
    let project = volume.metadata.project.clone().unwrap_or_default();
    // A clone's source, by id, resolved here where the watch knows it.
    let source_id = volume
        .spec
        .from_snapshot
        .as_deref()
        .and_then(|s| s.split_once('@'))
        .and_then(|(v, _)| known.get(&format!("{project}/{v}")))
        .filter(|v| v.spec.host == volume.spec.host)
        .map(|v| v.metadata.id.clone());
    let backend = backend.clone();
    let v = volume.clone();
    let outcome = tokio::task::spawn_blocking(move || apply(backend.as_ref(), &v, source_id))
        .await
        .unwrap_or_else(|e| VolumeStatus {
            phase: VolumePhase::Error,
            message: Some(format!("the volume task failed: {e}")),
            ..Default::default()
        });
    if outcome == volume.status && !outcome.finalized {
        return;
    }
    let path = format!(
        "/v1/projects/{project}/volumes/{}/status",
        volume.metadata.name
    );
    if let Err(e) = agent.client.post::<_, Volume>(&path, &outcome).await {
        tracing::warn!(volume = %volume.metadata.name, project = %project, error = %e, "reporting a volume's status failed");
    }
}

/// Blocking: observe, act, observe again; the status says what exists.
fn apply(backend: &dyn VolumeBackend, volume: &Volume, source_id: Option<String>) -> VolumeStatus {
    let id = &volume.metadata.id;
    let deleting = volume.metadata.deletion_requested_at.is_some();
    let result = (|| -> Result<(), VolumeError> {
        let observed = backend.inspect(id)?;
        for action in plan(volume, observed.as_ref()) {
            tracing::info!(volume = %volume.metadata.name, volume_id = %id, ?action, "changing a volume");
            match action {
                Action::Create { size_bytes } => backend.create(id, size_bytes)?,
                Action::CloneFrom {
                    source_volume,
                    snapshot,
                    size_bytes,
                } => {
                    let source = source_id.as_deref().ok_or_else(|| VolumeError::NoSource {
                        source_name: source_volume.clone(),
                    })?;
                    backend.clone_from_snapshot(id, source, &snapshot, size_bytes)?
                }
                Action::Grow { size_bytes } => backend.resize(id, size_bytes)?,
                Action::Snapshot { name } => backend.snapshot(id, &name)?,
                Action::DeleteSnapshot { name } => backend.delete_snapshot(id, &name)?,
                Action::Delete => backend.delete(id)?,
            }
        }
        Ok(())
    })();
    let observed = backend.inspect(id);
    let location = backend
        .attach_info(id)
        .path
        .map(|p| p.to_string_lossy().into_owned());
    let error = match (&result, &observed) {
        (Err(e), _) | (Ok(()), Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let observed = observed.ok().flatten();
    match (error, observed) {
        (None, None) if deleting => VolumeStatus {
            phase: VolumePhase::Deleting,
            finalized: true,
            ..Default::default()
        },
        (None, None) => VolumeStatus {
            phase: VolumePhase::Error,
            message: Some(format!(
                "the {} backend made no data for the volume",
                backend.name()
            )),
            ..Default::default()
        },
        (error, o) => {
            let o = o.unwrap_or_default();
            let phase = match (&error, deleting) {
                (Some(_), _) => VolumePhase::Error,
                (None, true) => VolumePhase::Deleting,
                (None, false) => VolumePhase::Available,
            };
            VolumeStatus {
                phase,
                message: error,
                size_bytes: o.size_bytes,
                allocated_bytes: o.allocated_bytes,
                snapshots: o.snapshots,
                location,
                finalized: false,
            }
        }
    }
}
