//! The OCI registry on the API port, driven by real clients: `skopeo`
//! pushes an image that then runs as a project image and pulls it back
//! byte for byte; another project's token sees nothing; hostile pushes
//! (curl) are refused with the spec's error codes and store nothing.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Cloud;
use serde_json::Value;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An OCI image as `skopeo copy ... oci-archive:` writes it: one gzip
/// layer, a config with `cmd`. Returns the archive and its blobs by digest
/// (layer, config, manifest).
struct Archive {
    tar: Vec<u8>,
    manifest_digest: String,
    blobs: Vec<(String, Vec<u8>)>,
}

fn oci_archive(layer_tar: &[u8], cmd: &[&str]) -> Archive {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(layer_tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(layer_tar))]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{}", sha256_hex(&layer)), "size": layer.len()}]
    }))
    .unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len()}]
    }))
    .unwrap();
    let blobs: Vec<(String, Vec<u8>)> = [layer, config, manifest]
        .into_iter()
        .map(|b| (sha256_hex(&b), b))
        .collect();
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        builder.append_data(&mut h, path, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (hex, data) in &blobs {
        add(&format!("blobs/sha256/{hex}"), data);
    }
    Archive {
        tar: builder.into_inner().unwrap(),
        manifest_digest,
        blobs,
    }
}

/// A user with `role` in `project` (created if needed) and a token of theirs.
fn member(cloud: &Cloud, user: &str, role: &str, project: &str) -> String {
    let _ = cloud.nimbus(&["project", "create", project]);
    cloud.ok(&["user", "create", user]);
    cloud.ok(&["role", "grant", user, role, "--project", project]);
    let v = cloud
        .json(&["token", "create", "--user", user])
        .expect("token create");
    v["secret"].as_str().expect("secret").to_string()
}

/// The server's self-signed certificate as a skopeo certificate directory.
fn cert_dir(cloud: &Cloud) -> PathBuf {
    let dir = cloud.data_dir().join("registry-certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(cloud.data_dir().join("tls/cert.pem"), dir.join("ca.crt")).unwrap();
    dir
}

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (Debian package `skopeo`, installed by scripts/deps)")
}

fn skopeo_ok(args: &[&str]) -> String {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A call with curl over TLS: (status, headers, body).
struct Reply {
    status: u16,
    headers: String,
    body: String,
    stderr: String,
}

impl Reply {
    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("no registry error in {:?} ({})", self.body, self.stderr))
    }
}

fn curl(cloud: &Cloud, token: Option<&str>, method: &str, path: &str, extra: &[&str]) -> Reply {
    let work = tempfile::tempdir().unwrap();
    let (head, body) = (work.path().join("h"), work.path().join("b"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "--max-time", "30", "-X", method])
        .arg("--cacert")
        .arg(cloud.data_dir().join("tls/cert.pem"))
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-u", &format!("anyone:{t}")]);
    }
    let out = cmd
        .args(extra)
        .arg(format!("https://127.0.0.1:{}{path}", cloud.port))
        .output()
        .expect("run curl");
    Reply {
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The `Location` an upload session answered with.
fn location_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply
        .headers
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("location: ")
                .map(|v| v.trim().to_string())
        })
        .expect("Location header")
}

fn image_names(cloud: &Cloud, project: &str) -> Vec<String> {
    let v = cloud
        .json(&["image", "list", "--project", project])
        .expect("image list");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// What the image store holds, by file name.
fn store_listing(images: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "layers", "tmp"] {
        if let Ok(entries) = std::fs::read_dir(images.join(sub)) {
            for e in entries.flatten() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

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
        assert_eq!(
            (r.status, r.code()),
            (404, "NAME_UNKNOWN".into()),
            "{method} {path}: {}",
            r.body
        );
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
    assert_eq!((r.status, r.code()), (403, "DENIED".into()), "{}", r.body);
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
    assert_eq!(
        (r.status, r.code()),
        (404, "MANIFEST_UNKNOWN".into()),
        "{}",
        r.body
    );
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
    assert_eq!(
        (r.status, r.code()),
        (400, "MANIFEST_BLOB_UNKNOWN".into()),
        "{}",
        r.body
    );

    // A blob whose bytes hash to something else: monolithic, and through a session.
    let r = curl(
        &cloud,
        Some(&alice),
        "POST",
        &format!("/v2/ops/app/blobs/uploads/?digest={missing}"),
        &["--data-binary", "not the zero digest"],
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "DIGEST_INVALID".into()),
        "{}",
        r.body
    );
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
    assert_eq!(
        (r.status, r.code()),
        (416, "RANGE_INVALID".into()),
        "{}",
        r.body
    );
    let r = curl(
        &cloud,
        Some(&alice),
        "PUT",
        &format!("{location}?digest={missing}"),
        &[],
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "DIGEST_INVALID".into()),
        "{}",
        r.body
    );
    let r = curl(&cloud, Some(&alice), "GET", &location, &[]);
    assert_eq!(
        (r.status, r.code()),
        (404, "BLOB_UPLOAD_UNKNOWN".into()),
        "the failed upload is gone: {}",
        r.body
    );

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
    assert_eq!(
        (r.status, r.code()),
        (413, "SIZE_INVALID".into()),
        "{}",
        r.body
    );
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
    assert_eq!(
        (r.status, r.code()),
        (413, "SIZE_INVALID".into()),
        "{}",
        r.body
    );
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
        assert_eq!(
            (r.status, r.code()),
            (400, "NAME_INVALID".into()),
            "{path}: {}",
            r.body
        );
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

/// podman with storage of its own under `dir` (vfs: no mounts to clean up).
fn podman(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("run podman (Debian package `podman`, installed by scripts/deps)")
}

fn podman_ok(dir: &Path, args: &[&str]) -> String {
    let out = podman(dir, args);
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
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

/// Pushes `data` as a blob of `repo` in one request; returns its digest.
fn push_blob(cloud: &Cloud, token: &str, repo: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(data));
    let file = cloud.data_dir().join(format!("blob-{}", &digest[7..19]));
    std::fs::write(&file, data).unwrap();
    let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
    let r = curl(
        cloud,
        Some(token),
        "POST",
        &path,
        &["--data-binary", &format!("@{}", file.display())],
    );
    assert_eq!(r.status, 201, "pushing a blob: {}", r.body);
    digest
}

/// PUTs a manifest; returns the reply.
fn put_manifest(
    cloud: &Cloud,
    token: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Reply {
    let file = cloud
        .data_dir()
        .join(format!("manifest-{}", sha256_hex(body)));
    std::fs::write(&file, body).unwrap();
    curl(
        cloud,
        Some(token),
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    )
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
    assert_eq!(
        (r.status, r.code()),
        (400, "MANIFEST_BLOB_UNKNOWN".into()),
        "{}",
        r.body
    );
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
    assert_eq!(
        (r.status, r.code()),
        (400, "DIGEST_INVALID".into()),
        "{}",
        r.body
    );
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
    assert_eq!(
        (r.status, r.code()),
        (404, "NAME_UNKNOWN".into()),
        "{}",
        r.body
    );
}
