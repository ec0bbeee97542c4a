//! Block volumes end to end, as root: create, list, get, resize, snapshot,
//! clone from a snapshot and delete through the CLI, with the qcow2 files
//! checked on the host (private, sized, holding the data); quotas refuse
//! beyond their limits; another project's token neither sees nor touches
//! a project's volumes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::Cloud;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn volume(cloud: &Cloud, project: &str, name: &str) -> Value {
    cloud
        .json(&["volume", "get", name, "--project", project])
        .unwrap_or_else(|e| panic!("volume {name}: {e}"))
}

fn location(v: &Value) -> PathBuf {
    PathBuf::from(v["status"]["location"].as_str().expect("a location"))
}

fn qemu_io(file: &PathBuf, command: &str) -> Output {
    Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(file)
        .output()
        .expect("run qemu-io")
}

fn fails_with(out: &Output, text: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure mentioning {text:?}"
    );
    assert!(stderr.contains(text), "expected {text:?} in: {stderr}");
}

fn as_token(cloud: &Cloud, token: &str, args: &[&str]) -> Output {
    cloud
        .command()
        .env("NIMBUS_TOKEN", token)
        .args(args)
        .output()
        .expect("run nimbus")
}

/// Each command, run with `token`, fails with "not found".
fn all_not_found(cloud: &Cloud, token: &str, commands: &[&[&str]]) {
    for args in commands {
        let out = as_token(cloud, token, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "ran {args:?} with another project's token"
        );
        assert!(stderr.contains("not found"), "{args:?}: {stderr}");
    }
}

/// A token of user bob, a member of a new project "beta" only.
fn member_of_beta(cloud: &Cloud) -> String {
    cloud.ok(&["project", "create", "beta"]);
    cloud.ok(&["user", "create", "bob"]);
    cloud.ok(&["role", "grant", "bob", "member", "--project", "beta"]);
    cloud
        .json(&["token", "create", "--user", "bob"])
        .expect("token")["secret"]
        .as_str()
        .expect("secret")
        .to_string()
}

