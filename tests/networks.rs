//! Tenant networks end to end, as root, with real traffic: containers talk
//! by name, security groups block and then allow on a running instance,
//! published TCP and UDP ports answer from the host, egress reaches a
//! server outside,
//! projects with the same subnet are isolated, spoofing is dropped,
//! concurrent launches get distinct addresses, the network survives
//! `kill -9` of the daemon, and nothing is left behind.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{wait_until, Cloud};

const T: Duration = Duration::from_secs(60);
const NETNS_DIR: &str = "/run/nimbus/netns";

/// A web server answering `body` on port 80 (busybox httpd).
fn web(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

fn run(cloud: &Cloud, name: &str, extra: &[&str], script: &str) {
    let mut args = vec!["instance", "run", name, "--image", "busybox"];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", script]);
    cloud.ok(&args);
    let project = extra
        .iter()
        .position(|a| *a == "--project")
        .and_then(|i| extra.get(i + 1))
        .copied()
        .unwrap_or("default");
    wait_until(T, &format!("instance {name} to run"), || {
        let v = cloud
            .json(&["instance", "get", name, "--project", project])
            .ok()?;
        (v["status"]["phase"] == "running").then_some(())
    });
}

fn exec(cloud: &Cloud, name: &str, project: &str, script: &str) -> Output {
    cloud.nimbus(&[
        "instance",
        "exec",
        name,
        "--project",
        project,
        "--",
        "sh",
        "-c",
        script,
    ])
}

/// An HTTP GET from inside instance `from` to `host:port`: the body, or
/// None when nothing answered within 2 s.
fn get_from(cloud: &Cloud, from: &str, project: &str, host: &str, port: u16) -> Option<String> {
    let out = exec(
        cloud,
        from,
        project,
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} {port}"),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.contains("200 OK").then_some(text)
}

/// An HTTP GET from the host.
fn get_from_host(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains("200 OK").then_some(text)
}

fn id_of(cloud: &Cloud, kind: &str, name: &str, project: &str) -> String {
    let v = cloud
        .json(&[kind, "get", name, "--project", project])
        .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
    v["metadata"]["id"].as_str().expect("id").to_string()
}

fn host_link(network_id: &str) -> String {
    let short: String = network_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(10)
        .collect();
    format!("nb{short}")
}

/// The daemon's own nftables table in the host namespace.
fn host_table(cloud: &Cloud) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in cloud.data_dir().to_string_lossy().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    format!("nimbus_{h:08x}")
}

fn host_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn host_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Nothing of these networks and instances is left on the host.
fn assert_network_leftovers_gone(cloud: &Cloud, network_ids: &[String], instance_ids: &[String]) {
    let table = host_table(cloud);
    wait_until(Duration::from_secs(20), "network cleanup", || {
        let links = host_links();
        let tables = host_tables();
        let netns_left: Vec<PathBuf> = network_ids
            .iter()
            .map(|id| Path::new(NETNS_DIR).join(format!("nr-{id}")))
            .chain(
                instance_ids
                    .iter()
                    .map(|id| Path::new(NETNS_DIR).join(format!("ni-{id}"))),
            )
            .filter(|p| p.exists())
            .collect();
        let links_left: Vec<String> = network_ids
            .iter()
            .map(|id| host_link(id))
            .filter(|l| links.contains(l))
            .collect();
        let table_left = tables.contains(&table);
        // Namespaces are bind mounts: none may stay mounted either.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts_left: Vec<&str> = mountinfo
            .lines()
            .filter(|l| {
                network_ids
                    .iter()
                    .chain(instance_ids)
                    .any(|id| l.contains(id.as_str()))
            })
            .collect();
        // Nor the agent's records of routers and ports.
        let net_dir = cloud.data_dir().join("net");
        let records_left: Vec<PathBuf> = network_ids
            .iter()
            .map(|id| net_dir.join("routers").join(id))
            .chain(instance_ids.iter().map(|id| net_dir.join("ports").join(id)))
            .filter(|p| p.exists())
            .collect();
        if netns_left.is_empty()
            && links_left.is_empty()
            && !table_left
            && mounts_left.is_empty()
            && records_left.is_empty()
        {
            Some(())
        } else {
            eprintln!(
                "waiting: netns {netns_left:?}, links {links_left:?}, table {table_left}, mounts {mounts_left:?}, records {records_left:?}"
            );
            None
        }
    });
}

