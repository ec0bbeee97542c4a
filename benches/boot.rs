//! Boot latency and memory of VMs and unikernels: API create → a marker on
//! the guest's serial console, for the tiny guest (128 MiB) and the test
//! unikernel, against bare QEMU run by hand with the identical command line
//! (the one the agent wrote for Nimbus, from `vm.json`) in the same run. Also
//! the RSS of shim + QEMU against bare QEMU for the booted tiny guest.
//!
//! Run: `cargo bench -p nimbus-cli --bench boot` (as root). Set
//! NIMBUS_BENCH_RUNS to change the 10 runs. The accelerator (KVM or TCG) is
//! the host's probed one and is printed with the figures.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nimbus_agent::vm::{cmdline::qemu_command, Boot, VmShimSpec};
use support::*;

const TINY_MARKER: &str = "NIMBUS-TINY: ready";
const UK_MARKER: &str = "NIMBUS-UK: hello";

fn instance_id(cloud: &common::Cloud, name: &str) -> String {
    let token = cloud.admin_token();
    let (status, body) = common::http(
        cloud,
        "GET",
        &format!("/v1/projects/default/instances/{name}"),
        Some(&token),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("instance json");
    v["metadata"]["id"].as_str().expect("id").to_string()
}

/// Polls a console log until `marker` appears.
fn wait_for_marker_in(path: &Path, marker: &str, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).contains(marker))
            .unwrap_or(false)
        {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{marker:?} never appeared in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One Nimbus launch: create → marker. Returns the time and the spec the
/// agent wrote (for the bare run), plus shim and QEMU RSS when asked.
fn nimbus_boot(
    cloud: &common::Cloud,
    name: &str,
    spec: serde_json::Value,
    marker: &str,
    measure_rss: bool,
) -> (Duration, VmShimSpec, Option<(u64, u64)>) {
    let token = cloud.admin_token();
    let body = serde_json::to_vec(&serde_json::json!({"name": name, "spec": spec})).expect("json");
    let t0 = Instant::now();
    let (status, resp) = common::http(
        cloud,
        "POST",
        "/v1/projects/default/instances",
        Some(&token),
        &body,
    );
    assert_eq!(status, 201, "{resp}");
    let id = instance_id(cloud, name);
    let dir = cloud.data_dir().join("instances").join(&id);
    let t = wait_for_marker_in(&dir.join("console.log"), marker, Duration::from_secs(120));
    let elapsed = t - t0;
    let mut vm = VmShimSpec::load(&dir).expect("vm.json");
    // The bare run needs the seed after the instance is gone.
    if let Some(seed) = &vm.seed {
        let kept = cloud.data_dir().join(format!("{name}-seed.img"));
        std::fs::copy(seed, &kept).expect("keep the seed");
        vm.seed = Some(kept);
    }
    let rss = measure_rss.then(|| {
        std::thread::sleep(Duration::from_secs(2));
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("state.json")).expect("state"))
                .expect("state json");
        // A process that is gone is a failure, not 0 KiB.
        let shim_pid = state["shim_pid"].as_i64().expect("shim pid") as i32;
        let qemu_pid = state["pid"].as_i64().expect("qemu pid") as i32;
        let shim =
            rss_kib(shim_pid).unwrap_or_else(|| panic!("the shim {shim_pid} of {name} is gone"));
        let qemu = rss_kib(qemu_pid).unwrap_or_else(|| panic!("QEMU {qemu_pid} of {name} is gone"));
        (shim, qemu)
    });
    delete_instance(cloud, "default", name);
    // The next (bare) run must not share the CPU with this guest's power-off.
    common::wait_until(
        Duration::from_secs(60),
        "the instance to be removed",
        || (!dir.exists()).then_some(()),
    );
    (elapsed, vm, rss)
}

/// The same QEMU command line, run by hand: the seed copied into a scratch
/// directory that also holds QEMU's QMP socket and pid file.
fn bare_boot(
    spec: &VmShimSpec,
    scratch: &Path,
    marker: &str,
    measure_rss: bool,
) -> (Duration, Option<u64>) {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).expect("scratch dir");
    let mut spec = spec.clone();
    if let Some(seed) = &spec.seed {
        let copy = scratch.join("seed.img");
        std::fs::copy(seed, &copy).expect("copy seed");
        spec.seed = Some(copy);
    }
    assert!(
        matches!(spec.boot, Boot::Kernel { .. }),
        "the boot bench uses kernel images"
    );
    let (program, mut args) = qemu_command(&spec, scratch);
    // Nimbus holds the vCPUs (`-S`) until its shim has QMP; bare QEMU has
    // nobody to release them, so it runs at once.
    args.retain(|a| a != "-S");
    let t0 = Instant::now();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run qemu");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let elapsed = loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading bare QEMU's console: {e}"));
        assert!(n > 0, "bare QEMU ended before {marker:?}");
        if line.contains(marker) {
            break t0.elapsed();
        }
    };
    let rss = measure_rss.then(|| {
        std::thread::sleep(Duration::from_secs(2));
        rss_kib(child.id() as i32)
            .unwrap_or_else(|| panic!("bare QEMU {} ended before its memory was read", child.id()))
    });
    // Keep draining so a unikernel's last lines do not block it, then stop it.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, rss)
}

