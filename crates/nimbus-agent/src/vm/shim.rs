//! The VM supervisor: starts QEMU ([`super::qemu`]), drives it over QMP,
//! tees the serial console ([`super::console`]) and records how it ended
//! ([`super::exit`]). The control socket is the shared
//! [`crate::shim::server`]; [`super::handler`] is what the VM adds to it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::{kill, Signal};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::console::start_console_pumps;
use super::error::VmError;
use super::exit::{describe_exit, VmExit};
use super::qemu::spawn_qemu;
use super::qmp::{Qmp, QmpError, QmpEvent};
use super::spec::{VmKind, VmPaths, VmShimSpec, VM_SPEC_FILE};
use crate::shim::control::SOCKET_FILE;
use crate::shim::daemon::{signal_ready, Supervisor, READY_FAILED, READY_RUNNING};
use crate::shim::logs::{ConsoleLog, Stream, CONSOLE_LOG};
use crate::shim::server::Connections;
use crate::shim::state::{write_state, LiveState, Phase, ShimState};
use crate::shim::ShimError;

/// How long QEMU gets to greet on QMP and leave negotiation after it starts.
const QMP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a QEMU whose QMP connection failed is given to show it is exiting.
const QMP_EXIT_GRACE: Duration = Duration::from_millis(500);
/// How long QEMU may take to exit after it reported the guest's shutdown:
/// long enough to close its disks, short enough to end a QEMU stuck in its
/// cleanup.
const SHUTDOWN_EXIT_GRACE: Duration = Duration::from_secs(30);
/// How long console output may keep arriving after QEMU exited.
const DRAIN: Duration = Duration::from_secs(1);
/// When the shim trims its working set a second time after the start.
const TRIM_AGAIN_AFTER: Duration = Duration::from_secs(2);
/// Lines of QEMU's stderr kept for the exit reason.
const STDERR_TAIL_LINES: usize = 8;
/// How long the shim lets its clients read the final state before it exits.
const CLIENTS_FLUSH: Duration = Duration::from_secs(2);

pub(super) enum VmCommand {
    Stop {
        grace_ms: Option<u64>,
        reply: oneshot::Sender<ShimState>,
    },
    Pause {
        paused: bool,
        reply: oneshot::Sender<Result<ShimState, VmError>>,
    },
}

/// Shared state of the supervisor and its connection handlers (one thread).
pub(super) struct VmShim {
    pub(super) dir: PathBuf,
    pub(super) spec: VmShimSpec,
    pub(super) live: LiveState,
    pub(super) commands: mpsc::UnboundedSender<VmCommand>,
    /// Serial output for the attached console client, if one is attached.
    pub(super) console_out: RefCell<Option<mpsc::Sender<Vec<u8>>>>,
    /// Keystrokes for the guest's serial port.
    pub(super) console_in: mpsc::UnboundedSender<Vec<u8>>,
    pub(super) connections: Connections,
}

impl VmShim {
    pub(super) fn state(&self) -> ShimState {
        self.live.get()
    }

    fn update(&self, change: impl FnOnce(&mut ShimState)) {
        self.live.update(change);
    }
}

/// Whether `dir` is a VM's or unikernel's instance directory (it holds
/// `vm.json`).
pub(crate) fn owns_instance_dir(dir: &Path) -> bool {
    dir.join(VM_SPEC_FILE).exists()
}

/// The VM's start in the shim's background process: loads `vm.json`.
pub(crate) fn prepare_supervisor(dir: &Path, shim_pid: i32) -> Result<Supervisor, ShimError> {
    let spec = VmShimSpec::load(dir)?;
    let dir = dir.to_path_buf();
    Ok(Box::new(move |ready| {
        Box::pin(supervise(dir, spec, ready, shim_pid))
    }))
}

