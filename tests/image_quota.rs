//! A project's `--image-bytes` quota, driven by real clients: `skopeo copy`
//! pushes under the limit and is denied past it, curl's monolithic and
//! chunked uploads past it get the spec's DENIED, an import past it is
//! refused; nothing refused stays in the image store, and another
//! project's images do not count in this one.

mod common;

use std::path::Path;

use common::registry::*;
use common::Cloud;
use nimbus_image::testing::one_file_rootfs_tar_of as rootfs_tar;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `len` bytes that gzip cannot shrink (xorshift), different per `seed`.
fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An OCI archive of a one-layer image whose layer holds `data`, written
/// to the cloud's data dir as `<name>.oci.tar`.
fn archive_file(cloud: &Cloud, name: &str, data: &[u8]) -> (Archive, String) {
    let archive = oci_archive(&rootfs_tar(data), &["/data.txt"]);
    let file = cloud.data_dir().join(format!("{name}.oci.tar"));
    std::fs::write(&file, &archive.tar).unwrap();
    (archive, format!("oci-archive:{}", file.display()))
}

fn blob_bytes(archive: &Archive) -> u64 {
    archive.blobs.iter().map(|(_, b)| b.len() as u64).sum()
}

fn image_bytes(cloud: &Cloud, project: &str) -> u64 {
    let usage = cloud.json(&["usage", "--project", project]).expect("usage");
    usage["image_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no image_bytes in {usage}"))
}

fn open_uploads(images: &Path) -> Vec<String> {
    store_listing(images)
        .into_iter()
        .filter(|e| e.starts_with("tmp/"))
        .collect()
}

/// `nimbus image import <path> --name <name> --project <project>`.
fn import(cloud: &Cloud, path: &Path, name: &str, project: &str) -> std::process::Output {
    let path = path.to_str().unwrap();
    cloud.nimbus(&[
        "image",
        "import",
        path,
        "--name",
        name,
        "--project",
        project,
    ])
}