#[test]
fn volumes_snapshots_clones_and_quotas() {
    if !common::is_root("volumes") {
        return;
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        common::skip("qemu-img is not installed");
        return;
    }
    let cloud = Cloud::start();

    // Create: the agent makes a private sparse qcow2 on the volume's host.
    cloud.ok(&["volume", "create", "data", "--size", "32MiB"]);
    let data = volume(&cloud, "default", "data");
    assert_eq!(data["status"]["phase"], "available", "{data}");
    assert_eq!(data["spec"]["host"], "e2e-host", "{data}");
    assert_eq!(data["status"]["size_bytes"], 32 * MIB);
    let file = location(&data);
    assert!(
        file.starts_with(cloud.data_dir().join("volumes")),
        "{}",
        file.display()
    );
    let meta = std::fs::metadata(&file).expect("the volume file exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(cloud.data_dir().join("volumes"))
        .expect("volumes dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert!(
        meta.len() < 4 * MIB,
        "the file is sparse: {} bytes",
        meta.len()
    );
    let list = cloud.ok(&["volume", "list"]);
    assert!(
        list.contains("data") && list.contains("32MiB") && list.contains("available"),
        "{list}"
    );

    // Data written into the volume (as a VM would) is kept by a snapshot.
    let wrote = qemu_io(&file, "write -P 0xab 0 1M");
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    cloud.ok(&["volume", "snapshot", "data", "--name", "before-upgrade"]);
    let snaps = cloud.ok(&["volume", "snapshot", "list", "data"]);
    assert!(
        snaps.contains("before-upgrade") && snaps.contains("yes") && snaps.contains("detached"),
        "{snaps}"
    );
    let wrote = qemu_io(&file, "write -P 0xcd 0 1M");
    assert!(wrote.status.success());

    // Resize grows only.
    fails_with(
        &cloud.nimbus(&["volume", "resize", "data", "--size", "16MiB"]),
        "a volume only grows",
    );
    cloud.ok(&["volume", "resize", "data", "--size", "64MiB"]);
    let data = volume(&cloud, "default", "data");
    assert_eq!(data["status"]["size_bytes"], 64 * MIB, "{data}");

    // A clone holds the data of the snapshot, not the data written after.
    cloud.ok(&[
        "volume",
        "create",
        "data2",
        "--from-snapshot",
        "data@before-upgrade",
    ]);
    let data2 = volume(&cloud, "default", "data2");
    assert_eq!(data2["status"]["phase"], "available", "{data2}");
    assert_eq!(data2["spec"]["size_bytes"], 32 * MIB);
    let read = qemu_io(&location(&data2), "read -P 0xab 0 1M");
    assert!(
        read.status.success() && !String::from_utf8_lossy(&read.stdout).contains("mismatch"),
        "{}{}",
        String::from_utf8_lossy(&read.stdout),
        String::from_utf8_lossy(&read.stderr)
    );
    fails_with(
        &cloud.nimbus(&["volume", "create", "data3", "--from-snapshot", "data@nope"]),
        "has no snapshot \"nope\"",
    );

    // Quotas: volumes and bytes (snapshots count: 64 + 32 + 32 MiB used).
    cloud.ok(&["quota", "set", "--volumes", "2"]);
    fails_with(
        &cloud.nimbus(&["volume", "create", "data3", "--size", "16MiB"]),
        "may hold 2 volume(s) and holds 2",
    );
    cloud.ok(&[
        "quota",
        "set",
        "--volumes",
        "none",
        "--volume-bytes",
        "160MiB",
    ]);
    let q = cloud.json(&["quota", "get"]).expect("quota get");
    assert_eq!(q["used"]["volume_bytes"], 128 * MIB, "{q}");
    fails_with(
        &cloud.nimbus(&["volume", "create", "data3", "--size", "64MiB"]),
        "may hold 160MiB of volumes and snapshots; it holds 128MiB",
    );
    fails_with(
        &cloud.nimbus(&["volume", "snapshot", "data", "--name", "again"]),
        "this needs 64MiB more",
    );
    cloud.ok(&["volume", "create", "small", "--size", "32MiB"]);

    // Another project's member neither sees nor touches these volumes,
    // and names are per project.
    let bob = member_of_beta(&cloud);
    for args in [
        vec!["volume", "get", "data", "--project", "default"],
        vec!["volume", "list", "--project", "default"],
        vec!["volume", "rm", "data", "--project", "default"],
        vec![
            "volume",
            "resize",
            "data",
            "--size",
            "1GiB",
            "--project",
            "default",
        ],
        vec![
            "volume",
            "snapshot",
            "data",
            "--name",
            "x",
            "--project",
            "default",
        ],
        vec![
            "volume",
            "create",
            "mine",
            "--from-snapshot",
            "data@before-upgrade",
            "--project",
            "default",
        ],
    ] {
        all_not_found(&cloud, &bob, &[&args]);
    }
    let out = as_token(
        &cloud,
        &bob,
        &[
            "volume",
            "create",
            "data",
            "--size",
            "16MiB",
            "--project",
            "beta",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let beta = as_token(
        &cloud,
        &bob,
        &["volume", "list", "--project", "beta", "-o", "json"],
    );
    let beta: Value = serde_json::from_slice(&beta.stdout).expect("json");
    assert_eq!(beta["items"].as_array().map(Vec::len), Some(1), "{beta}");
    assert_ne!(
        location(&beta["items"][0]),
        location(&volume(&cloud, "default", "data"))
    );
    assert!(volume(&cloud, "default", "data")["spec"]["snapshots"][0]["name"] == "before-upgrade");

    // Delete: snapshots, then volumes; their files go.
    cloud.ok(&["volume", "snapshot", "rm", "data", "before-upgrade"]);
    let files: Vec<PathBuf> = ["data", "data2", "small"]
        .iter()
        .map(|n| location(&volume(&cloud, "default", n)))
        .collect();
    for n in ["data", "data2", "small"] {
        cloud.ok(&["volume", "rm", n]);
    }
    // A project holding a volume is not deleted; --force removes it.
    let beta_file = location(&volume(&cloud, "beta", "data"));
    fails_with(
        &cloud.nimbus(&["project", "rm", "beta"]),
        "1 volumes (data)",
    );
    cloud.ok(&["project", "rm", "beta", "--force"]);
    assert!(
        !beta_file.exists(),
        "{} is left behind",
        beta_file.display()
    );
    for f in files {
        assert!(!f.exists(), "{} is left behind", f.display());
    }
    let left: Vec<_> = std::fs::read_dir(cloud.data_dir().join("volumes"))
        .expect("volumes dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the volumes directory: {left:?}");
    let list = cloud.json(&["volume", "list"]).expect("list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
}

/// A volume holding data, killed mid-life with the daemon (`kill -9`),
/// comes back available with its data and snapshots: the restarted agent
/// converges to what exists instead of making the volume again.
#[test]
fn a_volume_full_of_data_survives_kill_9_of_the_daemon() {
    if !common::is_root("volumes") {
        return;
    }
    if Command::new("qemu-io").arg("--version").output().is_err() {
        common::skip("qemu-io is not installed");
        return;
    }
    let mut cloud = Cloud::start();
    cloud.ok(&["volume", "create", "data", "--size", "64MiB"]);
    let file = location(&volume(&cloud, "default", "data"));
    let wrote = qemu_io(&file, "write -P 0x5a 0 60M");
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    cloud.ok(&["volume", "snapshot", "data", "--name", "full"]);
    let before = volume(&cloud, "default", "data");

    cloud.kill_daemon();
    cloud.spawn_daemon();
    cloud.wait_ready();

    let after = common::wait_until(
        std::time::Duration::from_secs(60),
        "the volume to be reported available again",
        || {
            let v = cloud.json(&["volume", "get", "data"]).ok()?;
            (v["status"]["phase"] == "available").then_some(v)
        },
    );
    assert_eq!(after["metadata"]["id"], before["metadata"]["id"]);
    assert_eq!(after["status"]["snapshots"][0], "full", "{after}");
    assert_eq!(location(&after), file);
    let read = qemu_io(&file, "read -P 0x5a 0 60M");
    let out = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success() && !out.contains("mismatch"), "{out}");
    cloud.ok(&["volume", "rm", "data"]);
    assert!(!file.exists(), "{} is left behind", file.display());
}

/// Whether the host can mount a qcow2 volume for a container.
fn can_mount_volumes() -> bool {
    if !common::is_root("volumes") {
        return false;
    }
    let qsd = Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_ok();
    if !qsd || !std::path::Path::new("/dev/fuse").exists() {
        common::skip("needs qemu-storage-daemon and /dev/fuse");
        return false;
    }
    true
}

fn run_with(cloud: &Cloud, name: &str, extra: &[&str], script: &str) -> Output {
    let mut args = vec!["instance", "run", name, "--image", "busybox"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    cloud.nimbus(&args)
}

/// Start instance `name`; a refused start fails the test.
fn run_ok(cloud: &Cloud, name: &str, extra: &[&str], script: &str) {
    let out = run_with(cloud, name, extra, script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run instance `name` to its end, check it exited 0 and give its output.
fn run_to_exit(cloud: &Cloud, name: &str, extra: &[&str], script: &str) -> String {
    run_ok(cloud, name, extra, script);
    let v = cloud.wait_phase(
        name,
        &["exited", "failed"],
        std::time::Duration::from_secs(60),
    );
    let logs = cloud.logs(name);
    assert_eq!(v["status"]["exit_code"], 0, "{v}\n{logs}");
    logs
}

fn wait_for_log(cloud: &Cloud, name: &str, text: &str) -> String {
    common::wait_until(
        std::time::Duration::from_secs(60),
        &format!("{text:?} in the output of {name}"),
        || {
            let logs = cloud.logs(name);
            logs.contains(text).then_some(logs)
        },
    )
}

/// Once a cloud's instances are gone: no volume mount, loop device or
/// qemu-storage-daemon of its data directory is left.
fn wait_no_volume_leftovers(cloud: &Cloud) {
    let data_dir = cloud.data_dir().to_string_lossy().to_string();
    common::wait_until(
        std::time::Duration::from_secs(30),
        "no volume mount, loop device or qemu-storage-daemon left",
        || {
            let mounts = common::mounts_under(cloud.data_dir());
            let loops = Command::new("losetup").arg("-a").output().ok()?;
            let loops = String::from_utf8_lossy(&loops.stdout).to_string();
            let daemons: Vec<i32> = common::processes_mentioning(&data_dir)
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.contains("qemu-storage"))
                })
                .collect();
            (mounts.is_empty() && !loops.contains(&data_dir) && daemons.is_empty()).then_some(())
        },
    );
}

fn remove_instance(cloud: &Cloud, name: &str) {
    cloud.ok(&["instance", "rm", name]);
    common::wait_until(
        std::time::Duration::from_secs(60),
        &format!("instance {name} to be gone"),
        || {
            cloud
                .json(&["instance", "get", name])
                .is_err()
                .then_some(())
        },
    );
}

/// A volume mounted into containers: what one container writes (as the
/// container's root, and as a non-root user where root chowned) outlives
/// it, shows up in the next one and in a clone made from a snapshot; a
/// volume serves one instance at a time, an attached volume cannot be
/// removed, and once the instances are gone no mount, loop device or
/// qemu-storage-daemon is left.
#[test]
fn a_volume_carries_files_from_container_to_container() {
    if !can_mount_volumes() {
        return;
    }
    let cloud = Cloud::start();
    cloud.ok(&["volume", "create", "data", "--size", "64MiB"]);

    run_ok(
        &cloud,
        "writer",
        &["--volume", "data:/var/lib/db"],
        "echo kept > /var/lib/db/f && mkdir /var/lib/db/app && chown 1000:1000 /var/lib/db/app \
         && echo OWNER=$(stat -c %u:%g /var/lib/db/f) && sleep 600",
    );
    let logs = wait_for_log(&cloud, "writer", "OWNER=");
    assert!(logs.contains("OWNER=0:0"), "{logs}");
    let shown = cloud.ok(&["instance", "get", "writer"]);
    assert!(shown.contains("data at /var/lib/db"), "{shown}");

    // Read-write belongs to one instance, read-only included.
    for flag in ["data:/x", "data:/x:ro"] {
        let refused = run_with(&cloud, "second", &["--volume", flag, "--no-wait"], "true");
        fails_with(&refused, "attached read-write to instance \"writer\"");
    }
    fails_with(
        &cloud.nimbus(&["volume", "rm", "data"]),
        "volume \"data\" is attached to instance \"writer\"",
    );
    remove_instance(&cloud, "writer");

    // A non-root user writes where root chowned.
    let logs = run_to_exit(
        &cloud,
        "reader",
        &["--volume", "data:/data", "--user", "1000:1000"],
        "cat /data/f && echo hello > /data/app/u && echo USERWRITE=ok",
    );
    assert!(
        logs.contains("kept") && logs.contains("USERWRITE=ok"),
        "{logs}"
    );
    remove_instance(&cloud, "reader");

    // A clone from a snapshot holds the files; read-only is read-only.
    cloud.ok(&["volume", "snapshot", "data", "--name", "s1"]);
    cloud.ok(&["volume", "create", "copy", "--from-snapshot", "data@s1"]);
    run_ok(
        &cloud,
        "third",
        &["--volume", "copy:/c:ro"],
        "cat /c/f /c/app/u; touch /c/new 2>/dev/null && echo RO=writable || echo RO=refused",
    );
    let logs = wait_for_log(&cloud, "third", "RO=");
    assert!(logs.contains("kept") && logs.contains("hello"), "{logs}");
    assert!(logs.contains("RO=refused"), "{logs}");
    // One instance at a time, read-only too (each attachment opens the
    // qcow2 for itself).
    let refused = run_with(
        &cloud,
        "fourth",
        &["--volume", "copy:/c:ro", "--no-wait"],
        "true",
    );
    fails_with(&refused, "attached read-only to instance \"third\"");
    remove_instance(&cloud, "third");

    wait_no_volume_leftovers(&cloud);
    cloud.ok(&["volume", "rm", "copy"]);
    cloud.ok(&["volume", "rm", "data"]);
}

fn exec(cloud: &Cloud, name: &str, script: &str) -> String {
    cloud.ok(&["instance", "exec", name, "--", "sh", "-c", script])
}

/// The SHA-256 of `path` as a container sees it.
fn sum_in(cloud: &Cloud, name: &str, path: &str) -> String {
    let out = exec(cloud, name, &format!("sha256sum {path}"));
    out.split_whitespace()
        .next()
        .filter(|s| s.len() == 64)
        .unwrap_or_else(|| panic!("no sha256 in {out:?}"))
        .to_string()
}

/// A snapshot of a volume that a running container is writing: it goes
/// through the container's qemu-storage-daemon (the qcow2 is locked) with
/// the ext4 frozen, so it holds what the container wrote just before,
/// flushed or not, and none of what it wrote after. A clone of it shows
/// exactly that file in a second container; the original volume, once its
/// container is removed, re-attaches to a new one with the latest data.
#[test]
fn a_running_containers_volume_is_snapshotted_consistently() {
    if !can_mount_volumes() {
        return;
    }
    let cloud = Cloud::start();
    cloud.ok(&["volume", "create", "data", "--size", "64MiB"]);
    // No `sync`: the freeze must flush what sits in the page cache.
    run_ok(
        &cloud,
        "writer",
        &["--volume", "data:/v"],
        "seq 1 300000 > /v/f && echo WROTE && sleep 600",
    );
    wait_for_log(&cloud, "writer", "WROTE");
    let at_snapshot = sum_in(&cloud, "writer", "/v/f");

    cloud.ok(&["volume", "snapshot", "data", "--name", "snap"]);
    let snaps = cloud.ok(&["volume", "snapshot", "list", "data"]);
    assert!(snaps.contains("snap") && snaps.contains("yes"), "{snaps}");
    assert!(
        snaps.contains("host-frozen"),
        "the container's filesystem was frozen for it: {snaps}"
    );
    // The container was never stopped, and writes after the thaw.
    exec(&cloud, "writer", "echo later >> /v/f && echo new > /v/g");
    let latest = sum_in(&cloud, "writer", "/v/f");
    assert_ne!(latest, at_snapshot);

    // The clone, made while the source is still attached, holds the file
    // as it was at the snapshot, and not what came after.
    cloud.ok(&["volume", "create", "data2", "--from-snapshot", "data@snap"]);
    let logs = run_to_exit(
        &cloud,
        "reader",
        &["--volume", "data2:/v"],
        "sha256sum /v/f; test -e /v/g && echo G=present || echo G=absent",
    );
    assert!(
        logs.contains(&at_snapshot),
        "expected {at_snapshot} in {logs}"
    );
    assert!(logs.contains("G=absent"), "{logs}");
    remove_instance(&cloud, "reader");

    // Still one read-write holder at a time.
    let refused = run_with(
        &cloud,
        "second",
        &["--volume", "data:/v", "--no-wait"],
        "true",
    );
    fails_with(&refused, "attached read-write to instance \"writer\"");

    // Detached (its instance removed) and re-attached: the latest data.
    remove_instance(&cloud, "writer");
    run_ok(
        &cloud,
        "again",
        &["--volume", "data:/v"],
        "cat /v/g && echo READY && sleep 600",
    );
    let logs = wait_for_log(&cloud, "again", "READY");
    assert!(logs.contains("new"), "{logs}");
    assert_eq!(sum_in(&cloud, "again", "/v/f"), latest);
    // A snapshot deleted while attached goes through the daemon too.
    cloud.ok(&["volume", "snapshot", "rm", "data", "snap"]);
    common::wait_until(
        std::time::Duration::from_secs(30),
        "the host to drop the snapshot of the attached volume",
        || {
            let v = volume(&cloud, "default", "data");
            (v["status"]["snapshots"].as_array().map(Vec::len) == Some(0)).then_some(())
        },
    );
    remove_instance(&cloud, "again");

    wait_no_volume_leftovers(&cloud);
    cloud.ok(&["volume", "rm", "data2"]);
    cloud.ok(&["volume", "rm", "data"]);
}

/// Attach volume "data" to container "app" at /srv/data.
const ATTACH_TO_APP: [&str; 7] = [
    "volume",
    "attach",
    "data",
    "--instance",
    "app",
    "--path",
    "/srv/data",
];

/// A cloud with volume "data" of `size` and container "app" running
/// (sleeping), with no volume.
fn cloud_with_a_running_app(size: &str) -> Cloud {
    let cloud = Cloud::start();
    cloud.ok(&["volume", "create", "data", "--size", size]);
    run_ok(&cloud, "app", &[], "echo UP && sleep 600");
    wait_for_log(&cloud, "app", "UP");
    cloud
}

/// The size of the filesystem at `path` in container `name`, in KiB
/// (`df -k`'s total).
fn df_kib(cloud: &Cloud, name: &str, path: &str) -> u64 {
    let out = exec(cloud, name, &format!("df -k {path} | tail -n 1"));
    out.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size in df's {out:?}"))
}

/// Whether this process (root, like the daemon it starts) may grow a
/// mounted ext4: the kernel asks for CAP_SYS_RESOURCE (bit 24).
fn may_grow_mounted_ext4() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Whether container `name` has a mount at `path`.
fn mounted_in(cloud: &Cloud, name: &str, path: &str) -> bool {
    let mounts = exec(cloud, name, "cat /proc/mounts");
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(path))
}

/// No attachment of the instance `name` is left on the host: no mount in
/// its volumes directory, no qemu-storage-daemon, no loop device over an
/// export (the instance itself may still run).
fn no_attachment_left(cloud: &Cloud, name: &str) {
    let id = cloud.json(&["instance", "get", name]).expect("instance")["metadata"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let data_dir = cloud.data_dir().to_string_lossy().to_string();
    common::wait_until(
        std::time::Duration::from_secs(30),
        "the host side of the detached volume to go",
        || {
            let mounts = common::mounts_under(cloud.data_dir());
            let ours: Vec<&String> = mounts
                .iter()
                .filter(|m| m.contains(&id) && m.contains("/volumes/"))
                .collect();
            // Only this instance's exports: the other tests of this file
            // run beside this one with attachments of their own.
            let loops = Command::new("losetup").arg("-a").output().ok()?;
            let our_loops = String::from_utf8_lossy(&loops.stdout)
                .lines()
                .filter(|l| l.contains(&data_dir) && l.contains(&id) && l.contains("export.raw"))
                .count();
            let daemons = common::processes_mentioning(&data_dir)
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.contains("qemu-storage"))
                })
                .count();
            (ours.is_empty() && our_loops == 0 && daemons == 0).then_some(())
        },
    );
}

