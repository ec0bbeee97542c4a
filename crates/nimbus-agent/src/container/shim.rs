//! The supervisor: runs one container, restarts it by policy, answers control
//! requests (through the shared [`crate::shim::server`], with [`super::handler`]
//! for what is the container's own) and tears everything down at the end.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use chrono::Utc;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{pipe2, Pid};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::bundle::{bundle_dir, default_capabilities, default_seccomp, environment, write_bundle};
use super::container_error;
use super::exec::{bring_up_loopback, ExecContext};
use super::pipes::AsyncPipe;
use super::reaper::Reaper;
use super::rootfs::{mount_rootfs, unmount_rootfs, work_dir};
use super::spec::{RestartMode, ShimSpec, SPEC_FILE};
use crate::host::cgroups::{kill_and_remove, oom_kill_count};
use crate::shim::control::SOCKET_FILE;
use crate::shim::daemon::{signal_ready, Supervisor, READY_FAILED, READY_RUNNING};
use crate::shim::logs::{ConsoleLog, LineSplitter, Stream};
use crate::shim::server::Connections;
use crate::shim::state::{write_state, LiveState, Phase, ShimState};
use crate::shim::ShimError;

/// Restart back-off: starts here and doubles up to `BACKOFF_MAX`.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// When the shim trims its working set a second time after a start.
const TRIM_AGAIN_AFTER: Duration = Duration::from_secs(2);
/// When the shim trims its working set after an exec ended: the exec path
/// (namespace joins, seccomp, pipes) faults in code and heap that an idle
/// shim never touches again.
const TRIM_AFTER_EXEC: Duration = Duration::from_secs(1);
/// A run at least this long resets the back-off delay.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// How long output may keep flowing after the init exited (a leaked descriptor in
/// another process must not stall the exit report).
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// How long the shim lets its clients read the final state before it exits.
const CLIENTS_FLUSH: Duration = Duration::from_secs(2);

pub(super) enum Command {
    Stop {
        grace_ms: Option<u64>,
        reply: oneshot::Sender<ShimState>,
    },
}

/// Shared state of the supervisor and its connection handlers (one thread).
pub(super) struct Shim {
    pub(super) dir: PathBuf,
    pub(super) spec: ShimSpec,
    pub(super) live: LiveState,
    pub(super) reaper: Reaper,
    log: RefCell<ConsoleLog>,
    pub(super) exec_ctx: ExecContext,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    init_pid: Cell<Option<Pid>>,
    pub(super) connections: Connections,
    /// Signalled when an exec ended: the supervisor trims its working set
    /// shortly after.
    pub(super) exec_finished: Notify,
}

impl Shim {
    pub(super) fn state(&self) -> ShimState {
        self.live.get()
    }

    pub(super) fn init_pid(&self) -> Option<Pid> {
        self.init_pid.get()
    }

    fn update(&self, change: impl FnOnce(&mut ShimState)) {
        self.live.update(change);
    }
}

/// Whether `dir` is a container's instance directory (it holds `spec.json`).
pub(crate) fn owns_instance_dir(dir: &Path) -> bool {
    dir.join(SPEC_FILE).exists()
}

/// The container's start in the shim's background process: loads the spec
/// and, still single-threaded, moves the whole shim into the prepared network
/// namespace, so every container it starts is in it.
pub(crate) fn prepare_supervisor(dir: &Path, shim_pid: i32) -> Result<Supervisor, ShimError> {
    let spec = ShimSpec::load(dir)?;
    if let Some(ns) = &spec.netns {
        std::fs::File::open(ns)
            .and_then(|f| {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            })
            .map_err(|source| ShimError::Io {
                what: format!("joining network namespace {}", ns.display()),
                source,
            })?;
    }
    let dir = dir.to_path_buf();
    Ok(Box::new(move |ready| {
        Box::pin(supervise(dir, spec, ready, shim_pid))
    }))
}

