//! Volumes: what a volume's name, size, snapshots and source must satisfy,
//! and whether a project's quota admits a change.

use nimbus_api::units::format_size;
use nimbus_api::{validate_name, Instance, ProjectQuota, Volume, VolumePhase, VolumeSpec};

/// The smallest volume: room for an ext4 filesystem with a journal.
pub const MIN_SIZE_BYTES: u64 = 16 << 20;
/// The largest volume a qcow2 file (and the API) accepts: 64 TiB.
pub const MAX_SIZE_BYTES: u64 = 64 << 40;

/// A volume request the API refuses as invalid (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Name(String),
    #[error("volume size {} is out of range: give a size from 16MiB to 64TiB, e.g. --size 5GiB", format_size(*.0))]
    Size(u64),
    #[error("volume {name:?} is {} already; a volume only grows: give a size larger than that (e.g. --size {})", format_size(*current), format_size(current.saturating_mul(2)))]
    Shrink { name: String, current: u64 },
    #[error("source {0:?} is not VOLUME@SNAPSHOT, e.g. data@before-upgrade")]
    Source(String),
    #[error("volume {volume:?} has no snapshot {snapshot:?}; list them with `nimbus volume snapshot list {volume}`")]
    NoSnapshot { volume: String, snapshot: String },
    #[error("volume {volume:?} already has a snapshot {snapshot:?}; choose another --name")]
    SnapshotExists { volume: String, snapshot: String },
    #[error("volume {0:?} is being deleted; wait for it to go")]
    Deleting(String),
    #[error("a volume made from snapshot {source_name:?} is at least its size, {}; give --size {} or more, or leave --size out", format_size(*size), format_size(*size))]
    CloneTooSmall { source_name: String, size: u64 },
}

/// A change the project's quota does not admit (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("project {project:?} may hold {limit} volume(s) and holds {used}; remove one with `nimbus volume rm <name>` or ask an administrator to raise it (`nimbus quota set --volumes N`)")]
    Volumes {
        project: String,
        limit: u32,
        used: usize,
    },
    #[error("project {project:?} may hold {} of volumes and snapshots; it holds {} and this needs {} more; remove volumes or snapshots, or ask an administrator to raise it (`nimbus quota set --volume-bytes SIZE`)", format_size(*limit), format_size(*used), format_size(*more))]
    Bytes {
        project: String,
        limit: u64,
        used: u64,
        more: u64,
    },
}

/// An instance's volumes that cannot be attached as asked, or a volume
/// that cannot go because an instance holds it (422 for a bad request,
/// 409 for a conflict with what exists).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("volume {volume:?} does not exist in project {project:?}; create it with `nimbus volume create {volume} --size 1GiB`")]
    NotFound { volume: String, project: String },
    #[error("volume {volume:?} is {phase}, not available; wait for `nimbus volume get {volume}` to say available (or read its message)")]
    NotAvailable { volume: String, phase: &'static str },
    #[error("volume {volume:?} is attached read-write to instance {instance:?}; remove that instance first")]
    InUse { volume: String, instance: String },
    #[error("volume {volume:?} is attached read-only to instance {instance:?}; a volume serves one instance at a time for now: remove that instance first")]
    SharedReadOnly { volume: String, instance: String },
    #[error("volume {volume:?} is named twice; give each volume once")]
    Twice { volume: String },
    #[error(
        "volume path {path:?} must be an absolute path other than / without `..`, e.g. /var/lib/db"
    )]
    Path { path: String },
    #[error("volumes {first:?} (on host {first_host:?}) and {second:?} (on host {second_host:?}) are on different hosts; one instance can use volumes of one host only")]
    Hosts {
        first: String,
        first_host: String,
        second: String,
        second_host: String,
    },
    #[error("volume {volume:?} is attached to instance {instance:?}; remove the instance first (`nimbus instance rm {instance}`)")]
    Attached { volume: String, instance: String },
    #[error("volumes attach to containers and VMs; instance kind {kind:?} cannot take a volume")]
    Kind { kind: String },
    #[error("a container mounts volume {volume:?} at a path: give one, e.g. --volume {volume}:/var/lib/db (or `nimbus volume attach {volume} --instance NAME --path /var/lib/db`)")]
    NoPath { volume: String },
    #[error("volume {volume:?} is kept on host {volume_host:?} but instance {instance:?} runs on host {instance_host:?}; an instance uses volumes of its own host only (make a volume there from a snapshot)")]
    OtherHost {
        volume: String,
        volume_host: String,
        instance: String,
        instance_host: String,
    },
    #[error("volume {volume:?} is not attached to instance {instance:?}; `nimbus instance get {instance}` lists what is")]
    NotAttached { volume: String, instance: String },
    #[error("instance {instance:?} is being deleted; it takes no volume changes")]
    InstanceDeleting { instance: String },
}