async fn supervise(dir: PathBuf, spec: VmShimSpec, mut ready: Option<File>, shim_pid: i32) -> i32 {
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let (console_in, console_in_rx) = mpsc::unbounded_channel();
    let log = match ConsoleLog::open(&dir, spec.log_max_bytes, spec.log_files) {
        Ok(l) => Rc::new(RefCell::new(l)),
        Err(e) => {
            let mut state = ShimState::new(shim_pid);
            state.phase = Phase::Failed;
            state.reason = Some(e.to_string());
            let _ = write_state(&dir, &state);
            signal_ready(&mut ready, READY_FAILED);
            return 1;
        }
    };
    let mut initial = ShimState::new(shim_pid);
    initial.accelerator = Some(spec.accelerator.as_str().to_string());
    initial.accelerator_reason = Some(spec.accelerator_reason.clone());
    initial.console_log = Some(dir.join(CONSOLE_LOG).display().to_string());
    let shim = Rc::new(VmShim {
        live: LiveState::new(&dir, &spec.instance_id, initial),
        dir,
        spec,
        commands,
        console_out: RefCell::new(None),
        console_in,
        connections: Connections::default(),
    });
    // SIGTERM to the shim (e.g. host shutdown) is a stop with the spec's grace.
    if let Ok(mut sigterm) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        let commands = shim.commands.clone();
        tokio::task::spawn_local(async move {
            while sigterm.recv().await.is_some() {
                let (reply, _) = oneshot::channel();
                let _ = commands.send(VmCommand::Stop {
                    grace_ms: None,
                    reply,
                });
            }
        });
    }
    match crate::shim::server::listen(&shim.dir) {
        Ok(listener) => {
            tokio::task::spawn_local(crate::shim::server::serve(shim.clone(), listener));
        }
        Err(e) => {
            fail(&shim, &mut ready, e.to_string(), Vec::new()).await;
            return 1;
        }
    }
    let mut qemu = match spawn_qemu(&shim) {
        Ok(q) => q,
        Err(e) => {
            fail(&shim, &mut ready, e.to_string(), Vec::new()).await;
            return 1;
        }
    };
    let stderr_tail = Rc::new(RefCell::new(VecDeque::<String>::new()));
    let stderr_task = qemu.child.stderr.take().map(|err| {
        let tail = stderr_tail.clone();
        let log = log.clone();
        tokio::task::spawn_local(async move {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.borrow_mut().write_line(Stream::Stderr, line.as_bytes());
                let mut t = tail.borrow_mut();
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
    });
    let serial_task = match start_console_pumps(&shim, &qemu.serial, log.clone(), console_in_rx) {
        Ok(t) => t,
        Err(e) => {
            let _ = qemu.child.start_kill();
            let _ = qemu.child.wait().await;
            fail(&shim, &mut ready, e.to_string(), Vec::new()).await;
            return 1;
        }
    };

    // QEMU greets on QMP during start-up, its vCPUs held (`-S`). It may also
    // end first (a bad command line fails at once): that is judged by its
    // exit below.
    enum Start {
        Connected(Qmp),
        NoQmp(VmError),
        Exited(Option<std::process::ExitStatus>),
    }
    let qmp_stream = std::os::unix::net::UnixStream::from(qemu.qmp);
    let handshake = async {
        let name = "QEMU's QMP socket pair";
        let io = |source| QmpError::Io {
            path: name.to_string(),
            source,
        };
        qmp_stream.set_nonblocking(true).map_err(io)?;
        let stream = tokio::net::UnixStream::from_std(qmp_stream).map_err(io)?;
        Qmp::over(stream, name, QMP_HANDSHAKE_TIMEOUT).await
    };
    let start = tokio::select! {
        q = handshake => match q {
            Ok(q) => Start::Connected(q),
            Err(e) => Start::NoQmp(VmError::QmpUnanswered(e)),
        },
        status = qemu.child.wait() => Start::Exited(status.ok()),
    };
    // A QMP failure while QEMU is on its way out (a unikernel ending during
    // the handshake resets the connection) is an exit, not a start failure.
    let start = match start {
        Start::NoQmp(why) => match tokio::time::timeout(QMP_EXIT_GRACE, qemu.child.wait()).await {
            Ok(status) => Start::Exited(status.ok()),
            Err(_) => Start::NoQmp(why),
        },
        other => other,
    };
    // QEMU holds the vCPUs (`-S`) until QMP is ready: let the guest run.
    let start = match start {
        Start::Connected(mut q) => match q.cont().await {
            Ok(()) => Start::Connected(q),
            Err(e) => Start::NoQmp(VmError::VcpusNotStarted(e)),
        },
        other => other,
    };
    let mut qmp = None;
    let mut early_exit = None;
    match start {
        Start::Connected(q) => qmp = Some(q),
        Start::Exited(status) => early_exit = Some(status),
        Start::NoQmp(why) => {
            let _ = qemu.child.start_kill();
            let _ = qemu.child.wait().await;
            if let Some(t) = stderr_task {
                let _ = tokio::time::timeout(DRAIN, t).await;
            }
            fail(&shim, &mut ready, why.to_string(), Vec::new()).await;
            return 1;
        }
    }
    shim.update(|s| {
        s.phase = Phase::Running;
        s.pid = Some(qemu.pid.as_raw());
        s.started_at = Some(Utc::now());
    });
    signal_ready(&mut ready, READY_RUNNING);
    // Start-up code is done with: give back its clean pages, and again once
    // the agent has subscribed (as the container shim does).
    crate::shim::trim::trim_working_set();
    let mut trim_at = Some(Instant::now() + TRIM_AGAIN_AFTER);

    let mut stop_replies: Vec<oneshot::Sender<ShimState>> = Vec::new();
    let mut stop_requested = false;
    let mut kill_at: Option<Instant> = None;
    let mut forced = false;
    let mut shutdown_reason: Option<String> = None;
    let status = match early_exit {
        Some(status) => status,
        None => loop {
            tokio::select! {
                biased;
                status = qemu.child.wait() => break status.ok(),
                event = next_event(&mut qmp) => match event {
                    Some(QmpEvent::Stop) => shim.update(|s| { if s.phase == Phase::Running { s.phase = Phase::Paused } }),
                    Some(QmpEvent::Resume) => shim.update(|s| { if s.phase == Phase::Paused { s.phase = Phase::Running } }),
                    Some(QmpEvent::Shutdown { reason, .. }) => {
                        shutdown_reason = Some(reason);
                        // QEMU exits right after SHUTDOWN; one stuck in its
                        // cleanup would otherwise hold the instance forever.
                        if kill_at.is_none() {
                            kill_at = Some(Instant::now() + SHUTDOWN_EXIT_GRACE);
                        }
                    }
                    Some(_) => {}
                    // QMP closed: QEMU is exiting; its exit comes next.
                    None => qmp = None,
                },
                Some(cmd) = command_rx.recv() => match cmd {
                    VmCommand::Stop { grace_ms, reply } => {
                        stop_replies.push(reply);
                        if !stop_requested {
                            stop_requested = true;
                            shim.update(|s| s.phase = Phase::Stopping);
                            let grace = grace_ms.unwrap_or(shim.spec.stop_grace_ms);
                            kill_at = Some(Instant::now() + Duration::from_millis(grace));
                            request_power_off(&shim.spec, &mut qmp).await;
                        } else if let Some(grace) = grace_ms {
                            // A later stop asking for less time (`rm --force`
                            // during a graceful stop) brings the kill forward.
                            let asked = Instant::now() + Duration::from_millis(grace);
                            kill_at = kill_at.map(|at| at.min(asked));
                        }
                    }
                    VmCommand::Pause { paused, reply } => {
                        let result = set_paused(&shim, &mut qmp, paused).await;
                        let _ = reply.send(result);
                    }
                },
                _ = sleep_until_opt(kill_at) => {
                    let _ = kill(qemu.pid, Signal::SIGKILL);
                    forced = true;
                    kill_at = None;
                }
                _ = sleep_until_opt(trim_at) => {
                    crate::shim::trim::trim_working_set();
                    trim_at = None;
                }
            }
        },
    };
    // QEMU sends SHUTDOWN (with its reason) just before it exits; the exit
    // usually wins the race above, so read what is still queued.
    if shutdown_reason.is_none() {
        let drain = async {
            while let Some(event) = next_event_or_end(&mut qmp).await {
                if let QmpEvent::Shutdown { reason, .. } = event {
                    return Some(reason);
                }
            }
            None
        };
        if let Ok(reason) = tokio::time::timeout(Duration::from_millis(200), drain).await {
            shutdown_reason = reason;
        }
    }
    drop(qmp);
    let _ = tokio::time::timeout(DRAIN, serial_task).await;
    if let Some(t) = stderr_task {
        let _ = tokio::time::timeout(DRAIN, t).await;
    }
    let (code, signal) = match status {
        Some(s) => (s.code(), s.signal()),
        None => (None, None),
    };
    let tail: String = stderr_tail
        .borrow()
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let mut exit = describe_exit(
        shim.spec.kind,
        code,
        signal,
        stop_requested,
        forced,
        shutdown_reason.as_deref(),
        &tail,
    );
    if forced && !stop_requested {
        exit.phase = Phase::Failed;
        exit.reason = format!(
            "QEMU did not exit within {}s after the guest shut down ({}) and was killed; the guest's exit status is lost",
            SHUTDOWN_EXIT_GRACE.as_secs(),
            shutdown_reason.as_deref().unwrap_or("no reason given")
        );
    }
    while let Ok(cmd) = command_rx.try_recv() {
        match cmd {
            VmCommand::Stop { reply, .. } => stop_replies.push(reply),
            VmCommand::Pause { reply, .. } => {
                let _ = reply.send(Err(VmError::Ended));
            }
        }
    }
    command_rx.close();
    finish(&shim, exit, stop_replies).await;
    signal_ready(&mut ready, READY_FAILED);
    0
}

/// The next event, or `None` once QMP is closed (never pending forever).
async fn next_event_or_end(qmp: &mut Option<Qmp>) -> Option<QmpEvent> {
    match qmp {
        Some(q) => q.next_event().await.ok(),
        None => None,
    }
}

async fn next_event(qmp: &mut Option<Qmp>) -> Option<QmpEvent> {
    match qmp {
        Some(q) => q.next_event().await.ok(),
        None => std::future::pending().await,
    }
}

/// A VM gets the ACPI power button (after its vCPUs run again, or it could
/// not react); a unikernel has no ACPI and is told to quit.
async fn request_power_off(spec: &VmShimSpec, qmp: &mut Option<Qmp>) {
    let Some(q) = qmp.as_mut() else { return };
    let result = match spec.kind {
        VmKind::Vm => {
            let _ = q.cont().await;
            q.system_powerdown().await
        }
        VmKind::Unikernel => q.quit().await,
    };
    if let Err(e) = result {
        tracing::warn!(instance_id = %spec.instance_id, error = %e, "power-off request failed; the grace period ends in a kill");
    }
}

async fn set_paused(
    shim: &VmShim,
    qmp: &mut Option<Qmp>,
    paused: bool,
) -> Result<ShimState, VmError> {
    let phase = shim.state().phase;
    let wanted_from = if paused {
        Phase::Running
    } else {
        Phase::Paused
    };
    if phase != wanted_from {
        return Err(VmError::WrongPhase {
            phase,
            action: if paused { "paused" } else { "resumed" },
        });
    }
    let q = qmp.as_mut().ok_or(VmError::QmpGone)?;
    if paused {
        q.stop().await?;
    } else {
        q.cont().await?;
    }
    // The STOP/RESUME event may be queued behind the reply; confirm directly.
    let status = q.query_status().await?;
    shim.update(|s| {
        s.phase = if status.running {
            Phase::Running
        } else {
            Phase::Paused
        }
    });
    Ok(shim.state())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn fail(
    shim: &Rc<VmShim>,
    ready: &mut Option<File>,
    reason: String,
    replies: Vec<oneshot::Sender<ShimState>>,
) {
    finish(
        shim,
        VmExit {
            phase: Phase::Failed,
            exit_code: None,
            signal: None,
            reason,
        },
        replies,
    )
    .await;
    signal_ready(ready, READY_FAILED);
}

/// Records the end, removes QEMU's sockets and the pid file, answers stop
/// requests, and lets clients read the final state.
async fn finish(shim: &Rc<VmShim>, exit: VmExit, replies: Vec<oneshot::Sender<ShimState>>) {
    let paths = VmPaths::new(&shim.dir);
    let _ = std::fs::remove_file(&paths.pidfile);
    let _ = std::fs::remove_file(shim.dir.join(SOCKET_FILE));
    shim.console_out.borrow_mut().take();
    shim.update(|s| {
        s.phase = exit.phase;
        s.pid = None;
        s.finished_at = Some(Utc::now());
        s.exit_code = exit.exit_code;
        s.signal = exit.signal;
        s.reason = Some(exit.reason.clone());
    });
    let final_state = shim.state();
    for reply in replies {
        let _ = reply.send(final_state.clone());
    }
    shim.connections.wait_closed(CLIENTS_FLUSH).await;
}
