//! Importing well-formed images: rootfs tarballs, OCI layouts, sharing, gc.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

use common::*;
use nimbus_image::{ImageError, ImageFormat, ImageStore, Limits};

fn rootfs_entries() -> Vec<Entry> {
    vec![
        Entry::Dir("./"),
        Entry::Dir("./etc/"),
        Entry::FileOwned("./etc/hostname", b"nimbus\n".to_vec(), 1000, 1001),
        Entry::Dir("./bin/"),
        Entry::FileMode("./bin/tool", b"#!/bin/sh\necho tool\n".to_vec(), 0o755),
        Entry::Symlink("./bin/sh", "/bin/busybox"),
        Entry::HardLink("./bin/tool2", "./bin/tool"),
        Entry::Fifo("./run.fifo"),
        Entry::File("implicit/parent/file", b"x".to_vec()),
    ]
}

fn check_rootfs_layer(dir: &std::path::Path) {
    assert_eq!(
        std::fs::read(dir.join("etc/hostname")).unwrap(),
        b"nimbus\n"
    );
    let hostname = lstat(&dir.join("etc/hostname"));
    assert_eq!((hostname.uid(), hostname.gid()), (1000, 1001));
    assert_eq!(hostname.permissions().mode() & 0o7777, 0o640);
    assert_eq!(hostname.mtime(), MTIME as i64);
    assert_eq!(
        lstat(&dir.join("bin/tool")).permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(dir.join("bin/sh")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
    assert_eq!(
        lstat(&dir.join("bin/tool2")).ino(),
        lstat(&dir.join("bin/tool")).ino()
    );
    assert!(lstat(&dir.join("run.fifo")).file_type().is_fifo());
    assert_eq!(
        lstat(&dir.join("etc")).mtime(),
        MTIME as i64,
        "dir mtime set after its entries"
    );
    assert_eq!(
        std::fs::read(dir.join("implicit/parent/file")).unwrap(),
        b"x"
    );
}

#[test]
fn plain_rootfs_tar_imports_as_one_layer_image() {
    let (_tmp, store) = store(Limits::default());
    let archive = tar_of(&rootfs_entries());
    let image = import(&store, &archive).unwrap();
    assert_eq!(image.format, ImageFormat::Rootfs);
    assert_eq!(image.manifest_digest, sha256(&archive));
    assert_eq!(image.layers, vec![sha256(&archive)]);
    assert_eq!(image.config, Default::default());
    assert_eq!(image.architecture, "amd64");
    assert_eq!(
        image.size_bytes,
        7 + 20 + 1,
        "hard-linked file counted once"
    );
    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].is_absolute());
    check_rootfs_layer(&dirs[0]);
    assert!(store
        .root()
        .join("blobs/sha256")
        .join(&image.layers[0][7..])
        .is_file());
}

#[test]
fn gzip_and_zstd_rootfs_tars_import() {
    let (_tmp, store) = store(Limits::default());
    let archive = tar_of(&rootfs_entries());
    for compressed in [gzip(&archive), zstd(&archive)] {
        let image = import(&store, &compressed).unwrap();
        assert_eq!(
            image.manifest_digest,
            sha256(&compressed),
            "blob is the archive as uploaded"
        );
        check_rootfs_layer(&store.layer_dirs(&image).unwrap()[0]);
    }
}

#[test]
fn busybox_rootfs_runs_after_import() {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let archive = tar_of(&[
        Entry::Dir("bin/"),
        Entry::FileMode("bin/busybox", busybox.clone(), 0o4755),
        Entry::Symlink("bin/sh", "/bin/busybox"),
        Entry::Symlink("bin/echo", "busybox"),
    ]);
    let (_tmp, store) = store(Limits::default());
    let image = import(&store, &gzip(&archive)).unwrap();
    let root = &store.layer_dirs(&image).unwrap()[0];
    assert_eq!(std::fs::read(root.join("bin/busybox")).unwrap(), busybox);
    assert_eq!(
        lstat(&root.join("bin/busybox")).permissions().mode() & 0o7777,
        0o4755
    );
    let output = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", "echo hello from $(echo layer)"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"hello from layer\n");
}

