//! Metrics as an operator uses them: Debian's `prometheus` scrapes
//! `/metrics` over TLS with a metrics reader's token, and a PromQL query
//! through its HTTP API returns the CPU seconds of a container that burns
//! CPU, growing while it runs. A metrics reader's token reads nothing
//! else, a project member's cannot read metrics, and a removed instance's
//! series are gone from the next scrape.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, http, wait_until, Cloud};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn token_for(cloud: &Cloud, user: &str) -> String {
    let v = cloud
        .json(&["token", "create", "--user", user])
        .expect("token create");
    v["secret"].as_str().expect("secret").to_string()
}

/// A `prometheus` process with its own config, storage and port; killed
/// (and reaped) however the test ends.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrape the cloud's TLS port every second with the token in a file.
    fn start(cloud: &Cloud, token: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("nimbus-prometheus-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("token file");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: nimbus\n    scheme: https\n    metrics_path: /metrics\n\
                 \x20   authorization:\n      credentials_file: {}\n\
                 \x20   tls_config:\n      insecure_skip_verify: true\n\
                 \x20   static_configs:\n      - targets: ['127.0.0.1:{}']\n",
                token_file.display(),
                cloud.port
            ),
        )
        .expect("config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (scripts/deps installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of an instant PromQL query (empty when Prometheus
    /// is not answering yet).
    fn query(&self, promql: &str) -> Vec<Value> {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let req =
            format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return Vec::new();
        }
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let Some((_, body)) = resp.split_once("\r\n\r\n") else {
            return Vec::new();
        };
        serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The value of the single series `promql` selects, if there is one.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(cloud: &Cloud, token: &str) -> (u16, String) {
    http(cloud, "GET", "/metrics", Some(token), b"")
}

#[test]
fn prometheus_sees_a_busy_containers_cpu_grow_and_its_series_go_with_it() {
    assert!(
        Path::new("/usr/bin/prometheus").exists() || which_prometheus(),
        "prometheus is not installed; run scripts/deps"
    );
    let open_port = free_port();
    let open_addr = format!("127.0.0.1:{open_port}");
    let cloud = Cloud::start_with(&["--metrics-listen", &open_addr]);
    cloud.ok(&["user", "create", "prom", "--metrics-reader"]);
    let prom_token = token_for(&cloud, "prom");
    let prometheus = Prometheus::start(&cloud, &prom_token);

    cloud.ok(&[
        "instance",
        "run",
        "burn",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    cloud.wait_phase("burn", &["running"], T);

    let query = "nimbus_instance_cpu_seconds_total{project=\"default\",instance_name=\"burn\"}";
    let deadline = std::time::Instant::now() + T;
    let first = loop {
        if let Some(v) = prometheus.value(query) {
            break v;
        }
        if std::time::Instant::now() > deadline {
            let (_, text) = scrape(&cloud, &cloud.admin_token());
            panic!(
                "no CPU seconds of the container in Prometheus after {T:?}\ntargets: {:?}\nprometheus log:\n{}\n/metrics:\n{}\ndaemon log:\n{}",
                prometheus.query("up"),
                common::tail(&prometheus.log(), 20),
                text,
                common::tail(&cloud.daemon_log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let up = prometheus.value("up{job=\"nimbus\"}");
    assert_eq!(
        up,
        Some(1.0),
        "the scrape target is up; prometheus log:\n{}",
        common::tail(&prometheus.log(), 20)
    );
    let later = wait_until(T, "the CPU seconds to grow", || {
        prometheus.value(query).filter(|v| *v >= first + 1.0)
    });
    assert!(later > first, "{first} -> {later}");
    let rate = wait_until(T, "a CPU rate over the last seconds", || {
        prometheus
            .value(&format!("rate({query}[5s])"))
            .filter(|r| *r > 0.0)
    });
    assert!(
        rate > 0.2,
        "a busy loop uses a good part of a CPU: rate {rate}"
    );

    // The metrics reader reads metrics and nothing else.
    let (status, body) = http(
        &cloud,
        "GET",
        "/v1/projects/default/instances",
        Some(&prom_token),
        b"",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("metrics reader"), "{body}");
    let (status, body) = scrape(&cloud, &prom_token);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(
            "nimbus_api_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"}"
        ),
        "{body}"
    );
    assert!(body.contains("nimbus_host_memory_bytes{host="), "{body}");
    assert!(
        body.contains("nimbus_network_ports{project=\"default\",network=\"default\"} 1"),
        "{body}"
    );

    // `--metrics-listen` serves the same without a token, and only that.
    let plain = |path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", open_port)).expect("metrics port");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp
    };
    let open = plain("/metrics");
    assert!(open.starts_with("HTTP/1.1 200"), "{open}");
    assert!(
        open.contains(
            "nimbus_instance_cpu_seconds_total{project=\"default\",instance_name=\"burn\"}"
        ),
        "{open}"
    );
    assert!(plain("/v1/projects/default/instances").starts_with("HTTP/1.1 404"));

    // A project member is not an operator.
    cloud.ok(&["user", "create", "dev"]);
    cloud.ok(&["role", "grant", "dev", "member", "--project", "default"]);
    let dev_token = token_for(&cloud, "dev");
    let (status, body) = scrape(&cloud, &dev_token);
    assert_eq!(status, 403, "{body}");
    let (status, _) = http(&cloud, "GET", "/metrics", None, b"");
    assert_eq!(status, 401);

    // A removed instance's series go with it.
    let admin = cloud.admin_token();
    let (_, before) = scrape(&cloud, &admin);
    assert!(before.contains("instance_name=\"burn\""), "{before}");
    cloud.ok(&["instance", "rm", "--force", "burn"]);
    let (_, after) = scrape(&cloud, &admin);
    assert!(
        !after.contains("instance_name=\"burn\""),
        "series of the removed instance remain:\n{after}"
    );
    drop(prometheus);
}

fn which_prometheus() -> bool {
    Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn agents_report_only_for_their_own_host_and_metrics_can_be_turned_off() {
    let cloud = Cloud::start_with(&["--metrics=false"]);
    let admin = cloud.admin_token();
    let (status, body) = http(&cloud, "GET", "/metrics", Some(&admin), b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--metrics=false"), "{body}");
    // Only the agent of a host may push its statistics: not even an admin.
    let (status, body) = http(
        &cloud,
        "PUT",
        &format!("/v1/hosts/{}/stats", cloud.host),
        Some(&admin),
        br#"{"instances": []}"#,
    );
    assert_eq!(status, 403, "{body}");
    let agent = std::fs::read_to_string(cloud.data_dir().join("agent.token")).expect("agent token");
    let (status, body) = http(
        &cloud,
        "PUT",
        "/v1/hosts/some-other-host/stats",
        Some(agent.trim()),
        br#"{"instances": []}"#,
    );
    assert_eq!(status, 403, "{body}");
}

/// The value of the first sample line starting with `series` in an
/// exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_vms_vcpu_time_and_traffic_are_reported() {
    let cloud = Cloud::start();
    cloud.import_tiny();
    // The tiny guest asks for an address over DHCP at boot: traffic the
    // router's side of its tap sees.
    cloud.ok(&[
        "instance", "run", "vm1", "--kind", "vm", "--image", "tiny", "--memory", "128MiB",
    ]);
    cloud.wait_phase("vm1", &["running"], T);
    let admin = cloud.admin_token();
    let labels = "{project=\"default\",instance_name=\"vm1\"}";
    let (sent, received, vcpu) = wait_until(
        Duration::from_secs(90),
        "the VM's traffic and vCPU time",
        || {
            let (status, text) = scrape(&cloud, &admin);
            assert_eq!(status, 200, "{text}");
            let sent = sample(
                &text,
                &format!("nimbus_instance_network_transmit_packets_total{labels}"),
            )?;
            let received = sample(
                &text,
                &format!("nimbus_instance_network_receive_packets_total{labels}"),
            )?;
            let vcpu = sample(
                &text,
                &format!("nimbus_instance_vcpu_seconds_total{labels}"),
            )?;
            (sent > 0.0 && received > 0.0 && vcpu > 0.0).then_some((sent, received, vcpu))
        },
    );
    assert!(
        sent >= 1.0 && received >= 1.0 && vcpu > 0.0,
        "sent {sent}, received {received}, vCPU {vcpu}"
    );
    cloud.ok(&["instance", "rm", "--force", "vm1"]);
}
