//! Volumes on VMs through the real binary, as root, with the tiny guest
//! under QEMU: a volume named at `instance run` is a virtio disk whose
//! serial is the volume's name; bytes the guest writes to it survive a
//! hot-unplug from that running VM and a hot-plug into another running
//! VM, which reads them back byte for byte; a second read-write attach is
//! refused, as are detaching what is not attached and another project's
//! token; an agent restart neither loses nor doubles the hot-plugged disk;
//! a volume held by a running VM grows and the guest sees the larger
//! disk; a running container gets and loses a volume at once too. A
//! snapshot of
//! a running VM's volume freezes the guest's filesystem through its guest
//! agent (so data the guest has not synced is in it), and a clone of it,
//! attached to a container, holds exactly what the VM and an earlier
//! container wrote before the snapshot; with the agent gone the snapshot
//! still succeeds, marked crash-consistent. A VM's console log stays
//! within its cap.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::guest::{guest_disk, guest_run, run_vm};
use common::{Cloud, Console};

/// 2 KiB the guest writes to the volume's first sectors (the same lines
/// its shell prints with `printf`).
fn payload() -> Vec<u8> {
    (0..64)
        .flat_map(|i| format!("line-{i:04}-nimbus-volume-payload\n").into_bytes())
        .collect()
}

fn md5_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run md5sum");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), bytes).expect("write");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn wait_guest_disk(cloud: &Cloud, vm: &str, serial: &str, present: bool) -> Option<String> {
    common::wait_until(
        Duration::from_secs(60),
        &format!(
            "disk {serial} to be {} in {vm}",
            if present { "present" } else { "gone" }
        ),
        || {
            let d = guest_disk(cloud, vm, serial);
            (d.is_some() == present).then_some(d)
        },
    )
}

fn fails_with(out: &Output, text: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure mentioning {text:?}"
    );
    assert!(stderr.contains(text), "expected {text:?} in: {stderr}");
}