/// A volume attached to a container that runs (never restarted): it is
/// mounted at once, owned by the container's root, takes writes, grows
/// while attached (`df` inside shows it, the data stays), refuses to
/// shrink, and is detached while the container runs, its mount gone inside
/// and on the host; the file written is in the volume when the next
/// container mounts it. Another project's token cannot attach or grow it.
#[test]
fn a_running_container_gets_grows_and_loses_a_volume() {
    if !can_mount_volumes() {
        return;
    }
    let cloud = cloud_with_a_running_app("64MiB");
    let started =
        cloud.json(&["instance", "get", "app"]).expect("app")["status"]["started_at"].clone();

    // Attach: mounted at once at a path the image does not have.
    let out = cloud.ok(&ATTACH_TO_APP);
    assert!(out.contains("mounted at /srv/data"), "{out}");
    assert!(mounted_in(&cloud, "app", "/srv/data"));
    let owner = exec(
        &cloud,
        "app",
        "echo live > /srv/data/f && sync && stat -c %u:%g /srv/data /srv/data/f",
    );
    assert_eq!(
        owner.split_whitespace().collect::<Vec<_>>(),
        ["0:0", "0:0"],
        "{owner}"
    );
    let shown = cloud.json(&["instance", "get", "app"]).expect("app");
    assert_eq!(
        shown["status"]["volumes"][0]["state"], "attached",
        "{shown}"
    );
    // Being held, it is no one else's.
    let refused = run_with(
        &cloud,
        "second",
        &["--volume", "data:/x", "--no-wait"],
        "true",
    );
    fails_with(&refused, "attached read-write to instance \"app\"");

    // Grow while attached; shrinking stays refused.
    let before_kib = df_kib(&cloud, "app", "/srv/data");
    fails_with(
        &cloud.nimbus(&["volume", "resize", "data", "--size", "32MiB"]),
        "a volume only grows",
    );
    let out = cloud.ok(&["volume", "resize", "data", "--size", "256MiB"]);
    let grown = |kib: u64| kib > 3 * before_kib && kib > 200 * 1024;
    if may_grow_mounted_ext4() {
        assert!(out.contains("grown online"), "{out}");
        let after_kib = df_kib(&cloud, "app", "/srv/data");
        assert!(
            grown(after_kib),
            "df shows {after_kib} KiB, was {before_kib} KiB"
        );
    } else {
        // The kernel grows a mounted ext4 only with CAP_SYS_RESOURCE,
        // which this machine withholds even from root: the host says the
        // filesystem grows at its next mount, and a detach and attach
        // while the container runs does it.
        eprintln!(
            "NOTE: no CAP_SYS_RESOURCE here: online ext4 growth is not checked; checking growth at the next mount"
        );
        assert!(
            out.contains("grows when it is next mounted") && out.contains("CAP_SYS_RESOURCE"),
            "{out}\n{}",
            cloud.daemon_log()
        );
        assert_eq!(df_kib(&cloud, "app", "/srv/data"), before_kib);
        cloud.ok(&["volume", "detach", "data", "--instance", "app"]);
        assert!(!mounted_in(&cloud, "app", "/srv/data"));
        cloud.ok(&ATTACH_TO_APP);
        let after_kib = df_kib(&cloud, "app", "/srv/data");
        assert!(
            grown(after_kib),
            "df shows {after_kib} KiB, was {before_kib} KiB"
        );
    }
    assert_eq!(exec(&cloud, "app", "cat /srv/data/f").trim(), "live");
    assert_eq!(
        volume(&cloud, "default", "data")["status"]["size_bytes"],
        256 * MIB
    );

    // Another project's member neither attaches nor grows it.
    let bob = member_of_beta(&cloud);
    let other = "--project=default";
    all_not_found(
        &cloud,
        &bob,
        &[
            &["volume", "resize", "data", "--size", "1GiB", other],
            &["volume", "detach", "data", "--instance", "app", other],
            &[
                "volume",
                "attach",
                "data",
                "--instance",
                "app",
                "--path",
                "/y",
                other,
            ],
        ],
    );

    // Detach while it runs: flushed, gone inside and on the host.
    exec(&cloud, "app", "echo more >> /srv/data/f");
    let out = cloud.ok(&["volume", "detach", "data", "--instance", "app"]);
    assert!(out.contains("unmounted from container"), "{out}");
    assert!(!mounted_in(&cloud, "app", "/srv/data"));
    no_attachment_left(&cloud, "app");
    let now = cloud.json(&["instance", "get", "app"]).expect("app");
    assert_eq!(now["status"]["phase"], "running", "{now}");
    assert_eq!(
        now["status"]["started_at"], started,
        "the container restarted: {now}"
    );
    assert_eq!(now["status"]["restart_count"], 0, "{now}");

    // The next container finds the file, and the grown filesystem.
    let logs = run_to_exit(
        &cloud,
        "reader",
        &["--volume", "data:/d"],
        "cat /d/f && df -k /d | tail -n 1",
    );
    assert!(logs.contains("live") && logs.contains("more"), "{logs}");
    remove_instance(&cloud, "reader");
    remove_instance(&cloud, "app");
    wait_no_volume_leftovers(&cloud);
    cloud.ok(&["volume", "rm", "data"]);
}

