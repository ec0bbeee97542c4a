//! API throughput and tail latency under 50 concurrent clients (wrk over
//! the TLS port): GET of one instance, and a list of 1,000 instances; then
//! the cost of metrics, twice:
//! - per request, in isolation: the server's request counting
//!   (`Metrics::observe_request`) timed over many calls, next to the
//!   `prometheus-client` families it replaced, in ns per request;
//! - end to end: the same GET load on a server with metrics on (its
//!   agent pushing statistics every 2 s as in production, `/metrics`
//!   scraped every second as Prometheus would) and on one started with
//!   `--metrics=false`. By default both servers run on one core and the
//!   load on another, each server loaded in turn, in alternating order;
//!   `NIMBUS_BENCH_API_METRICS_MODE=simultaneous` loads both at the same
//!   time instead, unpinned, so whatever else a shared machine does falls
//!   on both alike. It prints
//!   each round's p99 and the server's CPU time per request, the median of the rounds' p99s, the p99 of all
//!   requests pooled, and the on/off ratios (goal: under 1.05), with the
//!   geometric mean of the paired rounds' ratios and its 95% interval, which
//!   says whether the rounds can show a 5% cost at all.
//!
//! Any non-2xx answer fails the benchmark: a fast error is not a result.
//!
//! Run: `cargo bench -p nimbus-cli --bench api` (as root, needs `wrk`).
//! Knobs: `NIMBUS_BENCH_API_SECONDS` (each wrk run of the first part,
//! default 10), `NIMBUS_BENCH_API_INSTANCES` (default 1000),
//! `NIMBUS_BENCH_API_ROUNDS` (metrics on/off rounds, default 8),
//! `NIMBUS_BENCH_API_ROUND_SECONDS` (each round, default 5),
//! `NIMBUS_BENCH_API_ONLY` (`record`: only the per-request timing;
//! `metrics`: skip the GET/LIST part; `stores`: only the same API on
//! SQLite and on a 3-member etcd, creates and GETs side by side).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct WrkResult {
    requests_per_sec: f64,
    p99_ms: f64,
    errors: String,
    /// With a quantile file asked for: the latency (ms) at each point of
    /// [`QUANTILES`], and how many requests were measured.
    quantiles: Option<Quantiles>,
}

/// One run's latency distribution, as wrk's script API gives it: the
/// latency at fixed percentiles (its raw histogram is not readable from
/// the script in Debian's wrk).
#[derive(Clone, Debug)]
struct Quantiles {
    requests: u64,
    /// (percentile, latency in ms), percentile ascending.
    points: Vec<(f64, f64)>,
}

/// Writes the latency at percentiles 50..90 by 1 and 90..100 by 0.01 to
/// `$NIMBUS_WRK_QUANTILES`, after the run.
const QUANTILE_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local f = assert(io.open(os.getenv("NIMBUS_WRK_QUANTILES"), "w"))
  f:write("requests ", summary.requests, "\n")
  for p = 50, 89 do
    f:write(string.format("%.2f %d\n", p, latency:percentile(p)))
  end
  for i = 0, 1000 do
    local p = 90 + i / 100
    f:write(string.format("%.2f %d\n", p, latency:percentile(p)))
  end
  f:close()
end
"#;

