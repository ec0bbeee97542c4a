//! Launch latency: API create → running and create → exited for
//! `/bin/true`, against `runc run` and `podman run` of the same rootfs, in
//! the same run (interleaved: one launch of each per round). Also a burst of 100 and the memory of a shim and an idle
//! `nimbus up`.
//!
//! Run: `cargo bench -p nimbus-cli --bench launch` (as root). Set
//! NIMBUS_BENCH_RUNS to change the 50 runs.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("launch: bench");
        return;
    }
    let runs: usize = std::env::var("NIMBUS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let cloud = common::Cloud::start();
    let idle_rss = cloud.daemon.as_ref().and_then(|c| rss_kib(c.id() as i32));
    let phases = record_phases(&cloud, "default");

    // Peers: runc run of an equivalent bundle, podman run --network none
    // of the same rootfs.
    let rootfs = cloud.starter_rootfs();
    let work = tempfile::tempdir().expect("tmp");
    // Reachable from inside user namespaces.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let bundle = work.path().join("bundle");
    let with_runc = have("runc");
    if with_runc {
        // runc gets its own copy of the rootfs, owned by the range its user
        // namespace maps to root (Nimbus shows the shared layer through an
        // idmapped mount instead).
        let runc_rootfs = work.path().join("runc-rootfs");
        copy_rootfs_for_userns(&rootfs, &runc_rootfs, 200_000);
        runc_bundle(&bundle, &runc_rootfs, &["/bin/true"]);
    } else {
        eprintln!("SKIPPED PEER: runc is not installed (scripts/deps installs it)");
    }
    let conf = podman_env(work.path());
    let with_podman = have("podman") && podman_import(&rootfs, &conf, work.path());
    if !with_podman {
        eprintln!("SKIPPED PEER: podman is missing or could not import the rootfs");
    }

    // Rounds of one launch each, Nimbus, runc and podman in turn, so load
    // that comes and goes on the shared cores falls on all of them alike.
    // Each launch starts on a quiet host: the previous Nimbus instance is
    // gone (its teardown is not part of create → exited; runc's and
    // podman's own teardown is inside their figures).
    let mut to_running = Vec::new();
    let mut to_exited = Vec::new();
    let mut runc = Vec::new();
    let mut podman = Vec::new();
    for i in 0..runs {
        let name = format!("true-{i}");
        let t0 = Instant::now();
        create_instance(
            &cloud,
            "default",
            &name,
            &["/bin/true"],
            serde_json::json!({}),
        );
        let running = phases
            .wait(&name, &["running", "exited"], Duration::from_secs(30))
            .expect("running");
        let exited = phases
            .wait(&name, &["exited"], Duration::from_secs(30))
            .expect("exited");
        to_running.push(running - t0);
        to_exited.push(exited - t0);
        delete_instance(&cloud, "default", &name);
        common::wait_until(Duration::from_secs(30), "the instance to be gone", || {
            cloud
                .json(&["instance", "get", &name])
                .is_err()
                .then_some(())
        });

        if with_runc {
            let t0 = Instant::now();
            let st = Command::new("runc")
                .args([
                    "--root",
                    &work.path().join("runc-state").to_string_lossy(),
                    "run",
                    "--bundle",
                ])
                .arg(&bundle)
                .arg(format!("nimbus-bench-{i}"))
                .stdin(std::process::Stdio::null())
                .status()
                .expect("runc run");
            runc.push(t0.elapsed());
            assert!(st.success(), "runc run failed");
        }

        if with_podman {
            let t0 = Instant::now();
            let out = Command::new("podman")
                .env("CONTAINERS_CONF", &conf)
                .args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--runtime",
                    "runc",
                    "nimbus-bench-busybox",
                    "/bin/true",
                ])
                .output()
                .expect("podman run");
            podman.push(t0.elapsed());
            assert!(
                out.status.success(),
                "podman run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if with_podman {
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .args(["rmi", "-f", "nimbus-bench-busybox"])
            .output();
    }

    println!("\n== launch latency, /bin/true in busybox, {runs} runs each");
    println!("{:<34} {:>10} {:>10}", "", "p50", "p90");
    let row = |label: &str, s: &[Duration]| {
        if !s.is_empty() {
            println!(
                "{label:<34} {:>10} {:>10}",
                ms(percentile(s, 50.0)),
                ms(percentile(s, 90.0))
            );
        }
    };
    row("nimbus API create -> running", &to_running);
    row("nimbus API create -> exited", &to_exited);
    row("runc run (create -> exited)", &runc);
    row("podman run --network none", &podman);
    let n50 = percentile(&to_exited, 50.0);
    if !runc.is_empty() {
        println!(
            "ratio nimbus/runc   (p50, exited): {}  (goal <= 1.00x)",
            ratio(n50, percentile(&runc, 50.0))
        );
    }
    if !podman.is_empty() {
        println!(
            "ratio podman/nimbus (p50, exited): {}  (goal >= 5.00x)",
            ratio(percentile(&podman, 50.0), n50)
        );
    }

    // Burst: 100 concurrent creates, time until all run.
    let burst = 100;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..burst)
        .map(|i| {
            let dir = cloud.data_dir().to_path_buf();
            let token = cloud.admin_token();
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&serde_json::json!({
                    // Each instance reserves its memory limit on the host
                    // (1 GiB by default): 100 must fit at once.
                    "name": format!("burst-{i}"), "spec": {"image": "busybox", "args": ["sleep", "600"], "stop_grace_ms": 100, "resources": {"memory_bytes": 16 << 20}}
                }))
                .expect("json");
                let (s, r) = common::http_at(&dir, "POST", "/v1/projects/default/instances", Some(&token), &body, "application/json");
                assert_eq!(s, 201, "{r}");
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let mut last = t0;
    for i in 0..burst {
        let t = phases
            .wait(
                &format!("burst-{i}"),
                &["running"],
                Duration::from_secs(300),
            )
            .expect("burst instance running");
        last = last.max(t);
    }
    println!(
        "\n== burst: {burst} containers created concurrently, all running after {}",
        ms(last - t0)
    );

    // Memory: one shim with its container running, and the daemon. Shims
    // trim their startup pages again 2 s after the start: measure the steady
    // state, not the launch.
    std::thread::sleep(Duration::from_secs(3));
    let shim_rss: Vec<u64> = cloud
        .instance_ids()
        .iter()
        .filter_map(|id| {
            let st: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    cloud
                        .data_dir()
                        .join("instances")
                        .join(id)
                        .join("state.json"),
                )
                .ok()?,
            )
            .ok()?;
            rss_kib(st["shim_pid"].as_i64()? as i32)
        })
        .collect();
    let mut sorted = shim_rss.clone();
    sorted.sort();
    if let Some(median) = sorted.get(sorted.len() / 2) {
        println!("\n== memory: nimbus shim RSS median {:.2} MiB over {} shims (goal <= 3 MiB; containerd-shim ~5 MB)", *median as f64 / 1024.0, sorted.len());
    }
    if let Some(kib) = idle_rss {
        println!(
            "== memory: idle nimbus up RSS {:.1} MiB (goal <= 40 MiB)",
            kib as f64 / 1024.0
        );
    }
    for i in 0..burst {
        delete_instance(&cloud, "default", &format!("burst-{i}"));
    }
    common::wait_until(Duration::from_secs(300), "burst cleanup", || {
        cloud.instance_ids().is_empty().then_some(())
    });
}
