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
//! (c) a Nimbus volume attached to a running tiny VM (virtio-blk on the
//!     qcow2 in the VM's QEMU, under TCG here): fio runs inside the guest
//!     on the raw virtio disk, driven through the serial console. Debian's
//!     fio links ~84 MB of libraries (ceph, gluster, ...), too much for the
//!     tiny initramfs, so the bench puts fio and the libraries `ldd` names
//!     on a second volume (written through a container's mount) that the
//!     guest mounts and runs fio from with the copied program loader.
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

use common::guest::{guest_disk, guest_run, guest_run_waiting, run_vm};
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

/// fio's terse (v3) line: read KiB/s and IOPS are fields 7 and 8, write
/// 48 and 49 (1-based).
fn parse_terse(line: &str, rw: &str) -> Option<Figures> {
    let fields: Vec<&str> = line.trim().split(';').collect();
    let (bw, iops) = if rw.contains("read") {
        (6, 7)
    } else {
        (47, 48)
    };
    Some(Figures {
        mb_per_s: fields.get(bw)?.parse::<f64>().ok()? * 1024.0 / 1e6,
        iops: fields.get(iops)?.parse().ok()?,
    })
}

/// Copies fio and the libraries it loads (and the program loader) into
/// `dir`: `dir/fio`, `dir/lib/*`, `dir/ld.so`.
fn copy_fio_with_libraries(dir: &Path) {
    let fio = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("fio"))
                .find(|p| p.is_file())
        })
        .expect("fio is on PATH");
    std::fs::create_dir_all(dir.join("lib")).expect("lib dir");
    std::fs::copy(&fio, dir.join("fio")).expect("copy fio");
    let ldd = Command::new("ldd").arg(&fio).output().expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (path, loader) = match words.as_slice() {
            [_, "=>", path, ..] if path.starts_with('/') => (*path, false),
            [path, ..] if path.starts_with('/') => (*path, true),
            _ => continue,
        };
        let target = if loader {
            dir.join("ld.so")
        } else {
            dir.join("lib")
                .join(Path::new(path).file_name().expect("a file name"))
        };
        std::fs::copy(path, &target).unwrap_or_else(|e| panic!("copying {path}: {e}"));
    }
}

/// (c): fio inside the tiny VM on the virtio disk of volume `vmbench`.
fn run_in_vm(cloud: &common::Cloud, secs: u64, mib: u64) -> Vec<(Figures, bool)> {
    cloud.import_tiny();
    cloud.ok(&["volume", "create", "tools", "--size", "256MiB"]);
    cloud.ok(&[
        "instance",
        "run",
        "toolsmith",
        "--image",
        "busybox",
        "--volume",
        "tools:/tools",
        "--",
        "sleep",
        "3600",
    ]);
    cloud.wait_phase("toolsmith", &["running"], Duration::from_secs(60));
    copy_fio_with_libraries(&mounted_volume(cloud, "toolsmith", "tools"));
    remove_instance(cloud, "toolsmith");
    let size = format!("{}MiB", mib + 64);
    cloud.ok(&["volume", "create", "vmbench", "--size", &size]);
    run_vm(
        cloud,
        "fiovm",
        &[
            "--memory", "256MiB", "--volume", "tools", "--volume", "vmbench",
        ],
    );
    let tools = guest_disk(cloud, "fiovm", "tools").expect("the guest sees the tools disk");
    let disk = guest_disk(cloud, "fiovm", "vmbench").expect("the guest sees the bench disk");
    guest_run(
        cloud,
        "fiovm",
        &format!("mkdir -p /mnt/tools && mount -t ext4 -o ro /dev/{tools} /mnt/tools"),
    );
    let figures = JOBS
        .iter()
        .map(|(name, rw, bs)| {
            let out = guest_run_waiting(
                cloud,
                "fiovm",
                &format!(
                    "/mnt/tools/ld.so --library-path /mnt/tools/lib /mnt/tools/fio --name=bench --filename=/dev/{disk} --ioengine=libaio --iodepth=16 --direct=1 --time_based=1 --ramp_time=1 --randrepeat=0 --end_fsync=1 --rw={rw} --bs={bs} --size={mib}M --runtime={secs} --output-format=terse --terse-version=3 2>&1"
                ),
                Duration::from_secs(secs * 4 + 60),
            );
            let line = out.lines().find(|l| l.starts_with("3;fio-"));
            let f = line
                .and_then(|l| parse_terse(l, rw))
                .unwrap_or_else(|| panic!("{name} in the VM printed no fio result: {out}"));
            (f, true)
        })
        .collect();
    remove_instance(cloud, "fiovm");
    cloud.ok(&["volume", "rm", "vmbench"]);
    cloud.ok(&["volume", "rm", "tools"]);
    figures
}

fn remove_instance(cloud: &common::Cloud, name: &str) {
    cloud.ok(&["instance", "rm", name]);
    common::wait_until(
        Duration::from_secs(60),
        &format!("{name} to be gone"),
        || {
            cloud
                .json(&["instance", "get", name])
                .is_err()
                .then_some(())
        },
    );
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
    println!("== (c) VM volume (virtio-blk on the qcow2, tiny guest under TCG), fio inside the guest on the raw disk");
    let vm = run_in_vm(&cloud, secs, mib);

    println!();
    println!(
        "{:<26} {:<14} {:>10} {:>10} {:>9}",
        "target", "job", "MB/s", "IOPS", "vs host"
    );
    for (target, rows) in [
        ("host fs", &host),
        ("container volume", &container),
        ("VM volume (in guest)", &vm),
    ] {
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
        "\n(fio {secs} s per job after 1 s ramp, {mib} MiB file, libaio, iodepth 16, direct I/O unless marked buffered)"
    );

    remove_instance(&cloud, "holder");
    cloud.ok(&["volume", "rm", "bench"]);
}
