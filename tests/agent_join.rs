//! `nimbus agent` alone on a host, beside a `nimbus server` that runs no
//! agent: it joins over TLS with a one-time token whose CA hash it checks,
//! then shows in `nimbus host list` with capacity, architecture and labels
//! and heartbeats. A token used twice, an expired one and one whose CA
//! hash is wrong are refused and change nothing; the agent's credential
//! reads only what concerns its host; a restart without `--join` reuses
//! the kept credential; a killed agent's host turns unreachable.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{
    assert_no_leaks, busybox_rootfs_tar, free_port, http_at, is_root, tail, tiny_rootfs_tar,
    wait_until, NIMBUS,
};
use serde_json::Value;

const HOST_TIMEOUT: &str = "10s";

/// A child process killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nimbus server` (SQLite store, no agent) on a loopback TLS port.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    _daemon: Daemon,
}

impl Server {
    fn start() -> Server {
        let dir = tempdir("nimbus-join-server-");
        let port = free_port();
        let log = log_file(dir.path(), "server.log");
        let child = Command::new(NIMBUS)
            .args(["server", "--no-s3", "--host-timeout", HOST_TIMEOUT])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("NIMBUS_DATA_DIR", dir.path())
            .env("NIMBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nimbus server");
        let server = Server {
            dir,
            port,
            _daemon: Daemon(child),
        };
        wait_until(Duration::from_secs(60), "the server to serve", || {
            server.json(&["whoami"]).ok().map(|_| ())
        });
        server
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn nimbus(&self, args: &[&str]) -> Output {
        Command::new(NIMBUS)
            .args(args)
            .env("NIMBUS_DATA_DIR", self.dir.path())
            .env_remove("NIMBUS_TOKEN")
            .env_remove("NIMBUS_ENDPOINT")
            .env_remove("NIMBUS_PROJECT")
            .stdin(Stdio::null())
            .output()
            .expect("run nimbus")
    }

    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.nimbus(&[args, &["-o", "json"]].concat());
        common::json_output(out)
    }

