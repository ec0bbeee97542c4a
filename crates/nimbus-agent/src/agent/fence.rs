//! Self-fencing: an agent cut off from every server stops its instances
//! before the servers may place them on another host.
//!
//! The agent reports its lease (`HostStatus.fence_after_ms`). Once no
//! heartbeat has been accepted for that long, it kills every instance's shim
//! and what the shim supervised, and its workers start nothing until a
//! heartbeat is accepted again; they then read their instance from the
//! servers anew (it may have moved to another host meanwhile). The servers
//! move a fencing host's instances only after the lease plus a margin
//! (`nimbus-server` `controllers/hosts.rs`), so an instance never runs on two
//! hosts at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Agent;

pub struct Fence {
    lease: Option<Duration>,
    last_accepted: Mutex<Instant>,
    fenced: AtomicBool,
    lifted: tokio::sync::Notify,
}

impl Fence {
    /// `lease`: `None` for an agent that never fences (`nimbus up`'s).
    pub fn new(lease: Option<Duration>) -> Fence {
        Fence {
            lease,
            last_accepted: Mutex::new(Instant::now()),
            fenced: AtomicBool::new(false),
            lifted: tokio::sync::Notify::new(),
        }
    }

    /// A server accepted a heartbeat: the lease starts again, and a fence in
    /// place is lifted.
    pub fn heartbeat_accepted(&self) {
        if let Ok(mut last) = self.last_accepted.lock() {
            *last = Instant::now();
        }
        if self.fenced.swap(false, Ordering::SeqCst) {
            tracing::warn!("a server accepted a heartbeat again: the fence is lifted; instances follow what the servers now say");
            self.lifted.notify_waiters();
        }
    }

    /// Fences as the watchdog does once the lease ran out (without
    /// stopping anything): for tests of what follows.
    #[cfg(test)]
    pub(crate) fn fence_now(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Whether the lease ran out at `now` while not fenced yet.
    fn due(&self, now: Instant) -> bool {
        let Some(lease) = self.lease else {
            return false;
        };
        let last = self.last_accepted.lock().map(|l| *l).unwrap_or(now);
        !self.is_fenced() && now.duration_since(last) > lease
    }

    /// Waits while fenced; `true` when it had to, so the caller's view of
    /// its instance is stale.
    pub async fn wait_lifted(&self) -> bool {
        let mut waited = false;
        loop {
            let lifted = self.lifted.notified();
            if !self.is_fenced() {
                return waited;
            }
            waited = true;
            // Also polled, so no lift is missed between the check and the wait.
            let _ = tokio::time::timeout(Duration::from_millis(500), lifted).await;
        }
    }
}

/// Watches the lease; when it runs out, fences: every instance here stops.
pub async fn watchdog(agent: Arc<Agent>) {
    let Some(lease) = agent.fence.lease else {
        return;
    };
    let every = (lease / 8).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        tokio::time::sleep(every).await;
        if !agent.fence.due(Instant::now()) {
            continue;
        }
        agent.fence.fenced.store(true, Ordering::SeqCst);
        tracing::error!(
            lease_ms = lease.as_millis() as u64,
            "no server accepted a heartbeat within the fencing lease: stopping every instance on this host, so the servers can run them elsewhere"
        );
        stop_everything(&agent).await;
    }
}

/// Kills each instance's shim (so it records no end and restarts nothing)
/// and every process of the instance, by cgroup. Nothing is recorded as
/// ended: once the fence lifts, each worker finds a lost shim, and the
/// restart policy decides as after a host reboot (mounts and the like are
/// cleaned up then).
async fn stop_everything(agent: &Agent) {
    let Ok(entries) = std::fs::read_dir(agent.config.instances_dir()) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        kill_shim(&dir);
        let Some(id) = dir.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        let result = tokio::task::spawn_blocking(move || {
            crate::host::cgroups::kill_and_remove(&id, Duration::from_secs(5))
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::warn!(dir = %dir.display(), "fenced: instance stopped"),
            Ok(Err(e)) => {
                tracing::error!(dir = %dir.display(), error = %e, "fenced: could not stop an instance")
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "fenced: the stop panicked")
            }
        }
    }
}

/// SIGKILL to the shim that recorded its pid in `dir`, if that process is
/// still the shim of `dir` (its command line names the directory).
fn kill_shim(dir: &Path) {
    let Some(state) = crate::shim::read_state(dir) else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", state.shim_pid)).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy());
    if ours && state.shim_pid > 1 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(state.shim_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_falls_after_the_lease_and_lifts_on_a_heartbeat() {
        let fence = Fence::new(Some(Duration::from_secs(6)));
        let start = Instant::now();
        assert!(!fence.due(start + Duration::from_secs(5)));
        assert!(fence.due(start + Duration::from_secs(7)));
        fence.fenced.store(true, Ordering::SeqCst);
        assert!(!fence.due(start + Duration::from_secs(8)), "fenced once");
        fence.heartbeat_accepted();
        assert!(!fence.is_fenced());
        assert!(!fence.due(Instant::now() + Duration::from_secs(5)));

        let never = Fence::new(None);
        assert!(!never.due(start + Duration::from_secs(3600)));
    }
}
