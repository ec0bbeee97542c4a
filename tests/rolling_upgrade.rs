//! A rolling upgrade without restarts (issue 11 §7): two `nimbus server`
//! processes on a 3-member etcd and one standalone `nimbus agent`, each run
//! from its own installed executable. A container counts in `/tmp/count`
//! ten times a second while a client keeps listing, reading and creating
//! through the CLI given both servers. Then each process's executable is
//! replaced in place (a new file renamed over the old, as a package
//! upgrade does), and the process is stopped with SIGTERM and started
//! again: first the follower, then the leader, then the agent.
//!
//! Asserted: the workload's pid never changes and its counter only grows,
//! with no pause of more than a few seconds; no CLI call failed; each
//! process exited 0 on SIGTERM; leadership moved when the leader stopped;
//! every process now runs the new file.
//!
//! The new build is `scripts/build-next`'s (`scripts/test` builds it and
//! names it in `NIMBUS_NEXT_BUILD`): this source with its release stamped
//! `<version>+next` and its protocol level one above, so that between the
//! first server's upgrade and the agent's, servers one level apart share
//! the store and an agent one level behind the servers runs the workload;
//! the test checks each reports the level it runs. Refusals beyond one
//! level are checked against the real servers too: a server beside a live
//! one two levels ahead (its record put in etcd as that release would),
//! and an agent two levels ahead registering.

mod common;
mod upgrade_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::{
    assert_no_leaks, busybox_rootfs_tar, free_port, http_at, is_root, wait_until, NIMBUS,
};
use nimbus_api::BuildVersion;
use serde_json::Value;
use upgrade_support::{install, tempdir, Cli, Daemon, SHIM};

const LEASE: &str = "3s";

fn lease() -> Duration {
    Duration::from_secs(3)
}

/// The longest the counter may stand still: it ticks every 100 ms.
const MAX_COUNTER_PAUSE: Duration = Duration::from_secs(3);

