//! Image import through the API: good archives work; hostile ones are
//! rejected with a clear error and leave nothing behind.

mod common;

use std::io::Write;
use std::path::Path;

use common::{http_raw, Cloud};

fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Write a raw path into a header, bypassing the tar crate's own checks.
fn raw_path(h: &mut tar::Header, path: &str) {
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "layers", "tmp"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_archives_are_rejected_and_leave_nothing() {
    let cloud = Cloud::start_with(&["--max-unpacked-size", "32MiB"]);
    let admin = cloud.admin_token();
    let images = cloud.data_dir().join("images");
    let before = listing(&images);

    let dotdot = tar_with(|b| {
        let mut h = header(tar::EntryType::Regular, 4);
        raw_path(&mut h, "../../etc/evil");
        b.append(&h, &b"evil"[..]).unwrap();
    });
    let device = tar_with(|b| {
        let mut h = header(tar::EntryType::Char, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(1).unwrap();
        raw_path(&mut h, "dev/mem");
        b.append(&h, std::io::empty()).unwrap();
    });
    let escaping_symlink = tar_with(|b| {
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, "etc", "/etc").unwrap();
        let mut f = header(tar::EntryType::Regular, 4);
        raw_path(&mut f, "etc/nimbus-e2e-probe");
        b.append(&f, &b"evil"[..]).unwrap();
    });
    let hardlink_out = tar_with(|b| {
        let mut h = header(tar::EntryType::Link, 0);
        b.append_link(&mut h, "shadow", "../../../etc/shadow")
            .unwrap();
    });
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let tar = tar_with(|b| {
            let h = header(tar::EntryType::Regular, 64 << 20);
            let mut h = h;
            raw_path(&mut h, "zeros");
            b.append(&h, std::io::repeat(0).take_exact(64 << 20))
                .unwrap();
        });
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    };
    let garbage = b"this is not an archive at all".repeat(100);

    for (name, body) in [
        ("dotdot", dotdot),
        ("device", device),
        ("symlink", escaping_symlink),
        ("hardlink", hardlink_out),
        ("bomb", bomb),
        ("garbage", garbage),
    ] {
        let (status, resp) = http_raw(
            &cloud,
            "POST",
            &format!("/v1/projects/default/images?name={name}"),
            Some(&admin),
            &body,
            "application/octet-stream",
        );
        assert_eq!(status, 422, "{name}: {resp}");
        assert!(resp.contains("was not imported"), "{name}: {resp}");
        assert_eq!(listing(&images), before, "{name} left files behind");
        assert!(
            !cloud.nimbus(&["image", "get", name]).status.success(),
            "{name} exists"
        );
    }
    assert!(!Path::new("/etc/nimbus-e2e-probe").exists());
    assert!(!Path::new("/etc/evil").exists());

    // A good archive still imports, through the CLI with its progress bar.
    let good = tar_with(|b| {
        let mut h = header(tar::EntryType::Regular, 6);
        raw_path(&mut h, "hello.txt");
        b.append(&h, &b"hello\n"[..]).unwrap();
    });
    let file = cloud.data_dir().join("good.tar");
    std::fs::write(&file, good).unwrap();
    cloud.ok(&["image", "import", file.to_str().unwrap(), "--name", "good"]);
    let v = cloud.json(&["image", "get", "good"]).unwrap();
    assert_eq!(v["status"]["format"], "rootfs");
    assert_eq!(v["status"]["layers"].as_array().unwrap().len(), 1);
    // Deleting it collects its blobs and layer.
    cloud.ok(&["image", "rm", "good"]);
    assert_eq!(listing(&images), before);
}

trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExact for R {}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An OCI image layout tarball, as `skopeo copy ... oci-archive:` writes.
fn oci_archive(layers: &[Vec<u8>], config: serde_json::Value) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let digest = sha256_hex(layer);
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{digest}"), "size": layer.len()
        }));
        diff_ids.push(format!("sha256:{digest}"));
        blobs.push((digest, layer.clone()));
    }
    let mut config = config;
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    config["architecture"] = serde_json::json!("amd64");
    config["os"] = serde_json::json!("linux");
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_hex(&config_bytes);
    blobs.push((config_digest.clone(), config_bytes.clone()));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config_bytes.len()},
        "layers": layer_descs
    }))
    .unwrap();
    let manifest_digest = sha256_hex(&manifest);
    blobs.push((manifest_digest.clone(), manifest.clone()));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest.len()}]
    }))
    .unwrap();
    tar_with(|b| {
        let mut add = |path: &str, data: &[u8]| {
            let mut h = header(tar::EntryType::Regular, data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &index);
        for (digest, data) in &blobs {
            add(&format!("blobs/sha256/{digest}"), data);
        }
    })
}

#[test]
fn oci_image_runs_with_its_default_command_and_whiteouts() {
    let cloud = Cloud::start();
    // Lower layer: the starter busybox root filesystem, as a tar.
    let starter = cloud.json(&["image", "get", "busybox"]).unwrap();
    let layer_dir = cloud.data_dir().join("images/layers").join(
        starter["status"]["layers"][0]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(&layer_dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success());
    let base = out.stdout;
    // Upper layer: a script, and a whiteout deleting /etc/group.
    let upper = tar_with(|b| {
        let script = b"echo \"greeting=$GREETING from $(cat /etc/motd)\"; ls /etc/group 2>&1\n";
        let mut h = header(tar::EntryType::Regular, script.len() as u64);
        b.append_data(&mut h, "hello.sh", &script[..]).unwrap();
        let motd = b"the upper layer\n";
        let mut h = header(tar::EntryType::Regular, motd.len() as u64);
        b.append_data(&mut h, "etc/motd", &motd[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0);
        b.append_data(&mut h, "etc/.wh.group", std::io::empty())
            .unwrap();
    });
    let archive = oci_archive(
        &[base, upper],
        serde_json::json!({"config": {"Cmd": ["/bin/sh", "/hello.sh"], "Env": ["GREETING=oci"], "WorkingDir": "/"}}),
    );
    let file = cloud.data_dir().join("app.oci.tar");
    std::fs::write(&file, archive).unwrap();
    cloud.ok(&["image", "import", file.to_str().unwrap(), "--name", "app"]);
    let img = cloud.json(&["image", "get", "app"]).unwrap();
    assert_eq!(img["status"]["format"], "oci");
    assert_eq!(img["status"]["layers"].as_array().unwrap().len(), 2);
    // A second image with the same layers shares them: nothing new is unpacked.
    let layer_count = || {
        std::fs::read_dir(cloud.data_dir().join("images/layers"))
            .unwrap()
            .count()
    };
    let before = layer_count();
    cloud.ok(&[
        "image",
        "import",
        file.to_str().unwrap(),
        "--name",
        "app-again",
    ]);
    assert_eq!(layer_count(), before);

    cloud.ok(&["instance", "run", "app1", "--image", "app"]);
    cloud.wait_phase("app1", &["exited"], std::time::Duration::from_secs(60));
    let logs = cloud.logs("app1");
    assert!(logs.contains("greeting=oci from the upper layer"), "{logs}");
    assert!(
        logs.contains("No such file"),
        "the whiteout hides /etc/group: {logs}"
    );
    cloud.remove_everything();
}
