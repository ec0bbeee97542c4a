//! Turning `nimbus shim <dir>` into a background supervisor.
//!
//! fork → setsid → fork: the supervisor is re-parented away from the agent, has no
//! controlling terminal and survives the agent's death. The first process waits on a
//! pipe for one status byte from the supervisor (started or failed) so that the
//! agent's spawn call knows the outcome.
//!
//! The driver comes in as a [`PrepareSupervisor`]: in the background process, once
//! it has left the caller's world, the driver loads its spec and makes the
//! process-wide changes that need a single thread; the shim then runs what the
//! driver returned on its single-threaded runtime.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;

use anyhow::{anyhow, Context};
use chrono::Utc;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe2, ForkResult};

use super::state::{read_state, write_state, Phase, ShimState};
use super::ShimError;

/// Ready byte: the workload runs.
pub(crate) const READY_RUNNING: u8 = b'R';
/// Ready byte: the shim gave up; `state.json` says why.
pub(crate) const READY_FAILED: u8 = b'F';

/// A driver's supervision of one instance, run on the shim's single-threaded
/// runtime. It is given the ready pipe (see [`signal_ready`]) and returns the
/// shim's exit code.
pub type Supervisor = Box<dyn FnOnce(Option<File>) -> Pin<Box<dyn Future<Output = i32>>>>;

/// A driver's start in the background process, called with the instance
/// directory and the shim's pid while the process is still single-threaded and
/// before its runtime exists. Returns the supervision, or why the instance
/// cannot start (recorded as a failed state).
pub type PrepareSupervisor = fn(&Path, i32) -> Result<Supervisor, ShimError>;

/// Entry point of `nimbus shim <instance_dir>` once the driver is known.
///
/// Forks the supervisor into the background and returns once it has started the
/// workload (`Ok`) or given up (`Err` with the reason); the supervisor itself never
/// returns. Must be called before the process starts any thread or runtime.
pub fn run_in_background(instance_dir: &Path, prepare: PrepareSupervisor) -> anyhow::Result<()> {
    ensure_single_threaded()?;
    let dir = std::path::absolute(instance_dir)
        .with_context(|| format!("resolve instance dir {}", instance_dir.display()))?;
    if let Some(pid) = live_shim(&dir) {
        return Err(anyhow!(
            "{} is already supervised by shim {pid}",
            dir.display()
        ));
    }
    let (ready_r, ready_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create ready pipe")?;
    // SAFETY: the process is single-threaded (checked above).
    match unsafe { fork() }.context("fork shim")? {
        ForkResult::Parent { child } => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let n = File::from(ready_r).read(&mut byte).unwrap_or(0);
            let _ = waitpid(child, None);
            match (n, byte[0]) {
                (1, READY_RUNNING) => Ok(()),
                (1, _) => Err(anyhow!(
                    "instance in {} failed to start: {}",
                    dir.display(),
                    read_state(&dir).and_then(|s| s.reason).unwrap_or_default()
                )),
                _ => Err(anyhow!("shim for {} died before reporting", dir.display())),
            }
        }
        ForkResult::Child => {
            drop(ready_r);
            let code = match nix::unistd::setsid() {
                Err(_) => 1,
                // SAFETY: still single-threaded; a fresh session leader forks once more
                // so the supervisor can never reacquire a controlling terminal.
                Ok(_) => match unsafe { fork() } {
                    Err(_) => 1,
                    Ok(ForkResult::Parent { .. }) => 0,
                    Ok(ForkResult::Child) => {
                        std::process::exit(supervisor_main(&dir, ready_w, prepare))
                    }
                },
            };
            // SAFETY: the intermediate leaves without running the caller's code.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The pid of a shim that still answers on the instance's socket.
fn live_shim(dir: &Path) -> Option<i32> {
    let client = super::control::ShimClient::connect(dir).ok()?;
    client.status().ok().map(|s| s.shim_pid)
}

fn ensure_single_threaded() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    if threads != "1" {
        return Err(anyhow!(
            "run_shim must run single-threaded, found {threads} threads"
        ));
    }
    Ok(())
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Leaves the caller's world: cwd, stdio and every inherited descriptor but `keep`.
fn detach_from_caller(keep: RawFd) {
    let _ = std::env::set_current_dir("/");
    // SAFETY: close_range only closes descriptors; nothing in this fresh process
    // refers to the inherited ones above 2 except `keep`, which is spared.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
        }
    }
    // A no-op handler instead of SIG_IGN: handlers reset to default at execve, so the
    // workload's processes do not inherit an ignored SIGPIPE/SIGHUP.
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(ignore_signal),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &action) };
    }
    // Exec'd processes are re-parented to the shim when their helper exits.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

fn supervisor_main(dir: &Path, ready: OwnedFd, prepare: PrepareSupervisor) -> i32 {
    detach_from_caller(ready.as_raw_fd());
    super::trim::limit_malloc_arenas();
    // The shim must outlive any workload under memory pressure: it holds
    // the workload's exit status and supervision. Best effort: a shim that
    // is not root cannot lower its score, and runs anyway.
    let _ = crate::protect::set_own_oom_score_adj(crate::protect::SHIM_OOM_SCORE_ADJ);
    let mut ready = Some(File::from(ready));
    let shim_pid = std::process::id() as i32;
    let fail = |ready: &mut Option<File>, reason: String| {
        let mut state = ShimState::new(shim_pid);
        state.phase = Phase::Failed;
        state.finished_at = Some(Utc::now());
        state.reason = Some(reason);
        let _ = write_state(dir, &state);
        signal_ready(ready, READY_FAILED);
        1
    };
    let _ = write_state(dir, &ShimState::new(shim_pid));
    let supervise = match prepare(dir, shim_pid) {
        Ok(supervise) => supervise,
        Err(e) => return fail(&mut ready, e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &mut ready,
                format!("cannot start the shim's event loop: {e}"),
            )
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, supervise(ready))
}

/// Tells the waiting `nimbus shim` how the start went (once; later calls do
/// nothing).
pub(crate) fn signal_ready(ready: &mut Option<File>, byte: u8) {
    if let Some(mut file) = ready.take() {
        let _ = file.write_all(&[byte]);
    }
}
