//! Hostile archives: each is rejected with an error naming the entry, and the store
//! (blobs/, layers/, tmp/) is exactly as it was before the attempt.

mod common;

use std::path::Path;

use common::*;
use nimbus_image::{ImageError, ImageStore, Limits};
use tar::EntryType;

/// A store that already holds one good image, so "nothing left behind" is checked
/// against a non-empty state.
fn seeded_store(limits: Limits) -> (tempfile::TempDir, ImageStore) {
    let (tmp, store) = store(limits);
    import(&store, &tar_of(&[Entry::File("good", b"good".to_vec())])).unwrap();
    (tmp, store)
}

/// Imports `archive` both as a rootfs tarball and inside an OCI layout (after a good
/// lower layer), expecting rejection and an unchanged store each time.
fn assert_rejected(limits: Limits, layer_tar: Vec<u8>, check: impl Fn(&ImageError)) {
    let (_tmp, store) = seeded_store(limits);
    let before = snapshot(&store);
    let good_lower = tar_of(&[
        Entry::Dir("lower/"),
        Entry::File("lower/file", b"ok".to_vec()),
    ]);
    for (label, archive) in [
        ("rootfs", layer_tar.clone()),
        ("rootfs.gz", gzip(&layer_tar)),
        (
            "oci",
            OciLayout::new(&[good_lower, layer_tar.clone()]).to_tar(),
        ),
    ] {
        let err = import(&store, &archive).expect_err(label);
        check(&err);
        assert_eq!(
            snapshot(&store),
            before,
            "{label}: store changed after rejected import: {err}"
        );
    }
}

fn names_entry(err: &ImageError, entry: &str) {
    assert!(
        err.to_string().contains(entry),
        "error does not name `{entry}`: {err}"
    );
}

#[test]
fn parent_dir_component_is_rejected() {
    assert_rejected(
        Limits::default(),
        tar_of(&[Entry::File("../etc/x", b"x".to_vec())]),
        |e| {
            assert!(matches!(e, ImageError::UnsafePath { .. }), "{e}");
            names_entry(e, "../etc/x");
        },
    );
    assert_rejected(
        Limits::default(),
        tar_of(&[Entry::File("a/../../x", b"x".to_vec())]),
        |e| {
            assert!(matches!(e, ImageError::UnsafePath { .. }), "{e}");
        },
    );
}

#[test]
fn absolute_path_is_rejected() {
    assert_rejected(
        Limits::default(),
        tar_of(&[Entry::File("/abs", b"x".to_vec())]),
        |e| {
            assert!(matches!(e, ImageError::UnsafePath { .. }), "{e}");
            names_entry(e, "/abs");
        },
    );
}

#[test]
fn file_through_absolute_symlink_is_rejected() {
    // Same attack as `evil -> /etc` + `evil/passwd`, with a file name /etc does not
    // have, so a regression could not damage the host.
    let probe = Path::new("/etc/nimbus-image-escape-probe");
    assert_rejected(
        Limits::default(),
        tar_of(&[
            Entry::Symlink("evil", "/etc"),
            Entry::File("evil/nimbus-image-escape-probe", b"pwned".to_vec()),
        ]),
        |e| {
            assert!(
                matches!(e, ImageError::EscapingSymlink { symlink, .. } if symlink == "evil"),
                "{e}"
            );
            names_entry(e, "evil/nimbus-image-escape-probe");
        },
    );
    assert!(!probe.exists());
}

