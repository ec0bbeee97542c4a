//! README features of the command line, end to end with the real binary:
//! `instance logs --follow`, `instance exec -it` on a terminal,
//! `completions bash`, `host list`, and a SIGTERM restart of `nimbus up`
//! that leaves workloads running and under control.

mod common;
mod readme_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{wait_until, Cloud, NIMBUS};
use readme_support::PtySession;

const T: Duration = Duration::from_secs(60);

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `nimbus instance logs NAME --follow`, its stdout read line by line.
struct Follow {
    child: std::process::Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Follow {
    fn start(cloud: &Cloud, name: &str) -> Follow {
        let mut child = cloud
            .command()
            .args(["instance", "logs", name, "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nimbus instance logs --follow");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follow {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Whether a line equal to `want` arrives within `timeout`.
    fn shows(&mut self, want: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(line) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.seen.push(line);
            }
        }
        true
    }

    /// The exit code of the CLI once it ends within `timeout`.
    fn ends_within(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for logs --follow") {
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A container that prints the contents of /tmp/say whenever a file
/// appears there, and exits 4 once /tmp/quit exists.
const TALKER: &str = "echo talker-ready; while true; do \
    if [ -e /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; \
    if [ -e /tmp/quit ]; then exit 4; fi; sleep 0.1; done";

fn say(cloud: &Cloud, name: &str, text: &str) {
    cloud.ok(&[
        "instance",
        "exec",
        name,
        "--",
        "sh",
        "-c",
        &format!("echo {text} > /tmp/say.new && mv /tmp/say.new /tmp/say"),
    ]);
}

#[test]
fn logs_follow_prints_new_lines_and_ends_when_the_instance_exits_or_goes() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "talker", "--image", "busybox", "--", "sh", "-c", TALKER,
    ]);
    cloud.wait_phase("talker", &["running"], T);

    let mut follow = Follow::start(&cloud, "talker");
    assert!(
        follow.shows("talker-ready", T),
        "--follow starts with the lines already written: {:?}",
        follow.seen
    );
    // Lines written after the CLI started arrive while it runs.
    for n in 1..=3 {
        let line = format!("later-line-{n}");
        say(&cloud, "talker", &line);
        assert!(
            follow.shows(&line, T),
            "{line} never reached logs --follow: {:?}",
            follow.seen
        );
    }
    assert_eq!(
        follow.ends_within(Duration::ZERO),
        None,
        "--follow keeps running while the instance runs"
    );
    // The instance exits: the CLI ends on its own, successfully.
    cloud.ok(&[
        "instance",
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "touch /tmp/quit",
    ]);
    let v = cloud.wait_phase("talker", &["exited"], T);
    assert_eq!(v["status"]["exit_code"], 4, "{v}");
    assert_eq!(
        follow.ends_within(T),
        Some(Some(0)),
        "logs --follow must end when the instance exits; it showed {:?}",
        follow.seen
    );

    // Removing a running instance ends a follower too.
    cloud.ok(&[
        "instance",
        "run",
        "sleeper",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo sleeper-ready; exec sleep 600",
    ]);
    cloud.wait_phase("sleeper", &["running"], T);
    let mut follow = Follow::start(&cloud, "sleeper");
    assert!(follow.shows("sleeper-ready", T), "{:?}", follow.seen);
    assert_eq!(follow.ends_within(Duration::from_millis(500)), None);
    cloud.ok(&["instance", "rm", "sleeper"]);
    assert!(
        follow.ends_within(T).is_some(),
        "logs --follow must end when the instance is removed"
    );
    cloud.remove_everything();
}

#[test]
fn exec_it_gives_a_terminal_that_echoes_input_and_returns_the_exit_code() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "box", "--image", "busybox", "--", "sleep", "600",
    ]);
    cloud.wait_phase("box", &["running"], T);

    let mut command = cloud.command();
    command.args(["instance", "exec", "-it", "box", "--", "sh"]);
    let mut term = PtySession::spawn(command);
    assert!(
        term.shows("# ", T),
        "no shell prompt on the terminal: {:?}",
        term.seen
    );
    // The CLI put this terminal in raw mode: it does not echo, so what is
    // typed comes back on the screen only through the container's own
    // terminal, and the command's output follows.
    assert!(
        !term.local_echo(),
        "exec -it leaves the local terminal cooked"
    );
    term.type_line("echo TYPED-$((6*7))");
    assert!(
        term.shows("echo TYPED-$((6*7))", T),
        "typed input is not echoed: {:?}",
        term.seen
    );
    assert!(term.shows("\nTYPED-42\n", T), "{:?}", term.seen);
    term.seen.clear();
    term.type_line("tty; echo TTY-\"\"DONE");
    assert!(term.shows("TTY-DONE", T), "{:?}", term.seen);
    let tty = term
        .seen
        .lines()
        .find(|l| l.starts_with("/dev/"))
        .unwrap_or_default()
        .to_string();
    let n = tty
        .strip_prefix("/dev/pts/")
        .unwrap_or_else(|| panic!("`tty` inside printed {tty:?}: {:?}", term.seen));
    assert!(n.parse::<u32>().is_ok(), "`tty` printed {tty:?}");
    term.type_line("exit 5");
    let status = term
        .exits_within(T)
        .unwrap_or_else(|| panic!("exec -it did not end after `exit 5`: {:?}", term.seen));
    assert_eq!(
        status.code(),
        Some(5),
        "exec -it leaves with the shell's code"
    );
    cloud.remove_everything();
}

