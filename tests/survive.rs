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
    cloud.ok(&[
        "instance",
        "run",
        "phoenix",
        "--image",
        "busybox",
        "--restart",
        "always",
        "--",
        "sleep",
        "600",
    ]);
    let keeper = cloud.wait_phase("keeper", &["running"], T);
    let pid = keeper["status"]["pid"].as_i64().unwrap();
    let quitter = cloud.wait_phase("quitter", &["running"], T);
    let quitter_pid = quitter["status"]["pid"].as_i64().unwrap();
    let phoenix = cloud.wait_phase("phoenix", &["running"], T);
    let phoenix_pid = phoenix["status"]["pid"].as_i64().unwrap();
    let phoenix_dir = cloud
        .data_dir()
        .join("instances")
        .join(phoenix["metadata"]["id"].as_str().unwrap());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(phoenix_dir.join("state.json")).unwrap()).unwrap();
    let phoenix_shim = state["shim_pid"].as_i64().unwrap() as i32;

    cloud.kill_daemon();
    assert!(
        alive(pid),
        "the container must survive kill -9 of the daemon"
    );
    // As after a crash: phoenix loses its supervisor and its process.
    // SAFETY: signalling processes this test started.
    unsafe {
        libc::kill(phoenix_shim, libc::SIGKILL);
        libc::kill(phoenix_pid as i32, libc::SIGKILL);
    }
    // quitter exits while nobody watches.
    common::wait_until(T, "quitter to exit", || (!alive(quitter_pid)).then_some(()));
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
    // phoenix's restart policy brings it back with a new process.
    let v = common::wait_until(T, "phoenix to run again", || {
        let v = cloud.instance("phoenix");
        (v["status"]["phase"] == "running" && v["status"]["pid"].as_i64()? != phoenix_pid)
            .then_some(v)
    });
    assert!(alive(v["status"]["pid"].as_i64().unwrap()));

    // The re-adopted instance can still be controlled.
    let ps = cloud.ok(&["instance", "exec", "keeper", "--", "ps"]);
    assert!(ps.contains("sleep 600"));
    cloud.ok(&["instance", "stop", "keeper"]);
    assert!(!alive(pid));
    cloud.remove_everything();
}
