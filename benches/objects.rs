//! Object storage throughput against the raw disk, in the same run:
//! - PUT and GET of 1 MiB and 64 MiB objects (goal: large objects at
//!   ≥ 70% of writing the same bytes to the same disk with fsync);
//! - 4 KiB PUT and GET operations per second with 32 concurrent clients
//!   (goal: ≥ 2,000 PUT/s).
//!
//! The 1 MiB and 64 MiB objects are moved twice: by boto3 threads
//! (scripts/deps installs it), so those figures include a Python client's
//! cost, as a user's would, against a raw peer in the same script (write +
//! fsync into the data directory's filesystem, then read back); and by
//! Rust SigV4 clients (`s3_client.rs`), against Rust threads writing the
//! same bytes with fsync, which shows the server's own throughput. The
//! 4 KiB clients are Rust only (boto3 alone tops out near 600 PUT/s here),
//! against 32 Rust threads writing the same bytes with fsync.
//!
//! Run: `cargo bench -p nimbus-cli --bench objects` (as root). Knobs:
//! NIMBUS_BENCH_LARGE (64 MiB objects, default 4), NIMBUS_BENCH_MEDIUM
//! (1 MiB objects, default 64), NIMBUS_BENCH_SMALL (4 KiB operations,
//! default 4000).

#[path = "../tests/common/mod.rs"]
mod common;
mod s3_client;
mod support;

use std::process::Command;

use common::{free_port, Cloud};

const SCRIPT: &str = r#"
import boto3, os, sys, time, threading
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config

endpoint, raw_dir = sys.argv[1], sys.argv[2]
large, medium = int(sys.argv[3]), int(sys.argv[4])
s3 = boto3.client('s3', endpoint_url=endpoint, config=Config(max_pool_connections=64))

def raw_put(name, body):
    fd = os.open(os.path.join(raw_dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, body)
    os.fsync(fd)
    os.close(fd)

def raw_get(name):
    with open(os.path.join(raw_dir, name), 'rb') as f:
        return f.read()

def timed(fn, items, workers):
    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
    return time.monotonic() - start

def throughput(label, size, count, workers):
    if count == 0:
        return
    body = os.urandom(size)
    keys = ['%s/%d' % (label, i) for i in range(count)]
    mib = size * count / (1 << 20)
    put = timed(lambda k: s3.put_object(Bucket='bench', Key=k, Body=body), keys, workers)
    get = timed(lambda k: s3.get_object(Bucket='bench', Key=k)['Body'].read(), keys, workers)
    rput = timed(lambda k: raw_put(k.replace('/', '_'), body), keys, workers)
    rget = timed(lambda k: raw_get(k.replace('/', '_')), keys, workers)
    print('%-12s PUT %8.1f MiB/s  raw %8.1f MiB/s  ratio %5.0f%%' % (label, mib / put, mib / rput, 100 * rput / put))
    print('%-12s GET %8.1f MiB/s  raw %8.1f MiB/s  ratio %5.0f%%' % (label, mib / get, mib / rget, 100 * rget / get))

throughput('64MiB', 64 << 20, large, 4)
throughput('1MiB', 1 << 20, medium, 8)
"#;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !support::have("python3") {
        eprintln!("objects benchmark skipped: python3 with boto3 is missing (run scripts/deps)");
        return;
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let cloud = Cloud::start_with(&["--s3-listen", &listen]);
    cloud.ok(&["bucket", "create", "bench"]);
    let key = cloud
        .json(&["s3", "credentials", "create"])
        .expect("s3 credentials create");
    // The raw peer writes beside the objects: the same filesystem.
    let raw_dir = cloud.data_dir().join("raw-peer");
    std::fs::create_dir_all(&raw_dir).expect("raw peer dir");
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &format!("https://{listen}")])
        .arg(&raw_dir)
        .args([
            knob("NIMBUS_BENCH_LARGE", 4).to_string(),
            knob("NIMBUS_BENCH_MEDIUM", 64).to_string(),
        ])
        .env(
            "AWS_ACCESS_KEY_ID",
            key["access_key_id"].as_str().unwrap_or_default(),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            key["secret_access_key"].as_str().unwrap_or_default(),
        )
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env(
            "AWS_CA_BUNDLE",
            cloud.data_dir().join("tls").join("cert.pem"),
        )
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("python3");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    rust_client_ops(&cloud, &listen, &key, &raw_dir);
}

/// PUT and GET with the Rust clients against the raw peer: 64 MiB and
/// 1 MiB objects (as the boto3 part, without Python's cost), and 4 KiB
/// objects from 32 concurrent clients.
fn rust_client_ops(
    cloud: &Cloud,
    listen: &str,
    key: &serde_json::Value,
    raw_dir: &std::path::Path,
) {
    let target = || s3_client::Target {
        addr: listen.parse().expect("listen address"),
        ca_pem: cloud.data_dir().join("tls").join("cert.pem"),
        access_key: key["access_key_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        secret_key: key["secret_access_key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        bucket: "bench".to_string(),
    };
    let loads = [
        ("64MiB-rust", knob("NIMBUS_BENCH_LARGE", 4), 4, 64 << 20),
        ("1MiB-rust", knob("NIMBUS_BENCH_MEDIUM", 64), 8, 1 << 20),
    ];
    for (label, count, clients, size) in loads {
        if count == 0 {
            continue;
        }
        let load = s3_client::Load {
            count,
            clients,
            size,
        };
        let s3 = s3_client::s3_ops(target(), label, load);
        let raw = s3_client::raw_ops(raw_dir, label, load);
        let mib = |ops: f64| ops * size as f64 / f64::from(1 << 20);
        for (phase, s3, raw) in [("PUT", s3.put, raw.put), ("GET", s3.get, raw.get)] {
            println!(
                "{label:<12} {phase} {:>8.1} MiB/s  raw {:>8.1} MiB/s  ratio {:>5.0}%",
                mib(s3),
                mib(raw),
                100.0 * s3 / raw
            );
        }
    }
    let load = s3_client::Load {
        count: knob("NIMBUS_BENCH_SMALL", 4000),
        clients: 32,
        size: 4096,
    };
    let s3 = s3_client::s3_ops(target(), "4KiB-x32", load);
    let raw = s3_client::raw_ops(raw_dir, "4KiB-x32", load);
    println!(
        "{:<12} PUT {:>8.0} ops/s   raw {:>8.0} ops/s   ratio {:>5.0}%   (goal >= 2000 PUT/s)",
        "4KiB-x32",
        s3.put,
        raw.put,
        100.0 * s3.put / raw.put
    );
    println!(
        "{:<12} GET {:>8.0} ops/s   raw {:>8.0} ops/s   ratio {:>5.0}%",
        "4KiB-x32",
        s3.get,
        raw.get,
        100.0 * s3.get / raw.get
    );
}
