//! Network benchmarks, each against a peer measured in the same run:
//! - throughput and latency between two containers on one Nimbus network
//!   (iperf3 and a TCP echo run in the instances' network namespaces) against a
//!   bare veth pair between two namespaces, in alternating rounds;
//! - what joining a network adds to a container launch (create → running,
//!   with and without `--network`, p50);
//! - a security group of 1,000 rules changed on a running instance: time
//!   from the API call until the new rule lets a connection through.
//!
//! Run: `cargo bench -p nimbus-cli --bench network` (as root, needs iperf3).
//! NIMBUS_BENCH_RUNS changes the 30 launches per variant.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("network: bench");
        return;
    }
    let runs: usize = std::env::var("NIMBUS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let cloud = common::Cloud::start();
    cloud.ok(&["network", "create", "bench", "--subnet", "10.50.0.0/24"]);
    cloud.ok(&["secgroup", "create", "peers", "--allow-from-group", "peers"]);

    launch(&cloud, runs);
    throughput(&cloud);
    secgroup_update(&cloud);
}

fn launch(cloud: &common::Cloud, runs: usize) {
    // Keep the router up, as on a network in use.
    cloud.ok(&[
        "instance",
        "run",
        "anchor",
        "--image",
        "busybox",
        "--network",
        "bench",
        "--",
        "sleep",
        "3600",
    ]);
    let phases = record_phases(cloud, "default");
    let mut plain = Vec::new();
    let mut networked = Vec::new();
    for i in 0..runs {
        for (with_net, out) in [(false, &mut plain), (true, &mut networked)] {
            let name = format!("l{i}-{with_net}");
            // A short stop grace: `sleep` as pid 1 ignores SIGTERM.
            let extra = if with_net {
                serde_json::json!({"networks": ["bench"], "stop_grace_ms": 100})
            } else {
                serde_json::json!({"stop_grace_ms": 100})
            };
            let t0 = Instant::now();
            create_instance(cloud, "default", &name, &["/bin/sleep", "30"], extra);
            let running = phases
                .wait(&name, &["running"], Duration::from_secs(30))
                .expect("running");
            out.push(running - t0);
            delete_instance(cloud, "default", &name);
            // Measure launches, not launches racing the previous teardown.
            common::wait_until(Duration::from_secs(30), "the instance to be gone", || {
                cloud
                    .json(&["instance", "get", &name])
                    .is_err()
                    .then_some(())
            });
        }
    }
    let (p, n) = (percentile(&plain, 50.0), percentile(&networked, 50.0));
    println!("launch create→running, {runs} runs each (p50 / p90):");
    println!(
        "  loopback only      {} / {}",
        ms(p),
        ms(percentile(&plain, 90.0))
    );
    println!(
        "  on a network       {} / {}",
        ms(n),
        ms(percentile(&networked, 90.0))
    );
    println!(
        "  networking adds    {} at p50 (goal ≤ 10 ms)",
        ms(n.saturating_sub(p))
    );
}

