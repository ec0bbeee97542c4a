//! Usage as finance reads it: a container run, stopped, started again,
//! the daemon killed with SIGKILL while it runs and started again, then
//! stopped; `nimbus usage -o json` gives exactly the hours its two runs
//! (the start and finish times its status recorded) and the stored
//! starter image add up to, hour by hour, and nothing twice across the
//! kill.

mod common;

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use common::{wait_until, Cloud};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{v} is not a time"))
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().expect("in range")
}

/// The start and finish of the instance's last run, once it has finished.
fn run_of(v: &Value) -> (i64, i64) {
    let s = &v["status"];
    (
        nanos(time(&s["started_at"])),
        nanos(time(&s["finished_at"])),
    )
}

/// The nanoseconds `[start, end)` spends in each hour of `[from, to)`,
/// by the hour's index from the hour of `from`.
fn per_hour(start: i64, end: i64, from: i64, to: i64, hours: usize) -> Vec<u128> {
    let first = from.div_euclid(NANOS_PER_HOUR) * NANOS_PER_HOUR;
    let mut out = vec![0u128; hours];
    for (i, slot) in out.iter_mut().enumerate() {
        let h = first + i as i64 * NANOS_PER_HOUR;
        let lo = start.max(h).max(from);
        let hi = end.min(h + NANOS_PER_HOUR).min(to);
        if hi > lo {
            *slot = (hi - lo) as u128;
        }
    }
    out
}

/// `actual` is the decimal `expected`: equal up to the last digits of a
/// JSON float (both are one division of exact integer sums).
fn same(what: &str, actual: &Value, expected: f64) {
    let a = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {actual} is not a number"));
    assert!(
        (a - expected).abs() <= 1e-12 * expected.abs().max(1.0),
        "{what}: got {a}, the arithmetic gives {expected}"
    );
}