/// Each request creates a security group of a new name: the thread's
/// number and a counter.
const CREATE_SCRIPT: &str = r#"
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
init = function(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
request = function()
  n = n + 1
  local body = string.format('{"name":"g-%d-%d","spec":{"description":"bench"}}', tid, n)
  return wrk.format(nil, nil, nil, body)
end
"#;

fn parse_quantiles(text: &str) -> Option<Quantiles> {
    let mut lines = text.lines();
    let requests = lines
        .next()?
        .strip_prefix("requests ")?
        .trim()
        .parse()
        .ok()?;
    let points = lines
        .filter_map(|l| {
            let (p, us) = l.split_once(' ')?;
            Some((p.parse().ok()?, us.trim().parse::<f64>().ok()? / 1000.0))
        })
        .collect::<Vec<_>>();
    (!points.is_empty()).then_some(Quantiles { requests, points })
}

impl Quantiles {
    /// The fraction of this run's requests that took at most `ms`, as far
    /// as the percentile points tell (a lower bound between points).
    fn fraction_at_most(&self, ms: f64) -> f64 {
        self.points
            .iter()
            .take_while(|(_, at)| *at <= ms)
            .last()
            .map_or(0.0, |(p, _)| p / 100.0)
    }
}

/// The `q` quantile (0.99) of all runs' requests together, each run
/// weighted by its number of requests: the least latency at which the
/// pooled fraction reaches `q`.
fn pooled_quantile(runs: &[Quantiles], q: f64) -> f64 {
    let total: u64 = runs.iter().map(|r| r.requests).sum();
    let mut candidates: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|(_, ms)| *ms))
        .collect();
    candidates.sort_by(|a, b| a.total_cmp(b));
    candidates.dedup();
    candidates
        .into_iter()
        .find(|ms| {
            let below: f64 = runs
                .iter()
                .map(|r| r.requests as f64 * r.fraction_at_most(*ms))
                .sum();
            below >= q * total as f64 - 1e-9
        })
        .unwrap_or(f64::NAN)
}

fn parse_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    if let Some(v) = t.strip_suffix("us") {
        return v.parse::<f64>().ok().map(|x| x / 1000.0);
    }
    if let Some(v) = t.strip_suffix("ms") {
        return v.parse().ok();
    }
    if let Some(v) = t.strip_suffix('s') {
        return v.parse::<f64>().ok().map(|x| x * 1000.0);
    }
    None
}

fn wrk(url: &str, token: &str, seconds: u32, clients: u32, gzip: bool) -> WrkResult {
    wrk_with(url, token, seconds, clients, gzip, None)
}

/// wrk sending POSTs of new security groups (each a new name) to `url`,
/// with the run's latency distribution written in `dir`.
fn wrk_creates(url: &str, token: &str, seconds: u32, clients: u32, dir: &Path) -> WrkResult {
    wrk_scripted(
        url,
        token,
        seconds,
        clients,
        false,
        Some(dir),
        CREATE_SCRIPT,
    )
}

/// wrk; with `quantiles_dir`, also the run's latency distribution.
fn wrk_with(
    url: &str,
    token: &str,
    seconds: u32,
    clients: u32,
    gzip: bool,
    quantiles_dir: Option<&Path>,
) -> WrkResult {
    wrk_scripted(url, token, seconds, clients, gzip, quantiles_dir, "")
}

