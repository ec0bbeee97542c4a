//! No tenant can fill the host's disk: a container's writable layer is its
//! own filesystem of `--disk` bytes. A container that writes past it gets
//! "No space left on device", while another project's container keeps
//! writing and the API keeps accepting calls; removal leaves no loop
//! device, mount or image behind. An instance's log stays under its cap
//! (`nimbus up --log-max`); a project's disk quota (`nimbus quota set
//! --disk`) refuses what it cannot hold; no host takes a disk it lacks.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, http, mounts_under, wait_until, Cloud};

const T: Duration = Duration::from_secs(60);
const LIMIT_BYTES: u64 = 64 << 20;

/// Backing files of the host's loop devices that lie under `dir`.
fn loop_devices_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(file) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            let file = PathBuf::from(file.trim().trim_end_matches(" (deleted)"));
            if file.starts_with(dir) {
                found.push((name, file));
            }
        }
    }
    found
}

fn instance_dir(cloud: &Cloud, name: &str, project: &str) -> PathBuf {
    let v = cloud
        .json(&["instance", "get", name, "--project", project])
        .unwrap_or_else(|e| panic!("instance {name}: {e}"));
    let id = v["metadata"]["id"].as_str().expect("instance id");
    cloud.data_dir().join("instances").join(id)
}

fn logs_of(cloud: &Cloud, name: &str, project: &str) -> String {
    cloud.ok(&["instance", "logs", name, "--project", project])
}

/// Project `other`, with the starter image as `busybox`.
fn another_project_with_busybox(cloud: &Cloud) {
    cloud.ok(&["project", "create", "other"]);
    cloud.ok(&[
        "image",
        "import",
        "--project",
        "other",
        "--name",
        "busybox",
        &cloud.starter_tar(),
    ]);
}

/// `create` and `delete` still work: the control plane was not starved.
fn api_accepts_a_create_and_a_delete(cloud: &Cloud, name: &str) {
    cloud.ok(&[
        "instance",
        "run",
        name,
        "--project",
        "other",
        "--image",
        "busybox",
        "--",
        "true",
    ]);
    cloud.ok(&["instance", "rm", name, "--project", "other"]);
}

#[test]
fn a_container_that_writes_past_its_disk_gets_enospc_and_nobody_else_notices() {
    if !common::is_root("loop-mounted container disks") {
        return;
    }
    let cloud = Cloud::start();
    another_project_with_busybox(&cloud);
    // Another tenant, writing 4 MiB over and over.
    cloud.ok(&[
        "instance",
        "run",
        "writer",
        "--project",
        "other",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "while true; do dd if=/dev/zero of=/tmp/f bs=1M count=4 2>/dev/null && echo WROTE; sleep 0.1; done",
    ]);
    wait_until(T, "the writer to run", || {
        let v = cloud
            .json(&["instance", "get", "writer", "--project", "other"])
            .ok()?;
        (v["status"]["phase"] == "running").then_some(())
    });

    let started = Instant::now();
    cloud.ok(&[
        "instance",
        "run",
        "hog",
        "--image",
        "busybox",
        "--disk",
        "64MiB",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=600; echo dd-exit=$?; sleep 600",
    ]);
    cloud.wait_phase("hog", &["running"], T);
    eprintln!(
        "hog with a 64MiB disk: create -> running in {} ms",
        started.elapsed().as_millis()
    );
    let shown = cloud.ok(&["instance", "get", "hog"]);
    assert!(shown.contains("disk 64MiB"), "{shown}");
    let hog = instance_dir(&cloud, "hog", "default");

    let out = wait_until(T, "the hog's dd to stop", || {
        let l = cloud.logs("hog");
        l.contains("dd-exit=").then_some(l)
    });
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains("dd-exit=1"), "{out}");
    // The host holds no more of it than its size: the image is sparse and
    // the filesystem inside stops the writer.
    let image = std::fs::metadata(hog.join("disk.img")).expect("the hog's disk image");
    let on_host = image.blocks() * 512;
    assert!(
        on_host <= LIMIT_BYTES,
        "the hog's layer takes {on_host} bytes of the host's disk, more than its {LIMIT_BYTES}"
    );
    assert_eq!(
        loop_devices_under(&hog).len(),
        1,
        "one loop device per layer"
    );

    // While the hog's disk is full: the other tenant keeps writing and the
    // API keeps working.
    let wrote = |cloud: &Cloud| logs_of(cloud, "writer", "other").matches("WROTE").count();
    let before = wrote(&cloud);
    wait_until(T, "the other tenant to keep writing", || {
        (wrote(&cloud) >= before + 3).then_some(())
    });
    assert!(
        !logs_of(&cloud, "writer", "other").contains("No space"),
        "the other tenant noticed"
    );
    api_accepts_a_create_and_a_delete(&cloud, "during");

    cloud.ok(&["instance", "rm", "hog", "--force"]);
    wait_until(T, "the hog to be gone", || (!hog.exists()).then_some(()));
    assert_eq!(mounts_under(&hog), Vec::<String>::new());
    assert_eq!(loop_devices_under(&hog), vec![]);
    api_accepts_a_create_and_a_delete(&cloud, "after");
    let before = wrote(&cloud);
    wait_until(T, "the other tenant to write after the hog is gone", || {
        (wrote(&cloud) > before).then_some(())
    });
    cloud.ok(&["instance", "rm", "writer", "--project", "other", "--force"]);
    cloud.remove_everything();
    assert_eq!(loop_devices_under(cloud.data_dir()), vec![]);
}

