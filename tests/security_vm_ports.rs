//! Security: each VM's QEMU runs as its own uid and cannot open another
//! VM's disk or seed; published ports and VM forwards never take over a
//! host service or Nimbus's own API port, and stay within the project's
//! host port range and count.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, wait_until, Cloud};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// A member of project `default` with a token of their own.
fn member_token(cloud: &Cloud, user: &str) -> String {
    cloud.ok(&["user", "create", user]);
    cloud.ok(&["role", "grant", user, "member", "--project", "default"]);
    let v = cloud
        .json(&["token", "create", "--user", user])
        .expect("token create");
    v["secret"].as_str().expect("secret").to_string()
}

/// `POST /v1/projects/default/addresses` as `token`: (status, body).
fn publish(
    cloud: &Cloud,
    token: &str,
    instance: &str,
    proto: &str,
    host_port: u16,
) -> (u16, String) {
    let body = json!({
        "name": format!("{instance}-{proto}-{host_port}"),
        "spec": {"instance": instance, "protocol": proto, "host_port": host_port, "instance_port": 80},
    });
    http(
        cloud,
        "POST",
        "/v1/projects/default/addresses",
        Some(token),
        &serde_json::to_vec(&body).expect("json"),
    )
}

/// A busybox web server on the default network, running.
fn run_web(cloud: &Cloud, name: &str) {
    cloud.ok(&[
        "instance",
        "run",
        name,
        "--image",
        "busybox",
        "--network",
        "default",
        "--",
        "sh",
        "-c",
        "mkdir -p /www && echo from-the-instance > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    cloud.wait_phase(name, &["running"], T);
}

/// The API answers over TLS on its port (the listener a DNAT would steal).
fn api_answers_over_tls(cloud: &Cloud) -> bool {
    cloud
        .command()
        .env(
            "NIMBUS_ENDPOINT",
            format!("https://127.0.0.1:{}", cloud.port),
        )
        .args(["project", "get", "default"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A connection to 127.0.0.1:`port` reaches `listener` (and is not
/// answered by an instance behind a DNAT).
fn reaches_host_service(listener: &TcpListener, port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    // The handshake is complete, so a connection meant for the listener is
    // already queued; one the instance's httpd took gets an answer.
    while Instant::now() < deadline {
        match listener.accept() {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        if matches!(c.read(&mut buf), Ok(n) if n > 0) {
            return false;
        }
    }
    false
}

#[test]
fn published_ports_never_take_over_the_api_or_a_host_service() {
    let mut cloud = Cloud::start();
    run_web(&cloud, "web");
    let alice = member_token(&cloud, "alice");

    // (1) The API's own TLS port: refused, and the API keeps answering.
    let (status, body) = publish(&cloud, &alice, "web", "tcp", cloud.port);
    assert_eq!(
        status, 409,
        "publishing the API's port must be refused: {body}"
    );
    assert!(
        body.contains(&format!("{}/tcp", cloud.port)) && body.contains("Nimbus's own API"),
        "{body}"
    );
    assert!(api_answers_over_tls(&cloud), "the API answers over TLS");

    // (2) Ports on which a host process listens: TCP on [::] (IPv4 too)
    // and UDP on 127.0.0.1.
    let tcp = TcpListener::bind("[::]:0").expect("bind tcp");
    tcp.set_nonblocking(true).expect("nonblocking");
    let tcp_port = tcp.local_addr().expect("addr").port();
    let (status, body) = publish(&cloud, &alice, "web", "tcp", tcp_port);
    assert_eq!(status, 409, "a port a host service listens on: {body}");
    assert!(
        body.contains(&format!("host port {tcp_port}/tcp is in use"))
            && body.contains("pick another host port"),
        "{body}"
    );
    assert!(
        reaches_host_service(&tcp, tcp_port),
        "the host service keeps its connections"
    );
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let udp_port = udp.local_addr().expect("addr").port();
    let (status, body) = publish(&cloud, &alice, "web", "udp", udp_port);
    assert_eq!(status, 409, "a UDP port a host service is bound to: {body}");
    assert!(body.contains(&format!("{udp_port}/udp")), "{body}");
    // The same number over the other protocol is free.
    let (status, body) = publish(&cloud, &alice, "web", "tcp", udp_port);
    assert_eq!(status, 201, "{body}");
    cloud.ok(&["address", "rm", &format!("web-tcp-{udp_port}")]);

    // A host service that starts on a published port while the agent is
    // down keeps it: the restarted agent does not install that forward.
    let port = common::free_port();
    let (status, body) = publish(&cloud, &alice, "web", "tcp", port);
    assert_eq!(status, 201, "{body}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(T, "the published port to answer", || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.contains("from-the-instance").then_some(())
    });
    cloud.kill_daemon();
    let late = TcpListener::bind(("0.0.0.0", port)).expect("bind the published port on the host");
    late.set_nonblocking(true).expect("nonblocking");
    cloud.spawn_daemon();
    cloud.wait_ready();
    wait_until(T, "the host service to get its port back", || {
        reaches_host_service(&late, port).then_some(())
    });
    assert!(
        cloud
            .daemon_log()
            .contains("not forwarding a published host port"),
        "the agent says why it left the forward out"
    );
    assert!(api_answers_over_tls(&cloud));
    cloud.remove_everything();
}

fn run_vm(cloud: &Cloud, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "instance", "run", name, "--kind", "vm", "--image", "blank", "--memory", "64MiB",
    ];
    args.extend_from_slice(extra);
    cloud.nimbus(&args)
}

#[test]
fn project_port_range_and_count_cover_publishes_and_vm_forwards() {
    let cloud = Cloud::start();
    cloud.import_blank_disk();
    cloud.ok(&[
        "instance",
        "run",
        "web",
        "--image",
        "busybox",
        "--network",
        "default",
        "--",
        "sleep",
        "600",
    ]);
    let alice = member_token(&cloud, "alice");
    let [a, b, c] = [0; 3].map(|_| common::free_port());

    // (4) VM forwards: never the API's port, never a host service's.
    let out = run_vm(
        &cloud,
        "squat",
        &["--forward", &format!("{}:22", cloud.port)],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("Nimbus's own API"),
        "{err}"
    );
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let held_port = held.local_addr().expect("addr").port();
    let out = run_vm(&cloud, "squat", &["--forward", &format!("{held_port}:22")]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains(&format!("host port {held_port}/tcp is in use")),
        "{err}"
    );
    assert!(cloud.nimbus(&["instance", "get", "squat"]).status.code() != Some(0));

    // (3) The range: only an administrator sets it, and members stay in it.
    let out = cloud
        .command()
        .env("NIMBUS_TOKEN", &alice)
        .args(["project", "set", "default", "--port-range", "1024-65535"])
        .output()
        .expect("nimbus");
    assert!(
        !out.status.success(),
        "a member cannot change the port policy"
    );
    cloud.ok(&[
        "project",
        "set",
        "default",
        "--port-range",
        &format!("{a}-{a}"),
    ]);
    let (status, body) = publish(&cloud, &alice, "web", "tcp", b);
    assert_eq!(status, 403, "outside the project's range: {body}");
    assert!(
        body.contains(&format!("{a}-{a}")) && body.contains("--port-range"),
        "{body}"
    );
    let out = run_vm(&cloud, "fwd", &["--forward", &format!("{b}:22")]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains(&format!("{a}-{a}")),
        "{err}"
    );
    let (status, body) = publish(&cloud, &alice, "web", "tcp", a);
    assert_eq!(status, 201, "inside the range: {body}");

    // The count: published ports and VM forwards together.
    cloud.ok(&[
        "project",
        "set",
        "default",
        "--port-range",
        "1024-65535",
        "--max-ports",
        "2",
    ]);
    let out = run_vm(&cloud, "fwd", &["--forward", &format!("{b}:22")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = publish(&cloud, &alice, "web", "tcp", c);
    assert_eq!(status, 409, "a third host port: {body}");
    assert!(
        body.contains("at most 2") && body.contains("--max-ports"),
        "{body}"
    );
    let out = run_vm(&cloud, "fwd2", &["--forward", &format!("{c}:22")]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Freeing one makes room; so does raising the count.
    cloud.ok(&["address", "rm", &format!("web-tcp-{a}")]);
    let (status, body) = publish(&cloud, &alice, "web", "tcp", c);
    assert_eq!(status, 201, "{body}");
    let (status, _) = publish(&cloud, &alice, "web", "udp", c);
    assert_eq!(status, 409);
    cloud.ok(&["project", "set", "default", "--max-ports", "3"]);
    let (status, body) = publish(&cloud, &alice, "web", "udp", c);
    assert_eq!(status, 201, "{body}");
    let p = cloud.json(&["project", "get", "default"]).expect("project");
    assert_eq!(p["spec"]["host_ports"]["max_count"], 3, "{p}");
    drop(held);
    cloud.remove_everything();
}

/// (real, effective) uid and gid of a process.
fn ids_of(pid: i64) -> ((u32, u32), (u32, u32)) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> (u32, u32) {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        let v: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v[0], v[1])
    };
    (field("Uid:"), field("Gid:"))
}

fn running_vm(cloud: &Cloud, name: &str) -> (Value, PathBuf, u32, u32) {
    let out = run_vm(cloud, name, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = cloud.wait_phase(name, &["running"], T);
    let pid = v["status"]["qemu_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no qemu_pid: {v}"));
    let id = v["metadata"]["id"].as_str().expect("id");
    let dir = cloud.data_dir().join("instances").join(id);
    let ((uid, euid), (gid, egid)) = ids_of(pid);
    assert_eq!(
        (uid, gid),
        (euid, egid),
        "{name}: QEMU dropped its ids for good"
    );
    (v, dir, uid, gid)
}

/// Open `path` for reading as `uid`/`gid` with no groups: the error text
/// (None if it could be read).
fn read_as(uid: u32, gid: u32, path: &Path) -> Option<String> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .arg("head")
        .args(["-c", "1"])
        .arg(path)
        .output()
        .expect("setpriv");
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn each_vm_runs_qemu_as_its_own_uid_and_cannot_open_other_disks() {
    let cloud = Cloud::start();
    cloud.import_blank_disk();
    let (a, dir_a, uid_a, gid_a) = running_vm(&cloud, "vma");
    let (b, dir_b, uid_b, _) = running_vm(&cloud, "vmb");
    assert_ne!(uid_a, 0, "QEMU does not run as root");
    assert_ne!(gid_a, 0);
    assert_ne!(uid_b, 0);
    assert_ne!(uid_a, uid_b, "two VMs never share a QEMU uid");
    assert_eq!(
        a["status"]["host_uid"], uid_a,
        "the status names the uid: {a}"
    );
    assert_eq!(b["status"]["host_uid"], uid_b, "{b}");

    for dir in [&dir_a, &dir_b] {
        let mode = std::fs::metadata(dir).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is root's alone", dir.display());
        for f in ["root.qcow2", "seed.img", "console.log"] {
            let m = std::fs::metadata(dir.join(f)).expect("file");
            assert_eq!((m.uid(), m.permissions().mode() & 0o777), (0, 0o600), "{f}");
        }
    }
    // As VM A's QEMU: B's disk and seed are out of reach, and so are A's
    // own (QEMU opened them as root before dropping its ids).
    for path in [
        dir_b.join("root.qcow2"),
        dir_b.join("seed.img"),
        dir_a.join("root.qcow2"),
        dir_a.join("seed.img"),
    ] {
        let err = read_as(uid_a, gid_a, &path)
            .unwrap_or_else(|| panic!("uid {uid_a} could read {}", path.display()));
        assert!(
            err.contains("Permission denied"),
            "{}: {err}",
            path.display()
        );
    }

    // The uid goes with the instance and is handed out again.
    cloud.ok(&["instance", "rm", "vma"]);
    wait_until(T, "vma to be gone", || {
        (!dir_a.exists() && cloud.nimbus(&["instance", "get", "vma"]).status.code() != Some(0))
            .then_some(())
    });
    let (_, _, uid_c, _) = running_vm(&cloud, "vmc");
    assert_eq!(uid_c, uid_a, "the released uid is reused, not leaked");
    cloud.remove_everything();
}
