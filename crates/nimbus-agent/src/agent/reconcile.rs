//! One worker per instance: converges the instance's host side (its
//! directory and shim) to the latest spec, and reports status back.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use nimbus_api::{
    DesiredState, Image, Instance, InstanceKind, InstancePhase, InstanceStatus, RestartMode,
    StatusUpdate,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{translate, Agent};
use crate::container::{self, Phase, ShimClient, ShimState};

/// Map a shim's state to the API's status.
pub fn status_from_shim(state: &ShimState, stop_requested: bool) -> InstanceStatus {
    let phase = match state.phase {
        Phase::Starting => InstancePhase::Starting,
        Phase::Running => InstancePhase::Running,
        Phase::Paused => InstancePhase::Paused,
        Phase::Backoff => InstancePhase::Backoff,
        // The workload exited by itself and the shim is unmounting: for
        // the user it has exited (its output and exit status are final).
        Phase::Stopping if state.finished_at.is_some() && !stop_requested => InstancePhase::Exited,
        Phase::Stopping => InstancePhase::Stopping,
        Phase::Exited if stop_requested => InstancePhase::Stopped,
        Phase::Exited => InstancePhase::Exited,
        Phase::Failed => InstancePhase::Failed,
    };
    InstanceStatus {
        phase,
        pid: state.pid.filter(|_| !state.phase.is_final()),
        exit_code: state.exit_code,
        signal: state.signal,
        oom_killed: state.oom_killed,
        started_at: state.started_at,
        finished_at: state.finished_at,
        restart_count: state.restart_count,
        reason: if phase == InstancePhase::Stopped {
            Some(match state.exit_code {
                Some(c) => format!("stopped on request (exit code {c})"),
                None => "stopped on request".into(),
            })
        } else {
            state.reason.clone()
        },
        exit_reason: state
            .finished_at
            .and(state.reason.clone())
            .filter(|_| state.phase.is_final() || state.phase == Phase::Stopping),
        accelerator: state.accelerator.clone(),
        accelerator_reason: state.accelerator_reason.clone(),
        qemu_pid: state
            .pid
            .filter(|_| state.accelerator.is_some() && !state.phase.is_final()),
        console_log: state.console_log.clone(),
        ..Default::default()
    }
}

struct Tracked {
    /// Follows the shim's states; ends with `true` when the shim died
    /// without a final state and the restart policy wants the workload
    /// back (see [`forward_states`]).
    subscription: Option<JoinHandle<bool>>,
    /// The restart generation this worker last started. Watch events can
    /// carry an older status (written before our own report), so the
    /// stored `observed_generation` alone would start the workload twice.
    started_generation: Option<u64>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(s) = self.subscription.take() {
            s.abort();
        }
    }
}

pub async fn worker(agent: Arc<Agent>, mut rx: mpsc::UnboundedReceiver<Instance>) {
    let mut tracked = Tracked {
        subscription: None,
        started_generation: None,
    };
    let mut latest: Option<Instance> = None;
    loop {
        let follower_ended = async {
            match tracked.subscription.as_mut() {
                Some(follower) => follower.await.unwrap_or(false),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = rx.recv() => match received {
                Some(instance) => latest = Some(instance),
                None => return,
            },
            restart = follower_ended => {
                tracked.subscription = None;
                // A lost shim: reconcile the latest version of the
                // instance again, which starts it anew.
                if !restart {
                    continue;
                }
            }
        }
        while let Ok(newer) = rx.try_recv() {
            latest = Some(newer);
        }
        let Some(instance) = latest.clone() else {
            continue;
        };
        match step(&agent, &instance, &mut tracked).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(reason) => {
                tracing::warn!(instance = %instance.metadata.name, %reason, "instance failed");
                let status = InstanceStatus {
                    phase: InstancePhase::Failed,
                    reason: Some(reason),
                    finished_at: Some(Utc::now()),
                    observed_generation: instance.spec.restart_generation,
                    ..Default::default()
                };
                report(&agent, &instance, status, false).await;
            }
        }
    }
}

fn shim_alive(dir: &Path) -> Option<ShimClient> {
    ShimClient::connect(dir).ok()
}

/// Whether the shim that wrote `dir`'s state is still a live process and
/// has not recorded an end.
fn shim_process_alive(dir: &Path) -> bool {
    container::read_state(dir).is_some_and(|s| {
        !s.phase.is_final() && Path::new(&format!("/proc/{}", s.shim_pid)).exists()
    })
}

