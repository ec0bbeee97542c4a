//! The details users notice: `rm --force` does not wait out the grace
//! period, `run --rm` cleans up after itself, a killed shim is handled by
//! the restart policy like a dead workload, `address publish` returns when
//! the port answers, and `ping` works without `CAP_NET_RAW`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{wait_until, Cloud};

const T: Duration = Duration::from_secs(60);

fn run(cloud: &Cloud, name: &str, extra: &[&str], script: &str) -> serde_json::Value {
    let mut args = vec!["instance", "run", name, "--image", "busybox"];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", script]);
    cloud.ok(&args);
    cloud.wait_phase(name, &["running"], T)
}

fn id_of(v: &serde_json::Value) -> String {
    v["metadata"]["id"]
        .as_str()
        .expect("instance id")
        .to_string()
}

fn pid_of(v: &serde_json::Value) -> i32 {
    v["status"]["pid"]
        .as_i64()
        .expect("pid of a running instance") as i32
}

fn gone(cloud: &Cloud, name: &str) -> bool {
    let out = cloud.nimbus(&["instance", "get", name]);
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found")
}

/// The pid of the shim supervising instance `id`, from its state file.
fn shim_pid(cloud: &Cloud, id: &str) -> i32 {
    let path = cloud
        .data_dir()
        .join("instances")
        .join(id)
        .join("state.json");
    let text = std::fs::read_to_string(&path).expect("the shim's state file");
    let state: serde_json::Value = serde_json::from_str(&text).expect("state JSON");
    state["shim_pid"].as_i64().expect("shim_pid") as i32
}

/// Whether `pid` is a live process (a zombie waiting for whoever adopted
/// it is dead).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn kill9(pid: i32) {
    // SAFETY: SIGKILL to a process of this test's own cloud (a shim or a
    // container's init), which is what the test is about.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

#[test]
fn rm_force_kills_at_once_and_run_rm_removes_itself() {
    let cloud = Cloud::start();
    // PID 1 ignores SIGTERM: a plain rm waits the whole 10 s grace period.
    let v = run(&cloud, "stubborn", &[], "trap '' TERM; sleep 600");
    let ids = vec![id_of(&v)];
    let started = Instant::now();
    cloud.ok(&["instance", "rm", "--force", "stubborn"]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "rm --force took {took:?}; the 10 s grace period must not apply"
    );
    assert!(
        gone(&cloud, "stubborn"),
        "rm returned before the instance was gone"
    );
    common::assert_no_leaks(cloud.data_dir(), &ids);

    // A graceful rm already waiting out the grace period is overtaken by
    // rm --force.
    let v = run(&cloud, "stubborn2", &[], "trap '' TERM; sleep 600");
    let ids = vec![id_of(&v)];
    cloud.ok(&["instance", "rm", "--no-wait", "stubborn2"]);
    cloud.wait_phase("stubborn2", &["deleting"], T);
    let started = Instant::now();
    cloud.ok(&["instance", "rm", "--force", "stubborn2"]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "rm --force after a graceful rm took {took:?}"
    );
    assert!(gone(&cloud, "stubborn2"));
    common::assert_no_leaks(cloud.data_dir(), &ids);

    // --rm: a short job deletes itself once it has ended.
    let out = cloud.ok(&[
        "instance", "run", "job", "--rm", "--image", "busybox", "--", "true",
    ]);
    assert!(!out.is_empty());
    wait_until(T, "the --rm instance to remove itself", || {
        let list = cloud.json(&["instance", "list"]).ok()?;
        let items = list["items"].as_array()?;
        (!items.iter().any(|i| i["metadata"]["name"] == "job")).then_some(())
    });
    // And a long one with --rm is removed when it is stopped.
    let v = run(
        &cloud,
        "svc",
        &["--rm"],
        "trap 'exit 0' TERM; sleep 600 & wait",
    );
    let ids = vec![id_of(&v)];
    cloud.ok(&["instance", "stop", "svc"]);
    wait_until(T, "the stopped --rm instance to remove itself", || {
        gone(&cloud, "svc").then_some(())
    });
    common::assert_no_leaks(cloud.data_dir(), &ids);
    cloud.remove_everything();
}

