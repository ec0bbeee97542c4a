//! Mounts a real overlayfs from unpacked layers: the whiteout and opaque directory made
//! from OCI markers must hide the lower layer's files. Needs root.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nimbus_image::Limits;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Unmounts on drop, so a failing assertion never leaves the mount behind.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.0, MntFlags::MNT_DETACH) {
            eprintln!("could not unmount {}: {e}", self.0.display());
        }
    }
}

fn mount_overlay(lower_dirs_lowest_first: &[PathBuf], target: &Path) -> MountGuard {
    let lowerdir = lower_dirs_lowest_first
        .iter()
        .rev()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .unwrap_or_else(|e| {
        panic!("mounting overlayfs (lowerdir={lowerdir}) failed: {e}; this test needs root")
    });
    MountGuard(target.to_path_buf())
}

#[test]
fn overlay_of_unpacked_layers_honours_whiteouts_and_opaque_dirs() {
    let lower = tar_of(&[
        Entry::Dir("etc/"),
        Entry::File("etc/keep", b"kept".to_vec()),
        Entry::File("etc/remove-me", b"gone".to_vec()),
        Entry::Dir("data/"),
        Entry::File("data/old", b"old".to_vec()),
        Entry::Symlink("bin", "/usr/bin"),
    ]);
    let upper = tar_of(&[
        Entry::Dir("etc/"),
        Entry::File("etc/.wh.remove-me", Vec::new()),
        Entry::File("etc/added", b"added".to_vec()),
        Entry::Dir("data/"),
        Entry::File("data/.wh..wh..opq", Vec::new()),
        Entry::File("data/new", b"new".to_vec()),
    ]);
    let (tmp, store) = store(Limits::default());
    let image = import(&store, &OciLayout::new(&[lower, upper]).to_tar()).unwrap();
    let layers = store.layer_dirs(&image).unwrap();
    let merged = tmp.path().join("merged");
    std::fs::create_dir(&merged).unwrap();

    let _mounted = mount_overlay(&layers, &merged);
    assert_eq!(std::fs::read(merged.join("etc/keep")).unwrap(), b"kept");
    assert_eq!(std::fs::read(merged.join("etc/added")).unwrap(), b"added");
    assert!(
        !merged.join("etc/remove-me").exists(),
        "whiteout hides the lower file"
    );
    assert!(std::fs::symlink_metadata(merged.join("etc/remove-me")).is_err());
    assert_eq!(std::fs::read(merged.join("data/new")).unwrap(), b"new");
    assert!(
        !merged.join("data/old").exists(),
        "opaque dir hides lower contents"
    );
    let mut listed: Vec<_> = std::fs::read_dir(merged.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["added", "keep"]);
    assert_eq!(
        std::fs::read_link(merged.join("bin")).unwrap(),
        Path::new("/usr/bin")
    );
}

/// What a merged view answers for `path`: the file's bytes, or None.
fn merged_read(view: &nimbus_image::MergedView, path: &str) -> Option<Vec<u8>> {
    view.read_file(path, 1 << 20).unwrap()
}

// The package scanner reads images through `MergedView` without a mount: it must
// answer exactly as the kernel's overlayfs does for the same imported layers.
#[test]
fn the_merged_view_reads_what_overlayfs_shows() {
    let base = tar_of(&[
        Entry::Dir("etc/"),
        Entry::Dir("usr/"),
        Entry::Dir("usr/lib/"),
        Entry::File("usr/lib/os-release", b"ID=debian\nVERSION_ID=12\n".to_vec()),
        Entry::Symlink("etc/os-release", "../usr/lib/os-release"),
        Entry::Dir("var/"),
        Entry::Dir("var/lib/"),
        Entry::Dir("var/lib/dpkg/"),
        Entry::File("var/lib/dpkg/status", b"Package: old\n".to_vec()),
        Entry::Dir("var/lib/dpkg/status.d/"),
        Entry::File("var/lib/dpkg/status.d/base", b"Package: base\n".to_vec()),
        Entry::File("var/lib/dpkg/status.d/gone", b"Package: gone\n".to_vec()),
        Entry::Dir("lib/"),
        Entry::Dir("lib/apk/"),
        Entry::Dir("lib/apk/db/"),
        Entry::File("lib/apk/db/installed", b"P:old\n".to_vec()),
    ]);
    let update = tar_of(&[
        Entry::Dir("var/"),
        Entry::Dir("var/lib/"),
        Entry::Dir("var/lib/dpkg/"),
        Entry::File("var/lib/dpkg/status", b"Package: new\n".to_vec()),
        Entry::Dir("var/lib/dpkg/status.d/"),
        Entry::File("var/lib/dpkg/status.d/.wh.gone", Vec::new()),
        Entry::File("var/lib/dpkg/status.d/added", b"Package: added\n".to_vec()),
        Entry::Dir("lib/"),
        Entry::Dir("lib/apk/"),
        Entry::File("lib/apk/.wh..wh..opq", Vec::new()),
    ]);
    let (tmp, store) = store(Limits::default());
    let image = import(&store, &OciLayout::new(&[base, update]).to_tar()).unwrap();
    let view = store.merged_view(&image).unwrap();
    let merged = tmp.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let _mounted = mount_overlay(&store.layer_dirs(&image).unwrap(), &merged);

    for path in [
        "var/lib/dpkg/status",
        "var/lib/dpkg/status.d/base",
        "var/lib/dpkg/status.d/gone",
        "var/lib/dpkg/status.d/added",
        "lib/apk/db/installed",
        "usr/lib/os-release",
    ] {
        let kernel = std::fs::read(merged.join(path)).ok();
        assert_eq!(merged_read(&view, &format!("/{path}")), kernel, "{path}");
    }
    // The image's own symlink resolves inside the image, as it would in a container.
    assert_eq!(
        merged_read(&view, "/etc/os-release").as_deref(),
        Some(&b"ID=debian\nVERSION_ID=12\n"[..])
    );
    let mut kernel_listing: Vec<String> = std::fs::read_dir(merged.join("var/lib/dpkg/status.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kernel_listing.sort();
    assert_eq!(
        view.list_dir("/var/lib/dpkg/status.d", 100).unwrap(),
        kernel_listing
    );
    assert_eq!(kernel_listing, ["added", "base"]);
}