/// One reconcile pass; `Ok(true)` when the instance is gone for good.
async fn step(
    agent: &Arc<Agent>,
    instance: &Instance,
    tracked: &mut Tracked,
) -> Result<bool, String> {
    let dir = agent.instance_dir(&instance.metadata.id);
    let grace = instance
        .spec
        .stop_grace_ms
        .unwrap_or(translate::DEFAULT_STOP_GRACE_MS);

    if instance.metadata.deletion_requested_at.is_some() {
        if let Some(s) = tracked.subscription.take() {
            s.abort();
        }
        destroy_local(agent, &dir, grace).await?;
        report(agent, instance, InstanceStatus::default(), true).await;
        return Ok(true);
    }

    let live = shim_alive(&dir);
    let wanted_generation = instance.spec.restart_generation;
    match instance.spec.desired_state {
        DesiredState::Running => {
            let acted = instance.status.observed_generation == wanted_generation
                || tracked.started_generation == Some(wanted_generation);
            if !acted {
                tracked.started_generation = Some(wanted_generation);
                if let Some(s) = tracked.subscription.take() {
                    s.abort();
                }
                if let Some(client) = live {
                    client.stop_async(grace).await.map_err(|e| e.to_string())?;
                }
                launch(agent, instance, &dir, tracked, 0).await?;
            } else if tracked
                .subscription
                .as_ref()
                .is_none_or(JoinHandle::is_finished)
            {
                tracked.subscription = None;
                // Adopt: after an agent restart, or a shim that ended. The
                // watch event may predate our own report of this start, so
                // the generation acted on is the wanted one either way.
                let mut base = instance.status.clone();
                base.observed_generation = wanted_generation;
                if live.is_some() {
                    tracked.subscription = Some(follow(agent.clone(), instance.clone(), base));
                } else if !instance.status.phase.is_terminal() {
                    let shim_died = container::read_state(&dir).is_none_or(|s| !s.phase.is_final());
                    if shim_died && restarts_after_lost_shim(instance) {
                        // The host rebooted or the shim was killed: the restart
                        // policy asks for the workload to come back.
                        tracing::info!(instance = %instance.metadata.name, "supervisor gone; starting again");
                        let owned = dir.clone();
                        tokio::task::spawn_blocking(move || {
                            container::cleanup_instance_dir(&owned)
                        })
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                        // It counts as a restart, as for a dead workload.
                        let restarts = instance.status.restart_count.saturating_add(1);
                        launch(agent, instance, &dir, tracked, restarts).await?;
                    } else {
                        if shim_died {
                            // Nothing supervises what the shim left running
                            // (a container's processes, a VM's QEMU): end it.
                            let owned = dir.clone();
                            let cleaned = tokio::task::spawn_blocking(move || {
                                container::cleanup_instance_dir(&owned)
                            })
                            .await;
                            if let Ok(Err(e)) = cleaned {
                                tracing::warn!(instance = %instance.metadata.name, error = %e, "cleaning up after a dead supervisor");
                            }
                        }
                        report_final(agent, instance, &dir, base, false).await;
                    }
                }
            }
        }
        DesiredState::Stopped => {
            if let Some(s) = tracked.subscription.take() {
                s.abort();
            }
            let mut base = instance.status.clone();
            base.observed_generation = instance.status.observed_generation;
            // A shim already stopping or done (e.g. right after our own stop)
            // must not be stopped again.
            let live = match live {
                Some(c) => match c.status_async().await {
                    Ok(s) if s.phase.is_final() || s.phase == Phase::Stopping => None,
                    _ => Some(c),
                },
                None => None,
            };
            if let Some(client) = live {
                let mut stopping = base.clone();
                stopping.phase = InstancePhase::Stopping;
                report(agent, instance, stopping, false).await;
                let final_state = client.stop_async(grace).await.map_err(|e| e.to_string())?;
                let mut status = status_from_shim(&final_state, true);
                status.observed_generation = base.observed_generation;
                status.host_uid = base.host_uid;
                report(agent, instance, status, false).await;
            } else if !instance.status.phase.is_terminal() {
                report_final(agent, instance, &dir, base, true).await;
            }
        }
    }
    Ok(false)
}