    fn ok(&self, args: &[&str]) -> Value {
        self.json(args)
            .unwrap_or_else(|e| panic!("nimbus {args:?}: {e}\n{}", tail(&self.log(), 30)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A new join token (the whole string) and its id.
    fn join_token(&self, ttl: &str) -> (String, String) {
        let created = self.ok(&["host", "join-token", "create", "--ttl", ttl]);
        let token = created["token"].as_str().expect("token").to_string();
        let id = created["join_token"]["metadata"]["name"]
            .as_str()
            .expect("id")
            .to_string();
        (token, id)
    }

    fn join_token_ids(&self) -> Vec<String> {
        self.ok(&["host", "join-token", "list"])["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|t| t["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    fn host(&self, name: &str) -> Option<Value> {
        self.ok(&["host", "list"])["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|h| h["metadata"]["name"] == name)
            .cloned()
    }

    fn wait_host_phase(&self, name: &str, phase: &str, timeout: Duration) -> Value {
        wait_until(timeout, &format!("host {name} to be {phase}"), || {
            self.host(name).filter(|h| h["status"]["phase"] == phase)
        })
    }

    fn heartbeat(&self, name: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        self.host(name)
            .and_then(|h| h["status"]["last_heartbeat"].as_str().map(str::to_string))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
    }

    /// A raw call on the server's socket with `token`.
    fn call(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
        http_at(
            self.dir.path(),
            method,
            path,
            Some(token),
            body.as_bytes(),
            "application/json",
        )
    }
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("temp dir")
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}

fn agent_command(data_dir: &Path, server: &Server, extra: &[&str]) -> Command {
    let mut cmd = Command::new(NIMBUS);
    // Agents of tests running side by side share this network: each takes
    // a free port for its I/O endpoint (the default, 7444, would collide).
    cmd.args([
        "agent",
        "--server",
        &server.url(),
        "--io-listen",
        "127.0.0.1:0",
    ])
    .args(extra)
    .env("NIMBUS_DATA_DIR", data_dir)
    .env("NIMBUS_LOG", "info")
    .env_remove("NIMBUS_JOIN_TOKEN")
    .env_remove("NIMBUS_SERVER")
    .stdin(Stdio::null());
    cmd
}

/// Start the agent in the background, its output in `agent.log`.
fn spawn_agent(data_dir: &Path, server: &Server, extra: &[&str]) -> Daemon {
    let log = log_file(data_dir, "agent.log");
    let child = agent_command(data_dir, server, extra)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn nimbus agent");
    Daemon(child)
}

/// Run an agent that must refuse to start: its stderr.
fn refused_agent(server: &Server, extra: &[&str]) -> String {
    let dir = tempdir("nimbus-join-refused-");
    let out = agent_command(dir.path(), server, extra)
        .output()
        .expect("run nimbus agent");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "nimbus agent {extra:?} started; it should have refused:\n{}",
        tail(&stderr, 20)
    );
    assert!(
        !dir.path().join("agent-credential.json").exists(),
        "a refused join kept a credential"
    );
    stderr
}

fn read_credential(data_dir: &Path) -> String {
    let path = data_dir.join("agent-credential.json");
    let text = std::fs::read_to_string(&path).expect("the agent's credential");
    let v: Value = serde_json::from_str(&text).expect("credential JSON");
    v["token"].as_str().expect("token").to_string()
}

fn agent_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("agent.log")).unwrap_or_default()
}

fn mode_of(path: PathBuf) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn an_agent_joins_alone_with_a_one_time_token_and_holds_a_host_credential() {
    if !is_root("an agent's cgroups, networks and instance directories") {
        return;
    }
    let server = Server::start();
    let host = format!("join-e2e-{}", std::process::id());
    let labels = [
        "--host-label",
        "site=bj",
        "--host-label",
        "rack=r12",
        "--host-label",
        "jurisdiction=cn",
    ];

    // A token whose CA hash is not the server's: refused before anything is
    // sent, naming both hashes; the token stays unused.
    let (token, id) = server.join_token("1h");
    let real_hash = &token[token.len() - 64..];
    let wrong = format!("{}{}", &token[..token.len() - 64], "0".repeat(64));
    let said = refused_agent(&server, &["--join", &wrong, "--host-name", &host]);
    assert!(
        said.contains(&format!("sha256:{real_hash}"))
            && said.contains(&"0".repeat(64))
            && said.contains("refusing to join"),
        "the CA mismatch should name both hashes: {said}"
    );
    assert!(
        server.join_token_ids().contains(&id),
        "the token was consumed"
    );

    // The real join.
    let agent_dir = tempdir("nimbus-join-agent-");
    let mut agent = Some(spawn_agent(
        agent_dir.path(),
        &server,
        &[
            &["--join", token.as_str(), "--host-name", host.as_str()][..],
            &labels,
        ]
        .concat(),
    ));
    let shown = server.wait_host_phase(&host, "ready", Duration::from_secs(60));
    let status = &shown["status"];
    assert!(status["cpus"].as_u64() > Some(0), "no cpus: {shown}");
    assert!(
        status["memory_bytes"].as_u64() > Some(0),
        "no memory: {shown}"
    );
    assert_eq!(
        status["architecture"],
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
        "{shown}"
    );
    let l = &shown["metadata"]["labels"];
    assert_eq!(
        (
            l["site"].as_str(),
            l["rack"].as_str(),
            l["jurisdiction"].as_str()
        ),
        (Some("bj"), Some("r12"), Some("cn")),
        "{shown}"
    );
    assert!(
        !server.join_token_ids().contains(&id),
        "a used token is still listed"
    );
    for f in ["agent-credential.json", "server-ca.pem"] {
        assert_eq!(mode_of(agent_dir.path().join(f)), 0o600, "{f}");
    }
    let first = server.heartbeat(&host);
    wait_until(Duration::from_secs(20), "the heartbeat to advance", || {
        (server.heartbeat(&host) > first).then_some(())
    });
    let table = String::from_utf8_lossy(&server.nimbus(&["host", "list"]).stdout).to_string();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&host) && l.contains("ready") && l.contains("site=bj")),
        "host list: {table}"
    );

    // The same token again, from another data directory: refused.
    let said = refused_agent(
        &server,
        &["--join", &token, "--host-name", "join-e2e-second"],
    );
    assert!(
        said.contains("already used") && said.contains("nimbus host join-token create"),
        "reuse: {said}"
    );
    assert!(
        server.host("join-e2e-second").is_none(),
        "a reused token made a host"
    );

    // An expired token: refused.
    let (short, _) = server.join_token("1s");
    std::thread::sleep(Duration::from_millis(2100));
    let said = refused_agent(&server, &["--join", &short, "--host-name", "join-e2e-late"]);
    assert!(said.contains("expired"), "expired: {said}");
    assert!(
        server.host("join-e2e-late").is_none(),
        "an expired token made a host"
    );

    credential_reads_only_its_host(&server, agent_dir.path(), &host);
    instance_runs_from_fetched_blobs(&server, agent_dir.path(), &host);