#[test]
fn completions_for_bash_load_and_complete_subcommands() {
    let script = format!(
        r#"source <("{NIMBUS}" completions bash) || exit 10
complete -p nimbus || exit 11
fn=$(complete -p nimbus | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
[ -n "$fn" ] || exit 12
COMP_WORDS=(nimbus inst); COMP_CWORD=1; COMP_LINE="nimbus inst"; COMP_POINT=${{#COMP_LINE}}
"$fn" nimbus inst nimbus
echo "CANDIDATES: ${{COMPREPLY[*]}}"
COMP_WORDS=(nimbus instance lo); COMP_CWORD=2; COMP_LINE="nimbus instance lo"; COMP_POINT=${{#COMP_LINE}}
"$fn" nimbus lo instance
echo "SUBCANDIDATES: ${{COMPREPLY[*]}}"
"#
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loading the completion script failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("complete ") && l.ends_with(" nimbus")),
        "`complete -p nimbus` shows no completion: {stdout}"
    );
    let candidates = |tag: &str| -> Vec<String> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        candidates("CANDIDATES: "),
        vec!["instance".to_string()],
        "`nimbus inst<TAB>`: {stdout}"
    );
    assert!(
        candidates("SUBCANDIDATES: ").contains(&"logs".to_string()),
        "`nimbus instance lo<TAB>`: {stdout}"
    );
}

fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .expect("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemTotal in /proc/meminfo")
        * 1024
}

#[test]
fn host_list_shows_this_host_in_a_table_and_as_json() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "one", "--image", "busybox", "--", "sleep", "600",
    ]);
    cloud.wait_phase("one", &["running"], T);

    let hosts = wait_until(T, "host list to count the running instance", || {
        let v = cloud.json(&["host", "list"]).ok()?;
        (v["items"][0]["status"]["instances"] == 1).then_some(v)
    });
    let items = hosts["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "one host: {hosts}");
    let host = &items[0];
    assert_eq!(host["metadata"]["name"], cloud.host.as_str(), "{host}");
    let status = &host["status"];
    assert_eq!(status["phase"], "ready", "{host}");
    let cgroup = status["cgroup"].as_str().unwrap_or_default().to_string();
    assert!(
        ["v1", "v2", "hybrid"].contains(&cgroup.as_str()),
        "cgroup mode: {host}"
    );
    let accel = status["accelerator"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["kvm", "tcg"].contains(&accel.as_str()),
        "accelerator: {host}"
    );
    let memory = status["memory_bytes"].as_u64().expect("memory_bytes");
    let total = mem_total_bytes();
    // What instances may use: this machine's memory less the share kept
    // for the host itself.
    assert!(
        memory <= total && memory >= total / 2,
        "memory {memory} does not fit this machine's {total}: {host}"
    );
    let cpus = status["cpus"].as_u64().expect("cpus");
    let online = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert!(cpus >= online, "cpus {cpus} < {online}: {host}");

    // The table: a header naming the columns, and this host's row with the
    // same facts.
    let table = cloud.ok(&["host", "list"]);
    let mut lines = table.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or_default().to_lowercase();
    for column in ["name", "phase", "memory", "cgroup", "vm accel", "instances"] {
        assert!(header.contains(column), "no {column} column: {table}");
    }
    let row = lines
        .find(|l| l.contains(&cloud.host))
        .unwrap_or_else(|| panic!("no row for {}: {table}", cloud.host));
    let cells: Vec<&str> = row.split_whitespace().collect();
    for want in ["ready", cgroup.as_str(), accel.as_str()] {
        assert!(cells.contains(&want), "{want} missing from {row:?}");
    }
    assert!(
        row.contains("GiB") || row.contains("MiB"),
        "memory shown in units: {row:?}"
    );
    cloud.remove_everything();
}

