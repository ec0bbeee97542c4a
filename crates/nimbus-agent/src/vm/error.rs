//! What the VM driver's shim can fail with while it starts and drives QEMU.
//!
//! Each message is what the user reads: an instance's `reason` when QEMU
//! could not be started, or the refusal a `pause`/`resume`/`console` client
//! gets. The shared shim plumbing carries these as a
//! [`ShimError::Workload`], so it names no driver and the text is unchanged.

use crate::shim::state::Phase;
use crate::shim::ShimError;

use super::qmp::QmpError;

/// A QEMU or QMP failure of one VM's shim; each message names the thing and
/// the value involved and, where there is one, what to do next.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open the VM's network port {tap}: {source}")]
    NetworkPort {
        tap: String,
        #[source]
        source: nimbus_net::NetError,
    },
    #[error("cannot create the {what} socket pair: {source}")]
    SocketPair {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot duplicate the serial console socket: {0}")]
    SerialConsoleDuplicate(#[source] std::io::Error),
    #[error("serial console socket: {0}")]
    SerialConsoleSocket(#[source] std::io::Error),
    #[error("cannot make the VM's cgroup: {0}")]
    Cgroup(#[source] ShimError),
    #[error("cannot run {program}: {source}; install QEMU (`apt-get install qemu-system-x86`)")]
    QemuNotRunnable {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited at once")]
    QemuExitedAtOnce,
    /// QEMU's end of QMP could not be set up or did not complete the
    /// handshake.
    #[error("QEMU did not answer on QMP: {0}")]
    QmpUnanswered(#[source] QmpError),
    #[error("QEMU did not start the guest's vCPUs: {0}")]
    VcpusNotStarted(#[source] QmpError),
    /// A QMP command (`stop`, `cont`, `query-status`) failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("QEMU's QMP connection is gone")]
    QmpGone,
    /// `pause` of a VM that is not running, or `resume` of one that is not
    /// paused.
    #[error("the VM is {phase:?}, so it cannot be {action}")]
    WrongPhase { phase: Phase, action: &'static str },
    #[error("the VM has ended")]
    Ended,
    #[error("another console session is attached; detach it first (Ctrl-])")]
    ConsoleBusy,
}

impl From<VmError> for ShimError {
    fn from(e: VmError) -> Self {
        ShimError::Workload(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_error_keeps_its_words_and_its_type_through_the_shim_error() {
        let shim: ShimError = VmError::WrongPhase {
            phase: Phase::Paused,
            action: "paused",
        }
        .into();
        assert_eq!(shim.to_string(), "the VM is Paused, so it cannot be paused");
        let ShimError::Workload(inner) = &shim else {
            panic!("expected a workload error, got {shim:?}");
        };
        assert!(matches!(
            inner.downcast_ref::<VmError>(),
            Some(VmError::WrongPhase {
                phase: Phase::Paused,
                ..
            })
        ));
    }
}
