//! Throughput between containers on two hosts over VXLAN, against a bare
//! veth pair across the same bridge, measured in the same run: the
//! multi-host harness (`tests/common/cluster.rs`) starts a server and two
//! agents, each in its own network namespace on a data-centre bridge; one
//! container on each host joins one network, so their traffic crosses
//! router, bridge, VXLAN device, the hosts' veths and the bridge, and back
//! up on the other side. The peer is the hosts' own veths across that
//! bridge (the underlay, no overlay, no rules). iperf3 (5 s, one stream)
//! and 2,000 one-byte TCP round trips run in the namespaces, in
//! alternating rounds; medians are printed with the ratio (goal: VXLAN at
//! least 80% of the bare pair's throughput).
//!
//! Run: `cargo bench -p nimbus-cli --bench vxlan` (as root, needs iperf3).
//! NIMBUS_BENCH_ROUNDS changes the 3 rounds.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use common::cluster::{Cluster, HostSpec};
use support::{measure, Measured};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("vxlan: bench");
        return;
    }
    if !common::is_root("network namespaces, bridges and VXLAN devices for two hosts") {
        return;
    }
    assert!(
        support::have("iperf3"),
        "the benchmark needs iperf3 (apt-get install iperf3)"
    );
    let rounds: usize = std::env::var("NIMBUS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let c = Cluster::start(
        &[
            HostSpec::new("node1", &["rack=r1"]),
            HostSpec::new("node2", &["rack=r2"]),
        ],
        "8s",
    );
    c.import_busybox("bb");
    c.run_ok(&["network", "create", "bench", "--subnet", "10.50.0.0/24"]);
    let srv = run_on(&c, "srv", "r2");
    let cli = run_on(&c, "cli", "r1");
    let underlay = |h: usize| PathBuf::from(format!("/run/netns/{}", c.hosts[h].netns));
    // The hosts learn of each other's instance within a poll of the peers.
    common::wait_until(
        Duration::from_secs(30),
        "the overlay to carry a ping",
        || {
            support::in_ns(
                &netns_of(&c, &cli),
                &["/bin/busybox", "ping", "-c", "1", "-W", "1", &ip_of(&srv)],
            )
            .output()
            .ok()
            .filter(|o| o.status.success())
        },
    );
    let (mut overlay, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        overlay.push(measure(
            &netns_of(&c, &srv),
            &netns_of(&c, &cli),
            &ip_of(&srv),
        ));
        bare.push(measure(
            &underlay(1),
            &underlay(0),
            &c.hosts[1].ip.to_string(),
        ));
    }
    let (o, b) = (median(&overlay), median(&bare));
    println!("containers on two hosts over VXLAN vs. a bare veth pair across the same bridge ({rounds} rounds, medians)");
    println!(
        "  throughput: VXLAN {:.2} Gbit/s, bare {:.2} Gbit/s: ratio {:.0}% (goal >= 80%)",
        o.gbits,
        b.gbits,
        100.0 * o.gbits / b.gbits
    );
    println!(
        "  TCP round trip: VXLAN {:.3} ms, bare {:.3} ms: {:.2}x",
        o.rtt_ms,
        b.rtt_ms,
        o.rtt_ms / b.rtt_ms
    );
}

/// A sleeper on the host with label `rack=<rack>`, on network `bench`,
/// once it runs.
fn run_on(c: &Cluster, name: &str, rack: &str) -> serde_json::Value {
    c.run_ok(&[
        "instance",
        "run",
        name,
        "--image",
        "bb",
        "--network",
        "bench",
        "--require",
        &format!("label:rack={rack}"),
        "--no-wait",
        "--",
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    c.wait_running(name, Duration::from_secs(90))
}

/// The instance's network namespace, as its host's agent made it.
fn netns_of(c: &Cluster, v: &serde_json::Value) -> PathBuf {
    let host = v["status"]["host"].as_str().expect("host");
    let id = v["metadata"]["id"].as_str().expect("id");
    let pid = c.host(host).agent_pid().expect("the agent runs");
    PathBuf::from(format!("/proc/{pid}/root/run/nimbus/netns/ni-{id}"))
}

fn ip_of(v: &serde_json::Value) -> String {
    v["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("ip")
        .to_string()
}

fn median(rounds: &[Measured]) -> Measured {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Measured {
        gbits: mid(rounds.iter().map(|m| m.gbits).collect()),
        rtt_ms: mid(rounds.iter().map(|m| m.rtt_ms).collect()),
    }
}
