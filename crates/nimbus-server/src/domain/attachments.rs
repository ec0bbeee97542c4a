//! Attaching a volume to an instance that exists, and detaching it: the
//! same rules as at create (`volumes::check_attachments`), plus what the
//! instance's kind and host allow. A running container gets or loses a
//! mount at once, a running VM a hot-plugged disk; a stopped instance
//! takes the change at its next start.

use nimbus_api::{Instance, InstanceKind, Volume, VolumeMount};

use super::volumes::{check_attachments, AttachError};

/// Whether the kind of instance takes these mounts: containers need a
/// path for each, VMs may leave it out, unikernels take none.
pub fn check_kind(kind: InstanceKind, mounts: &[VolumeMount]) -> Result<(), AttachError> {
    match kind {
        InstanceKind::Unikernel if !mounts.is_empty() => Err(AttachError::Kind {
            kind: "unikernel".into(),
        }),
        InstanceKind::Container => match mounts.iter().find(|m| m.path.is_empty()) {
            Some(m) => Err(AttachError::NoPath {
                volume: m.volume.clone(),
            }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn check_changeable(instance: &Instance) -> Result<(), AttachError> {
    if instance.metadata.deletion_requested_at.is_some() {
        return Err(AttachError::InstanceDeleting {
            instance: instance.metadata.name.clone(),
        });
    }
    Ok(())
}

/// Check attaching `mount` to `instance`; `volumes` and `instances` are
/// the project's. Returns the instance's volume list with it added.
pub fn attach(
    project: &str,
    instance: &Instance,
    mount: VolumeMount,
    volumes: &[Volume],
    instances: &[Instance],
) -> Result<Vec<VolumeMount>, AttachError> {
    check_changeable(instance)?;
    check_kind(instance.spec.kind, std::slice::from_ref(&mount))?;
    if let Some(held) = instance
        .spec
        .volumes
        .iter()
        .find(|m| m.volume == mount.volume)
    {
        return Err(if held.read_only {
            AttachError::SharedReadOnly {
                volume: mount.volume,
                instance: instance.metadata.name.clone(),
            }
        } else {
            AttachError::InUse {
                volume: mount.volume,
                instance: instance.metadata.name.clone(),
            }
        });
    }
    let mut wanted = instance.spec.volumes.clone();
    wanted.push(mount.clone());
    // The instance's own mounts are checked as new ones (host agreement),
    // against every other instance of the project.
    let others: Vec<Instance> = instances
        .iter()
        .filter(|i| i.metadata.id != instance.metadata.id)
        .cloned()
        .collect();
    let host = check_attachments(project, std::slice::from_ref(&mount), volumes, &others)?;
    if let (Some(volume_host), Some(instance_host)) = (host, instance.status.host.clone()) {
        if volume_host != instance_host {
            return Err(AttachError::OtherHost {
                volume: mount.volume,
                volume_host,
                instance: instance.metadata.name.clone(),
                instance_host,
            });
        }
    }
    check_attachments(project, &wanted, volumes, &others)?;
    Ok(wanted)
}

/// Check detaching `volume` from `instance`: the volume list without it.
pub fn detach(instance: &Instance, volume: &str) -> Result<Vec<VolumeMount>, AttachError> {
    if !instance.spec.volumes.iter().any(|m| m.volume == volume) {
        return Err(AttachError::NotAttached {
            volume: volume.to_string(),
            instance: instance.metadata.name.clone(),
        });
    }
    check_changeable(instance)?;
    Ok(instance
        .spec
        .volumes
        .iter()
        .filter(|m| m.volume != volume)
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::{InstancePhase, Metadata, VolumePhase};

    fn instance(name: &str, kind: InstanceKind, host: &str, mounts: &[&str]) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "metadata": Metadata::new(name, Some("p")),
            "spec": {"image": "tiny"},
        }))
        .expect("instance");
        i.spec.kind = kind;
        i.status.host = Some(host.into());
        i.status.phase = InstancePhase::Running;
        i.spec.volumes = mounts.iter().map(|v| mount(v, "")).collect();
        i
    }

    fn mount(volume: &str, path: &str) -> VolumeMount {
        VolumeMount {
            volume: volume.into(),
            path: path.into(),
            read_only: false,
        }
    }

    fn available(name: &str, host: &str) -> Volume {
        let mut v: Volume = serde_json::from_value(serde_json::json!({
            "metadata": Metadata::new(name, Some("p")),
            "spec": {"size_bytes": 1u64 << 30},
        }))
        .expect("volume");
        v.spec.host = Some(host.into());
        v.status.phase = VolumePhase::Available;
        v
    }

    #[test]
    fn a_running_vm_takes_a_disk_without_a_path() {
        let vm = instance("db", InstanceKind::Vm, "h1", &[]);
        let vols = vec![available("data", "h1")];
        let wanted = attach(
            "p",
            &vm,
            mount("data", ""),
            &vols,
            std::slice::from_ref(&vm),
        )
        .expect("attach");
        assert_eq!(wanted, vec![mount("data", "")]);
    }

    #[test]
    fn a_second_read_write_attach_is_refused() {
        let vm = instance("db", InstanceKind::Vm, "h1", &["data"]);
        let other = instance("db2", InstanceKind::Vm, "h1", &[]);
        let vols = vec![available("data", "h1")];
        let all = vec![vm.clone(), other.clone()];
        let e = attach("p", &other, mount("data", ""), &vols, &all).expect_err("held");
        assert!(e.is_conflict());
        assert!(
            e.to_string().contains("read-write to instance \"db\""),
            "{e}"
        );
        let e = attach("p", &vm, mount("data", ""), &vols, &all).expect_err("twice");
        assert!(e.to_string().contains("instance \"db\""), "{e}");
    }

    #[test]
    fn a_volume_of_another_host_is_refused() {
        let vm = instance("db", InstanceKind::Vm, "h2", &[]);
        let vols = vec![available("data", "h1")];
        let e = attach("p", &vm, mount("data", ""), &vols, &[]).expect_err("host");
        assert!(e.to_string().contains("runs on host \"h2\""), "{e}");
    }

    #[test]
    fn a_running_container_takes_a_mount_with_a_path() {
        let mut c = instance("web", InstanceKind::Container, "h1", &[]);
        let vols = vec![available("data", "h1")];
        let e = attach("p", &c, mount("data", ""), &vols, &[]).expect_err("no path");
        assert!(e.to_string().contains("--path"), "{e}");
        let wanted = attach("p", &c, mount("data", "/data"), &vols, &[]).expect("running");
        assert_eq!(wanted, vec![mount("data", "/data")]);
        c.spec.volumes = wanted;
        assert_eq!(detach(&c, "data").expect("detach"), vec![]);
        c.metadata.deletion_requested_at = Some(chrono::Utc::now());
        let e = attach("p", &c, mount("other", "/o"), &vols, &[]).expect_err("deleting");
        assert!(e.to_string().contains("being deleted"), "{e}");
    }

    #[test]
    fn detaching_what_is_not_attached_says_so() {
        let vm = instance("db", InstanceKind::Vm, "h1", &[]);
        let e = detach(&vm, "data").expect_err("not attached");
        assert!(
            e.to_string().contains("not attached to instance \"db\""),
            "{e}"
        );
        let u = instance("k", InstanceKind::Unikernel, "h1", &[]);
        let e = check_kind(u.spec.kind, &[mount("data", "")]).expect_err("unikernel");
        assert!(e.to_string().contains("unikernel"), "{e}");
    }
}
