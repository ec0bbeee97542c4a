//! Shared by the benchmarks: percentiles, a watch-stream recorder, and
//! peers (runc bundles, podman images) built from the starter image.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Cloud;

pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[idx.min(s.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "-".into();
    }
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

/// First time each (instance name, phase) was seen on the watch stream.
#[derive(Clone, Default)]
pub struct PhaseLog(pub Arc<Mutex<HashMap<(String, String), Instant>>>);

impl PhaseLog {
    pub fn get(&self, name: &str, phase: &str) -> Option<Instant> {
        self.0
            .lock()
            .ok()?
            .get(&(name.to_string(), phase.to_string()))
            .copied()
    }

    pub fn wait(&self, name: &str, phases: &[&str], timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(t) = phases.iter().filter_map(|p| self.get(name, p)).min() {
                return Some(t);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    }
}

/// Follow the project's instance watch in a thread, recording phase times.
pub fn record_phases(cloud: &Cloud, project: &str) -> PhaseLog {
    let log = PhaseLog::default();
    let sock = cloud.data_dir().join("api.sock");
    let token = cloud.admin_token();
    let project = project.to_string();
    let out = log.clone();
    std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(sock).expect("watch connect");
        write!(
            s,
            "GET /v1/projects/{project}/instances?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .expect("watch request");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let now = Instant::now();
            if line.starts_with('{') {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let name = v["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let phase = v["object"]["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if let Ok(mut m) = out.0.lock() {
                        m.entry((name, phase)).or_insert(now);
                    }
                }
            }
            line.clear();
        }
    });
    // Let the watch connect before anything is created.
    std::thread::sleep(Duration::from_millis(200));
    log
}

/// POST an instance; returns when the API has answered.
pub fn create_instance(
    cloud: &Cloud,
    project: &str,
    name: &str,
    args: &[&str],
    extra_spec: serde_json::Value,
) {
    let mut spec = serde_json::json!({"image": "busybox", "args": args});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    let body = serde_json::to_vec(&serde_json::json!({"name": name, "spec": spec})).expect("json");
    let token = cloud.admin_token();
    let (status, resp) = crate::common::http(
        cloud,
        "POST",
        &format!("/v1/projects/{project}/instances"),
        Some(&token),
        &body,
    );
    assert_eq!(status, 201, "create {name}: {resp}");
}

/// DELETE an instance; a refused delete fails the benchmark.
pub fn delete_instance(cloud: &Cloud, project: &str, name: &str) {
    let token = cloud.admin_token();
    let (status, body) = crate::common::http(
        cloud,
        "DELETE",
        &format!("/v1/projects/{project}/instances/{name}"),
        Some(&token),
        b"",
    );
    assert!(
        (200..300).contains(&status),
        "delete {name}: HTTP {status}: {body}"
    );
}

/// When instance `name` (project default) was seen deleted: the API answers
/// 404 for it and no instance directory is left in the data dir (the
/// benchmark runs one instance at a time). Polled every millisecond.
pub fn wait_deleted(cloud: &Cloud, name: &str, timeout: Duration) -> Instant {
    let token = cloud.admin_token();
    let instances = cloud.data_dir().join("instances");
    let deadline = Instant::now() + timeout;
    loop {
        let (status, _) = crate::common::http(
            cloud,
            "GET",
            &format!("/v1/projects/default/instances/{name}"),
            Some(&token),
            b"",
        );
        let dirs_left = std::fs::read_dir(&instances)
            .map(|d| d.count())
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", instances.display()));
        if status == 404 && dirs_left == 0 {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "instance {name} not deleted within {timeout:?} (HTTP {status}, {dirs_left} instance dirs left)"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A runc bundle running `args` on `rootfs` (read-only), with a user
/// namespace like Nimbus's containers.
pub fn runc_bundle(dir: &Path, rootfs: &Path, args: &[&str]) {
    std::fs::create_dir_all(dir).expect("bundle dir");
    let st = Command::new("runc")
        .args(["spec"])
        .current_dir(dir)
        .status()
        .expect("runc spec");
    assert!(st.success());
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("json");
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    cfg["hostname"] = serde_json::json!("bench");
    if let Some(ns) = cfg["linux"]["namespaces"].as_array_mut() {
        ns.push(serde_json::json!({"type": "user"}));
    }
    cfg["linux"]["uidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    cfg["linux"]["gidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write config");
}

/// A containers.conf that podman accepts on this machine.
pub fn podman_env(dir: &Path) -> PathBuf {
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\nruntime = \"runc\"\n",
    )
    .expect("containers.conf");
    conf
}

/// Import the rootfs into podman as `nimbus-bench-busybox`.
/// Imports `rootfs` as podman image `nimbus-bench-busybox`; the error says
/// which step failed and how.
pub fn podman_import(rootfs: &Path, conf: &Path, work: &Path) -> Result<(), String> {
    let tar = work.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !st.success() {
        return Err(format!("tar of {} failed: {st}", rootfs.display()));
    }
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(["import", "--quiet"])
        .arg(&tar)
        .arg("nimbus-bench-busybox")
        .output()
        .map_err(|e| format!("cannot run podman import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "podman import failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

pub fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Copy a root filesystem and shift its owners by `host_id`.
pub fn copy_rootfs_for_userns(from: &Path, to: &Path, host_id: u32) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "copying the rootfs failed");
    let st = Command::new("chown")
        .args(["-R", "-h", &format!("{host_id}:{host_id}")])
        .arg(to)
        .status()
        .expect("chown");
    assert!(st.success(), "chown of the rootfs copy failed");
}

/// A process's memory as a user would read it, in KiB: VmRSS from
/// `/proc/<pid>/status`, the rest from `/proc/<pid>/smaps_rollup`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub anon_kib: u64,
    /// Resident pages backed by a file (the executable, libc, ...): Rss
    /// minus Anonymous.
    pub file_kib: u64,
}

pub fn memory_of(pid: i32) -> Option<Memory> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rss = field("Rss")?;
    let anon = field("Anonymous")?;
    Some(Memory {
        rss_kib: rss_kib(pid).unwrap_or(rss),
        pss_kib: field("Pss")?,
        anon_kib: anon,
        file_kib: rss.saturating_sub(anon),
    })
}

pub fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

/// The executable a process runs, for the table.
pub fn exe_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        })
        .unwrap_or_else(|_| "?".into())
}

