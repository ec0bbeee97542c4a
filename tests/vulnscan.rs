//! Vulnerability scanning end to end: an OSV export made here (real advisory
//! shapes), images whose dpkg/apk databases list a package at a vulnerable
//! and at a fixed version, the scan, the launch policy, hostile exports and
//! who may do what.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{tar_of, Cloud};
use serde_json::{json, Value};

const DEBIAN_ADVISORY: &str = "DEBIAN-CVE-2024-1111";
const ALPINE_ADVISORY: &str = "ALPINE-CVE-2024-2222";
const DEBIAN_FIXED: &str = "3.0.11-1~deb12u2";
const ALPINE_FIXED: &str = "1.36.1-r16";

/// An OSV Debian record: it names the SOURCE package (openssl), fixed in
/// the bookworm security update; CVSS 9.8, so critical.
fn debian_record() -> Value {
    json!({
        "schema_version": "1.6.0",
        "id": DEBIAN_ADVISORY,
        "modified": "2024-05-01T10:00:00Z",
        "published": "2024-04-20T00:00:00Z",
        "aliases": ["CVE-2024-1111"],
        "summary": "openssl: buffer overread in X.509 name checks",
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": [{
            "package": {"ecosystem": "Debian:12", "name": "openssl", "purl": "pkg:deb/debian/openssl?arch=source"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": DEBIAN_FIXED}]}],
            "ecosystem_specific": {"urgency": "not yet assigned"}
        }],
        "references": [{"type": "ADVISORY", "url": "https://security-tracker.debian.org/tracker/CVE-2024-1111"}]
    })
}

/// An OSV Alpine record (secdb shape): no CVSS, one range, HIGH from a CVSS
/// 7.5 vector.
fn alpine_record() -> Value {
    json!({
        "id": ALPINE_ADVISORY,
        "modified": "2024-06-02T00:00:00Z",
        "aliases": ["CVE-2024-2222"],
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}],
        "affected": [{
            "package": {"ecosystem": "Alpine:v3.19", "name": "busybox"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": ALPINE_FIXED}]}]
        }]
    })
}