#[test]
fn file_through_symlink_to_outside_dir_is_rejected() {
    let outside = tempfile::tempdir().unwrap();
    let target: &'static str = Box::leak(
        outside
            .path()
            .to_str()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    );
    assert_rejected(
        Limits::default(),
        tar_of(&[
            Entry::Symlink("evil", target),
            Entry::File("evil/passwd", b"pwned".to_vec()),
            Entry::Dir("evil/sub/"),
        ]),
        |e| assert!(matches!(e, ImageError::EscapingSymlink { .. }), "{e}"),
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn file_through_relative_escaping_symlink_is_rejected() {
    assert_rejected(
        Limits::default(),
        tar_of(&[
            Entry::Symlink("up", "../../.."),
            Entry::File("up/x", b"x".to_vec()),
        ]),
        |e| {
            assert!(matches!(e, ImageError::EscapingSymlink { .. }), "{e}");
            names_entry(e, "up/x");
        },
    );
    assert_rejected(
        Limits::default(),
        tar_of(&[
            Entry::Dir("a/"),
            Entry::Symlink("a/up", "../../.."),
            Entry::Dir("a/up/etc/"),
        ]),
        |e| assert!(matches!(e, ImageError::EscapingSymlink { .. }), "{e}"),
    );
}

#[test]
fn hard_link_out_of_the_layer_is_rejected() {
    assert_rejected(
        Limits::default(),
        tar_of(&[Entry::HardLink("shadow", "../../etc/shadow")]),
        |e| {
            assert!(matches!(e, ImageError::BadHardLink { .. }), "{e}");
            names_entry(e, "../../etc/shadow");
        },
    );
    assert_rejected(
        Limits::default(),
        tar_of(&[Entry::HardLink("shadow", "/etc/shadow")]),
        |e| assert!(matches!(e, ImageError::BadHardLink { .. }), "{e}"),
    );
}

#[test]
fn hard_link_to_a_symlink_or_through_one_is_rejected() {
    assert_rejected(
        Limits::default(),
        tar_of(&[
            Entry::Symlink("s", "/etc/shadow"),
            Entry::HardLink("h", "s"),
        ]),
        |e| {
            assert!(
                matches!(e, ImageError::BadHardLink { reason, .. } if reason.contains("not a regular file")),
                "{e}"
            );
            names_entry(e, "h");
        },
    );
    assert_rejected(
        Limits::default(),
        tar_of(&[
            Entry::Symlink("evil", "/etc"),
            Entry::HardLink("h", "evil/shadow"),
        ]),
        |e| {
            assert!(
                matches!(e, ImageError::BadHardLink { reason, .. } if reason.contains("symlink")),
                "{e}"
            )
        },
    );
    assert_rejected(
        Limits::default(),
        tar_of(&[Entry::HardLink("h", "missing")]),
        |e| assert!(matches!(e, ImageError::BadHardLink { .. }), "{e}"),
    );
}

#[test]
fn device_nodes_are_rejected() {
    assert_rejected(Limits::default(), tar_of(&[Entry::Char("dev/mem")]), |e| {
        assert!(
            matches!(
                e,
                ImageError::DeviceNode {
                    kind: "character",
                    ..
                }
            ),
            "{e}"
        );
        names_entry(e, "dev/mem");
    });
    assert_rejected(Limits::default(), tar_of(&[Entry::Block("dev/sda")]), |e| {
        assert!(
            matches!(e, ImageError::DeviceNode { kind: "block", .. }),
            "{e}"
        )
    });
}

#[test]
fn setuid_file_is_rejected_when_not_allowed() {
    let limits = Limits {
        allow_setuid: false,
        ..Limits::default()
    };
    assert_rejected(
        limits.clone(),
        tar_of(&[Entry::FileMode("bin/su", b"su".to_vec(), 0o4755)]),
        |e| {
            assert!(matches!(e, ImageError::SetuidNotAllowed { .. }), "{e}");
            names_entry(e, "bin/su");
        },
    );
    assert_rejected(
        limits,
        tar_of(&[Entry::FileMode("bin/wall", b"w".to_vec(), 0o2755)]),
        |e| assert!(matches!(e, ImageError::SetuidNotAllowed { .. }), "{e}"),
    );
}

#[test]
fn gzip_bomb_stops_at_the_unpacked_limit() {
    let limits = Limits {
        max_unpacked_bytes: 8 << 20,
        ..Limits::default()
    };
    // 64 MiB of zeros compresses to well under 1 MiB.
    let bomb = tar_of(&[Entry::File("zeros", vec![0u8; 64 << 20])]);
    let (_tmp, store) = seeded_store(limits.clone());
    let before = snapshot(&store);
    let compressed = gzip(&bomb);
    assert!(compressed.len() < 1 << 20);
    let err = import(&store, &compressed).unwrap_err();
    assert!(
        matches!(err, ImageError::UnpackedTooLarge { limit, .. } if limit == 8 << 20),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);

    // Many small files add up the same way, across the layers of one image.
    let half = tar_of(&[Entry::File("a", vec![0u8; 5 << 20])]);
    let err = import(
        &store,
        &OciLayout::new(&[
            half.clone(),
            tar_of(&[Entry::File("b", vec![1u8; 5 << 20])]),
        ])
        .to_tar(),
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::UnpackedTooLarge { .. }), "{err}");
    assert_eq!(snapshot(&store), before);
}