/// A namespace outside every Nimbus network, standing for the internet:
/// a veth from the host with its own /30, and a TCP server on port 80.
struct Internet {
    name: String,
    host_if: String,
    pub addr: Ipv4Addr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Internet {
    fn new() -> Internet {
        let tag = std::process::id() % 100_000;
        let name = format!("nimbus-test-inet-{tag}");
        let host_if = format!("xi{tag}h");
        let inner_if = format!("xi{tag}i");
        let third = (tag % 250) as u8;
        let host_ip = format!("198.18.{third}.1");
        let addr = Ipv4Addr::new(198, 18, third, 2);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
        ]);
        ip(&["link", "set", &inner_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        // Replies come back on this link and are forwarded to the network.
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/forwarding"), "1")
            .expect("forwarding on the test link");
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &inner_if,
        ]);
        ip(&["-n", &name, "link", "set", &inner_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // The server runs on a thread of this process that joined the
        // namespace: its listening socket stays there.
        let listener =
            nimbus_net::netns::run_in(Some(Path::new(&format!("/run/netns/{name}"))), move || {
                std::net::TcpListener::bind((addr, 80))
                    .map_err(|e| nimbus_net::NetError::io("bind the internet server", e))
            })
            .expect("internet server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf);
                        let _ = write!(s, "HTTP/1.0 200 OK\r\n\r\nseen {}\n", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Internet {
            name,
            host_if,
            addr,
            stop,
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn containers_talk_by_name_filter_publish_and_egress() {
    let cloud = Cloud::start();
    cloud.ok(&["network", "create", "backend", "--subnet", "10.20.0.0/24"]);
    cloud.ok(&["secgroup", "create", "web"]);
    run(
        &cloud,
        "api",
        &["--network", "backend", "--secgroup", "web"],
        &web("hello-api"),
    );
    run(&cloud, "cli", &["--network", "backend"], "exec sleep 600");
    let api = cloud.instance("api");
    let api_ip = api["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    assert!(api_ip.starts_with("10.20.0."), "{api}");
    let cli_ip = cloud.instance("cli")["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    assert_ne!(api_ip, cli_ip);

    // The container sees its address, and resolves the other by name.
    let out = exec(
        &cloud,
        "cli",
        "default",
        "ip -4 addr show eth0; nslookup api",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("inet {cli_ip}/24")), "{text}");
    assert!(
        text.contains(&api_ip),
        "api does not resolve to {api_ip}:\n{text}"
    );

    // The allowed path first, so the miss below is the group's doing: a
    // member of the group reaches api's running server.
    run(
        &cloud,
        "peer",
        &["--network", "backend", "--secgroup", "web"],
        "exec sleep 600",
    );
    let body = wait_until(T, "a group member to reach api", || {
        get_from(&cloud, "peer", "default", "api", 80)
    });
    assert!(body.contains("hello-api"), "{body}");
    // The group has no rules: cli (not a member) is blocked.
    assert_eq!(
        get_from(&cloud, "cli", "default", "api", 80),
        None,
        "ingress must be denied"
    );
    // A rule change reaches the running instance.
    cloud.ok(&["secgroup", "allow", "web", "tcp:80"]);
    let body = wait_until(T, "the new rule to let cli in", || {
        get_from(&cloud, "cli", "default", "api", 80)
    });
    assert!(body.contains("hello-api"), "{body}");
    // And taking it away blocks again.
    cloud.ok(&["secgroup", "revoke", "web", "tcp:80"]);
    wait_until(T, "the revoked rule to block cli", || {
        get_from(&cloud, "cli", "default", "api", 80)
            .is_none()
            .then_some(())
    });
    // Members of the group reach each other on any port (still, after the
    // rule came and went).
    let body = wait_until(T, "a group member to reach api", || {
        get_from(&cloud, "peer", "default", "api", 80)
    });
    assert!(body.contains("hello-api"));

    // Published port: from the host, through the group's rule.
    cloud.ok(&["secgroup", "allow", "web", "tcp:80"]);
    let port = common::free_port();
    cloud.ok(&["address", "publish", "api", "--port", &format!("{port}:80")]);
    let body = wait_until(T, "the published port to answer", || {
        get_from_host(SocketAddr::from(([127, 0, 0, 1], port)))
    });
    assert!(body.contains("hello-api"), "{body}");
    let dup = cloud.nimbus(&["address", "publish", "cli", "--port", &format!("{port}:80")]);
    assert!(!dup.status.success(), "a host port is published once");
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already published"));
    // The host's own services (DNS, SSH) cannot be taken over by a tenant.
    let dns = cloud.nimbus(&["address", "publish", "api", "--port", "53:53/udp"]);
    assert!(!dns.status.success(), "host port 53 cannot be published");
    assert!(
        String::from_utf8_lossy(&dns.stderr).contains("below 1024"),
        "{}",
        String::from_utf8_lossy(&dns.stderr)
    );

    // A UDP port: an echo server in the instance's namespace.
    run(&cloud, "udp", &["--network", "backend"], "exec sleep 600");
    let udp_ns = PathBuf::from(format!(
        "{NETNS_DIR}/ni-{}",
        id_of(&cloud, "instance", "udp", "default")
    ));
    let echo = nimbus_net::netns::run_in(Some(&udp_ns), || {
        std::net::UdpSocket::bind("0.0.0.0:5353")
            .map_err(|e| nimbus_net::NetError::io("bind udp echo", e))
    })
    .expect("udp echo socket");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], peer);
        }
    });
    let uport = common::free_port();
    // One client socket (one source port) for the whole check: it sends
    // before the port is published, which leaves the host a tracked flow
    // without NAT. Publishing must clear that flow, or the client, which
    // keeps the flow alive by sending, would never be answered.
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp client");
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let ask = |client: &std::net::UdpSocket| -> Option<Vec<u8>> {
        client.send_to(b"ping-udp", ("127.0.0.1", uport)).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = client.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    };
    assert_eq!(ask(&client), None, "nothing answers an unpublished port");
    cloud.ok(&[
        "address",
        "publish",
        "udp",
        "--name",
        "udp-echo",
        "--port",
        &format!("{uport}:5353/udp"),
    ]);
    let echoed = wait_until(T, "the published UDP port to echo", || ask(&client));
    assert_eq!(echoed, b"ping-udp");
    // Unpublished: the same flow, answered a moment ago, stops at once
    // instead of being forwarded until it goes idle.
    cloud.ok(&["address", "rm", "udp-echo"]);
    wait_until(
        Duration::from_secs(10),
        "the unpublished flow to stop",
        || ask(&client).is_none().then_some(()),
    );
    for _ in 0..5 {
        assert_eq!(ask(&client), None, "an unpublished port answered");
    }

    // Egress: a server outside every network sees the host's address.
    let inet = Internet::new();
    let seen = wait_until(T, "egress to the outside server", || {
        get_from(&cloud, "cli", "default", &inet.addr.to_string(), 80)
    });
    assert!(
        seen.contains("seen 198.18."),
        "egress must be masqueraded: {seen}"
    );

    // A network in use cannot be deleted.
    let rm = cloud.nimbus(&["network", "rm", "backend"]);
    assert!(!rm.status.success());
    let err = String::from_utf8_lossy(&rm.stderr);
    assert!(
        err.contains("in use") && err.contains("nimbus instance rm"),
        "{err}"
    );

    // Removing the instance removes its published port and rules.
    let net_id = id_of(&cloud, "network", "backend", "default");
    let ids: Vec<String> = ["api", "cli", "peer", "udp"]
        .iter()
        .map(|n| id_of(&cloud, "instance", n, "default"))
        .collect();
    cloud.ok(&["instance", "rm", "api"]);
    let list = cloud.json(&["address", "list"]).expect("addresses");
    let left: Vec<&serde_json::Value> = list["items"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "api's port went with it: {list}");
    wait_until(T, "the published port to close", || {
        get_from_host(SocketAddr::from(([127, 0, 0, 1], port)))
            .is_none()
            .then_some(())
    });
    cloud.ok(&["instance", "rm", "cli"]);
    cloud.ok(&["instance", "rm", "peer"]);
    cloud.ok(&["instance", "rm", "udp"]);
    cloud.ok(&["network", "rm", "backend"]);
    assert_network_leftovers_gone(&cloud, &[net_id], &ids);
}

#[test]
fn projects_are_isolated_and_spoofing_is_dropped() {
    let cloud = Cloud::start();
    cloud.ok(&["project", "create", "red"]);
    cloud.ok(&["project", "create", "blue"]);
    let tar = cloud.starter_tar();
    for p in ["red", "blue"] {
        cloud.ok(&["image", "import", &tar, "--name", "busybox", "--project", p]);
        cloud.ok(&[
            "network",
            "create",
            "net",
            "--subnet",
            "10.30.0.0/24",
            "--project",
            p,
        ]);
    }
    run(
        &cloud,
        "srv",
        &["--network", "net", "--project", "red"],
        &web("red-secret"),
    );
    run(
        &cloud,
        "box",
        &["--network", "net", "--project", "red"],
        "exec sleep 600",
    );
    run(
        &cloud,
        "box",
        &["--network", "net", "--project", "blue"],
        "exec sleep 600",
    );
    run(
        &cloud,
        "srv",
        &["--network", "net", "--project", "blue"],
        &web("blue-secret"),
    );
    let srv = cloud
        .json(&["instance", "get", "srv", "--project", "red"])
        .expect("srv");
    let srv_ip = srv["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    // Same project: reachable. Other project, same subnet: never.
    let ok = wait_until(T, "red to reach red", || {
        get_from(&cloud, "box", "red", &srv_ip, 80)
    });
    assert!(ok.contains("red-secret"));
    // Blue's own network works (so a miss below is isolation, not a broken
    // box), and nothing of red answers it: not red's server (the same
    // address may be blue's own server, which answers as blue), not red's
    // router uplink.
    let blue_srv_ip = cloud
        .json(&["instance", "get", "srv", "--project", "blue"])
        .expect("blue srv")["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let own = wait_until(T, "blue to reach blue", || {
        get_from(&cloud, "box", "blue", &blue_srv_ip, 80)
    });
    assert!(own.contains("blue-secret"), "{own}");
    let crossed = get_from(&cloud, "box", "blue", &srv_ip, 80).unwrap_or_default();
    assert!(
        !crossed.contains("red-secret"),
        "blue reached red's server at {srv_ip}: {crossed}"
    );
    let red_net = id_of(&cloud, "network", "net", "red");
    let red_uplink = nimbus_net::netns::run_in(
        Some(Path::new(&format!("{NETNS_DIR}/nr-{red_net}"))),
        || {
            let text = std::fs::read_to_string("/proc/net/fib_trie")
                .map_err(|e| nimbus_net::NetError::io("read fib_trie", e))?;
            Ok(text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("|-- "))
                .find(|a| a.starts_with("100."))
                .map(str::to_string))
        },
    )
    .expect("red router addresses");
    if let Some(uplink) = red_uplink {
        let out = exec(
            &cloud,
            "box",
            "blue",
            &format!("ping -c 1 -W 1 {uplink} >/dev/null 2>&1; echo rc=$?"),
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("rc=1"),
            "blue reached red's router uplink {uplink}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        panic!("red's router has no uplink address in 100.64.0.0/10");
    }

    // The container's root cannot change its address or MAC.
    let out = exec(
        &cloud,
        "box",
        "red",
        "ip addr add 10.30.0.250/24 dev eth0 2>&1; echo rc=$?; ip link set eth0 address 02:11:22:33:44:55 2>&1; echo rc=$?",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("rc=0").count(),
        0,
        "spoofing was allowed:\n{text}"
    );
    assert!(text.contains("not permitted"), "{text}");

    // Even with host root's help inside its namespace, spoofed frames are
    // dropped by the router: a foreign address, then a foreign MAC.
    let box_id = id_of(&cloud, "instance", "box", "red");
    let ns = format!("{NETNS_DIR}/ni-{box_id}");
    let srv_addr: Ipv4Addr = srv_ip.parse().expect("srv ip");
    let connect_from = |src: &str| -> bool {
        let src: Ipv4Addr = src.parse().expect("source address");
        nimbus_net::netns::run_in(Some(Path::new(&ns)), move || {
            Ok(connect_bound(src, srv_addr, 80))
        })
        .unwrap_or(false)
    };
    let box_ip = cloud
        .json(&["instance", "get", "box", "--project", "red"])
        .expect("box")["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    assert!(connect_from(&box_ip), "the real address must work");
    // One-way UDP, counted where it lands (in srv's namespace), so a drop
    // anywhere but the anti-spoofing rules cannot make the check pass.
    let srv_id = id_of(&cloud, "instance", "srv", "red");
    let srv_ns = format!("{NETNS_DIR}/ni-{srv_id}");
    let receiver = nimbus_net::netns::run_in(Some(Path::new(&srv_ns)), move || {
        let sock = std::net::UdpSocket::bind((srv_addr, 9999))
            .map_err(|e| nimbus_net::NetError::io("bind the UDP receiver", e))?;
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .map_err(|e| nimbus_net::NetError::io("receiver timeout", e))?;
        Ok(sock)
    })
    .expect("UDP receiver in srv's namespace");
    let send_from = |src: &str, tag: &'static str| {
        let src: Ipv4Addr = src.parse().expect("source address");
        nimbus_net::netns::run_in(Some(Path::new(&ns)), move || {
            let sock = std::net::UdpSocket::bind((src, 0))
                .map_err(|e| nimbus_net::NetError::io("bind the UDP sender", e))?;
            for _ in 0..3 {
                let _ = sock.send_to(tag.as_bytes(), (srv_addr, 9999));
            }
            Ok(())
        })
        .expect("send UDP from box's namespace");
    };
    let received = |receiver: &std::net::UdpSocket| -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = receiver.recv_from(&mut buf) {
            got.push(format!(
                "{} from {}",
                String::from_utf8_lossy(&buf[..n]),
                from.ip()
            ));
        }
        got
    };
    send_from(&box_ip, "genuine");
    let got = received(&receiver);
    assert!(
        got.iter().any(|g| g.starts_with("genuine")),
        "the genuine datagram must arrive: {got:?}"
    );
    let ip_cmd = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg("ip")
            .args(args)
            .output()
            .expect("nsenter ip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip_cmd(&["addr", "add", "10.30.0.250/24", "dev", "eth0"]);
    assert!(
        !connect_from("10.30.0.250"),
        "a spoofed source address got through"
    );
    send_from("10.30.0.250", "spoofed-ip");
    let got = received(&receiver);
    assert!(
        !got.iter().any(|g| g.starts_with("spoofed-ip")),
        "a datagram from a spoofed address arrived: {got:?}"
    );
    ip_cmd(&["addr", "del", "10.30.0.250/24", "dev", "eth0"]);
    ip_cmd(&["link", "set", "eth0", "address", "02:11:22:33:44:55"]);
    assert!(!connect_from(&box_ip), "a spoofed MAC address got through");
    send_from(&box_ip, "spoofed-mac");
    let got = received(&receiver);
    assert!(
        !got.iter().any(|g| g.starts_with("spoofed-mac")),
        "a datagram from a spoofed MAC arrived: {got:?}"
    );
    drop(receiver);

    let nets = vec![
        id_of(&cloud, "network", "net", "red"),
        id_of(&cloud, "network", "net", "blue"),
    ];
    let ids = vec![
        id_of(&cloud, "instance", "srv", "red"),
        box_id,
        id_of(&cloud, "instance", "box", "blue"),
        id_of(&cloud, "instance", "srv", "blue"),
    ];
    for (n, p) in [
        ("srv", "red"),
        ("box", "red"),
        ("box", "blue"),
        ("srv", "blue"),
    ] {
        cloud.ok(&["instance", "rm", n, "--project", p]);
    }
    assert_network_leftovers_gone(&cloud, &nets, &ids);
}

#[test]
fn concurrent_launches_get_distinct_addresses() {
    let cloud = Cloud::start();
    cloud.ok(&["network", "create", "many", "--subnet", "10.40.0.0/26"]);
    let names: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    std::thread::scope(|s| {
        for chunk in names.chunks(5) {
            let cloud = &cloud;
            s.spawn(move || {
                for n in chunk {
                    cloud.ok(&[
                        "instance",
                        "run",
                        n,
                        "--image",
                        "busybox",
                        "--network",
                        "many",
                        // Each instance reserves its memory limit on the
                        // host (1 GiB by default): 50 must fit at once.
                        "--memory",
                        "16MiB",
                        "--no-wait",
                        "--",
                        "true",
                    ]);
                }
            });
        }
    });
    let list = cloud.json(&["instance", "list"]).expect("list");
    let ips: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            i["status"]["addresses"][0]["ip"]
                .as_str()
                .expect("ip")
                .to_string()
        })
        .collect();
    assert_eq!(ips.len(), 50);
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "duplicate addresses: {ips:?}");
    // The /26 has 61 addresses for instances: 11 are left.
    let net = cloud.json(&["network", "get", "many"]).expect("net");
    assert_eq!(net["status"]["allocated"], 50, "{net}");
    for n in &names {
        cloud.wait_phase(n, &["exited", "failed"], T);
    }
    let ids: Vec<String> = names
        .iter()
        .map(|n| id_of(&cloud, "instance", n, "default"))
        .collect();
    for n in &names {
        cloud.ok(&["instance", "rm", n, "--no-wait"]);
    }
    wait_until(T, "every instance to be removed", || {
        let l = cloud.json(&["instance", "list"]).ok()?;
        l["items"].as_array()?.is_empty().then_some(())
    });
    let net = cloud.json(&["network", "get", "many"]).expect("net");
    assert_eq!(
        net["status"]["allocated"], 0,
        "addresses are freed on delete: {net}"
    );
    let net_id = id_of(&cloud, "network", "many", "default");
    assert_network_leftovers_gone(&cloud, &[net_id], &ids);
}