/// A record of an ecosystem Nimbus does not match: counted, not indexed.
fn pypi_record() -> Value {
    json!({
        "id": "PYSEC-2024-1", "modified": "2024-01-01T00:00:00Z",
        "affected": [{"package": {"ecosystem": "PyPI", "name": "requests"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.32.0"}]}]}]
    })
}

/// A zip of `entries` (name, bytes), deflated as OSV's exports are.
fn zip_of(path: &Path, entries: &[(&str, Vec<u8>)]) -> String {
    let file = std::fs::File::create(path).expect("zip file");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    for (name, bytes) in entries {
        zip.start_file(*name, options).expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    }
    zip.finish().expect("zip finish");
    path.to_string_lossy().to_string()
}

fn good_export(dir: &Path) -> String {
    zip_of(
        &dir.join("osv.zip"),
        &[
            (
                "DEBIAN-CVE-2024-1111.json",
                debian_record().to_string().into_bytes(),
            ),
            (
                "ALPINE-CVE-2024-2222.json",
                alpine_record().to_string().into_bytes(),
            ),
            ("PYSEC-2024-1.json", pypi_record().to_string().into_bytes()),
        ],
    )
}

/// A runnable busybox image carrying `files` (path, content); its archive.
fn image_tar(dir: &Path, name: &str, files: &[(&str, String)]) -> String {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox is missing: install busybox-static (scripts/deps does)");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("sh link");
    for (path, content) in files {
        let to = root.join(path);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("dirs");
        std::fs::write(to, content).expect("file");
    }
    let tar = dir.join(format!("{name}.tar"));
    tar_of(&root, &tar);
    tar.to_string_lossy().to_string()
}

/// A Debian 12 image whose dpkg lists libssl3 (source openssl) at `version`;
/// `/etc/os-release` is a symlink into /usr/lib, as in Debian.
fn debian_image(dir: &Path, name: &str, version: &str, extra: &str) -> String {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release"))
        .expect("os-release link");
    image_tar(
            dir,
            name,
            &[
                (
                    "usr/lib/os-release",
                    "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n".into(),
                ),
                (
                    "var/lib/dpkg/status",
                    format!(
                        "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: {version}\nDescription: Secure Sockets Layer toolkit\n shared libraries\n\n{extra}"
                    ),
                ),
            ],
        )
}

fn alpine_image(dir: &Path, name: &str, version: &str) -> String {
    image_tar(
        dir,
        name,
        &[
            ("etc/os-release", "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\n".into()),
            (
                "lib/apk/db/installed",
                format!("C:Q1Xr3J=\nP:busybox\nV:{version}\nA:x86_64\no:busybox\n\nP:musl\nV:1.2.4_git20230717-r4\no:musl\n"),
            ),
        ],
    )
}

fn fails(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn token_for(cloud: &Cloud, user: &str) -> String {
    let v = cloud
        .json(&["token", "create", "--user", user])
        .expect("token create");
    v["secret"].as_str().expect("secret").to_string()
}

fn nimbus_as(cloud: &Cloud, token: &str, args: &[&str]) -> std::process::Output {
    cloud
        .command()
        .env("NIMBUS_TOKEN", token)
        .args(args)
        .output()
        .expect("run nimbus")
}

/// `instance run NAME --image IMAGE`: it must reach running; then removed.
fn runs(cloud: &Cloud, name: &str, image: &str) {
    let args = [
        "instance",
        "run",
        name,
        "--image",
        image,
        "--",
        "/bin/busybox",
        "sleep",
        "600",
    ];
    cloud.ok(&args);
    cloud.wait_phase(name, &["running"], Duration::from_secs(60));
    cloud.ok(&["instance", "rm", name]);
}

/// `instance run NAME --image IMAGE`: it must be refused; what it said.
fn refused(cloud: &Cloud, name: &str, image: &str) -> String {
    let args = [
        "instance",
        "run",
        name,
        "--image",
        image,
        "--no-wait",
        "--",
        "/bin/busybox",
        "sleep",
        "600",
    ];
    fails(&cloud.nimbus(&args))
}

fn scan_json(cloud: &Cloud, image: &str) -> Value {
    cloud
        .json(&["image", "scan", image])
        .unwrap_or_else(|e| panic!("scan of {image}: {e}"))
}

fn advisories(scan: &Value) -> Vec<String> {
    scan["status"]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["advisory"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_scan_finds_the_fixture_cve_and_the_policy_refuses_only_the_vulnerable_image() {
    if !common::is_root("containers") {
        return;
    }
    let cloud = Cloud::start();
    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    cloud.ok(&[
        "image",
        "import",
        &debian_image(w, "deb-old", "3.0.11-1~deb12u1", ""),
        "--name",
        "deb-old",
    ]);
    cloud.ok(&[
        "image",
        "import",
        &debian_image(w, "deb-new", DEBIAN_FIXED, ""),
        "--name",
        "deb-new",
    ]);
    cloud.ok(&[
        "image",
        "import",
        &alpine_image(w, "alp-old", "1.36.1-r15"),
        "--name",
        "alp-old",
    ]);

    // Nothing loaded yet: the scan says what to do.
    let said = fails(&cloud.nimbus(&["image", "scan", "deb-old"]));
    assert!(said.contains("nimbus vulndb import"), "{said}");

    let imported = cloud
        .json(&["vulndb", "import", &good_export(w)])
        .expect("vulndb import");
    assert_eq!(imported["records"], 3, "{imported}");
    assert_eq!(
        imported["skipped_records"], 1,
        "the PyPI record: {imported}"
    );
    let got = cloud.json(&["vulndb", "get"]).expect("vulndb get");
    assert_eq!(got["database"]["ecosystems"]["Debian:12"], 1, "{got}");
    assert_eq!(got["database"]["ecosystems"]["Alpine:v3.19"], 1, "{got}");
    assert_eq!(
        got["this_server_digest"], got["database"]["digest"],
        "{got}"
    );

    // The vulnerable dpkg package is found through its source package name.
    let old = scan_json(&cloud, "deb-old");
    assert_eq!(advisories(&old), vec![DEBIAN_ADVISORY], "{old}");
    let finding = &old["status"]["findings"][0];
    assert_eq!(finding["package"], "libssl3");
    assert_eq!(finding["source_package"], "openssl");
    assert_eq!(finding["severity"], "critical");
    assert_eq!(finding["fixed_version"], DEBIAN_FIXED);
    assert_eq!(
        old["status"]["ecosystem"], "Debian:12",
        "os-release read through its symlink"
    );
    // The fixed version has no finding.
    let new = scan_json(&cloud, "deb-new");
    assert_eq!(new["status"]["packages"], 1, "{new}");
    assert!(advisories(&new).is_empty(), "{new}");
    // apk ordering: -r15 is before the fix -r16.
    let alp = scan_json(&cloud, "alp-old");
    assert_eq!(advisories(&alp), vec![ALPINE_ADVISORY], "{alp}");
    assert_eq!(alp["status"]["findings"][0]["severity"], "high");
    assert_eq!(alp["status"]["findings"][0]["fixed_version"], ALPINE_FIXED);

    // What a user reads: the table and the summary in `image get`.
    let table = cloud.ok(&["image", "scan", "deb-old"]);
    let row = table
        .lines()
        .find(|l| l.contains(DEBIAN_ADVISORY))
        .unwrap_or_else(|| panic!("no row for the advisory:\n{table}"));
    for cell in ["libssl3", "3.0.11-1~deb12u1", "critical", DEBIAN_FIXED] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    let shown = cloud.ok(&["image", "get", "deb-old"]);
    assert!(shown.contains("vulnerabilities: 1 critical"), "{shown}");
    let shown = cloud.ok(&["image", "get", "deb-new"]);
    assert!(shown.contains("no known vulnerabilities"), "{shown}");
    // Scripts see the same summary in the image itself.
    let image = cloud.json(&["image", "get", "deb-old"]).expect("image get");
    let summary = &image["status"]["vulnerabilities"];
    assert_eq!(summary["counts"]["critical"], 1, "{image}");
    assert_eq!(summary["worst"], "critical", "{image}");
    assert_eq!(summary["findings"], 1, "{image}");
    assert_eq!(
        summary["vulndb_digest"], got["database"]["digest"],
        "{image}"
    );
    let image = cloud.json(&["image", "get", "deb-new"]).expect("image get");
    assert_eq!(image["status"]["vulnerabilities"]["findings"], 0, "{image}");
    let listed = cloud.json(&["image", "list"]).expect("image list");
    assert!(
        listed["items"].as_array().is_some_and(|items| items
            .iter()
            .all(|i| i["status"].get("vulnerabilities").is_none())),
        "lists carry no scan summary: {listed}"
    );

    // The policy: critical is above high, so deb-old is refused and nothing is created.
    cloud.ok(&["policy", "set", "--max-severity", "high"]);
    let policy = cloud.json(&["policy", "get"]).expect("policy get");
    assert_eq!(policy["spec"]["max_severity"], "high", "{policy}");
    let said = refused(&cloud, "bad", "deb-old");
    for needle in [
        DEBIAN_ADVISORY,
        "libssl3",
        DEBIAN_FIXED,
        "nimbus policy set",
    ] {
        assert!(said.contains(needle), "{needle} missing from {said}");
    }
    let list = cloud.json(&["instance", "list"]).expect("list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");

    // An image never scanned is scanned at create: a vulnerable one refused...
    let unscanned = debian_image(
        w,
        "deb-unscanned",
        "3.0.11-1~deb12u1",
        "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\n",
    );
    cloud.ok(&["image", "import", &unscanned, "--name", "deb-unscanned"]);
    let image = cloud
        .json(&["image", "get", "deb-unscanned"])
        .expect("image get");
    assert!(
        image["status"].get("vulnerabilities").is_none(),
        "not scanned yet: {image}"
    );
    let said = refused(&cloud, "bad2", "deb-unscanned");
    assert!(said.contains(DEBIAN_ADVISORY), "{said}");
    assert!(cloud
        .ok(&["image", "get", "deb-unscanned"])
        .contains("1 critical"));

    // ...and the fixed image launches and runs.
    runs(&cloud, "good", "deb-new");

    // Raising the ceiling lets the vulnerable image run: the policy, not the scan, decides.
    cloud.ok(&["policy", "set", "--max-severity", "critical"]);
    runs(&cloud, "tolerated", "deb-old");
    cloud.ok(&["policy", "set", "--max-severity", "none"]);
    let policy = cloud.json(&["policy", "get"]).expect("policy get");
    assert!(policy["spec"].get("max_severity").is_none(), "{policy}");

    // A scan goes with the last image of its digest; a policy with its project.
    cloud.ok(&["image", "rm", "deb-unscanned"]);
    cloud.ok(&["image", "import", &unscanned, "--name", "deb-again"]);
    let shown = cloud.ok(&["image", "get", "deb-again"]);
    assert!(shown.contains("not scanned"), "{shown}");
    cloud.ok(&["project", "create", "gamma"]);
    cloud.ok(&[
        "policy",
        "set",
        "--max-severity",
        "low",
        "--project",
        "gamma",
    ]);
    cloud.ok(&["project", "rm", "gamma"]);
    cloud.ok(&["project", "create", "gamma"]);
    let policy = cloud
        .json(&["policy", "get", "--project", "gamma"])
        .expect("policy get");
    assert!(
        policy["spec"].get("max_severity").is_none(),
        "a new project inherited {policy}"
    );

    // Another project's member sees neither the project's images nor their scans.
    cloud.ok(&["project", "create", "beta"]);
    cloud.ok(&["user", "create", "mallory"]);
    cloud.ok(&["role", "grant", "mallory", "admin", "--project", "beta"]);
    let mallory = token_for(&cloud, "mallory");
    for args in [
        vec!["image", "scan", "deb-old", "--project", "beta"],
        vec!["image", "scan", "deb-old", "--project", "default"],
        vec!["image", "get", "deb-old", "--project", "default"],
        vec!["policy", "get", "--project", "default"],
    ] {
        let said = fails(&nimbus_as(&cloud, &mallory, &args));
        assert!(said.contains("not found"), "{args:?}: {said}");
    }
    // A project admin is not a system administrator: no import.
    let said = fails(&nimbus_as(
        &cloud,
        &mallory,
        &["vulndb", "import", &good_export(w)],
    ));
    assert!(said.contains("system administrator"), "{said}");
    cloud.remove_everything();
}

#[test]
fn bad_osv_exports_are_refused_and_change_nothing() {
    let cloud = Cloud::start();
    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    cloud.ok(&["vulndb", "import", &good_export(w)]);
    let before = cloud.json(&["vulndb", "get"]).expect("vulndb get");
    cloud.ok(&[
        "image",
        "import",
        &alpine_image(w, "alp-old", "1.36.1-r15"),
        "--name",
        "alp-old",
    ]);

    let not_zip = w.join("not.zip");
    std::fs::write(&not_zip, b"PK? no, this is a text file\n".repeat(100)).expect("write");
    let not_osv = zip_of(
        &w.join("not-osv.zip"),
        &[
            (
                "DEBIAN-CVE-2024-1111.json",
                debian_record().to_string().into_bytes(),
            ),
            ("advisories/NOT-OSV.json", br#"{"hello": "world"}"#.to_vec()),
        ],
    );
    let bad_version = zip_of(
        &w.join("bad-version.zip"),
        &[(
            "ALPINE-BAD.json",
            json!({"id": "ALPINE-BAD", "modified": "2024-01-01T00:00:00Z",
                "affected": [{"package": {"ecosystem": "Alpine:v3.19", "name": "busybox"},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "next tuesday"}]}]}]})
            .to_string()
            .into_bytes(),
        )],
    );
    // 9 MiB of whitespace deflates to a few KiB: a small upload that unpacks big.
    let mut huge = b"{\"id\": \"X-1\", \"modified\": \"2024-01-01T00:00:00Z\"".to_vec();
    huge.extend(std::iter::repeat_n(b' ', 9 << 20));
    huge.push(b'}');
    let bomb = zip_of(&w.join("bomb.zip"), &[("X-1.json", huge)]);
    assert!(
        std::fs::metadata(&bomb).expect("bomb").len() < 1 << 20,
        "the bomb is small on the wire"
    );
    let empty = zip_of(
        &w.join("empty.zip"),
        &[("README.txt", b"nothing here".to_vec())],
    );

    let cases = [
        (not_zip.to_string_lossy().to_string(), "not a zip archive"),
        (not_osv, "advisories/NOT-OSV.json"),
        (bad_version, "next tuesday"),
        (bomb, "X-1.json\" unpacks to more than"),
        (empty, "no OSV record"),
    ];
    for (file, expected) in cases {
        let said = fails(&cloud.nimbus(&["vulndb", "import", &file]));
        assert!(
            said.contains(expected),
            "{file}: {expected:?} missing from {said}"
        );
        assert!(said.contains("nothing changed"), "{said}");
        let after = cloud.json(&["vulndb", "get"]).expect("vulndb get");
        assert_eq!(
            after, before,
            "a refused import changed the database ({file})"
        );
    }
    // The index still answers, and no upload or staging file was left behind.
    let alp = scan_json(&cloud, "alp-old");
    assert_eq!(advisories(&alp), vec![ALPINE_ADVISORY], "{alp}");
    let left: Vec<String> = std::fs::read_dir(cloud.data_dir().join("vulndb"))
        .expect("vulndb dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        left,
        vec!["osv.sqlite".to_string()],
        "leftovers in the vulndb dir"
    );
}
