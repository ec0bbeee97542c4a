//! Workloads outlive the daemon: `kill -9` of `nimbus up` leaves
//! containers running; the next start re-adopts them and records exits
//! that happened meanwhile.

mod common;

use std::time::Duration;

use common::Cloud;

const T: Duration = Duration::from_secs(60);

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn containers_survive_daemon_kill_and_are_readopted() {
    let mut cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "keeper", "--image", "busybox", "--", "sleep", "600",
    ]);
    cloud.ok(&[
        "instance",
        "run",
        "quitter",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "sleep 3; exit 5",
    ]);
    let keeper = cloud.wait_phase("keeper", &["running"], T);
    let pid = keeper["status"]["pid"].as_i64().unwrap();
    cloud.wait_phase("quitter", &["running"], T);

    cloud.kill_daemon();
    assert!(
        alive(pid),
        "the container must survive kill -9 of the daemon"
    );
    // quitter exits while nobody watches.
    std::thread::sleep(Duration::from_secs(4));
    assert!(alive(pid));

    cloud.spawn_daemon();
    cloud.wait_ready();
    let v = cloud.wait_phase("quitter", &["exited"], T);
    assert_eq!(
        v["status"]["exit_code"], 5,
        "the exit during the downtime is recorded: {v}"
    );
    let v = cloud.wait_phase("keeper", &["running"], T);
    assert_eq!(
        v["status"]["pid"].as_i64(),
        Some(pid),
        "same process, re-adopted"
    );

    // The re-adopted instance can still be controlled.
    let ps = cloud.ok(&["instance", "exec", "keeper", "--", "ps"]);
    assert!(ps.contains("sleep 600"));
    cloud.ok(&["instance", "stop", "keeper"]);
    assert!(!alive(pid));
    cloud.remove_everything();
}