/// [`wrk_with`] with `lua` added to the script (it needs `quantiles_dir`).
fn wrk_scripted(
    url: &str,
    token: &str,
    seconds: u32,
    clients: u32,
    gzip: bool,
    quantiles_dir: Option<&Path>,
    lua: &str,
) -> WrkResult {
    let threads = clients.min(2);
    let mut cmd = Command::new("wrk");
    let out_file = quantiles_dir.map(|dir| {
        let script = dir.join("quantiles.lua");
        std::fs::write(&script, format!("{lua}\n{QUANTILE_SCRIPT}")).expect("write the wrk script");
        cmd.arg("-s").arg(script);
        let out = dir.join("quantiles.txt");
        let _ = std::fs::remove_file(&out);
        cmd.env("NIMBUS_WRK_QUANTILES", &out);
        out
    });
    let out = cmd
        .args([
            &format!("-t{threads}"),
            &format!("-c{clients}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {token}"))
        .args(if gzip {
            vec!["-H", "Accept-Encoding: gzip"]
        } else {
            vec![]
        })
        .arg(url)
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(parse_ms)
        .unwrap_or(f64::NAN);
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        panic!("{url}: the server answered with errors under load ({}); the benchmark measures only successful calls:\n{text}", line.trim());
    }
    assert!(
        rps > 0.0,
        "{url}: wrk completed no request:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let errors = text
        .lines()
        .filter(|l| l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    let quantiles = out_file.map(|f| {
        let text = std::fs::read_to_string(&f).expect("wrk wrote no quantiles");
        parse_quantiles(&text).unwrap_or_else(|| panic!("wrk's quantiles unreadable:\n{text}"))
    });
    WrkResult {
        requests_per_sec: rps,
        p99_ms: p99,
        errors,
        quantiles,
    }
}

fn knob(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn create_stopped_instances(cloud: &common::Cloud, count: usize) {
    for i in 0..count {
        support::create_instance(
            cloud,
            "default",
            &format!("i-{i:04}"),
            &["true"],
            serde_json::json!({"desired_state": "stopped"}),
        );
    }
    // Let the scheduler and agent settle so the benchmark measures the API alone.
    common::wait_until(Duration::from_secs(300), "instances to settle", || {
        let v = cloud.json(&["instance", "list"]).ok()?;
        let items = v["items"].as_array()?;
        (items.len() == count && items.iter().all(|i| i["status"]["phase"] == "stopped"))
            .then_some(())
    });
}

/// Scrapes `/metrics` every second (as Prometheus would) until finished;
/// says how many scrapes it made and how long each took.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<f64>>>,
}

impl Scraper {
    fn start(cloud: &common::Cloud) -> Scraper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let data_dir = cloud.data_dir().to_path_buf();
        let token = cloud.admin_token();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut took_ms = vec![];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let (status, body) = common::http_at(
                    &data_dir,
                    "GET",
                    "/metrics",
                    Some(&token),
                    b"",
                    "application/json",
                );
                assert_eq!(status, 200, "scrape: {body}");
                assert!(
                    body.contains("nimbus_api_requests_total"),
                    "the scrape lacks the request counters:\n{body}"
                );
                took_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_secs(1));
            }
            took_ms
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("scraper"))
            .unwrap_or_default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("api: bench");
        return;
    }
    let only = std::env::var("NIMBUS_BENCH_API_ONLY").unwrap_or_default();
    record_cost();
    if only == "record" {
        return;
    }
    if !support::have("wrk") {
        eprintln!("SKIPPED: wrk is not installed (scripts/deps installs it)");
        return;
    }
    let seconds = knob("NIMBUS_BENCH_API_SECONDS", 10).max(1);
    let count = knob("NIMBUS_BENCH_API_INSTANCES", 1000).max(1) as usize;
    let rounds = knob("NIMBUS_BENCH_API_ROUNDS", 8).max(1);
    let round_seconds = knob("NIMBUS_BENCH_API_ROUND_SECONDS", 5).max(1);
    if only == "stores" {
        stores(seconds);
        return;
    }
    let cloud = common::Cloud::start();
    create_stopped_instances(&cloud, count);
    if only != "metrics" {
        get_and_list(&cloud, count, seconds);
    }
    metrics_cost(&cloud, count, round_seconds, rounds);
}

/// The same API on the embedded SQLite store and on a 3-member etcd
/// cluster (Debian's etcd-server on loopback), in the same run: creates
/// (a new security group per request) and GETs of one, 50 clients each.
fn stores(seconds: u32) {
    let etcd = common::etcd::EtcdCluster::start(3);
    let sqlite = common::Cloud::start();
    let on_etcd = common::Cloud::start_with(&["--store", &etcd.url()]);
    let mut rows = vec![];
    for cloud in [&sqlite, &on_etcd] {
        let token = cloud.admin_token();
        let base = format!(
            "https://127.0.0.1:{}/v1/projects/default/secgroups",
            cloud.port
        );
        let (status, body) = common::http(
            cloud,
            "POST",
            "/v1/projects/default/secgroups",
            Some(&token),
            br#"{"name":"probe","spec":{"description":"read by the GET load"}}"#,
        );
        assert!(status == 201 || status == 200, "creating the probe: {body}");
        let scratch = tempfile::tempdir().expect("scratch dir");
        let create = wrk_creates(&base, &token, seconds, 50, scratch.path());
        let get = wrk(&format!("{base}/probe"), &token, seconds, 50, false);
        rows.push((create, get));
    }
    println!(
        "\n== API on SQLite and on etcd (3 members on loopback), 50 clients, {seconds} s each"
    );
    println!(
        "{:<28} {:>14} {:>12} {:>14} {:>12} {:>8} {:>8}",
        "", "SQLite req/s", "p99", "etcd req/s", "p99", "req/s", "p99"
    );
    let (a, b) = (&rows[0], &rows[1]);
    for (label, s, e) in [
        ("create a security group", &a.0, &b.0),
        ("GET one", &a.1, &b.1),
    ] {
        println!(
            "{label:<28} {:>14.0} {:>9.2} ms {:>14.0} {:>9.2} ms {:>8.2} {:>8.2}",
            s.requests_per_sec,
            s.p99_ms,
            e.requests_per_sec,
            e.p99_ms,
            e.requests_per_sec / s.requests_per_sec,
            e.p99_ms / s.p99_ms
        );
    }
    println!("(last two columns: etcd / SQLite)");
}

