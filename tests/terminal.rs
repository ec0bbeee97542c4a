//! End to end: `nimbus instance exec -it` gives the process a real terminal
//! of the container's own (`tty` names it, it belongs to the exec'd user)
//! and resizing the client's window reaches it. The CLI runs on a pty this
//! test opens, as it would in a user's terminal emulator.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// `nimbus instance exec -it NAME -- sh` on the slave side of a pty, with
/// that pty as its controlling terminal; the test holds the master.
struct Terminal {
    master: File,
    child: Child,
    output: Receiver<Vec<u8>>,
    /// Everything the terminal has shown so far, `\r` removed.
    seen: String,
}

impl Terminal {
    fn open(cloud: &Cloud, name: &str, rows: u16, cols: u16) -> Terminal {
        let pty = nix::pty::openpty(Some(&winsize(rows, cols)), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        let mut command = cloud.command();
        command
            .args(["instance", "exec", "-it", name, "--", "sh"])
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: between fork and exec only async-signal-safe calls: setsid
        // and an ioctl on fd 0 (the pty slave), so the CLI gets the pty as its
        // controlling terminal and the kernel sends it SIGWINCH on a resize.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn nimbus instance exec -it");
        // Only the CLI holds the slave now: its end shows as EIO on the master.
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
        Terminal {
            master,
            child,
            output,
            seen: String::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .expect("type on the terminal");
    }

    /// The text between `start` and the next `end` in what the terminal has
    /// shown, once it shows up within `timeout`.
    fn wait_for(&mut self, start: &str, end: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = between(&self.seen, start, end) {
                return Some(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Ok(chunk) = self
                .output
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.seen
                    .push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""));
            }
        }
    }

    /// Runs `command` in the shell and returns what it printed between the
    /// markers. The markers are split in the typed line (`A""B`), so the
    /// terminal's echo of the command never matches.
    fn run(&mut self, tag: &str, command: &str) -> String {
        self.seen.clear();
        self.type_line(&format!(
            "echo {tag}-\"\"BEGIN; {command}; echo {tag}-\"\"END"
        ));
        let begin = format!("{tag}-BEGIN\n");
        let end = format!("{tag}-END");
        self.wait_for(&begin, &end, T).unwrap_or_else(|| {
            panic!(
                "the terminal never showed the output of {command:?}; it showed:\n{}",
                self.seen
            )
        })
    }

    /// Sets the size of the pty the CLI runs on, as a terminal emulator does
    /// when its window is resized (the kernel sends the CLI SIGWINCH).
    fn resize(&self, rows: u16, cols: u16) {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads a winsize that lives across the call; the
        // master is our own open pty.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "resize the pty: {}", std::io::Error::last_os_error());
    }

    /// Ends the shell and returns the CLI's exit code.
    fn exit(mut self, code: i32) -> Option<i32> {
        self.type_line(&format!("exit {code}"));
        let status = wait_until(T, "the exec'd shell to end the CLI", || {
            self.child.try_wait().expect("wait for the CLI")
        });
        status.code()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(text[from..from + len].to_string())
}

fn start_instance(cloud: &Cloud, name: &str) {
    cloud.ok(&[
        "instance",
        "run",
        name,
        "--image",
        "busybox",
        "--user",
        "1000:1000",
        "--",
        "sleep",
        "600",
    ]);
    cloud.wait_phase(name, &["running"], T);
}

#[test]
fn exec_tty_is_a_terminal_of_the_container() {
    if !is_root("namespaces, cgroups, mounts") {
        return;
    }
    let cloud = Cloud::start();
    start_instance(&cloud, "term");

    let mut term = Terminal::open(&cloud, "term", 30, 100);
    let tty = term.run("TTY", "tty").trim().to_string();
    let n = tty
        .strip_prefix("/dev/pts/")
        .unwrap_or_else(|| panic!("`tty` printed {tty:?}, not a /dev/pts/N of the container"));
    assert!(n.parse::<u32>().is_ok(), "`tty` printed {tty:?}");
    // The descriptor resolves to that path inside the container: what
    // ttyname(3), sudo and screen rely on.
    let fd0 = term.run("FD0", "readlink /proc/self/fd/0");
    assert_eq!(fd0.trim(), tty, "stdin of the exec'd shell");
    // The pts is in the container's own /dev/pts and belongs to the exec'd
    // user (group tty, as devpts was mounted with gid=5).
    let id = term.run("ID", "id -u");
    assert_eq!(id.trim(), "1000", "the exec'd user");
    let listing = term.run("LS", "ls -ln /dev/pts");
    let entry = listing
        .lines()
        .find(|l| l.starts_with('c') && l.split_whitespace().last() == Some(n))
        .unwrap_or_else(|| panic!("pts {n} is not in the container's /dev/pts:\n{listing}"));
    eprintln!("the container's /dev/pts:\n{listing}");
    let fields: Vec<&str> = entry.split_whitespace().collect();
    assert!(fields.len() > 3, "{entry}");
    assert_eq!(
        (fields[2], fields[3]),
        ("1000", "5"),
        "owner of {tty}: {entry}"
    );
    // The size the CLI's terminal had at the start.
    assert_eq!(term.run("SZ", "stty size").trim(), "30 100");
    assert_eq!(
        term.exit(3),
        Some(3),
        "the CLI leaves with the shell's code"
    );

    // Without a terminal, exec keeps its separate pipes.
    let out = cloud.nimbus(&[
        "instance",
        "exec",
        "term",
        "--",
        "sh",
        "-c",
        "tty; echo to-out; echo to-err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not a tty"), "{stdout}");
    assert!(stdout.contains("to-out"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-err"));

    cloud.remove_everything();
}

#[test]
fn exec_tty_follows_the_window_size() {
    if !is_root("namespaces, cgroups, mounts") {
        return;
    }
    let cloud = Cloud::start();
    start_instance(&cloud, "resize");

    let mut term = Terminal::open(&cloud, "resize", 24, 80);
    assert_eq!(term.run("SZ0", "stty size").trim(), "24 80");
    for (round, (rows, cols)) in [(50u16, 132u16), (40, 90)].into_iter().enumerate() {
        term.resize(rows, cols);
        // The resize travels CLI → server → shim while the shell waits for
        // input, so ask again until it arrives or the deadline passes.
        let want = format!("{rows} {cols}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while last != want {
            assert!(
                Instant::now() < deadline,
                "`stty size` still says {last:?} after resizing to {want}"
            );
            last = term
                .run(&format!("SZ{}", round + 1), "stty size")
                .trim()
                .to_string();
        }
    }
    assert_eq!(term.exit(0), Some(0));

    cloud.remove_everything();
}
