//! Volume I/O: `fio` sequential write/read in 1 MiB blocks and random
//! 4 KiB read/write (direct I/O, libaio, 16 in flight) on
//! (a) the host filesystem under the data directory, the peer every ratio
//!     is taken against, and
//! (b) a Nimbus volume attached to a running container: the ext4 on the
//!     loop device over qemu-storage-daemon's FUSE export of the qcow2,
//!     i.e. the stack the container's writes go through. The busybox
//!     image has no fio, so fio runs on the host against the container's
//!     mounted volume (`<instance dir>/volumes/<name>/mnt`), the same
//!     filesystem the container sees at its path.
//! (c) VM volumes (virtio-blk) are not in this branch: that row is skipped
//!     and says so.
//!
//! Run: `cargo bench -p nimbus-cli --bench volumes` (as root, with `fio`
//! from scripts/deps). NIMBUS_BENCH_FIO_SECS changes the 6 s per job and
//! NIMBUS_BENCH_FIO_MIB the 128 MiB file.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::have;

/// One fio job: its name, `--rw`, block size.
const JOBS: [(&str, &str, &str); 4] = [
    ("seq write 1M", "write", "1M"),
    ("seq read 1M", "read", "1M"),
    ("rand write 4K", "randwrite", "4k"),
    ("rand read 4K", "randread", "4k"),
];

#[derive(Clone, Copy, Default)]
struct Figures {
    mb_per_s: f64,
    iops: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one job on `file`; direct I/O unless the filesystem refuses it.
fn fio(file: &Path, rw: &str, bs: &str, secs: u64, mib: u64) -> Result<(Figures, bool), String> {
    let attempt = |direct: bool| -> Result<Figures, String> {
        let out = Command::new("fio")
            .args([
                "--name=bench",
                "--ioengine=libaio",
                "--iodepth=16",
                "--output-format=json",
                "--time_based=1",
                "--ramp_time=1",
                "--randrepeat=0",
                "--end_fsync=1",
            ])
            .arg(format!("--filename={}", file.display()))
            .arg(format!("--rw={rw}"))
            .arg(format!("--bs={bs}"))
            .arg(format!("--size={mib}M"))
            .arg(format!("--runtime={secs}"))
            .arg(format!("--direct={}", u8::from(direct)))
            .output()
            .map_err(|e| format!("cannot run fio: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "fio {rw} on {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("fio printed no JSON ({e})"))?;
        let side = if rw.contains("read") { "read" } else { "write" };
        let job = &v["jobs"][0][side];
        Ok(Figures {
            mb_per_s: job["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            iops: job["iops"].as_f64().unwrap_or(0.0),
        })
    };
    match attempt(true) {
        Ok(f) => Ok((f, true)),
        Err(direct_error) => attempt(false)
            .map(|f| (f, false))
            .map_err(|e| format!("{direct_error}; buffered: {e}")),
    }
}

/// All jobs on one directory, on a fresh file.
fn run_all(dir: &Path, secs: u64, mib: u64) -> Vec<(Figures, bool)> {
    let file = dir.join("fio.dat");
    let figures = JOBS
        .iter()
        .map(|(name, rw, bs)| {
            fio(&file, rw, bs, secs, mib).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect();
    let _ = std::fs::remove_file(&file);
    figures
}

/// The host-side mount of volume `volume` of instance `name`.
fn mounted_volume(cloud: &common::Cloud, name: &str, volume: &str) -> PathBuf {
    let id = cloud.instance(name)["metadata"]["id"]
        .as_str()
        .expect("an instance id")
        .to_string();
    let mnt = cloud
        .data_dir()
        .join("instances")
        .join(id)
        .join("volumes")
        .join(volume)
        .join("mnt");
    assert!(
        common::mounts_under(cloud.data_dir())
            .iter()
            .any(|m| Path::new(m) == mnt),
        "{} is not mounted",
        mnt.display()
    );
    mnt
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("volumes: bench");
        return;
    }
    if !have("fio") {
        panic!("fio is not installed: run scripts/deps (it installs the Debian package fio)");
    }
    let secs = env_or("NIMBUS_BENCH_FIO_SECS", 6);
    let mib = env_or("NIMBUS_BENCH_FIO_MIB", 128);
    let cloud = common::Cloud::start();

    let host_dir = cloud.data_dir().join("fio-host");
    std::fs::create_dir_all(&host_dir).expect("host dir");
    println!("== (a) host filesystem: {}", host_dir.display());
    let host = run_all(&host_dir, secs, mib);

    let size = format!("{}MiB", mib * 2 + 64);
    cloud.ok(&["volume", "create", "bench", "--size", &size]);
    cloud.ok(&[
        "instance",
        "run",
        "holder",
        "--image",
        "busybox",
        "--volume",
        "bench:/data",
        "--",
        "sleep",
        "3600",
    ]);
    let mnt = mounted_volume(&cloud, "holder", "bench");
    println!(
        "== (b) container volume (ext4 / loop / FUSE / qemu-storage-daemon / qcow2), fio from the host on {}",
        mnt.display()
    );
    let container = run_all(&mnt, secs, mib);
    println!("== (c) VM volume (virtio-blk): SKIPPED, VM volumes are not in this build");

    println!();
    println!(
        "{:<26} {:<14} {:>10} {:>10} {:>9}",
        "target", "job", "MB/s", "IOPS", "vs host"
    );
    for (target, rows) in [("host fs", &host), ("container volume", &container)] {
        for (i, (name, _, _)) in JOBS.iter().enumerate() {
            let (f, direct) = rows[i];
            let base = host[i].0;
            let ratio = if base.iops > 0.0 {
                format!("{:.2}x", f.iops / base.iops)
            } else {
                "-".into()
            };
            let label = format!("{target}{}", if direct { "" } else { " (buffered)" });
            println!(
                "{label:<26} {name:<14} {:>10.1} {:>10.0} {ratio:>9}",
                f.mb_per_s, f.iops
            );
        }
    }
    println!(
        "{:<26} {:<14} {:>10} {:>10} {:>9}",
        "VM volume", "-", "skipped", "-", "-"
    );
    println!(
        "\n(fio {secs} s per job after 1 s ramp, {mib} MiB file, libaio, iodepth 16, direct I/O unless marked buffered)"
    );

    cloud.ok(&["instance", "rm", "holder"]);
    common::wait_until(Duration::from_secs(60), "the holder to be gone", || {
        cloud
            .json(&["instance", "get", "holder"])
            .is_err()
            .then_some(())
    });
    cloud.ok(&["volume", "rm", "bench"]);
}
