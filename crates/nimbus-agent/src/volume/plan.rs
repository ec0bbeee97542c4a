//! What to change so a volume's data matches its spec: a pure function of
//! the spec and what the backend observed, so every case is tested without
//! a host.

use nimbus_api::Volume;

use super::Observed;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Create {
        size_bytes: u64,
    },
    /// From `source` (`volume@snapshot`, by name in the same project).
    CloneFrom {
        source_volume: String,
        snapshot: String,
        size_bytes: u64,
    },
    Grow {
        size_bytes: u64,
    },
    Snapshot {
        name: String,
    },
    DeleteSnapshot {
        name: String,
    },
    Delete,
}

/// The actions, in order, that make `observed` what `volume` asks for.
/// Empty means converged.
pub fn plan(volume: &Volume, observed: Option<&Observed>) -> Vec<Action> {
    let spec = &volume.spec;
    if volume.metadata.deletion_requested_at.is_some() {
        return match observed {
            Some(_) => vec![Action::Delete],
            None => vec![],
        };
    }
    let mut actions = Vec::new();
    let (size_now, snapshots_now): (u64, &[String]) = match observed {
        Some(o) => (o.size_bytes, &o.snapshots),
        None => {
            match spec
                .from_snapshot
                .as_deref()
                .and_then(|s| s.split_once('@'))
            {
                Some((v, s)) => actions.push(Action::CloneFrom {
                    source_volume: v.to_string(),
                    snapshot: s.to_string(),
                    size_bytes: spec.size_bytes,
                }),
                None => actions.push(Action::Create {
                    size_bytes: spec.size_bytes,
                }),
            }
            (spec.size_bytes, &[])
        }
    };
    // Snapshots go first: one asked for before a resize records the
    // smaller size, as the user saw it.
    for s in snapshots_now {
        if !spec.snapshots.iter().any(|w| &w.name == s) {
            actions.push(Action::DeleteSnapshot { name: s.clone() });
        }
    }
    for s in &spec.snapshots {
        if !snapshots_now.contains(&s.name) {
            actions.push(Action::Snapshot {
                name: s.name.clone(),
            });
        }
    }
    if size_now < spec.size_bytes {
        actions.push(Action::Grow {
            size_bytes: spec.size_bytes,
        });
    }
    actions
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nimbus_api::{Metadata, VolumeSnapshot, VolumeSpec};

    /// A volume of `size` bytes on host `h` asking for `snapshots`.
    pub(crate) fn volume(size: u64, snapshots: &[&str], from: Option<&str>) -> Volume {
        Volume {
            metadata: Metadata::new("data", Some("p")),
            spec: VolumeSpec {
                size_bytes: size,
                host: Some("h".into()),
                from_snapshot: from.map(str::to_string),
                snapshots: snapshots
                    .iter()
                    .map(|n| VolumeSnapshot {
                        name: n.to_string(),
                        size_bytes: size,
                        created_at: chrono::Utc::now(),
                    })
                    .collect(),
                counted_since: None,
            },
            status: Default::default(),
        }
    }

    pub(crate) fn observed(size: u64, snapshots: &[&str]) -> Observed {
        Observed {
            size_bytes: size,
            allocated_bytes: 0,
            snapshots: snapshots.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_missing_volume_is_created_or_cloned() {
        assert_eq!(
            plan(&volume(10, &[], None), None),
            vec![Action::Create { size_bytes: 10 }]
        );
        assert_eq!(
            plan(&volume(10, &[], Some("src@s1")), None),
            vec![Action::CloneFrom {
                source_volume: "src".into(),
                snapshot: "s1".into(),
                size_bytes: 10
            }]
        );
    }

    #[test]
    fn a_converged_volume_needs_nothing() {
        assert_eq!(
            plan(&volume(10, &["a"], None), Some(&observed(10, &["a"]))),
            vec![]
        );
        // Larger than asked (a resize raced a report) is not shrunk.
        assert_eq!(
            plan(&volume(10, &[], None), Some(&observed(20, &[]))),
            vec![]
        );
    }

    #[test]
    fn snapshots_are_taken_and_dropped_before_growing() {
        assert_eq!(
            plan(&volume(20, &["new"], None), Some(&observed(10, &["old"]))),
            vec![
                Action::DeleteSnapshot { name: "old".into() },
                Action::Snapshot { name: "new".into() },
                Action::Grow { size_bytes: 20 },
            ]
        );
    }

    #[test]
    fn a_deleting_volume_is_deleted_once() {
        let mut v = volume(10, &["a"], None);
        v.metadata.deletion_requested_at = Some(chrono::Utc::now());
        assert_eq!(plan(&v, Some(&observed(10, &["a"]))), vec![Action::Delete]);
        assert_eq!(plan(&v, None), vec![]);
    }
}
