//! Prometheus metrics: what the server counts as it works (API requests,
//! store writes, placements), what it renders from current state at each
//! scrape (hosts, instances, networks), and the latest statistics each
//! host agent pushed about its instances.
//!
//! Series of things that can disappear (instances, hosts, networks) are
//! never registered: they are rendered per scrape from the store and the
//! agents' latest reports (`render.rs`), so a deleted instance's series go
//! with it and cardinality stays that of what exists. Counters kept in
//! memory carry only bounded labels (route template, method, status).

pub mod render;
pub mod requests;
pub mod snapshot;
pub mod store;

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::http::Method;
use nimbus_api::stats::HostStats;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type OpLabels = [(&'static str, &'static str); 1];

/// A host's report is dropped from the metrics when it is older than this
/// (the agent stopped or lost its host): stale numbers are worse than none.
pub const STATS_MAX_AGE: Duration = Duration::from_secs(60);

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The server's metrics; one per process, in `AppState`.
pub struct Metrics {
    /// `false` (`--metrics=false`): nothing is counted and `/metrics` says so.
    pub enabled: bool,
    /// Leaked: one per process, read on every request without a
    /// reference count (`requests.rs`).
    requests: &'static requests::RequestMetrics,
    store_write_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    store_watches: Gauge,
    /// 1 while this server is the elected leader (see `cluster::leader`).
    leader: Gauge,
    placement_seconds: Histogram,
    /// The latest report of each host, by host name, with when it came.
    host_stats: RwLock<HashMap<String, (Instant, HostStats)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(enabled: bool) -> Metrics {
        Metrics {
            enabled,
            requests: Box::leak(Box::default()),
            store_write_seconds: Family::new_with_constructor(latency_histogram),
            store_watches: Gauge::default(),
            leader: Gauge::default(),
            placement_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            host_stats: RwLock::new(HashMap::new()),
        }
    }

    /// Count one answered API request. `route` is the router's template
    /// (`/v1/projects/{project}/instances`), never the concrete path. On
    /// every request's path: allocates nothing and takes no lock
    /// (`requests.rs`).
    pub fn observe_request(&self, route: &str, method: &Method, status: u16, took: Duration) {
        if let Some(route) = self.request_route(route) {
            route.observe(method, status, took);
        }
    }

    /// The request series of route template `route`, to count a request
    /// with once it is answered; `None` when metrics are off.
    pub fn request_route(&self, route: &str) -> Option<&'static requests::Route> {
        self.request_metrics().map(|r| r.route(route))
    }

    /// The request counters, for the request path; `None` when metrics
    /// are off.
    pub fn request_metrics(&self) -> Option<&'static requests::RequestMetrics> {
        self.enabled.then_some(self.requests)
    }

    /// One store write (`create`, `update`, `delete`, `txn`) took `took`.
    pub fn observe_store_write(&self, op: &'static str, took: Duration) {
        if self.enabled {
            self.store_write_seconds
                .get_or_create(&[("op", op)])
                .observe(took.as_secs_f64());
        }
    }

    /// A store watch opened (`+1`) or ended (`-1`).
    pub fn add_store_watches(&self, delta: i64) {
        self.store_watches.inc_by(delta);
    }

    /// This server became (`true`) or stopped being the leader.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The scheduler bound an instance `waited` after it was created.
    pub fn observe_placement(&self, waited: Duration) {
        if self.enabled {
            self.placement_seconds.observe(waited.as_secs_f64());
        }
    }

    /// Keep `stats` as `host`'s latest report, replacing the one before.
    /// With metrics off nothing would read it, so it is not kept.
    pub fn record_host_stats(&self, host: &str, stats: HostStats) {
        if !self.enabled {
            return;
        }
        if let Ok(mut all) = self.host_stats.write() {
            all.insert(host.to_string(), (Instant::now(), stats));
        }
    }

    /// The latest statistics of every instance, by instance id, from
    /// reports younger than [`STATS_MAX_AGE`].
    pub fn fresh_instance_stats(&self) -> HashMap<String, nimbus_api::stats::InstanceStats> {
        let mut by_id = HashMap::new();
        if let Ok(all) = self.host_stats.read() {
            for (at, report) in all.values() {
                if at.elapsed() > STATS_MAX_AGE {
                    continue;
                }
                for i in &report.instances {
                    by_id.insert(i.id.clone(), i.clone());
                }
            }
        }
        by_id
    }

    /// The text exposition of everything: the counters kept here and the
    /// series rendered from `snapshot`.
    pub fn encode(&self, snapshot: snapshot::Snapshot) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("nimbus");
        registry.register_collector(Box::new(requests::RequestCollector(self.requests)));
        registry.register(
            "store_write_duration_seconds",
            "Time of one store write, by operation",
            self.store_write_seconds.clone(),
        );
        registry.register(
            "store_watches",
            "Store watches open now",
            self.store_watches.clone(),
        );
        registry.register(
            "leader",
            "1 while this server is the elected leader, running the scheduler and the controllers",
            self.leader.clone(),
        );
        registry.register(
            "scheduler_placement_duration_seconds",
            "Time from an instance's creation to its binding to a host",
            self.placement_seconds.clone(),
        );
        registry.register_collector(Box::new(render::Current(snapshot)));
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}
