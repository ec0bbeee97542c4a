//! Two `nimbus server` processes on one 3-member etcd: both serve reads and
//! writes, exactly one leads, a second server with another secrets key or a
//! name in use is refused, and after `kill -9` of the leader the other takes
//! over (the takeover time is printed), the CLI given both endpoints keeps
//! working, and an instance created afterwards is bound to a host by the new
//! leader's scheduler.
//!
//! The host is a fake one registered through the API (no agent runs
//! instances here): the test asserts on binding, which is the scheduler's
//! work, not on a running workload.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::{free_port, http_at, is_root, tail, tiny_rootfs_tar, wait_until, NIMBUS};

const LEASE: &str = "3s";
const FAKE_HOST: &str = "fake-a";

/// One `nimbus server` with its own data directory and port.
struct Server {
    name: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Server {
    fn new(name: &str) -> Server {
        Server {
            name: name.to_string(),
            port: free_port(),
            dir: tempfile::Builder::new()
                .prefix("nimbus-servers-")
                .tempdir_in("/var/tmp")
                .expect("temp dir"),
            child: None,
        }
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("server.log")).unwrap_or_default()
    }

    fn command(&self, etcd: &EtcdCluster, name: &str) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir().join("server.log"))
            .expect("server log");
        let mut cmd = Command::new(NIMBUS);
        cmd.args(["server", "--store", &etcd.url(), "--no-s3"])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--server-name", name, "--leader-lease", LEASE])
            .env("NIMBUS_DATA_DIR", self.data_dir())
            .env("NIMBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        cmd
    }

    fn spawn(&mut self, etcd: &EtcdCluster) {
        let child = self
            .command(etcd, &self.name)
            .spawn()
            .expect("spawn nimbus server");
        self.child = Some(child);
        wait_until(
            Duration::from_secs(60),
            &format!("server {} to serve", self.name),
            || {
                let alive = self
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                assert!(
                    alive,
                    "server {} exited:\n{}",
                    self.name,
                    tail(&self.log(), 30)
                );
                if !self.data_dir().join("api.sock").exists() {
                    return None;
                }
                let token = std::fs::read_to_string(self.data_dir().join("admin.token")).ok()?;
                let (status, _) = http_at(
                    self.data_dir(),
                    "GET",
                    "/v1/servers",
                    Some(token.trim()),
                    b"",
                    "application/json",
                );
                (status == 200).then_some(())
            },
        );
    }

    /// Runs `nimbus server --server-name name`, which must refuse to start
    /// with an error containing `says`.
    fn assert_refused(&self, etcd: &EtcdCluster, name: &str, says: &str) {
        let before = self.log().len();
        let status = self
            .command(etcd, name)
            .status()
            .expect("run nimbus server");
        let log = self.log().split_off(before);
        assert!(!status.success(), "server {name} must not start:\n{log}");
        assert!(
            log.contains(says),
            "the error says {says:?}:\n{}",
            tail(&log, 10)
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The CLI as a user elsewhere runs it: endpoints, CA file and token given.
struct Cli {
    endpoints: String,
    ca: PathBuf,
    token: String,
    home: tempfile::TempDir,
}

impl Cli {
    fn nimbus(&self, args: &[&str]) -> Output {
        Command::new(NIMBUS)
            .args(args)
            .env("NIMBUS_ENDPOINT", &self.endpoints)
            .env("NIMBUS_CA_CERT", &self.ca)
            .env("NIMBUS_TOKEN", &self.token)
            .env("NIMBUS_DATA_DIR", self.home.path())
            .env_remove("NIMBUS_PROJECT")
            .stdin(Stdio::null())
            .output()
            .expect("run nimbus")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.nimbus(args);
        assert!(
            out.status.success(),
            "nimbus {args:?} via {} failed: {}",
            self.endpoints,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    fn via(&self, endpoints: &[&Server]) -> Cli {
        Cli {
            endpoints: endpoints
                .iter()
                .map(|s| s.endpoint())
                .collect::<Vec<_>>()
                .join(","),
            ca: self.ca.clone(),
            token: self.token.clone(),
            home: tempfile::tempdir().expect("temp dir"),
        }
    }
}

/// The admin CLI with no endpoint yet, trusting either server's
/// certificate through one CA file.
fn base_cli(s1: &Server, s2: &Server) -> Cli {
    let ca = s1.data_dir().join("both-servers.pem");
    let mut pem = std::fs::read(s1.data_dir().join("tls/cert.pem")).expect("s1 cert");
    pem.extend(std::fs::read(s2.data_dir().join("tls/cert.pem")).expect("s2 cert"));
    std::fs::write(&ca, pem).expect("write the CA file");
    let token = std::fs::read_to_string(s1.data_dir().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    Cli {
        endpoints: String::new(),
        ca,
        token,
        home: tempfile::tempdir().expect("temp dir"),
    }
}

/// The leader's name as the server list shows it, once there is one.
fn leader(cli: &Cli) -> Option<String> {
    let out = cli.nimbus(&["server", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    list["leader"].as_str().map(str::to_string)
}

/// Register (again: a heartbeat) the fake host through `server`'s socket.
fn beat(server: &Server, token: &str) {
    let body = format!(
        r#"{{"name":"{FAKE_HOST}","labels":{{}},"spec":{{}},"status":{{"phase":"ready","cpus":8,"memory_bytes":17179869184,"disk_bytes":107374182400,"architecture":"x86_64","kernel":"fake"}}}}"#
    );
    let (status, resp) = http_at(
        server.data_dir(),
        "POST",
        "/v1/hosts",
        Some(token),
        body.as_bytes(),
        "application/json",
    );
    assert_eq!(status, 200, "registering {FAKE_HOST}: {resp}");
}

fn bound_host(cli: &Cli, name: &str) -> String {
    wait_until(
        Duration::from_secs(30),
        &format!("{name} to be bound to a host"),
        || {
            let out = cli.nimbus(&["instance", "get", name, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["status"]["host"].as_str().map(str::to_string)
        },
    )
}

/// Runs instance `name` through `cli` and waits, reading through `reader`,
/// until the leader's scheduler binds it to the fake host.
fn run_and_expect_bound(cli: &Cli, reader: &Cli, name: &str) {
    cli.ok(&[
        "instance",
        "run",
        name,
        "--image",
        "tiny",
        "--no-wait",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(bound_host(reader, name), FAKE_HOST);
}

#[test]
fn two_servers_share_etcd_and_the_survivor_takes_over_when_the_leader_is_killed() {
    if !is_root("servers bind their data directories' sockets and run as root") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let mut s1 = Server::new("s1");
    let mut s2 = Server::new("s2");
    s1.spawn(&etcd);

    // A second server with its own secrets key would not open what the
    // first sealed: refused, with the way out.
    s2.assert_refused(&etcd, "s2", "copy secrets.key");
    std::fs::copy(
        s1.data_dir().join("secrets.key"),
        s2.data_dir().join("secrets.key"),
    )
    .expect("copy the secrets key");
    // A name already in use by a live server is refused too.
    s2.assert_refused(&etcd, "s1", "--server-name");
    s2.spawn(&etcd);

    let base = base_cli(&s1, &s2);
    let token = base.token.clone();
    let (via1, via2, both) = (base.via(&[&s1]), base.via(&[&s2]), base.via(&[&s1, &s2]));

    // Both are listed by either, with one leader.
    let list = via2.json(&["server", "list"]);
    assert_eq!(list["answered_by"], "s2", "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["s1", "s2"], "{list}");
    let leaders = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|s| s["leader"] == true)
        .count();
    assert_eq!(leaders, 1, "exactly one leader: {list}");
    let shown = via1.ok(&["server", "list"]);
    assert!(
        shown.contains("leader") && shown.contains("follower"),
        "{shown}"
    );

    // Writes through either server are read through the other.
    via1.ok(&["project", "create", "from-s1"]);
    via2.ok(&["project", "create", "from-s2"]);
    for cli in [&via1, &via2] {
        let projects = cli.ok(&["project", "list"]);
        assert!(
            projects.contains("from-s1") && projects.contains("from-s2"),
            "{projects}"
        );
    }
    let work = tempfile::tempdir().expect("temp dir");
    via2.ok(&[
        "image",
        "import",
        &tiny_rootfs_tar(work.path()),
        "--name",
        "tiny",
    ]);

    // The leader's scheduler binds what either server accepted.
    beat(&s1, &token);
    run_and_expect_bound(&both, &via2, "before");

    // kill -9 the leader.
    let old = list["leader"].as_str().expect("a leader").to_string();
    let (dead, survivor) = if old == "s1" {
        (&mut s1, &s2)
    } else {
        (&mut s2, &s1)
    };
    dead.kill();
    let killed = Instant::now();
    let survivor_cli = base.via(&[survivor]);
    let new = wait_until(Duration::from_secs(30), "another leader", || {
        leader(&survivor_cli).filter(|l| *l != old)
    });
    let takeover = killed.elapsed();
    assert_eq!(new, survivor.name);
    eprintln!("leader {old} killed: {new} took over in {takeover:?} (lease {LEASE})");
    let (status, metrics) = http_at(
        survivor.data_dir(),
        "GET",
        "/metrics",
        Some(&token),
        b"",
        "application/json",
    );
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "nimbus_leader 1"),
        "the new leader's /metrics says it leads:\n{}",
        tail(&metrics, 20)
    );

    // The CLI given both endpoints, the dead one first, keeps working.
    let dead_first = Cli {
        endpoints: format!("{},{}", dead.endpoint(), survivor.endpoint()),
        ..base.via(&[])
    };
    let list = dead_first.json(&["server", "list"]);
    assert_eq!(list["answered_by"], survivor.name.as_str(), "{list}");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "the dead server's record went with its lease: {list}"
    );
    let projects = dead_first.ok(&["project", "list"]);
    assert!(projects.contains("from-s1") && projects.contains("from-s2"));

    // An instance created after the kill is bound by the new leader.
    beat(survivor, &token);
    run_and_expect_bound(&dead_first, &dead_first, "after");
    let instances = dead_first.ok(&["instance", "list"]);
    assert!(
        instances.contains("before") && instances.contains("after"),
        "{instances}"
    );

    // Only the unreachable endpoint: the error names it and what to check.
    let out = base
        .via(&[])
        .nimbus(&["--endpoint", &dead.endpoint(), "project", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&dead.endpoint()), "{stderr}");
}

/// One operation of the mixed load: what it was asked, on which name, and
/// whether the API acknowledged it.
struct Op {
    kind: &'static str,
    name: String,
    acknowledged: bool,
    /// What the CLI said when it was not acknowledged.
    error: String,
}

/// The mixed load: instance creates (each claims an address in the store),
/// deletes of earlier ones, security group creates and deletes.
fn mixed_op(cli: &Cli, i: usize) -> Op {
    let (kind, name, args): (&str, String, Vec<String>) = match i % 4 {
        0 | 1 => {
            let name = format!("i{i}");
            let args = [
                "instance",
                "run",
                &name,
                "--image",
                "tiny",
                "--no-wait",
                "--",
                "sleep",
                "1",
            ]
            .map(String::from)
            .to_vec();
            ("create", name, args)
        }
        2 => {
            let name = format!("i{}", i - 2);
            (
                "delete",
                name.clone(),
                vec!["instance".into(), "rm".into(), name],
            )
        }
        _ => {
            let name = format!("g{i}");
            let args = vec!["secgroup".into(), "create".into(), name.clone()];
            ("create", name, args)
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli.nimbus(&args);
    Op {
        kind,
        name,
        acknowledged: out.status.success(),
        error: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// `kill -9` of the leader, then of one etcd member, while a client runs
/// 200 mixed operations through both servers: every acknowledged create
/// is there and every acknowledged delete gone, no address is held for an
/// instance that does not exist, and the API keeps answering with one
/// etcd member down.
#[test]
fn acknowledged_operations_outlive_a_leader_kill_and_a_stopped_etcd_member() {
    if !is_root("servers bind their data directories' sockets and run as root") {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let mut s1 = Server::new("s1");
    let mut s2 = Server::new("s2");
    s1.spawn(&etcd);
    std::fs::copy(
        s1.data_dir().join("secrets.key"),
        s2.data_dir().join("secrets.key"),
    )
    .expect("copy the secrets key");
    s2.spawn(&etcd);
    let base = base_cli(&s1, &s2);
    let both = base.via(&[&s1, &s2]);
    let work = tempfile::tempdir().expect("temp dir");
    both.ok(&[
        "image",
        "import",
        &tiny_rootfs_tar(work.path()),
        "--name",
        "tiny",
    ]);
    let old = wait_until(Duration::from_secs(30), "a leader", || leader(&both));

    let done = std::sync::atomic::AtomicUsize::new(0);
    let ops: Vec<Op> = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            (0..200)
                .map(|i| {
                    let op = mixed_op(&both, i);
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    op
                })
                .collect::<Vec<Op>>()
        });
        let at = |n: usize| {
            wait_until(Duration::from_secs(300), &format!("{n} operations"), || {
                (done.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(())
            })
        };
        at(60);
        if old == "s1" {
            s1.kill()
        } else {
            s2.kill()
        }
        at(130);
        etcd.stop_member(0);
        client.join().expect("the client")
    });
    let survivor = if old == "s1" { &s2 } else { &s1 };
    let reader = base.via(&[survivor]);
    let failed: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].acknowledged).collect();
    eprintln!(
        "200 operations through a leader kill and an etcd member stop: {} not acknowledged",
        failed.len()
    );
    for &i in &failed {
        eprintln!("  {i}: {} {}: {}", ops[i].kind, ops[i].name, ops[i].error);
    }
    // The client fails over: only an operation in flight on the killed
    // server may be lost (a create is not sent twice); every other one,
    // and every one after the etcd member stopped, lands.
    assert!(
        failed.len() <= 2 && failed.iter().all(|&i| (58..=70).contains(&i)),
        "only an operation in flight at the kill (the 60th) may fail: {failed:?}"
    );

    // What was acknowledged last about each name holds.
    let instances = reader.json(&["instance", "list"]);
    let groups = reader.json(&["secgroup", "list"]);
    let names = |list: &serde_json::Value| -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let (instances, groups) = (names(&instances), names(&groups));
    let unsure: Vec<&str> = ops
        .iter()
        .filter(|o| !o.acknowledged)
        .map(|o| o.name.as_str())
        .collect();
    for op in ops
        .iter()
        .filter(|o| o.acknowledged && !unsure.contains(&o.name.as_str()))
    {
        let exists = instances.contains(&op.name) || groups.contains(&op.name);
        let deleted_later = ops
            .iter()
            .any(|d| d.kind == "delete" && d.acknowledged && d.name == op.name);
        let want = op.kind == "create" && !deleted_later;
        assert_eq!(exists, want, "{} {} was acknowledged", op.kind, op.name);
    }
    // No address is left for an instance that is not there.
    let stored = etcd.etcdctl(&["get", "--prefix", "/nimbus/"]);
    assert!(stored.status.success(), "etcdctl get");
    let text = String::from_utf8_lossy(&stored.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut held = 0;
    for pair in lines.chunks(2) {
        let [key, value] = pair else { continue };
        if !key.contains("/ipam/") {
            continue;
        }
        held += 1;
        let owner = value.trim().trim_matches('"');
        assert!(
            instances.iter().any(|i| i == owner),
            "{key} is held for {owner}, which does not exist"
        );
    }
    let with_address = instances.len();
    assert_eq!(held, with_address, "one address per instance");
    // And the API keeps working on two etcd members.
    reader.ok(&["project", "create", "after-both"]);
    assert!(reader.ok(&["project", "list"]).contains("after-both"));
}
