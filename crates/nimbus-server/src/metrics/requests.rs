//! API requests counted on the request path: by route template, method and
//! status, with a latency histogram per route template and method.
//!
//! Every answered request passes through [`RequestMetrics::observe`], so
//! it must cost next to nothing: it allocates nothing and takes no lock.
//! The series of a route template are made once, the first time it is
//! seen, and kept in a table that readers load without locking
//! (`arc-swap`; a new route copies the table, which happens once per route
//! and the routes are bounded by the router's). A route's series live as
//! long as the process (they are never dropped, as routes never go), so a
//! request holds a plain reference to them: no reference count bounces
//! between cores. Counting is atomic adds. `prometheus-client`'s `Family` would build a label set (three
//! `String`s) and take its lock for each request, and its `Histogram`
//! takes a write lock per observation; they are kept for the rare series
//! elsewhere. The exposition is the same: `nimbus_api_requests_total` and
//! `nimbus_api_request_duration_seconds`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

/// Methods with a series of their own; anything else counts as `other`, so
/// a client inventing methods cannot grow the label set.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// Upper bounds of the latency buckets: 0.25 ms doubling to about 8 s
/// (16 buckets), then `+Inf`.
const BUCKETS: usize = 16;
const FIRST_BOUND_NS: u64 = 250_000;

/// The bucket of a request that took `ns` nanoseconds: the first whose
/// bound (`FIRST_BOUND_NS << i`) is at least `ns`; `BUCKETS` is `+Inf`.
fn bucket_of(ns: u64) -> usize {
    if ns <= FIRST_BOUND_NS {
        return 0;
    }
    // The bit length of ceil(ns / FIRST_BOUND_NS) - 1 is the doubling needed.
    let above = (ns - 1) / FIRST_BOUND_NS;
    let index = (u64::BITS - above.leading_zeros()) as usize;
    index.min(BUCKETS)
}

/// Bound `i` in seconds, computed as `exponential_buckets(0.00025, 2, 16)`
/// does, so the `le` labels read as they always have.
fn bound_seconds(i: usize) -> f64 {
    0.000_25 * 2.0_f64.powf(i as f64)
}