fn netns_of(cloud: &common::Cloud, name: &str) -> PathBuf {
    let id = cloud.instance(name)["metadata"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    PathBuf::from(format!("/run/nimbus/netns/ni-{id}"))
}

fn ip_of(cloud: &common::Cloud, name: &str) -> String {
    cloud.instance(name)["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("ip")
        .to_string()
}

fn throughput(cloud: &common::Cloud) {
    for n in ["srv", "cli"] {
        cloud.ok(&[
            "instance",
            "run",
            n,
            "--image",
            "busybox",
            "--network",
            "bench",
            "--secgroup",
            "peers",
            "--",
            "sleep",
            "3600",
        ]);
        cloud.wait_phase(n, &["running"], Duration::from_secs(60));
    }
    // The peer: two namespaces joined by one veth pair.
    let tag = std::process::id() % 100_000;
    let (a, b) = (
        format!("nimbus-bench-a{tag}"),
        format!("nimbus-bench-b{tag}"),
    );
    let sh = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    sh(&["netns", "add", &a]);
    sh(&["netns", "add", &b]);
    sh(&[
        "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
    ]);
    sh(&["-n", &a, "addr", "add", "10.99.99.1/24", "dev", "va"]);
    sh(&["-n", &b, "addr", "add", "10.99.99.2/24", "dev", "vb"]);
    for (ns, dev) in [(&a, "va"), (&b, "vb")] {
        sh(&["-n", ns, "link", "set", dev, "up"]);
        sh(&["-n", ns, "link", "set", "lo", "up"]);
    }
    // Rounds alternate between the two paths, so load that comes and goes
    // on the shared cores falls on both; medians of the rounds are shown.
    let rounds = 3;
    let (mut nimbus, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        nimbus.push(measure(
            &netns_of(cloud, "srv"),
            &netns_of(cloud, "cli"),
            &ip_of(cloud, "srv"),
        ));
        bare.push(measure(
            Path::new(&format!("/run/netns/{a}")),
            Path::new(&format!("/run/netns/{b}")),
            "10.99.99.1",
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &a]).status();
    let _ = Command::new("ip").args(["netns", "del", &b]).status();
    let median = |v: &[Measured], f: fn(&Measured) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|p, q| p.total_cmp(q));
        x[x.len() / 2]
    };
    let show = |v: &[Measured]| {
        v.iter()
            .map(|m| format!("{:.2}", m.gbits))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (ng, bg) = (median(&nimbus, |m| m.gbits), median(&bare, |m| m.gbits));
    println!(
        "two containers on one network vs a bare veth pair ({rounds} alternating rounds of iperf3 5 s and TCP 1-byte round trips; medians):"
    );
    println!(
        "  nimbus network     {ng:.2} Gbit/s ({}), rtt {:.3} ms",
        show(&nimbus),
        median(&nimbus, |m| m.rtt_ms)
    );
    println!(
        "  bare veth pair     {bg:.2} Gbit/s ({}), rtt {:.3} ms",
        show(&bare),
        median(&bare, |m| m.rtt_ms)
    );
    println!(
        "  throughput ratio   {:.0}% of bare (goal ≥ 90%)",
        100.0 * ng / bg.max(1e-9)
    );
}

fn secgroup_update(cloud: &common::Cloud) {
    // 1,000 rules: ports 20000-20999, each from its own /24.
    let rules: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            serde_json::json!({"protocol": "tcp", "port_from": 20000 + i,
                "cidr": format!("172.{}.{}.0/24", 16 + i / 256, i % 256)})
        })
        .collect();
    let token = cloud.admin_token();
    let body = serde_json::json!({"name": "big", "spec": {"rules": rules}});
    let (st, resp) = common::http(
        cloud,
        "POST",
        "/v1/projects/default/secgroups",
        Some(&token),
        body.to_string().as_bytes(),
    );
    assert_eq!(st, 201, "{resp}");
    cloud.ok(&[
        "instance",
        "run",
        "guarded",
        "--image",
        "busybox",
        "--network",
        "bench",
        "--secgroup",
        "big",
        "--",
        "sh",
        "-c",
        "exec nc -ll -p 7000 -e cat",
    ]);
    cloud.wait_phase("guarded", &["running"], Duration::from_secs(60));
    let target: Ipv4Addr = ip_of(cloud, "guarded").parse().expect("ip");
    let client_ns = netns_of(cloud, "cli");
    let mut samples = Vec::new();
    for round in 0..5 {
        let sg: serde_json::Value = cloud.json(&["secgroup", "get", "big"]).expect("get");
        let mut sg = sg;
        let extra = serde_json::json!({"protocol": "tcp", "port_from": 7000, "port_to": 7000});
        let list = sg["spec"]["rules"].as_array_mut().expect("rules");
        list.retain(|r| r["port_from"] != 7000);
        let before = list.len();
        list.push(extra);
        assert_eq!(before, 1000);
        // Blocked before the change.
        assert!(
            !reach(&client_ns, target, 7000, Duration::from_millis(300)),
            "round {round}: open before the change"
        );
        let t0 = Instant::now();
        let (st, resp) = common::http(
            cloud,
            "PUT",
            "/v1/projects/default/secgroups/big",
            Some(&token),
            sg.to_string().as_bytes(),
        );
        assert_eq!(st, 200, "{resp}");
        assert!(
            reach(&client_ns, target, 7000, Duration::from_secs(10)),
            "the rule never took effect"
        );
        samples.push(t0.elapsed());
        cloud.ok(&["secgroup", "revoke", "big", "tcp:7000"]);
        // Wait until closed again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while reach(&client_ns, target, 7000, Duration::from_millis(100))
            && Instant::now() < deadline
        {}
    }
    println!("security group of 1,000 rules: rule added → first connection accepted (5 rounds):");
    println!(
        "  p50 {}, max {}",
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 100.0))
    );
}

/// Try connecting from inside `ns` until it works or `within` passes.
fn reach(ns: &Path, ip: Ipv4Addr, port: u16, within: Duration) -> bool {
    let ns = ns.to_path_buf();
    nimbus_net::netns::run_in(Some(&ns), move || {
        let deadline = Instant::now() + within;
        loop {
            if TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(50))
                .is_ok()
            {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .unwrap_or(false)
}
