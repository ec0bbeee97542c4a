//! Launch latency: API create → running, create → exited and create →
//! deleted for `/bin/true`, against `runc run` and `podman run --rm` of the
//! same rootfs (both include their teardown, so the ratios use create →
//! deleted), in
//! the same run (interleaved: one launch of each per round). Also a burst of 100 and the memory of a shim and an idle
//! `nimbus up`.
//!
//! Run: `cargo bench -p nimbus-cli --bench launch` (as root). Set
//! NIMBUS_BENCH_RUNS to change the 50 runs, NIMBUS_BENCH_BURST the burst of
//! 100 and NIMBUS_BENCH_SHIM_SECS the minute the shims run before their
//! memory is read (a quick run: `NIMBUS_BENCH_RUNS=5 NIMBUS_BENCH_BURST=10
//! NIMBUS_BENCH_SHIM_SECS=10`).
//!
//! The daemon and its shims run from a fresh copy of the release `nimbus`
//! and `nimbus-shim` in a temporary `bin/`, as `scripts/up` installs them
//! (a file just written is wholly in the page cache, which is what a user
//! who just installed Nimbus measures).

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
    let installed = install_binaries();
    println!(
        "== daemon and shims started from a fresh install in {}",
        installed.path().display()
    );
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
    let with_podman = have("podman");
    if with_podman {
        // Installed but failing is an error, not a missing peer.
        if let Err(e) = podman_import(&rootfs, &conf, work.path()) {
            panic!("podman is installed but could not import the starter rootfs: {e}");
        }
    } else {
        eprintln!("SKIPPED PEER: podman is not installed (scripts/deps installs it)");
    }

    // Rounds of one launch each, Nimbus, runc and podman in turn, so load
    // that comes and goes on the shared cores falls on all of them alike.
    // Each launch starts on a quiet host: the previous Nimbus instance is
    // gone. `runc run` and `podman run --rm` include their own teardown, so
    // the figure compared with them is create → deleted (API delete sent
    // once exited, until the API no longer knows the instance and its
    // directory is gone); create → exited is printed beside it.
    let mut to_running = Vec::new();
    let mut to_exited = Vec::new();
    let mut to_deleted = Vec::new();
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
        let deleted = wait_deleted(&cloud, &name, Duration::from_secs(30));
        to_deleted.push(deleted - t0);

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
    row("nimbus API create -> deleted", &to_deleted);
    row("runc run (create -> deleted)", &runc);
    row("podman run --rm --network none", &podman);
    // Like with like: the peers' figures include their teardown.
    let n50 = percentile(&to_deleted, 50.0);
    if !runc.is_empty() {
        println!(
            "ratio nimbus/runc   (p50, create -> deleted): {}  (goal <= 1.00x)",
            ratio(n50, percentile(&runc, 50.0))
        );
    }
    if !podman.is_empty() {
        println!(
            "ratio podman/nimbus (p50, create -> deleted): {}  (goal >= 5.00x)",
            ratio(percentile(&podman, 50.0), n50)
        );
    }

    shim_memory(&cloud, with_podman.then_some(conf.as_path()));
    if with_podman {
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .args(["rmi", "-f", "nimbus-bench-busybox"])
            .output();
    }

    // Burst: 100 concurrent creates, time until all run.
    let burst: usize = std::env::var("NIMBUS_BENCH_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
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

    // Memory of the burst's shims 3 s after their start (they trim their
    // startup pages again 2 s after it); the figures that count, after a
    // minute with logs and exec served, are in the table above.
    std::thread::sleep(Duration::from_secs(3));
    // Every shim is measured: a missing state file or process fails the
    // benchmark instead of leaving the shim out of the median.
    let shim_rss: Vec<u64> = cloud
        .instance_ids()
        .iter()
        .map(|id| {
            let path = cloud
                .data_dir()
                .join("instances")
                .join(id)
                .join("state.json");
            let text = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let st: serde_json::Value = serde_json::from_slice(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            let pid = st["shim_pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("no shim_pid in {}", path.display()));
            rss_kib(pid as i32).unwrap_or_else(|| panic!("shim {pid} of {id} is gone"))
        })
        .collect();
    let mut sorted = shim_rss.clone();
    sorted.sort();
    if let Some(median) = sorted.get(sorted.len() / 2) {
        println!(
            "\n== memory: burst shims 3 s after start, VmRSS median {:.2} MiB over {} shims",
            *median as f64 / 1024.0,
            sorted.len()
        );
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

/// Shims (and podman's conmon, the peer) measured as a user would: each
/// container prints a line every 5 s; after a minute `logs` and `exec` are
/// served, and the memory is read 5 s later, once the shim has trimmed
/// what the exec touched. VmRSS right after the exec is shown too.
fn shim_memory(cloud: &common::Cloud, podman_conf: Option<&std::path::Path>) {
    const SHIMS: usize = 3;
    const SETTLE: Duration = Duration::from_secs(5);
    let run_for = Duration::from_secs(
        std::env::var("NIMBUS_BENCH_SHIM_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let ticker = ["sh", "-c", "while true; do echo tick; sleep 5; done"];
    let names: Vec<String> = (0..SHIMS).map(|i| format!("mem-{i}")).collect();
    for name in &names {
        create_instance(
            cloud,
            "default",
            name,
            &ticker,
            serde_json::json!({"stop_grace_ms": 100}),
        );
    }
    let podman = |conf: &std::path::Path, args: &[&str]| -> Option<String> {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", conf)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let peer = podman_conf.and_then(|conf| {
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--runtime",
            "runc",
            "nimbus-bench-busybox",
        ];
        args.extend(ticker);
        let id = podman(conf, &args)?;
        let pid: i32 = podman(conf, &["inspect", "--format", "{{.State.ConmonPid}}", &id])?
            .parse()
            .ok()?;
        Some((conf, id, pid))
    });
    // podman is there (it imported the image): a failed run is an error.
    assert!(
        podman_conf.is_none() || peer.is_some(),
        "podman run -d of the peer failed or left no conmon to measure"
    );
    let shims: Vec<(String, i32)> = names
        .iter()
        .map(|name| {
            cloud.wait_phase(name, &["running"], Duration::from_secs(30));
            let id = cloud.instance(name)["metadata"]["id"]
                .as_str()
                .expect("instance id")
                .to_string();
            let state: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    cloud
                        .data_dir()
                        .join("instances")
                        .join(&id)
                        .join("state.json"),
                )
                .expect("state.json"),
            )
            .expect("state json");
            let pid = state["shim_pid"].as_i64().expect("shim_pid") as i32;
            (name.clone(), pid)
        })
        .collect();
    std::thread::sleep(run_for);
    let mut rows: Vec<(String, Memory, Option<u64>)> = Vec::new();
    let mut right_after = Vec::new();
    for (name, pid) in &shims {
        cloud.ok(&["instance", "logs", name]);
        cloud.ok(&["instance", "exec", name, "--", "ps"]);
        let rss = rss_kib(*pid).unwrap_or_else(|| panic!("shim {pid} of {name} is gone"));
        right_after.push(Some(rss));
    }
    let peer_right_after = peer.as_ref().map(|(conf, id, pid)| {
        podman(conf, &["logs", id]).expect("podman logs of the peer");
        podman(conf, &["exec", id, "ps"]).expect("podman exec of the peer");
        rss_kib(*pid).unwrap_or_else(|| panic!("the peer's conmon {pid} is gone"))
    });
    std::thread::sleep(SETTLE);
    for ((name, pid), after) in shims.iter().zip(right_after) {
        let m = memory_of(*pid).unwrap_or_else(|| panic!("shim {pid} of {name} is gone"));
        rows.push((format!("{} ({name})", exe_of(*pid)), m, after));
    }
    let shim_rows = rows.len();
    if let Some((_, _, pid)) = &peer {
        let m = memory_of(*pid).unwrap_or_else(|| panic!("the peer's conmon {pid} is gone"));
        rows.push(("conmon (podman run -d)".into(), m, peer_right_after));
    }
    println!(
        "\n== memory per shim after {} s running, then logs + exec, read {} s later",
        run_for.as_secs(),
        SETTLE.as_secs()
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>16}",
        "process", "VmRSS", "PSS", "anon", "file", "VmRSS at exec"
    );
    for (label, m, after) in &rows {
        println!(
            "{label:<28} {:>10} {:>10} {:>10} {:>10} {:>16}",
            mib(m.rss_kib),
            mib(m.pss_kib),
            mib(m.anon_kib),
            mib(m.file_kib),
            after.map(mib).unwrap_or_else(|| "-".into())
        );
    }
    let mut shim_rss: Vec<u64> = rows[..shim_rows].iter().map(|r| r.1.rss_kib).collect();
    shim_rss.sort();
    if let Some(worst) = shim_rss.last() {
        let goal = 3 * 1024;
        println!(
            "nimbus shim VmRSS max {} (goal <= 3 MiB: {}; containerd-shim ~5 MB)",
            mib(*worst),
            if *worst <= goal { "met" } else { "missed" }
        );
        if let Some((_, m, _)) = rows.get(shim_rows) {
            println!(
                "ratio conmon/nimbus shim (VmRSS, median): {:.2}x",
                m.rss_kib as f64 / shim_rss[shim_rss.len() / 2] as f64
            );
        }
    }
    for name in &names {
        delete_instance(cloud, "default", name);
    }
    if let Some((conf, id, _)) = &peer {
        let _ = podman(conf, &["rm", "-f", "-t", "0", id]);
    }
    common::wait_until(
        Duration::from_secs(60),
        "the memory instances to be gone",
        || {
            names
                .iter()
                .all(|n| cloud.json(&["instance", "get", n]).is_err())
                .then_some(())
        },
    );
}

/// Copies the release `nimbus` and `nimbus-shim` into a temporary `bin/`
/// (mode 0755, as `install` does) and has the cloud's daemon run from there,
/// so its shims start from an installed copy like `scripts/up`'s.
fn install_binaries() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::Builder::new()
        .prefix("nimbus-bench-bin-")
        .tempdir_in("/var/tmp")
        .expect("bin dir");
    let built = std::path::Path::new(common::NIMBUS);
    for name in ["nimbus", "nimbus-shim"] {
        let from = built.with_file_name(name);
        let to = bin.path().join(name);
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("installing {}: {e}", from.display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::env::set_var(common::DAEMON_EXE_ENV, bin.path().join("nimbus"));
    bin
}
