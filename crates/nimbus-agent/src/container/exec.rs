//! Starting a process inside a running container (`exec`), and other work that joins
//! the container's namespaces.
//!
//! libcontainer's tenant builder does not join the container's *user* namespace (its
//! namespace list stops at ipc/uts/net/pid/mnt/cgroup/time), so an exec'd process
//! would run as real host root. Exec is therefore done here: a child joins the
//! instance's cgroups while still host root, enters the init's namespaces with the
//! user namespace last, and forks the process, which then switches to the instance
//! user, drops to the default capabilities, sets no-new-privileges and loads the same
//! seccomp filter as the init before `execve`. The shim is a child subreaper, so the
//! process becomes the shim's child when the intermediate exits.
//!
//! A terminal is allocated by the exec'd process itself, as the instance user and
//! inside the container's mount namespace, from the container's own devpts
//! (`/dev/pts/ptmx`), the way OCI runtimes use a console socket: the pts is then
//! `/dev/pts/N` to the process (`tty`, `ttyname`, `/proc/self/fd/0` resolve) and
//! owned by the user (`sudo`, `passwd` and `screen` check that). The master comes
//! back to the shim over a socket (SCM_RIGHTS). A pty opened by the shim would come
//! from the host's devpts, which the container cannot see.

use std::ffi::CString;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libcontainer::syscall::syscall::create_syscall;
use nix::fcntl::OFlag;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp};

use super::exec_error;
use super::spec::UserSpec;
use crate::host::cgroups::instance_cgroup_dirs;
use crate::shim::control::ExecRequest;
use crate::shim::ShimError;

/// What every exec in one instance shares.
pub struct ExecContext {
    pub instance_id: String,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: UserSpec,
    pub capabilities: LinuxCapabilities,
    pub seccomp: LinuxSeccomp,
    pub nofile: (u64, u64),
}

/// A started exec process and the shim's ends of its stdio.
pub struct ExecChild {
    pub pid: Pid,
    /// Write end of stdin (the pty master when `tty`).
    pub stdin: OwnedFd,
    /// Read end of stdout (the pty master when `tty`).
    pub stdout: OwnedFd,
    /// Read end of stderr; `None` with a tty, where both go to the terminal.
    pub stderr: Option<OwnedFd>,
    pub tty: bool,
}

/// Namespaces joined by exec, the user namespace last: before it the child is still
/// host root and may enter the others; after it, it is container root.
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("user", CloneFlags::CLONE_NEWUSER),
];

fn cloexec_pipe(what: &str) -> Result<(OwnedFd, OwnedFd), ShimError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| exec_error(format!("create {what} pipe: {e}")))
}

fn open_namespaces(init_pid: Pid) -> Result<Vec<(OwnedFd, CloneFlags)>, ShimError> {
    NAMESPACES
        .iter()
        .map(|(name, flag)| {
            let path = format!("/proc/{init_pid}/ns/{name}");
            File::open(&path)
                .map(|f| (OwnedFd::from(f), *flag))
                .map_err(|e| match e.kind() {
                    // The init exited between the shim's last look and now.
                    std::io::ErrorKind::NotFound => exec_error(
                        "the container is not running (its init just exited); start it and retry"
                            .to_string(),
                    ),
                    _ => exec_error(format!("open namespace {path}: {e}")),
                })
        })
        .collect()
}