#[test]
fn usage_of_two_runs_across_a_daemon_kill_matches_the_arithmetic() {
    let mut cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "meter", "--image", "busybox", "--memory", "64MiB", "--cpus", "0.5",
        "--", "sleep", "3600",
    ]);
    cloud.wait_phase("meter", &["running"], T);
    cloud.ok(&["instance", "stop", "meter"]);
    let first = run_of(&cloud.wait_phase("meter", &["stopped"], T));

    cloud.ok(&["instance", "start", "meter"]);
    let running = wait_until(T, "meter's second run", || {
        let v = cloud.instance("meter");
        let started = v["status"]["started_at"]
            .as_str()
            .map(|s| time(&Value::from(s)));
        (v["status"]["phase"] == "running" && started.map(nanos) != Some(first.0)).then_some(v)
    });
    let second_start = running["status"]["started_at"].clone();

    // A crash of the control plane while it runs: the run goes on.
    cloud.kill_daemon();
    cloud.spawn_daemon();
    cloud.wait_ready();
    let v = cloud.wait_phase("meter", &["running"], T);
    assert_eq!(
        v["status"]["started_at"], second_start,
        "the same run after the restart: {v}"
    );
    cloud.ok(&["instance", "stop", "meter"]);
    let second = run_of(&cloud.wait_phase("meter", &["stopped"], T));
    assert_eq!(second.0, nanos(time(&second_start)));

    let image = cloud.json(&["image", "get", "busybox"]).expect("image");
    let image_start = nanos(time(&image["metadata"]["created_at"]));
    let image_bytes = image["status"]["size_bytes"].as_u64().expect("size") as u128;

    // The window: from the hour the image was stored to a second after
    // the last stop, waited out so that nothing still open grows in it.
    let from_t = time(&image["metadata"]["created_at"])
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .expect("hour");
    let to_t = DateTime::from_timestamp(second.1.div_euclid(1_000_000_000) + 2, 0).expect("to");
    wait_until(T, "the window to end", || (Utc::now() > to_t).then_some(()));
    let (from, to) = (nanos(from_t), nanos(to_t));
    let from_s = from_t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let to_s = to_t.format("%Y-%m-%dT%H:%M:%SZ").to_string();

    let usage = cloud
        .json(&["usage", "--from", &from_s, "--to", &to_s])
        .expect("usage -o json");
    assert_eq!(usage["project"], "default", "{usage}");
    assert_eq!(usage["from"], from_s.as_str(), "{usage}");
    assert_eq!(usage["to"], to_s.as_str(), "{usage}");
    let hours = usage["hours"].as_array().expect("hours");
    let count = ((to - from + NANOS_PER_HOUR - 1) / NANOS_PER_HOUR) as usize;
    assert_eq!(hours.len(), count, "{usage}");

    let run_nanos: Vec<u128> = {
        let a = per_hour(first.0, first.1, from, to, count);
        let b = per_hour(second.0, second.1, from, to, count);
        a.iter().zip(&b).map(|(x, y)| x + y).collect()
    };
    let image_nanos = per_hour(image_start, i64::MAX, from, to, count);
    let hour = NANOS_PER_HOUR as f64;
    let gib_hour = hour * (1u64 << 30) as f64;
    let mem_bytes: u128 = 64 << 20;
    for (i, h) in hours.iter().enumerate() {
        let at = h["hour"].as_str().unwrap_or("?");
        let n = run_nanos[i];
        same(
            &format!("{at} container"),
            &h["instance_hours"]["container"],
            n as f64 / hour,
        );
        // Exactly these nanoseconds, not merely close.
        let back = h["instance_hours"]["container"].as_f64().unwrap_or(-1.0) * hour;
        assert_eq!(back.round() as u128, n, "{at}: {h}");
        same(&format!("{at} vm"), &h["instance_hours"]["vm"], 0.0);
        same(
            &format!("{at} unikernel"),
            &h["instance_hours"]["unikernel"],
            0.0,
        );
        same(
            &format!("{at} vcpu"),
            &h["vcpu_hours"],
            (n * 500) as f64 / (hour * 1000.0),
        );
        same(
            &format!("{at} memory"),
            &h["memory_gib_hours"],
            (n * mem_bytes) as f64 / gib_hour,
        );
        same(
            &format!("{at} image"),
            &h["image_gib_hours"],
            (image_nanos[i] * image_bytes) as f64 / gib_hour,
        );
    }
    let total_run = (first.1 - first.0 + second.1 - second.0) as u128;
    let totals = &usage["totals"];
    same(
        "total container",
        &totals["instance_hours"]["container"],
        total_run as f64 / hour,
    );
    let back = totals["instance_hours"]["container"]
        .as_f64()
        .unwrap_or(-1.0)
        * hour;
    assert_eq!(back.round() as u128, total_run, "counted once: {totals}");
    same(
        "total vcpu",
        &totals["vcpu_hours"],
        (total_run * 500) as f64 / (hour * 1000.0),
    );
    same(
        "total memory",
        &totals["memory_gib_hours"],
        (total_run * mem_bytes) as f64 / gib_hour,
    );
    let image_total: u128 = image_nanos.iter().sum();
    assert_eq!(image_total, (to - image_start) as u128);
    same(
        "total image",
        &totals["image_gib_hours"],
        (image_total * image_bytes) as f64 / gib_hour,
    );

    // For people and spreadsheets: the same totals.
    let table = cloud.ok(&["usage", "--from", &from_s, "--to", &to_s, "--by", "total"]);
    let total_line = table
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total row: {table}"));
    assert!(
        total_line.contains(&format!("{:.4}", total_run as f64 / hour)),
        "{table}"
    );
    let csv = cloud.ok(&["usage", "--from", &from_s, "--to", &to_s, "-o", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0].split(',').next(), Some("period"), "{csv}");
    assert_eq!(
        lines.len(),
        count + 2,
        "a header, each hour, the total: {csv}"
    );
    let total: Vec<&str> = lines[count + 1].split(',').collect();
    assert_eq!(total[0], "total", "{csv}");
    same(
        "csv total container",
        &Value::from(total[1].parse::<f64>().expect("number")),
        total_run as f64 / hour,
    );
}
