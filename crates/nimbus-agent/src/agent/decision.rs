//! What one reconcile pass does, decided without touching the host: the
//! worker gathers what it sees locally ([`Local`]), [`decide`] picks the
//! [`Action`], and the worker carries it out through the instance's driver.

use nimbus_api::{DesiredState, Instance, RestartMode};

use crate::shim::Phase;

/// The instance's shim as the worker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShimSeen {
    /// Nothing answers on the instance's control socket.
    Absent,
    /// A shim answers. `phase` is what it reported when asked (only asked
    /// when a stop is wanted); `None` when not asked or it did not say.
    Answers { phase: Option<Phase> },
}

/// What the worker knows locally about one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub shim: ShimSeen,
    /// The phase the instance's `state.json` records, if it has one.
    pub recorded: Option<Phase>,
    /// The restart generation this worker last started. Watch events can
    /// carry an older status (written before the worker's own report), so
    /// the stored `observed_generation` alone would start it twice.
    pub started_generation: Option<u64>,
    /// The worker follows a live shim's state changes.
    pub following: bool,
}

/// One reconcile pass's step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deletion requested: stop the shim, remove everything, finalize.
    Delete,
    /// A restart generation not acted on yet: stop the old shim if one
    /// answers, then start the instance.
    Start { stop_old_shim: bool },
    /// A live shim nobody follows (after an agent restart): follow it.
    Adopt,
    /// The shim died without recording an end and the restart policy wants
    /// the workload back: clean up and start it again, counting a restart.
    StartAgain,
    /// The shim is gone: report what its state file recorded; `clean_up`
    /// when it died without recording an end (its workload is unsupervised).
    ReportEnd {
        clean_up: bool,
        stop_requested: bool,
    },
    /// Stop wanted and the shim still runs its workload: stop it.
    Stop,
    /// Nothing to do (converged, or a follower is on it).
    Nothing,
}

/// The step of one reconcile pass for `instance`, given `local`.
pub fn decide(instance: &Instance, local: &Local) -> Action {
    if instance.metadata.deletion_requested_at.is_some() {
        return Action::Delete;
    }
    let shim_answers = matches!(local.shim, ShimSeen::Answers { .. });
    match instance.spec.desired_state {
        DesiredState::Running => {
            let wanted = instance.spec.restart_generation;
            let acted = instance.status.observed_generation == wanted
                || local.started_generation == Some(wanted);
            if !acted {
                return Action::Start {
                    stop_old_shim: shim_answers,
                };
            }
            if local.following {
                return Action::Nothing;
            }
            if shim_answers {
                return Action::Adopt;
            }
            if instance.status.phase.is_terminal() {
                return Action::Nothing;
            }
            let shim_died = local.recorded.is_none_or(|p| !p.is_final());
            if shim_died && restarts_after_lost_shim(instance) {
                Action::StartAgain
            } else {
                Action::ReportEnd {
                    clean_up: shim_died,
                    stop_requested: false,
                }
            }
        }
        DesiredState::Stopped => {
            // A shim already stopping or done (e.g. right after our own
            // stop) must not be stopped again.
            let runs = match local.shim {
                ShimSeen::Absent => false,
                ShimSeen::Answers { phase: Some(p) } => !(p.is_final() || p == Phase::Stopping),
                ShimSeen::Answers { phase: None } => true,
            };
            if runs {
                Action::Stop
            } else if !instance.status.phase.is_terminal() {
                Action::ReportEnd {
                    clean_up: false,
                    stop_requested: true,
                }
            } else {
                Action::Nothing
            }
        }
    }
}

/// Whether a workload whose shim died without recording an end (killed,
/// host reboot) starts again: its restart policy decides, as for a
/// workload that died under a live shim. The shim was lost, not the
/// workload's own failure, so `on_failure` restarts it too.
pub fn restarts_after_lost_shim(instance: &Instance) -> bool {
    let policy = &instance.spec.restart_policy;
    match policy.mode {
        RestartMode::Never => false,
        RestartMode::Always => true,
        RestartMode::OnFailure => policy
            .max_retries
            .is_none_or(|max| instance.status.restart_count < max),
    }
}

#[cfg(test)]
mod tests {
    use nimbus_api::InstancePhase;

    use super::*;

