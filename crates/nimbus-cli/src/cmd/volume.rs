//! `nimbus volume ...` and `nimbus quota ...`: a project's block volumes,
//! their snapshots, and the limits on them.

use std::time::{Duration, Instant};

use clap::Subcommand;
use nimbus_api::client::{Client, ClientError, Method};
use nimbus_api::units::{format_size, parse_size};
use nimbus_api::{
    CreateRequest, CreateSnapshot, ErrorCode, Instance, InstanceKind, Project, ResizeVolume,
    ResourceList, Volume, VolumePhase, VolumeSpec,
};

use crate::ctx::Globals;
use crate::output::{age, opt, print, table};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (empty, or from a snapshot) and wait until its host made it.
    #[command(
        after_help = "Examples:\n  nimbus volume create data --size 5GiB\n  nimbus volume create data2 --from-snapshot data@before-upgrade"
    )]
    Create {
        name: String,
        /// Size, e.g. 5GiB; from a snapshot it defaults to the snapshot's size.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// VOLUME@SNAPSHOT to copy the data from.
        #[arg(long)]
        from_snapshot: Option<String>,
        /// Host keeping the data (default: a ready host; a clone's source's host).
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// List volumes of the project.
    #[command(alias = "ls")]
    List,
    /// Show one volume.
    Get { name: String },
    /// Grow a volume, also while an instance holds it: a running
    /// container's filesystem grows online; a running VM sees the larger
    /// disk, and growing its filesystem is the guest's job.
    Resize {
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long)]
        no_wait: bool,
    },
    /// Take a snapshot of a volume.
    #[command(args_conflicts_with_subcommands = true)]
    #[command(
        after_help = "Examples:\n  nimbus volume snapshot data --name before-upgrade\n  nimbus volume snapshot list data\n  nimbus volume snapshot rm data before-upgrade"
    )]
    Snapshot {
        #[command(subcommand)]
        cmd: Option<SnapshotCmd>,
        /// The volume to snapshot.
        volume: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// Attach a volume to an existing instance: a running VM gets it
    /// hot-plugged as a virtio disk (`/dev/disk/by-id/virtio-<volume>`), a
    /// running container gets it mounted at `--path` at once, a stopped
    /// instance at its next start.
    #[command(
        after_help = "Examples:\n  nimbus volume attach data --instance db\n  nimbus volume attach data --instance web --path /var/lib/db --read-only"
    )]
    Attach {
        name: String,
        #[arg(long)]
        instance: String,
        /// Where a container mounts it (required for containers; a VM's
        /// guest mounts its disk itself).
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        read_only: bool,
        /// Return once recorded, without waiting for a running VM's hot-plug.
        #[arg(long)]
        no_wait: bool,
    },
    /// Detach a volume from an instance: a running VM's disk is unplugged
    /// (the guest must release it); a running container's mount is flushed
    /// and removed (lazily, and said so, while a process there holds it).
    #[command(after_help = "Example:\n  nimbus volume detach data --instance db")]
    Detach {
        name: String,
        #[arg(long)]
        instance: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a volume and its snapshots; waits until its data is gone.
    #[command(alias = "delete")]
    Rm {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// List a volume's snapshots.
    #[command(alias = "ls")]
    List { volume: String },
    /// Delete a snapshot.
    #[command(alias = "delete")]
    Rm { volume: String, snapshot: String },
}

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// Set the project's limits (system administrators). `none` lifts one.
    #[command(
        after_help = "Examples:\n  nimbus quota set --volumes 10 --volume-bytes 100GiB\n  nimbus quota set --instances 20 --vcpus 16 --memory 32GiB --disk 50GiB\n  nimbus --project ops quota set --volume-bytes none\n  nimbus quota set --image-bytes 20GiB"
    )]
    Set {
        /// How many volumes the project may hold.
        #[arg(long)]
        volumes: Option<String>,
        /// Bytes of volumes and snapshots together, e.g. 100GiB.
        #[arg(long)]
        volume_bytes: Option<String>,
        /// How many instances the project may hold.
        #[arg(long)]
        instances: Option<String>,
        /// vCPUs of all its instances together (a VM counts its vcpus, a
        /// container its --cpus rounded up, at least 1).
        #[arg(long)]
        vcpus: Option<String>,
        /// Memory limits of all its instances together, e.g. 16GiB.
        #[arg(long)]
        memory: Option<String>,
        /// Host disk of all its instances together, e.g. 50GiB: each
        /// one's --disk (a container without one counts 10GiB) plus its
        /// log cap. Volumes count in --volume-bytes.
        #[arg(long)]
        disk: Option<String>,
        /// Bytes of image content the project holds, e.g. 20GiB: each
        /// distinct blob of its images and registry repositories once,
        /// plus its open registry uploads.
        #[arg(long)]
        image_bytes: Option<String>,
    },
    /// Show the project's limits and what it uses.
    Get,
}