#[test]
fn zeros_after_the_end_of_the_tar_are_bounded_too() {
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 100,
        ..Limits::default()
    };
    let mut data = tar_of(&[Entry::File("small", b"x".to_vec())]);
    data.extend(std::iter::repeat_n(0u8, 64 << 20));
    let (_tmp, store) = seeded_store(limits);
    let before = snapshot(&store);
    let err = import(&store, &gzip(&data)).unwrap_err();
    assert!(matches!(err, ImageError::UnpackedTooLarge { .. }), "{err}");
    assert_eq!(snapshot(&store), before);
}

#[test]
fn oversized_pax_header_is_rejected_without_buffering_it() {
    let mut builder = tar::Builder::new(Vec::new());
    let pax = vec![b'a'; 64 << 20];
    builder
        .append(
            &raw_header(
                "././@PaxHeader",
                EntryType::XHeader,
                pax.len() as u64,
                0o644,
                None,
            ),
            &pax[..],
        )
        .unwrap();
    append(&mut builder, &Entry::File("f", b"x".to_vec()));
    let archive = gzip(&builder.into_inner().unwrap());
    let (_tmp, store) = seeded_store(Limits::default());
    let before = snapshot(&store);
    let err = import(&store, &archive).unwrap_err();
    assert!(
        matches!(err, ImageError::MalformedTar { ref reason, .. } if reason.contains("PAX")),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);
}

#[test]
fn too_many_entries_are_rejected() {
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let entries: Vec<Entry> = (0..20)
        .map(|i| Entry::File(Box::leak(format!("f{i}").into_boxed_str()), Vec::new()))
        .collect();
    assert_rejected(limits, tar_of(&entries), |e| {
        assert!(
            matches!(e, ImageError::TooManyEntries { limit: 10, .. }),
            "{e}"
        )
    });
}

#[test]
fn archive_over_the_size_limit_is_rejected_while_reading() {
    let limits = Limits {
        max_archive_bytes: 1 << 20,
        ..Limits::default()
    };
    let (_tmp, store) = seeded_store(limits);
    let before = snapshot(&store);
    // An endless reader: the import must stop on its own.
    let endless = std::io::repeat(7);
    let err = store.import(endless, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, ImageError::ArchiveTooLarge { limit } if limit == 1 << 20),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);
}

#[test]
fn garbage_is_not_an_image() {
    let (_tmp, store) = seeded_store(Limits::default());
    let before = snapshot(&store);
    for garbage in [
        Vec::new(),
        b"hello world, not a tarball".to_vec(),
        vec![0u8; 4096],
    ] {
        let err = import(&store, &garbage).unwrap_err();
        assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
        assert!(err.to_string().contains("skopeo copy"), "{err}");
    }
    let err = import(&store, &gzip(b"not a tar inside")).unwrap_err();
    assert!(matches!(err, ImageError::MalformedTar { .. }), "{err}");
    assert_eq!(snapshot(&store), before);
}

// ---- OCI layout level ----

fn assert_oci_rejected(layout: &OciLayout, check: impl Fn(&ImageError)) {
    let (_tmp, store) = seeded_store(Limits::default());
    let before = snapshot(&store);
    let err = import(&store, &layout.to_tar()).unwrap_err();
    check(&err);
    assert_eq!(
        snapshot(&store),
        before,
        "store changed after rejected import: {err}"
    );
}

fn simple_layout() -> OciLayout {
    OciLayout::new(&[
        tar_of(&[Entry::File("one", b"1".to_vec())]),
        tar_of(&[Entry::File("two", b"2".to_vec())]),
    ])
}

#[test]
fn layer_digest_mismatch_names_expected_and_actual() {
    let mut layout = simple_layout();
    let name = OciLayout::blob_name(&layout.layer_digests[1]);
    // Same size, different bytes: only the digest check can notice.
    let mut tampered = layout
        .files
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
        .clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    layout.set(&name, tampered.clone());
    let expected = layout.layer_digests[1].clone();
    assert_oci_rejected(&layout, |e| {
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        names_entry(e, &expected);
        names_entry(e, &sha256(&tampered));
    });
}

#[test]
fn manifest_digest_mismatch_is_rejected() {
    let mut layout = simple_layout();
    let name = OciLayout::blob_name(&layout.manifest_digest);
    let manifest = layout
        .files
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
        .clone();
    let tampered = String::from_utf8(manifest)
        .unwrap()
        .replace("\"schemaVersion\":2", "\"schemaVersion\":3");
    layout.set(&name, tampered.into_bytes());
    let expected = layout.manifest_digest.clone();
    assert_oci_rejected(&layout, |e| {
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        names_entry(e, &expected);
    });
}

