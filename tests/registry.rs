//! The OCI registry on the API port, driven by real clients: `skopeo`
//! pushes an image that then runs as a project image and pulls it back
//! byte for byte; podman and the `oras` Python client push and pull;
//! another project's token sees nothing; hostile pushes (curl) are refused
//! with the spec's error codes and store nothing.

mod common;

use std::process::Command;
use std::time::Duration;

use common::registry::*;
use common::Cloud;
use serde_json::Value;

#[test]
fn skopeo_pushes_an_image_that_runs_and_pulls_back_identical() {
    if !common::is_root("running the pushed image") {
        return;
    }
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    let reader = member(&cloud, "rita", "reader", "ops");
    let eve = member(&cloud, "eve", "member", "other");
    let certs = cert_dir(&cloud);
    let certs = certs.to_str().unwrap();
    let starter = std::fs::read(cloud.starter_tar()).unwrap();
    let archive = oci_archive(&starter, &["/bin/sh", "-c", "echo pushed-image-ran"]);
    let file = cloud.data_dir().join("app.oci.tar");
    std::fs::write(&file, &archive.tar).unwrap();
    let registry = format!("127.0.0.1:{}", cloud.port);
    let app = |tag: &str| format!("docker://{registry}/ops/app:{tag}");
    let alice_creds = format!("x:{alice}");

    // No credentials: the challenge real clients answer.
    let base = curl(&cloud, None, "GET", "/v2/", &[]);
    assert_eq!(base.status, 401, "{}", base.body);
    let headers = base.headers.to_lowercase();
    assert!(headers.contains("www-authenticate: basic"), "{headers}");
    assert!(
        headers.contains("docker-distribution-api-version: registry/2.0"),
        "{headers}"
    );
    assert_eq!(base.code(), "UNAUTHORIZED");
    assert_eq!(curl(&cloud, Some(&alice), "GET", "/v2/", &[]).status, 200);

    skopeo_ok(&[
        "copy",
        "--dest-creds",
        &alice_creds,
        "--dest-cert-dir",
        certs,
        &format!("oci-archive:{}", file.display()),
        &app("1.0"),
    ]);
    assert!(image_names(&cloud, "ops").contains(&"app:1.0".to_string()));
    let img = cloud
        .json(&["image", "get", "app:1.0", "--project", "ops"])
        .expect("image get");
    assert_eq!(img["status"]["digest"], archive.manifest_digest.as_str());
    assert_eq!(img["status"]["defaults"]["cmd"][2], "echo pushed-image-ran");
    // The push is in the audit log, under the token's user.
    let audit = cloud
        .json(&["audit", "list", "--method", "PUT", "--actor", "alice"])
        .expect("audit list");
    let paths: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert!(paths.contains(&"/v2/ops/app/manifests/1.0"), "{audit}");

    cloud.ok(&[
        "instance",
        "run",
        "web",
        "--image",
        "app:1.0",
        "--project",
        "ops",
    ]);
    let wait = || {
        common::wait_until(Duration::from_secs(60), "web to exit", || {
            let v = cloud
                .json(&["instance", "get", "web", "--project", "ops"])
                .ok()?;
            (v["status"]["phase"] == "exited").then_some(())
        })
    };
    wait();
    let logs = cloud.ok(&["instance", "logs", "web", "--project", "ops"]);
    assert!(logs.contains("pushed-image-ran"), "{logs}");

    // Pulled back into an OCI layout: the same manifest and blobs, byte for byte.
    let pulled = tempfile::tempdir().unwrap();
    let layout = pulled.path().join("layout");
    skopeo_ok(&[
        "copy",
        "--src-creds",
        &alice_creds,
        "--src-cert-dir",
        certs,
        &app("1.0"),
        &format!("oci:{}:pulled", layout.display()),
    ]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        archive.manifest_digest.as_str()
    );
    for (hex, data) in &archive.blobs {
        let copy = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        assert!(copy == *data, "blob {hex} came back different");
    }

    // A second tag (skopeo finds the blobs there and mounts nothing new).
    skopeo_ok(&[
        "copy",
        "--src-creds",
        &alice_creds,
        "--src-cert-dir",
        certs,
        "--dest-creds",
        &alice_creds,
        "--dest-cert-dir",
        certs,
        &app("1.0"),
        &app("2.0"),
    ]);
    let tags: Value = serde_json::from_str(&skopeo_ok(&[
        "list-tags",
        "--creds",
        &alice_creds,
        "--cert-dir",
        certs,
        &format!("docker://{registry}/ops/app"),
    ]))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["1.0", "2.0"]));
    let page = curl(
        &cloud,
        Some(&alice),
        "GET",
        "/v2/ops/app/tags/list?n=1",
        &[],
    );
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("\"1.0\"") && !page.body.contains("2.0"),
        "{}",
        page.body
    );
    assert!(
        page.headers
            .to_lowercase()
            .contains("link: </v2/ops/app/tags/list?n=1&last=1.0>"),
        "{}",
        page.headers
    );

    // Another project's token: nothing to pull, nothing to push, in the spec's format.
    let eve_creds = format!("x:{eve}");
    let out = skopeo(&[
        "copy",
        "--src-creds",
        &eve_creds,
        "--src-cert-dir",
        certs,
        &app("1.0"),
        &format!("oci:{}:stolen", pulled.path().join("stolen").display()),
    ]);
    assert!(
        !out.status.success(),
        "another project's token pulled the image"
    );
    let out = skopeo(&[
        "copy",
        "--dest-creds",
        &eve_creds,
        "--dest-cert-dir",
        certs,
        &format!("oci-archive:{}", file.display()),
        &app("evil"),
    ]);
    assert!(!out.status.success(), "another project's token pushed");
    for (method, path) in [
        ("GET", "/v2/ops/app/manifests/1.0".to_string()),
        (
            "GET",
            format!("/v2/ops/app/blobs/sha256:{}", archive.blobs[0].0),
        ),
        ("POST", "/v2/ops/app/blobs/uploads/".to_string()),
        ("GET", "/v2/ops/app/tags/list".to_string()),
    ] {
        let r = curl(&cloud, Some(&eve), method, &path, &[]);
        r.expect_error(404, "NAME_UNKNOWN");
    }
    // The blob is in the server's store, but not in eve's repository.
    let r = curl(
        &cloud,
        Some(&eve),
        "GET",
        &format!("/v2/other/app/blobs/sha256:{}", archive.blobs[0].0),
        &[],
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let catalog = curl(&cloud, Some(&eve), "GET", "/v2/_catalog", &[]);
    assert_eq!(catalog.body.trim(), r#"{"repositories":[]}"#);
    let catalog = curl(&cloud, Some(&alice), "GET", "/v2/_catalog", &[]);
    assert_eq!(catalog.body.trim(), r#"{"repositories":["ops/app"]}"#);
    // A reader pulls but may not push.
    let r = curl(
        &cloud,
        Some(&reader),
        "POST",
        "/v2/ops/app/blobs/uploads/",
        &[],
    );
    r.expect_error(403, "DENIED");
    assert_eq!(
        curl(
            &cloud,
            Some(&reader),
            "GET",
            "/v2/ops/app/manifests/1.0",
            &[]
        )
        .status,
        200
    );

    // Deleting a tag removes its image; deleting by digest removes the
    // manifest and every tag on it, refused while an instance runs one.
    let r = curl(
        &cloud,
        Some(&alice),
        "DELETE",
        "/v2/ops/app/manifests/2.0",
        &[],
    );
    assert_eq!(r.status, 202, "deleting a tag: {}", r.body);
    assert!(!image_names(&cloud, "ops").contains(&"app:2.0".to_string()));
    let delete = || {
        skopeo(&[
            "delete",
            "--creds",
            &alice_creds,
            "--cert-dir",
            certs,
            &app("1.0"),
        ])
    };
    let out = delete();
    assert!(!out.status.success(), "deleted an image an instance uses");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("used by instance"), "{err}");
    cloud.ok(&["instance", "rm", "web", "--project", "ops"]);
    let out = delete();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!image_names(&cloud, "ops").contains(&"app:1.0".to_string()));
    let r = curl(
        &cloud,
        Some(&alice),
        "GET",
        "/v2/ops/app/manifests/1.0",
        &[],
    );
    r.expect_error(404, "MANIFEST_UNKNOWN");
    cloud.remove_everything();
}

