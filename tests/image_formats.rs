//! Every common image export imports and runs with its default command:
//! `podman save` in its three formats and `skopeo copy` to a docker-archive,
//! made by the real tools from an image in an isolated podman storage. Plus
//! multi-architecture image indexes: every platform is kept, an instance
//! runs its host's, and an image without the host's platform is refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{busybox_rootfs_tar, is_root, skip, Cloud};

const IMAGE: &str = "localhost/nimbus-e2e-formats:1";
const CMD_OUTPUT: &str = "hello-from-cmd";

/// podman and skopeo on a storage of their own under `dir`: nothing shared
/// on the machine is read or written.
struct Podman {
    conf: std::path::PathBuf,
    root: std::path::PathBuf,
    runroot: std::path::PathBuf,
    tmp: std::path::PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let conf = dir.join("containers.conf");
        // The open-files hard limit here is 20000: podman's default is higher.
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\nruntime = \"runc\"\n",
        )
        .unwrap();
        let p = Podman {
            conf,
            root: dir.join("storage"),
            runroot: dir.join("run"),
            tmp: dir.join("tmp"),
        };
        std::fs::create_dir_all(&p.tmp).unwrap();
        p
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut cmd = Command::new(program);
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("TMPDIR", &self.tmp)
            .args(args);
        if program == "podman" {
            cmd.arg("--root")
                .arg(&self.root)
                .arg("--runroot")
                .arg(&self.runroot)
                .args(["--storage-driver", "vfs", "--runtime", "runc"]);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `skopeo`'s name for the image in this storage.
    fn storage_ref(&self) -> String {
        format!(
            "containers-storage:[vfs@{}+{}]{IMAGE}",
            self.root.display(),
            self.runroot.display()
        )
    }
}

fn tools_present() -> bool {
    for tool in ["podman", "skopeo"] {
        let found = Command::new(tool).arg("--version").output();
        if !found.is_ok_and(|o| o.status.success()) {
            skip(&format!(
                "{tool} is not installed (scripts/deps installs it)"
            ));
            return false;
        }
    }
    true
}

#[test]
fn podman_and_skopeo_exports_import_and_run_their_cmd() {
    if !is_root("containers") || !tools_present() {
        return;
    }
    let cloud = Cloud::start();
    let work = cloud.data_dir().join("exports");
    std::fs::create_dir_all(&work).unwrap();
    let podman = Podman::new(&work);
    let rootfs = busybox_rootfs_tar(&work);
    let change = format!("CMD [\"/bin/sh\",\"-c\",\"echo {CMD_OUTPUT}\"]");
    podman.run(
        "podman",
        &[
            "import",
            "--quiet",
            "--change",
            &change,
            "--change",
            "ENV GREETING=from-podman",
            "--change",
            "WORKDIR /tmp",
            &rootfs,
            IMAGE,
        ],
    );

    let file = |name: &str| work.join(name).to_string_lossy().into_owned();
    let save = |format: &str, out: &str| {
        podman.run(
            "podman",
            &["save", "--quiet", "--format", format, "-o", out, IMAGE],
        )
    };
    save("docker-archive", &file("docker.tar"));
    save("oci-archive", &file("oci.tar"));
    save("oci-dir", &file("oci-dir"));
    let st = Command::new("tar")
        .args(["-C", &file("oci-dir"), "-cf", &file("oci-dir.tar"), "."])
        .status()
        .unwrap();
    assert!(st.success());
    podman.run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &podman.storage_ref(),
            &format!("docker-archive:{}", file("skopeo.tar")),
        ],
    );

    for (name, archive, format) in [
        ("from-docker-archive", "docker.tar", "docker-archive"),
        ("from-oci-archive", "oci.tar", "oci"),
        ("from-oci-dir", "oci-dir.tar", "oci"),
        ("from-skopeo", "skopeo.tar", "docker-archive"),
    ] {
        cloud.ok(&["image", "import", &file(archive), "--name", name]);
        let img = cloud.json(&["image", "get", name]).unwrap();
        assert_eq!(img["status"]["format"], format, "{name}: {img}");
        assert_eq!(
            img["status"]["defaults"]["cmd"],
            serde_json::json!(["/bin/sh", "-c", format!("echo {CMD_OUTPUT}")]),
            "{name}: {img}"
        );
        let defaults = &img["status"]["defaults"];
        assert_eq!(defaults["working_dir"], "/tmp", "{name}: {img}");
        assert!(
            defaults["env"]
                .as_array()
                .is_some_and(|env| env.iter().any(|e| e == "GREETING=from-podman")),
            "{name}: {img}"
        );
        let instance = format!("{name}-1");
        cloud.ok(&["instance", "run", &instance, "--image", name]);
        let done = cloud.wait_phase(&instance, &["exited", "failed"], Duration::from_secs(60));
        let logs = cloud.logs(&instance);
        assert!(
            logs.contains(CMD_OUTPUT),
            "{name}: no CMD output in the logs ({done}): {logs}"
        );
    }
    cloud.remove_everything();
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn tar_with(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Blobs of one platform's image: (manifest, blobs to store).
fn platform_image(layer: Vec<u8>, arch: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh", "-c", format!("echo {CMD_OUTPUT} on {arch}")]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]}
    }))
    .unwrap();
    let desc = |media: &str, data: &[u8]| serde_json::json!({"mediaType": media, "digest": format!("sha256:{}", sha256_hex(data)), "size": data.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    (manifest, vec![config, layer])
}

/// An OCI archive whose index lists each of `platforms` (architecture, layer).
fn index_archive(platforms: Vec<(&str, Vec<u8>)>) -> Vec<u8> {
    let mut files = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut manifests = Vec::new();
    for (arch, layer) in platforms {
        let (manifest, blobs) = platform_image(layer, arch);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&manifest)), "size": manifest.len(),
            "platform": {"os": "linux", "architecture": arch}
        }));
        for blob in blobs.into_iter().chain([manifest]) {
            files.push((format!("blobs/sha256/{}", sha256_hex(&blob)), blob));
        }
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    files.push((
        "index.json".to_string(),
        serde_json::to_vec(&index).unwrap(),
    ));
    tar_with(&files)
}