fn volume_rows(items: &[Volume]) -> String {
    table(
        &[
            "name",
            "size",
            "status",
            "host",
            "snapshots",
            "allocated",
            "age",
        ],
        items
            .iter()
            .map(|v| {
                let phase = if v.metadata.deletion_requested_at.is_some() {
                    VolumePhase::Deleting
                } else {
                    v.status.phase
                };
                vec![
                    v.metadata.name.clone(),
                    format_size(v.spec.size_bytes),
                    phase.as_str().to_string(),
                    opt(v.spec.host.as_deref()),
                    v.spec.snapshots.len().to_string(),
                    format_size(v.status.allocated_bytes),
                    age(Some(v.metadata.created_at)),
                ]
            })
            .collect(),
    )
}

fn volume_detail(v: &Volume) -> String {
    let mut out = volume_rows(std::slice::from_ref(v));
    if let Some(m) = &v.status.message {
        let label = if v.status.phase == VolumePhase::Error {
            "error"
        } else {
            "note"
        };
        out.push_str(&format!("\n{label}: {m}"));
    }
    if let Some(src) = &v.spec.from_snapshot {
        out.push_str(&format!("\nfrom snapshot: {src}"));
    }
    out
}

/// What growing a held volume means for its holder.
fn grown_note(holder: &Instance, v: &Volume) -> Option<String> {
    let volume = &v.metadata.name;
    let name = &holder.metadata.name;
    match holder.spec.kind {
        // A filesystem that could not grow online comes with the
        // host's note instead.
        InstanceKind::Container if v.status.message.is_none() => Some(format!(
            "container {name:?} holds it: its filesystem was grown online (`df` there shows the new size)"
        )),
        InstanceKind::Container => None,
        InstanceKind::Vm => Some(format!(
            "VM {name:?} holds it: the guest sees the larger disk now; grow its filesystem inside the guest (e.g. `resize2fs` on /dev/disk/by-id/virtio-{volume})"
        )),
        InstanceKind::Unikernel => None,
    }
}

fn snapshot_rows(v: &Volume) -> String {
    table(
        &["name", "size", "taken", "consistency", "age"],
        v.spec
            .snapshots
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    format_size(s.size_bytes),
                    if v.status.snapshots.contains(&s.name) {
                        "yes".into()
                    } else {
                        "pending".into()
                    },
                    v.status
                        .snapshot_consistency
                        .get(&s.name)
                        .map_or("-", |c| c.as_str())
                        .to_string(),
                    age(Some(s.created_at)),
                ]
            })
            .collect(),
    )
}

/// Whether the host has made what the spec asks for.
fn converged(v: &Volume) -> bool {
    v.status.phase == VolumePhase::Available
        && v.status.size_bytes >= v.spec.size_bytes
        && v.spec.snapshots.len() == v.status.snapshots.len()
        && v.spec
            .snapshots
            .iter()
            .all(|s| v.status.snapshots.contains(&s.name))
}

const WAIT: Duration = Duration::from_secs(120);