    // Restart without --join: the kept credential.
    drop(agent.take());
    let stopped_at = server.heartbeat(&host);
    agent = Some(spawn_agent(agent_dir.path(), &server, &labels));
    wait_until(
        Duration::from_secs(30),
        "the restarted agent's heartbeat",
        || {
            let h = server.host(&host)?;
            (h["status"]["phase"] == "ready" && server.heartbeat(&host) > stopped_at).then_some(())
        },
    );
    assert!(
        agent_log(agent_dir.path())
            .matches("host agent running")
            .count()
            >= 2,
        "the agent did not start again:\n{}",
        tail(&agent_log(agent_dir.path()), 20)
    );

    // Killed: the host turns unreachable after --host-timeout.
    drop(agent.take());
    server.wait_host_phase(&host, "unreachable", Duration::from_secs(40));
}

/// The agent's credential reads its own host's instances only, sees no
/// project, and creates no tokens.
fn credential_reads_only_its_host(server: &Server, agent_dir: &Path, host: &str) {
    let cred = read_credential(agent_dir);
    // Another host (registered by the administrator) with an instance of
    // another project bound to it.
    let admin =
        std::fs::read_to_string(server.dir.path().join("admin.token")).expect("admin token");
    let fake = r#"{"name":"join-e2e-other","labels":{"site":"other"},"status":{"phase":"ready","cpus":4,"memory_bytes":8589934592,"disk_bytes":10737418240,"architecture":"amd64","kernel":"6.1"}}"#;
    let (status, body) = server.call("POST", "/v1/hosts", admin.trim(), fake);
    assert_eq!(status, 200, "registering the other host: {body}");
    server.ok(&["project", "create", "tenant"]);
    import_tiny_rootfs(server, "tenant");
    let out = server.nimbus(&[
        "instance",
        "run",
        "elsewhere",
        "-p",
        "tenant",
        "--image",
        "tiny",
        "--no-wait",
        "--require",
        "label:site=other",
        "--",
        "/bin/x",
    ]);
    assert!(
        out.status.success(),
        "instance run elsewhere: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(30),
        "the instance bound to the other host",
        || {
            let i = server
                .json(&["instance", "get", "elsewhere", "-p", "tenant"])
                .ok()?;
            (i["status"]["host"] == "join-e2e-other").then_some(())
        },
    );
    let refused = |method: &str, path: &str, body: &str, codes: &[u16]| {
        let (status, text) = server.call(method, path, &cred, body);
        assert!(
            codes.contains(&status),
            "{method} {path} with the agent's credential: {status} {text}"
        );
    };
    refused("GET", "/v1/instances?host=join-e2e-other", "", &[403]);
    refused("GET", "/v1/instances", "", &[403]);
    refused("GET", "/v1/projects/tenant/instances/elsewhere", "", &[404]);
    refused("GET", "/v1/projects/tenant/instances", "", &[404]);
    refused(
        "GET",
        "/v1/projects/tenant/instances/elsewhere/secret-env",
        "",
        &[403, 404],
    );
    refused(
        "POST",
        "/v1/hosts/join-e2e-other/status",
        r#"{"phase":"ready","cpus":1,"memory_bytes":1,"disk_bytes":1,"architecture":"amd64","kernel":"x"}"#,
        &[403],
    );
    refused("POST", "/v1/tokens", "{}", &[403]);
    refused("POST", "/v1/hosts/join-tokens", "{}", &[403]);
    let (status, body) = server.call("GET", &format!("/v1/instances?host={host}"), &cred, "");
    assert_eq!(status, 200, "its own host's instances: {body}");
    // Over TLS, through the CLI, with the CA the agent kept.
    let out = Command::new(NIMBUS)
        .args([
            "--endpoint",
            &server.url(),
            "--token",
            &cred,
            "token",
            "create",
        ])
        .arg("--ca-cert")
        .arg(agent_dir.join("server-ca.pem"))
        .env("NIMBUS_DATA_DIR", agent_dir)
        .output()
        .expect("nimbus token create");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("host tokens cannot create tokens"),
        "{said}"
    );
}