/// A volume detached while a process in the container holds a file on it:
/// unmounted lazily (gone from the container's mounts at once), reported
/// `detaching` with the reason and the command fails saying so; the host
/// keeps its daemon and loop device until that process closes the file,
/// then the next pass releases them, with the container still running.
#[test]
fn a_busy_volume_is_detached_lazily_and_released_once_free() {
    if !can_mount_volumes() {
        return;
    }
    let cloud = cloud_with_a_running_app("32MiB");
    cloud.ok(&ATTACH_TO_APP);
    exec(
        &cloud,
        "app",
        "echo held > /srv/data/f && (sleep 1001 3</srv/data/f >/dev/null 2>&1 </dev/null &)",
    );

    let out = cloud.nimbus(&["volume", "detach", "data", "--instance", "app"]);
    fails_with(&out, "unmounted lazily");
    assert!(!mounted_in(&cloud, "app", "/srv/data"));
    let app = cloud.json(&["instance", "get", "app"]).expect("app");
    assert_eq!(app["status"]["volumes"][0]["state"], "detaching", "{app}");
    let qsd_running = || {
        common::processes_mentioning(&cloud.data_dir().to_string_lossy())
            .into_iter()
            .any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.contains("qemu-storage"))
            })
    };
    assert!(
        qsd_running(),
        "the daemon went while a process holds the volume"
    );

    // The holder closes the file: the volume is released while the
    // container goes on running, and its data is there for the next one.
    // (busybox here has no pkill; the pattern is built so that this
    // shell's own command line does not match it.)
    exec(
        &cloud,
        "app",
        "a=10; b=01; for p in /proc/[0-9]*; do grep -q \"sleep.$a$b\" $p/cmdline 2>/dev/null && kill ${p#/proc/}; done; true",
    );
    no_attachment_left(&cloud, "app");
    common::wait_until(
        std::time::Duration::from_secs(30),
        "the volume to leave the instance's status",
        || {
            let app = cloud.json(&["instance", "get", "app"]).ok()?;
            (app["status"]["volumes"].as_array().map(Vec::len) == Some(0)).then_some(())
        },
    );
    assert_eq!(
        cloud.json(&["instance", "get", "app"]).expect("app")["status"]["phase"],
        "running"
    );
    let logs = run_to_exit(&cloud, "reader", &["--volume", "data:/d"], "cat /d/f");
    assert!(logs.contains("held"), "{logs}");
    remove_instance(&cloud, "reader");
    remove_instance(&cloud, "app");
    wait_no_volume_leftovers(&cloud);
    cloud.ok(&["volume", "rm", "data"]);
}

