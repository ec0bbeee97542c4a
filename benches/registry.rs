//! Registry push and pull of a 500 MiB image, against copying the same
//! image between two directories of the same disk, in the same run:
//! - push: `skopeo copy oci:SRC docker://127.0.0.1:PORT/bench/big:rN` into
//!   the `nimbus up` this bench starts (TLS, a member's token);
//! - pull: `skopeo copy docker://.../bench/big:rN oci:PULLED` into a fresh
//!   directory;
//! - peer: `skopeo copy oci:SRC oci:COPY`, the same client and the same
//!   blob handling (digest checks, fsync of each blob) without a network or
//!   a server.
//!
//! Each round writes a new image (a busybox layer and random layers, see
//! `random_image.rs`) so that no blob is already present anywhere and
//! nothing is skipped. Rounds alternate which of peer and push+pull goes
//! first. The pushed tag is a project image as soon as the push returns (the
//! manifest PUT builds it); the bench checks that with `nimbus image get`
//! and prints when it first answered.
//!
//! Run: `cargo bench -p nimbus-cli --bench registry` (as root, skopeo
//! installed). Knobs: NIMBUS_BENCH_ROUNDS (default 3), NIMBUS_BENCH_IMAGE_MIB
//! (default 500), NIMBUS_BENCH_LAYERS (random layers, default 4).