#[test]
fn descriptor_size_mismatch_is_rejected() {
    let mut layout = simple_layout();
    let name = OciLayout::blob_name(&layout.layer_digests[0]);
    let mut data = layout
        .files
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
        .clone();
    data.push(0);
    layout.set(&name, data);
    assert_oci_rejected(&layout, |e| {
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}")
    });
}

#[test]
fn missing_blob_is_rejected() {
    let mut layout = simple_layout();
    let missing = layout.layer_digests[1].clone();
    layout.remove(&OciLayout::blob_name(&missing));
    assert_oci_rejected(&layout, |e| {
        assert!(matches!(e, ImageError::MissingBlob { .. }), "{e}");
        names_entry(e, &missing);
    });
}

#[test]
fn malformed_json_names_the_file() {
    let mut layout = simple_layout();
    layout.set("index.json", b"{not json".to_vec());
    assert_oci_rejected(&layout, |e| {
        assert!(
            matches!(e, ImageError::MalformedJson { file, .. } if file == "index.json"),
            "{e}"
        )
    });

    let mut layout = simple_layout();
    layout.set("oci-layout", b"[]".to_vec());
    assert_oci_rejected(&layout, |e| {
        assert!(
            matches!(e, ImageError::MalformedJson { file, .. } if file == "oci-layout"),
            "{e}"
        )
    });

    // A manifest that is valid JSON but not a manifest, correctly addressed.
    let mut layout = simple_layout();
    let bogus =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &bogus)],
    }))
    .unwrap();
    let digest = sha256(&bogus);
    layout.add_blob(bogus);
    layout.set("index.json", index);
    assert_oci_rejected(&layout, |e| {
        assert!(matches!(e, ImageError::MalformedJson { .. }), "{e}");
        names_entry(e, &format!("manifest {digest}"));
    });
}

#[test]
fn unexpected_files_in_the_layout_are_rejected() {
    for name in ["extra.txt", "blobs/sha256/not-a-digest", "blobs/sha512/abc"] {
        let mut layout = simple_layout();
        layout.files.push((name.to_string(), b"x".to_vec()));
        assert_oci_rejected(&layout, |e| {
            assert!(
                matches!(e, ImageError::UnexpectedOciEntry { .. }),
                "{name}: {e}"
            );
            names_entry(e, name);
        });
    }
    for (entry, name) in [
        (Entry::File("../escape", b"x".to_vec()), "../escape"),
        (
            Entry::Symlink("blobs/sha256/link", "/etc/passwd"),
            "blobs/sha256/link",
        ),
    ] {
        let (_tmp, store) = seeded_store(Limits::default());
        let before = snapshot(&store);
        let err = import(&store, &simple_layout().to_tar_with(&[entry])).unwrap_err();
        assert!(
            matches!(err, ImageError::UnexpectedOciEntry { .. }),
            "{err}"
        );
        names_entry(&err, name);
        assert_eq!(snapshot(&store), before);
    }
}

#[test]
fn compressed_oci_layout_imports_and_a_broken_one_leaves_nothing() {
    let layout = simple_layout();
    let (_tmp, store) = seeded_store(Limits::default());
    let before = snapshot(&store);
    let mut broken = simple_layout();
    broken.remove(&OciLayout::blob_name(&broken.layer_digests[0]));
    let err = import(&store, &gzip(&broken.to_tar())).unwrap_err();
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
    assert_eq!(snapshot(&store), before);
    let image = import(&store, &zstd(&layout.to_tar())).unwrap();
    assert_eq!(image.format, nimbus_image::ImageFormat::Oci);
    assert_eq!(image.manifest_digest, layout.manifest_digest);
}

#[test]
fn file_replacing_a_symlink_is_written_inside_the_layer() {
    let outside = tempfile::tempdir().unwrap();
    let target: &'static str = Box::leak(
        outside
            .path()
            .join("victim")
            .to_str()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    );
    std::fs::write(target, b"original").unwrap();
    let (_tmp, store) = store(Limits::default());
    let image = import(
        &store,
        &tar_of(&[
            Entry::Symlink("x", target),
            Entry::File("x", b"replaced".to_vec()),
            Entry::Symlink("y", target),
            Entry::File("f", b"f".to_vec()),
            Entry::HardLink("y", "f"),
        ]),
    )
    .unwrap();
    let layer = &store.layer_dirs(&image).unwrap()[0];
    assert_eq!(std::fs::read(layer.join("x")).unwrap(), b"replaced");
    assert!(lstat(&layer.join("x")).file_type().is_file());
    assert!(lstat(&layer.join("y")).file_type().is_file());
    assert_eq!(std::fs::read(target).unwrap(), b"original");
}
