//! Logs, exec, console and pause of instances on another host than the server's
//! ([`common::cluster`]): the server reaches the agent's I/O endpoint,
//! pinned by the certificate hash the agent reported, with a one-time
//! ticket per call. The endpoint refuses everyone else: a user token, a
//! made-up ticket, another host's credential.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{Cluster, HostSpec};
use common::{is_root, wait_until, NIMBUS};
use serde_json::Value;

/// `nimbus --token TOKEN ARGS` against the cluster's server socket.
fn as_token(c: &Cluster, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(NIMBUS)
        .args(["--token", token])
        .args(args)
        .env("NIMBUS_DATA_DIR", c.server_dir())
        .env_remove("NIMBUS_TOKEN")
        .env_remove("NIMBUS_PROJECT")
        .stdin(Stdio::null())
        .output()
        .expect("run nimbus")
}

/// A GET of `url` from the data-centre network, with `headers`; the HTTP
/// status and the body.
fn curl_from_dc(c: &Cluster, url: &str, headers: &[String]) -> (u16, String) {
    curl_from_dc_with(c, "GET", url, headers, None)
}

/// A `method` call of `url` from the data-centre network, with `headers`
/// and a JSON `body`; the HTTP status and the body.
fn curl_from_dc_with(
    c: &Cluster,
    method: &str,
    url: &str,
    headers: &[String],
    body: Option<&Value>,
) -> (u16, String) {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &c.dc_netns,
        "curl",
        "-sk",
        "-m",
        "10",
        "-X",
        method,
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(body) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ]);
    }
    let out = cmd
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn logs_exec_and_refusals_of_an_instance_on_an_agent_host() {
    if !is_root("network namespaces, bridges and cgroups for two hosts") {
        return;
    }
    let c = Cluster::start(
        &[
            HostSpec::new("node1", &["site=a"]),
            HostSpec::new("node2", &["site=b"]),
        ],
        "8s",
    );
    c.import_busybox_with("bb", &[], &["/tmp"]);

    // The agent reports its endpoint on its own address and the hash of the
    // certificate it keeps in its data directory.
    let node1 = c.host("node1");
    let record = wait_until(Duration::from_secs(30), "node1's I/O endpoint", || {
        let h = c.host_record("node1")?;
        h["status"]["io_endpoint"].is_string().then_some(h)
    });
    let endpoint = record["status"]["io_endpoint"].as_str().expect("endpoint");
    assert_eq!(endpoint, format!("{}:7444", node1.ip), "{record}");
    let cert = node1.data_dir.join("io-endpoint-cert.pem");
    assert!(
        cert.exists(),
        "the endpoint's certificate is kept in the data dir"
    );
    assert_eq!(
        record["status"]["io_certificate_sha256"].as_str(),
        Some(certificate_sha256(&cert).as_str()),
        "the reported hash is the kept certificate's"
    );

    let script = "echo hello-from-node1; while true; do if [ -f /tmp/go ]; then echo second-line; rm /tmp/go; fi; sleep 0.2; done";
    c.run_ok(&[
        "instance",
        "run",
        "talker",
        "--image",
        "bb",
        "--require",
        "label:site=a",
        "--no-wait",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let i = c.wait_running("talker", Duration::from_secs(90));
    let pid = i["status"]["pid"].as_i64().expect("pid");
    assert_eq!(c.host_of_pid(pid).as_deref(), Some("node1"), "{i}");
    let id = i["metadata"]["id"].as_str().expect("id").to_string();

    // Logs, from node1's files, through the server.
    let logs = wait_until(Duration::from_secs(20), "talker's first line", || {
        let out = c.nimbus(&["instance", "logs", "talker"]);
        assert!(
            out.status.success(),
            "logs: {}\n{}",
            stderr(&out),
            c.logs_tail()
        );
        stdout(&out)
            .contains("hello-from-node1")
            .then(|| stdout(&out))
    });
    assert!(!logs.contains("second-line"), "{logs}");

    // Follow: a line written later arrives on the open stream.
    let mut follow = Command::new(NIMBUS)
        .args(["instance", "logs", "talker", "--follow"])
        .env("NIMBUS_DATA_DIR", c.server_dir())
        .env_remove("NIMBUS_TOKEN")
        .env_remove("NIMBUS_PROJECT")
        .stdout(Stdio::piped())
        .spawn()
        .expect("logs --follow");
    let lines = BufReader::new(follow.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the followed log's first line");
    assert!(first.contains("hello-from-node1"), "{first}");
    // Exec runs in the instance on node1: it makes the workload write again.
    c.run_ok(&[
        "instance",
        "exec",
        "talker",
        "--",
        "/bin/busybox",
        "touch",
        "/tmp/go",
    ]);
    let later = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a new line on the followed log");
    assert!(later.contains("second-line"), "{later}");
    let _ = follow.kill();
    let _ = follow.wait();

    // Exec with stdin, stdout and the exit code.
    let mut exec = Command::new(NIMBUS)
        .args([
            "instance",
            "exec",
            "-i",
            "talker",
            "--",
            "/bin/sh",
            "-c",
            "read x; echo got:$x; /bin/busybox cat /proc/1/cmdline; exit 3",
        ])
        .env("NIMBUS_DATA_DIR", c.server_dir())
        .env_remove("NIMBUS_TOKEN")
        .env_remove("NIMBUS_PROJECT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec");
    exec.stdin
        .take()
        .expect("stdin")
        .write_all(b"ping\n")
        .expect("write stdin");
    let out = exec.wait_with_output().expect("exec output");
    assert_eq!(
        out.status.code(),
        Some(3),
        "exec: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("got:ping"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("hello-from-node1"),
        "ran beside the workload: {}",
        stdout(&out)
    );

    // Pause applies to VMs: a container says so, wherever it runs.
    let paused = c.nimbus(&["instance", "pause", "talker"]);
    assert!(
        !paused.status.success() && stderr(&paused).contains("container"),
        "{}",
        stderr(&paused)
    );

    // A user of another project sees nothing of it.
    c.ok(&["project", "create", "other"]);
    c.ok(&["user", "create", "eve"]);
    c.ok(&["role", "grant", "eve", "member", "--project", "other"]);
    let eve = c.ok(&["token", "create", "--user", "eve"])["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    for args in [
        &["instance", "logs", "talker", "-p", "default"][..],
        &["instance", "exec", "talker", "-p", "default", "--", "true"][..],
    ] {
        let out = as_token(&c, &eve, args);
        assert!(
            !out.status.success() && stderr(&out).contains("not found"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // The endpoint itself: nothing but a live ticket opens it.
    let url = format!("https://{endpoint}/v1/io/instances/{id}/logs");
    let node2_cred: Value = serde_json::from_slice(
        &std::fs::read(c.host("node2").data_dir.join("agent-credential.json"))
            .expect("node2 credential"),
    )
    .expect("credential json");
    let node2_token = node2_cred["token"].as_str().expect("token").to_string();
    let refusals = [
        (
            "no ticket, a user token",
            vec![format!("Authorization: Bearer {eve}")],
        ),
        (
            "another host's credential",
            vec![format!("Authorization: Bearer {node2_token}")],
        ),
        (
            "another host's credential as the ticket",
            vec![format!("x-nimbus-hostio-ticket: {node2_token}")],
        ),
        (
            "a made-up ticket",
            vec![format!("x-nimbus-hostio-ticket: {}", "ab".repeat(32))],
        ),
    ];
    for (what, headers) in refusals {
        let (code, body) = curl_from_dc(&c, &url, &headers);
        assert_eq!(code, 401, "{what}: {body}");
        assert!(
            !body.contains("hello-from-node1"),
            "{what} read the log: {body}"
        );
    }
    // Another host's credential cannot consume node1's tickets either.
    let consume = format!(
        "{}/v1/hosts/node1/io-tickets/{}",
        c.server_url(),
        "cd".repeat(32)
    );
    let bearer = [format!("Authorization: Bearer {node2_token}")];
    let (code, body) = curl_from_dc_with(&c, "POST", &consume, &bearer, None);
    assert_eq!(code, 403, "another host consuming node1's ticket: {body}");

    // A ticket serves one call: one the server really issued, caught on
    // its way (node1's own key stands in for node1), opens the endpoint
    // once and is refused when played again.
    let ticket = capture_a_ticket(&c, &node1_token(&c));
    let with_ticket = [format!("x-nimbus-hostio-ticket: {ticket}")];
    let (code, body) = curl_from_dc(&c, &url, &with_ticket);
    assert_eq!(code, 200, "the ticket's first use: {body}");
    assert!(body.contains("hello-from-node1"), "{body}");
    let (code, body) = curl_from_dc(&c, &url, &with_ticket);
    assert_eq!(code, 401, "a replayed ticket: {body}");
    assert!(!body.contains("hello-from-node1"), "{body}");

    c.run_ok(&["instance", "rm", "--force", "talker"]);
    c.assert_torn_down();
}

/// Hex SHA-256 of the DER bytes of the certificate in `pem_file`.
fn certificate_sha256(pem_file: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$0\" -outform der | sha256sum")
        .arg(pem_file)
        .output()
        .expect("openssl x509");
    assert!(out.status.success(), "openssl: {}", stderr(&out));
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn node1_token(c: &Cluster) -> String {
    let cred: Value = serde_json::from_slice(
        &std::fs::read(c.host("node1").data_dir.join("agent-credential.json"))
            .expect("node1 credential"),
    )
    .expect("credential json");
    cred["token"].as_str().expect("token").to_string()
}

/// node1's status as `token` (node1's credential) reports it.
fn report_node1_status(c: &Cluster, token: &str, status: &Value) {
    let url = format!("{}/v1/hosts/node1/status", c.server_url());
    let bearer = [format!("Authorization: Bearer {token}")];
    let (code, body) = curl_from_dc_with(c, "POST", &url, &bearer, Some(status));
    assert_eq!(code, 200, "status report: {body}");
}

/// A ticket the server issues for `nimbus instance logs talker`, caught by
/// a TLS listener holding node1's key that node1's status names for a
/// moment (node1's agent is stopped meanwhile, so its heartbeat does not
/// put its own endpoint back).
fn capture_a_ticket(c: &Cluster, node1_token: &str) -> String {
    let node1 = c.host("node1");
    let mut listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.dc_netns,
            "openssl",
            "s_server",
            "-quiet",
            "-naccept",
            "1",
        ])
        .args(["-accept", "10.77.0.1:7999"])
        .arg("-cert")
        .arg(node1.data_dir.join("io-endpoint-cert.pem"))
        .arg("-key")
        .arg(node1.data_dir.join("io-endpoint-key.pem"))
        // Kept open: s_server closes its connection at the end of stdin.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    wait_until(Duration::from_secs(10), "the catching listener", || {
        let out = Command::new("ip")
            .args(["netns", "exec", &c.dc_netns, "ss", "-ltnH", "sport = :7999"])
            .output()
            .ok()?;
        (!out.stdout.is_empty()).then_some(())
    });
    let agent = node1.agent_pid().expect("node1's agent") as i32;
    let original = c.host_record("node1").expect("node1")["status"].clone();
    // SAFETY: kill(2) on the agent process this test's cluster started.
    unsafe { libc::kill(agent, libc::SIGSTOP) };
    let mut diverted = original.clone();
    diverted["io_endpoint"] = Value::from("10.77.0.1:7999");
    report_node1_status(c, node1_token, &diverted);
    let mut logs = Command::new(NIMBUS)
        .args(["instance", "logs", "talker"])
        .env("NIMBUS_DATA_DIR", c.server_dir())
        .env_remove("NIMBUS_TOKEN")
        .env_remove("NIMBUS_PROJECT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = listener.stdout.take().expect("listener output");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(v) = line
                .to_ascii_lowercase()
                .strip_prefix("x-nimbus-hostio-ticket:")
            {
                let _ = tx.send(v.trim().to_string());
                return;
            }
        }
    });
    let caught = rx.recv_timeout(Duration::from_secs(20));
    let _ = logs.kill();
    let _ = logs.wait();
    let _ = listener.kill();
    let _ = listener.wait();
    report_node1_status(c, node1_token, &original);
    // SAFETY: as above.
    unsafe { libc::kill(agent, libc::SIGCONT) };
    caught.expect("the server sent a ticket to the endpoint node1 named")
}

