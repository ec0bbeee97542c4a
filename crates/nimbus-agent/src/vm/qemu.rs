//! Starting QEMU: its network port, QMP and serial socket pairs, the
//! instance's cgroups and OOM score, and a clean environment. The shim holds
//! the returned process and its ends of the sockets.

use std::os::fd::OwnedFd;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;

use super::cmdline::qemu_command;
use super::error::VmError;
use super::shim::VmShim;
use super::spec::VmPaths;

/// A started QEMU and the shim's ends of its sockets.
pub(super) struct Qemu {
    pub(super) child: tokio::process::Child,
    pub(super) pid: Pid,
    /// The shim's end of the serial console (QEMU's stdio).
    pub(super) serial: OwnedFd,
    /// The shim's end of the QMP socket pair, taken by the handshake.
    pub(super) qmp: OwnedFd,
}

/// A connected, close-on-exec pair of stream sockets for `what`.
fn stream_pair(what: &'static str) -> Result<(OwnedFd, OwnedFd), VmError> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|source| VmError::SocketPair { what, source })
}

/// Starts QEMU for `shim`'s instance, its vCPUs held until QMP lets them run.
pub(super) fn spawn_qemu(shim: &VmShim) -> Result<Qemu, VmError> {
    // The network port: the persistent tap the agent made on the router.
    let tap = match &shim.spec.tap {
        Some(t) => Some(
            nimbus_net::router::open_tap(&t.netns, &t.name).map_err(|source| {
                VmError::NetworkPort {
                    tap: t.name.clone(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let tap_raw = tap.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // QMP: a connected socket pair, QEMU's end passed as a descriptor.
    let (qmp_ours, qmp_theirs) = stream_pair("QMP")?;
    let qmp_raw = std::os::fd::AsRawFd::as_raw_fd(&qmp_theirs);
    let mut spec = shim.spec.clone();
    spec.tap_fd = tap_raw;
    spec.qmp_fd = Some(qmp_raw);
    let (program, args) = qemu_command(&spec, &shim.dir);
    let paths = VmPaths::new(&shim.dir);
    let _ = std::fs::remove_file(&paths.pidfile);
    let (ours, theirs) = stream_pair("serial console")?;
    let theirs_in = theirs
        .try_clone()
        .map_err(VmError::SerialConsoleDuplicate)?;
    let mut cmd = tokio::process::Command::new(&program);
    // QEMU gets no part of the daemon's environment (tokens, proxies).
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8");
    cmd.args(&args)
        .stdin(std::process::Stdio::from(theirs_in))
        .stdout(std::process::Stdio::from(theirs))
        .stderr(std::process::Stdio::piped())
        .current_dir(&shim.dir)
        .kill_on_drop(false);
    // QEMU joins the instance's pids cgroup before exec. The parent-death
    // signal below is cleared when QEMU drops to its unprivileged user, so
    // the cgroup is what lets cleanup find and kill a QEMU whose shim died.
    // Formatted before the fork: the child must not allocate.
    let qemu_oom_score = crate::protect::workload_oom_score_adj().to_string();
    let procs = crate::shim::cgroup::create_tracking_cgroup(&shim.spec.instance_id, 4096)
        .map_err(VmError::Cgroup)?;
    // SAFETY: open, write, close and prctl are async-signal-safe and use no
    // allocation (the paths were made before the fork); the child runs
    // nothing else before exec.
    unsafe {
        cmd.pre_exec(move || {
            // Writing "0" to cgroup.procs moves the writer. The pids cgroup
            // (first) is what cleanup relies on; cpu and memory only place
            // QEMU under the instances' parent, so a failure there is
            // not fatal.
            for (i, path) in procs.iter().enumerate() {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let joined = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                if fd >= 0 {
                    libc::close(fd);
                }
                if !joined && i == 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // QEMU is a workload: it must not inherit the shim's OOM
            // protection (raising the score needs no privilege).
            let fd = libc::open(
                crate::protect::OWN_OOM_SCORE_ADJ_PATH.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            let score = qemu_oom_score.as_bytes();
            if fd < 0 || libc::write(fd, score.as_ptr().cast(), score.len()) != score.len() as isize
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            // Until QEMU changes user, it also dies with its supervisor.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // QEMU inherits the tap and its QMP socket (only the child's
            // copies lose close-on-exec).
            if let Some(fd) = tap_raw {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            libc::fcntl(qmp_raw, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|source| VmError::QemuNotRunnable { program, source })?;
    // QEMU holds its own copies now.
    drop(tap);
    drop(qmp_theirs);
    let pid = child
        .id()
        .map(|p| Pid::from_raw(p as i32))
        .ok_or(VmError::QemuExitedAtOnce)?;
    Ok(Qemu {
        child,
        pid,
        serial: ours,
        qmp: qmp_ours,
    })
}
