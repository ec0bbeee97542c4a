//! Usage metering: which usage intervals a change to an instance or an
//! image opens or closes. Like `domain::events`, the stored object before
//! and after a write are compared, so every path that changes an instance
//! (an agent's report, the scheduler, the host liveness check, a deletion)
//! meters it the same way, and the records are written in the same store
//! transaction as the change. A record's name is its start time and the
//! object's id, so a write retried or repeated after a control-plane
//! restart puts the same key again instead of counting twice.
//!
//! An instance is metered while its workload runs: from the `started_at`
//! the agent reports to its `finished_at` (or, when the end was not
//! reported, the time the server learnt of it: a host unreachable, a
//! deletion). An image is metered from its import to its deletion. An S3
//! object version is metered from its Last-Modified second (what S3
//! clients see) to the second it was overwritten (the new version's
//! Last-Modified) or deleted; see [`object_record`].
//! `aggregate.rs` turns the records into hours.

pub mod aggregate;

use chrono::{DateTime, Utc};
use nimbus_api::{Image, Instance, InstanceKind, InstancePhase, Volume};
use serde::{Deserialize, Serialize};

/// Memory of a VM or unikernel without a limit: the agent's defaults
/// (`nimbus-agent/src/vm/prepare.rs`), which is what QEMU is given.
const DEFAULT_VM_MEMORY_BYTES: u64 = 512 << 20;
const DEFAULT_UNIKERNEL_MEMORY_BYTES: u64 = 64 << 20;

/// What a usage record meters.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Metered {
    Container,
    Vm,
    Unikernel,
    /// Stored image bytes.
    Image,
    /// Stored S3 object bytes (one version of one object).
    Object,
    /// Block volume bytes (its size plus its snapshots').
    Volume,
}

impl From<InstanceKind> for Metered {
    fn from(kind: InstanceKind) -> Self {
        match kind {
            InstanceKind::Container => Metered::Container,
            InstanceKind::Vm => Metered::Vm,
            InstanceKind::Unikernel => Metered::Unikernel,
        }
    }
}

/// One interval of usage: an instance running, or an image stored. Open
/// while `end` is `None`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageRecord {
    pub project: String,
    pub metered: Metered,
    /// The instance's or image's name, for people reading the store.
    pub name: String,
    /// The instance's or image's id: a name reused later is another record.
    pub id: String,
    pub start: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// Thousandths of a vCPU the instance has.
    #[serde(default)]
    pub vcpu_millis: u64,
    /// Memory the instance has.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Bytes an image or object stores.
    #[serde(default)]
    pub storage_bytes: u64,
}

/// Nanoseconds since the epoch (0 before it; none of ours are).
pub fn unix_nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or_default().max(0)
}

impl UsageRecord {
    /// `<start unix-nanos, 20 digits>-<id>`: the same interval always has
    /// the same name, and name order is start order.
    pub fn record_name(&self) -> String {
        format!("{:020}-{}", unix_nanos(self.start), self.id)
    }
}

/// A VM's vCPUs (1 when unset); a container's CPU limit (1 CPU when
/// unlimited: it may use one at least).
fn vcpu_millis(i: &Instance) -> u64 {
    match i.spec.kind {
        InstanceKind::Container => i.spec.resources.cpu_millis.unwrap_or(1000),
        InstanceKind::Vm | InstanceKind::Unikernel => {
            u64::from(i.spec.vm.as_ref().and_then(|v| v.vcpus).unwrap_or(1)) * 1000
        }
    }
}

/// The memory limit; a VM without one gets the agent's default; a
/// container without one reserves nothing (as the scheduler counts it).
fn memory_bytes(i: &Instance) -> u64 {
    i.spec.resources.memory_bytes.unwrap_or(match i.spec.kind {
        InstanceKind::Container => 0,
        InstanceKind::Vm => DEFAULT_VM_MEMORY_BYTES,
        InstanceKind::Unikernel => DEFAULT_UNIKERNEL_MEMORY_BYTES,
    })
}