/// Start the instance's shim, report it, and follow its state changes.
/// `restarts_before`: restarts already made (by a shim that was lost).
async fn launch(
    agent: &Arc<Agent>,
    instance: &Instance,
    dir: &Path,
    tracked: &mut Tracked,
    restarts_before: u32,
) -> Result<(), String> {
    let state = start(agent, instance, dir, restarts_before).await?;
    let mut status = status_from_shim(&state, false);
    status.observed_generation = instance.spec.restart_generation;
    status.host_uid = super::idmap::recorded_range(dir);
    // Subscribe before reporting: a short-lived workload's exit is then
    // already on its way while the report is being made.
    let subscription = if state.phase.is_final() {
        None
    } else {
        Some(subscribe(dir).await)
    };
    report(agent, instance, status.clone(), false).await;
    if let Some(stream) = subscription {
        tracked.subscription = Some(follow_stream(
            agent.clone(),
            instance.clone(),
            status,
            stream,
        ));
    }
    Ok(())
}

/// The shim is gone: report what its state file recorded.
async fn report_final(
    agent: &Agent,
    instance: &Instance,
    dir: &Path,
    base: InstanceStatus,
    stop_requested: bool,
) {
    let status = final_status(dir, &base, stop_requested);
    report(agent, instance, status, false).await;
}

/// The status of an instance whose shim has ended, from its state file.
fn final_status(dir: &Path, base: &InstanceStatus, stop_requested: bool) -> InstanceStatus {
    let mut status = match container::read_state(dir) {
        Some(s) if s.phase.is_final() => status_from_shim(&s, stop_requested),
        Some(s) => {
            let mut st = status_from_shim(&s, stop_requested);
            st.phase = InstancePhase::Failed;
            st.pid = None;
            st.qemu_pid = None;
            st.reason =
                Some("the instance's shim is gone (host reboot or crash); start it again".into());
            st
        }
        None if stop_requested => InstanceStatus {
            phase: InstancePhase::Stopped,
            reason: Some("stopped before it started".into()),
            ..Default::default()
        },
        None => InstanceStatus {
            phase: InstancePhase::Failed,
            reason: Some("the instance never started on this host".into()),
            ..Default::default()
        },
    };
    status.observed_generation = base.observed_generation;
    status.host_uid = base.host_uid;
    status
}

