//! docker-archives (as `docker save` / `podman save` write them), tarballs that only
//! look like image archives, and multi-platform OCI indexes.

mod common;

use common::*;
use nimbus_image::{ImageError, ImageFormat, Limits};

fn layer_one() -> Vec<u8> {
    tar_of(&[
        Entry::Dir("bin/"),
        Entry::File("bin/hello", b"lower".to_vec()),
    ])
}

fn layer_two() -> Vec<u8> {
    tar_of(&[
        Entry::Dir("etc/"),
        Entry::File("etc/motd", b"upper".to_vec()),
    ])
}

fn hex(data: &[u8]) -> String {
    sha256(data)[7..].to_string()
}

/// A docker-archive as a list of files, podman-style (`<hex>.tar`, `<hex>.json`).
struct DockerArchive {
    files: Vec<(String, Vec<u8>)>,
    extra: Vec<Entry>,
}

impl DockerArchive {
    fn new(layers: &[Vec<u8>]) -> DockerArchive {
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
        let config = config_json(&diff_ids, "amd64");
        let mut files = Vec::new();
        let mut layer_paths = Vec::new();
        for layer in layers {
            let path = format!("{}.tar", hex(layer));
            layer_paths.push(path.clone());
            files.push((path, layer.clone()));
        }
        let config_path = format!("{}.json", hex(&config));
        files.push((config_path.clone(), config));
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_path, "RepoTags": ["localhost/app:1"], "Layers": layer_paths
        }]))
        .unwrap();
        files.insert(0, ("manifest.json".to_string(), manifest));
        DockerArchive {
            files,
            extra: Vec::new(),
        }
    }

    fn set(&mut self, name: &str, data: Vec<u8>) {
        self.files.iter_mut().find(|(n, _)| n == name).unwrap().1 = data;
    }

    fn to_tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in &self.files {
            let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
            append(&mut builder, &Entry::File(leaked, data.clone()));
        }
        for entry in &self.extra {
            append(&mut builder, entry);
        }
        builder.into_inner().unwrap()
    }
}

fn assert_refused(archive: &[u8], check: impl Fn(&ImageError)) {
    let (_tmp, store) = store(Limits::default());
    import(&store, &tar_of(&[Entry::File("good", b"good".to_vec())])).unwrap();
    let before = snapshot(&store);
    let err = import(&store, archive).expect_err("the archive must be refused");
    check(&err);
    assert_eq!(
        snapshot(&store),
        before,
        "a refused import left files: {err}"
    );
}

#[test]
fn docker_archive_imports_with_its_layers_and_config() {
    let (_tmp, store) = store(Limits::default());
    let archive = DockerArchive::new(&[layer_one(), layer_two()]);
    let image = import(&store, &archive.to_tar()).unwrap();
    assert_eq!(image.format, ImageFormat::DockerArchive);
    assert_eq!(
        image.layers,
        [sha256(&layer_one()), sha256(&layer_two())],
        "uncompressed layers are stored under their diff_ids"
    );
    assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.config.cmd, ["echo hi"]);
    assert_eq!(image.config.env, ["PATH=/usr/bin:/bin", "GREETING=hello"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(image.architecture, "amd64");
    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(std::fs::read(dirs[0].join("bin/hello")).unwrap(), b"lower");
    assert_eq!(std::fs::read(dirs[1].join("etc/motd")).unwrap(), b"upper");
    // The synthesized manifest is stored, so the image has a manifest digest like any.
    let manifest = store
        .root()
        .join("blobs/sha256")
        .join(&image.manifest_digest[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(manifest["layers"][1]["digest"], sha256(&layer_two()));
    assert_eq!(
        serde_json::to_value(&image).unwrap()["format"],
        "docker-archive"
    );
    // Collected like any image once no longer kept.
    let report = store.gc(&[]).unwrap();
    assert_eq!(report.removed_layers.len(), 2);
}

#[test]
fn compressed_docker_archive_imports_as_one() {
    let (_tmp, store) = store(Limits::default());
    let archive = DockerArchive::new(&[layer_one(), layer_two()]).to_tar();
    let image = import(&store, &gzip(&archive)).unwrap();
    assert_eq!(image.format, ImageFormat::DockerArchive);
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.config.cmd, ["echo hi"]);
    // Nothing of the failed rootfs attempt stays: only the image's blobs and layers.
    let blobs = std::fs::read_dir(store.root().join("blobs/sha256")).unwrap();
    assert_eq!(blobs.count(), 4, "two layers, config, manifest");
    let tmp = std::fs::read_dir(store.root().join("tmp")).unwrap();
    assert_eq!(tmp.count(), 0);
}

#[test]
fn old_docker_save_layout_with_a_symlinked_repeated_layer_imports() {
    let layer = layer_one();
    let config = config_json(&[sha256(&layer), sha256(&layer)], "amd64");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "abc.json", "RepoTags": null, "Layers": ["a1/layer.tar", "b2/layer.tar"]
    }]))
    .unwrap();
    let archive = tar_of(&[
        Entry::Dir("a1/"),
        Entry::File("a1/layer.tar", layer.clone()),
        Entry::File("a1/VERSION", b"1.0".to_vec()),
        Entry::Dir("b2/"),
        Entry::Symlink("b2/layer.tar", "../a1/layer.tar"),
        Entry::File("abc.json", config),
        Entry::File("repositories", b"{}".to_vec()),
        Entry::File("manifest.json", manifest),
    ]);
    let (_tmp, store) = store(Limits::default());
    let image = import(&store, &archive).unwrap();
    assert_eq!(image.layers, [sha256(&layer), sha256(&layer)]);
    assert_eq!(store.layer_dirs(&image).unwrap().len(), 1);
}