/// A container restarted by its policy mounts what is attached now: the
/// shim reads the mounts the agent recorded for the running container
/// again before the restart.
#[test]
fn a_restarted_container_keeps_a_volume_attached_while_it_ran() {
    if !can_mount_volumes() {
        return;
    }
    let cloud = Cloud::start();
    cloud.ok(&["volume", "create", "data", "--size", "32MiB"]);
    run_ok(
        &cloud,
        "app",
        &["--restart", "always"],
        "echo UP; until [ -e /srv/data/stop ]; do sleep 0.2; done; rm /srv/data/stop; exit 3",
    );
    wait_for_log(&cloud, "app", "UP");
    cloud.ok(&ATTACH_TO_APP);
    exec(
        &cloud,
        "app",
        "echo kept > /srv/data/f && touch /srv/data/stop",
    );
    common::wait_until(
        std::time::Duration::from_secs(60),
        "app to be restarted and running",
        || {
            let app = cloud.json(&["instance", "get", "app"]).ok()?;
            (app["status"]["restart_count"] == 1 && app["status"]["phase"] == "running")
                .then_some(())
        },
    );
    assert!(mounted_in(&cloud, "app", "/srv/data"));
    assert_eq!(exec(&cloud, "app", "cat /srv/data/f").trim(), "kept");
    remove_instance(&cloud, "app");
    wait_no_volume_leftovers(&cloud);
    cloud.ok(&["volume", "rm", "data"]);
}