fn report(label: &str, nimbus: &[Duration], bare: &[Duration]) {
    let (n50, n90) = (percentile(nimbus, 50.0), percentile(nimbus, 90.0));
    let (b50, b90) = (percentile(bare, 50.0), percentile(bare, 90.0));
    println!(
        "{:<40} {:>10} {:>10}",
        format!("{label}: nimbus create -> marker"),
        ms(n50),
        ms(n90)
    );
    println!(
        "{:<40} {:>10} {:>10}",
        format!("{label}: bare qemu -> marker"),
        ms(b50),
        ms(b90)
    );
    let added = n50.as_secs_f64() - b50.as_secs_f64();
    println!(
        "ratio nimbus/bare (p50): {}  added {:+.1} ms  (goal <= 1.05x or <= +100 ms)",
        ratio(n50, b50),
        added * 1000.0
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("boot: bench");
        return;
    }
    let runs: usize = std::env::var("NIMBUS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let uk = common::guest("unikernel");
    let cloud = common::Cloud::start();
    cloud.import_tiny();
    cloud.ok(&[
        "image",
        "import-kernel",
        &uk.join("hello-uk").to_string_lossy(),
        "--name",
        "hello-uk",
    ]);
    let host = cloud.json(&["host", "get", &cloud.host]).expect("host");
    let accel = host["status"]["accelerator"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let scratch = tempfile::tempdir_in("/var/tmp").expect("scratch");

    let tiny_spec = serde_json::json!({
        "kind": "vm", "image": "tiny", "resources": {"memory_bytes": 128u64 << 20},
        "stop_grace_ms": 500
    });
    let uk_spec = serde_json::json!({
        "kind": "unikernel", "image": "hello-uk", "resources": {"memory_bytes": 32u64 << 20}
    });
    let (mut tiny_n, mut tiny_b, mut uk_n, mut uk_b) = (vec![], vec![], vec![], vec![]);
    let mut rss = None;
    let mut bare_rss = None;
    // Alternate Nimbus and bare runs so both see the same host load.
    for i in 0..runs {
        let last = i + 1 == runs;
        let (d, spec, r) = nimbus_boot(
            &cloud,
            &format!("tiny-{i}"),
            tiny_spec.clone(),
            TINY_MARKER,
            last,
        );
        tiny_n.push(d);
        if r.is_some() {
            rss = r;
        }
        let (d, r) = bare_boot(&spec, &scratch.path().join("tiny"), TINY_MARKER, last);
        tiny_b.push(d);
        if r.is_some() {
            bare_rss = r;
        }
        let (d, spec, _) = nimbus_boot(
            &cloud,
            &format!("uk-{i}"),
            uk_spec.clone(),
            UK_MARKER,
            false,
        );
        uk_n.push(d);
        let (d, _) = bare_boot(&spec, &scratch.path().join("uk"), UK_MARKER, false);
        uk_b.push(d);
    }

    println!("\n== boot to serial marker, accelerator {accel}, {runs} runs each");
    println!("{:<40} {:>10} {:>10}", "", "p50", "p90");
    report("tiny guest 128 MiB", &tiny_n, &tiny_b);
    report("unikernel 32 MiB", &uk_n, &uk_b);
    if let (Some((shim, qemu)), Some(bare)) = (rss, bare_rss) {
        println!(
            "\n== memory, tiny guest 128 MiB booted ({accel}): shim {:.1} MiB + QEMU {:.1} MiB = {:.1} MiB; bare QEMU {:.1} MiB; overhead {:+.1} MiB",
            shim as f64 / 1024.0,
            qemu as f64 / 1024.0,
            (shim + qemu) as f64 / 1024.0,
            bare as f64 / 1024.0,
            (shim + qemu) as f64 / 1024.0 - bare as f64 / 1024.0
        );
    }
    common::wait_until(Duration::from_secs(120), "instance cleanup", || {
        cloud.instance_ids().is_empty().then_some(())
    });
}