    /// A running-wanted instance at generation 2 whose status says what
    /// the server last heard.
    fn instance(observed_generation: u64, phase: InstancePhase) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "metadata": {
                "id": "0123", "name": "web", "project": "default",
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
            },
            "spec": {"image": "alpine", "restart_generation": 2},
        }))
        .expect("instance JSON");
        i.status.observed_generation = observed_generation;
        i.status.phase = phase;
        i
    }

    fn with_policy(mut i: Instance, mode: RestartMode) -> Instance {
        i.spec.restart_policy.mode = mode;
        i
    }

    fn stopping(mut i: Instance) -> Instance {
        i.spec.desired_state = DesiredState::Stopped;
        i
    }

    const NO_SHIM: Local = Local {
        shim: ShimSeen::Absent,
        recorded: None,
        started_generation: None,
        following: false,
    };

    fn live(phase: Option<Phase>) -> Local {
        Local {
            shim: ShimSeen::Answers { phase },
            recorded: phase,
            ..NO_SHIM
        }
    }

    /// The shim died while its state file still said it was running.
    fn dead_shim() -> Local {
        Local {
            recorded: Some(Phase::Running),
            ..NO_SHIM
        }
    }

    #[test]
    fn deletion_wins_over_everything() {
        let mut i = instance(2, InstancePhase::Running);
        i.metadata.deletion_requested_at = Some(chrono::Utc::now());
        assert_eq!(decide(&i, &live(Some(Phase::Running))), Action::Delete);
        assert_eq!(decide(&stopping(i), &NO_SHIM), Action::Delete);
    }

    #[test]
    fn a_new_generation_starts_stopping_a_live_shim_first() {
        let i = instance(1, InstancePhase::Running);
        assert_eq!(
            decide(&i, &live(Some(Phase::Running))),
            Action::Start {
                stop_old_shim: true
            }
        );
        assert_eq!(
            decide(&instance(0, InstancePhase::Pending), &NO_SHIM),
            Action::Start {
                stop_old_shim: false
            }
        );
    }

    #[test]
    fn a_stale_event_of_a_started_generation_does_not_start_it_twice() {
        // The worker started generation 2; the event still carries the
        // status from before its report (observed 1, phase starting).
        let i = instance(1, InstancePhase::Starting);
        let following = Local {
            started_generation: Some(2),
            following: true,
            ..live(None)
        };
        assert_eq!(decide(&i, &following), Action::Nothing);
        let short_lived = Local {
            started_generation: Some(2),
            recorded: Some(Phase::Exited),
            ..NO_SHIM
        };
        assert!(
            !matches!(
                decide(&i, &short_lived),
                Action::Start { .. } | Action::StartAgain
            ),
            "an exited workload of the started generation must not start again"
        );
    }

    #[test]
    fn a_live_shim_is_adopted_after_an_agent_restart() {
        let i = instance(2, InstancePhase::Running);
        assert_eq!(decide(&i, &live(None)), Action::Adopt);
        let followed = Local {
            following: true,
            ..live(None)
        };
        assert_eq!(decide(&i, &followed), Action::Nothing);
    }

    #[test]
    fn a_dead_shim_restarts_under_always_and_on_failure_but_not_never() {
        let i = instance(2, InstancePhase::Running);
        assert_eq!(
            decide(&with_policy(i.clone(), RestartMode::Always), &dead_shim()),
            Action::StartAgain
        );
        assert_eq!(
            decide(
                &with_policy(i.clone(), RestartMode::OnFailure),
                &dead_shim()
            ),
            Action::StartAgain
        );
        assert_eq!(
            decide(&with_policy(i.clone(), RestartMode::Never), &dead_shim()),
            Action::ReportEnd {
                clean_up: true,
                stop_requested: false
            }
        );
    }

    #[test]
    fn on_failure_gives_up_when_its_retries_are_spent() {
        let mut i = with_policy(instance(2, InstancePhase::Running), RestartMode::OnFailure);
        i.spec.restart_policy.max_retries = Some(3);
        i.status.restart_count = 3;
        assert_eq!(
            decide(&i, &dead_shim()),
            Action::ReportEnd {
                clean_up: true,
                stop_requested: false
            }
        );
    }

    #[test]
    fn a_shim_that_recorded_its_end_is_reported_not_restarted() {
        let i = with_policy(instance(2, InstancePhase::Running), RestartMode::Always);
        let exited = Local {
            recorded: Some(Phase::Exited),
            ..NO_SHIM
        };
        assert_eq!(
            decide(&i, &exited),
            Action::ReportEnd {
                clean_up: false,
                stop_requested: false
            }
        );
        // Already reported as ended: nothing more.
        let done = instance(2, InstancePhase::Exited);
        assert_eq!(decide(&done, &exited), Action::Nothing);
    }

    #[test]
    fn stop_stops_a_running_shim_only() {
        let i = stopping(instance(2, InstancePhase::Running));
        assert_eq!(decide(&i, &live(Some(Phase::Running))), Action::Stop);
        assert_eq!(
            decide(&i, &live(None)),
            Action::Stop,
            "a shim that did not say its phase is stopped"
        );
        assert_eq!(
            decide(&i, &live(Some(Phase::Stopping))),
            Action::ReportEnd {
                clean_up: false,
                stop_requested: true
            },
            "a shim already stopping is not asked again"
        );
        assert_eq!(
            decide(&i, &NO_SHIM),
            Action::ReportEnd {
                clean_up: false,
                stop_requested: true
            }
        );
        let stopped = stopping(instance(2, InstancePhase::Stopped));
        assert_eq!(decide(&stopped, &NO_SHIM), Action::Nothing);
        assert_eq!(
            decide(&stopped, &live(Some(Phase::Exited))),
            Action::Nothing
        );
    }
}