fn volume_states(cloud: &Cloud, vm: &str) -> Vec<(String, String)> {
    cloud.instance(vm)["status"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            (
                v["volume"].as_str().unwrap_or_default().to_string(),
                v["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_vm_volume_moves_between_running_vms_byte_exact() {
    if !common::is_root("volumes on VMs") {
        return;
    }
    let mut cloud = Cloud::start();
    cloud.import_tiny();
    cloud.ok(&["volume", "create", "data", "--size", "32MiB"]);
    cloud.ok(&["volume", "create", "logs", "--size", "16MiB"]);

    // At create: a virtio disk with the volume's name as its serial.
    run_vm(&cloud, "vm1", &["--volume", "data"]);
    let id = cloud.json(&["volume", "get", "data"]).expect("volume")["metadata"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let pid = cloud.instance("vm1")["status"]["qemu_pid"]
        .as_i64()
        .expect("qemu pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!("\"node-name\":\"vol-{}\"", &id[..27])),
        "{cmdline}"
    );
    let dev = guest_disk(&cloud, "vm1", "data").expect("vm1 sees the data disk");
    let written = guest_run(
        &cloud,
        "vm1",
        &format!(
            "i=0; while [ $i -lt 64 ]; do printf 'line-%04d-nimbus-volume-payload\\n' $i; i=$((i+1)); done > /tmp/p; dd if=/tmp/p of=/dev/{dev} bs=2048 count=1 conv=fsync 2>&1; md5sum /tmp/p"
        ),
    );
    let expected = md5_hex(&payload());
    assert!(
        written.contains(&expected),
        "the guest wrote other bytes than expected: {written}"
    );

    // Rules: one read-write holder; detaching what is not attached says so.
    run_vm(&cloud, "vm2", &[]);
    fails_with(
        &cloud.nimbus(&["volume", "attach", "data", "--instance", "vm2"]),
        "attached read-write to instance \"vm1\"",
    );
    fails_with(
        &cloud.nimbus(&["volume", "detach", "logs", "--instance", "vm1"]),
        "not attached to instance \"vm1\"",
    );
    fails_with(
        &cloud.nimbus(&["volume", "attach", "nope", "--instance", "vm2"]),
        "not found",
    );

    // Another project's member sees "not found".
    cloud.ok(&["project", "create", "beta"]);
    cloud.ok(&["user", "create", "bob"]);
    cloud.ok(&["role", "grant", "bob", "member", "--project", "beta"]);
    let bob = cloud
        .json(&["token", "create", "--user", "bob"])
        .expect("token")["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    for args in [
        [
            "volume",
            "attach",
            "data",
            "--instance",
            "vm2",
            "--project",
            "default",
        ],
        [
            "volume",
            "detach",
            "data",
            "--instance",
            "vm1",
            "--project",
            "default",
        ],
    ] {
        let out = cloud
            .command()
            .env("NIMBUS_TOKEN", &bob)
            .args(args)
            .output()
            .expect("run");
        fails_with(&out, "not found");
    }
    assert_eq!(
        volume_states(&cloud, "vm1"),
        vec![("data".into(), "attached".into())]
    );

    // Hot-unplug from the running vm1: the guest loses the disk.
    let out = cloud.ok(&["volume", "detach", "data", "--instance", "vm1"]);
    assert!(out.contains("unplugged"), "{out}");
    wait_guest_disk(&cloud, "vm1", "data", false);
    assert_eq!(volume_states(&cloud, "vm1"), vec![]);

    // Hot-plug into the running vm2: the same bytes.
    let out = cloud.ok(&["volume", "attach", "data", "--instance", "vm2"]);
    assert!(out.contains("/dev/disk/by-id/virtio-data"), "{out}");
    let dev2 = wait_guest_disk(&cloud, "vm2", "data", true).expect("vm2 sees the disk");
    let read = guest_run(
        &cloud,
        "vm2",
        &format!("dd if=/dev/{dev2} bs=2048 count=1 2>/dev/null | md5sum"),
    );
    assert!(
        read.contains(&expected),
        "vm2 read other bytes ({read}), expected md5 {expected}"
    );
    let head = guest_run(
        &cloud,
        "vm2",
        &format!("dd if=/dev/{dev2} bs=32 count=2 2>/dev/null"),
    );
    assert_eq!(
        head, "line-0000-nimbus-volume-payload\nline-0001-nimbus-volume-payload",
        "the first lines read back"
    );

    // Grown while vm2 holds it: the guest sees the larger disk at once,
    // with the same bytes; shrinking stays refused.
    let out = cloud.ok(&["volume", "resize", "data", "--size", "64MiB"]);
    assert!(
        out.contains("grow its filesystem inside the guest"),
        "{out}"
    );
    common::wait_until(Duration::from_secs(60), "vm2 to see 64 MiB", || {
        let sectors = guest_run(&cloud, "vm2", &format!("cat /sys/block/{dev2}/size"));
        (sectors.trim() == "131072").then_some(())
    });
    let read = guest_run(
        &cloud,
        "vm2",
        &format!("dd if=/dev/{dev2} bs=2048 count=1 2>/dev/null | md5sum"),
    );
    assert!(read.contains(&expected), "after the grow vm2 read {read}");
    fails_with(
        &cloud.nimbus(&["volume", "resize", "data", "--size", "32MiB"]),
        "a volume only grows",
    );

    // kill -9 of the daemon: the disk stays, once, and is reported once.
    cloud.kill_daemon();
    cloud.spawn_daemon();
    cloud.wait_ready();
    cloud.wait_phase("vm2", &["running"], Duration::from_secs(30));
    common::wait_until(
        Duration::from_secs(30),
        "vm2's volume state after a restart",
        || {
            (volume_states(&cloud, "vm2") == vec![("data".to_string(), "attached".to_string())])
                .then_some(())
        },
    );
    assert_eq!(guest_disk(&cloud, "vm2", "data"), Some(dev2.clone()));
    let second = cloud.ok(&["volume", "attach", "logs", "--instance", "vm2"]);
    assert!(second.contains("attached"), "{second}");
    wait_guest_disk(&cloud, "vm2", "logs", true);
    assert_eq!(
        guest_disk(&cloud, "vm2", "data"),
        Some(dev2),
        "the first disk is not doubled"
    );

    // A volume held by a VM is not removed.
    fails_with(
        &cloud.nimbus(&["volume", "rm", "logs"]),
        "attached to instance \"vm2\"",
    );
    cloud.ok(&["volume", "detach", "logs", "--instance", "vm2"]);

    // A running container gets the volume at once (a path is needed) and
    // loses it at once; a stopped one takes it at its next start.
    cloud.ok(&[
        "instance", "run", "web", "--image", "busybox", "--", "sleep", "600",
    ]);
    cloud.wait_phase("web", &["running"], Duration::from_secs(60));
    let attach_web = [
        "volume",
        "attach",
        "logs",
        "--instance",
        "web",
        "--path",
        "/data",
    ];
    fails_with(
        &cloud.nimbus(&["volume", "attach", "logs", "--instance", "web"]),
        "--path",
    );
    let out = cloud.ok(&attach_web);
    assert!(out.contains("mounted at /data"), "{out}");
    let mounts = cloud.ok(&["instance", "exec", "web", "--", "cat", "/proc/mounts"]);
    assert!(mounts.contains(" /data ext4 "), "{mounts}");
    cloud.ok(&["volume", "detach", "logs", "--instance", "web"]);
    let mounts = cloud.ok(&["instance", "exec", "web", "--", "cat", "/proc/mounts"]);
    assert!(!mounts.contains(" /data "), "{mounts}");
    cloud.ok(&["instance", "stop", "web"]);
    cloud.wait_phase("web", &["stopped"], Duration::from_secs(60));
    let out = cloud.ok(&attach_web);
    assert!(out.contains("next start"), "{out}");
    cloud.ok(&["instance", "start", "web"]);
    cloud.wait_phase("web", &["running"], Duration::from_secs(60));
    let mounts = cloud.ok(&["instance", "exec", "web", "--", "cat", "/proc/mounts"]);
    assert!(mounts.contains(" /data ext4 "), "{mounts}");
    cloud.ok(&["instance", "stop", "web"]);
    cloud.wait_phase("web", &["stopped"], Duration::from_secs(60));
    cloud.ok(&["volume", "detach", "logs", "--instance", "web"]);
    cloud.ok(&["volume", "rm", "logs"]);

    cloud.remove_everything();
}

/// The consistency the volume's status records for `snapshot`.
fn consistency(cloud: &Cloud, volume: &str, snapshot: &str) -> String {
    cloud.json(&["volume", "get", volume]).expect("volume")["status"]["snapshot_consistency"]
        [snapshot]
        .as_str()
        .unwrap_or("none recorded")
        .to_string()
}

#[test]
fn a_running_vms_snapshot_is_frozen_by_its_guest_agent_and_restores_byte_exact() {
    if !common::is_root("snapshots of volumes on VMs") {
        return;
    }
    let cloud = Cloud::start();
    cloud.import_tiny();
    cloud.ok(&["volume", "create", "data", "--size", "32MiB"]);

    // A container formats the volume (ext4) and writes a file.
    cloud.ok(&[
        "instance",
        "run",
        "writer",
        "--image",
        "busybox",
        "--volume",
        "data:/data",
        "--",
        "sh",
        "-c",
        "echo written-by-a-container > /data/from-container",
    ]);
    cloud.wait_phase("writer", &["exited"], Duration::from_secs(60));
    // A stopped container keeps its volumes mounted until it starts again
    // or is removed: removed here, so the volume is free for the VM.
    cloud.ok(&["instance", "rm", "writer"]);
    common::wait_until(Duration::from_secs(60), "writer to be gone", || {
        cloud
            .json(&["instance", "get", "writer"])
            .is_err()
            .then_some(())
    });

    // The VM mounts it, reads the container's file, writes its own and
    // does not sync: only the guest's page cache holds it.
    run_vm(&cloud, "vm1", &["--volume", "data"]);
    let dev = guest_disk(&cloud, "vm1", "data").expect("vm1 sees the data disk");
    let seen = guest_run(
        &cloud,
        "vm1",
        &format!("mkdir -p /mnt/data && mount -t ext4 /dev/{dev} /mnt/data && cat /mnt/data/from-container"),
    );
    assert!(seen.contains("written-by-a-container"), "{seen}");
    let expected = md5_hex(&payload());
    let written = guest_run(
        &cloud,
        "vm1",
        "i=0; while [ $i -lt 64 ]; do printf 'line-%04d-nimbus-volume-payload\\n' $i; i=$((i+1)); done > /mnt/data/from-vm; md5sum /mnt/data/from-vm",
    );
    assert!(written.contains(&expected), "{written}");

    // The snapshot, while the VM runs: its guest agent froze the guest's
    // filesystems, which flushed the file.
    let out = cloud.ok(&["volume", "snapshot", "data", "--name", "s1"]);
    assert!(out.contains("guest-frozen"), "{out}");
    assert_eq!(consistency(&cloud, "data", "s1"), "guest-frozen");
    let after = guest_run(
        &cloud,
        "vm1",
        "echo later > /mnt/data/from-vm && echo more > /mnt/data/after-snapshot && sync && cat /mnt/data/from-vm",
    );
    assert_eq!(after, "later", "the guest writes again once thawed");

    // The snapshot restored into a new volume, read by a container.
    cloud.ok(&["volume", "create", "data2", "--from-snapshot", "data@s1"]);
    cloud.ok(&[
        "instance",
        "run",
        "reader",
        "--image",
        "busybox",
        "--volume",
        "data2:/data",
        "--",
        "sleep",
        "600",
    ]);
    cloud.wait_phase("reader", &["running"], Duration::from_secs(60));
    let read = |args: &[&str]| {
        let mut all = vec!["instance", "exec", "reader", "--"];
        all.extend_from_slice(args);
        cloud.ok(&all)
    };
    assert!(
        read(&["md5sum", "/data/from-vm"]).contains(&expected),
        "the VM's file as it was at the snapshot"
    );
    assert_eq!(
        read(&["cat", "/data/from-container"]).trim(),
        "written-by-a-container"
    );
    let listing = read(&["ls", "/data"]);
    assert!(
        !listing.contains("after-snapshot"),
        "a file written after the snapshot is in it: {listing}"
    );

    // No guest agent answering: still a snapshot, said to be crash-consistent.
    guest_run(&cloud, "vm1", "killall qemu-ga; sync");
    let out = cloud.ok(&["volume", "snapshot", "data", "--name", "s2"]);
    assert!(out.contains("crash-consistent"), "{out}");
    assert_eq!(consistency(&cloud, "data", "s2"), "crash-consistent");
    assert_eq!(
        consistency(&cloud, "data", "s1"),
        "guest-frozen",
        "an earlier snapshot keeps its record"
    );
    let list = cloud.ok(&["volume", "snapshot", "list", "data"]);
    assert!(
        list.contains("guest-frozen") && list.contains("crash-consistent"),
        "{list}"
    );

    cloud.remove_everything();
}

/// A VM's console log cap (`nimbus up --log-max`), over its rotations.
const VM_LOG_CAP_BYTES: u64 = 192 << 10;

#[test]
fn a_vm_console_log_stays_within_its_cap() {
    if !common::is_root("VM console logs") {
        return;
    }
    let cloud = Cloud::start_with(&["--log-max", "192KiB"]);
    cloud.import_tiny();
    run_vm(&cloud, "chatty", &[]);
    let id = cloud.instance("chatty")["metadata"]["id"]
        .as_str()
        .expect("instance id")
        .to_string();
    let dir = cloud.data_dir().join("instances").join(id);

    // Three times the cap, printed on the serial console. The end is
    // watched for in the log file itself (the attached stream may lag).
    let lines = 3 * VM_LOG_CAP_BYTES / 100;
    let mut console = Console::attach(&cloud, "chatty");
    console.type_line(&format!(
        "i=0; while [ $i -lt {lines} ]; do echo \"line $i ..........................................................................\"; i=$((i+1)); done; echo FLOOD-$((40+2))-DONE"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut largest = 0;
    loop {
        largest = largest.max(common::log_bytes_on_disk(&dir));
        let current = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        if current.contains("FLOOD-42-DONE") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not finish printing {lines} lines; the console log ends with:\n{}",
            common::tail(&current, 3)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(console);
    largest = largest.max(common::log_bytes_on_disk(&dir));
    assert!(
        largest <= VM_LOG_CAP_BYTES,
        "the VM's console logs took {largest} bytes, more than the {VM_LOG_CAP_BYTES} cap"
    );
    let logs = cloud.logs("chatty");
    assert!(
        logs.contains(&format!("line {} ", lines - 1)),
        "the newest line is kept"
    );
    assert!(
        !logs.contains("NIMBUS-TINY: ready"),
        "the oldest lines (the boot) were rotated away"
    );

    cloud.remove_everything();
}
