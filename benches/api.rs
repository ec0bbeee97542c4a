//! API throughput and tail latency under 50 concurrent clients (wrk over
//! the TLS port): GET of one instance, and a list of 1,000 instances.
//!
//! Run: `cargo bench -p nimbus-cli --bench api` (as root, needs `wrk`).

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
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    WrkResult {
        requests_per_sec: rps,
        p99_ms: p99,
        errors,
    }
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
    let cloud = common::Cloud::start();
    let token = cloud.admin_token();
    let count = 1000;
    for i in 0..count {
        support::create_instance(
            &cloud,
            "default",
            &format!("i-{i:04}"),
            &["true"],
            serde_json::json!({"desired_state": "stopped"}),
        );
    }
    // Let the scheduler and agent settle so the benchmark measures the API alone.
    common::wait_until(Duration::from_secs(120), "instances to settle", || {
        let v = cloud.json(&["instance", "list"]).ok()?;
        let items = v["items"].as_array()?;
        (items.len() == count && items.iter().all(|i| i["status"]["phase"] == "stopped"))
            .then_some(())
    });
    let base = format!(
        "https://127.0.0.1:{}/v1/projects/default/instances",
        cloud.port
    );
    let get = wrk(&format!("{base}/i-0500"), &token, 10, 50, false);
    let list = wrk(&format!("{base}?limit={count}"), &token, 10, 50, false);
    let list_gzip = wrk(&format!("{base}?limit={count}"), &token, 10, 50, true);
    let list_one = wrk(&format!("{base}?limit={count}"), &token, 5, 1, false);
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
}