#[test]
fn console_and_pause_of_a_vm_on_an_agent_host() {
    if !is_root("network namespaces, bridges, cgroups and QEMU for two hosts") {
        return;
    }
    let c = Cluster::start(
        &[
            HostSpec::new("node1", &["site=a"]),
            HostSpec::new("node2", &["site=b"]),
        ],
        "8s",
    );
    let tiny = common::import_tiny_args();
    c.run_ok(&tiny.iter().map(String::as_str).collect::<Vec<_>>());
    c.run_ok(&[
        "instance",
        "run",
        "tinyvm",
        "--kind",
        "vm",
        "--image",
        "tiny",
        "--memory",
        "128MiB",
        "--require",
        "label:site=b",
        "--no-wait",
    ]);
    let vm = c.wait_running("tinyvm", Duration::from_secs(120));
    assert_eq!(vm["status"]["host"], "node2", "{vm}");

    // The serial console, relayed from node2's QEMU through the server.
    let attach = || {
        let mut cmd = Command::new(NIMBUS);
        cmd.args(["instance", "console", "tinyvm"])
            .env("NIMBUS_DATA_DIR", c.server_dir())
            .env_remove("NIMBUS_TOKEN")
            .env_remove("NIMBUS_PROJECT");
        common::Console::spawn(cmd)
    };
    attach().roundtrip("echo CONSOLE-$((6*7))", "CONSOLE-42");

    // Pause and resume on node2: a paused guest does not answer.
    let mut console = attach();
    let v = c.ok(&["instance", "pause", "tinyvm"]);
    assert_eq!(v["status"]["phase"], "paused", "{v}");
    console.type_line("echo PAUSED-$((7*7))");
    assert!(
        !console.shows("PAUSED-49", Duration::from_secs(3)),
        "a paused guest ran a command: {}",
        console.seen
    );
    let v = c.ok(&["instance", "resume", "tinyvm"]);
    assert_eq!(v["status"]["phase"], "running", "{v}");
    assert!(
        console.shows("PAUSED-49", Duration::from_secs(30)),
        "the resumed guest runs what was typed while paused: {}",
        console.seen
    );
    drop(console);

    c.run_ok(&["instance", "rm", "--force", "tinyvm"]);
    c.assert_torn_down();
}
