//! A host that fences itself and stops heartbeating: its instances with a
//! restart policy run on another host within the bound, those without are
//! marked failed, and the host shows unreachable. The lost host is
//! registered through the API and heartbeated by the test (it runs
//! nothing); the host its instances move to is the real local agent.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_at, is_root, wait_until, Cloud};

/// The lost host's fencing lease: its deadline is this plus the server's
/// 4 s margin.
const LEASE_MS: u64 = 2_000;

/// The issue's bound, from the last heartbeat to running elsewhere.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

fn register_lost_host(data_dir: &std::path::Path, admin: &str) {
    let body = format!(
        r#"{{"name":"lost-1","labels":{{"site":"remote"}},"spec":{{}},"status":{{"phase":"ready","cpus":4,"memory_bytes":8589934592,"disk_bytes":107374182400,"architecture":"x86_64","kernel":"fake","fence_after_ms":{LEASE_MS}}}}}"#
    );
    let (status, resp) = http_at(
        data_dir,
        "POST",
        "/v1/hosts",
        Some(admin),
        body.as_bytes(),
        "application/json",
    );
    assert_eq!(status, 200, "registering lost-1: {resp}");
}

/// Heartbeats lost-1 every 300 ms until stopped; returns when the last
/// accepted heartbeat was sent.
struct Heart {
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<Instant>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heart {
    fn start(cloud: &Cloud) -> Heart {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(Instant::now()));
        let (data_dir, admin) = (cloud.data_dir().to_path_buf(), cloud.admin_token());
        let (flag, stamp) = (stop.clone(), last.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let sent = Instant::now();
                register_lost_host(&data_dir, &admin);
                *stamp.lock().unwrap() = sent;
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Heart {
            stop,
            last,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Instant {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("heartbeat thread");
        }
        let last = *self.last.lock().unwrap();
        last
    }
}

#[test]
fn a_fenced_host_s_instances_with_a_restart_policy_run_elsewhere_within_15_s() {
    if !is_root("host failure test") {
        return;
    }
    let cloud = Cloud::start_with(&["--host-label", "site=local"]);
    let admin = cloud.admin_token();
    register_lost_host(cloud.data_dir(), &admin);
    let heart = Heart::start(&cloud);

    // Preferred labels win over spread: both land on lost-1.
    for (name, restart) in [("web", "always"), ("once", "never")] {
        cloud.ok(&[
            "instance",
            "run",
            name,
            "--image",
            "busybox",
            "--no-wait",
            "--restart",
            restart,
            "--prefer",
            "label:site=remote",
            "--",
            "sleep",
            "600",
        ]);
        let host = wait_until(
            Duration::from_secs(20),
            &format!("{name} to be placed"),
            || {
                cloud.instance(name)["status"]["host"]
                    .as_str()
                    .map(str::to_string)
            },
        );
        assert_eq!(
            host, "lost-1",
            "{name} was not placed on the preferred host"
        );
    }

    let last_beat = heart.stop();
    let moved = wait_until(
        RECOVERY_BOUND + Duration::from_secs(30),
        "web to run on another host",
        || {
            let i = cloud.instance("web");
            let host = i["status"]["host"].as_str()?;
            (host != "lost-1" && i["status"]["phase"] == "running").then_some(i)
        },
    );
    let took = last_beat.elapsed();
    println!(
        "recovery: web runs on {} {:.1} s after lost-1's last heartbeat",
        moved["status"]["host"],
        took.as_secs_f64()
    );
    assert!(
        took <= RECOVERY_BOUND,
        "web took {took:?} from the last heartbeat to run elsewhere (bound {RECOVERY_BOUND:?}): {moved}"
    );

    // Without a restart policy it is not moved: it failed with its host.
    let once = cloud.wait_phase("once", &["failed"], Duration::from_secs(10));
    assert_eq!(once["status"]["host"], "lost-1", "{once}");
    let reason = once["status"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("unreachable"), "{once}");

    let hosts = cloud.json(&["host", "list"]).expect("host list");
    let lost = hosts["items"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["metadata"]["name"] == "lost-1")
        .expect("lost-1 listed");
    assert_eq!(lost["status"]["phase"], "unreachable", "{lost}");

    let events = cloud.json(&["events"]).expect("events");
    let unreachable = events["items"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "host_unreachable")
        .count();
    assert_eq!(unreachable, 1, "one host_unreachable event: {events}");

    // The host comes back: what moved stays where it runs now.
    register_lost_host(cloud.data_dir(), &admin);
    std::thread::sleep(Duration::from_secs(2));
    let web = cloud.instance("web");
    assert_eq!(web["status"]["host"], moved["status"]["host"], "{web}");
    assert_eq!(web["status"]["phase"], "running", "{web}");
    cloud.ok(&["instance", "rm", "--force", "web"]);
    cloud.ok(&["instance", "rm", "--force", "once"]);
}