impl AttachError {
    /// Conflicts with what other instances hold (409); the rest are bad
    /// requests (422).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            AttachError::InUse { .. }
                | AttachError::SharedReadOnly { .. }
                | AttachError::Attached { .. }
                | AttachError::InstanceDeleting { .. }
                | AttachError::NotAttached { .. }
        )
    }
}

/// Whether `instance` holds `volume` of its project: any instance record
/// that names it, until the record is gone (a deleting instance still has
/// it mounted). Returns the mode (`true` read-only).
fn holds<'a>(instance: &'a Instance, volume: &str) -> Option<&'a nimbus_api::VolumeMount> {
    instance.spec.volumes.iter().find(|m| m.volume == volume)
}

/// Check a new instance's volume mounts against the project's volumes and
/// the instances that exist (attachments are derived from instance
/// records, so they hold across restarts). Returns the host the instance
/// must run on, if it names volumes.
pub fn check_attachments(
    project: &str,
    mounts: &[nimbus_api::VolumeMount],
    volumes: &[Volume],
    instances: &[Instance],
) -> Result<Option<String>, AttachError> {
    let mut host: Option<(&str, &str)> = None;
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| o.volume == m.volume) {
            return Err(AttachError::Twice {
                volume: m.volume.clone(),
            });
        }
        // An empty path is a VM's disk (the kind is checked by the caller).
        if !m.path.is_empty()
            && (!m.path.starts_with('/') || m.path == "/" || m.path.split('/').any(|c| c == ".."))
        {
            return Err(AttachError::Path {
                path: m.path.clone(),
            });
        }
        let v = volumes
            .iter()
            .find(|v| v.metadata.name == m.volume)
            .ok_or_else(|| AttachError::NotFound {
                volume: m.volume.clone(),
                project: project.to_string(),
            })?;
        if v.metadata.deletion_requested_at.is_some() || v.status.phase != VolumePhase::Available {
            let phase = if v.metadata.deletion_requested_at.is_some() {
                VolumePhase::Deleting
            } else {
                v.status.phase
            };
            return Err(AttachError::NotAvailable {
                volume: m.volume.clone(),
                phase: phase.as_str(),
            });
        }
        for other in instances {
            if let Some(held) = holds(other, &m.volume) {
                let instance = other.metadata.name.clone();
                let volume = m.volume.clone();
                // Each attachment runs its own qemu-storage-daemon, which
                // takes the qcow2's write lock: read-only users cannot
                // share either until one host mount serves them all.
                if !held.read_only {
                    return Err(AttachError::InUse { volume, instance });
                }
                return Err(AttachError::SharedReadOnly { volume, instance });
            }
        }
        let vh = v.spec.host.as_deref().unwrap_or_default();
        match host {
            Some((first, first_host)) if first_host != vh => {
                return Err(AttachError::Hosts {
                    first: first.to_string(),
                    first_host: first_host.to_string(),
                    second: m.volume.clone(),
                    second_host: vh.to_string(),
                })
            }
            Some(_) => {}
            None => host = Some((&m.volume, vh)),
        }
    }
    Ok(host.map(|(_, h)| h.to_string()))
}

/// Refuse removing `volume` while an instance of its project names it.
pub fn check_not_attached(volume: &str, instances: &[Instance]) -> Result<(), AttachError> {
    match instances.iter().find(|i| holds(i, volume).is_some()) {
        Some(i) => Err(AttachError::Attached {
            volume: volume.to_string(),
            instance: i.metadata.name.clone(),
        }),
        None => Ok(()),
    }
}

/// The host an instance's volumes live on, if it names any: the
/// scheduler places it there.
pub fn volume_host(instance: &Instance, volumes: &[Volume]) -> Option<String> {
    let first = instance.spec.volumes.first()?;
    volumes
        .iter()
        .find(|v| v.metadata.name == first.volume)
        .and_then(|v| v.spec.host.clone())
}