#[test]
fn hostile_pushes_are_refused_and_store_nothing() {
    let cloud = Cloud::start_with(&["--max-image-size", "64MiB"]);
    let alice = member(&cloud, "alice", "member", "ops");
    let images = cloud.data_dir().join("images");
    let before = store_listing(&images);
    let catalog = || curl(&cloud, Some(&alice), "GET", "/v2/_catalog", &[]).body;
    let catalog_before = catalog();
    let missing = format!("sha256:{}", "0".repeat(64));

    // A manifest naming a blob that was never pushed.
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": missing, "size": 2},
        "layers": []
    })
    .to_string();
    let r = curl(
        &cloud,
        Some(&alice),
        "PUT",
        "/v2/ops/app/manifests/1.0",
        &[
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &manifest,
        ],
    );
    r.expect_error(400, "MANIFEST_BLOB_UNKNOWN");

    // A blob whose bytes hash to something else: monolithic, and through a session.
    let r = curl(
        &cloud,
        Some(&alice),
        "POST",
        &format!("/v2/ops/app/blobs/uploads/?digest={missing}"),
        &["--data-binary", "not the zero digest"],
    );
    r.expect_error(400, "DIGEST_INVALID");
    let started = curl(
        &cloud,
        Some(&alice),
        "POST",
        "/v2/ops/app/blobs/uploads/",
        &[],
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let location = location_of(&started);
    let r = curl(
        &cloud,
        Some(&alice),
        "PATCH",
        &location,
        &[
            "-H",
            "Content-Range: 0-4",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "hello",
        ],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        r.headers.to_lowercase().contains("range: 0-4"),
        "{}",
        r.headers
    );
    let r = curl(
        &cloud,
        Some(&alice),
        "PATCH",
        &location,
        &["-H", "Content-Range: 2-4", "--data-binary", "llo"],
    );
    r.expect_error(416, "RANGE_INVALID");
    let r = curl(
        &cloud,
        Some(&alice),
        "PUT",
        &format!("{location}?digest={missing}"),
        &[],
    );
    r.expect_error(400, "DIGEST_INVALID");
    let r = curl(&cloud, Some(&alice), "GET", &location, &[]);
    r.expect_error(404, "BLOB_UPLOAD_UNKNOWN");

    // A declared 10 GiB upload is refused before a byte is read.
    // HTTP/1.1: over HTTP/2 curl itself refuses a body shorter than declared.
    let ten_gib = |method: &str, path: &str| {
        curl(
            &cloud,
            Some(&alice),
            method,
            path,
            &[
                "--http1.1",
                "-H",
                "Content-Length: 10737418240",
                "-H",
                "Expect:",
                "--data-binary",
                "",
            ],
        )
    };
    let r = ten_gib(
        "POST",
        &format!("/v2/ops/app/blobs/uploads/?digest={missing}"),
    );
    r.expect_error(413, "SIZE_INVALID");
    assert!(r.body.contains("limit"), "{}", r.body);

    // So is a chunk that would take a session past the limit; the session goes.
    let started = curl(
        &cloud,
        Some(&alice),
        "POST",
        "/v2/ops/app/blobs/uploads/",
        &[],
    );
    let location = location_of(&started);
    let r = ten_gib("PATCH", &location);
    r.expect_error(413, "SIZE_INVALID");
    let r = curl(&cloud, Some(&alice), "GET", &location, &[]);
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN", "{}", r.body);

    // Paths that climb out of a repository, or name one badly.
    for path in [
        "/v2/ops/../other/app/tags/list",
        "/v2/ops/app/../../x/manifests/1.0",
        "/v2/ops/App/tags/list",
        "/v2/ops/a%2e%2e/tags/list",
    ] {
        let r = curl(&cloud, Some(&alice), "GET", path, &[]);
        r.expect_error(400, "NAME_INVALID");
    }
    let r = curl(
        &cloud,
        Some(&alice),
        "PUT",
        "/v2/ops/../ops/app/manifests/1.0",
        &[
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &manifest,
        ],
    );
    assert_eq!(r.code(), "NAME_INVALID", "{}", r.body);

    assert_eq!(
        store_listing(&images),
        before,
        "a refused push left files in the image store"
    );
    assert_eq!(
        catalog(),
        catalog_before,
        "a refused push left a repository"
    );
    assert!(!image_names(&cloud, "ops").iter().any(|n| n.contains(':')));
}

