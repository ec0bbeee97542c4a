//! Child reaping for the shim: one place calls waitpid, everyone else waits on a pid.

use std::cell::RefCell;
use std::collections::HashMap;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Collects exits of the shim's children and hands them to whoever waits for a pid.
#[derive(Default)]
pub(super) struct Reaper {
    waiters: RefCell<HashMap<i32, oneshot::Sender<WaitStatus>>>,
    unclaimed: RefCell<HashMap<i32, WaitStatus>>,
}

impl Reaper {
    pub(super) fn watch(&self, pid: Pid) -> oneshot::Receiver<WaitStatus> {
        let (tx, rx) = oneshot::channel();
        match self.unclaimed.borrow_mut().remove(&pid.as_raw()) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => {
                self.waiters.borrow_mut().insert(pid.as_raw(), tx);
            }
        }
        rx
    }

    pub(super) fn reap(&self) {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            let Some(pid) = status.pid() else { break };
            if !matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                continue;
            }
            match self.waiters.borrow_mut().remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    let mut unclaimed = self.unclaimed.borrow_mut();
                    if unclaimed.len() >= 64 {
                        unclaimed.clear();
                    }
                    unclaimed.insert(pid.as_raw(), status);
                }
            }
        }
    }
}