#[test]
fn a_dead_shim_or_a_restarted_daemon_leaves_no_loop_device() {
    if !common::is_root("loop-mounted container disks") {
        return;
    }
    let mut cloud = Cloud::start();
    cloud.ok(&[
        "instance",
        "run",
        "keep",
        "--image",
        "busybox",
        "--disk",
        "32MiB",
        "--",
        "sh",
        "-c",
        "echo kept > /kept; sleep 600",
    ]);
    cloud.wait_phase("keep", &["running"], T);
    let dir = instance_dir(&cloud, "keep", "default");
    assert_eq!(loop_devices_under(&dir).len(), 1);

    // The daemon (and its agent) restarts: the container and its layer
    // stay as they are.
    cloud.kill_daemon();
    cloud.spawn_daemon();
    cloud.wait_ready();
    cloud.wait_phase("keep", &["running"], T);
    assert_eq!(loop_devices_under(&dir).len(), 1, "still one loop device");

    // The shim dies: the agent's clean-up unmounts the layer, which frees
    // its loop device.
    let shims = common::processes_mentioning(&dir.to_string_lossy());
    assert!(!shims.is_empty(), "the shim of {}", dir.display());
    for pid in shims {
        // SAFETY: killing the shim of this test's own instance.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    cloud.ok(&["instance", "rm", "keep", "--force"]);
    wait_until(T, "the instance dir to be gone", || {
        (!dir.exists()).then_some(())
    });
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert_eq!(loop_devices_under(cloud.data_dir()), vec![]);
    cloud.remove_everything();
}

/// A tmpfs of `size` for one test, unmounted when dropped (declare it
/// before the cloud on it).
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let path = tempfile::Builder::new()
            .prefix("nimbus-e2e-reserve-")
            .tempdir_in("/var/tmp")
            .expect("mount point")
            .keep();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0711")])
            .arg("nimbus-e2e-reserve")
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }

    /// Writes zeros until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0u8; 64 << 10];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
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

#[test]
fn on_a_full_data_disk_a_deletion_still_commits_on_the_stores_reserve() {
    if !common::is_root("a tmpfs as the data disk") {
        return;
    }
    let disk = SmallDisk::mount("24m");
    {
        let mut cloud = Cloud {
            dir: tempfile::TempDir::new_in(&disk.path).expect("data dir"),
            port: free_port(),
            daemon: None,
            host: "e2e-reserve".into(),
            extra: vec!["--no-starter-image".into()],
        };
        cloud.spawn_daemon();
        wait_until(T, "the host to register", || {
            cloud
                .nimbus(&["host", "get", "e2e-reserve"])
                .status
                .success()
                .then_some(())
        });
        let reserve = cloud.data_dir().join("store.db.reserve");
        assert!(reserve.exists(), "the store keeps a reserve beside it");
        cloud.ok(&["project", "create", "doomed"]);
        let admin = cloud.admin_token();
        let filler = disk.fill();

        // A call that adds is refused, and says what to do.
        let (status, body) = http(
            &cloud,
            "POST",
            "/v1/projects",
            Some(&admin),
            br#"{"name":"more","spec":{}}"#,
        );
        assert_eq!(status, 507, "{body}");
        assert!(body.contains("deletions"), "{body}");
        // A deletion goes through, on the reserve.
        let (status, body) = http(&cloud, "DELETE", "/v1/projects/doomed", Some(&admin), b"");
        assert!((200..300).contains(&status), "{status} {body}");
        assert!(!reserve.exists(), "the reserve was used");
        let (status, body) = http(&cloud, "GET", "/v1/projects/doomed", Some(&admin), b"");
        assert_eq!(status, 404, "{body}");
        std::fs::remove_file(&filler).expect("remove filler");
        cloud.kill_daemon();
    }
}

/// The number in the last `line N ` the text holds.
fn last_line_number(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|l| l.split("line ").nth(1)?.split(' ').next()?.parse().ok())
}