pub fn validate_volume_name(name: &str) -> Result<(), VolumeError> {
    validate_name("volume", name).map_err(VolumeError::Name)
}

pub fn validate_snapshot_name(name: &str) -> Result<(), VolumeError> {
    validate_name("snapshot", name).map_err(VolumeError::Name)
}

pub fn validate_size(size_bytes: u64) -> Result<(), VolumeError> {
    if (MIN_SIZE_BYTES..=MAX_SIZE_BYTES).contains(&size_bytes) {
        Ok(())
    } else {
        Err(VolumeError::Size(size_bytes))
    }
}

/// `data@before-upgrade` → (`data`, `before-upgrade`).
pub fn parse_source(text: &str) -> Result<(&str, &str), VolumeError> {
    match text.split_once('@') {
        Some((v, s))
            if validate_name("volume", v).is_ok() && validate_name("snapshot", s).is_ok() =>
        {
            Ok((v, s))
        }
        _ => Err(VolumeError::Source(text.to_string())),
    }
}

/// The spec a new volume is stored with. A clone takes its source's host
/// and at least the size the source had when the snapshot was taken;
/// `size_bytes` 0 means "the snapshot's size".
pub fn new_volume_spec(
    requested: &VolumeSpec,
    source: Option<(&Volume, &str)>,
    default_host: Option<String>,
) -> Result<VolumeSpec, VolumeError> {
    let mut spec = VolumeSpec {
        size_bytes: requested.size_bytes,
        host: requested.host.clone(),
        from_snapshot: requested.from_snapshot.clone(),
        snapshots: Vec::new(),
        counted_since: None,
    };
    if let Some((volume, snapshot)) = source {
        let snap = volume
            .spec
            .snapshots
            .iter()
            .find(|s| s.name == snapshot)
            .ok_or_else(|| VolumeError::NoSnapshot {
                volume: volume.metadata.name.clone(),
                snapshot: snapshot.to_string(),
            })?;
        if spec.size_bytes == 0 {
            spec.size_bytes = snap.size_bytes;
        } else if spec.size_bytes < snap.size_bytes {
            return Err(VolumeError::CloneTooSmall {
                source_name: format!("{}@{}", volume.metadata.name, snapshot),
                size: snap.size_bytes,
            });
        }
        spec.host = volume.spec.host.clone();
    }
    if spec.host.is_none() {
        spec.host = default_host;
    }
    validate_size(spec.size_bytes)?;
    Ok(spec)
}

/// Refuse a change that adds `more_volumes` volumes and `more_bytes`
/// bytes to a project holding `existing`.
pub fn check_quota(
    project: &str,
    quota: &ProjectQuota,
    existing: &[Volume],
    more_volumes: usize,
    more_bytes: u64,
) -> Result<(), QuotaError> {
    if let Some(limit) = quota.volumes {
        let used = existing.len();
        if more_volumes > 0 && used + more_volumes > limit as usize {
            return Err(QuotaError::Volumes {
                project: project.to_string(),
                limit,
                used,
            });
        }
    }
    if let Some(limit) = quota.volume_bytes {
        let used = existing
            .iter()
            .fold(0u64, |sum, v| sum.saturating_add(v.counted_bytes()));
        if more_bytes > 0 && used.saturating_add(more_bytes) > limit {
            return Err(QuotaError::Bytes {
                project: project.to_string(),
                limit,
                used,
                more: more_bytes,
            });
        }
    }
    Ok(())
}

/// The bytes a resize adds, refused if it does not grow.
pub fn resize_growth(volume: &Volume, size_bytes: u64) -> Result<u64, VolumeError> {
    if volume.metadata.deletion_requested_at.is_some() {
        return Err(VolumeError::Deleting(volume.metadata.name.clone()));
    }
    validate_size(size_bytes)?;
    if size_bytes <= volume.spec.size_bytes {
        return Err(VolumeError::Shrink {
            name: volume.metadata.name.clone(),
            current: volume.spec.size_bytes,
        });
    }
    Ok(size_bytes - volume.spec.size_bytes)
}

