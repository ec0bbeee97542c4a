//! Helpers shared by the README feature tests (`tests/readme_*.rs`): the
//! CLI on a pseudo-terminal the test holds, as in a user's terminal
//! emulator, and host networking the test owns and removes when dropped.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A command running with a pty as its stdio and controlling terminal; the
/// test holds the master side and sees what the terminal would show.
pub struct PtySession {
    master: File,
    child: Child,
    output: Receiver<Vec<u8>>,
    /// Everything the terminal has shown so far, `\r` removed.
    pub seen: String,
}

impl PtySession {
    pub fn spawn(mut command: Command) -> PtySession {
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: between fork and exec only async-signal-safe calls: setsid
        // and an ioctl on fd 0 (the pty slave), which makes the pty the
        // command's controlling terminal, as a terminal emulator does.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn the command on a pty");
        // Only the child holds the slave now: its end shows as EIO here.
        drop(slave);
        let master = File::from(pty.master);
        let mut reader = master.try_clone().expect("dup pty master");
        let (tx, output) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        PtySession {
            master,
            child,
            output,
            seen: String::new(),
        }
    }

    /// Whether the terminal itself echoes what is typed (cooked mode). A
    /// CLI that put it in raw mode leaves any echo to the remote side.
    pub fn local_echo(&self) -> bool {
        let termios = nix::sys::termios::tcgetattr(&self.master).expect("tcgetattr on the pty");
        termios
            .local_flags
            .contains(nix::sys::termios::LocalFlags::ECHO)
    }

    /// Types raw bytes, as keys pressed on the terminal.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type on the terminal");
    }

    pub fn type_line(&mut self, line: &str) {
        self.type_bytes(format!("{line}\r").as_bytes());
    }

    /// Whether the terminal shows `expect` within `timeout`.
    pub fn shows(&mut self, expect: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.seen.contains(expect) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(chunk) = self
                .output
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.seen
                    .push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""));
            }
        }
        true
    }

    /// Collects what is still on its way (a goodbye line) until the pty's
    /// reader ends or `timeout` passes.
    fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self
                .output
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(chunk) => self
                    .seen
                    .push_str(&String::from_utf8_lossy(&chunk).replace('\r', "")),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The command's exit status once it ends within `timeout`, else None.
    pub fn exits_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the command") {
                self.drain(Duration::from_secs(2));
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ip` with `args`, failing the test with its stderr.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A link holding one extra host address for the test's lifetime:
/// a host address other than loopback's, removed when dropped.
pub struct ExtraHostAddress {
    link: String,
    pub addr: std::net::Ipv4Addr,
}

impl ExtraHostAddress {
    pub fn add() -> ExtraHostAddress {
        let tag = std::process::id() % 100_000;
        // Not `nb*`: those names are Nimbus's uplinks.
        let link = format!("xh{tag}");
        let addr = std::net::Ipv4Addr::new(198, 19, (tag % 250) as u8, 1);
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        // A veth pair (this kernel has no dummy links): the address sits on
        // one end, both ends up; deleting one end deletes the pair.
        let peer = format!("{link}p");
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        let guard = ExtraHostAddress { link, addr };
        ip(&["addr", "add", &format!("{addr}/32"), "dev", &guard.link]);
        ip(&["link", "set", &peer, "up"]);
        ip(&["link", "set", &guard.link, "up"]);
        guard
    }
}

impl Drop for ExtraHostAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

/// Removes a network (and every instance of the default project first, or
/// the removal is refused) when dropped, so a failed test leaves no router
/// namespace behind. Declare it after the `Cloud`, so it runs first.
pub struct NetworkGuard<'a> {
    pub cloud: &'a crate::common::Cloud,
    pub name: &'static str,
}

impl NetworkGuard<'_> {
    pub fn create<'a>(
        cloud: &'a crate::common::Cloud,
        name: &'static str,
        subnet: &str,
    ) -> NetworkGuard<'a> {
        cloud.ok(&["network", "create", name, "--subnet", subnet]);
        NetworkGuard { cloud, name }
    }

    /// The network's router namespace on this host.
    pub fn router_netns(&self) -> std::path::PathBuf {
        let v = self
            .cloud
            .json(&["network", "get", self.name])
            .unwrap_or_else(|e| panic!("network {}: {e}", self.name));
        let id = v["metadata"]["id"].as_str().expect("network id");
        std::path::PathBuf::from(format!("/run/nimbus/netns/nr-{id}"))
    }
}

impl Drop for NetworkGuard<'_> {
    fn drop(&mut self) {
        if let Ok(list) = self.cloud.json(&["instance", "list"]) {
            for i in list["items"].as_array().cloned().unwrap_or_default() {
                if let Some(name) = i["metadata"]["name"].as_str() {
                    let _ = self.cloud.nimbus(&["instance", "rm", "--force", name]);
                }
            }
        }
        let _ = self.cloud.nimbus(&["network", "rm", self.name]);
    }
}