/// Run a command in a network namespace given by path.
pub fn in_ns(ns: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display())).args(args);
    c
}

pub struct Measured {
    pub gbits: f64,
    pub rtt_ms: f64,
}

/// Mean round trip of 2,000 one-byte TCP exchanges (TCP_NODELAY), from a
/// thread in `client_ns` to an echo thread in `server_ns`.
pub fn tcp_rtt_ms(server_ns: &Path, client_ns: &Path, server_ip: Ipv4Addr) -> f64 {
    use std::io::{Read, Write};
    let listener = nimbus_net::netns::run_in(Some(server_ns), move || {
        std::net::TcpListener::bind((server_ip, 7777))
            .map_err(|e| nimbus_net::NetError::io("bind echo", e))
    })
    .expect("echo listener");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        }
    });
    let rounds = 2000;
    nimbus_net::netns::run_in(Some(client_ns), move || {
        let mut s = TcpStream::connect((server_ip, 7777))
            .map_err(|e| nimbus_net::NetError::io("connect echo", e))?;
        let _ = s.set_nodelay(true);
        let mut b = [0u8; 1];
        let t0 = Instant::now();
        for _ in 0..rounds {
            s.write_all(&b)
                .and_then(|()| s.read_exact(&mut b))
                .map_err(|e| nimbus_net::NetError::io("echo", e))?;
        }
        Ok(t0.elapsed().as_secs_f64() * 1000.0 / rounds as f64)
    })
    .unwrap_or_else(|e| panic!("TCP round trips to {server_ip} failed: {e}"))
}

/// iperf3 (5 s, one stream) and TCP round trips from `client` to `server_ip`.
/// A failed run is an error, never a measurement of 0 Gbit/s.
pub fn measure(server_ns: &Path, client_ns: &Path, server_ip: &str) -> Measured {
    let mut server = in_ns(server_ns, &["iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server (apt-get install iperf3)");
    // The server listens before the client connects.
    crate::common::wait_until(Duration::from_secs(10), "iperf3 -s to listen", || {
        let out = in_ns(server_ns, &["ss", "-Hltn", "sport = :5201"])
            .output()
            .expect("ss");
        (!out.stdout.is_empty()).then_some(())
    });
    let out = in_ns(
        client_ns,
        // A stalled path fails the run instead of hanging it.
        &[
            "timeout",
            "60",
            "iperf3",
            "-c",
            server_ip,
            "-t",
            "5",
            "-J",
            "--connect-timeout",
            "5000",
        ],
    )
    .output()
    .expect("iperf3 client");
    if !out.status.success() {
        // A client that gave up leaves the one-shot server waiting.
        let _ = server.kill();
    }
    let server_status = server.wait().expect("iperf3 server");
    assert!(
        out.status.success() && server_status.success(),
        "iperf3 to {server_ip} failed (client {}, server {server_status}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 -J printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let gbits = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received.bits_per_second in iperf3's report: {v}"))
        / 1e9;
    let rtt_ms = tcp_rtt_ms(server_ns, client_ns, server_ip.parse().expect("server ip"));
    Measured { gbits, rtt_ms }
}