#[test]
fn docker_archive_missing_a_layer_is_refused() {
    let mut archive = DockerArchive::new(&[layer_one(), layer_two()]);
    let missing = format!("{}.tar", hex(&layer_two()));
    archive.files.retain(|(n, _)| *n != missing);
    assert_refused(&archive.to_tar(), |e| {
        assert!(matches!(e, ImageError::InvalidDockerArchive { .. }), "{e}");
        assert!(e.to_string().contains(&missing), "{e}");
        assert!(e.to_string().contains("not in the archive"), "{e}");
    });
}

#[test]
fn docker_archive_layer_not_matching_its_diff_id_is_refused() {
    let mut archive = DockerArchive::new(&[layer_one(), layer_two()]);
    let name = format!("{}.tar", hex(&layer_two()));
    let tampered = tar_of(&[Entry::File("etc/motd", b"evil!".to_vec())]);
    archive.set(&name, tampered.clone());
    assert_refused(&archive.to_tar(), |e| {
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains("diff_ids[1]"), "{e}");
        assert!(e.to_string().contains(&sha256(&layer_two())), "{e}");
        assert!(e.to_string().contains(&sha256(&tampered)), "{e}");
    });
}

#[test]
fn docker_archive_with_unsafe_paths_is_refused() {
    let mut dotdot = DockerArchive::new(&[layer_one()]);
    dotdot
        .extra
        .push(Entry::File("../../etc/evil", b"x".to_vec()));
    assert_refused(&dotdot.to_tar(), |e| {
        assert!(matches!(e, ImageError::UnexpectedDockerEntry { .. }), "{e}");
        assert!(e.to_string().contains("../../etc/evil"), "{e}");
        assert!(e.to_string().contains("`..`"), "{e}");
    });

    // manifest.json naming a path outside the archive.
    let mut outside = DockerArchive::new(&[layer_one()]);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "../../etc/passwd", "Layers": ["x.tar"]
    }]))
    .unwrap();
    outside.set("manifest.json", manifest);
    assert_refused(&outside.to_tar(), |e| {
        assert!(
            e.to_string().contains("unsafe path `../../etc/passwd`"),
            "{e}"
        );
    });

    let mut symlink = DockerArchive::new(&[layer_one()]);
    symlink
        .extra
        .push(Entry::Symlink("x/layer.tar", "../../etc/shadow"));
    assert_refused(&symlink.to_tar(), |e| {
        assert!(e.to_string().contains("leaves the archive"), "{e}");
    });
}

#[test]
fn docker_archive_with_duplicate_or_odd_entries_is_refused() {
    let mut twice = DockerArchive::new(&[layer_one()]);
    let name: &'static str = Box::leak(format!("{}.tar", hex(&layer_one())).into_boxed_str());
    twice.extra.push(Entry::File(name, layer_two()));
    assert_refused(&twice.to_tar(), |e| {
        assert!(e.to_string().contains("appears twice"), "{e}");
    });
    let mut device = DockerArchive::new(&[layer_one()]);
    device.extra.push(Entry::Char("null"));
    assert_refused(&device.to_tar(), |e| {
        assert!(
            e.to_string().contains("not part of a docker-archive"),
            "{e}"
        );
    });
    let mut deep = DockerArchive::new(&[layer_one()]);
    deep.extra.push(Entry::File("a/b/c/d.tar", b"x".to_vec()));
    assert_refused(&deep.to_tar(), |e| {
        assert!(e.to_string().contains("a/b/c/d.tar"), "{e}");
        assert!(e.to_string().contains("levels deep"), "{e}");
    });
    let mut two_images = DockerArchive::new(&[layer_one()]);
    let one: serde_json::Value = serde_json::from_slice(&two_images.files[0].1).unwrap();
    let both = serde_json::to_vec(&serde_json::json!([one[0], one[0]])).unwrap();
    two_images.set("manifest.json", both);
    assert_refused(&two_images.to_tar(), |e| {
        assert!(e.to_string().contains("lists 2 images"), "{e}");
    });
}

