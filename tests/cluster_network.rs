//! Tenant networks across hosts (VXLAN), on the multi-host harness
//! ([`common::cluster`]): two agents, each in its own network namespace on
//! the data-centre bridge, each with its tunnel address from its route to
//! the server. Containers of one network on the two hosts reach each other
//! by name; two projects with the same subnet across the same two hosts
//! never reach each other, even at the same address; a security group
//! filters traffic from the other host like local traffic.

mod common;

use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use common::cluster::{Cluster, HostSpec};
use common::{is_root, wait_until};

/// Clusters run one at a time (two agents and a server keep both cores busy).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const T: Duration = Duration::from_secs(90);

fn two_hosts() -> Cluster {
    Cluster::start(
        &[
            HostSpec::new("node1", &["rack=r1"]),
            HostSpec::new("node2", &["rack=r2"]),
        ],
        "8s",
    )
}

/// A project with the busybox image and a network `net` on 10.30.0.0/24.
fn project_with_network(c: &Cluster, project: &str) {
    c.run_ok(&["project", "create", project]);
    let work = tempfile::tempdir().expect("tempdir");
    let tar = common::busybox_rootfs_tar(work.path());
    c.run_ok(&[
        "image",
        "import",
        &tar,
        "--name",
        "bb",
        "--project",
        project,
    ]);
    c.run_ok(&[
        "network",
        "create",
        "net",
        "--subnet",
        "10.30.0.0/24",
        "--project",
        project,
    ]);
}

/// Run `name` in `project` on `node` (by its rack label), on `net`.
fn run_on(c: &Cluster, project: &str, name: &str, node: &str, extra: &[&str], script: &str) {
    let rack = format!("label:rack=r{}", &node[4..]);
    let mut args = vec![
        "instance",
        "run",
        name,
        "--image",
        "bb",
        "--project",
        project,
        "--network",
        "net",
        "--require",
        &rack,
        "--no-wait",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "/bin/busybox", "sh", "-c", script]);
    c.run_ok(&args);
}

fn get(c: &Cluster, project: &str, name: &str) -> serde_json::Value {
    wait_until(T, &format!("{project}/{name} to run"), || {
        let v = c
            .json(&["instance", "get", name, "--project", project])
            .ok()?;
        (v["status"]["phase"] == "running").then_some(v)
    })
}

/// busybox httpd answering `body` on port 80.
fn web(body: &str) -> String {
    format!(
        "/bin/busybox mkdir -p /www && echo {body} > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www"
    )
}

/// Run `script` (busybox sh) in the network namespace of the instance
/// `v` on its host: the server cannot exec into instances on remote hosts
/// yet, so the test enters the namespace the agent made for it.
fn in_instance(c: &Cluster, v: &serde_json::Value, script: &str) -> Output {
    let host = v["status"]["host"].as_str().expect("a host");
    let id = v["metadata"]["id"].as_str().expect("an id");
    let pid = c.host(host).agent_pid().expect("the agent runs");
    std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/root/run/nimbus/netns/ni-{id}"))
        .args(["/bin/busybox", "sh", "-c", script])
        .output()
        .expect("nsenter")
}