fn two_layer_image() -> OciLayout {
    let lower = tar_of(&[
        Entry::Dir("etc/"),
        Entry::File("etc/keep", b"kept".to_vec()),
        Entry::File("etc/remove-me", b"old".to_vec()),
        Entry::Dir("data/"),
        Entry::File("data/old", b"old data".to_vec()),
    ]);
    let upper = tar_of(&[
        Entry::Dir("etc/"),
        Entry::File("etc/.wh.remove-me", Vec::new()),
        Entry::Dir("data/"),
        Entry::File("data/.wh..wh..opq", Vec::new()),
        Entry::File("data/new", b"new data".to_vec()),
    ]);
    OciLayout::new(&[lower, upper])
}

#[test]
fn oci_whiteouts_become_overlay_whiteouts_and_opaque_dirs() {
    let (_tmp, store) = store(Limits::default());
    let layout = two_layer_image();
    let image = import(&store, &layout.to_tar()).unwrap();
    assert_eq!(image.format, ImageFormat::Oci);
    assert_eq!(image.manifest_digest, layout.manifest_digest);
    assert_eq!(image.layers, layout.layer_digests);
    assert_eq!(image.config.env, ["PATH=/usr/bin:/bin", "GREETING=hello"]);
    assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.config.cmd, ["echo hi"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));

    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 2);
    assert!(
        dirs[0].join("etc/remove-me").is_file(),
        "lowest layer first"
    );
    let whiteout = lstat(&dirs[1].join("etc/remove-me"));
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0, "whiteout is device 0:0");
    assert!(!dirs[1].join("etc/.wh.remove-me").exists());
    assert_eq!(
        get_xattr(&dirs[1].join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dirs[1].join("data/.wh..wh..opq").exists());
    assert_eq!(
        get_xattr(&dirs[0].join("data"), "trusted.overlay.opaque"),
        None
    );
    // manifest, config and both layers are stored
    for digest in layout
        .layer_digests
        .iter()
        .chain([&layout.manifest_digest, &layout.config_digest])
    {
        assert!(
            store
                .root()
                .join("blobs/sha256")
                .join(&digest[7..])
                .is_file(),
            "{digest}"
        );
    }
}

#[test]
fn importing_twice_shares_blobs_and_layer_dirs() {
    let (_tmp, store) = store(Limits::default());
    let archive = two_layer_image().to_tar();
    let first = import(&store, &archive).unwrap();
    let dirs = store.layer_dirs(&first).unwrap();
    let inode = lstat(&dirs[1].join("data/new")).ino();
    let before = snapshot(&store);
    let second = import(&store, &archive).unwrap();
    assert_eq!(first, second);
    assert_eq!(store.layer_dirs(&second).unwrap(), dirs);
    assert_eq!(
        lstat(&dirs[1].join("data/new")).ino(),
        inode,
        "layer was not unpacked again"
    );
    assert_eq!(snapshot(&store), before);

    // Another image sharing the lower layer reuses its directory.
    let rootfs = tar_of(&rootfs_entries());
    let a = import(&store, &rootfs).unwrap();
    let b = import(&store, &rootfs).unwrap();
    assert_eq!(store.layer_dirs(&a).unwrap(), store.layer_dirs(&b).unwrap());
}

#[test]
fn repeated_layer_is_listed_once_at_its_uppermost_position() {
    let (_tmp, store) = store(Limits::default());
    let a = tar_of(&[Entry::File("a", b"a".to_vec())]);
    let b = tar_of(&[Entry::File("b", b"b".to_vec())]);
    let image = import(&store, &OciLayout::new(&[a.clone(), b, a]).to_tar()).unwrap();
    assert_eq!(image.layers.len(), 3);
    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 2);
    assert!(dirs[0].join("b").exists() && dirs[1].join("a").exists());
}