/// A stopped container lets go of its volume: once detached from it, the
/// volume serves another instance at once, with what the first one wrote,
/// and the stopped container starts again without it.
#[test]
fn a_stopped_container_frees_its_volume() {
    if !can_mount_volumes() {
        return;
    }
    let cloud = Cloud::start();
    cloud.ok(&["volume", "create", "data", "--size", "32MiB"]);
    run_ok(
        &cloud,
        "first",
        &["--volume", "data:/srv/data"],
        "echo from-first > /srv/data/f && sync && echo WROTE && sleep 600",
    );
    wait_for_log(&cloud, "first", "WROTE");
    cloud.ok(&["instance", "stop", "first"]);
    // Stopped, it holds nothing on the host: no mount, loop device or
    // qemu-storage-daemon (with its write lock on the qcow2).
    wait_no_volume_leftovers(&cloud);
    cloud.ok(&["volume", "detach", "data", "--instance", "first"]);
    let logs = run_to_exit(&cloud, "second", &["--volume", "data:/d"], "cat /d/f");
    assert!(logs.contains("from-first"), "{logs}");
    remove_instance(&cloud, "second");
    // The first one starts again, now without the volume.
    cloud.ok(&["instance", "start", "first"]);
    cloud.wait_phase("first", &["running"], std::time::Duration::from_secs(60));
    assert!(!mounted_in(&cloud, "first", "/srv/data"));
    remove_instance(&cloud, "first");
    wait_no_volume_leftovers(&cloud);
    cloud.ok(&["volume", "rm", "data"]);
}
