//! `nimbus volume attach|detach`: change an existing instance's volumes,
//! and wait for a running VM's hot-plug, or a running container's mount,
//! to be done (its `status.volumes`), so the command's success means the
//! guest has (or no longer has) the disk, the container the mount.

use std::time::{Duration, Instant};

use nimbus_api::client::Client;
use nimbus_api::{AttachVolume, DetachVolume, Instance, InstanceKind, InstancePhase, ResourceList};

use crate::ctx::Globals;
use crate::output::print;

/// Hot-unplug waits up to 30 s for the guest; this leaves room for it.
const WAIT: Duration = Duration::from_secs(60);

/// Whether the instance's host changes its volumes now (a running VM or
/// container) or at its next start.
fn applies_now(i: &Instance) -> bool {
    i.spec.kind != InstanceKind::Unikernel
        && matches!(
            i.status.phase,
            InstancePhase::Running | InstancePhase::Paused
        )
}

/// The instance of `project` that names `volume`, if any (for what a
/// change of the volume means to it).
pub async fn holder_of(client: &Client, project: &str, volume: &str) -> Option<Instance> {
    let list: ResourceList<Instance> = client
        .list_all(&format!("/v1/projects/{project}/instances"))
        .await
        .ok()?;
    list.items
        .into_iter()
        .find(|i| i.spec.volumes.iter().any(|m| m.volume == volume))
}

/// What the host last reported for `volume` on the instance.
fn reported<'a>(i: &'a Instance, volume: &str) -> Option<&'a nimbus_api::AttachedVolume> {
    i.status
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find(|a| a.volume == volume))
}

/// Poll the instance until `done` says the host converged (`Ok(true)`) or
/// failed (`Err`), up to [`WAIT`].
async fn wait_for(
    client: &Client,
    path: &str,
    what: &str,
    done: impl Fn(&Instance) -> Result<bool, String>,
) -> anyhow::Result<Instance> {
    let deadline = Instant::now() + WAIT;
    loop {
        let i: Instance = client.get(path).await?;
        match done(&i) {
            Ok(true) => return Ok(i),
            Err(message) => anyhow::bail!("{message}"),
            Ok(false) if Instant::now() > deadline => anyhow::bail!(
                "{what} is not done after {}s: see `nimbus instance get {}` (status volumes), and the agent of host {}",
                WAIT.as_secs(),
                i.metadata.name,
                i.status.host.as_deref().unwrap_or("-")
            ),
            Ok(false) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub async fn attach(
    g: &Globals,
    client: &Client,
    volume: &str,
    req: AttachVolume,
    no_wait: bool,
) -> anyhow::Result<()> {
    let p = &g.project;
    let name = req.instance.clone();
    let mut i: Instance = client
        .post(&format!("/v1/projects/{p}/volumes/{volume}/attach"), &req)
        .await?;
    let now = applies_now(&i);
    if now && !no_wait {
        let path = format!("/v1/projects/{p}/instances/{name}");
        i = wait_for(client, &path, "the attach", |i| match reported(i, volume) {
            Some(a) if a.state == "attached" => Ok(true),
            Some(a) if a.state == "failed" => Err(format!(
                "volume {volume:?} is recorded on instance {name:?} but could not be attached to it: {}; detach it with `nimbus volume detach {volume} --instance {name}`",
                a.message.as_deref().unwrap_or("no reason given")
            )),
            _ => Ok(false),
        })
        .await?;
    }
    print(g, &i, || {
        if now && i.spec.kind == InstanceKind::Container {
            let at = i
                .spec
                .volumes
                .iter()
                .find(|m| m.volume == volume)
                .map_or("", |m| m.path.as_str());
            format!("volume {volume:?} mounted at {at} in container {name:?}")
        } else if now {
            format!("volume {volume:?} attached to VM {name:?}: the guest sees /dev/disk/by-id/virtio-{volume}")
        } else {
            format!("volume {volume:?} attached to instance {name:?}; it applies at its next start (`nimbus instance start {name}`)")
        }
    })
}

pub async fn detach(
    g: &Globals,
    client: &Client,
    volume: &str,
    instance: &str,
    no_wait: bool,
) -> anyhow::Result<()> {
    let p = &g.project;
    let req = DetachVolume {
        instance: instance.to_string(),
    };
    let mut i: Instance = client
        .post(&format!("/v1/projects/{p}/volumes/{volume}/detach"), &req)
        .await?;
    let now = applies_now(&i);
    if now && !no_wait {
        let path = format!("/v1/projects/{p}/instances/{instance}");
        i = wait_for(client, &path, "the detach", |i| match reported(i, volume) {
            None => Ok(i.status.volumes.is_some()),
            Some(a) if a.message.is_some() && matches!(a.state.as_str(), "detaching" | "failed") => Err(format!(
                "volume {volume:?} is detached from instance {instance:?} in its spec, but the instance still holds it: {}",
                a.message.as_deref().unwrap_or("")
            )),
            Some(_) => Ok(false),
        })
        .await?;
    }
    print(g, &i, || {
        if now && i.spec.kind == InstanceKind::Container {
            format!("volume {volume:?} unmounted from container {instance:?}; its data is flushed to the volume")
        } else if now {
            format!("volume {volume:?} detached from VM {instance:?}: its disk is unplugged")
        } else {
            format!("volume {volume:?} detached from instance {instance:?}")
        }
    })
}