/// GET one instance and LIST all of them under load.
fn get_and_list(cloud: &common::Cloud, count: usize, seconds: u32) {
    let token = cloud.admin_token();
    let base = format!(
        "https://127.0.0.1:{}/v1/projects/default/instances",
        cloud.port
    );
    let one = format!("i-{:04}", count / 2);
    let get = wrk(&format!("{base}/{one}"), &token, seconds, 50, false);
    let list = wrk(&format!("{base}?limit={count}"), &token, seconds, 50, false);
    let list_gzip = wrk(&format!("{base}?limit={count}"), &token, seconds, 50, true);
    let list_one = wrk(
        &format!("{base}?limit={count}"),
        &token,
        seconds.div_ceil(2),
        1,
        false,
    );
    let list_path = format!("/v1/projects/default/instances?limit={count}");
    let body = common::http(cloud, "GET", &list_path, Some(&token), b"").1;
    println!("\n== API (wrk over TLS on loopback, sharing the 2 cores with the server)");
    println!("{:<40} {:>12} {:>10}", "", "requests/s", "p99");
    let row = |label: String, r: &WrkResult| {
        println!(
            "{label:<40} {:>12.0} {:>8.2} ms",
            r.requests_per_sec, r.p99_ms
        );
    };
    row("GET one instance, 50 clients".into(), &get);
    row(format!("LIST {count} instances, 50 clients"), &list);
    row(
        format!("LIST {count}, 50 clients, gzip accepted"),
        &list_gzip,
    );
    row(format!("LIST {count} instances, 1 client"), &list_one);
    println!(
        "list response: {} KiB; with 50 clients {:.0} MiB/s go through TLS",
        body.len() / 1024,
        list.requests_per_sec * body.len() as f64 / (1024.0 * 1024.0)
    );
    println!("goal: p99 <= 20 ms with 50 clients");
    for (what, r) in [
        ("get", &get),
        ("list", &list),
        ("list, 1 client", &list_one),
        ("list, gzip", &list_gzip),
    ] {
        if !r.errors.is_empty() {
            println!("{what}: {}", r.errors);
        }
    }
}

