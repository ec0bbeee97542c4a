//! Usage as finance reads it: a container run, stopped, started again,
//! the daemon killed with SIGKILL while it runs and started again, then
//! stopped; `nimbus usage -o json` gives exactly the hours its two runs
//! (the start and finish times its status recorded) and the stored
//! starter image add up to, hour by hour, and nothing twice across the
//! kill. S3 objects stored, overwritten and deleted, with the daemon
//! killed after, give exactly their bytes times the seconds between the
//! Last-Modified times S3 showed (and the deletion).

mod common;

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use common::{free_port, wait_until, Cloud};
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

/// Run a boto3 script with `s3` bound to a client of `endpoint` using
/// `key`; its standard output.
fn boto3(cloud: &Cloud, endpoint: &str, key: &(String, String), script: &str) -> String {
    let prelude = format!("import boto3\ns3 = boto3.client('s3', endpoint_url={endpoint:?})\n");
    let out = std::process::Command::new("python3")
        .env("AWS_ACCESS_KEY_ID", &key.0)
        .env("AWS_SECRET_ACCESS_KEY", &key.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env(
            "AWS_CA_BUNDLE",
            cloud.data_dir().join("tls").join("cert.pem"),
        )
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .args(["-c", &format!("{prelude}{script}")])
        .output()
        .expect("run python3 with boto3 (scripts/deps installs it)");
    assert!(
        out.status.success(),
        "boto3 script failed: {}{}\n{script}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// PUT `size` bytes at `key`; the Last-Modified second S3 then shows.
fn put(cloud: &Cloud, endpoint: &str, cred: &(String, String), key: &str, size: u64) -> i64 {
    let out = boto3(
        cloud,
        endpoint,
        cred,
        &format!(
            "s3.put_object(Bucket='metered', Key={key:?}, Body=b'x' * {size})\n\
             print(int(s3.head_object(Bucket='metered', Key={key:?})['LastModified'].timestamp()))\n"
        ),
    );
    out.parse().unwrap_or_else(|_| panic!("a time: {out}"))
}

fn now_secs() -> i64 {
    Utc::now().timestamp()
}

/// Wait until the clock is past second `t`.
fn wait_past(t: i64) {
    wait_until(T, &format!("the clock to pass {t}"), || {
        (now_secs() > t).then_some(())
    });
}

#[test]
fn object_storage_usage_across_a_daemon_kill_matches_the_arithmetic() {
    let listen = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("https://{listen}");
    let mut cloud = Cloud::start_with(&["--s3-listen", &listen]);
    cloud.ok(&["bucket", "create", "metered"]);
    let v = cloud
        .json(&["s3", "credentials", "create"])
        .expect("s3 credentials create");
    let cred = (
        v["access_key_id"].as_str().expect("id").to_string(),
        v["secret_access_key"].as_str().expect("secret").to_string(),
    );
    let (a1, a2, b) = (3u64 << 20, (5u64 << 20) + 7, (1u64 << 20) + 1);

    // `a` stored, then overwritten a second later by a bigger version;
    // `b` stored, then deleted a second later.
    let a1_at = put(&cloud, &endpoint, &cred, "reports/a", a1);
    wait_past(a1_at);
    let a2_at = put(&cloud, &endpoint, &cred, "reports/a", a2);
    let b_at = put(&cloud, &endpoint, &cred, "b", b);
    wait_past(b_at);
    let deleting_from = now_secs();
    boto3(
        &cloud,
        &endpoint,
        &cred,
        "s3.delete_object(Bucket='metered', Key='b')\n",
    );
    let deleted_by = now_secs();

    // What the overwrite and the deletion recorded survives a crash.
    cloud.kill_daemon();
    cloud.spawn_daemon();
    cloud.wait_ready();

    let from_s = a1_at - a1_at.rem_euclid(3600);
    let to_s = deleted_by.max(a2_at) + 2;
    wait_past(to_s);
    let sec = 1_000_000_000i64;
    let (from, to) = (from_s * sec, to_s * sec);
    let fmt = |s: i64| {
        DateTime::from_timestamp(s, 0)
            .expect("time")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let usage = cloud
        .json(&["usage", "--from", &fmt(from_s), "--to", &fmt(to_s)])
        .expect("usage -o json");
    let hours = usage["hours"].as_array().expect("hours");
    let count = ((to - from + NANOS_PER_HOUR - 1) / NANOS_PER_HOUR) as usize;
    assert_eq!(hours.len(), count, "{usage}");
    let gib_hour = NANOS_PER_HOUR as f64 * (1u64 << 30) as f64;
    let total = &usage["totals"]["object_gib_hours"];

    // Byte-nanoseconds per hour for a deletion at second `deleted`.
    let expected = |deleted: i64| -> Vec<u128> {
        let spans = [(a1_at, a2_at, a1), (a2_at, to_s, a2), (b_at, deleted, b)];
        let mut out = vec![0u128; count];
        for (start, end, bytes) in spans {
            for (i, n) in per_hour(start * sec, end * sec, from, to, count)
                .into_iter()
                .enumerate()
            {
                out[i] += n * u128::from(bytes);
            }
        }
        out
    };
    // The deletion's second is known to lie in [deleting_from, deleted_by]
    // (the same second on a quiet machine): the report must match one.
    let deleted = (deleting_from..=deleted_by)
        .find(|d| {
            let sum: u128 = expected(*d).iter().sum();
            total
                .as_f64()
                .is_some_and(|t| (t - sum as f64 / gib_hour).abs() <= 1e-12 * t.abs().max(1.0))
        })
        .unwrap_or_else(|| {
            panic!(
                "object GiB-hours {total} match no deletion second in [{deleting_from}, {deleted_by}]: {usage}"
            )
        });
    for (i, (h, n)) in hours.iter().zip(expected(deleted)).enumerate() {
        same(
            &format!("hour {i} ({}) objects", h["hour"]),
            &h["object_gib_hours"],
            n as f64 / gib_hour,
        );
    }
    // Nothing else is billed as objects, and objects as nothing else.
    assert!(total.as_f64().unwrap_or(0.0) > 0.0, "{usage}");
    same(
        "container hours",
        &usage["totals"]["instance_hours"]["container"],
        0.0,
    );

    let csv = cloud.ok(&[
        "usage",
        "--from",
        &fmt(from_s),
        "--to",
        &fmt(to_s),
        "-o",
        "csv",
    ]);
    let header: Vec<&str> = csv.lines().next().unwrap_or("").split(',').collect();
    let column = header
        .iter()
        .position(|h| *h == "object_gib_hours")
        .unwrap_or_else(|| panic!("no object column: {csv}"));
    let last = csv.lines().last().unwrap_or("");
    let figure: f64 = last
        .split(',')
        .nth(column)
        .and_then(|f| f.parse().ok())
        .expect("figure");
    same(
        "csv total objects",
        &Value::from(figure),
        total.as_f64().unwrap_or(-1.0),
    );
    let table = cloud.ok(&[
        "usage",
        "--from",
        &fmt(from_s),
        "--to",
        &fmt(to_s),
        "--by",
        "total",
    ]);
    assert!(
        table.to_lowercase().contains("object-gib-h"),
        "an object column: {table}"
    );
}

/// The `volume_gib_hours` of `[from_s, to_s)`: the report and its hours.
fn volume_usage(cloud: &Cloud, from_s: i64, to_s: i64) -> Value {
    let fmt = |s: i64| {
        DateTime::from_timestamp(s, 0)
            .expect("time")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    cloud
        .json(&["usage", "--from", &fmt(from_s), "--to", &fmt(to_s)])
        .expect("usage -o json")
}

#[test]
fn volume_usage_bills_each_size_across_a_daemon_kill_and_stops_at_deletion() {
    if !common::is_root("volume usage") {
        return;
    }
    let mut cloud = Cloud::start();
    let (small, big) = (64u64 << 20, 128u64 << 20);
    let get = |cloud: &Cloud| {
        cloud
            .json(&["volume", "get", "metered"])
            .expect("volume get")
    };
    // Created at 64 MiB, grown to 128 MiB, then a snapshot of 128 MiB
    // makes it count 256 MiB: three intervals, each from the time the
    // server recorded on the volume.
    cloud.ok(&["volume", "create", "metered", "--size", "64MiB"]);
    let created = nanos(time(&get(&cloud)["metadata"]["created_at"]));
    std::thread::sleep(Duration::from_millis(1200));
    cloud.ok(&["volume", "resize", "metered", "--size", "128MiB"]);
    let grown = nanos(time(&get(&cloud)["spec"]["counted_since"]));
    std::thread::sleep(Duration::from_millis(1200));
    cloud.ok(&["volume", "snapshot", "metered", "--name", "s1"]);
    let snapped = nanos(time(&get(&cloud)["spec"]["counted_since"]));
    assert!(
        created < grown && grown < snapped,
        "{created} {grown} {snapped}"
    );
    let sec = 1_000_000_000i64;
    let to_s = snapped / sec + 2;
    wait_past(to_s);

    // What was recorded survives a crash of the control plane.
    cloud.kill_daemon();
    cloud.spawn_daemon();
    cloud.wait_ready();

    let from_s = created / sec - (created / sec).rem_euclid(3600);
    let (from, to) = (from_s * sec, to_s * sec);
    let usage = volume_usage(&cloud, from_s, to_s);
    let hours = usage["hours"].as_array().expect("hours");
    let count = ((to - from + NANOS_PER_HOUR - 1) / NANOS_PER_HOUR) as usize;
    assert_eq!(hours.len(), count, "{usage}");
    let gib_hour = NANOS_PER_HOUR as f64 * (1u64 << 30) as f64;
    let spans = [
        (created, grown, small),
        (grown, snapped, big),
        (snapped, to, 2 * big),
    ];
    let mut expected = vec![0u128; count];
    for (start, end, bytes) in spans {
        for (i, n) in per_hour(start, end, from, to, count)
            .into_iter()
            .enumerate()
        {
            expected[i] += n * u128::from(bytes);
        }
    }
    for (i, (h, n)) in hours.iter().zip(&expected).enumerate() {
        same(
            &format!("hour {i} ({}) volumes", h["hour"]),
            &h["volume_gib_hours"],
            *n as f64 / gib_hour,
        );
    }
    let total: u128 = expected.iter().sum();
    same(
        "total volumes",
        &usage["totals"]["volume_gib_hours"],
        total as f64 / gib_hour,
    );
    same(
        "container hours",
        &usage["totals"]["instance_hours"]["container"],
        0.0,
    );

    // Deleted: billed up to the deletion, and not a second more.
    cloud.ok(&["volume", "rm", "metered"]);
    let after = now_secs() + 1;
    wait_past(after);
    let at_deletion = volume_usage(&cloud, from_s, after)["totals"]["volume_gib_hours"].clone();
    assert!(
        at_deletion.as_f64().unwrap_or(0.0) > total as f64 / gib_hour,
        "billed until the deletion: {at_deletion}"
    );
    let later = after + 2;
    wait_past(later);
    let settled = volume_usage(&cloud, from_s, later)["totals"]["volume_gib_hours"].clone();
    assert_eq!(settled, at_deletion, "nothing billed after the deletion");
}
