//! Instance lifecycle: what start, stop, restart, delete, pause, resume,
//! exec and console need and do, and how an agent's status report is
//! merged into the stored status.

use chrono::{DateTime, Utc};
use nimbus_api::{
    DesiredState, Instance, InstanceKind, InstancePhase, InstanceSpec, InstanceStatus,
};

use super::{SpecError, StateError};

/// A spec change (start, stop, restart, replace) is refused once deletion
/// was requested.
pub fn check_not_deleting(instance: &Instance) -> Result<(), StateError> {
    if instance.metadata.deletion_requested_at.is_some() {
        return Err(StateError::BeingDeleted(instance.metadata.name.clone()));
    }
    Ok(())
}

/// `start` on an instance that wants to run and has not ended changes
/// nothing.
pub fn already_running(instance: &Instance) -> bool {
    instance.spec.desired_state == DesiredState::Running && !instance.status.phase.is_terminal()
}

/// `start` and `restart`: run, and move the generation on so the agent
/// starts the workload again.
pub fn request_restart(spec: &mut InstanceSpec) {
    spec.desired_state = DesiredState::Running;
    spec.restart_generation += 1;
}

/// `stop`.
pub fn request_stop(spec: &mut InstanceSpec) {
    spec.desired_state = DesiredState::Stopped;
}

/// Mark an instance bound to a host for deletion; its agent cleans up and
/// reports `finalized`. `force` records a stop grace of 0, so the agent
/// kills the workload at once.
pub fn request_deletion(instance: &mut Instance, force: bool, now: DateTime<Utc>) {
    if instance.metadata.deletion_requested_at.is_none() {
        instance.metadata.deletion_requested_at = Some(now);
    }
    if force {
        instance.spec.stop_grace_ms = Some(0);
    }
    instance.status.phase = InstancePhase::Deleting;
    instance.status.reason = Some("deletion requested; the host is cleaning up".into());
}

/// What removing host `host` does to an instance bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRemoval {
    /// Its deletion was requested: nobody is left to finish it, so it goes.
    Finalize,
    /// It is unbound and waits to be placed again.
    Release,
}

/// An instance being deleted is finalized; any other is released: unbound
/// from the removed host and pending, so the scheduler places it again.
pub fn release_from_removed_host(instance: &mut Instance, host: &str) -> HostRemoval {
    release_from_host(
        instance,
        format!("host {host:?} was removed; waiting to be placed again"),
    )
}

/// An instance on a host that fences itself and stopped heartbeating: one
/// with a restart policy is released to run elsewhere (the host has
/// stopped it by then), one being deleted is finalized, and any other
/// stays, to be marked failed (`None`).
pub fn release_from_lost_host(instance: &mut Instance, host: &str) -> Option<HostRemoval> {
    let restarts = instance.spec.restart_policy.mode != nimbus_api::RestartMode::Never;
    if !restarts && instance.metadata.deletion_requested_at.is_none() {
        return None;
    }
    Some(release_from_host(
        instance,
        format!(
            "host {host:?} stopped heartbeating and fenced itself; placed again on another host"
        ),
    ))
}

fn release_from_host(instance: &mut Instance, reason: String) -> HostRemoval {
    if instance.metadata.deletion_requested_at.is_some() {
        return HostRemoval::Finalize;
    }
    // What the old host observed is forgotten; what the server decided
    // (the image resolved, the addresses allocated) is kept.
    instance.status = InstanceStatus {
        phase: InstancePhase::Pending,
        reason: Some(reason),
        image_id: instance.status.image_id.take(),
        addresses: std::mem::take(&mut instance.status.addresses),
        ..Default::default()
    };
    HostRemoval::Release
}

/// `finalized` is accepted only for an instance being deleted.
pub fn check_finalize(instance: &Instance) -> Result<(), StateError> {
    if instance.metadata.deletion_requested_at.is_none() {
        return Err(StateError::NotBeingDeleted(instance.metadata.name.clone()));
    }
    Ok(())
}

/// Merge the status an agent reports into the stored instance.
///
/// The agent owns what it observes (phase, pids, exit, restarts, generation
/// acted on, host uid, accelerator, ...); the server keeps what it decided:
/// the host the instance is bound to, the image id resolved at creation and
/// the addresses allocated on its networks. An instance being deleted stays
/// `deleting` whatever the agent saw. With `auto_remove`, a terminal phase
/// for the current generation requests deletion in the same write; the
/// ending phase itself is kept in that revision so a watcher sees how it
/// ended. A terminal phase reported for an older generation (the workload
/// before a restart) does not remove the instance.
pub fn merge_reported_status(
    instance: &mut Instance,
    reported: InstanceStatus,
    now: DateTime<Utc>,
) {
    let deleting = instance.metadata.deletion_requested_at.is_some();
    let host = instance.status.host.take();
    let image_id = instance.status.image_id.take();
    let platform = instance.status.platform.take();
    let addresses = std::mem::take(&mut instance.status.addresses);
    let volumes = instance.status.volumes.take();
    instance.status = reported;
    if instance.status.volumes.is_none() {
        instance.status.volumes = volumes;
    }
    instance.status.host = host;
    instance.status.image_id = image_id;
    instance.status.platform = platform;
    instance.status.addresses = addresses;
    if deleting {
        instance.status.phase = InstancePhase::Deleting;
    } else if instance.spec.auto_remove
        && instance.status.phase.is_terminal()
        && instance.status.observed_generation >= instance.spec.restart_generation
    {
        instance.metadata.deletion_requested_at = Some(now);
    }
}

/// Pause and resume apply to VMs and unikernels; console too.
pub fn check_is_vm(instance: &Instance, action: &'static str) -> Result<(), SpecError> {
    if instance.spec.kind == InstanceKind::Container {
        return Err(SpecError::NotAVm {
            action,
            name: instance.metadata.name.clone(),
        });
    }
    Ok(())
}

/// Pause needs a running instance, resume a paused one.
pub fn check_pause_phase(instance: &Instance, pause: bool) -> Result<(), StateError> {
    let (action, wanted) = if pause {
        ("pause", InstancePhase::Running)
    } else {
        ("resume", InstancePhase::Paused)
    };
    if instance.status.phase != wanted {
        return Err(StateError::WrongPhase {
            name: instance.metadata.name.clone(),
            phase: instance.status.phase.as_str(),
            wanted: wanted.as_str(),
            action,
        });
    }
    Ok(())
}

/// Exec needs a running workload.
pub fn check_exec_phase(instance: &Instance) -> Result<(), StateError> {
    if instance.status.phase != InstancePhase::Running {
        return Err(not_running(instance));
    }
    Ok(())
}

/// A console needs a running or paused VM.
pub fn check_console_phase(instance: &Instance) -> Result<(), StateError> {
    if !matches!(
        instance.status.phase,
        InstancePhase::Running | InstancePhase::Paused
    ) {
        return Err(not_running(instance));
    }
    Ok(())
}

fn not_running(instance: &Instance) -> StateError {
    StateError::NotRunning {
        name: instance.metadata.name.clone(),
        phase: instance.status.phase.as_str(),
    }
}

/// Exec needs a command.
pub fn check_exec_command(args: &[String]) -> Result<(), SpecError> {
    if args.is_empty() {
        return Err(SpecError::NoExecCommand);
    }
    Ok(())
}