#[test]
fn podman_pushes_and_pulls_and_the_image_runs() {
    if !common::is_root("podman's storage and running the pushed image") {
        return;
    }
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    let certs = cert_dir(&cloud);
    let certs = certs.to_str().unwrap();
    let starter = std::fs::read(cloud.starter_tar()).unwrap();
    let archive = oci_archive(&starter, &["/bin/sh", "-c", "echo pushed-by-podman"]);
    let file = cloud.data_dir().join("pod.oci.tar");
    std::fs::write(&file, &archive.tar).unwrap();
    let work = tempfile::tempdir().unwrap();
    let storage = work.path();
    let remote = format!("127.0.0.1:{}/ops/pod:1", cloud.port);
    let creds = format!("x:{alice}");

    podman_ok(
        storage,
        &["pull", "-q", &format!("oci-archive:{}", file.display())],
    );
    let local = podman_ok(storage, &["images", "-q"])
        .lines()
        .next()
        .expect("a local image")
        .to_string();
    // podman compresses the layers itself: new blob digests, the same diff_ids.
    podman_ok(
        storage,
        &[
            "push",
            "--creds",
            &creds,
            "--cert-dir",
            certs,
            &local,
            &format!("docker://{remote}"),
        ],
    );
    let img = cloud
        .json(&["image", "get", "pod:1", "--project", "ops"])
        .expect("the pushed tag is an image");
    assert_eq!(img["status"]["defaults"]["cmd"][2], "echo pushed-by-podman");
    cloud.ok(&[
        "instance",
        "run",
        "pod",
        "--image",
        "pod:1",
        "--project",
        "ops",
    ]);
    common::wait_until(Duration::from_secs(60), "pod to exit", || {
        let v = cloud
            .json(&["instance", "get", "pod", "--project", "ops"])
            .ok()?;
        (v["status"]["phase"] == "exited").then_some(())
    });
    let logs = cloud.ok(&["instance", "logs", "pod", "--project", "ops"]);
    assert!(logs.contains("pushed-by-podman"), "{logs}");

    podman_ok(storage, &["rmi", "-a", "-f"]);
    podman_ok(
        storage,
        &[
            "pull",
            "-q",
            "--creds",
            &creds,
            "--cert-dir",
            certs,
            &remote,
        ],
    );
    let pulled = podman_ok(storage, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(pulled.contains("/ops/pod:1"), "{pulled}");
    let out = podman(
        storage,
        &[
            "pull",
            "-q",
            "--creds",
            "x:nmb_0000000000000000_0000",
            "--cert-dir",
            certs,
            &remote,
        ],
    );
    assert!(!out.status.success(), "a bad token pulled");
    cloud.ok(&["instance", "rm", "pod", "--project", "ops"]);
    podman_ok(storage, &["rmi", "-a", "-f"]);
    cloud.remove_everything();
}

/// The `oras` Python client (PyPI, installed by scripts/deps): pushes a file
/// as an artifact (one request per blob, then in chunks), pulls it back.
const ORAS_SCRIPT: &str = r#"
import os, sys
import oras.client
host, token, ca, work = sys.argv[1:5]
client = oras.client.OrasClient(hostname=host, tls_verify=ca, auth_backend="basic")
client.login(username="anyone", password=token, hostname=host, tls_verify=ca)
os.chdir(work)
client.push(target=f"{host}/ops/notes:v1", files=["notes.txt"], quiet=True)
client.push(target=f"{host}/ops/notes:v2", files=["big.bin"], do_chunked=True, chunk_size=65536, quiet=True)
for tag in ["v1", "v2"]:
    out = os.path.join(work, "pulled-" + tag)
    print(tag, client.pull(target=f"{host}/ops/notes:{tag}", outdir=out))
print("tags", sorted(client.get_tags(f"{host}/ops/notes")))
"#;

#[test]
fn oras_pushes_and_pulls_an_artifact() {
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("notes.txt"), "release notes\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(work.path().join("big.bin"), &big).unwrap();
    let out = Command::new("python3")
        .args(["-c", ORAS_SCRIPT])
        .arg(format!("127.0.0.1:{}", cloud.port))
        .arg(&alice)
        .arg(cloud.data_dir().join("tls/cert.pem"))
        .arg(work.path())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oras failed (is the PyPI package `oras` installed? scripts/deps installs it): {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tags ['v1', 'v2']"), "{stdout}");
    let notes = std::fs::read_to_string(work.path().join("pulled-v1/notes.txt")).unwrap();
    assert_eq!(notes, "release notes\n");
    assert!(std::fs::read(work.path().join("pulled-v2/big.bin")).unwrap() == big);
    // An artifact is stored and served, but is no image to run.
    assert!(!image_names(&cloud, "ops")
        .iter()
        .any(|n| n.starts_with("notes")));
}

#[test]
fn an_index_runs_its_amd64_image_and_a_signature_tag_is_kept_as_pushed() {
    let cloud = Cloud::start();
    let alice = member(&cloud, "alice", "member", "ops");
    let eve = member(&cloud, "eve", "member", "other");
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let layer = std::fs::read(cloud.starter_tar()).unwrap();
    let manifest_for = |arch: &str, cmd: &str| {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh", "-c", cmd]}
        }))
        .unwrap();
        let config_digest = push_blob(&cloud, &alice, "ops/app", &config);
        let layer_digest = push_blob(&cloud, &alice, "ops/app", &layer);
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap()
    };
    let amd = manifest_for("amd64", "echo amd64");
    let arm = manifest_for("arm64", "echo arm64");
    let digest_of = |b: &[u8]| format!("sha256:{}", sha256_hex(b));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "digest": digest_of(&arm), "size": arm.len(), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": MANIFEST, "digest": digest_of(&amd), "size": amd.len(), "platform": {"os": "linux", "architecture": "amd64"}}
        ]
    }))
    .unwrap();
    // The index first: its children are not there yet.
    let r = put_manifest(&cloud, &alice, "ops/app", "multi", INDEX, &index);
    r.expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    for child in [&amd, &arm] {
        let r = put_manifest(
            &cloud,
            &alice,
            "ops/app",
            &digest_of(child),
            MANIFEST,
            child,
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // A digest in the URL that is not the body's.
    let r = put_manifest(&cloud, &alice, "ops/app", &digest_of(&arm), MANIFEST, &amd);
    r.expect_error(400, "DIGEST_INVALID");
    let r = put_manifest(&cloud, &alice, "ops/app", "multi", INDEX, &index);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.headers
            .to_lowercase()
            .contains(&format!("docker-content-digest: {}", digest_of(&index))),
        "{}",
        r.headers
    );
    let img = cloud
        .json(&["image", "get", "app:multi", "--project", "ops"])
        .expect("image of the index");
    assert_eq!(img["status"]["digest"], digest_of(&amd).as_str());
    assert_eq!(img["status"]["defaults"]["cmd"][2], "echo amd64");

    // Served back as pushed, with its media type; HEAD says the same without a body.
    let got = curl(
        &cloud,
        Some(&alice),
        "GET",
        "/v2/ops/app/manifests/multi",
        &[],
    );
    assert_eq!(got.body.as_bytes(), &index[..]);
    assert!(
        got.headers
            .to_lowercase()
            .contains(&format!("content-type: {INDEX}")),
        "{}",
        got.headers
    );
    let head = curl(
        &cloud,
        Some(&alice),
        "HEAD",
        "/v2/ops/app/manifests/multi",
        &["-I"],
    );
    assert_eq!(head.status, 200);
    assert!(head
        .headers
        .to_lowercase()
        .contains(&format!("docker-content-digest: {}", digest_of(&index))));
    // One byte range of a blob.
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let part = curl(
        &cloud,
        Some(&alice),
        "GET",
        &format!("/v2/ops/app/blobs/{layer_digest}"),
        &["-H", "Range: bytes=0-99"],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body.len(), 100);

    // A cosign signature tag: the simple-signing payload as its layer, the
    // signature in an annotation. Stored and served like any tag, no image.
    let payload = serde_json::to_vec(&serde_json::json!({
        "critical": {"identity": {"docker-reference": "127.0.0.1/ops/app"},
                     "image": {"docker-manifest-digest": digest_of(&amd)}, "type": "cosign container image signature"},
        "optional": null
    }))
    .unwrap();
    let payload_digest = push_blob(&cloud, &alice, "ops/app", &payload);
    let empty_config = push_blob(&cloud, &alice, "ops/app", b"{}");
    let signature = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty_config, "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": payload_digest, "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDexample"}}]
    }))
    .unwrap();
    let sig_tag = format!("sha256-{}.sig", sha256_hex(&amd));
    let r = put_manifest(&cloud, &alice, "ops/app", &sig_tag, MANIFEST, &signature);
    assert_eq!(r.status, 201, "{}", r.body);
    let got = curl(
        &cloud,
        Some(&alice),
        "GET",
        &format!("/v2/ops/app/manifests/{sig_tag}"),
        &[],
    );
    assert_eq!(got.body.as_bytes(), &signature[..]);
    let tags = curl(&cloud, Some(&alice), "GET", "/v2/ops/app/tags/list", &[]);
    assert!(tags.body.contains(&sig_tag), "{}", tags.body);
    assert_eq!(
        image_names(&cloud, "ops")
            .iter()
            .filter(|n| n.starts_with("app:"))
            .count(),
        1
    );

    // Removing the image removes its tag; the manifest stays, by digest.
    cloud.ok(&["image", "rm", "app:multi", "--project", "ops"]);
    let tags = curl(&cloud, Some(&alice), "GET", "/v2/ops/app/tags/list", &[]);
    assert!(!tags.body.contains("\"multi\""), "{}", tags.body);
    let by_digest = format!("/v2/ops/app/manifests/{}", digest_of(&index));
    assert_eq!(
        curl(&cloud, Some(&alice), "GET", &by_digest, &[]).status,
        200
    );

    // Mounts: within the project, at once; from another project, an upload instead.
    let mount = format!("/v2/ops/copy/blobs/uploads/?mount={layer_digest}&from=ops/app");
    let r = curl(&cloud, Some(&alice), "POST", &mount, &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        curl(
            &cloud,
            Some(&alice),
            "HEAD",
            &format!("/v2/ops/copy/blobs/{layer_digest}"),
            &["-I"]
        )
        .status,
        200
    );
    let r = curl(
        &cloud,
        Some(&eve),
        "POST",
        &format!("/v2/other/copy/blobs/uploads/?mount={layer_digest}&from=ops/app"),
        &[],
    );
    // Nothing was linked: the repository was not even made.
    assert_eq!(
        r.status, 202,
        "a mount across projects must not link the blob: {}",
        r.body
    );
    let r = curl(
        &cloud,
        Some(&eve),
        "GET",
        &format!("/v2/other/copy/blobs/{layer_digest}"),
        &[],
    );
    r.expect_error(404, "NAME_UNKNOWN");
}