#[test]
fn networks_survive_kill_9_and_a_reboot_and_bad_input_changes_nothing() {
    let mut cloud = Cloud::start();
    for (args, needle) in [
        (
            vec!["network", "create", "bad", "--subnet", "10.20.0.1/24"],
            "did you mean 10.20.0.0/24",
        ),
        (
            vec!["network", "create", "bad", "--subnet", "10.0.0.0/8"],
            "/16 to /29",
        ),
        (
            vec!["secgroup", "create", "bad", "--allow", "tcp:http"],
            "is not a port",
        ),
        (
            vec!["secgroup", "create", "bad", "--allow", "tcp:90-80"],
            "lower port first",
        ),
    ] {
        let out = cloud.nimbus(&args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = cloud.nimbus(&[
        "instance",
        "run",
        "x",
        "--image",
        "busybox",
        "--network",
        "nope",
        "--",
        "true",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nimbus network create nope"));
    let nets = cloud.json(&["network", "list"]).expect("list");
    assert_eq!(nets["items"].as_array().map(Vec::len), Some(0), "{nets}");

    // `default` is made on demand.
    run(&cloud, "a", &["--network", "default"], &web("still-here"));
    run(&cloud, "b", &["--network", "default"], "exec sleep 600");
    let port = common::free_port();
    cloud.ok(&["address", "publish", "a", "--port", &format!("{port}:80")]);
    let host = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(T, "the published port", || get_from_host(host));

    cloud.kill_daemon();
    // Workloads keep their network while the daemon is down.
    let body = get_from_host(host).expect("published port while the daemon is down");
    assert!(body.contains("still-here"));
    cloud.spawn_daemon();
    cloud.wait_ready();
    // After the restart: names resolve (DNS is back), rules still apply.
    let body = wait_until(T, "b to reach a by name after the restart", || {
        get_from(&cloud, "b", "default", "a", 80)
    });
    assert!(body.contains("still-here"));
    assert!(get_from_host(host).is_some());
    // An instance whose restart policy asks it to come back by itself.
    run(
        &cloud,
        "c",
        &["--network", "default", "--restart", "always"],
        &web("back-by-itself"),
    );
    let net_id = id_of(&cloud, "network", "default", "default");
    let ids = vec![
        id_of(&cloud, "instance", "a", "default"),
        id_of(&cloud, "instance", "b", "default"),
        id_of(&cloud, "instance", "c", "default"),
    ];

    // A host reboot, as far as one can be staged: the daemon, the shims
    // and the containers die, and with them every mount, cgroup, network
    // namespace, link and nftables rule (`/run` is a tmpfs); the data
    // directory stays.
    cloud.kill_daemon();
    common::force_cleanup(cloud.data_dir());
    let table = host_table(&cloud);
    for ns in [format!("nr-{net_id}")]
        .into_iter()
        .chain(ids.iter().map(|i| format!("ni-{i}")))
    {
        let path = Path::new(NETNS_DIR).join(ns);
        let _ = Command::new("umount").arg(&path).status();
        let _ = std::fs::remove_file(&path);
    }
    let _ = Command::new("ip")
        .args(["link", "del", &host_link(&net_id)])
        .status();
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .status();
    assert!(
        get_from_host(host).is_none(),
        "nothing answers after the staged reboot"
    );
    cloud.spawn_daemon();
    cloud.wait_ready();
    for n in ["a", "b"] {
        cloud.wait_phase(n, &["failed", "exited", "stopped"], T);
    }
    // c (restart: always) is started again by the agent, network and all.
    cloud.wait_phase("c", &["running"], T);
    // Started again, the instances get their network rebuilt from the
    // store: the same addresses, names, published port and rules.
    cloud.ok(&["instance", "start", "a"]);
    cloud.ok(&["instance", "start", "b"]);
    let body = wait_until(T, "b to reach a by name after the reboot", || {
        get_from(&cloud, "b", "default", "a", 80)
    });
    assert!(body.contains("still-here"));
    let body = wait_until(T, "the published port after the reboot", || {
        get_from_host(host)
    });
    assert!(body.contains("still-here"));
    let body = wait_until(T, "b to reach c, which came back by itself", || {
        get_from(&cloud, "b", "default", "c", 80)
    });
    assert!(body.contains("back-by-itself"));

    cloud.ok(&["instance", "rm", "a"]);
    cloud.ok(&["instance", "rm", "b"]);
    cloud.ok(&["instance", "rm", "c"]);
    assert_network_leftovers_gone(&cloud, &[net_id], &ids);
}

/// A TCP connection from `src` (bound first) to `dst:port` within 2 s.
fn connect_bound(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> bool {
    use std::os::fd::FromRawFd;
    let to_sockaddr = |ip: Ipv4Addr, port: u16| {
        // SAFETY: an all-zero sockaddr_in is valid; fields are set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from(ip).to_be();
        sa
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, wrapped at once so it is closed on return.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd is a socket we own.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = to_sockaddr(src, 0);
    let remote = to_sockaddr(dst, port);
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: valid pointers to stack values of the sizes passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::bind(
            fd,
            &local as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        ) != 0
        {
            return false;
        }
        let ok = libc::connect(
            fd,
            &remote as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        ) == 0;
        drop(stream);
        ok
    }
}

/// Changes an instance's security groups through the API (PUT), as a
/// script would.
fn set_secgroups(cloud: &Cloud, name: &str, groups: &[&str]) {
    let mut v = cloud.instance(name);
    v["spec"]["secgroups"] = serde_json::json!(groups);
    let body = serde_json::to_vec(&v).expect("json");
    let token = cloud.admin_token();
    let (code, text) = common::http(
        cloud,
        "PUT",
        &format!("/v1/projects/default/instances/{name}"),
        Some(&token),
        &body,
    );
    assert_eq!(code, 200, "PUT {name}: {text}");
}

#[test]
fn instances_join_the_default_network_unless_none() {
    let cloud = Cloud::start();
    let none = cloud.nimbus(&["network", "create", "none", "--subnet", "10.70.0.0/24"]);
    assert!(
        !none.status.success() && String::from_utf8_lossy(&none.stderr).contains("reserved"),
        "the name none is reserved: {none:?}"
    );
    cloud.ok(&["secgroup", "create", "locked"]);
    // No --network: the project's default network, made on demand.
    run(&cloud, "srv", &[], &web("hello-default"));
    run(&cloud, "peer", &[], "exec sleep 600");
    run(
        &cloud,
        "alone",
        &["--network", "none"],
        "echo IFACES=$(ls /sys/class/net | tr '\\n' ' '); exec sleep 600",
    );
    let net = cloud
        .json(&["network", "get", "default"])
        .expect("default network");
    assert!(net["spec"]["subnet"].as_str().is_some(), "{net}");
    let srv = cloud.instance("srv");
    assert_eq!(srv["status"]["addresses"][0]["network"], "default", "{srv}");
    let listed = cloud.json(&["network", "list"]).expect("network list");
    assert_eq!(
        listed["items"][0]["status"]["allocated"], 2,
        "the list counts srv's and peer's addresses: {listed}"
    );
    let alone = cloud.instance("alone");
    assert!(
        alone["status"]["addresses"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "--network none joins nothing: {alone}"
    );
    let ifaces = wait_until(T, "alone's interfaces", || {
        cloud
            .logs("alone")
            .lines()
            .find(|l| l.starts_with("IFACES="))
            .map(str::to_string)
    });
    assert_eq!(ifaces.trim(), "IFACES=lo", "only loopback");
    // Default-network instances reach each other by name.
    let body = wait_until(T, "peer to reach srv by name", || {
        get_from(&cloud, "peer", "default", "srv", 80)
    });
    assert!(body.contains("hello-default"), "{body}");

    // Joining a group with no rules through PUT closes srv while it runs;
    // leaving it opens srv again. The workload is never restarted.
    let pid = srv["status"]["pid"].clone();
    set_secgroups(&cloud, "srv", &["locked"]);
    wait_until(T, "the group to block peer", || {
        get_from(&cloud, "peer", "default", "srv", 80)
            .is_none()
            .then_some(())
    });
    set_secgroups(&cloud, "srv", &[]);
    wait_until(T, "leaving the group to let peer in", || {
        get_from(&cloud, "peer", "default", "srv", 80)
    });
    assert_eq!(
        cloud.instance("srv")["status"]["pid"],
        pid,
        "srv was restarted"
    );

    let net_id = id_of(&cloud, "network", "default", "default");
    let ids: Vec<String> = ["srv", "peer", "alone"]
        .iter()
        .map(|n| id_of(&cloud, "instance", n, "default"))
        .collect();
    for n in ["srv", "peer", "alone"] {
        cloud.ok(&["instance", "rm", n]);
    }
    assert_network_leftovers_gone(&cloud, &[net_id], &ids);
}