#[path = "../tests/common/mod.rs"]
mod common;
mod random_image;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::{cert_dir, member};
use common::Cloud;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs skopeo and fails the benchmark, with its stderr, if it fails.
fn skopeo_timed(args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (Debian package `skopeo`, installed by scripts/deps)");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Every blob of the image is in layout `dir` with its size: the copy moved
/// the bytes, it did not stop at the manifest.
fn assert_holds_every_blob(dir: &Path, image: &random_image::Written, what: &str) {
    for (hex, size) in &image.blobs {
        let path = dir.join("blobs/sha256").join(hex);
        let have = std::fs::metadata(&path).map(|m| m.len()).ok();
        assert_eq!(
            have,
            Some(*size),
            "{what}: blob sha256:{hex} missing or of the wrong size in {}",
            dir.display()
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / took.as_secs_f64()
}

struct Registry<'a> {
    cloud: &'a Cloud,
    creds: String,
    certs: String,
}

impl Registry<'_> {
    fn reference(&self, tag: &str) -> String {
        format!("docker://127.0.0.1:{}/bench/big:{tag}", self.cloud.port)
    }

    fn push(&self, src: &Path, tag: &str) -> Duration {
        skopeo_timed(&[
            "copy",
            "--dest-creds",
            &self.creds,
            "--dest-cert-dir",
            &self.certs,
            &format!("oci:{}", src.display()),
            &self.reference(tag),
        ])
    }

    fn pull(&self, tag: &str, dst: &Path) -> Duration {
        skopeo_timed(&[
            "copy",
            "--src-creds",
            &self.creds,
            "--src-cert-dir",
            &self.certs,
            &self.reference(tag),
            &format!("oci:{}", dst.display()),
        ])
    }

    /// The image `big:<tag>` as `nimbus image get` shows it; it must name
    /// the pushed manifest.
    fn image_digest(&self, tag: &str) -> Option<String> {
        let v = self
            .cloud
            .json(&["image", "get", &format!("big:{tag}"), "--project", "bench"])
            .ok()?;
        v["status"]["digest"].as_str().map(str::to_string)
    }
}

/// One round's times.
struct Round {
    push: Duration,
    runnable: Duration,
    pull: Duration,
    peer: Duration,
}

fn round(reg: &Registry, work: &Path, base_tar: &Path, n: u64) -> (Round, u64) {
    let (layers, image_mib) = (
        knob("NIMBUS_BENCH_LAYERS", 4),
        knob("NIMBUS_BENCH_IMAGE_MIB", 500),
    );
    let src = work.join(format!("src-{n}"));
    let base_bytes = std::fs::metadata(base_tar).map(|m| m.len()).unwrap_or(0);
    let layer_bytes = ((image_mib << 20).saturating_sub(base_bytes) / layers.max(1)) & !511;
    let image = random_image::write_layout(&src, base_tar, layers as u32, layer_bytes, n)
        .unwrap_or_else(|e| panic!("writing the image layout {}: {e}", src.display()));
    let tag = format!("r{n}");
    let (pulled, copied) = (
        work.join(format!("pulled-{n}")),
        work.join(format!("copied-{n}")),
    );
    let peer = || {
        skopeo_timed(&[
            "copy",
            &format!("oci:{}", src.display()),
            &format!("oci:{}", copied.display()),
        ])
    };
    let registry = || {
        let start = Instant::now();
        let push = reg.push(&src, &tag);
        let digest = common::wait_until(Duration::from_secs(120), "the pushed image", || {
            reg.image_digest(&tag)
        });
        let runnable = start.elapsed();
        assert_eq!(
            digest, image.manifest_digest,
            "image big:{tag} is not the pushed manifest"
        );
        let pull = reg.pull(&tag, &pulled);
        (push, runnable, pull)
    };
    let (peer, (push, runnable, pull)) = if n % 2 == 1 {
        let p = peer();
        (p, registry())
    } else {
        let r = registry();
        (peer(), r)
    };
    assert_holds_every_blob(&pulled, &image, "pull");
    assert_holds_every_blob(&copied, &image, "peer copy");
    for dir in [&src, &pulled, &copied] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let bytes = image.bytes();
    (
        Round {
            push,
            runnable,
            pull,
            peer,
        },
        bytes,
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    if !support::have("skopeo") {
        eprintln!("registry benchmark cannot run: skopeo is missing (apt-get install skopeo, or run scripts/deps)");
        std::process::exit(1);
    }
    if !common::is_root("nimbus up") {
        std::process::exit(1);
    }
    let rounds = knob("NIMBUS_BENCH_ROUNDS", 3).max(1);
    println!("load average before: {}", load_average());
    let cloud = Cloud::start();
    let token = member(&cloud, "bencher", "member", "bench");
    let reg = Registry {
        cloud: &cloud,
        creds: format!("x:{token}"),
        certs: cert_dir(&cloud).to_string_lossy().to_string(),
    };
    // Beside the cloud's data dir in /var/tmp: the same filesystem.
    let work = tempfile::Builder::new()
        .prefix("nimbus-regbench-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let base_tar = Path::new(&cloud.starter_tar()).to_path_buf();
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "round", "MiB", "push MiB/s", "pull MiB/s", "peer MiB/s", "push/peer", "pull/peer"
    );
    let mut all = Vec::new();
    for n in 1..=rounds {
        let (r, bytes) = round(&reg, work.path(), &base_tar, n);
        let (push, pull, peer) = (
            mib_per_s(bytes, r.push),
            mib_per_s(bytes, r.pull),
            mib_per_s(bytes, r.peer),
        );
        println!(
            "{n:<6} {:>10.1} {push:>10.1} {pull:>10.1} {peer:>10.1} {:>10.2} {:>10.2}   (push {:.2} s, image runnable {:.2} s after the push began, pull {:.2} s, peer {:.2} s)",
            bytes as f64 / f64::from(1 << 20),
            push / peer,
            pull / peer,
            r.push.as_secs_f64(),
            r.runnable.as_secs_f64(),
            r.pull.as_secs_f64(),
            r.peer.as_secs_f64(),
        );
        all.push((
            push,
            pull,
            peer,
            r.runnable.as_secs_f64() - r.push.as_secs_f64(),
        ));
    }
    let col = |f: fn(&(f64, f64, f64, f64)) -> f64| median(all.iter().map(f).collect());
    let (push, pull, peer) = (col(|r| r.0), col(|r| r.1), col(|r| r.2));
    println!(
        "median {:>10} {push:>10.1} {pull:>10.1} {peer:>10.1} {:>10.2} {:>10.2}",
        "",
        push / peer,
        pull / peer
    );
    println!(
        "image runnable after the push returned: median {:.0} ms more (the manifest PUT builds the image before answering)",
        col(|r| r.3) * 1000.0
    );
    println!("load average after: {}", load_average());
}