/// A new snapshot's record, refused if the name is taken.
pub fn new_snapshot(
    volume: &Volume,
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<nimbus_api::VolumeSnapshot, VolumeError> {
    validate_snapshot_name(name)?;
    if volume.metadata.deletion_requested_at.is_some() {
        return Err(VolumeError::Deleting(volume.metadata.name.clone()));
    }
    if volume.spec.snapshots.iter().any(|s| s.name == name) {
        return Err(VolumeError::SnapshotExists {
            volume: volume.metadata.name.clone(),
            snapshot: name.to_string(),
        });
    }
    Ok(nimbus_api::VolumeSnapshot {
        name: name.to_string(),
        size_bytes: volume.spec.size_bytes,
        created_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::Metadata;

    const GIB: u64 = 1 << 30;

    fn volume(name: &str, size: u64, snapshots: &[(&str, u64)]) -> Volume {
        Volume {
            metadata: Metadata::new(name, Some("p")),
            spec: VolumeSpec {
                size_bytes: size,
                host: Some("h1".into()),
                from_snapshot: None,
                snapshots: snapshots
                    .iter()
                    .map(|(n, s)| nimbus_api::VolumeSnapshot {
                        name: n.to_string(),
                        size_bytes: *s,
                        created_at: chrono::Utc::now(),
                    })
                    .collect(),
                counted_since: None,
            },
            status: Default::default(),
        }
    }

    #[test]
    fn sizes_from_16_mib_to_64_tib() {
        assert_eq!(validate_size(5 * GIB), Ok(()));
        let e = validate_size(1 << 20).expect_err("too small");
        assert_eq!(
            e.to_string(),
            "volume size 1MiB is out of range: give a size from 16MiB to 64TiB, e.g. --size 5GiB"
        );
        assert!(validate_size(65 << 40).is_err());
    }

    #[test]
    fn a_volume_only_grows() {
        let v = volume("data", 5 * GIB, &[]);
        assert_eq!(resize_growth(&v, 10 * GIB), Ok(5 * GIB));
        let e = resize_growth(&v, 4 * GIB).expect_err("shrink");
        assert!(
            e.to_string().contains("volume \"data\" is 5GiB already"),
            "{e}"
        );
        assert!(resize_growth(&v, 5 * GIB).is_err());
    }

    #[test]
    fn snapshots_count_against_the_byte_quota() {
        let quota = ProjectQuota {
            volumes: Some(3),
            volume_bytes: Some(10 * GIB),
            ..Default::default()
        };
        let vols = vec![volume("a", 4 * GIB, &[("s1", 4 * GIB)])];
        assert_eq!(check_quota("p", &quota, &vols, 1, 2 * GIB), Ok(()));
        let e = check_quota("p", &quota, &vols, 1, 3 * GIB).expect_err("bytes");
        assert!(
            e.to_string().contains(
                "may hold 10GiB of volumes and snapshots; it holds 8GiB and this needs 3GiB more"
            ),
            "{e}"
        );
        let three = vec![
            volume("a", GIB, &[]),
            volume("b", GIB, &[]),
            volume("c", GIB, &[]),
        ];
        let e = check_quota("p", &quota, &three, 1, GIB).expect_err("count");
        assert!(
            e.to_string().contains("may hold 3 volume(s) and holds 3"),
            "{e}"
        );
        // A resize adds no volume: only bytes count.
        assert_eq!(check_quota("p", &quota, &three, 0, GIB), Ok(()));
        assert_eq!(
            check_quota("p", &ProjectQuota::default(), &three, 9, 99 * GIB),
            Ok(())
        );
    }

    #[test]
    fn a_clone_takes_the_source_host_and_at_least_the_snapshot_size() {
        let src = volume("data", 8 * GIB, &[("before", 5 * GIB)]);
        let requested = VolumeSpec {
            from_snapshot: Some("data@before".into()),
            ..Default::default()
        };
        let spec =
            new_volume_spec(&requested, Some((&src, "before")), Some("other".into())).expect("ok");
        assert_eq!(spec.size_bytes, 5 * GIB);
        assert_eq!(spec.host.as_deref(), Some("h1"));
        let small = VolumeSpec {
            size_bytes: GIB,
            ..requested.clone()
        };
        let e = new_volume_spec(&small, Some((&src, "before")), None).expect_err("small");
        assert!(e.to_string().contains("at least its size, 5GiB"), "{e}");
        let e = new_volume_spec(&requested, Some((&src, "nope")), None).expect_err("missing");
        assert!(e.to_string().contains("has no snapshot \"nope\""), "{e}");
        assert_eq!(parse_source("data@before"), Ok(("data", "before")));
        assert!(parse_source("data").is_err());
        assert!(parse_source("Data@x").is_err());
    }

    fn instance(name: &str, mounts: &[(&str, bool)]) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "metadata": Metadata::new(name, Some("p")),
            "spec": {"image": "busybox"},
        }))
        .expect("instance");
        i.spec.volumes = mounts
            .iter()
            .map(|(v, ro)| nimbus_api::VolumeMount {
                volume: v.to_string(),
                path: "/data".into(),
                read_only: *ro,
            })
            .collect();
        i
    }

    fn available(name: &str, host: &str) -> Volume {
        let mut v = volume(name, GIB, &[]);
        v.spec.host = Some(host.into());
        v.status.phase = VolumePhase::Available;
        v
    }

    fn mount(v: &str, ro: bool) -> nimbus_api::VolumeMount {
        nimbus_api::VolumeMount {
            volume: v.into(),
            path: "/data".into(),
            read_only: ro,
        }
    }

    #[test]
    fn a_volume_serves_one_instance() {
        let vols = vec![available("data", "h1"), available("logs", "h1")];
        let none: Vec<Instance> = vec![];
        assert_eq!(
            check_attachments("p", &[mount("data", false)], &vols, &none),
            Ok(Some("h1".into()))
        );
        let rw = vec![instance("db", &[("data", false)])];
        let e = check_attachments("p", &[mount("data", true)], &vols, &rw).expect_err("rw held");
        assert!(e.is_conflict());
        assert!(
            e.to_string()
                .contains("attached read-write to instance \"db\""),
            "{e}"
        );
        let ro = vec![instance("reader", &[("data", true)])];
        for read_only in [true, false] {
            let e = check_attachments("p", &[mount("data", read_only)], &vols, &ro)
                .expect_err("ro held");
            assert!(e.is_conflict());
            assert!(
                e.to_string().contains("read-only to instance \"reader\""),
                "{e}"
            );
        }
        // Other volumes are free.
        assert!(check_attachments("p", &[mount("logs", false)], &vols, &rw).is_ok());
        assert_eq!(check_attachments("p", &[], &vols, &rw), Ok(None));
    }

    #[test]
    fn attachments_need_an_available_volume_on_one_host() {
        let mut pending = available("new", "h1");
        pending.status.phase = VolumePhase::Pending;
        let vols = vec![available("a", "h1"), available("b", "h2"), pending];
        let none: Vec<Instance> = vec![];
        let e = check_attachments("p", &[mount("x", false)], &vols, &none).expect_err("missing");
        assert!(
            e.to_string()
                .contains("volume \"x\" does not exist in project \"p\""),
            "{e}"
        );
        assert!(!e.is_conflict());
        let e = check_attachments("p", &[mount("new", false)], &vols, &none).expect_err("pending");
        assert!(e.to_string().contains("is pending, not available"), "{e}");
        let e = check_attachments("p", &[mount("a", false), mount("b", false)], &vols, &none)
            .expect_err("hosts");
        assert!(e.to_string().contains("different hosts"), "{e}");
        let e = check_attachments("p", &[mount("a", false), mount("a", true)], &vols, &none)
            .expect_err("twice");
        assert!(e.to_string().contains("named twice"), "{e}");
        for path in ["rel", "/", "/a/../etc"] {
            let mut m = mount("a", false);
            m.path = path.into();
            assert!(
                check_attachments("p", &[m], &vols, &none).is_err(),
                "{path}"
            );
        }
    }

    #[test]
    fn an_attached_volume_is_not_removed() {
        let users = vec![instance("web", &[]), instance("db", &[("data", true)])];
        let e = check_not_attached("data", &users).expect_err("attached");
        assert_eq!(
            e.to_string(),
            "volume \"data\" is attached to instance \"db\"; remove the instance first (`nimbus instance rm db`)"
        );
        assert_eq!(check_not_attached("logs", &users), Ok(()));
        assert_eq!(
            volume_host(&users[1], &[available("data", "h7")]).as_deref(),
            Some("h7")
        );
    }

    #[test]
    fn snapshot_names_are_unique_per_volume() {
        let v = volume("data", GIB, &[("s1", GIB)]);
        let e = new_snapshot(&v, "s1", chrono::Utc::now()).expect_err("taken");
        assert!(
            e.to_string().contains("already has a snapshot \"s1\""),
            "{e}"
        );
        let s = new_snapshot(&v, "s2", chrono::Utc::now()).expect("new");
        assert_eq!(s.size_bytes, GIB);
    }
}
