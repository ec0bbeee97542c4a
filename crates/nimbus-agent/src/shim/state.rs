//! `state.json`: what the shim reports about its instance.
//!
//! Rewritten atomically (temporary file + rename) at every change so a reader never
//! sees half a file, even when the shim dies mid-write. `LiveState` is the
//! shim's own copy: each change goes to the file and to the subscribers of the
//! control socket.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::ShimError;

/// File name of the state inside an instance directory.
pub const STATE_FILE: &str = "state.json";

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The shim is preparing and starting the workload.
    Starting,
    Running,
    /// A virtual machine whose CPUs were stopped on request.
    Paused,
    /// The workload exited and will be restarted after a back-off delay.
    Backoff,
    /// A stop was requested and the workload is being signalled, or the workload
    /// exited for good and the shim is tearing down (exit details already set).
    Stopping,
    /// The workload exited and will not be restarted; the shim has torn down.
    Exited,
    /// The instance could not be set up or started; see `reason`.
    Failed,
}

impl Phase {
    /// True once the shim has nothing left to supervise.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Exited | Phase::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimState {
    pub phase: Phase,
    pub shim_pid: i32,
    /// Host pid of the workload's main process while it runs.
    pub pid: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub restart_count: u32,
    /// Why the instance is where it is, in words.
    pub reason: Option<String>,
    /// Virtual machines: `kvm` or `tcg` and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_reason: Option<String>,
    /// Virtual machines: the serial console log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_log: Option<String>,
}

impl ShimState {
    pub fn new(shim_pid: i32) -> ShimState {
        ShimState {
            phase: Phase::Starting,
            shim_pid,
            pid: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            restart_count: 0,
            reason: None,
            accelerator: None,
            accelerator_reason: None,
            console_log: None,
        }
    }
}

/// State changes queued for a subscriber that has not read them yet; one that
/// falls further behind is sent the current state instead.
const STATE_EVENTS_QUEUED: usize = 32;

/// The state of the instance a shim supervises, held on the shim's one thread.
pub(crate) struct LiveState {
    dir: PathBuf,
    instance_id: String,
    state: RefCell<ShimState>,
    events: broadcast::Sender<ShimState>,
}

impl LiveState {
    pub(crate) fn new(dir: &Path, instance_id: &str, initial: ShimState) -> LiveState {
        LiveState {
            dir: dir.to_path_buf(),
            instance_id: instance_id.to_string(),
            state: RefCell::new(initial),
            events: broadcast::channel(STATE_EVENTS_QUEUED).0,
        }
    }

    /// The current state.
    pub(crate) fn get(&self) -> ShimState {
        self.state.borrow().clone()
    }

    /// Changes the state, rewrites `state.json` and tells the subscribers.
    pub(crate) fn update(&self, change: impl FnOnce(&mut ShimState)) {
        let snapshot = {
            let mut state = self.state.borrow_mut();
            change(&mut state);
            state.clone()
        };
        if let Err(e) = write_state(&self.dir, &snapshot) {
            tracing::warn!(instance_id = %self.instance_id, error = %e, "cannot write state");
        }
        let _ = self.events.send(snapshot);
    }

    /// Every state from now on, as it is published.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ShimState> {
        self.events.subscribe()
    }
}

/// Reads `<instance_dir>/state.json`; `None` if it is missing or unreadable.
pub fn read_state(instance_dir: &Path) -> Option<ShimState> {
    let text = std::fs::read(instance_dir.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

pub(crate) fn write_state(instance_dir: &Path, state: &ShimState) -> Result<(), ShimError> {
    let text = serde_json::to_vec(state)
        .map_err(|err| ShimError::Protocol(format!("cannot encode state: {err}")))?;
    write_atomically(&instance_dir.join(STATE_FILE), &text)
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so a
/// reader sees the old or the new content, never a mix. There is no fsync:
/// these files describe processes that do not survive a host crash, and a
/// file lost in one reads as "no state", which the agent reports as failed.
/// Syncing cost several milliseconds per write on every launch.
/// The file is root's alone (0600) whatever the umask: specs and OCI
/// configs carry tenants' environment, secrets included.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ShimError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let io_err = |what: &str, source| ShimError::Io {
        what: format!("{what} {}", tmp.display()),
        source,
    };
    // A leftover temporary file would keep its old mode through O_TRUNC.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(&tmp)
    .map_err(|e| io_err("create", e))?;
    file.write_all(bytes).map_err(|e| io_err("write", e))?;
    std::fs::rename(&tmp, path).map_err(|source| ShimError::Io {
        what: format!("rename {} to {}", tmp.display(), path.display()),
        source,
    })
}