#[test]
fn a_killed_shim_follows_the_restart_policy() {
    let cloud = Cloud::start();
    // --restart always: a killed shim brings the workload back, like a
    // dead workload does.
    let v = run(&cloud, "keeper", &["--restart", "always"], "exec sleep 600");
    let id = id_of(&v);
    let first = pid_of(&v);
    kill9(shim_pid(&cloud, &id));
    let v = wait_until(T, "keeper to run again after its shim was killed", || {
        let v = cloud.instance("keeper");
        (v["status"]["phase"] == "running" && v["status"]["pid"].as_i64()? != first as i64)
            .then_some(v)
    });
    assert!(!alive(first), "the old workload must be gone");
    assert_eq!(
        v["status"]["restart_count"], 1,
        "a lost shim counts as a restart: {v}"
    );
    // The new shim is a live supervisor: a dead workload restarts too.
    let second = pid_of(&v);
    kill9(second);
    let v = wait_until(T, "keeper to restart after its workload was killed", || {
        let v = cloud.instance("keeper");
        (v["status"]["phase"] == "running" && v["status"]["pid"].as_i64()? != second as i64)
            .then_some(v)
    });
    assert_eq!(v["status"]["restart_count"], 2, "{v}");

    // --restart never: a killed shim leaves the instance failed.
    let v = run(&cloud, "once", &[], "exec sleep 600");
    kill9(shim_pid(&cloud, &id_of(&v)));
    let v = cloud.wait_phase("once", &["failed"], T);
    assert!(v["status"]["pid"].is_null(), "{v}");
    cloud.remove_everything();
}

/// An HTTP GET from the host: the response, or None when nothing answered.
fn get_from_host(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains("200 OK").then_some(text)
}

#[test]
fn address_publish_returns_when_the_port_answers() {
    let cloud = Cloud::start();
    run(
        &cloud,
        "web",
        &[],
        "mkdir -p /www && echo hello-published > /www/index.html && exec httpd -f -p 80 -h /www",
    );
    // Fresh host ports each round, so no rule from an earlier round helps.
    for round in 0..5 {
        let port = common::free_port();
        cloud.ok(&["address", "publish", "web", "--port", &format!("{port}:80")]);
        // No waiting here: publish returned, so the port must answer now.
        let body = get_from_host(SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(
            body.as_deref()
                .is_some_and(|b| b.contains("hello-published")),
            "round {round}: port {port} did not answer right after publish returned: {body:?}"
        );
        let v = cloud.json(&["address", "list"]).expect("address list");
        let entry = v["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|i| i["spec"]["host_port"] == port)
                    .cloned()
            })
            .expect("the published port is listed");
        assert_eq!(entry["status"]["applied"], true, "{entry}");
        cloud.ok(&["address", "rm", &format!("web-tcp-{port}")]);
    }

    // Only the agent of the instance's host reports forwarding: a project
    // member cannot make a port look forwarded (or not).
    let port = common::free_port();
    cloud.ok(&["address", "publish", "web", "--port", &format!("{port}:80")]);
    cloud.ok(&["user", "create", "mel"]);
    cloud.ok(&["role", "grant", "mel", "member", "--project", "default"]);
    let token = cloud
        .json(&["token", "create", "--user", "mel"])
        .expect("token create")["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let (status, body) = common::http(
        &cloud,
        "POST",
        &format!("/v1/projects/default/addresses/web-tcp-{port}/status"),
        Some(&token),
        br#"{"applied": false, "reason": "forged"}"#,
    );
    assert_eq!(status, 403, "{body}");
    let v = cloud.json(&["address", "list"]).expect("address list");
    assert!(!v.to_string().contains("forged"), "{v}");
    cloud.remove_everything();
}

/// Runs `script` in instance `name` as the container's root: stdout, or a
/// panic with what went wrong.
fn exec_ok(cloud: &Cloud, name: &str, script: &str) -> String {
    cloud.ok(&["instance", "exec", name, "--", "sh", "-c", script])
}