fn instance_record(i: &Instance, start: DateTime<Utc>, end: Option<DateTime<Utc>>) -> UsageRecord {
    UsageRecord {
        project: i.metadata.project.clone().unwrap_or_default(),
        metered: i.spec.kind.into(),
        name: i.metadata.name.clone(),
        id: i.metadata.id.clone(),
        start,
        end,
        vcpu_millis: vcpu_millis(i),
        memory_bytes: memory_bytes(i),
        storage_bytes: 0,
    }
}

/// The workload began at `started_at` and has not finished since.
fn unfinished(i: &Instance) -> Option<DateTime<Utc>> {
    let started = i.status.started_at?;
    match i.status.finished_at {
        Some(f) if f >= started => None,
        _ => Some(started),
    }
}

/// When the metered run of `i` began, if it is running: running or paused
/// (its resources stay held), or stopping or being deleted while the
/// workload has not finished yet. An agent reports `started_at` with
/// every running status; without it the creation time keeps the key
/// stable across writes.
pub fn running_since(i: &Instance) -> Option<DateTime<Utc>> {
    use InstancePhase as P;
    match i.status.phase {
        P::Running | P::Paused => Some(i.status.started_at.unwrap_or(i.metadata.created_at)),
        P::Stopping | P::Deleting => unfinished(i),
        _ => None,
    }
}

/// When the run that began at `start` ended, as `after` tells it: its
/// `finished_at` when that is this run's, else the start of a later run,
/// else `now` (the end was not reported: a host unreachable, a deletion).
fn end_of_run(after: &Instance, start: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    let end = match after.status.started_at {
        Some(s) if s == start => after.status.finished_at.filter(|f| *f >= start),
        Some(later) if later > start => Some(later),
        _ => None,
    };
    end.unwrap_or(now).max(start)
}

/// The usage records an instance's change from `before` to `after` writes,
/// at `now`: the run `before` had is closed when it is not `after`'s, and
/// `after`'s run is opened when it is new. A run that began and ended
/// between two writes (an exit reported before running was) is written
/// closed. A repeated report writes nothing.
pub fn instance_transitions(
    before: &Instance,
    after: &Instance,
    now: DateTime<Utc>,
) -> Vec<UsageRecord> {
    use InstancePhase as P;
    let was = running_since(before);
    let is = running_since(after);
    let mut out = Vec::new();
    if let Some(start) = was {
        if is != Some(start) {
            out.push(instance_record(
                before,
                start,
                Some(end_of_run(after, start, now)),
            ));
        }
    }
    match is {
        Some(start) if was != Some(start) => out.push(instance_record(after, start, None)),
        Some(_) => {}
        None => {
            let ended = matches!(
                after.status.phase,
                P::Exited | P::Backoff | P::Failed | P::Stopped
            );
            if let (true, Some(start), Some(end)) =
                (ended, after.status.started_at, after.status.finished_at)
            {
                let seen = was == Some(start) || before.status.started_at == Some(start);
                if !seen && end >= start {
                    out.push(instance_record(after, start, Some(end)));
                }
            }
        }
    }
    out
}

/// The record an instance's removal closes, if it was still running.
pub fn instance_deleted(instance: &Instance, now: DateTime<Utc>) -> Option<UsageRecord> {
    let start = running_since(instance)?;
    Some(instance_record(
        instance,
        start,
        Some(end_of_run(instance, start, now)),
    ))
}

fn image_record(image: &Image, end: Option<DateTime<Utc>>) -> UsageRecord {
    UsageRecord {
        project: image.metadata.project.clone().unwrap_or_default(),
        metered: Metered::Image,
        name: image.metadata.name.clone(),
        id: image.metadata.id.clone(),
        start: image.metadata.created_at,
        end,
        vcpu_millis: 0,
        memory_bytes: 0,
        storage_bytes: image.status.size_bytes,
    }
}