/// A latency histogram of atomics.
struct Latency {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Sum (seconds), count and the (non-cumulative) buckets as the encoder
    /// takes them. The count is the buckets' total, so the exposition
    /// stays consistent while requests are counted during the scrape.
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bound = if i == BUCKETS {
                    f64::MAX
                } else {
                    bound_seconds(i)
                };
                (bound, b.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// Status slots per (route, method): far more distinct statuses than one
/// route answers. Further ones are counted in `overflow`.
const STATUS_SLOTS: usize = 16;

/// Counts by status in a small open-addressed table of atomics: a slot is
/// claimed once (compare-exchange of its status from 0), then only added to.
struct StatusCounts {
    slots: [(AtomicU16, AtomicU64); STATUS_SLOTS],
    overflow: Mutex<HashMap<u16, u64>>,
}

impl StatusCounts {
    fn new() -> StatusCounts {
        StatusCounts {
            slots: std::array::from_fn(|_| (AtomicU16::new(0), AtomicU64::new(0))),
            overflow: Mutex::new(HashMap::new()),
        }
    }

    fn inc(&self, status: u16) {
        let start = usize::from(status) % STATUS_SLOTS;
        for probe in 0..STATUS_SLOTS {
            let (code, count) = &self.slots[(start + probe) % STATUS_SLOTS];
            let seen = match code.load(Ordering::Acquire) {
                0 => match code.compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => status,
                    Err(other) => other,
                },
                seen => seen,
            };
            if seen == status {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut overflow) = self.overflow.lock() {
            *overflow.entry(status).or_default() += 1;
        }
    }

    /// Every status seen, with its count, in status order.
    fn read(&self) -> Vec<(u16, u64)> {
        let mut all: Vec<(u16, u64)> = self
            .slots
            .iter()
            .filter_map(|(code, count)| match code.load(Ordering::Acquire) {
                0 => None,
                code => Some((code, count.load(Ordering::Relaxed))),
            })
            .collect();
        if let Ok(overflow) = self.overflow.lock() {
            all.extend(overflow.iter().map(|(s, c)| (*s, *c)));
        }
        all.sort_unstable();
        all
    }
}

/// The series of one (route, method).
struct Series {
    statuses: StatusCounts,
    latency: Latency,
}

/// The series of one route template, made per method when first used.
pub struct Route {
    methods: [OnceLock<Box<Series>>; METHODS.len()],
}

impl Route {
    fn new() -> Route {
        Route {
            methods: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Count one answered request of this route.
    pub fn observe(&self, method: &Method, status: u16, took: Duration) {
        let series = self.methods[method_index(method)].get_or_init(|| {
            Box::new(Series {
                statuses: StatusCounts::new(),
                latency: Latency::new(),
            })
        });
        series.statuses.inc(status);
        series.latency.observe(took);
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").finish_non_exhaustive()
    }
}

/// Requests by route template, method and status, and their latency.
pub struct RequestMetrics {
    /// Route template → its series. Read without a lock on every request;
    /// replaced by a copy with one more route when a route is first seen.
    routes: ArcSwap<HashMap<Box<str>, &'static Route>>,
    /// Serialises those copies, so no new route is lost to a race.
    adding: Mutex<()>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            routes: ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("routes", &self.routes.load().len())
            .finish()
    }
}

impl RequestMetrics {
    /// The series of route template `route` (`/v1/projects/{project}/instances`,
    /// never a concrete path), made the first time it is asked for.
    pub fn route(&self, route: &str) -> &'static Route {
        let known = self.routes.load().get(route).copied();
        match known {
            Some(r) => r,
            None => self.add_route(route),
        }
    }

    /// Count one answered request.
    pub fn observe(&self, route: &str, method: &Method, status: u16, took: Duration) {
        self.route(route).observe(method, status, took);
    }

    /// The first request of `route`: a copy of the table with it added.
    /// The route's series are leaked on purpose: they are kept for the
    /// process's life anyway, and routes are bounded by the router's.
    #[cold]
    fn add_route(&self, route: &str) -> &'static Route {
        let _adding = self.adding.lock();
        let current = self.routes.load();
        if let Some(r) = current.get(route) {
            return r;
        }
        let added: &'static Route = Box::leak(Box::new(Route::new()));
        let mut next = HashMap::clone(&current);
        next.insert(route.into(), added);
        self.routes.store(Arc::new(next));
        added
    }

    /// Every (route, method) seen so far, in route order.
    fn each_series(&self) -> Vec<(Box<str>, &'static str, &'static Series)> {
        let routes = self.routes.load();
        let mut all: Vec<_> = routes
            .iter()
            .flat_map(|(name, route)| {
                let route: &'static Route = route;
                route
                    .methods
                    .iter()
                    .enumerate()
                    .filter_map(|(m, s)| Some((name.clone(), METHODS[m], s.get()?.as_ref())))
            })
            .collect();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }
}

/// Encodes [`RequestMetrics`] at a scrape.
#[derive(Debug)]
pub struct RequestCollector(pub &'static RequestMetrics);

impl Collector for RequestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.each_series();
        if all.is_empty() {
            return Ok(());
        }
        let mut counters = encoder.encode_descriptor(
            "api_requests",
            "API requests answered, by route template, method and status",
            None,
            MetricType::Counter,
        )?;
        for (route, method, s) in &all {
            for (status, count) in s.statuses.read() {
                let status = status.to_string();
                let labels = [
                    ("route", route.as_ref()),
                    ("method", *method),
                    ("status", status.as_str()),
                ];
                ConstCounter::new(count).encode(counters.encode_family(&labels)?)?;
            }
        }
        let mut histograms = encoder.encode_descriptor(
            "api_request_duration_seconds",
            "Time to answer an API request (to the response head), by route template and method",
            None,
            MetricType::Histogram,
        )?;
        for (route, method, s) in &all {
            let (sum, count, buckets) = s.latency.read();
            let labels = [("route", route.as_ref()), ("method", *method)];
            histograms
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_hold_their_upper_bound() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(250_000), 0, "0.25 ms is in le=0.00025");
        assert_eq!(bucket_of(250_001), 1);
        assert_eq!(bucket_of(500_000), 1);
        assert_eq!(bucket_of(1_000_000), 2);
        assert_eq!(bucket_of(1_000_001), 3);
        assert_eq!(bucket_of(250_000 << 15), 15, "the last bound, about 8.2 s");
        assert_eq!(bucket_of((250_000 << 15) + 1), BUCKETS, "+Inf");
        assert_eq!(bucket_of(u64::MAX), BUCKETS);
        for i in 0..BUCKETS {
            let bound_ns = (bound_seconds(i) * 1e9).round() as u64;
            assert_eq!(bucket_of(bound_ns), i, "bound {i}");
            assert_eq!(bucket_of(bound_ns + 1), i + 1, "just above bound {i}");
        }
    }

    #[test]
    fn statuses_beyond_the_slots_are_still_counted() {
        let counts = StatusCounts::new();
        for status in 100..140u16 {
            for _ in 0..(status - 99) {
                counts.inc(status);
            }
        }
        let read = counts.read();
        assert_eq!(read.len(), 40);
        for (status, count) in read {
            assert_eq!(count, u64::from(status - 99), "status {status}");
        }
    }

    #[test]
    fn concurrent_first_requests_of_new_routes_lose_nothing() {
        let metrics = Arc::new(RequestMetrics::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let route = format!("/r{}", (i + t) % 50);
                        metrics.observe(&route, &Method::GET, 200, Duration::from_micros(10));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = metrics
            .each_series()
            .iter()
            .map(|(_, _, s)| s.statuses.read().iter().map(|(_, c)| c).sum::<u64>())
            .sum();
        assert_eq!(metrics.each_series().len(), 50);
        assert_eq!(total, 800);
    }
}
