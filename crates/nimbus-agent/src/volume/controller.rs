//! Converges the volumes bound to this host: list and watch `/v1/volumes`,
//! and for each volume whose `spec.host` is this host, run the plan's
//! actions on the backend and report what the backend then observes.
//! Level-triggered: a re-list (on a watch end and every 15 s) repeats
//! whatever an earlier pass did not finish.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nimbus_api::client::ClientError;
use nimbus_api::{
    ResourceList, SnapshotConsistency, Volume, VolumePhase, VolumeStatus, WatchEvent,
    WatchEventType,
};

use super::grow::{grow, pending_fs_growth};
use super::holder::HolderLookup;
use super::plan::{plan, Action};
use super::quiesce::quiesce;
use super::{VolumeBackend, VolumeError};
use crate::agent::Agent;

/// What the controller changes volumes with: the backend keeping their
/// data, and who holds them open (snapshots of held volumes go through
/// the holder).
#[derive(Clone)]
pub struct Volumes {
    pub backend: Arc<dyn VolumeBackend>,
    pub holders: Arc<dyn HolderLookup>,
}

/// Watch and converge forever.
pub async fn run(agent: Arc<Agent>, volumes: Volumes) {
    loop {
        if let Err(e) = watch_once(&agent, &volumes).await {
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

async fn watch_once(agent: &Arc<Agent>, volumes: &Volumes) -> Result<(), ClientError> {
    let list: ResourceList<Volume> = agent.client.list_all("/v1/volumes").await?;
    // Every project's volumes by `project/name`: a clone finds its source.
    let mut known: HashMap<String, Volume> =
        list.items.iter().map(|v| (pkey(v), v.clone())).collect();
    for v in &list.items {
        converge(agent, volumes, v, &known).await;
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
                        converge(agent, volumes, &v, &known).await;
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
    volumes: &Volumes,
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
    let volumes = volumes.clone();
    let v = volume.clone();
    let outcome = tokio::task::spawn_blocking(move || apply(&volumes, &v, source_id))
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

/// A snapshot of a detached volume, or of a held one through its holder
/// with its filesystem frozen for the moment it takes (thawed on every
/// path when `quiet` drops); says how consistent the snapshot is.
fn take_snapshot(
    backend: &dyn VolumeBackend,
    holders: &dyn HolderLookup,
    id: &str,
    name: &str,
) -> Result<SnapshotConsistency, VolumeError> {
    let holder = holders.holder(id);
    let quiet = holder
        .as_ref()
        .map(|h| quiesce(&h.quiesce, id))
        .transpose()?;
    backend.snapshot(id, name, holder.as_ref())?;
    Ok(quiet.map_or(SnapshotConsistency::Detached, |q| q.consistency()))
}

/// The consistency of each snapshot that exists: what earlier passes
/// recorded, plus what this one took.
fn consistency_of(
    before: &BTreeMap<String, SnapshotConsistency>,
    taken: Vec<(String, SnapshotConsistency)>,
    existing: &[String],
) -> BTreeMap<String, SnapshotConsistency> {
    before
        .clone()
        .into_iter()
        .chain(taken)
        .filter(|(name, _)| existing.contains(name))
        .collect()
}

/// Blocking: observe, act, observe again; the status says what exists.
fn apply(volumes: &Volumes, volume: &Volume, source_id: Option<String>) -> VolumeStatus {
    let backend = volumes.backend.as_ref();
    let holders = volumes.holders.as_ref();
    let id = &volume.metadata.id;
    let deleting = volume.metadata.deletion_requested_at.is_some();
    let mut taken = Vec::new();
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
                Action::Grow { size_bytes } => grow(backend, holders, id, size_bytes)?,
                Action::Snapshot { name } => {
                    let consistency = take_snapshot(backend, holders, id, &name)?;
                    taken.push((name, consistency));
                }
                Action::DeleteSnapshot { name } => {
                    backend.delete_snapshot(id, &name, holders.holder(id).as_ref())?
                }
                Action::Delete => backend.delete(id)?,
            }
        }
        Ok(())
    })();
    // A container's filesystem that waits for its next mount to grow.
    let note = match (&result, deleting) {
        (Ok(()), false) => pending_fs_growth(holders, id),
        _ => None,
    };
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
                message: error.or(note),
                size_bytes: o.size_bytes,
                allocated_bytes: o.allocated_bytes,
                snapshot_consistency: consistency_of(
                    &volume.status.snapshot_consistency,
                    taken,
                    &o.snapshots,
                ),
                snapshots: o.snapshots,
                location,
                finalized: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::holder::{Holder, Quiesce};
    use super::super::plan::tests::{observed, volume};
    use super::super::{AttachInfo, Observed};
    use super::*;
    use std::sync::Mutex;

    /// Keeps one volume in memory and records what was asked of it.
    struct Recorder {
        now: Mutex<Observed>,
        calls: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn new(o: Observed) -> Recorder {
            Recorder {
                now: Mutex::new(o),
                calls: Mutex::new(Vec::new()),
            }
        }
        fn call(&self, c: String) {
            self.calls.lock().expect("calls").push(c);
        }
    }

    fn via(holder: Option<&Holder>) -> String {
        holder.map_or("qemu-img".into(), |h| h.node_name.clone())
    }

    impl VolumeBackend for Recorder {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn inspect(&self, _: &str) -> Result<Option<Observed>, VolumeError> {
            Ok(Some(self.now.lock().expect("now").clone()))
        }
        fn create(&self, _: &str, _: u64) -> Result<(), VolumeError> {
            unreachable!("the volume exists")
        }
        fn clone_from_snapshot(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: u64,
        ) -> Result<(), VolumeError> {
            unreachable!("the volume exists")
        }
        fn resize(&self, _: &str, size_bytes: u64, h: Option<&Holder>) -> Result<(), VolumeError> {
            self.call(format!("resize {size_bytes} via {}", via(h)));
            self.now.lock().expect("now").size_bytes = size_bytes;
            Ok(())
        }
        fn snapshot(&self, _: &str, s: &str, h: Option<&Holder>) -> Result<(), VolumeError> {
            self.call(format!("snapshot {s} via {}", via(h)));
            self.now.lock().expect("now").snapshots.push(s.to_string());
            Ok(())
        }
        fn delete_snapshot(&self, _: &str, s: &str, h: Option<&Holder>) -> Result<(), VolumeError> {
            self.call(format!("delete {s} via {}", via(h)));
            self.now.lock().expect("now").snapshots.retain(|x| x != s);
            Ok(())
        }
        fn delete(&self, _: &str) -> Result<(), VolumeError> {
            unreachable!("not deleted")
        }
        fn attach_info(&self, _: &str) -> AttachInfo {
            AttachInfo {
                driver: "fake",
                path: None,
                blockdev: serde_json::Value::Null,
            }
        }
    }

    struct HeldBy(Option<Holder>);

    impl HolderLookup for HeldBy {
        fn holder(&self, _: &str) -> Option<Holder> {
            self.0.clone()
        }
    }

    fn volumes(backend: Arc<Recorder>, holder: Option<Holder>) -> Volumes {
        Volumes {
            backend,
            holders: Arc::new(HeldBy(holder)),
        }
    }

    #[test]
    fn a_held_volume_is_snapshotted_and_grown_through_its_holder() {
        let backend = Arc::new(Recorder::new(observed(16 << 20, &["old"])));
        let held = Holder {
            qmp_socket: "/nowhere/qmp.sock".into(),
            node_name: "vol-x".into(),
            quiesce: Quiesce::None,
        };
        let status = apply(
            &volumes(backend.clone(), Some(held)),
            &volume(32 << 20, &["new"], None),
            None,
        );
        assert_eq!(
            *backend.calls.lock().expect("calls"),
            [
                "delete old via vol-x",
                "snapshot new via vol-x",
                "resize 33554432 via vol-x"
            ]
        );
        assert_eq!(status.phase, VolumePhase::Available, "{status:?}");
        assert_eq!(status.size_bytes, 32 << 20);
        assert_eq!(status.snapshots, ["new"]);
        assert_eq!(
            status.snapshot_consistency,
            BTreeMap::from([("new".into(), SnapshotConsistency::CrashConsistent)]),
            "held with nothing to freeze: said to be crash-consistent"
        );

        // Detached: the same plan goes through the backend's own tools.
        let backend = Arc::new(Recorder::new(observed(16 << 20, &["old"])));
        let status = apply(
            &volumes(backend.clone(), None),
            &volume(32 << 20, &["new"], None),
            None,
        );
        assert_eq!(
            *backend.calls.lock().expect("calls"),
            [
                "delete old via qemu-img",
                "snapshot new via qemu-img",
                "resize 33554432 via qemu-img"
            ]
        );
        assert_eq!(status.phase, VolumePhase::Available);
        assert_eq!(
            status.snapshot_consistency,
            BTreeMap::from([("new".into(), SnapshotConsistency::Detached)])
        );
    }

    #[test]
    fn recorded_consistency_stays_for_snapshots_that_exist_only() {
        let before = BTreeMap::from([
            ("kept".to_string(), SnapshotConsistency::GuestFrozen),
            ("gone".to_string(), SnapshotConsistency::HostFrozen),
        ]);
        let now = consistency_of(
            &before,
            vec![("new".into(), SnapshotConsistency::CrashConsistent)],
            &["kept".into(), "new".into()],
        );
        assert_eq!(
            now,
            BTreeMap::from([
                ("kept".into(), SnapshotConsistency::GuestFrozen),
                ("new".into(), SnapshotConsistency::CrashConsistent),
            ])
        );
    }
}