/// An image stored (its bytes), from its creation time.
pub fn image_created(image: &Image) -> UsageRecord {
    image_record(image, None)
}

/// An image's removal at `now` closes its record.
pub fn image_deleted(image: &Image, now: DateTime<Utc>) -> UsageRecord {
    image_record(image, Some(now.max(image.metadata.created_at)))
}

/// A volume's counted bytes (size plus snapshots) kept from its
/// `counted_since` (or creation) until `end` (`None`: still kept).
fn volume_record(volume: &Volume, end: Option<DateTime<Utc>>) -> UsageRecord {
    let start = volume
        .spec
        .counted_since
        .unwrap_or(volume.metadata.created_at);
    UsageRecord {
        project: volume.metadata.project.clone().unwrap_or_default(),
        metered: Metered::Volume,
        name: volume.metadata.name.clone(),
        id: volume.metadata.id.clone(),
        start,
        end: end.map(|e| e.max(start)),
        vcpu_millis: 0,
        memory_bytes: 0,
        storage_bytes: volume.counted_bytes(),
    }
}

/// A volume recorded (its size), from its creation time.
pub fn volume_created(volume: &Volume) -> UsageRecord {
    volume_record(volume, None)
}

/// A volume changed from `before` to `after` at `now`: when the bytes it
/// counts changed, the old size's record closes and the new one opens at
/// `now`, which `after` keeps as its `counted_since`.
pub fn volume_changed(before: &Volume, after: &mut Volume, now: DateTime<Utc>) -> Vec<UsageRecord> {
    if before.counted_bytes() == after.counted_bytes() {
        return Vec::new();
    }
    let closed = volume_record(before, Some(now));
    // Never before the closed record's start, so the two never overlap.
    after.spec.counted_since = closed.end;
    vec![closed, volume_record(after, None)]
}