async fn supervise(dir: PathBuf, spec: ShimSpec, mut ready: Option<File>, shim_pid: i32) -> i32 {
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let setup = (|| -> Result<(ConsoleLog, ExecContext), ShimError> {
        let log = ConsoleLog::open(&dir, spec.log_max_bytes, spec.log_files)?;
        let exec_ctx = ExecContext {
            instance_id: spec.instance_id.clone(),
            env: environment(&spec.env),
            working_dir: spec.working_dir.clone(),
            user: spec.user,
            capabilities: default_capabilities()?,
            seccomp: default_seccomp()?,
            nofile: (super::bundle::NOFILE_SOFT, super::bundle::NOFILE_HARD),
        };
        Ok((log, exec_ctx))
    })();
    let (log, exec_ctx) = match setup {
        Ok(v) => v,
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
    initial.restart_count = spec.restarts_before;
    let shim = Rc::new(Shim {
        live: LiveState::new(&dir, &spec.instance_id, initial),
        dir,
        spec,
        reaper: Reaper::default(),
        log: RefCell::new(log),
        exec_ctx,
        commands,
        init_pid: Cell::new(None),
        connections: Connections::default(),
        exec_finished: Notify::new(),
    });

    if let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        let reaper_shim = shim.clone();
        tokio::task::spawn_local(async move {
            loop {
                reaper_shim.reaper.reap();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
    }
    // SIGTERM to the shim (e.g. a host shutdown) is a stop with the spec's grace.
    if let Ok(mut sigterm) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        let commands = shim.commands.clone();
        tokio::task::spawn_local(async move {
            while sigterm.recv().await.is_some() {
                let (reply, _) = oneshot::channel();
                let _ = commands.send(Command::Stop {
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
            let reason = e.to_string();
            finish(&shim, Phase::Failed, Some(reason), Vec::new()).await;
            signal_ready(&mut ready, READY_FAILED);
            return 1;
        }
    }

    let (phase, reason, stop_replies) =
        run_container_loop(&shim, &mut ready, &mut command_rx).await;
    let mut stop_replies = stop_replies;
    command_rx.close();
    while let Ok(Command::Stop { reply, .. }) = command_rx.try_recv() {
        stop_replies.push(reply);
    }
    let code = if phase == Phase::Failed { 1 } else { 0 };
    finish(&shim, phase, reason, stop_replies).await;
    signal_ready(&mut ready, READY_FAILED);
    code
}

/// Starts, watches and restarts the container. Returns the final phase, a reason to
/// record if the run failed, and the stop requests still waiting for an answer.
async fn run_container_loop(
    shim: &Rc<Shim>,
    ready: &mut Option<File>,
    command_rx: &mut mpsc::UnboundedReceiver<Command>,
) -> (Phase, Option<String>, Vec<oneshot::Sender<ShimState>>) {
    let mut stop_replies = Vec::new();
    let mut backoff = BACKOFF_START;
    loop {
        shim.update(|s| {
            s.phase = Phase::Starting;
            s.pid = None;
        });
        let mut run = match start_container(shim) {
            Ok(run) => run,
            Err(e) => {
                return (Phase::Failed, Some(e.to_string()), stop_replies);
            }
        };
        shim.init_pid.set(Some(run.pid));
        shim.update(|s| {
            s.phase = Phase::Running;
            s.pid = Some(run.pid.as_raw());
            s.started_at = Some(Utc::now());
            s.finished_at = None;
            s.exit_code = None;
            s.signal = None;
            s.oom_killed = false;
            s.reason = None;
        });
        signal_ready(ready, READY_RUNNING);
        // Startup code (argument parsing, libcontainer, mounts) is done with;
        // trim again once the agent has subscribed and the first output ran.
        crate::shim::trim::trim_working_set();
        let started = Instant::now();
        let mut trim_at = Some(started + TRIM_AGAIN_AFTER);

        // Wait for the exit, handling stop requests meanwhile.
        let mut stopping = false;
        let mut kill_at: Option<Instant> = None;
        let mut forced = false;
        let status = loop {
            // Biased: once the init is reaped its pid may be reused, so its exit must
            // win over a due SIGKILL or a stop request.
            tokio::select! {
                biased;
                status = &mut run.exit => break status.ok(),
                Some(Command::Stop { grace_ms, reply }) = command_rx.recv() => {
                    stop_replies.push(reply);
                    if !stopping {
                        stopping = true;
                        let grace = grace_ms.unwrap_or(shim.spec.stop_grace_ms);
                        shim.update(|s| s.phase = Phase::Stopping);
                        let _ = kill(run.pid, Signal::SIGTERM);
                        kill_at = Some(Instant::now() + Duration::from_millis(grace));
                    } else if let Some(grace) = grace_ms {
                        // A later stop asking for less time (`rm --force`
                        // during a graceful stop) brings the kill forward.
                        let asked = Instant::now() + Duration::from_millis(grace);
                        kill_at = kill_at.map(|at| at.min(asked));
                    }
                }
                _ = sleep_until_opt(kill_at) => {
                    let _ = kill(run.pid, Signal::SIGKILL);
                    forced = true;
                    kill_at = None;
                }
                _ = sleep_until_opt(trim_at) => {
                    crate::shim::trim::trim_working_set();
                    trim_at = None;
                }
                _ = shim.exec_finished.notified() => {
                    // A later exec pushes the trim back: one trim after a
                    // burst of execs.
                    trim_at = Some(Instant::now() + TRIM_AFTER_EXEC);
                }
            }
        };
        shim.init_pid.set(None);
        let _ = tokio::time::timeout(LOG_DRAIN, async {
            for pump in run.log_pumps.drain(..) {
                let _ = pump.await;
            }
        })
        .await;
        let oom_kills = oom_kill_count(&shim.spec.instance_id);
        let exit = describe_exit(status, oom_kills, shim.spec.resources.memory_bytes, forced);
        let may_restart =
            !stopping && should_restart(&shim.spec, &exit, shim.state().restart_count);
        if !may_restart {
            // The exit is final: publish it before the container's cgroups
            // and state are deleted, which takes a few milliseconds.
            shim.update(|s| {
                s.phase = Phase::Stopping;
                s.pid = None;
                s.finished_at = Some(Utc::now());
                s.exit_code = exit.code;
                s.signal = exit.signal;
                s.oom_killed = exit.oom;
                s.reason = Some(exit.reason.clone());
            });
        }
        // Deleting the container's cgroups waits on the kernel (RCU grace
        // periods, milliseconds): do it on a helper thread while this
        // runtime sends the exit published above to subscribers and keeps
        // answering control requests. The thread is joined before anything
        // else happens, so the shim is single-threaded again before it
        // forks (a restart, an exec).
        shim.update(|s| s.pid = None);
        let delete_error = delete_off_thread(run.container).await;
        while let Ok(Command::Stop { reply, .. }) = command_rx.try_recv() {
            stop_replies.push(reply);
            stopping = true;
        }
        let restart = may_restart && !stopping && delete_error.is_none();
        shim.update(|s| {
            s.phase = if restart {
                Phase::Backoff
            } else {
                Phase::Stopping
            };
            s.pid = None;
            // Keep the time already published for a final exit.
            s.finished_at.get_or_insert_with(Utc::now);
            s.exit_code = exit.code;
            s.signal = exit.signal;
            s.oom_killed = exit.oom;
            s.reason = Some(exit.reason.clone());
        });
        if let Some(e) = delete_error {
            return (
                Phase::Failed,
                Some(format!("{}; {e}", exit.reason)),
                stop_replies,
            );
        }
        if !restart {
            return (Phase::Exited, None, stop_replies);
        }
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = BACKOFF_START;
        }
        let wake = Instant::now() + backoff;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            Some(Command::Stop { reply, .. }) = command_rx.recv() => {
                stop_replies.push(reply);
                return (Phase::Exited, None, stop_replies);
            }
        }
        shim.update(|s| s.restart_count += 1);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    oom: bool,
    failed: bool,
    reason: String,
}

fn describe_exit(
    status: Option<WaitStatus>,
    oom_kills: u64,
    memory: Option<u64>,
    forced: bool,
) -> Exit {
    let (code, signal) = match status {
        Some(WaitStatus::Exited(_, code)) => (Some(code), None),
        Some(WaitStatus::Signaled(_, sig, _)) => (Some(128 + sig as i32), Some(sig as i32)),
        _ => (None, None),
    };
    let oom = oom_kills > 0;
    let reason = if oom {
        match memory {
            Some(bytes) => format!("OOM-killed: memory limit {} MiB exceeded", bytes >> 20),
            None => "OOM-killed: host memory exhausted".to_string(),
        }
    } else if let Some(sig) = signal {
        if forced {
            format!("killed by signal {sig} after the stop grace period")
        } else {
            format!("killed by signal {sig}")
        }
    } else if let Some(code) = code {
        format!("exited with code {code}")
    } else {
        "exit status was lost".to_string()
    };
    Exit {
        code,
        signal,
        oom,
        failed: oom || code != Some(0),
        reason,
    }
}

fn should_restart(spec: &ShimSpec, exit: &Exit, restarts: u32) -> bool {
    let wanted = match spec.restart.policy {
        RestartMode::Never => false,
        RestartMode::OnFailure => exit.failed,
        RestartMode::Always => true,
    };
    wanted && spec.restart.max_retries.is_none_or(|max| restarts < max)
}

struct RunningContainer {
    container: Container,
    pid: Pid,
    exit: oneshot::Receiver<WaitStatus>,
    log_pumps: Vec<tokio::task::JoinHandle<()>>,
}

fn runtime_dir(dir: &Path) -> PathBuf {
    dir.join("runtime")
}

fn start_container(shim: &Rc<Shim>) -> Result<RunningContainer, ShimError> {
    let spec = &shim.spec;
    let id = &spec.instance_id;
    crate::host::cgroups::warm_cgroup_migration();
    crate::host::cgroups::make_delegated_instance_cgroup(id)?;
    let rootfs = mount_rootfs(&shim.dir, spec)?;
    // The agent changes the volumes of a running container and records
    // them in spec.json: a restart mounts what is attached now.
    let volumes = ShimSpec::load(&shim.dir).map_or_else(|_| spec.volumes.clone(), |s| s.volumes);
    let bundle_spec = ShimSpec {
        volumes,
        ..spec.clone()
    };
    write_bundle(&shim.dir, &bundle_spec, &rootfs)?;
    let runtime = runtime_dir(&shim.dir);
    let stale = runtime.join(id);
    if stale.exists() {
        if let Ok(mut old) = Container::load(stale.clone()) {
            let _ = old.delete(true);
        }
        let _ = std::fs::remove_dir_all(&stale);
    }
    std::fs::create_dir_all(&runtime).map_err(|source| ShimError::Io {
        what: format!("create runtime dir {}", runtime.display()),
        source,
    })?;
    let pipe = |what: &str| {
        pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| container_error(format!("create {what} pipe for {id}: {e}")))
    };
    let (out_r, out_w) = pipe("stdout")?;
    let (err_r, err_w) = pipe("stderr")?;
    let stdin = File::open("/dev/null").map_err(|source| ShimError::Io {
        what: "open /dev/null".to_string(),
        source,
    })?;
    let container_err = |e: libcontainer::error::LibcontainerError| {
        container_error(format!("libcontainer could not create container {id}: {e}"))
    };
    // libcontainer forks the container's init from the shim itself: the
    // init must start at the workload's OOM score, not the shim's.
    let workload_oom = crate::protect::WorkloadOomScope::enter().map_err(|e| {
        container_error(format!(
            "cannot give container {id} the workload's OOM score: {e}"
        ))
    })?;
    let built = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_root_path(&runtime)
        .map_err(container_err)?
        .with_stdin(stdin)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(bundle_dir(&shim.dir))
        .with_systemd(false)
        .with_detach(true)
        .build();
    drop(workload_oom);
    let mut container = built.map_err(container_err)?;
    let Some(pid) = container.pid() else {
        let _ = container.delete(true);
        return Err(container_error(format!("container {id} has no init pid")));
    };
    let exit = shim.reaper.watch(pid);
    // A prepared namespace has its loopback up already.
    let loopback = if spec.netns.is_some() {
        Ok(())
    } else {
        bring_up_loopback(pid)
    };
    let started = loopback.and_then(|()| {
        container
            .start()
            .map_err(|e| container_error(format!("start container {id}: {e}")))
    });
    if let Err(e) = started {
        let _ = container.delete(true);
        return Err(e);
    }
    let log_pumps = vec![
        tokio::task::spawn_local(pump_log(shim.clone(), out_r, Stream::Stdout)),
        tokio::task::spawn_local(pump_log(shim.clone(), err_r, Stream::Stderr)),
    ];
    Ok(RunningContainer {
        container,
        pid,
        exit,
        log_pumps,
    })
}

async fn pump_log(shim: Rc<Shim>, fd: OwnedFd, stream: Stream) {
    let Ok(pipe) = AsyncPipe::new(fd) else { return };
    let mut buf = vec![0u8; 8192];
    let mut splitter = LineSplitter::default();
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        let mut log = shim.log.borrow_mut();
        splitter.feed(&buf[..n], |line| log.write_line(stream, line));
    }
    let mut log = shim.log.borrow_mut();
    splitter.finish(|line| log.write_line(stream, line));
}

/// [`delete_container`] on a short-lived thread, awaited without blocking
/// the runtime; returns once the thread has been joined.
async fn delete_off_thread(mut container: Container) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("nimbus-delete".into())
        .spawn(move || {
            let _ = tx.send(delete_container(&mut container));
        });
    match thread {
        Ok(handle) => {
            let result = rx.await.unwrap_or_else(|_| {
                Some("deleting the container failed: its thread panicked".into())
            });
            let _ = handle.join();
            result
        }
        Err(e) => Some(format!(
            "could not start a thread to delete the container: {e}"
        )),
    }
}

fn delete_container(container: &mut Container) -> Option<String> {
    container.delete(true).err().map(|e| {
        format!(
            "libcontainer could not delete container {}: {e}",
            container.id()
        )
    })
}

/// Tears everything down, records the final state, answers stop requests and waits
/// (briefly) for connection handlers to flush.
async fn finish(
    shim: &Rc<Shim>,
    phase: Phase,
    reason: Option<String>,
    stop_replies: Vec<oneshot::Sender<ShimState>>,
) {
    let mut problems = Vec::new();
    let id = &shim.spec.instance_id;
    if let Err(e) = kill_and_remove(id, Duration::from_secs(5)) {
        problems.push(e.to_string());
    }
    if let Err(e) = unmount_rootfs(&shim.dir) {
        problems.push(e.to_string());
    }
    // A stopped or ended container holds no volume: its qemu-storage-daemon
    // (which keeps the qcow2's write lock) goes, so a volume detached from
    // it can serve another instance at once. The next start mounts again.
    if let Err(e) = crate::volume::attach::detach_all(&shim.dir) {
        problems.push(e.to_string());
    }
    for dir in [
        runtime_dir(&shim.dir),
        bundle_dir(&shim.dir),
        work_dir(&shim.dir),
    ] {
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                problems.push(format!("remove {}: {e}", dir.display()));
            }
        }
    }
    let _ = std::fs::remove_file(shim.dir.join(SOCKET_FILE));
    shim.update(|s| {
        s.phase = if problems.is_empty() {
            phase
        } else {
            Phase::Failed
        };
        s.pid = None;
        if s.finished_at.is_none() {
            s.finished_at = Some(Utc::now());
        }
        let mut words: Vec<String> = reason.into_iter().chain(s.reason.take()).take(1).collect();
        if !problems.is_empty() {
            words.push(format!("teardown incomplete: {}", problems.join("; ")));
        }
        s.reason = if words.is_empty() {
            None
        } else {
            Some(words.join("; "))
        };
    });
    let final_state = shim.state();
    for reply in stop_replies {
        let _ = reply.send(final_state.clone());
    }
    shim.connections.wait_closed(CLIENTS_FLUSH).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::RestartPolicy;

    fn spec_with(policy: RestartMode, max_retries: Option<u32>) -> ShimSpec {
        let mut spec: ShimSpec = serde_json::from_value(serde_json::json!({
            "instance_id": "i", "name": "n", "hostname": "h", "layers": ["/l"],
            "args": ["true"], "env": [], "working_dir": "/", "user": {"uid": 0, "gid": 0},
            "resources": {"memory_bytes": null, "cpu_millis": null, "pids_max": null},
            "restart": {"policy": "never", "max_retries": null},
            "id_map": {"host_id": 100000, "size": 65536},
            "stop_grace_ms": 10, "log_max_bytes": 1024, "log_files": 1
        }))
        .expect("spec");
        spec.restart = RestartPolicy {
            policy,
            max_retries,
        };
        spec
    }

    fn exited(code: i32) -> Option<WaitStatus> {
        Some(WaitStatus::Exited(Pid::from_raw(1), code))
    }

    #[test]
    fn exit_descriptions_are_in_words() {
        let oom = describe_exit(exited(137), 1, Some(64 << 20), false);
        assert_eq!(oom.reason, "OOM-killed: memory limit 64 MiB exceeded");
        assert!(oom.oom && oom.failed);
        let killed = describe_exit(
            Some(WaitStatus::Signaled(
                Pid::from_raw(1),
                Signal::SIGKILL,
                false,
            )),
            0,
            None,
            false,
        );
        assert_eq!((killed.code, killed.signal), (Some(137), Some(9)));
        assert_eq!(killed.reason, "killed by signal 9");
        assert_eq!(
            describe_exit(exited(1), 0, None, false).reason,
            "exited with code 1"
        );
        assert!(!describe_exit(exited(0), 0, None, false).failed);
    }

    #[test]
    fn restart_policy_decisions() {
        let ok = describe_exit(exited(0), 0, None, false);
        let bad = describe_exit(exited(3), 0, None, false);
        assert!(!should_restart(
            &spec_with(RestartMode::Never, None),
            &bad,
            0
        ));
        assert!(!should_restart(
            &spec_with(RestartMode::OnFailure, None),
            &ok,
            0
        ));
        assert!(should_restart(
            &spec_with(RestartMode::OnFailure, Some(2)),
            &bad,
            1
        ));
        assert!(!should_restart(
            &spec_with(RestartMode::OnFailure, Some(2)),
            &bad,
            2
        ));
        assert!(should_restart(
            &spec_with(RestartMode::Always, None),
            &ok,
            1000
        ));
    }
}