/// Runs `req` inside the container whose init is `init_pid`.
pub fn spawn_exec(
    ctx: &ExecContext,
    init_pid: Pid,
    req: &ExecRequest,
) -> Result<ExecChild, ShimError> {
    if req.args.is_empty() {
        return Err(exec_error("exec needs a command".to_string()));
    }
    let namespaces = open_namespaces(init_pid)?;
    let cgroups = instance_cgroup_dirs(&ctx.instance_id);
    let prepared = Prepared::new(ctx, req)?;

    // What the child gets for its stdio, and the shim's ends.
    let (child_stdio, shim_ends) = if req.tty {
        let (shim_end, child_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| exec_error(format!("create the terminal hand-over socket: {e}")))?;
        let size = libc::winsize {
            ws_row: req.rows.filter(|r| *r > 0).unwrap_or(24),
            ws_col: req.cols.filter(|c| *c > 0).unwrap_or(80),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let stdio = ChildStdio::Terminal {
            master_to_shim: child_end,
            size,
        };
        (stdio, ShimEnds::Terminal(shim_end))
    } else {
        let (in_r, in_w) = cloexec_pipe("stdin")?;
        let (out_r, out_w) = cloexec_pipe("stdout")?;
        let (err_r, err_w) = cloexec_pipe("stderr")?;
        (
            ChildStdio::Pipes([in_r, out_w, err_w]),
            ShimEnds::Pipes(in_w, out_r, err_r),
        )
    };
    let (pid_r, pid_w) = cloexec_pipe("pid report")?;
    let (err_r, err_w) = cloexec_pipe("error report")?;

    // SAFETY: the shim is single-threaded, so the child may allocate; it never
    // returns into the shim's code and leaves through _exit or execve.
    let intermediate = match unsafe { fork() } {
        Err(e) => return Err(exec_error(format!("fork exec helper: {e}"))),
        Ok(ForkResult::Child) => {
            drop((pid_r, err_r));
            let code = match enter_container(&namespaces, &cgroups, ctx.nofile) {
                Err(msg) => report(&err_w, &msg),
                // SAFETY: still single-threaded (we are a fresh fork of the shim).
                Ok(()) => match unsafe { fork() } {
                    Err(e) => report(&err_w, &format!("fork exec process: {e}")),
                    Ok(ForkResult::Child) => {
                        let msg = become_process(&prepared, &child_stdio);
                        report(&err_w, &msg)
                    }
                    Ok(ForkResult::Parent { child }) => {
                        let _ = File::from(pid_w).write_all(&child.as_raw().to_be_bytes());
                        0
                    }
                },
            };
            // SAFETY: _exit skips destructors and atexit handlers that belong to the shim.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop((pid_w, err_w, child_stdio));
    let helper_ok = matches!(waitpid(intermediate, None), Ok(WaitStatus::Exited(_, 0)));
    let mut pid_bytes = [0u8; 4];
    let got_pid = File::from(pid_r).read_exact(&mut pid_bytes).is_ok();
    let mut message = String::new();
    let _ = File::from(err_r).read_to_string(&mut message);
    if !helper_ok || !got_pid || !message.is_empty() {
        // A process that failed before execve has exited; the shim's reaper collects it.
        let message = if message.is_empty() {
            "exec helper died before starting the process".to_string()
        } else {
            message
        };
        return Err(exec_error(format!("{:?}: {message}", req.args)));
    }
    let pid = Pid::from_raw(i32::from_be_bytes(pid_bytes));
    let (stdin, stdout, stderr) = match shim_ends {
        ShimEnds::Pipes(stdin, stdout, stderr) => (stdin, stdout, Some(stderr)),
        ShimEnds::Terminal(socket) => {
            // The process has reached execve (its error pipe closed), so the master
            // it sent is already queued.
            let master = receive_terminal(&socket).map_err(|e| {
                // It runs without a terminal anyone can reach: do not leave it behind.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                exec_error(format!("{:?}: {e}", req.args))
            })?;
            let master_in = master
                .try_clone()
                .map_err(|e| exec_error(format!("dup the terminal master: {e}")))?;
            (master_in, master, None)
        }
    };
    Ok(ExecChild {
        pid,
        stdin,
        stdout,
        stderr,
        tty: req.tty,
    })
}

/// The stdio the exec'd process sets up for itself.
enum ChildStdio {
    /// stdin, stdout, stderr.
    Pipes([OwnedFd; 3]),
    /// Allocate a terminal in the container and send its master here.
    Terminal {
        master_to_shim: OwnedFd,
        size: libc::winsize,
    },
}

/// The shim's ends of an exec'd process's stdio.
enum ShimEnds {
    /// Write end of stdin, read ends of stdout and stderr.
    Pipes(OwnedFd, OwnedFd, OwnedFd),
    /// Where the process sends its terminal's master.
    Terminal(OwnedFd),
}

/// Receives the terminal master the exec'd process sent, without waiting.
fn receive_terminal(socket: &OwnedFd) -> Result<OwnedFd, String> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("the process did not hand over its terminal: {e}"))?;
    let mut received = Vec::new();
    for cmsg in msg
        .cmsgs()
        .map_err(|e| format!("read the terminal hand-over message: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these descriptors in this process for
            // this message; nothing else owns them.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    // Anything beyond the one master is closed when `received` drops.
    received
        .into_iter()
        .next()
        .ok_or_else(|| "the process ended before handing over its terminal".to_string())
}

fn report(err_w: &OwnedFd, msg: &str) -> i32 {
    // SAFETY: writes a byte slice to a descriptor this process owns.
    let _ = unsafe { libc::write(err_w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    127
}

/// In the helper: join the cgroups and namespaces while still host root.
fn enter_container(
    namespaces: &[(OwnedFd, CloneFlags)],
    cgroups: &[PathBuf],
    nofile: (u64, u64),
) -> Result<(), String> {
    // The helper inherited the shim's OOM protection; the exec'd process
    // (its child) must be as killable as the container's other processes.
    std::fs::write(
        "/proc/self/oom_score_adj",
        crate::protect::workload_oom_score_adj().to_string(),
    )
    .map_err(|e| format!("reset the OOM score of the exec'd process: {e}"))?;
    let me = std::process::id().to_string();
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &me).map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
    }
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        nofile.0,
        nofile.1,
    )
    .map_err(|e| format!("set open-file limit {}:{}: {e}", nofile.0, nofile.1))?;
    for (fd, flag) in namespaces {
        setns(fd, *flag).map_err(|e| format!("join {flag:?} namespace: {e}"))?;
    }
    Ok(())
}

/// Everything the exec'd process needs, computed before forking.
struct Prepared {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    cwd: PathBuf,
    user: UserSpec,
    capabilities: LinuxCapabilities,
    seccomp: LinuxSeccomp,
    search_path: String,
}

impl Prepared {
    fn new(ctx: &ExecContext, req: &ExecRequest) -> Result<Prepared, ShimError> {
        let cstr =
            |s: &str| CString::new(s).map_err(|_| exec_error(format!("{s:?} contains a NUL byte")));
        let mut env: Vec<String> = ctx.env.clone();
        for entry in &req.env {
            let key = entry.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(entry.clone());
        }
        if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".to_string());
        }
        let search_path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_string();
        let cwd = req
            .cwd
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| ctx.working_dir.clone());
        let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
        if !cwd.starts_with('/') {
            return Err(exec_error(format!("working dir {cwd:?} is not absolute")));
        }
        Ok(Prepared {
            program: cstr(&req.args[0])?,
            args: req.args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
            env: env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?,
            cwd: PathBuf::from(cwd),
            user: ctx.user,
            capabilities: ctx.capabilities.clone(),
            seccomp: ctx.seccomp.clone(),
            search_path,
        })
    }

    /// Finds the program like execvp, but with the container's PATH.
    fn resolve(&self) -> Result<CString, String> {
        let name = self.program.as_bytes();
        if name.contains(&b'/') {
            return Ok(self.program.clone());
        }
        for dir in self.search_path.split(':').filter(|d| !d.is_empty()) {
            let candidate = Path::new(dir).join(std::ffi::OsStr::from_bytes(name));
            if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
                && candidate.is_file()
            {
                return CString::new(candidate.as_os_str().as_bytes())
                    .map_err(|_| format!("{} contains a NUL byte", candidate.display()));
            }
        }
        Err(format!(
            "executable {:?} not found in PATH {}",
            String::from_utf8_lossy(name),
            self.search_path
        ))
    }
}