/// The address the network's DNS (its gateway, on the instance's own
/// host) gives for `name`, asked from inside `v`.
fn resolve(c: &Cluster, v: &serde_json::Value, name: &str) -> Option<String> {
    let gw = v["status"]["addresses"][0]["gateway"].as_str()?;
    let out = in_instance(c, v, &format!("/bin/busybox nslookup {name} {gw}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let answer = text.split_once("Name:")?.1;
    answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
}

/// An HTTP GET from inside `v` to `to` (a name, resolved by the
/// network's DNS, or an address): the answer, or None when nothing
/// answered within 2 s.
fn http(c: &Cluster, v: &serde_json::Value, to: &str) -> Option<String> {
    let ip = if to.parse::<std::net::Ipv4Addr>().is_ok() {
        to.to_string()
    } else {
        resolve(c, v, to)?
    };
    let out = in_instance(
        c,
        v,
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 2 {ip} 80"),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.contains("200 OK").then_some(text)
}

/// What the hosts' routers hold, for a failure message.
fn dataplane_state(c: &Cluster) -> String {
    let mut out = String::new();
    for h in &c.hosts {
        let Some(pid) = h.agent_pid() else { continue };
        let dir = format!("/proc/{pid}/root/run/nimbus/netns");
        let routers = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for r in routers
            .iter()
            .filter(|r| r.to_string_lossy().contains("/nr-"))
        {
            let net = format!("--net={}", r.display());
            for cmd in [
                vec!["ip", "-d", "link"],
                vec!["bridge", "fdb", "show", "dev", "vx0"],
                vec!["ip", "neigh"],
                vec!["nft", "list", "ruleset"],
            ] {
                let o = std::process::Command::new("nsenter")
                    .arg(&net)
                    .args(&cmd)
                    .output();
                if let Ok(o) = o {
                    out.push_str(&format!(
                        "--- {} {}: {:?}\n{}{}\n",
                        h.name,
                        r.display(),
                        cmd,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ));
                }
            }
        }
    }
    out
}

/// [`http`] until it answers; on time out, what the routers held.
fn reach(c: &Cluster, from: &serde_json::Value, to: &str) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Some(a) = http(c, from, to) {
            return a;
        }
        if std::time::Instant::now() > deadline {
            let out = in_instance(c, from, "/bin/busybox ip addr; /bin/busybox ip route");
            panic!(
                "{} never reached {to}\n{}{}\n{}\n{}",
                from["metadata"]["name"],
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                dataplane_state(c),
                c.logs_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ip_of(v: &serde_json::Value) -> String {
    v["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("an address")
        .to_string()
}

#[test]
fn a_network_spans_two_hosts_by_name_and_projects_with_one_subnet_stay_apart() {
    if !is_root("network namespaces, bridges, VXLAN devices and cgroups for two hosts") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = two_hosts();
    // Each host reports where it meets the others: its bridge address.
    for h in &c.hosts {
        let rec = c.wait_host_phase(&h.name, "ready", T);
        assert_eq!(
            rec["status"]["tunnel_address"].as_str(),
            Some(h.ip.to_string().as_str()),
            "host {} reports its underlay address",
            h.name
        );
        let shown = c.nimbus(&["host", "get", &h.name]);
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            text.contains(&format!("tunnel address: {} (VXLAN, UDP 4789)", h.ip)),
            "host get shows the tunnel:\n{text}"
        );
    }
    for p in ["red", "blue"] {
        project_with_network(&c, p);
    }
    let vni = |p: &str| c.ok(&["network", "get", "net", "--project", p])["status"]["vni"].as_u64();
    let (red_vni, blue_vni) = (vni("red"), vni("blue"));
    assert!(
        red_vni.is_some() && blue_vni.is_some(),
        "each network has a VNI"
    );
    assert_ne!(red_vni, blue_vni, "two networks never share a VNI");

    // Red's server is in a group that admits tcp:80 (checked from the
    // other host below).
    c.run_ok(&["secgroup", "create", "web", "--project", "red"]);
    c.run_ok(&["secgroup", "allow", "web", "tcp:80", "--project", "red"]);
    run_on(
        &c,
        "red",
        "srv",
        "node2",
        &["--secgroup", "web"],
        &web("red-secret"),
    );
    run_on(
        &c,
        "red",
        "box",
        "node1",
        &[],
        "exec /bin/busybox sleep 600",
    );
    run_on(&c, "blue", "srv", "node2", &[], &web("blue-secret"));
    run_on(
        &c,
        "blue",
        "box",
        "node1",
        &[],
        "exec /bin/busybox sleep 600",
    );
    let red_srv = get(&c, "red", "srv");
    let red_box = get(&c, "red", "box");
    let blue_srv = get(&c, "blue", "srv");
    let blue_box = get(&c, "blue", "box");
    assert_eq!(red_srv["status"]["host"], "node2");
    assert_eq!(red_box["status"]["host"], "node1");
    assert_eq!(blue_srv["status"]["host"], "node2");

    // By name, across the hosts: the DNS of node1's router knows node2's
    // instance, and the frames cross the tunnel.
    let answer = reach(&c, &red_box, "srv");
    assert!(answer.contains("red-secret"), "{answer}");
    let answer = reach(&c, &blue_box, "srv");
    assert!(answer.contains("blue-secret"), "{answer}");
    // The other way (node2 to node1) by name too, and ping across.
    assert_eq!(
        resolve(&c, &red_srv, "box"),
        Some(ip_of(&red_box)),
        "node2's DNS resolves node1's box"
    );
    let ping = in_instance(
        &c,
        &red_srv,
        &format!("/bin/busybox ping -c 1 -W 2 {}", ip_of(&red_box)),
    );
    assert!(
        ping.status.success(),
        "srv on node2 pings box on node1: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // Blue never reaches red's server, by its address: at most blue's own
    // server (when both got the same address), never red's.
    let red_ip = ip_of(&red_srv);
    for _ in 0..3 {
        if let Some(text) = http(&c, &blue_box, &red_ip) {
            assert!(
                !text.contains("red-secret"),
                "blue reached red's server across hosts:\n{text}"
            );
            assert_eq!(ip_of(&blue_srv), red_ip, "only blue's own srv may answer");
        }
    }

    // Red's server's group is enforced on node2 for traffic from node1:
    // without its tcp:80 rule the box is shut out, with it back it is in.
    c.run_ok(&["secgroup", "revoke", "web", "tcp:80", "--project", "red"]);
    wait_until(T, "the revoked rule to shut node1's box out", || {
        http(&c, &red_box, "srv").is_none().then_some(())
    });
    c.run_ok(&["secgroup", "allow", "web", "tcp:80", "--project", "red"]);
    wait_until(T, "the rule to let node1's box in again", || {
        http(&c, &red_box, "srv")
    });

    // With nothing changing, the agents wait on the server for their peers
    // to change rather than asking again and again: over 8 s the two
    // agents complete at most a handful of requests (one a second each,
    // 16, if they polled).
    let before = peer_requests(&c);
    assert!(before > 0, "the agents asked for their peers");
    std::thread::sleep(Duration::from_secs(8));
    let asked = peer_requests(&c) - before;
    assert!(
        asked <= 4,
        "the agents asked for their peers {asked} times in 8 idle seconds"
    );
    // A change still reaches the other host: a new instance on node2 is
    // reachable by name from node1.
    run_on(
        &c,
        "red",
        "late",
        "node2",
        &["--secgroup", "web"],
        &web("late-one"),
    );
    let _late = get(&c, "red", "late");
    let answer = reach(&c, &red_box, "late");
    assert!(answer.contains("late-one"), "{answer}");
}

/// How many requests for network peers the server has answered.
fn peer_requests(c: &Cluster) -> u64 {
    let token = std::fs::read_to_string(c.server_dir().join("admin.token")).expect("admin token");
    let (status, body) = common::http_at(
        &c.server_dir(),
        "GET",
        "/metrics",
        Some(token.trim()),
        b"",
        "text/plain",
    );
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| {
            l.starts_with("nimbus_api_requests_total{route=\"/v1/hosts/{host}/network-peers\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
