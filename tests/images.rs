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