fn server_args(name: &str, port: u16, etcd: &EtcdCluster) -> Vec<String> {
    [
        "server",
        "--store",
        &etcd.url(),
        "--no-s3",
        "--server-name",
        name,
        "--leader-lease",
        LEASE,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts `server` and waits until it is listed by the servers.
fn start_server(server: &mut Daemon, cli: &Cli) {
    server.start();
    let name = server.name.clone();
    wait_until(
        Duration::from_secs(60),
        &format!("server {name} to serve"),
        || {
            let list = cli.json(&["server", "list"]).ok()?;
            list["items"]
                .as_array()?
                .iter()
                .any(|s| s["name"] == name.as_str())
                .then_some(())
        },
    );
}

fn leader(cli: &Cli) -> Option<String> {
    cli.json(&["server", "list"]).ok()?["leader"]
        .as_str()
        .map(str::to_string)
}

/// A busybox root filesystem with `/tmp`, imported as image `bb`.
fn import_busybox(cli: &Cli) {
    let work = tempfile::tempdir().expect("tempdir");
    let tar = busybox_rootfs_tar(work.path());
    cli.succeeds(&["image", "import", &tar, "--name", "bb"]);
}

/// What the background threads saw while the upgrade went on.
#[derive(Default)]
struct Seen {
    /// (when, counter) each time the counter's file was read.
    counts: Vec<(Instant, u64)>,
    /// Pids other than the first, as the API or `/proc` showed them.
    pid_changes: Vec<String>,
    calls: usize,
    slowest_call: Duration,
    failed_calls: Vec<String>,
}

/// Reads the counter from the host side of the container's root
/// filesystem every 50 ms, and checks its process is alive.
fn watch_counter(file: PathBuf, pid: i64, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let value = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if let Ok(mut s) = seen.lock() {
            if let Some(v) = value {
                s.counts.push((Instant::now(), v));
            }
            if !alive {
                s.pid_changes.push(format!("process {pid} is gone"));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keeps calling the API like a user: list, get (checking the pid), and a
/// project create every fifth round.
fn keep_calling(cli: Cli, pid: i64, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let project = format!("p{round}");
        let mut calls: Vec<Vec<&str>> =
            vec![vec!["instance", "list"], vec!["instance", "get", "counter"]];
        if round % 5 == 0 {
            calls.push(vec!["project", "create", &project]);
        }
        for args in calls {
            let started = Instant::now();
            let out = cli.nimbus(&[&args[..], &["-o", "json"]].concat());
            let Ok(mut s) = seen.lock() else { return };
            s.calls += 1;
            s.slowest_call = s.slowest_call.max(started.elapsed());
            if !out.status.success() {
                let said = String::from_utf8_lossy(&out.stderr);
                s.failed_calls.push(format!("{args:?}: {}", said.trim()));
            } else if args[1] == "get" {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if v["status"]["pid"].as_i64() != Some(pid) {
                    s.pid_changes.push(format!("the API shows {}", v["status"]));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pretend agent two protocol levels ahead registers through the real
/// server: refused (422), told to upgrade the servers first, no host made.
fn a_too_new_agent_is_refused(server: &Daemon, token: &str) {
    let level = nimbus_api_level() + 2;
    let body = format!(
        r#"{{"name":"from-the-future","labels":{{}},"status":{{"phase":"ready","cpus":1,"memory_bytes":1,"disk_bytes":1,"architecture":"amd64","kernel":"x","agent_version":"9.9.9","agent_protocol":{level}}}}}"#
    );
    let (status, said) = http_at(
        server.dir(),
        "POST",
        "/v1/hosts",
        Some(token),
        body.as_bytes(),
        "application/json",
    );
    assert_eq!(status, 422, "{said}");
    assert!(
        said.contains("upgrade the servers first") && said.contains("9.9.9"),
        "{said}"
    );
    let (status, _) = http_at(
        server.dir(),
        "GET",
        "/v1/hosts/from-the-future",
        Some(token),
        b"",
        "application/json",
    );
    assert_eq!(status, 404, "a refused agent's host was recorded");
}

/// A live server two protocol levels ahead on the store (its record
/// written as that release would): a server of this build refuses to
/// start beside it, saying whose release to install.
fn a_server_two_levels_apart_is_refused(etcd: &EtcdCluster, server: &Daemon) {
    let keys = etcd.etcdctl(&["get", "--prefix", "--keys-only", "/"]);
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    let s1_key = keys
        .lines()
        .find(|k| k.ends_with("cluster/servers/s1"))
        .unwrap_or_else(|| panic!("no record of s1 in etcd: {keys}"));
    let ghost_key = s1_key.replace("servers/s1", "servers/s9-newer");
    let record = format!(
        r#"{{"name":"s9-newer","endpoint":"","version":"9.9.9","protocol":{},"started_at":"2026-12-01T00:00:00Z"}}"#,
        nimbus_api_level() + 2
    );
    let put = etcd.etcdctl(&["put", &ghost_key, &record]);
    assert!(put.status.success(), "etcdctl put");
    let said = server.refused();
    let del = etcd.etcdctl(&["del", &ghost_key]);
    assert!(del.status.success(), "etcdctl del");
    assert!(
        said.contains("\"s9-newer\"") && said.contains("9.9.9") && said.contains("install"),
        "{said}"
    );
}

/// This build's protocol level.
fn nimbus_api_level() -> u64 {
    u64::from(nimbus_api::version::PROTOCOL_LEVEL)
}

/// The build the processes are upgraded to, and what it says it is.
struct NextBuild {
    exe: String,
    version: BuildVersion,
}

/// `NIMBUS_NEXT_BUILD` (`scripts/build-next`'s output), checked to be one
/// protocol level above this build. Without it (a plain `cargo test`), the
/// upgrade goes to a copy of this build and the skip is reported (under
/// `scripts/test` that fails).
fn next_build() -> NextBuild {
    let Some(exe) = std::env::var_os("NIMBUS_NEXT_BUILD") else {
        common::skip(
            "the upgrade to a newer build: NIMBUS_NEXT_BUILD is unset, so this upgrade goes to a copy of the same build; run `NIMBUS_NEXT_BUILD=$(scripts/build-next) cargo test --test rolling_upgrade`",
        );
        return NextBuild {
            exe: NIMBUS.to_string(),
            version: BuildVersion::current(),
        };
    };
    let exe = exe.to_string_lossy().to_string();
    let out = std::process::Command::new(&exe)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {exe} --version: {e}"));
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "nimbus 0.1.0+next (protocol 2)"
    let parsed = said
        .strip_prefix("nimbus ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once(" (protocol "))
        .and_then(|(release, level)| Some((release.to_string(), level.parse().ok()?)));
    let Some((release, protocol)) = parsed else {
        panic!("{exe} --version said {said:?}");
    };
    let version = BuildVersion { release, protocol };
    let current = BuildVersion::current();
    assert!(
        version.protocol == current.protocol + 1 && version.release != current.release,
        "NIMBUS_NEXT_BUILD ({exe}) is {version}, not one protocol level above this build ({current}): build it with scripts/build-next"
    );
    NextBuild { exe, version }
}

/// The protocol levels `nimbus server list` shows, in name order.
fn server_levels(cli: &Cli) -> Vec<(String, u64)> {
    let list = cli.ok(&["server", "list"]);
    let mut levels: Vec<(String, u64)> = list["items"]
        .as_array()
        .expect("server items")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["protocol"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    levels.sort();
    levels
}

/// Two servers sharing the store, the secrets key and one certificate,
/// and the CLI given both. Checks on the way that a server beside a live
/// one two levels ahead, and an agent two levels ahead, are refused.
fn start_servers(etcd: &EtcdCluster, home: &Path) -> (Daemon, Daemon, Cli) {
    let (p1, p2) = (free_port(), free_port());
    let mut s1 = Daemon::new("s1", server_args("s1", p1, etcd));
    let mut s2 = Daemon::new("s2", server_args("s2", p2, etcd));
    // s1 first: it makes the secrets key and the certificate both share.
    s1.start();
    // The token and the TLS files are written at different moments of the
    // start: wait for all three.
    let token = wait_until(
        Duration::from_secs(60),
        "s1's admin token and certificate",
        || {
            let written = |f: &str| std::fs::metadata(s1.dir().join(f)).is_ok_and(|m| m.len() > 0);
            if !(written("tls/cert.pem") && written("tls/key.pem")) {
                return None;
            }
            std::fs::read_to_string(s1.dir().join("admin.token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        },
    );
    std::fs::copy(s1.dir().join("secrets.key"), s2.dir().join("secrets.key")).expect("key");
    std::fs::create_dir_all(s2.dir().join("tls")).expect("tls dir");
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(s1.dir().join("tls").join(f), s2.dir().join("tls").join(f)).expect("cert");
    }
    let ca = home.join("ca.pem");
    std::fs::copy(s1.dir().join("tls/cert.pem"), &ca).expect("ca");
    let cli = Cli {
        endpoints: format!("https://127.0.0.1:{p1},https://127.0.0.1:{p2}"),
        ca,
        token,
        home: home.to_path_buf(),
    };
    wait_until(Duration::from_secs(60), "s1 to serve", || {
        cli.json(&["whoami"]).ok()
    });
    a_server_two_levels_apart_is_refused(etcd, &s2);
    start_server(&mut s2, &cli);
    a_too_new_agent_is_refused(&s1, &cli.token);
    (s1, s2, cli)
}

/// The agent, joined with a one-time token and given both servers; later
/// starts use the credential it kept.
fn start_agent(cli: &Cli, host: &str) -> Daemon {
    let join = cli.ok(&["host", "join-token", "create", "--ttl", "10m"])["token"]
        .as_str()
        .expect("join token")
        .to_string();
    let args = ["agent", "--server", &cli.endpoints, "--host-name", host];
    let mut agent = Daemon::new("agent", args.iter().map(|s| s.to_string()).collect());
    agent.runs_instances = true;
    agent.args.extend(["--join".to_string(), join.clone()]);
    agent.start();
    let shown = wait_until(
        Duration::from_secs(60),
        "the agent's host to be ready",
        || host_ready(cli, host),
    );
    assert_eq!(
        shown["status"]["agent_protocol"].as_u64(),
        Some(nimbus_api_level()),
        "the host shows its agent's protocol level: {shown}"
    );
    agent.args.retain(|a| a != "--join" && *a != join);
    agent
}

fn host_ready(cli: &Cli, host: &str) -> Option<Value> {
    cli.json(&["host", "get", host])
        .ok()
        .filter(|h| h["status"]["phase"] == "ready")
}

/// `nimbus version`, `nimbus server list` and `nimbus host list` show the
/// releases and protocol levels, as JSON and in their tables.
fn versions_are_shown(cli: &Cli) {
    let cell = format!("{}/p{}", nimbus_api::version::RELEASE, nimbus_api_level());
    for what in ["server", "host"] {
        let out = cli.nimbus(&[what, "list"]);
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        let header = table.lines().next().unwrap_or_default().to_lowercase();
        assert!(
            header.contains("version") && table.matches(&cell).count() >= 1,
            "`nimbus {what} list` shows no {cell}:\n{table}"
        );
    }
    let out = cli.nimbus(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.trim(),
        format!(
            "nimbus {} (protocol {})",
            nimbus_api::version::RELEASE,
            nimbus_api_level()
        )
    );
    let out = cli.nimbus(&["version"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!(
            "client: nimbus {} (protocol",
            nimbus_api::version::RELEASE
        )) && text.contains("accepts agents at protocol"),
        "{text}"
    );
    let versions = cli.ok(&["version"]);
    assert_eq!(
        versions["server"]["protocol"].as_u64(),
        Some(nimbus_api_level()),
        "{versions}"
    );
    assert_eq!(
        versions["client"]["protocol"],
        versions["server"]["protocol"]
    );
    let list = cli.ok(&["server", "list"]);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|s| s["protocol"].as_u64() == Some(nimbus_api_level())),
        "{list}"
    );
}

/// The counting container: its id, process and counter file (the host
/// side of its root filesystem).
struct Counter {
    id: String,
    pid: i64,
    file: PathBuf,
}

fn run_counter(cli: &Cli, agent: &Daemon) -> Counter {
    import_busybox(cli);
    cli.succeeds(&[
        "instance",
        "run",
        "counter",
        "--image",
        "bb",
        "--no-wait",
        // No network: the test leaves no router namespace behind.
        "--network",
        "none",
        "--",
        "/bin/sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done",
    ]);
    let running = wait_until(Duration::from_secs(120), "the counter to run", || {
        cli.json(&["instance", "get", "counter"])
            .ok()
            .filter(|i| i["status"]["phase"] == "running")
    });
    let id = running["metadata"]["id"].as_str().expect("id").to_string();
    let file = agent
        .dir()
        .join("instances")
        .join(&id)
        .join("rootfs/tmp/count");
    wait_until(Duration::from_secs(30), "the counter to count", || {
        std::fs::read_to_string(&file).ok()
    });
    Counter {
        pid: running["status"]["pid"].as_i64().expect("pid"),
        id,
        file,
    }
}

/// The two background threads and what they saw.
struct Watchers {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Watchers {
    fn start(cli: &Cli, counter: &Counter) -> Watchers {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let pid = counter.pid;
        let threads = vec![
            {
                let (seen, stop, file) = (seen.clone(), stop.clone(), counter.file.clone());
                std::thread::spawn(move || watch_counter(file, pid, seen, stop))
            },
            {
                let (seen, stop, cli) = (seen.clone(), stop.clone(), cli.clone());
                std::thread::spawn(move || keep_calling(cli, pid, seen, stop))
            },
        ];
        Watchers {
            seen,
            stop,
            threads,
        }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a watching thread panicked");
        }
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}

/// Replaces `server`'s executable and restarts it. A leader resigns on
/// SIGTERM before its calls in flight are done: another leads at once,
/// not after the lease.
fn upgrade_server(server: &mut Daemon, cli: &Cli, next: &NextBuild) {
    install(&next.exe, &server.bin_dir, "nimbus");
    install(SHIM, &server.bin_dir, "nimbus-shim");
    if leader(cli).as_deref() != Some(server.name.as_str()) {
        let took = server.stop();
        eprintln!("{} stopped on SIGTERM in {took:?}", server.name);
    } else {
        let asked = Instant::now();
        server.sigterm();
        let new = wait_until(Duration::from_secs(10), "another leader", || {
            leader(cli).filter(|l| *l != server.name)
        });
        let moved = asked.elapsed();
        eprintln!(
            "leadership moved from {} to {new} {moved:?} after SIGTERM (lease {LEASE})",
            server.name
        );
        assert!(
            moved < lease(),
            "leadership moved only after {moved:?}: the lease expired instead of being revoked"
        );
        let status = server.exit_status(Duration::from_secs(15));
        assert!(status.success(), "{} exited {status}", server.name);
        assert!(
            server.log().contains("gave up leadership"),
            "{} did not say it gave up leadership",
            server.name
        );
    }
    start_server(server, cli);
}

/// Servers first: the follower, then the leader. Between the two, the
/// store has a server at each level.
fn upgrade_servers(s1: &mut Daemon, s2: &mut Daemon, cli: &Cli, next: &NextBuild) {
    let first_leader = wait_until(Duration::from_secs(30), "a leader", || leader(cli));
    let (follower, leading) = if first_leader == s1.name {
        (s2, s1)
    } else {
        (s1, s2)
    };
    upgrade_server(follower, cli, next);
    let mut expected = vec![
        (follower.name.clone(), u64::from(next.version.protocol)),
        (leading.name.clone(), nimbus_api_level()),
    ];
    expected.sort();
    let halfway = server_levels(cli);
    eprintln!("halfway through the servers, their protocol levels: {halfway:?}");
    assert_eq!(halfway, expected, "halfway through the servers");
    upgrade_server(leading, cli, next);
    let level = u64::from(next.version.protocol);
    assert_eq!(
        server_levels(cli),
        vec![("s1".to_string(), level), ("s2".to_string(), level)],
        "once both servers are upgraded"
    );
    // The agent, still at this build's level, works with them: the
    // workload is watched throughout; its host is still ready.
    let versions = cli.ok(&["version"]);
    assert_eq!(
        versions["server"]["release"], next.version.release,
        "{versions}"
    );
}

/// Then the agent: the workload and its shim stay while it is away, and
/// the new agent adopts the same shim.
fn upgrade_agent(agent: &mut Daemon, cli: &Cli, host: &str, counter: &Counter, next: &NextBuild) {
    assert_eq!(
        host_ready(cli, host).expect("the host is ready before its agent's upgrade")["status"]
            ["agent_protocol"]
            .as_u64(),
        Some(nimbus_api_level()),
        "the host shows its agent's level before the upgrade"
    );
    install(&next.exe, &agent.bin_dir, "nimbus");
    install(SHIM, &agent.bin_dir, "nimbus-shim");
    let before = host_ready(cli, host)
        .and_then(|h| h["status"]["last_heartbeat"].as_str().map(str::to_string));
    let state_file = counter
        .file
        .ancestors()
        .nth(3)
        .expect("instance dir")
        .join("state.json");
    let shim_pid = || -> Option<i64> {
        let state = std::fs::read(&state_file).ok()?;
        serde_json::from_slice::<Value>(&state).ok()?["shim_pid"].as_i64()
    };
    let shim = shim_pid().expect("the counter's shim pid in its state.json");
    let alive = |pid: i64| Path::new(&format!("/proc/{pid}")).exists();
    let took = agent.stop();
    eprintln!("the agent stopped on SIGTERM in {took:?}");
    assert!(
        alive(shim),
        "the agent's SIGTERM took the counter's shim {shim} with it"
    );
    assert!(alive(counter.pid), "the workload died with its agent");
    agent.start();
    wait_until(
        Duration::from_secs(60),
        "the upgraded agent's heartbeat",
        || {
            let h = host_ready(cli, host)?;
            let beat = h["status"]["last_heartbeat"].as_str().map(str::to_string);
            (beat > before && agent.log().matches("host agent running").count() >= 2).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        shim_pid(),
        Some(shim),
        "the upgraded agent started another shim instead of adopting the running one"
    );
    assert!(alive(shim), "the shim died");
    let shown = host_ready(cli, host).expect("the host is ready after its agent's upgrade");
    assert_eq!(
        (
            shown["status"]["agent_version"].as_str(),
            shown["status"]["agent_protocol"].as_u64()
        ),
        (
            Some(next.version.release.as_str()),
            Some(u64::from(next.version.protocol))
        ),
        "the host shows the upgraded agent's build: {shown}"
    );
}

/// No call failed, the pid never changed, the counter only grew and never
/// stood still for long.
fn assert_unbroken(seen: &Seen) {
    assert!(
        seen.failed_calls.is_empty(),
        "{} of {} API calls failed:\n{}",
        seen.failed_calls.len(),
        seen.calls,
        seen.failed_calls.join("\n")
    );
    assert!(
        seen.pid_changes.is_empty(),
        "the workload's process changed: {:?}",
        seen.pid_changes
    );
    let mut longest_pause = Duration::ZERO;
    let mut last_change = seen.counts.first().expect("counter readings").0;
    for pair in seen.counts.windows(2) {
        let ((_, a), (at, b)) = (pair[0], pair[1]);
        assert!(
            b >= a,
            "the counter went back from {a} to {b}: it restarted"
        );
        if b > a {
            longest_pause = longest_pause.max(at - last_change);
            last_change = at;
        }
    }
    let (first, last) = (seen.counts[0].1, seen.counts[seen.counts.len() - 1].1);
    eprintln!(
        "{} API calls, none failed, the slowest took {:?}; counter {first} -> {last}, longest pause {longest_pause:?}",
        seen.calls, seen.slowest_call
    );
    assert!(
        longest_pause < MAX_COUNTER_PAUSE,
        "the counter stood still for {longest_pause:?}"
    );
}

#[test]
fn servers_and_an_agent_are_replaced_one_at_a_time_while_a_workload_counts_on() {
    if !is_root("an agent's containers, cgroups and mounts") {
        return;
    }
    let next = next_build();
    let etcd = EtcdCluster::start(3);
    let home = tempdir("nimbus-upgrade-cli-");
    let (mut s1, mut s2, cli) = start_servers(&etcd, home.path());
    let host = format!("upgrade-e2e-{}", std::process::id());
    let mut agent = start_agent(&cli, &host);
    versions_are_shown(&cli);
    let counter = run_counter(&cli, &agent);

    let watchers = Watchers::start(&cli, &counter);
    std::thread::sleep(Duration::from_secs(2));
    upgrade_servers(&mut s1, &mut s2, &cli, &next);
    upgrade_agent(&mut agent, &cli, &host, &counter, &next);
    assert_unbroken(&watchers.finish());

    for d in [&s1, &s2, &agent] {
        assert!(
            d.runs_installed_file(),
            "{} does not run the installed new file",
            d.name
        );
    }
    let running = cli.ok(&["instance", "get", "counter"]);
    assert_eq!(
        running["status"]["pid"].as_i64(),
        Some(counter.pid),
        "{running}"
    );

    // Clean up through the real path.
    cli.succeeds(&["instance", "rm", "counter"]);
    wait_until(Duration::from_secs(30), "the counter to be deleted", || {
        cli.json(&["instance", "get", "counter"])
            .is_err()
            .then_some(())
    });
    assert_no_leaks(agent.dir(), &[counter.id]);
}