/// Prepare the instance directory and spawn its shim.
async fn start(
    agent: &Arc<Agent>,
    instance: &Instance,
    dir: &Path,
    restarts_before: u32,
) -> Result<ShimState, String> {
    let t0 = std::time::Instant::now();
    let project = instance.metadata.project.clone().unwrap_or_default();
    let mut starting = instance.status.clone();
    starting.phase = InstancePhase::Starting;
    starting.reason = None;
    let key = instance.status.image_id.clone();
    let cached = key
        .as_ref()
        .and_then(|k| agent.image_cache.lock().ok()?.get(k).cloned());
    // The status report and (when not cached) the image lookup are
    // independent round trips to the server.
    let (image, ()) = tokio::join!(
        async {
            match cached {
                Some(image) => Ok(image),
                None => fetch_image(agent, &project, &instance.spec.image).await,
            }
        },
        report(agent, instance, starting, false)
    );
    let image = image?;
    if key.as_ref().is_some_and(|k| *k != image.metadata.id) {
        return Err(format!(
            "image {:?} was replaced after the instance was created; create the instance again",
            instance.spec.image
        ));
    }
    if let Ok(mut cache) = agent.image_cache.lock() {
        cache.insert(image.metadata.id.clone(), image.clone());
    }
    if instance.spec.kind != InstanceKind::Container {
        prepare_vm(agent, instance, &image, dir).await?;
        if let Some(a) = agent.net.attach_vm(agent, instance).await? {
            if instance.spec.kind == InstanceKind::Vm {
                // A stock cloud image takes its address from the seed's
                // network-config; other guests ask the router's DHCP.
                let (d, i, config) = (
                    dir.to_path_buf(),
                    instance.clone(),
                    a.config.network_config_v2(),
                );
                tokio::task::spawn_blocking(move || crate::vm::write_seed(&d, &i, Some(config)))
                    .await
                    .map_err(|e| e.to_string())??;
            }
            let mut spec = crate::vm::spec::VmShimSpec::load(dir).map_err(|e| e.to_string())?;
            spec.tap = Some(crate::vm::spec::TapRef {
                netns: a.router_netns,
                name: a.tap_name,
                mac: a.config.mac.clone(),
            });
            spec.save(dir).map_err(|e| e.to_string())?;
        }
    } else {
        let layers = layer_dirs(agent, &image)
            .await
            .map_err(|e| format!("image {:?} layers: {e}", instance.spec.image))?;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let id_map = agent
            .ids
            .allocate(&agent.config.instances_dir(), dir)
            .await?;
        let secret_env = fetch_secret_env(agent, instance).await?;
        let mut spec = translate::shim_spec(instance, &image, layers, id_map, &secret_env);
        spec.restarts_before = restarts_before;
        if let Some(a) = agent.net.attach_container(agent, instance, dir).await? {
            spec.netns = Some(a.netns);
            spec.resolv_conf = Some(a.resolv_conf);
            spec.hosts_file = Some(a.hosts_file);
        }
        spec.save(dir).map_err(|e| e.to_string())?;
    }
    let exe = agent.config.exe.clone();
    let dir = dir.to_path_buf();
    let r = tokio::task::spawn_blocking(move || container::spawn_shim(&exe, &dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string());
    tracing::debug!(
        instance = %instance.metadata.name,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "shim spawned"
    );
    r
}

/// Overlay, seed and `vm.json` for a VM or unikernel.
async fn prepare_vm(
    agent: &Arc<Agent>,
    instance: &Instance,
    image: &Image,
    dir: &Path,
) -> Result<(), String> {
    let accel = agent.accelerator().await;
    let kernel_image = match instance
        .spec
        .vm
        .as_ref()
        .and_then(|v| v.kernel_image.clone())
    {
        Some(name) => {
            let project = instance.metadata.project.clone().unwrap_or_default();
            Some(fetch_image(agent, &project, &name).await?)
        }
        None => None,
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // QEMU drops to the first id of the instance's own range: the range is
    // recorded in vm.json, so it stays across restarts and is released
    // with the instance.
    let ids = agent
        .ids
        .allocate(&agent.config.instances_dir(), dir)
        .await?;
    let run_as = crate::vm::RunAs::Ids {
        uid: ids.host_id,
        gid: ids.host_id,
    };
    let (agent, instance, image, dir) = (
        agent.clone(),
        instance.clone(),
        image.clone(),
        dir.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        crate::vm::prepare_instance(
            &dir,
            run_as,
            &instance,
            &image,
            kernel_image.as_ref(),
            &agent.images,
            &accel,
            instance
                .spec
                .stop_grace_ms
                .unwrap_or(translate::DEFAULT_STOP_GRACE_MS),
            translate::LOG_MAX_BYTES,
            translate::LOG_FILES,
        )
        .map(drop)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn fetch_image(agent: &Agent, project: &str, name: &str) -> Result<Image, String> {
    agent
        .client
        .get::<Image>(&format!("/v1/projects/{project}/images/{name}"))
        .await
        .map_err(|e| format!("image {name:?}: {e}"))
}

/// The opened secret environment of an instance: the watch shows only the
/// names, the values come from the server for this host's token alone.
async fn fetch_secret_env(
    agent: &Agent,
    instance: &Instance,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    if instance.spec.secret_env.is_empty() {
        return Ok(Default::default());
    }
    let project = instance.metadata.project.clone().unwrap_or_default();
    let name = &instance.metadata.name;
    agent
        .client
        .get::<nimbus_api::SecretEnv>(&format!(
            "/v1/projects/{project}/instances/{name}/secret-env"
        ))
        .await
        .map(|s| s.values)
        .map_err(|e| format!("secret environment of instance {name:?}: {e}"))
}

async fn layer_dirs(agent: &Arc<Agent>, image: &Image) -> Result<Vec<std::path::PathBuf>, String> {
    let imported = nimbus_image::ImportedImage::from_api(&image.status);
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || agent.images.layer_dirs(&imported))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

type Subscription = Result<container::control::AsyncStateStream, container::ShimError>;

/// A subscription to the state changes of the shim in `dir`. A failed
/// attempt is retried while the shim's process lives: treating a hiccup
/// as the shim's death would end a running workload.
async fn subscribe(dir: &Path) -> Subscription {
    let mut attempt = 0;
    loop {
        let result = match ShimClient::connect(dir) {
            Ok(c) => c.subscribe_async().await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if attempt < 10 && shim_process_alive(dir) => {
                tracing::debug!(dir = %dir.display(), error = %e, "subscribing to the shim again");
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Whether a workload whose shim died without recording an end (killed,
/// host reboot) starts again: its restart policy decides, as for a
/// workload that died under a live shim. The shim was lost, not the
/// workload's own failure, so `on_failure` restarts it too.
fn restarts_after_lost_shim(instance: &Instance) -> bool {
    let policy = &instance.spec.restart_policy;
    match policy.mode {
        RestartMode::Never => false,
        RestartMode::Always => true,
        RestartMode::OnFailure => policy
            .max_retries
            .is_none_or(|max| instance.status.restart_count < max),
    }
}

/// Forward every state change of the shim to the server until it ends.
fn follow(agent: Arc<Agent>, instance: Instance, base: InstanceStatus) -> JoinHandle<bool> {
    tokio::spawn(async move {
        let dir = agent.instance_dir(&instance.metadata.id);
        let stream = subscribe(&dir).await;
        forward_states(agent, instance, base, stream).await
    })
}

/// [`follow`] with a subscription already made.
fn follow_stream(
    agent: Arc<Agent>,
    instance: Instance,
    base: InstanceStatus,
    stream: Subscription,
) -> JoinHandle<bool> {
    tokio::spawn(forward_states(agent, instance, base, stream))
}

async fn forward_states(
    agent: Arc<Agent>,
    instance: Instance,
    base: InstanceStatus,
    stream: Subscription,
) -> bool {
    {
        let dir = agent.instance_dir(&instance.metadata.id);
        // What the server already has: the subscription starts with the
        // current state, which is usually the one just reported.
        let mut last = base.clone();
        if let Ok(mut stream) = stream {
            while let Some(Ok(state)) = stream.next().await {
                let mut status = status_from_shim(&state, false);
                status.observed_generation = base
                    .observed_generation
                    .max(instance.spec.restart_generation);
                status.host_uid = base.host_uid;
                if status != last {
                    report(&agent, &instance, status.clone(), false).await;
                    last = status;
                }
                if state.phase.is_final() {
                    return false;
                }
            }
        }
        // The shim closed the stream: it has exited; its state file says how.
        let shim_died = container::read_state(&dir).is_some_and(|s| !s.phase.is_final());
        if shim_died && restarts_after_lost_shim(&instance) {
            // Lost like a workload that died: the worker cleans up what the
            // shim left and starts it again, as its restart policy asks.
            // Nothing is reported in between, so the instance never shows
            // `failed` on its way back.
            tracing::info!(instance = %instance.metadata.name, "shim died; the restart policy starts the instance again");
            return true;
        }
        // A shim that died without recording an end leaves its workload (a
        // container's processes, a VM's QEMU) unsupervised: end it.
        if shim_died {
            let owned = dir.clone();
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || container::cleanup_instance_dir(&owned)).await
            {
                tracing::warn!(instance = %instance.metadata.name, error = %e, "cleaning up after a dead shim");
            }
        }
        let mut base = base;
        base.observed_generation = base
            .observed_generation
            .max(instance.spec.restart_generation);
        let status = final_status(&dir, &base, false);
        if status != last {
            report(&agent, &instance, status, false).await;
        }
        false
    }
}

async fn report(agent: &Agent, instance: &Instance, status: InstanceStatus, finalized: bool) {
    let project = instance.metadata.project.clone().unwrap_or_default();
    let path = format!(
        "/v1/projects/{project}/instances/{}/status",
        instance.metadata.name
    );
    let body = StatusUpdate { status, finalized };
    let result = agent
        .client
        .request_bytes(
            hyper::Method::POST,
            &path,
            Some(serde_json::to_vec(&body).unwrap_or_default()),
        )
        .await;
    if let Err(e) = result {
        tracing::warn!(instance = %instance.metadata.name, error = %e, "status report failed");
    }
}

/// Stop the shim if it runs and remove everything the instance had here.
pub async fn destroy_local(agent: &Agent, dir: &Path, grace_ms: u64) -> Result<(), String> {
    let id_range = super::idmap::recorded_range(dir);
    if let Some(client) = shim_alive(dir) {
        if let Err(e) = client.stop_async(grace_ms).await {
            tracing::warn!(dir = %dir.display(), error = %e, "stopping the shim failed; cleaning up by force");
        }
    }
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        container::cleanup_instance_dir(&owned).map_err(|e| e.to_string())?;
        match std::fs::remove_dir_all(&owned) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", owned.display())),
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    if let Some(host_id) = id_range {
        agent.ids.release(host_id).await;
    }
    if let Some(id) = dir.file_name() {
        agent.net.detach(&id.to_string_lossy()).await;
    }
    Ok(())
}