/// Why an ICMP datagram ping failed (the exit code of the child).
fn ping_failure(code: i32) -> &'static str {
    match code {
        2 => "joining the network namespace failed",
        3 => "taking the container root's ids failed",
        4 => "the ICMP datagram socket was refused (net.ipv4.ping_group_range excludes the group)",
        5 => "sending the echo request failed",
        6 => "no echo reply within 5 s",
        _ => "the child died",
    }
}

/// An ICMP echo to `target` through an ICMP datagram socket, the way
/// `ping` works without `CAP_NET_RAW`: from the network namespace of
/// process `pid`, as host uid/gid `host_id` (the container's root) with
/// no capabilities at all. The kernel lets the socket be made only when
/// that group is in the namespace's `ping_group_range`. Runs in a forked
/// child (changing ids in a thread would change the whole test process);
/// everything it needs is prepared before the fork, so the child only
/// makes system calls.
fn icmp_echo_without_caps(
    pid: i32,
    host_id: u32,
    target: std::net::Ipv4Addr,
) -> Result<(), String> {
    let ns_path = std::ffi::CString::new(format!("/proc/{pid}/ns/net")).expect("path");
    // SAFETY: a zeroed sockaddr_in is a valid value; the fields are set below.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(target).to_be();
    // Echo request: type 8, code 0; the kernel fills in id and checksum.
    let request: [u8; 16] = [
        8, 0, 0, 0, 0, 0, 0, 1, b'n', b'i', b'm', b'b', b'u', b's', 0, 0,
    ];
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: the child below makes only system calls on memory prepared
    // before the fork, then leaves with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: plain system calls in the single-threaded child on
        // buffers owned by this frame; _exit never returns.
        unsafe {
            let fd = libc::open(ns_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                libc::_exit(2);
            }
            // Giving up uid 0 clears every capability.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(host_id, host_id, host_id) != 0
                || libc::setresuid(host_id, host_id, host_id) != 0
            {
                libc::_exit(3);
            }
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
            if sock < 0 {
                libc::_exit(4);
            }
            libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let sent = libc::sendto(
                sock,
                request.as_ptr().cast(),
                request.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            if sent < 0 {
                libc::_exit(5);
            }
            let mut reply = [0u8; 64];
            let got = libc::recv(sock, reply.as_mut_ptr().cast(), reply.len(), 0);
            // An echo reply (type 0) came back.
            libc::_exit(if got >= 8 && reply[0] == 0 { 0 } else { 6 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    if waited != child {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(code) => Err(ping_failure(code).to_string()),
        None => Err(format!("the pinging child ended with wait status {status}")),
    }
}

#[test]
fn ping_works_without_net_raw() {
    let cloud = Cloud::start();
    for (name, network) in [("alone", "none"), ("netted", "default")] {
        let v = run(&cloud, name, &["--network", network], "exec sleep 600");
        let pid = pid_of(&v);
        let host_id = v["status"]["host_uid"].as_u64().expect("host_uid") as u32;
        let mut targets = vec![std::net::Ipv4Addr::LOCALHOST];
        if let Some(gw) = v["status"]["addresses"][0]["gateway"].as_str() {
            targets.push(gw.parse().expect("gateway address"));
        }
        assert_eq!(targets.len(), if network == "none" { 1 } else { 2 });
        for target in targets {
            // Without CAP_NET_RAW: an ICMP datagram socket, as the container's root.
            if let Err(e) = icmp_echo_without_caps(pid, host_id, target) {
                panic!("{name} (--network {network}): ping {target} without CAP_NET_RAW: {e}");
            }
            // The starter's busybox (1.35) pings through raw sockets only:
            // that works in a namespace of the container's own, not in one
            // of a Nimbus network, which belongs to the host's user
            // namespace (where the container's root has no capabilities).
            if network == "none" {
                let out = exec_ok(&cloud, name, &format!("ping -c 1 -W 5 {target}"));
                assert!(out.contains("1 packets received"), "{name}: {out}");
            }
        }
    }
    cloud.remove_everything();
}