const LOG_CAP_BYTES: u64 = 192 << 10;

#[test]
fn logs_stay_under_their_cap_and_disk_quotas_and_free_disk_are_enforced() {
    if !common::is_root("containers writing logs and sized disks") {
        return;
    }
    let cloud = Cloud::start_with(&["--log-max", "192KiB"]);
    another_project_with_busybox(&cloud);
    cloud.ok(&["user", "create", "mia"]);
    cloud.ok(&["role", "grant", "mia", "member", "--project", "default"]);
    let mia = cloud
        .json(&["token", "create", "--user", "mia"])
        .expect("token create")["secret"]
        .as_str()
        .expect("secret")
        .to_string();

    // A chatty container: batches of 200 lines of ~100 bytes, far more
    // than its 192KiB cap over the test.
    cloud.ok(&[
        "instance",
        "run",
        "chatty",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "i=0; while true; do for j in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do for k in 1 2 3 4 5 6 7 8 9 10; do i=$((i+1)); echo \"line $i ................................................................................\"; done; done; sleep 0.05; done",
    ]);
    cloud.wait_phase("chatty", &["running"], T);
    let shown = cloud.instance("chatty");
    assert_eq!(shown["spec"]["log_max_bytes"], LOG_CAP_BYTES, "{shown}");
    let dir = instance_dir(&cloud, "chatty", "default");
    // Five times the cap printed: the first lines are long gone.
    let printed_past = 5 * LOG_CAP_BYTES / 130;
    let mut largest = 0;
    wait_until(T, "chatty to print five times its log cap", || {
        largest = largest.max(common::log_bytes_on_disk(&dir));
        let newest = last_line_number(&cloud.logs("chatty"))?;
        (newest > printed_past).then_some(())
    });
    largest = largest.max(common::log_bytes_on_disk(&dir));
    assert!(
        largest <= LOG_CAP_BYTES,
        "chatty's logs took {largest} bytes of the host's disk, more than its {LOG_CAP_BYTES}"
    );
    cloud.ok(&["instance", "stop", "chatty"]);
    let logs = cloud.logs("chatty");
    assert!(!logs.contains("line 1 "), "the oldest lines were kept");
    let live = std::fs::read_to_string(dir.join("console.log")).expect("console.log");
    assert_eq!(
        last_line_number(&logs),
        last_line_number(&live),
        "`instance logs` does not end with the newest line written"
    );

    // A disk quota: a member asking for more gets a 409 that names the
    // quota and the command to raise it, and nothing is created.
    cloud.ok(&["quota", "set", "--disk", "1GiB"]);
    let body = br#"{"name":"huge","spec":{"image":"busybox","args":["true"],"resources":{"disk_bytes":2147483648}}}"#;
    let (status, resp) = http(
        &cloud,
        "POST",
        "/v1/projects/default/instances",
        Some(&mia),
        body,
    );
    assert_eq!(status, 409, "{resp}");
    assert!(resp.contains("may use 1GiB of host disk"), "{resp}");
    assert!(resp.contains("nimbus quota set --disk"), "{resp}");
    assert!(
        cloud.json(&["instance", "get", "huge"]).is_err(),
        "huge was created"
    );
    // Without --disk a container counts the 10GiB it would be given.
    let out = cloud.nimbus(&[
        "instance", "run", "nosize", "--image", "busybox", "--", "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nosize was admitted");
    assert!(err.contains("this one needs 10.0GiB"), "{err}");
    cloud.ok(&[
        "instance", "run", "fits", "--image", "busybox", "--disk", "64MiB", "--", "true",
    ]);
    let q = cloud.json(&["quota", "get"]).expect("quota get");
    assert_eq!(
        q["used"]["disk_bytes"],
        (64 << 20) + 2 * LOG_CAP_BYTES,
        "{q}"
    );
    // Other projects and the API are untouched.
    api_accepts_a_create_and_a_delete(&cloud, "meanwhile");
    cloud.ok(&["quota", "set", "--disk", "none"]);

    // No host can hold 10TiB: the instance stays pending and says why.
    cloud.ok(&[
        "instance",
        "run",
        "vast",
        "--image",
        "busybox",
        "--disk",
        "10TiB",
        "--no-wait",
        "--",
        "true",
    ]);
    let why = wait_until(T, "vast to be judged unschedulable", || {
        let v = cloud.instance("vast");
        assert!(v["status"]["host"].is_null(), "vast was placed: {v}");
        v["status"]["reason"]
            .as_str()
            .filter(|r| r.starts_with("unschedulable:"))
            .map(str::to_string)
    });
    assert!(why.contains("1 host lacks 10.0TiB of free disk"), "{why}");
    cloud.remove_everything();
}
