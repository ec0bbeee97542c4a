//! Scheduler throughput: placements per second and p99 placement latency
//! with 10,000 simulated hosts already running 100,000 instances (goal:
//! ≥ 10,000 placements/s).
//!
//! Measured on the pure placement function (`nimbus_server::scheduler`'s
//! filters and scorers over an in-memory snapshot), in this process: no
//! store, no API, no agent. The figure is the scheduler's own cost; binding
//! each placement in the store is a separate write per instance and is not
//! counted here.
//!
//! The mix of what is placed: a third require a host label, a third prefer
//! one, a fifth ask for anti-affinity with their own label, a tenth pack;
//! each reserves 1 GiB and 1 CPU.
//!
//! Run: `cargo bench -p nimbus-cli --bench scheduler` (no root needed).
//! Knobs: NIMBUS_BENCH_HOSTS (default 10000), NIMBUS_BENCH_EXISTING
//! (default 100000), NIMBUS_BENCH_PLACEMENTS (default 20000).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use nimbus_api::{
    Host, HostPhase, HostSpec, HostStatus, Instance, InstanceSpec, Metadata, PlacementStrategy,
    Resources,
};
use nimbus_server::scheduler::{build_hosts, default_scheduler, Demand};

const GOAL_PLACEMENTS_PER_SEC: f64 = 10_000.0;
const SITES: [&str; 4] = ["bj", "sh", "gz", "sz"];

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn labels(kv: &[(&str, String)]) -> std::collections::BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn host(n: usize) -> Host {
    let mut metadata = Metadata::new(&format!("host-{n:05}"), None);
    metadata.labels = labels(&[
        ("site", SITES[n % SITES.len()].to_string()),
        (
            "disk",
            if n.is_multiple_of(3) { "ssd" } else { "hdd" }.to_string(),
        ),
    ]);
    Host {
        metadata,
        spec: HostSpec {
            unschedulable: n.is_multiple_of(97),
            ..Default::default()
        },
        status: HostStatus {
            phase: if n.is_multiple_of(101) {
                HostPhase::Unreachable
            } else {
                HostPhase::Ready
            },
            cpus: 64,
            memory_bytes: 256 << 30,
            disk_bytes: 4 << 40,
            architecture: "x86_64".into(),
            ..Default::default()
        },
    }
}

fn instance(n: usize, project: &str) -> Instance {
    let mut metadata = Metadata::new(&format!("i-{n}"), Some(project));
    metadata.labels = labels(&[("app", format!("app{}", n % 5000))]);
    let mut spec = InstanceSpec {
        image: "busybox".into(),
        resources: Resources {
            memory_bytes: Some(1 << 30),
            cpu_millis: Some(1000),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = &mut spec.placement;
    match n % 3 {
        0 => p.require_labels = labels(&[("site", SITES[n % SITES.len()].to_string())]),
        1 => p.prefer_labels = labels(&[("disk", "ssd".to_string())]),
        _ => {}
    }
    if n.is_multiple_of(5) {
        p.anti_affinity = metadata.labels.clone();
    }
    if n.is_multiple_of(10) {
        p.strategy = PlacementStrategy::Pack;
    }
    Instance {
        metadata,
        spec,
        status: Default::default(),
    }
}

fn main() {
    let hosts_n = knob("NIMBUS_BENCH_HOSTS", 10_000);
    let existing_n = knob("NIMBUS_BENCH_EXISTING", 100_000);
    let placements_n = knob("NIMBUS_BENCH_PLACEMENTS", 20_000);

    let hosts: Vec<Host> = (0..hosts_n).map(host).collect();
    let existing: Vec<Instance> = (0..existing_n)
        .map(|n| {
            let mut i = instance(n, "tenant");
            i.status.host = Some(hosts[(n * 7919) % hosts_n].metadata.name.clone());
            i
        })
        .collect();
    let pending: Vec<Instance> = (0..placements_n)
        .map(|n| instance(existing_n + n, "tenant"))
        .collect();

    let started = Instant::now();
    let mut views = build_hosts(&hosts, &existing);
    let snapshot_time = started.elapsed();
    let scheduler = default_scheduler();

    let mut latencies = Vec::with_capacity(placements_n);
    let mut placed = 0usize;
    let mut unschedulable = 0usize;
    let run = Instant::now();
    for (k, i) in pending.iter().enumerate() {
        let t = Instant::now();
        let demand = Demand::of(i);
        match scheduler.place(&demand, &views, k) {
            Ok(at) => {
                views[at].add(&demand);
                placed += 1;
            }
            Err(_) => unschedulable += 1,
        }
        latencies.push(t.elapsed());
    }
    let total = run.elapsed();
    let per_sec = placements_n as f64 / total.as_secs_f64().max(f64::EPSILON);
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);

    println!("scheduler placement, pure function in memory (no store, no API)");
    println!(
        "  cluster: {hosts_n} hosts, {existing_n} existing instances (snapshot built in {})",
        support::ms(snapshot_time)
    );
    println!(
        "  placed {placed} of {placements_n} ({unschedulable} unschedulable) in {}",
        support::ms(total)
    );
    println!("  placements/s: {per_sec:.0} (goal ≥ {GOAL_PLACEMENTS_PER_SEC:.0})");
    println!(
        "  latency: p50 {}, p99 {}, max {}",
        us(support::percentile(&latencies, 50.0)),
        us(support::percentile(&latencies, 99.0)),
        us(support::percentile(&latencies, 100.0))
    );
    println!(
        "  goal {}",
        if per_sec >= GOAL_PLACEMENTS_PER_SEC {
            "met"
        } else {
            "NOT met"
        }
    );
}
