//! Recovery from a lost host: the time from a host's last accepted heartbeat
//! to its instance running on another host, with default settings (goal:
//! ≤ 15 s).
//!
//! Three real hosts on this machine (`tests/common/cluster.rs`: each agent
//! in its own network, mount and cgroup namespaces on a data-centre bridge),
//! agents with the default `--fence-after 8s`. Each run cuts off the host
//! running a `--restart always` container (its veth goes down), waits until
//! the container runs elsewhere, then brings the link back and waits until
//! the returning host removed its stale copy; the next run cuts off the
//! host the container moved to. Measured: the lost host's last heartbeat
//! (the servers' record) to the new copy's start (its agent's record), both
//! on this machine's clock; also the cut to the new copy seen running.
//!
//! The peer is Kubernetes' default eviction of a lost node's pods (about
//! 5 min: 40 s `node-monitor-grace-period` plus the 300 s default
//! `tolerationSeconds` for `node.kubernetes.io/unreachable`): quoted from
//! its documentation, not measured here (there is no Kubernetes on this
//! machine).
//!
//! Run (root): `cargo bench -p nimbus-cli --bench recovery`.
//! Knob: NIMBUS_BENCH_RUNS (default 5).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Duration;

use common::cluster::{Cluster, HostSpec};
use support::percentile;

const GOAL: Duration = Duration::from_secs(15);
/// Kubernetes' default: node-monitor-grace-period 40 s + tolerationSeconds 300 s.
const KUBERNETES_DEFAULT_EVICTION: Duration = Duration::from_secs(340);

fn main() {
    if !common::is_root("network namespaces, bridges and cgroups for three hosts") {
        return;
    }
    let runs: usize = std::env::var("NIMBUS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let hosts = [
        HostSpec::new("node1", &["site=bj"]),
        HostSpec::new("node2", &["site=bj"]),
        HostSpec::new("node3", &["site=bj"]),
    ];
    let cluster = Cluster::start(&hosts, "8s");
    cluster.import_busybox("bb");
    cluster.run_ok(&[
        "instance",
        "run",
        "web",
        "--image",
        "bb",
        "--no-wait",
        "--restart",
        "always",
        "--",
        "/bin/busybox",
        "sleep",
        "100000",
    ]);
    let mut from_heartbeat = Vec::new();
    let mut from_cut = Vec::new();
    for run in 1..=runs {
        let moved = cluster.cut_off_until_moved("web", &|_| {});
        let beat = moved.heartbeat_to_running().unwrap_or_else(|| {
            panic!(
                "run {run}: no last heartbeat ({:?}) or start time ({:?}) recorded",
                moved.last_heartbeat, moved.new_started
            )
        });
        assert!(
            moved.old_stopped_after.is_some(),
            "run {run}: the old copy on {} still ran when the new one on {} did",
            moved.from,
            moved.to
        );
        println!(
            "run {run}: {} -> {}: last heartbeat to running {:.1} s, cut to seen running {:.1} s, old copy stopped {:.1} s after the cut",
            moved.from,
            moved.to,
            beat.as_secs_f64(),
            moved.recovery.as_secs_f64(),
            moved.old_stopped_after.unwrap_or_default().as_secs_f64()
        );
        from_heartbeat.push(beat);
        from_cut.push(moved.recovery);
        cluster.reconnect(&moved.from, &moved.id);
    }
    let p50 = percentile(&from_heartbeat, 50.0);
    let max = from_heartbeat.iter().max().copied().unwrap_or_default();
    println!(
        "recovery over {runs} runs (fence-after 8s): last heartbeat -> running elsewhere p50 {:.1} s, max {:.1} s (goal <= {} s: {}); cut -> seen running p50 {:.1} s",
        p50.as_secs_f64(),
        max.as_secs_f64(),
        GOAL.as_secs(),
        if max <= GOAL { "met" } else { "MISSED" },
        percentile(&from_cut, 50.0).as_secs_f64()
    );
    println!(
        "Kubernetes' default eviction (not measured here): about {} s, {:.0}x the p50 above",
        KUBERNETES_DEFAULT_EVICTION.as_secs(),
        KUBERNETES_DEFAULT_EVICTION.as_secs_f64() / p50.as_secs_f64().max(0.001)
    );
}
