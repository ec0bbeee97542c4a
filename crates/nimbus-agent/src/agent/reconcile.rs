//! One worker per instance: converges the instance's host side (its
//! directory and shim) to the latest spec, and reports status back.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use nimbus_api::{DesiredState, Instance, InstancePhase, InstanceStatus, StatusUpdate};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::decision::{decide, restarts_after_lost_shim, Action, Local, ShimSeen};
use super::error::{blocking, AgentError};
use super::{translate, Agent};
use crate::driver::{Driver, DriverContext, Launch};
use crate::shim::{self, Phase, ShimClient, ShimState};

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
        // Cut off from the servers (fenced): start nothing; afterwards act
        // on what the servers say now, as the instance may have moved.
        if agent.fence.wait_lifted().await {
            let fresh = reread(&agent, latest.as_ref()).await;
            tracing::debug!(instance = ?latest.as_ref().map(|i| &i.metadata.name), here = matches!(fresh, Reread::Here(_)), "re-read after the fence");
            match fresh {
                Reread::Here(fresh) => latest = Some(*fresh),
                Reread::Gone => {
                    if let Some(left) = latest.as_ref() {
                        remove_stale_copy(&agent, left).await;
                    }
                    return;
                }
                Reread::Unknown => {}
            }
        }
        let Some(instance) = latest.clone() else {
            continue;
        };
        match step(&agent, &instance, &mut tracked).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => {
                let reason = error.to_string();
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

enum Reread {
    /// Still bound to this host, as it is now.
    Here(Box<Instance>),
    /// Deleted, or moved to another host while this one was fenced.
    Gone,
    /// Could not be read; keep the version at hand.
    Unknown,
}

/// The instance as the servers have it now, from the list of this host's
/// instances (what a host's credential may read).
async fn reread(agent: &Agent, latest: Option<&Instance>) -> Reread {
    let Some(i) = latest else {
        return Reread::Unknown;
    };
    let path = format!("/v1/instances?host={}", agent.config.host_name);
    match agent.client.list_all::<Instance>(&path).await {
        Ok(list) => match list
            .items
            .into_iter()
            .find(|f| f.metadata.id == i.metadata.id)
        {
            Some(fresh) => Reread::Here(Box::new(fresh)),
            None => Reread::Gone,
        },
        Err(e) => {
            tracing::warn!(instance = %i.metadata.name, error = %e, "re-reading the instance after the fence failed");
            Reread::Unknown
        }
    }
}

/// The instance left this host while it was fenced (moved to another host,
/// or deleted): the copy the fence stopped here is removed at once (shim,
/// cgroups, network namespace, root filesystem, directory) rather than at
/// the next orphan sweep.
async fn remove_stale_copy(agent: &Agent, instance: &Instance) {
    let dir = agent.instance_dir(&instance.metadata.id);
    if !dir.exists() {
        return;
    }
    tracing::warn!(instance = %instance.metadata.name, instance_id = %instance.metadata.id, "the instance left this host while it was fenced: removing its stopped copy");
    let driver = agent.drivers.for_dir(&dir).cloned();
    if let Err(e) = destroy_local(agent, driver.as_deref(), &dir, 0).await {
        tracing::warn!(instance = %instance.metadata.name, error = %e, "could not remove the stopped copy; the orphan sweep retries");
    }
}

/// Whether the shim that wrote `dir`'s state is still a live process and
/// has not recorded an end.
fn shim_process_alive(dir: &Path) -> bool {
    shim::read_state(dir).is_some_and(|s| {
        !s.phase.is_final() && Path::new(&format!("/proc/{}", s.shim_pid)).exists()
    })
}

/// What the worker sees of the instance on this host. A live shim is asked
/// for its phase only when a stop is wanted.
async fn observe(instance: &Instance, dir: &Path, tracked: &Tracked) -> Local {
    let following = tracked
        .subscription
        .as_ref()
        .is_some_and(|s| !s.is_finished());
    // A followed shim is known to live (its state stream is open), and a
    // running instance needs nothing more from it: connecting anyway would
    // wake every shim at every resync (each 15 s), costing CPU and
    // faulting its code back in after it trimmed its memory.
    let followed_and_running = following
        && instance.spec.desired_state == DesiredState::Running
        && instance.metadata.deletion_requested_at.is_none();
    let probe = if followed_and_running {
        None
    } else {
        Some(ShimClient::connect(dir))
    };
    let shim = match probe {
        None => ShimSeen::Answers { phase: None },
        Some(Err(_)) => ShimSeen::Absent,
        Some(Ok(client)) => ShimSeen::Answers {
            phase: if instance.spec.desired_state == DesiredState::Stopped
                && instance.metadata.deletion_requested_at.is_none()
            {
                client.status_async().await.ok().map(|s| s.phase)
            } else {
                None
            },
        },
    };
    Local {
        shim,
        recorded: shim::read_state(dir).map(|s| s.phase),
        started_generation: tracked.started_generation,
        following,
    }
}

/// One reconcile pass; `Ok(true)` when the instance is gone for good.
async fn step(
    agent: &Arc<Agent>,
    instance: &Instance,
    tracked: &mut Tracked,
) -> Result<bool, AgentError> {
    let driver = agent.drivers.for_kind(instance.spec.kind)?.clone();
    let dir = agent.instance_dir(&instance.metadata.id);
    let grace = instance
        .spec
        .stop_grace_ms
        .unwrap_or(translate::DEFAULT_STOP_GRACE_MS);
    let wanted_generation = instance.spec.restart_generation;
    let local = observe(instance, &dir, tracked).await;
    let action = decide(instance, &local);
    tracing::debug!(instance = %instance.metadata.name, driver = driver.name(), ?action, "reconcile");
    // Only a follower of the wanted generation's shim outlives a pass.
    let keeps_follower =
        action == Action::Nothing && instance.spec.desired_state == DesiredState::Running;
    if !keeps_follower {
        if let Some(s) = tracked.subscription.take() {
            s.abort();
        }
    }
    // The generation acted on: when running is wanted, the wanted one
    // either way (the watch event may predate our own report of a start).
    let mut base = instance.status.clone();
    if instance.spec.desired_state == DesiredState::Running {
        base.observed_generation = wanted_generation;
    }
    match action {
        Action::Delete => {
            destroy_local(agent, Some(driver.as_ref()), &dir, grace).await?;
            report(agent, instance, InstanceStatus::default(), true).await;
            return Ok(true);
        }
        Action::Start { stop_old_shim } => {
            tracked.started_generation = Some(wanted_generation);
            if stop_old_shim {
                driver.stop(&dir, grace).await?;
            }
            launch(agent, &driver, instance, &dir, tracked, 0).await?;
        }
        Action::Adopt => {
            tracked.subscription = Some(follow(agent.clone(), driver, instance.clone(), base));
        }
        Action::StartAgain => {
            // The host rebooted or the shim was killed: the restart
            // policy asks for the workload to come back.
            tracing::info!(instance = %instance.metadata.name, "supervisor gone; starting again");
            driver.clean_up(&dir).await?;
            // It counts as a restart, as for a dead workload.
            let restarts = instance.status.restart_count.saturating_add(1);
            launch(agent, &driver, instance, &dir, tracked, restarts).await?;
        }
        Action::ReportEnd {
            clean_up,
            stop_requested,
        } => {
            if clean_up {
                // Nothing supervises what the shim left running (a
                // container's processes, a VM's QEMU): end it.
                if let Err(e) = driver.clean_up(&dir).await {
                    tracing::warn!(instance = %instance.metadata.name, error = %e, "cleaning up after a dead supervisor");
                }
            }
            report_final(agent, instance, &dir, base, stop_requested).await;
        }
        Action::Stop => {
            let mut stopping = base.clone();
            stopping.phase = InstancePhase::Stopping;
            report(agent, instance, stopping, false).await;
            match driver.stop(&dir, grace).await? {
                Some(final_state) => {
                    let mut status = status_from_shim(&final_state, true);
                    status.observed_generation = base.observed_generation;
                    status.host_uid = base.host_uid;
                    report(agent, instance, status, false).await;
                }
                // Gone between the look and the stop.
                None => report_final(agent, instance, &dir, base, true).await,
            }
        }
        Action::Nothing if keeps_follower => {
            sync_volumes(agent, driver.as_ref(), instance, &dir, &base).await;
        }
        Action::Nothing => {}
    }
    Ok(false)
}

/// A running instance whose driver changes volumes while it runs (a VM's
/// hot-plug): converge them and report each one's state when it changed.
async fn sync_volumes(
    agent: &Arc<Agent>,
    driver: &dyn Driver,
    instance: &Instance,
    dir: &Path,
    base: &InstanceStatus,
) {
    if !matches!(
        instance.status.phase,
        InstancePhase::Running | InstancePhase::Paused
    ) {
        return;
    }
    let Some(volumes) = driver.sync_volumes(agent.as_ref(), instance, dir).await else {
        return;
    };
    if instance.status.volumes.as_ref() == Some(&volumes) {
        return;
    }
    // The shim's own state, not the stored one: a follower may have
    // reported a newer phase meanwhile.
    let mut status = match shim::read_state(dir) {
        Some(s) => {
            let mut st = status_from_shim(&s, false);
            st.observed_generation = base.observed_generation;
            st.host_uid = base.host_uid;
            st
        }
        None => base.clone(),
    };
    status.volumes = Some(volumes);
    report(agent, instance, status, false).await;
}

/// Start the instance's shim, report it, and follow its state changes.
/// `restarts_before`: restarts already made (by a shim that was lost).
async fn launch(
    agent: &Arc<Agent>,
    driver: &Arc<dyn Driver>,
    instance: &Instance,
    dir: &Path,
    tracked: &mut Tracked,
    restarts_before: u32,
) -> Result<(), AgentError> {
    let state = start(agent, driver.as_ref(), instance, dir, restarts_before).await?;
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
        tracked.subscription = Some(tokio::spawn(forward_states(
            agent.clone(),
            driver.clone(),
            instance.clone(),
            status,
            stream,
        )));
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
    let mut status = match shim::read_state(dir) {
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

/// Resolve the image, have the driver prepare the instance directory and
/// attach its networks, and spawn its shim.
async fn start(
    agent: &Arc<Agent>,
    driver: &dyn Driver,
    instance: &Instance,
    dir: &Path,
    restarts_before: u32,
) -> Result<ShimState, AgentError> {
    let t0 = std::time::Instant::now();
    let project = instance.metadata.project.clone().unwrap_or_default();
    let mut starting = instance.status.clone();
    starting.phase = InstancePhase::Starting;
    starting.reason = None;
    let key = instance.status.image_id.clone();
    let cached = key
        .as_ref()
        .and_then(|k| agent.image_cache.lock().ok()?.get(k).cloned());
    let image = match cached {
        Some(image) => image,
        None => agent.fetch_image(&project, &instance.spec.image).await?,
    };
    if key.as_ref().is_some_and(|k| *k != image.metadata.id) {
        return Err(AgentError::ImageReplaced {
            name: instance.spec.image.clone(),
        });
    }
    // Checked before `starting` is reported: a refusal is then the only
    // report of this pass, and no later pass acting on a stale `starting`
    // can replace its reason with "never started".
    super::signature_policy::check(&agent.client, &project, &image).await?;
    report(agent, instance, starting, false).await;
    if let Ok(mut cache) = agent.image_cache.lock() {
        cache.insert(image.metadata.id.clone(), image.clone());
    }
    let cx: &dyn DriverContext = agent.as_ref();
    let launch = Launch {
        instance,
        image: &image,
        dir,
        restarts_before,
    };
    driver.prepare(cx, launch).await?;
    driver.attach_networks(cx, launch).await?;
    let r = driver.start(cx, dir).await;
    tracing::debug!(
        instance = %instance.metadata.name,
        driver = driver.name(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "shim spawned"
    );
    r
}

type Subscription = Result<shim::control::AsyncStateStream, shim::ShimError>;

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

/// Forward every state change of the shim to the server until it ends.
fn follow(
    agent: Arc<Agent>,
    driver: Arc<dyn Driver>,
    instance: Instance,
    base: InstanceStatus,
) -> JoinHandle<bool> {
    tokio::spawn(async move {
        let dir = agent.instance_dir(&instance.metadata.id);
        let stream = subscribe(&dir).await;
        forward_states(agent, driver, instance, base, stream).await
    })
}

async fn forward_states(
    agent: Arc<Agent>,
    driver: Arc<dyn Driver>,
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
        let shim_died = shim::read_state(&dir).is_some_and(|s| !s.phase.is_final());
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
            if let Err(e) = driver.clean_up(&dir).await {
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
/// `driver`: the one whose directory `dir` is; `None` for a directory no
/// driver recognises (left half-made), which only the shim plumbing's own
/// clean-up is run on.
pub async fn destroy_local(
    agent: &Agent,
    driver: Option<&dyn Driver>,
    dir: &Path,
    grace_ms: u64,
) -> Result<(), AgentError> {
    let id_range = super::idmap::recorded_range(dir);
    let stopped = match driver {
        Some(d) => d.stop(dir, grace_ms).await,
        None => crate::driver::stop_shim(dir, grace_ms).await,
    };
    if let Err(e) = stopped {
        tracing::warn!(dir = %dir.display(), error = %e, "stopping the shim failed; cleaning up by force");
    }
    match driver {
        Some(d) => d.clean_up(dir).await?,
        None => crate::driver::clean_up_after_shim(dir).await?,
    }
    let owned = dir.to_path_buf();
    blocking(
        "removing the instance directory",
        move || match std::fs::remove_dir_all(&owned) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::io(format!("removing {}", owned.display()), e)),
        },
    )
    .await?;
    if let Some(host_id) = id_range {
        agent.ids.release(host_id).await;
    }
    if let Some(id) = dir.file_name() {
        agent.net.detach(&id.to_string_lossy()).await;
    }
    agent.blobs_unused.notify_one();
    Ok(())
}