/// Poll until the volume's host converged it (`None` once it is gone
/// when `gone_ok`); its error, if it reports one.
async fn wait_volume(
    client: &Client,
    path: &str,
    name: &str,
    gone_ok: bool,
) -> anyhow::Result<Option<Volume>> {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.get::<Volume>(path).await {
            Ok(v) if !gone_ok && converged(&v) => return Ok(Some(v)),
            Ok(v) if !gone_ok && v.status.phase == VolumePhase::Error => anyhow::bail!(
                "volume {name:?} failed on host {}: {}; see `nimbus volume get {name}`",
                v.spec.host.as_deref().unwrap_or("-"),
                v.status.message.as_deref().unwrap_or("no message")
            ),
            Ok(v) if Instant::now() > deadline => anyhow::bail!(
                "volume {name:?} is still {} after {}s: is the agent of host {} running? See `nimbus volume get {name}`",
                v.status.phase.as_str(),
                WAIT.as_secs(),
                v.spec.host.as_deref().unwrap_or("-")
            ),
            Ok(_) => {}
            Err(e) if gone_ok && e.code() == Some(ErrorCode::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn volume(g: &Globals, cmd: VolumeCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    let path = |name: &str| format!("/v1/projects/{p}/volumes/{name}");
    match cmd {
        VolumeCmd::Create {
            name,
            size,
            from_snapshot,
            host,
            no_wait,
        } => {
            if size.is_none() && from_snapshot.is_none() {
                anyhow::bail!("give the volume a size, e.g. `nimbus volume create {name} --size 5GiB`, or --from-snapshot VOLUME@SNAPSHOT");
            }
            let req = CreateRequest {
                name: name.clone(),
                labels: Default::default(),
                spec: VolumeSpec {
                    size_bytes: size.unwrap_or(0),
                    host,
                    from_snapshot,
                    ..Default::default()
                },
            };
            let mut v: Volume = client
                .post(&format!("/v1/projects/{p}/volumes"), &req)
                .await?;
            if !no_wait {
                v = wait_volume(&client, &path(&name), &name, false)
                    .await?
                    .unwrap_or(v);
            }
            print(g, &v, || volume_detail(&v))
        }
        VolumeCmd::List => {
            let list: ResourceList<Volume> = client
                .list_all(&format!("/v1/projects/{p}/volumes"))
                .await?;
            print(g, &list, || volume_rows(&list.items))
        }
        VolumeCmd::Get { name } => {
            let v: Volume = client.get(&path(&name)).await?;
            print(g, &v, || volume_detail(&v))
        }
        VolumeCmd::Resize {
            name,
            size,
            no_wait,
        } => {
            let mut v: Volume = client
                .post(
                    &format!("{}/resize", path(&name)),
                    &ResizeVolume { size_bytes: size },
                )
                .await?;
            if !no_wait {
                v = wait_volume(&client, &path(&name), &name, false)
                    .await?
                    .unwrap_or(v);
            }
            let holder = crate::cmd::volume_attach::holder_of(&client, p, &name).await;
            print(g, &v, || {
                let mut out = volume_detail(&v);
                if let Some(note) = holder.as_ref().and_then(|h| grown_note(h, &v)) {
                    out.push_str(&format!("\n{note}"));
                }
                out
            })
        }
        VolumeCmd::Snapshot {
            cmd: Some(SnapshotCmd::List { volume }),
            ..
        } => {
            let v: Volume = client.get(&path(&volume)).await?;
            print(g, &v.spec.snapshots, || snapshot_rows(&v))
        }
        VolumeCmd::Snapshot {
            cmd: Some(SnapshotCmd::Rm { volume, snapshot }),
            ..
        } => {
            client
                .request_bytes(
                    Method::DELETE,
                    &format!("{}/snapshots/{snapshot}", path(&volume)),
                    None,
                )
                .await?;
            print(
                g,
                &serde_json::json!({"deleted": format!("{volume}@{snapshot}")}),
                || format!("snapshot {volume}@{snapshot} deleted"),
            )
        }
        VolumeCmd::Snapshot {
            cmd: None,
            volume,
            name,
            no_wait,
        } => {
            let (Some(volume), Some(snapshot)) = (volume, name) else {
                anyhow::bail!("name the volume and the snapshot, e.g. `nimbus volume snapshot data --name before-upgrade`");
            };
            let mut v: Volume = client
                .post(
                    &format!("{}/snapshots", path(&volume)),
                    &CreateSnapshot {
                        name: snapshot.clone(),
                    },
                )
                .await?;
            if !no_wait {
                v = wait_volume(&client, &path(&volume), &volume, false)
                    .await?
                    .unwrap_or(v);
            }
            print(g, &v, || {
                format!("snapshot {volume}@{snapshot} taken\n{}", snapshot_rows(&v))
            })
        }
        VolumeCmd::Attach {
            name,
            instance,
            path,
            read_only,
            no_wait,
        } => {
            let req = nimbus_api::AttachVolume {
                instance,
                path,
                read_only,
            };
            super::volume_attach::attach(g, &client, &name, req, no_wait).await
        }
        VolumeCmd::Detach {
            name,
            instance,
            no_wait,
        } => super::volume_attach::detach(g, &client, &name, &instance, no_wait).await,
        VolumeCmd::Rm { name, no_wait } => {
            client
                .request_bytes(Method::DELETE, &path(&name), None)
                .await?;
            if !no_wait {
                wait_volume(&client, &path(&name), &name, true).await?;
            }
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("volume {name:?} deleted")
            })
        }
    }
}

/// `10`, `none` → Some(Some(10)), Some(None).
fn limit<T>(
    text: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<Option<T>>> {
    match text {
        None => Ok(None),
        Some("none") | Some("unlimited") => Ok(Some(None)),
        Some(t) => parse(t).map(|v| Some(Some(v))).map_err(anyhow::Error::msg),
    }
}

pub async fn quota(g: &Globals, cmd: QuotaCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    let path = format!("/v1/projects/{p}");
    let mut project: Project = client.get(&path).await?;
    if let QuotaCmd::Set {
        volumes,
        volume_bytes,
        instances,
        vcpus,
        memory,
        disk,
        image_bytes,
    } = cmd
    {
        let count = |flag: &'static str| {
            move |t: &str| {
                t.parse::<u32>()
                    .map_err(|_| format!("--{flag} {t:?} is not a count; give e.g. 10 or none"))
            }
        };
        let instances = limit(instances.as_deref(), count("instances"))?;
        let vcpus = limit(vcpus.as_deref(), count("vcpus"))?;
        let memory = limit(memory.as_deref(), parse_size)?;
        let disk = limit(disk.as_deref(), parse_size)?;
        let volumes = limit(volumes.as_deref(), |t| {
            t.parse::<u32>()
                .map_err(|_| format!("--volumes {t:?} is not a count; give e.g. 10 or none"))
        })?;
        let bytes = limit(volume_bytes.as_deref(), parse_size)?;
        let images = limit(image_bytes.as_deref(), parse_size)?;
        if volumes.is_none()
            && bytes.is_none()
            && instances.is_none()
            && vcpus.is_none()
            && memory.is_none()
            && disk.is_none()
            && images.is_none()
        {
            anyhow::bail!("give one or more of --volumes N, --volume-bytes SIZE, --instances N, --vcpus N, --memory SIZE, --disk SIZE, --image-bytes SIZE (or none to lift a limit)");
        }
        if let Some(v) = instances {
            project.spec.quota.instances = v;
        }
        if let Some(v) = vcpus {
            project.spec.quota.vcpus = v;
        }
        if let Some(v) = memory {
            project.spec.quota.memory_bytes = v;
        }
        if let Some(v) = disk {
            project.spec.quota.disk_bytes = v;
        }
        if let Some(v) = volumes {
            project.spec.quota.volumes = v;
        }
        if let Some(b) = bytes {
            project.spec.quota.volume_bytes = b;
        }
        if let Some(b) = images {
            project.spec.quota.image_bytes = b;
        }
        project = client
            .put(&path, &project.spec)
            .await
            .map_err(|e: ClientError| anyhow::anyhow!(e))?;
    }
    let used: ResourceList<Volume> = client.list_all(&format!("{path}/volumes")).await?;
    let bytes: u64 = used.items.iter().map(Volume::counted_bytes).sum();
    let instances: ResourceList<nimbus_api::Instance> =
        client.list_all(&format!("{path}/instances")).await?;
    let vcpus: u64 = instances.items.iter().map(|i| i.spec.quota_vcpus()).sum();
    let memory: u64 = instances
        .items
        .iter()
        .map(|i| i.spec.resources.memory_bytes.unwrap_or(0))
        .sum();
    let disk: u64 = instances
        .items
        .iter()
        .map(|i| i.spec.disk_demand_bytes())
        .sum();
    let usage: nimbus_api::UsageReport = client.get(&format!("{path}/usage")).await?;
    let image_bytes = usage.image_bytes;
    let q = &project.spec.quota;
    let out = serde_json::json!({
        "project": p,
        "quota": q,
        "used": {"volumes": used.items.len(), "volume_bytes": bytes,
            "instances": instances.items.len(), "vcpus": vcpus, "memory_bytes": memory,
            "disk_bytes": disk, "image_bytes": image_bytes},
    });
    print(g, &out, || {
        table(
            &["resource", "used", "limit"],
            vec![
                vec![
                    "volumes".into(),
                    used.items.len().to_string(),
                    opt(q.volumes),
                ],
                vec![
                    "volume bytes".into(),
                    format_size(bytes),
                    q.volume_bytes
                        .map(format_size)
                        .unwrap_or_else(|| "-".into()),
                ],
                vec![
                    "instances".into(),
                    instances.items.len().to_string(),
                    opt(q.instances),
                ],
                vec!["vcpus".into(), vcpus.to_string(), opt(q.vcpus)],
                vec![
                    "memory".into(),
                    format_size(memory),
                    q.memory_bytes
                        .map(format_size)
                        .unwrap_or_else(|| "-".into()),
                ],
                vec![
                    "disk".into(),
                    format_size(disk),
                    q.disk_bytes.map(format_size).unwrap_or_else(|| "-".into()),
                ],
                vec![
                    "image bytes".into(),
                    format_size(image_bytes),
                    q.image_bytes.map(format_size).unwrap_or_else(|| "-".into()),
                ],
            ],
        )
    })
}
