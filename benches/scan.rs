//! Scan time of an image with 1,000 packages against a 100,000-advisory OSV
//! data set, both generated here: the import (validate + index) is timed
//! once, the scan (inventory parse + 1,000 indexed lookups + range matching)
//! several times. No other scanner runs offline on this machine, so no peer
//! is measured; the figure is absolute.
//!
//! Run: `cargo bench -p nimbus-vuln --bench scan`.

use std::io::Write;
use std::time::{Duration, Instant};

use nimbus_vuln::{import_zip, scan_image, MapFiles, VulnIndex};

const ADVISORIES: usize = 100_000;
const PACKAGES_IN_INDEX: usize = 20_000;
const IMAGE_PACKAGES: usize = 1_000;
const SCAN_RUNS: usize = 7;

fn advisory(i: usize) -> String {
    let package = format!("pkg{:05}", i % PACKAGES_IN_INDEX);
    // Each package gets five advisories fixed at successive revisions.
    let fixed = format!("1.{}-{}", i / PACKAGES_IN_INDEX, 1 + i % 3);
    format!(
        r#"{{"id":"DEBIAN-CVE-2024-{i:06}","modified":"2024-05-01T00:00:00Z","aliases":["CVE-2024-{i:06}"],"summary":"generated","severity":[{{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}}],"affected":[{{"package":{{"ecosystem":"Debian:12","name":"{package}"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"{fixed}"}}]}}]}}]}}"#
    )
}

fn write_export(path: &std::path::Path) {
    let file = std::fs::File::create(path).expect("zip");
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..ADVISORIES {
        zip.start_file(format!("DEBIAN-CVE-2024-{i:06}.json"), options)
            .expect("entry");
        zip.write_all(advisory(i).as_bytes()).expect("write");
    }
    zip.finish().expect("finish");
}

/// 1,000 installed packages; every fourth is a binary of an indexed source
/// package (so the source-name lookup runs too), half are in the index.
fn image_files() -> MapFiles {
    let mut status = String::new();
    for i in 0..IMAGE_PACKAGES {
        let indexed = format!("pkg{:05}", i * (PACKAGES_IN_INDEX / IMAGE_PACKAGES));
        let name = if i % 2 == 0 {
            indexed.clone()
        } else {
            format!("unindexed{i}")
        };
        status.push_str(&format!(
            "Package: {name}\nStatus: install ok installed\nVersion: 1.2-1\n"
        ));
        if i % 4 == 0 {
            status.push_str(&format!("Source: {indexed}\n"));
        }
        status.push('\n');
    }
    let mut files = MapFiles::default();
    files.0.insert(
        "/etc/os-release".into(),
        b"ID=debian\nVERSION_ID=\"12\"\n".to_vec(),
    );
    files
        .0
        .insert("/var/lib/dpkg/status".into(), status.into_bytes());
    files
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let zip_path = dir.path().join("osv.zip");
    let started = Instant::now();
    write_export(&zip_path);
    let zip_bytes = std::fs::metadata(&zip_path).expect("zip").len();
    println!(
        "generated {ADVISORIES} advisories ({PACKAGES_IN_INDEX} packages), zip {:.1} MiB, in {:.1} s",
        zip_bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );

    let db_dir = dir.path().join("vulndb");
    let started = Instant::now();
    let summary = import_zip(&db_dir, &zip_path, "sha256:bench").expect("import");
    let import_time = started.elapsed();
    let index_bytes = std::fs::metadata(db_dir.join("osv.sqlite"))
        .expect("index")
        .len();
    println!(
        "import: {} records validated and indexed in {:.2} s; index {:.1} MiB",
        summary.records,
        import_time.as_secs_f64(),
        index_bytes as f64 / (1 << 20) as f64
    );

    let index = VulnIndex::open(&db_dir).expect("open").expect("index");
    let files = image_files();
    let mut times: Vec<Duration> = Vec::with_capacity(SCAN_RUNS);
    let mut findings = 0;
    let mut packages = 0;
    for _ in 0..SCAN_RUNS {
        let started = Instant::now();
        let report = scan_image(&files, &index).expect("scan");
        times.push(started.elapsed());
        findings = report.findings.len();
        packages = report.inventory.packages.len();
    }
    times.sort();
    let median = times[SCAN_RUNS / 2];
    assert_eq!(
        packages, IMAGE_PACKAGES,
        "the generated image lists every package"
    );
    assert!(findings > 0, "the generated image matches advisories");
    println!(
        "scan: {packages} packages against {ADVISORIES} advisories: median {:.1} ms (min {:.1}, max {:.1}, {SCAN_RUNS} runs), {findings} findings, {:.1} us per package",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[SCAN_RUNS - 1].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / packages as f64
    );
}