#[test]
fn sigterm_restart_of_the_control_plane_keeps_workloads_under_control() {
    let mut cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "steady", "--image", "busybox", "--", "sleep", "600",
    ]);
    let before = cloud.wait_phase("steady", &["running"], T);
    let pid = before["status"]["pid"].as_i64().expect("pid");
    let id = before["metadata"]["id"].as_str().expect("id").to_string();
    let state = |cloud: &Cloud| -> serde_json::Value {
        let path = cloud
            .data_dir()
            .join("instances")
            .join(&id)
            .join("state.json");
        serde_json::from_slice(&std::fs::read(&path).expect("state.json")).expect("state json")
    };
    let shim = state(&cloud)["shim_pid"].as_i64().expect("shim pid");

    // SIGTERM, as `systemctl restart` or an operator's `kill` sends: the
    // daemon ends cleanly and promptly.
    // The daemon stays the cloud's until it has exited, so a failure here
    // still has it stopped and the instance removed when the cloud drops.
    let daemon_pid = cloud.daemon.as_ref().expect("daemon").id() as i32;
    // SAFETY: signalling the daemon this test started.
    let rc = unsafe { libc::kill(daemon_pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM to nimbus up");
    let status = wait_until(
        Duration::from_secs(30),
        "nimbus up to exit on SIGTERM",
        || {
            cloud
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().expect("wait for nimbus up"))
        },
    );
    cloud.daemon = None;
    assert!(
        status.success(),
        "nimbus up exits cleanly on SIGTERM: {status}"
    );
    assert!(alive(pid), "the workload outlives the control plane");
    assert!(alive(shim), "its shim outlives the control plane");
    assert!(
        cloud.nimbus(&["instance", "get", "steady"]).status.code() != Some(0),
        "the API is down while nimbus up is stopped"
    );

    cloud.spawn_daemon();
    cloud.wait_ready();
    let after = cloud.wait_phase("steady", &["running"], T);
    assert_eq!(
        after["status"]["pid"].as_i64(),
        Some(pid),
        "same workload: {after}"
    );
    assert_eq!(
        state(&cloud)["shim_pid"].as_i64(),
        Some(shim),
        "the same shim is adopted again"
    );
    // Still under control: exec reaches it and stop ends it.
    let ps = cloud.ok(&["instance", "exec", "steady", "--", "ps"]);
    assert!(ps.contains("sleep 600"), "{ps}");
    cloud.ok(&["instance", "stop", "steady"]);
    let v = cloud.wait_phase("steady", &["stopped"], T);
    assert!(!alive(pid), "stop after the restart ends the workload: {v}");
    cloud.remove_everything();
}