/// An image imported on the servers only: the standalone agent fetches its
/// blobs by digest and runs it; its logs come from the agent's host.
fn instance_runs_from_fetched_blobs(server: &Server, agent_dir: &Path, _host: &str) {
    import_busybox(server, "bb");
    assert!(
        !agent_dir.join("images/blobs/sha256").exists()
            || std::fs::read_dir(agent_dir.join("images/blobs/sha256"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
        "the agent's store holds blobs before any instance needs them"
    );
    let out = server.nimbus(&[
        "instance",
        "run",
        "here",
        "--image",
        "bb",
        "--require",
        "label:site=bj",
        "--no-wait",
        "--",
        "/bin/sh",
        "-c",
        "test -x /bin/busybox && echo fetched-layers-ran && exit 7",
    ]);
    assert!(
        out.status.success(),
        "instance run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = wait_until(Duration::from_secs(120), "the instance to end", || {
        let i = server.json(&["instance", "get", "here"]).ok()?;
        matches!(i["status"]["phase"].as_str(), Some("exited" | "failed")).then_some(i)
    });
    assert_eq!(
        ended["status"]["exit_code"], 7,
        "the workload ran from the fetched layers and exited 7: {ended}"
    );
    let logs = server.nimbus(&["instance", "logs", "here"]);
    assert!(
        logs.status.success()
            && String::from_utf8_lossy(&logs.stdout).contains("fetched-layers-ran"),
        "logs of an instance on the agent's host: {}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    let id = server.ok(&["instance", "get", "here"])["metadata"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    server.ok(&["instance", "rm", "here"]);
    wait_until(
        Duration::from_secs(30),
        "the instance to be deleted",
        || {
            server
                .json(&["instance", "get", "here"])
                .is_err()
                .then_some(())
        },
    );
    assert_no_leaks(agent_dir, &[id]);
}

/// A one-file root filesystem imported as image `tiny` in `project`.
fn import_tiny_rootfs(server: &Server, project: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let tar = tiny_rootfs_tar(work.path());
    server.ok(&["image", "import", &tar, "--name", "tiny", "-p", project]);
}

/// A busybox root filesystem imported on the server as image `name`.
fn import_busybox(server: &Server, name: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let tar = busybox_rootfs_tar(work.path());
    server.ok(&["image", "import", &tar, "--name", name]);
}

#[test]
fn an_agent_cut_off_from_its_servers_stops_its_instances_and_resumes_them() {
    if !is_root("an agent's cgroups, networks and instance directories") {
        return;
    }
    let server = Server::start();
    let host = format!("fence-e2e-{}", std::process::id());
    let (token, _) = server.join_token("1h");
    let agent_dir = tempdir("nimbus-fence-agent-");
    let _agent = spawn_agent(
        agent_dir.path(),
        &server,
        &[
            "--join",
            &token,
            "--host-name",
            &host,
            "--fence-after",
            "2s",
        ],
    );
    let shown = server.wait_host_phase(&host, "ready", Duration::from_secs(60));
    assert_eq!(shown["status"]["fence_after_ms"], 2000, "{shown}");
    import_busybox(&server, "bb");
    let out = server.nimbus(&[
        "instance",
        "run",
        "web",
        "--image",
        "bb",
        "--restart",
        "always",
        "--no-wait",
        "--",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    assert!(
        out.status.success(),
        "run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let running_pid = || {
        let i = server.json(&["instance", "get", "web"]).ok()?;
        (i["status"]["phase"] == "running")
            .then(|| i["status"]["pid"].as_i64())
            .flatten()
    };
    let pid = wait_until(Duration::from_secs(120), "web to run", running_pid);

    // The server stops answering (SIGSTOP): within the 2 s lease the agent
    // kills the workload, before the server could move it (lease + 4 s).
    let server_pid = nix::unistd::Pid::from_raw(server._daemon.0.id() as i32);
    nix::sys::signal::kill(server_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let cut = std::time::Instant::now();
    let gone = wait_until(
        Duration::from_secs(20),
        "the workload to be stopped",
        || (!Path::new(&format!("/proc/{pid}")).exists()).then(|| cut.elapsed()),
    );
    nix::sys::signal::kill(server_pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    println!(
        "fenced: the workload stopped {:.1} s after the server stopped answering",
        gone.as_secs_f64()
    );
    assert!(
        gone < Duration::from_secs(6),
        "the workload ran {gone:?} after contact was lost: past the server's deadline to move it"
    );
    assert!(
        agent_log(agent_dir.path()).contains("fencing lease"),
        "the agent's log does not say it fenced:\n{}",
        tail(&agent_log(agent_dir.path()), 30)
    );

    // Contact is back: the instance runs again (here, the only host).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let again = loop {
        if let Some(p) = running_pid().filter(|p| *p != pid) {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "web did not run again: {}\n--- agent log ---\n{}\n--- server log ---\n{}",
            server.ok(&["instance", "get", "web"])["status"],
            tail(&agent_log(agent_dir.path()), 12),
            tail(&server.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(Path::new(&format!("/proc/{again}")).exists());
    server.ok(&["instance", "rm", "--force", "web"]);
}
