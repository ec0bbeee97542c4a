//! How QEMU ended, in the API's terms: the pure mapping from its exit
//! status, the signal that ended it, QMP's shutdown reason and its stderr to
//! an instance's phase, exit code and reason.

use super::spec::VmKind;
use crate::shim::state::Phase;

/// How QEMU ended, in the API's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VmExit {
    pub phase: Phase,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
}

/// Maps QEMU's exit to an exit code and words. A unikernel's status N written
/// to the debug-exit port makes QEMU exit with (N << 1) | 1; QEMU's own
/// errors also exit 1 but print to stderr, which tells them apart.
pub(crate) fn describe_exit(
    kind: VmKind,
    code: Option<i32>,
    signal: Option<i32>,
    stop_requested: bool,
    forced: bool,
    shutdown_reason: Option<&str>,
    stderr_tail: &str,
) -> VmExit {
    let qemu_error = stderr_tail
        .lines()
        .find(|l| !l.contains("warning:") && !l.contains("terminating on signal"))
        .map(|l| l.trim_start_matches("qemu-system-x86_64: ").to_string());
    if let Some(sig) = signal {
        return if forced {
            VmExit {
                phase: Phase::Exited,
                exit_code: Some(128 + sig),
                signal: Some(sig),
                reason: "killed after the stop grace period: the guest did not power off".into(),
            }
        } else {
            VmExit {
                phase: Phase::Failed,
                exit_code: Some(128 + sig),
                signal: Some(sig),
                reason: format!("QEMU was killed by signal {sig}"),
            }
        };
    }
    let Some(code) = code else {
        return VmExit {
            phase: Phase::Failed,
            exit_code: None,
            signal: None,
            reason: "QEMU's exit status was lost".into(),
        };
    };
    if code == 0 {
        let reason = match shutdown_reason {
            _ if stop_requested => "the guest powered off on request".to_string(),
            Some("guest-shutdown") | None => "the guest powered off".to_string(),
            Some("guest-reset") => {
                "the guest reset (a unikernel's triple fault, or a reboot where reboots end the VM)"
                    .to_string()
            }
            Some("host-signal") => "QEMU was ended by a signal from outside Nimbus".to_string(),
            Some("guest-panic") => "the guest kernel panicked".to_string(),
            Some(other) => format!("QEMU shut down ({other})"),
        };
        // A reset nobody asked for (a unikernel's triple fault) or QEMU ended
        // by a signal Nimbus did not send is a failure, not a clean exit.
        let failed = !stop_requested
            && matches!(
                shutdown_reason,
                Some("guest-panic") | Some("guest-reset") | Some("host-signal")
            );
        let phase = if failed { Phase::Failed } else { Phase::Exited };
        return VmExit {
            phase,
            exit_code: Some(0),
            signal: None,
            reason,
        };
    }
    if kind == VmKind::Unikernel && code & 1 == 1 && qemu_error.is_none() {
        let status = code >> 1;
        return VmExit {
            phase: Phase::Exited,
            exit_code: Some(status),
            signal: None,
            reason: format!("the unikernel exited with status {status}"),
        };
    }
    VmExit {
        phase: Phase::Failed,
        exit_code: Some(code),
        signal: None,
        reason: match qemu_error {
            Some(e) => format!("QEMU failed (exit status {code}): {e}"),
            None => format!("QEMU failed with exit status {code}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unikernel_debug_exit_status_becomes_the_exit_code() {
        let e = describe_exit(VmKind::Unikernel, Some(7), None, false, false, None, "");
        assert_eq!((e.phase, e.exit_code), (Phase::Exited, Some(3)));
        assert_eq!(e.reason, "the unikernel exited with status 3");
        let e = describe_exit(VmKind::Unikernel, Some(1), None, false, false, None, "");
        assert_eq!(e.exit_code, Some(0));
    }

    #[test]
    fn qemu_errors_are_failures_in_words() {
        let e = describe_exit(
            VmKind::Unikernel,
            Some(1),
            None,
            false,
            false,
            None,
            "qemu-system-x86_64: warning: x\nqemu-system-x86_64: -kernel /k: cannot load kernel",
        );
        assert_eq!(e.phase, Phase::Failed);
        assert_eq!(
            e.reason,
            "QEMU failed (exit status 1): -kernel /k: cannot load kernel"
        );
        let e = describe_exit(VmKind::Vm, None, Some(11), false, false, None, "");
        assert_eq!((e.phase, e.exit_code), (Phase::Failed, Some(139)));
    }

    #[test]
    fn power_off_and_forced_stop() {
        let e = describe_exit(
            VmKind::Vm,
            Some(0),
            None,
            false,
            false,
            Some("guest-shutdown"),
            "",
        );
        assert_eq!((e.phase, e.exit_code), (Phase::Exited, Some(0)));
        assert_eq!(e.reason, "the guest powered off");
        let e = describe_exit(VmKind::Vm, None, Some(9), true, true, None, "");
        assert_eq!(e.phase, Phase::Exited);
        assert!(e.reason.contains("did not power off"), "{}", e.reason);
    }

    #[test]
    fn unasked_resets_and_outside_signals_are_failures() {
        let reset = |stop| {
            describe_exit(
                VmKind::Unikernel,
                Some(0),
                None,
                stop,
                false,
                Some("guest-reset"),
                "",
            )
        };
        assert_eq!(reset(false).phase, Phase::Failed);
        assert!(reset(false).reason.contains("triple fault"));
        let e = describe_exit(
            VmKind::Vm,
            Some(0),
            None,
            false,
            false,
            Some("host-signal"),
            "",
        );
        assert_eq!(e.phase, Phase::Failed);
        assert!(e.reason.contains("outside Nimbus"), "{}", e.reason);
        let e = describe_exit(
            VmKind::Vm,
            Some(0),
            None,
            true,
            false,
            Some("host-qmp-quit"),
            "",
        );
        assert_eq!(
            e.phase,
            Phase::Exited,
            "a stop Nimbus asked for is a clean exit"
        );
    }
}