/// Deletion asked for at `now` ends the volume's billing.
pub fn volume_deleted(volume: &Volume, now: DateTime<Utc>) -> UsageRecord {
    volume_record(volume, Some(now))
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// One version of an S3 object of `project`: `size` bytes stored from
/// `last_modified` until `until` (`None`: still stored). Both ends are
/// whole seconds, as S3's Last-Modified shows them, so a bill can be
/// checked against what clients saw; `data_id` (unique per version) names
/// the record, so an overwrite retried writes the same key.
pub fn object_record(
    project: &str,
    bucket: &str,
    key: &str,
    data_id: &str,
    size: u64,
    last_modified: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
) -> UsageRecord {
    let start = whole_second(last_modified);
    UsageRecord {
        project: project.to_string(),
        metered: Metered::Object,
        name: format!("{bucket}/{key}"),
        id: data_id.to_string(),
        start,
        end: until.map(|u| whole_second(u).max(start)),
        vcpu_millis: 0,
        memory_bytes: 0,
        storage_bytes: size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use nimbus_api::{InstanceSpec, Metadata, Resources, VmSpec};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    fn instance(phase: InstancePhase) -> Instance {
        let mut i = Instance {
            metadata: Metadata::new("web", Some("ops")),
            spec: InstanceSpec {
                image: "alpine".into(),
                resources: Resources {
                    memory_bytes: Some(256 << 20),
                    cpu_millis: Some(500),
                    pids_max: None,
                    disk_bytes: None,
                },
                ..Default::default()
            },
            status: Default::default(),
        };
        i.status.phase = phase;
        i.status.host = Some("node1".into());
        i
    }

    fn running(started: i64) -> Instance {
        let mut i = instance(InstancePhase::Running);
        i.status.started_at = Some(at(started));
        i
    }

    fn ended(mut i: Instance, phase: InstancePhase, finished: i64) -> Instance {
        i.status.phase = phase;
        i.status.finished_at = Some(at(finished));
        i
    }

    #[test]
    fn starting_to_run_opens_a_record_with_the_reported_start_and_the_spec() {
        let before = instance(InstancePhase::Starting);
        let after = running(10);
        let r = instance_transitions(&before, &after, at(99));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].start, at(10));
        assert_eq!(r[0].end, None);
        assert_eq!(r[0].metered, Metered::Container);
        assert_eq!((r[0].vcpu_millis, r[0].memory_bytes), (500, 256 << 20));
        assert_eq!(r[0].project, "ops");
        // A repeated report writes nothing.
        assert!(instance_transitions(&after, &after, at(120)).is_empty());
    }

    #[test]
    fn stopping_closes_at_the_reported_finish_and_keeps_the_key() {
        let run = running(10);
        let opened = &instance_transitions(&instance(InstancePhase::Starting), &run, at(11))[0];
        // Stopping: the workload still runs, nothing closes yet.
        let mut stopping = run.clone();
        stopping.status.phase = InstancePhase::Stopping;
        assert!(instance_transitions(&run, &stopping, at(50)).is_empty());
        let stopped = ended(stopping.clone(), InstancePhase::Stopped, 60);
        let r = instance_transitions(&stopping, &stopped, at(70));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            r[0].end,
            Some(at(60)),
            "the agent's finish, not the report's time"
        );
        assert_eq!(r[0].record_name(), opened.record_name());
    }

    #[test]
    fn a_restart_of_the_instance_gives_two_intervals() {
        let first = running(10);
        let exited = ended(first.clone(), InstancePhase::Backoff, 20);
        let closed = instance_transitions(&first, &exited, at(21));
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start, closed[0].end), (at(10), Some(at(20))));
        let mut second = running(30);
        second.status.restart_count = 1;
        let opened = instance_transitions(&exited, &second, at(31));
        assert_eq!(opened.len(), 1);
        assert_eq!((opened[0].start, opened[0].end), (at(30), None));
        assert_ne!(closed[0].record_name(), opened[0].record_name());
        // The exit not reported in between: the first run ends where the
        // second began, and the second opens.
        let merged = instance_transitions(&first, &second, at(31));
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!((merged[0].start, merged[0].end), (at(10), Some(at(30))));
        assert_eq!((merged[1].start, merged[1].end), (at(30), None));
    }

    #[test]
    fn an_unreported_end_closes_at_the_time_the_server_learns_it() {
        let run = running(10);
        let mut failed = run.clone();
        failed.status.phase = InstancePhase::Failed;
        failed.status.reason = Some("host \"node1\" is unreachable".into());
        let r = instance_transitions(&run, &failed, at(500));
        assert_eq!((r[0].start, r[0].end), (at(10), Some(at(500))));
    }

    #[test]
    fn a_run_that_began_and_ended_between_two_reports_is_written_closed() {
        let before = instance(InstancePhase::Starting);
        let mut exited = ended(running(10), InstancePhase::Exited, 12);
        let r = instance_transitions(&before, &exited, at(40));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].start, r[0].end), (at(10), Some(at(12))));
        // Reported again: nothing more.
        assert!(instance_transitions(&exited, &exited, at(41)).is_empty());
        // Never started: nothing.
        exited.status.started_at = None;
        assert!(instance_transitions(&before, &exited, at(40)).is_empty());
    }

    #[test]
    fn deletion_closes_a_running_instance_and_not_a_finished_one() {
        let mut deleting = running(10);
        deleting.status.phase = InstancePhase::Deleting;
        let r = instance_deleted(&deleting, at(90)).expect("closed");
        assert_eq!((r.start, r.end), (at(10), Some(at(90))));
        let done = ended(deleting, InstancePhase::Deleting, 50);
        assert_eq!(instance_deleted(&done, at(90)), None);
        assert_eq!(
            instance_deleted(&instance(InstancePhase::Pending), at(90)),
            None
        );
    }

    #[test]
    fn vms_count_their_vcpus_and_default_memory() {
        let mut vm = running(0);
        vm.spec.kind = InstanceKind::Vm;
        vm.spec.resources = Resources::default();
        vm.spec.vm = Some(VmSpec {
            vcpus: Some(2),
            ..Default::default()
        });
        let r = instance_transitions(&instance(InstancePhase::Starting), &vm, at(1));
        assert_eq!(r[0].metered, Metered::Vm);
        assert_eq!((r[0].vcpu_millis, r[0].memory_bytes), (2000, 512 << 20));
        // A container without limits: one CPU, no memory reserved.
        let mut c = running(0);
        c.spec.resources = Resources::default();
        let r = instance_transitions(&instance(InstancePhase::Starting), &c, at(1));
        assert_eq!((r[0].vcpu_millis, r[0].memory_bytes), (1000, 0));
    }

    #[test]
    fn images_are_metered_from_creation_to_deletion() {
        let mut image = Image {
            metadata: Metadata::new("web", Some("ops")),
            spec: Default::default(),
            status: Default::default(),
        };
        image.metadata.created_at = at(5);
        image.status.size_bytes = 1 << 30;
        let open = image_created(&image);
        assert_eq!(
            (open.start, open.end, open.storage_bytes),
            (at(5), None, 1 << 30)
        );
        let closed = image_deleted(&image, at(5) + Duration::hours(2));
        assert_eq!(closed.record_name(), open.record_name());
        assert_eq!(closed.end, Some(at(7205)));
    }

    #[test]
    fn objects_are_metered_in_whole_seconds_of_last_modified() {
        let lm = at(5) + Duration::milliseconds(900);
        let open = object_record("ops", "photos", "a/b.jpg", "d1", 1 << 20, lm, None);
        assert_eq!(
            (open.start, open.end, open.storage_bytes),
            (at(5), None, 1 << 20)
        );
        assert_eq!(open.metered, Metered::Object);
        let closed = object_record(
            "ops",
            "photos",
            "a/b.jpg",
            "d1",
            1 << 20,
            lm,
            Some(at(65) + Duration::milliseconds(400)),
        );
        assert_eq!(closed.end, Some(at(65)));
        assert_eq!(closed.record_name(), open.record_name());
        // Replaced within its first second: an empty interval, never negative.
        let quick = object_record("ops", "photos", "k", "d2", 1, lm, Some(lm));
        assert_eq!(quick.end, Some(quick.start));
    }

    #[test]
    fn a_volume_bills_each_counted_size_from_when_it_began() {
        let mut v = Volume {
            metadata: nimbus_api::Metadata::new("data", Some("ops")),
            spec: nimbus_api::VolumeSpec {
                size_bytes: 1 << 30,
                ..Default::default()
            },
            status: Default::default(),
        };
        v.metadata.created_at = at(0);
        let open = volume_created(&v);
        assert_eq!(
            (open.start, open.end, open.storage_bytes),
            (at(0), None, 1 << 30)
        );
        let mut grown = v.clone();
        grown.spec.size_bytes = 2 << 30;
        let records = volume_changed(&v, &mut grown, at(3600));
        assert_eq!(records.len(), 2);
        // The closed record has the open one's key, so it replaces it.
        assert_eq!(records[0].record_name(), open.record_name());
        assert_eq!(
            (records[0].end, records[0].storage_bytes),
            (Some(at(3600)), 1 << 30)
        );
        assert_eq!(
            (records[1].start, records[1].end, records[1].storage_bytes),
            (at(3600), None, 2 << 30)
        );
        assert_eq!(grown.spec.counted_since, Some(at(3600)));
        // A change that leaves the counted bytes alone writes nothing.
        let mut same = grown.clone();
        assert!(volume_changed(&grown, &mut same, at(4000)).is_empty());
        let gone = volume_deleted(&grown, at(5400));
        assert_eq!(gone.record_name(), records[1].record_name());
        assert_eq!((gone.start, gone.end), (at(3600), Some(at(5400))));
    }
}
