//! Volumes: what a volume's name, size, snapshots and source must satisfy,
//! and whether a project's quota admits a change.

use nimbus_api::units::format_size;
use nimbus_api::{validate_name, ProjectQuota, Volume, VolumeSpec};

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