#[test]
fn look_alikes_are_refused_naming_the_format() {
    // An OCI layout tar that lost its blobs and its oci-layout file.
    let layout = OciLayout::new(&[layer_one()]);
    let index = layout
        .files
        .iter()
        .find(|(n, _)| n == "index.json")
        .unwrap()
        .1
        .clone();
    assert_refused(&tar_of(&[Entry::File("index.json", index)]), |e| {
        assert!(matches!(e, ImageError::LooksLikeImageArchive { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("OCI image layout tar that is missing its `oci-layout` file"),
            "{e}"
        );
        assert!(e.to_string().contains("none of /bin, /etc"), "{e}");
    });
    // A docker-archive whose manifest.json is not JSON.
    let mut broken = DockerArchive::new(&[layer_one()]);
    broken.set("manifest.json", b"{not json".to_vec());
    assert_refused(&broken.to_tar(), |e| {
        assert!(
            e.to_string()
                .contains("invalid docker-archive: its manifest.json is unreadable"),
            "{e}"
        );
    });
    // The same, gzip-compressed: still named as a docker-archive.
    let mut broken = DockerArchive::new(&[layer_one()]);
    broken.set("manifest.json", b"{not json".to_vec());
    assert_refused(&gzip(&broken.to_tar()), |e| {
        assert!(e.to_string().contains("manifest.json is unreadable"), "{e}");
    });
    // A root filesystem that happens to hold a manifest.json still imports.
    let (_tmp, store) = store(Limits::default());
    let rootfs = tar_of(&[
        Entry::Dir("etc/"),
        Entry::File("etc/os-release", b"x".to_vec()),
        Entry::File("manifest.json", b"[]".to_vec()),
    ]);
    assert_eq!(import(&store, &rootfs).unwrap().format, ImageFormat::Rootfs);
}

/// An OCI layout whose index holds an amd64 and an arm64 image.
fn two_platform_layout(amd64: bool) -> OciLayout {
    let mut layout = OciLayout::new(&[tar_of(&[Entry::File("amd", b"64".to_vec())])]);
    let amd64_manifest = layout.manifest_digest.clone();
    let amd64_size = layout
        .files
        .iter()
        .find(|(n, _)| *n == OciLayout::blob_name(&amd64_manifest))
        .unwrap()
        .1
        .len();
    let arm = manifest_blobs(&[tar_of(&[Entry::File("arm", b"64".to_vec())])], "arm64");
    for (_, data) in arm.blobs {
        layout.add_blob(data);
    }
    let mut manifests = vec![serde_json::json!(
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&arm.manifest),
         "size": arm.manifest.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}})];
    if amd64 {
        manifests.push(serde_json::json!(
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64_manifest,
             "size": amd64_size, "platform": {"os": "linux", "architecture": "amd64"}}));
    }
    // An attestation manifest, as buildx adds: not a platform.
    manifests.push(serde_json::json!(
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(b"nothing"),
         "size": 7, "platform": {"os": "unknown", "architecture": "unknown"}}));
    layout.add_blob(arm.manifest);
    // index.json names a nested index, as `skopeo copy --all` writes.
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor("application/vnd.oci.image.index.v1+json", &nested)],
    }))
    .unwrap();
    layout.add_blob(nested);
    layout.set("index.json", index);
    layout
}

#[test]
fn image_index_keeps_every_platform() {
    let (_tmp, store) = store(Limits::default());
    let layout = two_platform_layout(true);
    let image = import(&store, &layout.to_tar()).unwrap();
    assert_eq!(image.architecture, "amd64", "amd64 is the default");
    assert_eq!(image.manifest_digest, layout.manifest_digest);
    assert_eq!(image.platform_names(), "linux/amd64, linux/arm64/v8");
    let arm = image.for_architecture("aarch64").unwrap();
    assert!(store.layer_dirs(&arm).unwrap()[0].join("arm").is_file());
    let amd = image.for_architecture("x86_64").unwrap();
    assert!(store.layer_dirs(&amd).unwrap()[0].join("amd").is_file());
    // Both platforms' blobs survive collection while the image is kept.
    let report = store.gc(std::slice::from_ref(&image)).unwrap();
    assert!(report.removed_blobs.is_empty(), "{report:?}");
    assert!(report.removed_layers.is_empty(), "{report:?}");
}

#[test]
fn arm64_only_image_imports_but_is_refused_for_amd64() {
    let (_tmp, store) = store(Limits::default());
    let image = import(&store, &two_platform_layout(false).to_tar()).unwrap();
    assert_eq!(image.architecture, "arm64");
    assert!(!image.runs_on("x86_64"));
    let err = image.for_architecture("x86_64").unwrap_err().to_string();
    assert!(
        err.contains("has linux/arm64/v8; this host is linux/amd64"),
        "{err}"
    );
}