fn import_ok(cloud: &Cloud, path: &Path, name: &str, project: &str) {
    let out = import(cloud, path, name, project);
    assert!(out.status.success(), "import of {name}: {}", stderr(&out));
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn registry_pushes_past_the_image_quota_are_denied_and_store_nothing() {
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    let bob = member(&cloud, "bob", "member", "other");
    let certs = cert_dir(&cloud);
    let certs = certs.to_str().unwrap();
    let images = cloud.data_dir().join("images");
    let registry = format!("127.0.0.1:{}", cloud.port);
    let push = |token: &str, source: &str, dest: &str| {
        skopeo(&[
            "copy",
            "--dest-creds",
            &format!("x:{token}"),
            "--dest-cert-dir",
            certs,
            source,
            &format!("docker://{registry}/{dest}"),
        ])
    };

    // Another project, without a quota, pushes a big image: it is not
    // counted in ops.
    let (big, big_src) = archive_file(&cloud, "big", &incompressible(5 * MIB as usize, 1));
    let out = push(&bob, &big_src, "other/big:1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_bytes(&cloud, "other"), blob_bytes(&big));
    assert_eq!(image_bytes(&cloud, "ops"), 0);

    cloud.ok(&["quota", "set", "--image-bytes", "3MiB", "--project", "ops"]);
    let q = cloud
        .json(&["quota", "get", "--project", "ops"])
        .expect("quota get");
    assert_eq!(q["quota"]["image_bytes"], 3 * MIB, "{q}");

    // A member of ops cannot lift its own project's limit.
    let out = cloud
        .command()
        .args(["quota", "set", "--image-bytes", "1GiB", "--project", "ops"])
        .args(["--token", &alice])
        .output()
        .expect("run nimbus");
    assert!(
        !out.status.success() && stderr(&out).to_lowercase().contains("admin"),
        "a member set its project's image quota: {}",
        stderr(&out)
    );
    let q = cloud
        .json(&["quota", "get", "--project", "ops"])
        .expect("quota get");
    assert_eq!(q["quota"]["image_bytes"], 3 * MIB, "{q}");

    // Under the limit: pushed, and counted as its distinct blobs.
    let (small, small_src) = archive_file(&cloud, "small", &incompressible(256 * 1024, 2));
    let out = push(&alice, &small_src, "ops/small:1");
    assert!(out.status.success(), "{}", stderr(&out));
    let held = blob_bytes(&small);
    assert_eq!(image_bytes(&cloud, "ops"), held);
    let q = cloud
        .json(&["quota", "get", "--project", "ops"])
        .expect("quota get");
    assert_eq!(q["used"]["image_bytes"], held, "{q}");
    let table = cloud.ok(&["quota", "get", "--project", "ops"]);
    assert!(
        table.contains("image bytes") && table.contains("3MiB"),
        "{table}"
    );

    // Past the limit: skopeo is denied, and nothing of it stays.
    let blobs_before = store_listing(&images);
    let (big_ops, big_ops_src) =
        archive_file(&cloud, "big-ops", &incompressible(5 * MIB as usize, 3));
    let out = push(&alice, &big_ops_src, "ops/big:1");
    assert!(!out.status.success(), "a push past the quota was accepted");
    let err = stderr(&out);
    assert!(
        err.contains("denied") && err.contains("--image-bytes"),
        "skopeo's error does not name the quota: {err}"
    );
    let layer_hex = &big_ops.blobs[0].0;
    let after = store_listing(&images);
    assert!(
        !after.contains(&format!("blobs/sha256/{layer_hex}")),
        "the refused layer is stored"
    );
    assert_eq!(open_uploads(&images), Vec::<String>::new());
    assert!(
        after.len() <= blobs_before.len() + 1,
        "more than the small config blob stayed: {after:?} vs {blobs_before:?}"
    );
    assert!(!image_names(&cloud, "ops").contains(&"big:1".to_string()));
    assert_eq!(
        image_bytes(&cloud, "ops"),
        held + config_bytes(&big_ops, &after)
    );

    // curl's monolithic upload past the limit: DENIED, nothing kept.
    let data = incompressible(4 * MIB as usize, 4);
    let digest = format!("sha256:{}", sha256_hex(&data));
    let file = cloud.data_dir().join("mono.bin");
    std::fs::write(&file, &data).unwrap();
    let r = curl(
        &cloud,
        Some(&alice),
        "POST",
        &format!("/v2/ops/mono/blobs/uploads/?digest={digest}"),
        &["--data-binary", &format!("@{}", file.display())],
    );
    r.expect_error(403, "DENIED");
    assert!(
        r.body.contains("nimbus quota set --image-bytes"),
        "{}",
        r.body
    );
    assert!(!store_listing(&images).contains(&format!("blobs/sha256/{}", &digest[7..])));
    assert_eq!(open_uploads(&images), Vec::<String>::new());

    // A chunked session: the first chunk fits, the second does not; the
    // session is gone after the refusal.
    let start = curl(
        &cloud,
        Some(&alice),
        "POST",
        "/v2/ops/chunked/blobs/uploads/",
        &[],
    );
    let location = location_of(&start);
    let first = cloud.data_dir().join("first.bin");
    std::fs::write(&first, &data[..MIB as usize]).unwrap();
    let r = curl(
        &cloud,
        Some(&alice),
        "PATCH",
        &location,
        &["--data-binary", &format!("@{}", first.display())],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    // While open, the session's bytes count.
    assert!(image_bytes(&cloud, "ops") >= held + MIB);
    let r = curl(
        &cloud,
        Some(&alice),
        "PATCH",
        &location,
        &["--data-binary", &format!("@{}", file.display())],
    );
    r.expect_error(403, "DENIED");
    curl(&cloud, Some(&alice), "GET", &location, &[]).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(open_uploads(&images), Vec::<String>::new());

    // A mount of a blob the project holds costs nothing.
    let used = image_bytes(&cloud, "ops");
    let small_layer = format!("sha256:{}", small.blobs[0].0);
    let r = curl(
        &cloud,
        Some(&alice),
        "POST",
        &format!("/v2/ops/copy/blobs/uploads/?mount={small_layer}&from=ops/small"),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(image_bytes(&cloud, "ops"), used);

    // Lifting the quota lets the same push through.
    cloud.ok(&["quota", "set", "--image-bytes", "none", "--project", "ops"]);
    let out = push(&alice, &big_ops_src, "ops/big:1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(image_bytes(&cloud, "ops") >= held + blob_bytes(&big_ops) - 4096);
}

/// The bytes of `archive`'s config blob if the store kept it (skopeo may
/// have pushed it before the layer was refused; it then stays linked).
fn config_bytes(archive: &Archive, listing: &[String]) -> u64 {
    let (hex, data) = &archive.blobs[1];
    if listing.contains(&format!("blobs/sha256/{hex}")) {
        data.len() as u64
    } else {
        0
    }
}

#[test]
fn an_import_past_the_image_quota_is_refused_and_stores_nothing() {
    let cloud = Cloud::start();
    let images = cloud.data_dir().join("images");
    cloud.ok(&["project", "create", "ops"]);
    cloud.ok(&["quota", "set", "--image-bytes", "2MiB", "--project", "ops"]);
    let before = store_listing(&images);

    let big = cloud.data_dir().join("big.tar");
    std::fs::write(&big, rootfs_tar(&incompressible(3 * MIB as usize, 5))).unwrap();
    let out = import(&cloud, &big, "big", "ops");
    assert!(
        !out.status.success(),
        "an import past the quota was accepted"
    );
    let err = stderr(&out);
    for part in ["may hold 2MiB", "--image-bytes", "nimbus image rm"] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert_eq!(
        store_listing(&images),
        before,
        "the refused import left files"
    );
    assert!(image_names(&cloud, "ops").is_empty());

    // A small one fits and counts; the same content in another project
    // counts there too, not twice here.
    let small = cloud.data_dir().join("small.tar");
    std::fs::write(&small, rootfs_tar(&incompressible(512 * 1024, 6))).unwrap();
    import_ok(&cloud, &small, "small", "ops");
    let held = image_bytes(&cloud, "ops");
    assert!(
        held > 512 * 1024 && held < 2 * MIB,
        "ops holds {held} bytes"
    );
    import_ok(&cloud, &small, "again", "ops");
    assert_eq!(
        image_bytes(&cloud, "ops"),
        held,
        "a shared blob counted twice"
    );
    cloud.ok(&["project", "create", "other"]);
    import_ok(&cloud, &small, "small", "other");
    assert_eq!(image_bytes(&cloud, "other"), held);
    let table = cloud.ok(&["usage", "--project", "ops"]);
    assert!(table.contains("images held now"), "{table}");

    // Deleting frees the room.
    cloud.ok(&["image", "rm", "small", "--project", "ops"]);
    cloud.ok(&["image", "rm", "again", "--project", "ops"]);
    let q: Value = cloud
        .json(&["quota", "get", "--project", "ops"])
        .expect("quota get");
    assert_eq!(q["used"]["image_bytes"], 0, "{q}");
}

// Two sessions racing, each under the limit alone, together over it: each
// piece is checked against every open session on disk, so they cannot
// both fill up; together they pass the limit by at most a piece each.
#[test]
fn two_uploads_racing_do_not_both_pass_the_image_quota() {
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    cloud.ok(&["quota", "set", "--image-bytes", "3MiB", "--project", "ops"]);
    let images = cloud.data_dir().join("images");
    let sent: Vec<Reply> = std::thread::scope(|s| {
        let racers: Vec<_> = [7u64, 8]
            .into_iter()
            .map(|seed| {
                let (cloud, alice) = (&cloud, &alice);
                s.spawn(move || {
                    let file = cloud.data_dir().join(format!("race-{seed}.bin"));
                    std::fs::write(&file, incompressible(2 * MIB as usize, seed)).unwrap();
                    let path = format!("/v2/ops/race{seed}/blobs/uploads/");
                    let location = location_of(&curl(cloud, Some(alice), "POST", &path, &[]));
                    let data = format!("@{}", file.display());
                    curl(
                        cloud,
                        Some(alice),
                        "PATCH",
                        &location,
                        &["--data-binary", &data],
                    )
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let accepted = sent.iter().filter(|r| r.status == 202).count();
    assert!(accepted < 2, "both racing uploads were accepted");
    for refused in sent.iter().filter(|r| r.status != 202) {
        refused.expect_error(403, "DENIED");
    }
    let held = image_bytes(&cloud, "ops");
    assert!(
        held <= 3 * MIB + 2 * 256 * 1024,
        "the racing uploads hold {held} bytes, past the limit by more than a piece each"
    );
    assert_eq!(open_uploads(&images).len(), accepted);
}

// Two imports racing, each under the limit alone, together over it: at
// most one is kept.
#[test]
fn two_imports_racing_do_not_both_pass_the_image_quota() {
    let cloud = Cloud::start();
    cloud.ok(&["project", "create", "ops"]);
    cloud.ok(&["quota", "set", "--image-bytes", "3MiB", "--project", "ops"]);
    let outcomes: Vec<std::process::Output> = std::thread::scope(|s| {
        let racers: Vec<_> = [9u64, 10]
            .into_iter()
            .map(|seed| {
                let cloud = &cloud;
                s.spawn(move || {
                    let file = cloud.data_dir().join(format!("race-{seed}.tar"));
                    let data = incompressible(2 * MIB as usize, seed);
                    std::fs::write(&file, rootfs_tar(&data)).unwrap();
                    import(cloud, &file, &format!("race{seed}"), "ops")
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let kept = outcomes.iter().filter(|o| o.status.success()).count();
    assert!(kept < 2, "both racing imports were kept");
    for refused in outcomes.iter().filter(|o| !o.status.success()) {
        let err = stderr(refused);
        assert!(err.contains("--image-bytes"), "{err}");
    }
    assert_eq!(image_names(&cloud, "ops").len(), kept);
    let held = image_bytes(&cloud, "ops");
    assert!(held <= 3 * MIB, "the racing imports hold {held} bytes");
}