/// In the exec'd process (inside every namespace): set up and execve. Returns the
/// error message only if something failed.
fn become_process(p: &Prepared, stdio: &ChildStdio) -> String {
    let result = (|| -> Result<std::convert::Infallible, String> {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        let syscall = create_syscall();
        syscall
            .set_groups(&[])
            .map_err(|e| format!("clear supplementary groups: {e}"))?;
        syscall
            .set_id(Uid::from_raw(p.user.uid), Gid::from_raw(p.user.gid))
            .map_err(|e| format!("switch to user {}:{}: {e}", p.user.uid, p.user.gid))?;
        // After the switch, so that a terminal's pts is created owned by the user.
        match stdio {
            ChildStdio::Pipes(fds) => {
                for (target, fd) in fds.iter().enumerate() {
                    nix::unistd::dup2(fd.as_raw_fd(), target as RawFd)
                        .map_err(|e| format!("set up fd {target}: {e}"))?;
                }
            }
            ChildStdio::Terminal {
                master_to_shim,
                size,
            } => {
                let slave = open_container_terminal(master_to_shim, size)?;
                for target in 0..3 {
                    nix::unistd::dup2(slave.as_raw_fd(), target)
                        .map_err(|e| format!("set up fd {target} on the terminal: {e}"))?;
                }
                // SAFETY: TIOCSCTTY on fd 0 (the pty slave) with argument 0 takes no pointer.
                if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
                    return Err(format!(
                        "make the pty the controlling terminal: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
        }
        nix::unistd::chdir(&p.cwd).map_err(|e| format!("chdir to {}: {e}", p.cwd.display()))?;
        // Not the shim's private umask: the same one the container's init got.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
            super::bundle::CONTAINER_UMASK,
        ));
        libcontainer::capabilities::reset_effective(syscall.as_ref())
            .map_err(|e| format!("reset capabilities: {e}"))?;
        libcontainer::capabilities::drop_privileges(&p.capabilities, syscall.as_ref())
            .map_err(|e| format!("drop capabilities: {e}"))?;
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "set no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
        let program = p.resolve()?;
        libcontainer::seccomp::initialize_seccomp(&p.seccomp)
            .map_err(|e| format!("load seccomp filter: {e}"))?;
        // Whatever descriptor the shim still had open must not reach the process.
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        nix::unistd::execve(&program, &p.args, &p.env)
            .map_err(|e| format!("execve {:?}: {e}", program))
    })();
    match result {
        Err(msg) => msg,
        Ok(never) => match never {},
    }
}

/// Where a container's terminals come from: its own devpts instance, then the
/// `/dev/ptmx` that normally points to it.
const PTMX_PATHS: [&str; 2] = ["/dev/pts/ptmx", "/dev/ptmx"];

/// In the exec'd process: opens a pty in the container's devpts, sized `size`, and
/// sends the master to the shim; returns the slave. The pts is created with the
/// caller's fsuid, so it belongs to the instance user.
fn open_container_terminal(
    master_to_shim: &OwnedFd,
    size: &libc::winsize,
) -> Result<OwnedFd, String> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let mut failures = Vec::new();
    let mut master = None;
    for path in PTMX_PATHS {
        match nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => {
                // SAFETY: open just returned this descriptor; nothing else owns it.
                master = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                break;
            }
            Err(e) => failures.push(format!("{path}: {e}")),
        }
    }
    let master = master.ok_or_else(|| {
        format!(
            "open a terminal in the container ({}); does the image hide /dev/pts?",
            failures.join(", ")
        )
    })?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that lives across the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(format!(
            "unlock the container terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: TIOCSWINSZ reads a winsize that lives across the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, size) } < 0 {
        return Err(format!(
            "set the terminal size to {}x{}: {}",
            size.ws_row,
            size.ws_col,
            std::io::Error::last_os_error()
        ));
    }
    // TIOCGPTPEER opens the slave from the master itself, with no path lookup in a
    // /dev/pts the tenant controls.
    // SAFETY: TIOCGPTPEER takes open flags as an integer and returns a new descriptor.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(format!(
            "open the container terminal's pts: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    sendmsg::<()>(
        master_to_shim.as_raw_fd(),
        &[IoSlice::new(b"t")],
        &[ControlMessage::ScmRights(&[master.as_raw_fd()])],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("hand the terminal to the shim: {e}"))?;
    Ok(slave)
}

/// Brings up `lo` in the network namespace of `init_pid` (libcontainer leaves it down).
pub fn bring_up_loopback(init_pid: Pid) -> Result<(), ShimError> {
    let path = format!("/proc/{init_pid}/ns/net");
    let netns = File::open(&path).map_err(|e| ShimError::Io {
        what: format!("open {path}"),
        source: e,
    })?;
    // SAFETY: the shim is single-threaded; the child makes a few syscalls and _exits.
    match unsafe { fork() } {
        Err(e) => Err(exec_error(format!("fork loopback helper: {e}"))),
        Ok(ForkResult::Child) => {
            let ok = setns(&netns, CloneFlags::CLONE_NEWNET).is_ok() && set_lo_up();
            // SAFETY: _exit skips the shim's destructors in this short-lived child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            other => Err(exec_error(format!(
                "bring up loopback in {path}: helper ended with {other:?}"
            ))),
        },
    }
}

fn set_lo_up() -> bool {
    // SAFETY: plain socket(2) call; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return false;
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for the duration of both ioctls.
    let ok = unsafe {
        libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0
        }
    };
    // SAFETY: closes the socket opened above.
    unsafe { libc::close(sock) };
    ok
}
