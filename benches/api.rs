//! API throughput and tail latency under 50 concurrent clients (wrk over
//! the TLS port): GET of one instance, and a list of 1,000 instances; then
//! the cost of metrics: the same GET load on a server with metrics on
//! (scraped every second, as Prometheus would) and one started with
//! `--metrics=false`, in alternating rounds, with the p99 of each and their
//! ratio (goal: metrics cost under 5%).
//!
//! Any non-2xx answer fails the benchmark: a fast error is not a result.
//!
//! Run: `cargo bench -p nimbus-cli --bench api` (as root, needs `wrk`).
//! Knobs: `NIMBUS_BENCH_API_SECONDS` (each wrk run, default 10),
//! `NIMBUS_BENCH_API_INSTANCES` (default 1000), `NIMBUS_BENCH_API_ROUNDS`
//! (metrics on/off rounds, default 3).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::Duration;

struct WrkResult {
    requests_per_sec: f64,
    p99_ms: f64,
    errors: String,
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
    let threads = clients.min(2);
    let out = Command::new("wrk")
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
    WrkResult {
        requests_per_sec: rps,
        p99_ms: p99,
        errors,
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

/// Scrapes `/metrics` every second (as Prometheus would) until dropped.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Scraper {
    fn start(cloud: &common::Cloud) -> Scraper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let data_dir = cloud.data_dir().to_path_buf();
        let token = cloud.admin_token();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut scrapes = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = common::http_at(
                    &data_dir,
                    "GET",
                    "/metrics",
                    Some(&token),
                    b"",
                    "application/json",
                );
                assert_eq!(status, 200, "scrape: {body}");
                scrapes += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            scrapes
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("scraper"))
            .unwrap_or(0)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("api: bench");
        return;
    }
    if !support::have("wrk") {
        eprintln!("SKIPPED: wrk is not installed (scripts/deps installs it)");
        return;
    }
    let seconds = knob("NIMBUS_BENCH_API_SECONDS", 10).max(1);
    let count = knob("NIMBUS_BENCH_API_INSTANCES", 1000).max(1) as usize;
    let rounds = knob("NIMBUS_BENCH_API_ROUNDS", 3).max(1);
    let cloud = common::Cloud::start();
    let token = cloud.admin_token();
    create_stopped_instances(&cloud, count);
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
    let body = common::http(&cloud, "GET", &list_path, Some(&token), b"").1;
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

    metrics_cost(&cloud, count, seconds, rounds);
}

/// The same GET load on `on` (metrics on, scraped every second) and on a
/// second server with `--metrics=false` holding the same instances, in
/// alternating rounds so that drift in the shared machine's load falls on
/// both; the median p99 of each and their ratio.
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
    let (mut p99_on, mut p99_off, mut rps_on, mut rps_off) = (vec![], vec![], vec![], vec![]);
    let mut scrapes = 0;
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer machine.
        let on_first = round % 2 == 0;
        for measure_on in [on_first, !on_first] {
            if measure_on {
                let scraper = Scraper::start(on);
                let r = wrk(&url(on), &on.admin_token(), seconds, 50, false);
                scrapes += scraper.finish();
                p99_on.push(r.p99_ms);
                rps_on.push(r.requests_per_sec);
            } else {
                let r = wrk(&url(&off), &off.admin_token(), seconds, 50, false);
                p99_off.push(r.p99_ms);
                rps_off.push(r.requests_per_sec);
            }
        }
    }
    let (on_p99, off_p99) = (median(p99_on.clone()), median(p99_off.clone()));
    println!("\n== Metrics cost: GET one instance, 50 clients, {rounds} alternating rounds of {seconds} s");
    println!("{:<40} {:>12} {:>10}", "", "requests/s", "p99");
    println!(
        "{:<40} {:>12.0} {:>8.2} ms   (rounds: {:?} ms; {scrapes} scrapes of /metrics)",
        "metrics on, scraped every second",
        median(rps_on),
        on_p99,
        p99_on
    );
    println!(
        "{:<40} {:>12.0} {:>8.2} ms   (rounds: {:?} ms)",
        "--metrics=false",
        median(rps_off),
        off_p99,
        p99_off
    );
    println!(
        "p99 ratio on/off: {:.3} (cost {:+.1}%); goal: under 5%",
        on_p99 / off_p99,
        (on_p99 / off_p99 - 1.0) * 100.0
    );
}
