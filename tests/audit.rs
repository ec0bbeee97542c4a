//! The audit log as an operator uses it: `nimbus audit list` newest first
//! with a hint line for the next page, `--output json` with its `continue`,
//! `nimbus audit export` as JSON lines, retention by age, and a full data
//! disk answered with 507 naming the path (nothing half-written; the same
//! call works once space is freed).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, http, wait_until, Cloud};
use serde_json::Value;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The paths of the table rows `nimbus audit list` printed.
fn table_paths(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

#[test]
fn the_list_is_newest_first_and_pages_with_a_hint_and_the_export_is_json_lines() {
    let cloud = Cloud::start();
    for i in 0..5 {
        cloud.ok(&["project", "create", &format!("p{i}")]);
    }
    for i in 0..5 {
        cloud.ok(&[
            "project",
            "set",
            &format!("p{i}"),
            "--description",
            "audited",
        ]);
    }

    let out = cloud.nimbus(&["audit", "list", "--method", "PUT", "--limit", "3"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        table_paths(&stdout),
        ["/v1/projects/p4", "/v1/projects/p3", "/v1/projects/p2"],
        "newest first:\n{stdout}"
    );
    let hint = stderr_of(&out);
    let command = hint
        .lines()
        .find_map(|l| l.strip_prefix("more records: run "))
        .unwrap_or_else(|| panic!("no hint line for more records: {hint:?}"));
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(args[0], "nimbus", "{command}");
    assert!(
        command.contains("--method PUT --limit 3 --continue "),
        "{command}"
    );

    // The hint's command gives the rest, and no hint when nothing is left.
    let out = cloud.nimbus(&args[1..]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        table_paths(&stdout),
        ["/v1/projects/p1", "/v1/projects/p0"],
        "{stdout}"
    );
    assert!(
        !stderr_of(&out).contains("more records"),
        "{}",
        stderr_of(&out)
    );

    // JSON: the page with its `continue`, which fetches the next page.
    let page = cloud
        .json(&["audit", "list", "--method", "PUT", "--limit", "2"])
        .expect("audit list -o json");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    assert!(page.get("next").is_none(), "{page}");
    let token = page["continue"].as_str().expect("continue").to_string();
    let next = cloud
        .json(&[
            "audit",
            "list",
            "--method",
            "PUT",
            "--limit",
            "2",
            "--continue",
            &token,
        ])
        .expect("second page");
    assert_eq!(next["items"][0]["path"], "/v1/projects/p2", "{next}");

    // Export: one record per line, every line parses, oldest first.
    let out = cloud.nimbus(&["audit", "export", "--method", "PUT", "--actor", "admin"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect();
    let paths: Vec<&str> = records.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(
        paths,
        (0..5)
            .map(|i| format!("/v1/projects/p{i}"))
            .collect::<Vec<_>>(),
        "{text}"
    );
    let all = cloud.ok(&["audit", "export"]);
    assert!(all.lines().count() >= 10, "{all}");

    // Bad filters are refused naming the value.
    let out = cloud.nimbus(&["audit", "list", "--since", "last week"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("\"last week\""),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn records_older_than_the_maximum_age_vanish() {
    let cloud = Cloud::start_with(&["--audit-max-age", "3s"]);
    cloud.ok(&["project", "create", "short-lived"]);
    let was_recorded = |cloud: &Cloud| {
        cloud
            .ok(&["audit", "export", "--actor", "admin", "--method", "POST"])
            .lines()
            .any(|l| l.contains("\"path\":\"/v1/projects\""))
    };
    assert!(was_recorded(&cloud), "the create is audited first");
    wait_until(
        Duration::from_secs(30),
        "the old record to be pruned",
        || (!was_recorded(&cloud)).then_some(()),
    );
    // The project is still there; only its record aged out. A new call is
    // recorded as usual.
    cloud.ok(&["project", "get", "short-lived"]);
    cloud.ok(&["project", "create", "fresh"]);
    assert!(was_recorded(&cloud));
}

/// A tmpfs mounted for one test, unmounted when dropped (after the cloud
/// on it has stopped: declare it before the cloud).
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("nimbus-e2e-full-")
            .tempdir_in("/var/tmp")
            .expect("mount point")
            .keep();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0711"),
                "nimbus-e2e-full",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path: dir }
    }

    /// Write zeros until the filesystem is full; the filler's path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // The last bytes of a partial chunk.
        while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A tar (in the temp dir, off the small disk) of one file of `bytes`
/// random, so incompressible, bytes.
fn random_rootfs_tar(bytes: usize) -> PathBuf {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut data = vec![0u8; bytes];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut data).expect("read /dev/urandom");
    std::fs::write(dir.path().join("blob"), &data).expect("write blob");
    let tar = std::env::temp_dir().join(format!("nimbus-e2e-random-{}.tar", std::process::id()));
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cf")
        .arg(&tar)
        .arg("blob")
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tar
}

/// Shrinks the filler by `bytes`, leaving that much free space.
fn release(filler: &Path, bytes: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(filler)
        .expect("open filler");
    let len = f.metadata().expect("filler size").len();
    f.set_len(len.saturating_sub(bytes)).expect("shrink filler");
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*path.to_string_lossy()))
}

#[test]
fn a_full_data_disk_refuses_changes_with_507_naming_the_path() {
    let disk = SmallDisk::mount("16m");
    let disk_path = disk.path.clone();
    {
        // The cloud's data directory is the small disk itself.
        let tempdir = tempfile::TempDir::new_in(&disk.path).expect("data dir");
        let mut cloud = Cloud {
            dir: tempdir,
            port: free_port(),
            daemon: None,
            host: "e2e-full".into(),
            extra: vec!["--no-starter-image".into()],
        };
        cloud.spawn_daemon();
        wait_until(Duration::from_secs(60), "the API", || {
            cloud
                .nimbus(&["project", "list"])
                .status
                .success()
                .then_some(())
        });
        // The host registered first, so the only writes racing the full
        // disk are the test's own.
        wait_until(Duration::from_secs(30), "the host to register", || {
            cloud
                .nimbus(&["host", "get", "e2e-full"])
                .status
                .success()
                .then_some(())
        });
        let admin = cloud.admin_token();
        let create = br#"{"name":"after-full","spec":{}}"#;
        let filler = disk.fill();

        let (status, body) = http(&cloud, "POST", "/v1/projects", Some(&admin), create);
        assert_eq!(status, 507, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(v["error"]["code"], "insufficient_storage", "{body}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        let store = cloud.data_dir().join("store.db");
        assert!(
            message.contains(&*store.to_string_lossy()),
            "the message must name the path: {message}"
        );
        assert!(message.contains("Free space"), "and what to do: {message}");
        // The CLI shows the same message.
        let out = cloud.nimbus(&["project", "create", "cli-full"]);
        assert!(!out.status.success());
        assert!(
            stderr_of(&out).contains("no space left"),
            "{}",
            stderr_of(&out)
        );

        // Nothing was half-written: no project, no audit record.
        std::fs::remove_file(&filler).expect("remove filler");
        let (status, body) = http(&cloud, "GET", "/v1/projects/after-full", Some(&admin), b"");
        assert_eq!(status, 404, "{body}");
        let audit = cloud.ok(&[
            "audit",
            "export",
            "--method",
            "POST",
            "--path-prefix",
            "/v1/projects",
        ]);
        assert!(
            !audit.contains("in_progress"),
            "a refused call leaves no record behind: {audit}"
        );

        // With space again, the same call works and is audited.
        let (status, body) = http(&cloud, "POST", "/v1/projects", Some(&admin), create);
        assert_eq!(status, 201, "{body}");
        let page = cloud
            .json(&[
                "audit",
                "list",
                "--method",
                "POST",
                "--path-prefix",
                "/v1/projects",
                "--limit",
                "1",
            ])
            .expect("audit list");
        assert_eq!(page["items"][0]["status"], 201, "{page}");

        // An image too large for what is left: the store still has room
        // for its records, the image store runs out. 507 names the images
        // directory, and nothing of the image is kept.
        let archive_copy = random_rootfs_tar(6 << 20);
        let filler = disk.fill();
        release(&filler, 2 << 20);
        let out = cloud.nimbus(&[
            "image",
            "import",
            archive_copy.to_str().unwrap(),
            "--name",
            "too-big",
        ]);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "the import cannot fit: {err}");
        let images = cloud.data_dir().join("images");
        assert!(
            err.contains("no space left") && err.contains(&*images.to_string_lossy()),
            "the error names the full disk's images directory: {err}"
        );
        std::fs::remove_file(&filler).expect("remove filler");
        let _ = std::fs::remove_file(&archive_copy);
        let (status, body) = http(
            &cloud,
            "GET",
            "/v1/projects/default/images/too-big",
            Some(&admin),
            b"",
        );
        assert_eq!(status, 404, "no image was recorded: {body}");
        drop(cloud);
    }
    drop(disk);
    assert!(
        !is_mounted(&disk_path),
        "the test's tmpfs must be unmounted"
    );
    assert!(!disk_path.exists(), "and its mount point removed");
}
