//! Volumes on VMs through the real binary, as root, with the tiny guest
//! under QEMU: a volume named at `instance run` is a virtio disk whose
//! serial is the volume's name; bytes the guest writes to it survive a
//! hot-unplug from that running VM and a hot-plug into another running
//! VM, which reads them back byte for byte; a second read-write attach is
//! refused, as are detaching what is not attached and another project's
//! token; an agent restart neither loses nor doubles the hot-plugged disk;
//! a volume held by a running VM grows and the guest sees the larger
//! disk; a running container gets and loses a volume at once too.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

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

/// Runs `script` in the guest's shell and returns what it printed between
/// two markers the shell computes (so the echoed command line never
/// matches them).
fn guest_run(cloud: &Cloud, vm: &str, script: &str) -> String {
    let mut console = Console::attach(cloud, vm);
    let line = format!("echo OUT-$((6*7))-BEGIN; {script}; echo OUT-$((6*7))-END");
    for _ in 0..10 {
        console.type_line(&line);
        if console.shows("OUT-42-END", Duration::from_secs(5)) {
            break;
        }
    }
    let seen = console.seen.clone();
    let start = seen
        .rfind("OUT-42-BEGIN")
        .unwrap_or_else(|| panic!("the guest {vm} never ran {script:?}; its console:\n{seen}"));
    let rest = &seen[start + "OUT-42-BEGIN".len()..];
    let end = rest.find("OUT-42-END").unwrap_or(rest.len());
    rest[..end].replace('\r', "").trim().to_string()
}

/// The guest's block device whose serial is `serial` (`vdb`), if any.
const FIND_DISK: &str =
    "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = SERIAL ] && echo DEV=${d##*/}; done";

fn guest_disk(cloud: &Cloud, vm: &str, serial: &str) -> Option<String> {
    let out = guest_run(cloud, vm, &FIND_DISK.replace("SERIAL", serial));
    let devices: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("DEV="))
        .collect();
    assert!(devices.len() <= 1, "{vm} sees the disk twice: {out}");
    devices.first().map(|d| d.to_string())
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

fn run_vm(cloud: &Cloud, name: &str, extra: &[&str]) {
    let mut args = vec![
        "instance", "run", name, "--kind", "vm", "--image", "tiny", "--memory", "128MiB",
    ];
    args.extend_from_slice(extra);
    cloud.ok(&args);
    common::wait_until(Duration::from_secs(180), &format!("{name} to boot"), || {
        cloud
            .logs(name)
            .contains("NIMBUS-TINY: ready")
            .then_some(())
    });
    // Kernel messages (hot-plug) would interleave with what the tests read.
    guest_run(cloud, name, "dmesg -n 1");
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