#[test]
fn gc_removes_only_unreferenced_blobs_and_layers() {
    let (_tmp, store) = store(Limits::default());
    let oci = import(&store, &two_layer_image().to_tar()).unwrap();
    let rootfs_archive = tar_of(&rootfs_entries());
    let rootfs = import(&store, &rootfs_archive).unwrap();
    let oci_dirs = store.layer_dirs(&oci).unwrap();

    let report = store.gc(std::slice::from_ref(&oci)).unwrap();
    assert_eq!(report.removed_blobs, vec![rootfs.manifest_digest.clone()]);
    assert_eq!(report.removed_layers, vec![rootfs.layers[0].clone()]);
    assert!(report.freed_bytes >= rootfs_archive.len() as u64);
    assert_eq!(store.layer_dirs(&oci).unwrap(), oci_dirs);
    assert!(oci_dirs.iter().all(|d| d.is_dir()));
    assert!(matches!(
        store.layer_dirs(&rootfs),
        Err(ImageError::LayerMissing { .. })
    ));
    // manifest + config + 2 layers survive
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        4
    );

    let report = store.gc(&[]).unwrap();
    assert_eq!(report.removed_blobs.len(), 4);
    assert_eq!(report.removed_layers.len(), 2);
    assert!(snapshot(&store).is_empty(), "{:?}", snapshot(&store));
}

#[test]
fn gc_refuses_invalid_digests_in_keep_list() {
    let (_tmp, store) = store(Limits::default());
    let mut image = import(&store, &tar_of(&rootfs_entries())).unwrap();
    image.layers[0] = "sha256:../../etc".into();
    assert!(matches!(
        store.gc(&[image.clone()]),
        Err(ImageError::InvalidDigest { .. })
    ));
    assert!(matches!(
        store.layer_dirs(&image),
        Err(ImageError::InvalidDigest { .. })
    ));
    assert_eq!(
        std::fs::read_dir(store.root().join("layers"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn missing_layer_dir_is_unpacked_again_from_its_blob() {
    let (_tmp, store) = store(Limits::default());
    let image = import(&store, &two_layer_image().to_tar()).unwrap();
    let dirs = store.layer_dirs(&image).unwrap();
    std::fs::remove_dir_all(&dirs[1]).unwrap();
    assert_eq!(store.layer_dirs(&image).unwrap(), dirs);
    assert!(lstat(&dirs[1].join("etc/remove-me"))
        .file_type()
        .is_char_device());

    // A damaged blob is noticed instead of unpacked.
    std::fs::remove_dir_all(&dirs[0]).unwrap();
    let blob = store
        .root()
        .join("blobs/sha256")
        .join(&image.layers[0][7..]);
    let mut data = std::fs::read(&blob).unwrap();
    data.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&blob, data).unwrap();
    let err = store.layer_dirs(&image).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(!dirs[0].exists());
}

#[test]
fn progress_reports_bytes_read_up_to_the_archive_size() {
    let (_tmp, store) = store(Limits::default());
    let archive = tar_of(&[Entry::File("big", vec![1u8; 3 << 20])]);
    let mut seen = Vec::new();
    store.import(&archive[..], &mut |n| seen.push(n)).unwrap();
    assert!(seen.len() > 1);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*seen.last().unwrap(), archive.len() as u64);
}

#[test]
fn open_cleans_staging_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = ImageStore::open(&root, Limits::default()).unwrap();
    std::fs::create_dir_all(root.join("tmp/import-1-2-3/layer-x/etc")).unwrap();
    std::fs::write(root.join("tmp/stray"), b"x").unwrap();
    drop(store);
    let store = ImageStore::open(&root, Limits::default()).unwrap();
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn imported_image_serializes_with_lowercase_format() {
    let (_tmp, store) = store(Limits::default());
    let image = import(&store, &tar_of(&rootfs_entries())).unwrap();
    let json = serde_json::to_value(&image).unwrap();
    assert_eq!(json["format"], "rootfs");
    let back: nimbus_image::ImportedImage = serde_json::from_value(json).unwrap();
    assert_eq!(back, image);
}
