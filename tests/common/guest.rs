//! Driving the tiny test guest through its serial console: boot it as a
//! Nimbus VM, run shell lines in it, find its disks by serial.

use std::time::Duration;

use super::{Cloud, Console};

/// Runs `script` in the guest's shell and returns what it printed between
/// two markers the shell computes (so the echoed command line never
/// matches them). A line the shell missed (still starting) is typed again
/// after 5 s.
pub fn guest_run(cloud: &Cloud, vm: &str, script: &str) -> String {
    guest_run_waiting(cloud, vm, script, Duration::from_secs(5))
}

/// [`guest_run`] for a script that runs up to `wait` (it is typed again
/// only after that).
pub fn guest_run_waiting(cloud: &Cloud, vm: &str, script: &str, wait: Duration) -> String {
    let mut console = Console::attach(cloud, vm);
    let line = format!("echo OUT-$((6*7))-BEGIN; {script}; echo OUT-$((6*7))-END");
    for _ in 0..10 {
        console.type_line(&line);
        if console.shows("OUT-42-END", wait) {
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

pub fn guest_disk(cloud: &Cloud, vm: &str, serial: &str) -> Option<String> {
    let out = guest_run(cloud, vm, &FIND_DISK.replace("SERIAL", serial));
    let devices: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("DEV="))
        .collect();
    assert!(devices.len() <= 1, "{vm} sees the disk twice: {out}");
    devices.first().map(|d| d.to_string())
}

/// Runs the tiny guest (image `tiny`, imported by [`Cloud::import_tiny`])
/// as VM `name` with `extra` arguments to `instance run` (128 MiB unless
/// they say `--memory`) and waits for its boot to end.
pub fn run_vm(cloud: &Cloud, name: &str, extra: &[&str]) {
    let mut args = vec!["instance", "run", name, "--kind", "vm", "--image", "tiny"];
    if !extra.contains(&"--memory") {
        args.extend(["--memory", "128MiB"]);
    }
    args.extend_from_slice(extra);
    cloud.ok(&args);
    super::wait_until(Duration::from_secs(180), &format!("{name} to boot"), || {
        cloud
            .logs(name)
            .contains("NIMBUS-TINY: ready")
            .then_some(())
    });
    // Kernel messages (hot-plug) would interleave with what the tests read.
    guest_run(cloud, name, "dmesg -n 1");
}