#[test]
fn an_image_index_keeps_every_platform_and_runs_the_hosts() {
    if !is_root("containers") {
        return;
    }
    let cloud = Cloud::start();
    let busybox = std::fs::read(busybox_rootfs_tar(cloud.data_dir())).unwrap();
    let arm_layer = tar_with(&[("arm64-only".to_string(), b"never runs".to_vec())]);
    let both = index_archive(vec![("amd64", busybox), ("arm64", arm_layer.clone())]);
    let file = cloud.data_dir().join("multi.tar");
    std::fs::write(&file, both).unwrap();
    cloud.ok(&["image", "import", file.to_str().unwrap(), "--name", "multi"]);
    let img = cloud.json(&["image", "get", "multi"]).unwrap();
    let platforms: Vec<&str> = img["status"]["platforms"]
        .as_array()
        .unwrap_or_else(|| panic!("no platforms: {img}"))
        .iter()
        .map(|p| p["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"], "{img}");
    assert_eq!(img["status"]["architecture"], "amd64");
    let shown = cloud.ok(&["image", "get", "multi"]);
    assert!(
        shown.contains("platforms: linux/amd64, linux/arm64"),
        "{shown}"
    );

    cloud.ok(&["instance", "run", "multi-1", "--image", "multi"]);
    let done = cloud.wait_phase("multi-1", &["exited", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"]["platform"], "linux/amd64", "{done}");
    let shown = cloud.ok(&["instance", "get", "multi-1"]);
    assert!(
        shown.contains("platform:") && shown.contains("linux/amd64"),
        "{shown}"
    );
    let logs = cloud.logs("multi-1");
    assert!(logs.contains(&format!("{CMD_OUTPUT} on amd64")), "{logs}");

    // Only arm64: imported, but refused at `instance run` on this amd64 host.
    let arm_only = cloud.data_dir().join("arm.tar");
    std::fs::write(&arm_only, index_archive(vec![("arm64", arm_layer)])).unwrap();
    cloud.ok(&[
        "image",
        "import",
        arm_only.to_str().unwrap(),
        "--name",
        "arm",
    ]);
    let out = cloud.nimbus(&["instance", "run", "arm-1", "--image", "arm"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran an arm64-only image: {stderr}");
    assert!(
        stderr.contains("has linux/arm64; this host is linux/amd64"),
        "{stderr}"
    );
    assert!(
        !cloud.nimbus(&["instance", "get", "arm-1"]).status.success(),
        "the refused instance exists"
    );
    cloud.remove_everything();
}

#[test]
fn an_oci_layout_without_its_blobs_is_refused_naming_the_format() {
    let cloud = Cloud::start();
    let broken = tar_with(&[(
        "index.json".to_string(),
        br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
    )]);
    let file = cloud.data_dir().join("broken.tar");
    std::fs::write(&file, broken).unwrap();
    let out = cloud.nimbus(&["image", "import", file.to_str().unwrap(), "--name", "b"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("looks like an OCI image layout tar that is missing"),
        "{stderr}"
    );
    assert!(!cloud.nimbus(&["image", "get", "b"]).status.success());
}