/// The request counting the server does per answered request, timed in
/// isolation: `Metrics::observe_request` over a realistic mix of routes,
/// from one thread and from two at once (the machine's cores, contending
/// for the same series), next to the `prometheus-client` families the
/// server used before (label sets of `String`s, the family's lock, the
/// histogram's lock), measured in the same run.
fn record_cost() {
    use nimbus_server::metrics::Metrics;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

    const ROUTES: [&str; 4] = [
        "/v1/projects/{project}/instances/{name}",
        "/v1/projects/{project}/instances",
        "/v1/hosts/{host}/stats",
        "/v1/projects/{project}/instances/{name}/logs",
    ];
    let calls: u64 = knob("NIMBUS_BENCH_API_RECORD_CALLS", 2_000_000)
        .max(1000)
        .into();
    let took = Duration::from_micros(900);

    type RequestLabels = [(&'static str, String); 3];
    type RouteLabels = [(&'static str, String); 2];
    struct Families {
        requests: Family<RequestLabels, Counter>,
        seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    }
    fn histogram() -> Histogram {
        Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
    }
    let families = std::sync::Arc::new(Families {
        requests: Family::default(),
        seconds: Family::new_with_constructor(histogram),
    });
    let metrics = std::sync::Arc::new(Metrics::new(true));

    // ns per call, `threads` threads each making `calls` calls at once.
    let time = |threads: u64, f: std::sync::Arc<dyn Fn(u64) + Send + Sync>| -> f64 {
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..calls {
                        f(i + t);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("timing thread");
        }
        started.elapsed().as_nanos() as f64 / calls as f64
    };
    let new_way: std::sync::Arc<dyn Fn(u64) + Send + Sync> = {
        let m = metrics.clone();
        std::sync::Arc::new(move |i| {
            // The middleware's work: look the route up, count the answer.
            let route = std::hint::black_box(ROUTES[(i % 4) as usize]);
            if let Some(series) = m.request_route(route) {
                series.observe(&hyper::Method::GET, 200, took);
            }
        })
    };
    let old_way: std::sync::Arc<dyn Fn(u64) + Send + Sync> = {
        let f = families.clone();
        std::sync::Arc::new(move |i| {
            // As the middleware did: the template copied out of the
            // request, then label sets built for each family.
            let route = std::hint::black_box(ROUTES[(i % 4) as usize]).to_owned();
            let method = hyper::Method::GET;
            f.requests
                .get_or_create(&[
                    ("route", route.to_string()),
                    ("method", method.as_str().to_string()),
                    ("status", 200.to_string()),
                ])
                .inc();
            f.seconds
                .get_or_create(&[
                    ("route", route.to_string()),
                    ("method", method.as_str().to_string()),
                ])
                .observe(took.as_secs_f64());
        })
    };
    // Warm both (first calls make the series), then measure.
    time(1, new_way.clone());
    time(1, old_way.clone());
    let new_1 = time(1, new_way.clone());
    let old_1 = time(1, old_way.clone());
    let new_2 = time(2, new_way);
    let old_2 = time(2, old_way);
    println!("\n== Request counting per answered request ({calls} calls per thread)");
    println!("{:<52} {:>12} {:>12}", "", "1 thread", "2 threads");
    println!(
        "{:<52} {:>9.1} ns {:>9.1} ns",
        "Metrics::observe_request (atomics, no allocation)", new_1, new_2
    );
    println!(
        "{:<52} {:>9.1} ns {:>9.1} ns",
        "prometheus-client families, String labels (before)", old_1, old_2
    );
    println!(
        "ratio now/before: {:.2} (1 thread), {:.2} (2 threads); 2 threads: wall time per call of each thread",
        new_1 / old_1,
        new_2 / old_2
    );
}

/// The same GET load on `on` (metrics on, its agent pushing statistics,
/// `/metrics` scraped every second) and on a second server with
/// `--metrics=false` holding the same instances, both loaded at once in
/// each round (each by its own wrk with 50 connections), with
/// each round's p99, the median of those, the p99 of all requests pooled,
/// and the on/off ratios.
fn metrics_cost(on: &common::Cloud, count: usize, seconds: u32, rounds: u32) {
    let off = common::Cloud::start_with(&["--metrics=false"]);
    create_stopped_instances(&off, count);
    let one = format!("i-{:04}", count / 2);
    let url = |c: &common::Cloud| {
        format!(
            "https://127.0.0.1:{}/v1/projects/default/instances/{one}",
            c.port
        )
    };
    // The "on" server's agent has pushed statistics: its push runs as in
    // production during the rounds.
    common::wait_until(
        Duration::from_secs(30),
        "the agent's first statistics report",
        || {
            let (status, body) = common::http(on, "GET", "/metrics", Some(&on.admin_token()), b"");
            (status == 200 && body.contains("route=\"/v1/hosts/{host}/stats\"")).then_some(())
        },
    );
    let (on_scratch, off_scratch) = (
        tempfile::tempdir().expect("scratch dir"),
        tempfile::tempdir().expect("scratch dir"),
    );
    let (on_token, off_token) = (on.admin_token(), off.admin_token());
    #[derive(Default)]
    struct Side {
        p99_ms: Vec<f64>,
        rps: Vec<f64>,
        quantiles: Vec<Quantiles>,
        /// The server process's CPU time per answered request, in µs.
        cpu_us: Vec<f64>,
    }
    let (mut a, mut b) = (Side::default(), Side::default());
    let mut scrape_ms = vec![];
    let pid = |c: &common::Cloud| c.daemon.as_ref().expect("the daemon").id();
    let (on_pid, off_pid) = (pid(on), pid(&off));
    let pinned = Pinning::choose(on_pid, off_pid);
    for round in 0..rounds {
        let cpu_before = (cpu_seconds(on_pid), cpu_seconds(off_pid));
        let on_load = || {
            let scraper = Scraper::start(on);
            let run = wrk_with(
                &url(on),
                &on_token,
                seconds,
                50,
                false,
                Some(on_scratch.path()),
            );
            (run, scraper.finish())
        };
        let off_load = || {
            wrk_with(
                &url(&off),
                &off_token,
                seconds,
                50,
                false,
                Some(off_scratch.path()),
            )
        };
        let ((on_run, scrapes), off_run) = if pinned.is_some() {
            // One server at a time on its own core, the load on the other,
            // in alternating order so a drift of the machine falls on both.
            if round % 2 == 0 {
                let a = on_load();
                (a, off_load())
            } else {
                let b = off_load();
                (on_load(), b)
            }
        } else {
            // Both loads at once: whatever else the machine does in this
            // round falls on both servers alike, so the round's on/off
            // ratio shows the metrics' cost rather than the machine's
            // drift between rounds.
            std::thread::scope(|s| {
                let off_run = s.spawn(off_load);
                let on_run = on_load();
                (on_run, off_run.join().expect("the --metrics=false load"))
            })
        };
        scrape_ms.extend(scrapes);
        let cpu = [
            cpu_seconds(on_pid) - cpu_before.0,
            cpu_seconds(off_pid) - cpu_before.1,
        ];
        for ((side, r), cpu) in [(&mut a, on_run), (&mut b, off_run)].into_iter().zip(cpu) {
            let requests = r.requests_per_sec * f64::from(seconds);
            side.cpu_us.push(cpu * 1e6 / requests);
            side.p99_ms.push(r.p99_ms);
            side.rps.push(r.requests_per_sec);
            side.quantiles.extend(r.quantiles);
        }
    }
    // Metrics off really are off on `off`: its scrape is refused.
    let (status, _) = common::http(&off, "GET", "/metrics", Some(&off_token), b"");
    assert_eq!(status, 404, "the --metrics=false server serves /metrics");

    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (on_median, off_median) = (median(a.p99_ms.clone()), median(b.p99_ms.clone()));
    let (on_pooled, off_pooled) = (
        pooled_quantile(&a.quantiles, 0.99),
        pooled_quantile(&b.quantiles, 0.99),
    );
    let (on_rps, off_rps) = (median(a.rps.clone()), median(b.rps.clone()));
    match &pinned {
        Some(p) => println!(
            "\n== Metrics cost: GET one instance, 50 clients, {rounds} rounds of {seconds} s on each server in turn; servers on CPU {}, wrk and scraper on CPU {}",
            p.server_cpu, p.load_cpu
        ),
        None => println!(
            "\n== Metrics cost: GET one instance, 50 clients on each server at once, {rounds} rounds of {seconds} s"
        ),
    }
    println!(
        "metrics on  (agent pushing stats every 2 s, {} scrapes of /metrics, median {:.1} ms each):",
        scrape_ms.len(),
        median(scrape_ms.clone())
    );
    println!("  p99 per round (ms): {}", fmt(&a.p99_ms));
    println!("  requests/s per round: {}", fmt(&a.rps));
    println!("--metrics=false:");
    println!("  p99 per round (ms): {}", fmt(&b.p99_ms));
    println!("  requests/s per round: {}", fmt(&b.rps));
    println!("{:<34} {:>10} {:>10} {:>8}", "", "on", "off", "on/off");
    println!(
        "{:<34} {:>7.2} ms {:>7.2} ms {:>8.3}",
        "median of the rounds' p99",
        on_median,
        off_median,
        on_median / off_median
    );
    println!(
        "{:<34} {:>7.2} ms {:>7.2} ms {:>8.3}",
        "p99 of all requests pooled",
        on_pooled,
        off_pooled,
        on_pooled / off_pooled
    );
    println!(
        "{:<34} {:>10.0} {:>10.0} {:>8.3}",
        "median requests/s",
        on_rps,
        off_rps,
        on_rps / off_rps
    );
    let (on_cpu, off_cpu) = (median(a.cpu_us.clone()), median(b.cpu_us.clone()));
    println!(
        "{:<34} {:>7.1} us {:>7.1} us {:>8.3}",
        "server CPU per request (median)",
        on_cpu,
        off_cpu,
        on_cpu / off_cpu
    );
    println!("  CPU us/request per round, on:  {}", fmt(&a.cpu_us));
    println!("  CPU us/request per round, off: {}", fmt(&b.cpu_us));
    let met = |ratio: f64| if ratio < 1.05 { "met" } else { "NOT met" };
    println!(
        "goal: p99 on/off < 1.05: {} by the median of rounds ({:.3}), {} by the pooled p99 ({:.3})",
        met(on_median / off_median),
        on_median / off_median,
        met(on_pooled / off_pooled),
        on_pooled / off_pooled
    );
    let (mean, low, high) = paired_ratio_interval(&a.p99_ms, &b.p99_ms);
    let verdict = if high < 1.05 {
        "shown under 1.05"
    } else if low >= 1.05 {
        "shown over 1.05"
    } else {
        "NOT shown either way: the rounds vary more than the cost; run more rounds"
    };
    println!(
        "paired rounds: geometric mean of p99 on/off {mean:.3}, 95% interval {low:.3}..{high:.3}: {verdict}"
    );
}

/// User plus system CPU time the process `pid` (every thread) has used, in
/// seconds.
/// The metrics-cost rounds with the servers on one core and the load
/// (wrk, the scraper) on another, so the two never compete for a core and
/// a round's tail shows the server's own work. The default on a machine of
/// two cores or more; `NIMBUS_BENCH_API_METRICS_MODE=simultaneous` loads
/// both servers at once instead, unpinned.
struct Pinning {
    server_cpu: usize,
    load_cpu: usize,
}

impl Pinning {
    fn choose(on_pid: u32, off_pid: u32) -> Option<Pinning> {
        let mode = std::env::var("NIMBUS_BENCH_API_METRICS_MODE").unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if mode == "simultaneous" || cpus < 2 {
            return None;
        }
        let p = Pinning {
            server_cpu: cpus - 1,
            load_cpu: 0,
        };
        // Every thread of each server, the agent's included.
        for pid in [on_pid, off_pid] {
            let status = Command::new("taskset")
                .args([
                    "-a",
                    "-c",
                    "-p",
                    &p.server_cpu.to_string(),
                    &pid.to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run taskset (util-linux)");
            assert!(status.success(), "taskset of the server {pid} failed");
        }
        // This thread, and so the wrk processes and scraper thread it starts.
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
        // within it, and sched_setaffinity only reads it.
        let ok = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(p.load_cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
        assert!(ok, "pinning the load to CPU {}", p.load_cpu);
        Some(p)
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon's stat");
    // Fields after the command name in parentheses; utime and stime are
    // the 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// The geometric mean of the paired ratios `on[i] / off[i]` and its 95%
/// interval (normal approximation on the log ratios): whether the rounds
/// say anything about a 5% cost, given how much single rounds vary.
fn paired_ratio_interval(on: &[f64], off: &[f64]) -> (f64, f64, f64) {
    let logs: Vec<f64> = on
        .iter()
        .zip(off)
        .filter(|(a, b)| **a > 0.0 && **b > 0.0)
        .map(|(a, b)| (a / b).ln())
        .collect();
    let n = logs.len() as f64;
    if n < 2.0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = 1.96 * (var / n).sqrt();
    (mean.exp(), (mean - half).exp(), (mean + half).exp())
}
