//! End-to-end: what a process inside the container can see and do.

mod container_support;

use std::time::Duration;

use container_support::*;
use nimbus_agent::shim::Phase;

const PROBE: &str = r#"
grep -E '^(Seccomp|CapEff|CapInh|CapAmb|NoNewPrivs):' /proc/self/status
echo "pid=$$"
echo "pid1=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "hostname=$(hostname)"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')"
echo "gid_map=$(cat /proc/self/gid_map | tr -s ' ' | sed 's/^ //')"
echo "id=$(id -u):$(id -g)"
mkdir /tmp/made && echo mkdir=ok
mount -t tmpfs x /mnt 2>/dev/null && echo mount=ok || echo mount=denied
unshare -U true 2>/dev/null && echo unshare=ok || echo unshare=denied
echo "links=$(ls /sys/class/net | tr '\n' ' ')"
ip link show lo | grep -q 'UP' && echo lo=up || echo lo=down
echo "devices=$(ls /dev | tr '\n' ' ')"
echo "kcore=$(cat /proc/kcore 2>/dev/null | wc -c)"
echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo procsys=writable || echo procsys=readonly
echo "nofile=$(ulimit -n)"
grep -E ' /(proc/keys|proc/timer_list|proc/sys|sys/firmware) ' /proc/self/mountinfo | sed 's/^/mnt /'
stat -c 'masked %n %F %t:%T' /proc/keys /proc/timer_list
echo "firmware=$(ls -A /sys/firmware | wc -l)"
echo "ps=$(ps -o pid,comm | tail -n +2 | wc -l)"
echo "ps1=$(ps -o pid,comm | awk '$1 == 1 { print $2 }')"
echo probe-done
exec sleep 600
"#;

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}="))
                .or_else(|| l.strip_prefix(&format!("{key}:")))
        })
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {lines:#?}"))
}

#[test]
fn container_is_isolated_and_confined() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("iso", |id, layer| sh_spec(id, layer, PROBE));
    let running = inst.spawn();
    assert_eq!(running.phase, Phase::Running, "{running:?}");
    assert!(
        wait_until(Duration::from_secs(20), || inst
            .console_lines("stdout")
            .iter()
            .any(|l| l == "probe-done")),
        "probe did not finish:\n{}",
        inst.console()
    );
    let out = inst.console_lines("stdout");
    let spec = inst.spec();

    assert_eq!(value(&out, "Seccomp"), "2", "seccomp filter mode");
    assert_eq!(value(&out, "NoNewPrivs"), "1");
    let cap_eff = u64::from_str_radix(value(&out, "CapEff"), 16).expect("CapEff hex");
    assert_ne!(cap_eff, 0x1ff_ffff_ffff, "capabilities must be reduced");
    assert_eq!(cap_eff & (1 << 21), 0, "CAP_SYS_ADMIN must be absent");
    assert_ne!(cap_eff & (1 << 0), 0, "CAP_CHOWN is in the default set");
    assert_eq!(
        u64::from_str_radix(value(&out, "CapInh"), 16).expect("hex"),
        0
    );
    assert_eq!(
        u64::from_str_radix(value(&out, "CapAmb"), 16).expect("hex"),
        0
    );

    assert_eq!(
        value(&out, "pid"),
        "1",
        "the init is pid 1 of its own namespace"
    );
    assert!(value(&out, "pid1").starts_with("/bin/sh -c"), "{out:?}");
    assert_eq!(value(&out, "hostname"), spec.hostname);
    let expected_map = format!("0 {} {}", spec.id_map.host_id, spec.id_map.size);
    assert_eq!(value(&out, "uid_map"), expected_map);
    assert_eq!(value(&out, "gid_map"), expected_map);
    assert_eq!(value(&out, "id"), "0:0");
    assert_eq!(value(&out, "mkdir"), "ok");
    assert_eq!(value(&out, "mount"), "denied");
    assert_eq!(value(&out, "unshare"), "denied");
    assert_eq!(value(&out, "links"), "lo", "loopback only");
    assert_eq!(value(&out, "lo"), "up");
    let devices = value(&out, "devices");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(
            devices.split(' ').any(|d| d == dev),
            "/dev/{dev} missing: {devices}"
        );
    }
    assert_eq!(value(&out, "kcore"), "0", "/proc/kcore is masked");
    assert_eq!(value(&out, "procsys"), "readonly");
    assert_eq!(value(&out, "nofile"), "1024");
    // The masking itself, from the container's own mount table: the masked
    // files are /dev/null bound over them, /proc/sys is read-only and
    // /sys/firmware an empty tmpfs.
    let mountinfo: String = out
        .iter()
        .filter_map(|l| l.strip_prefix("mnt "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_masked_mounts(&mountinfo);
    for file in ["/proc/keys", "/proc/timer_list"] {
        assert!(
            out.iter()
                .any(|l| l == &format!("masked {file} character special file 1:3")),
            "{file} must be the null device (char 1:3) inside the container: {out:#?}"
        );
    }
    assert_eq!(value(&out, "firmware"), "0", "/sys/firmware is empty");
    // Only the probe's own processes are visible (the host runs hundreds).
    assert_eq!(value(&out, "ps1"), "sh");
    assert!(
        value(&out, "ps").parse::<u32>().expect("count") <= 8,
        "{out:?}"
    );

    // From the host: the container init runs as the instance's host id, in the
    // instance's cgroup.
    let pid = running.pid.expect("init pid");
    assert_eq!(host_uids(pid), vec![spec.id_map.host_id; 4]);
    let memory_cgroup = cgroup_dir_of(i64::from(pid), "memory");
    assert!(
        memory_cgroup.ends_with(format!("nimbus/{}", inst.id)),
        "the init is in its instance's memory cgroup: {memory_cgroup:?}"
    );

    // The image layer stays untouched and still root-owned; writes land in upper/.
    assert!(!inst.layer.join("tmp/made").exists());
    assert!(inst.dir.join("upper/tmp/made").exists());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(inst.layer.join("bin/busybox"))
            .expect("stat")
            .uid(),
        0
    );
    assert_eq!(
        std::fs::metadata(inst.dir.join("upper/tmp/made"))
            .expect("stat")
            .uid(),
        spec.id_map.host_id
    );

    let last = inst.client().stop(0).expect("stop");
    assert_eq!(last.phase, Phase::Exited);
    inst.assert_torn_down(&last);
}

#[test]
fn a_non_root_user_is_mapped_too() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("user", |id, layer| {
        let mut spec = sh_spec(
            id,
            layer,
            "echo id=$(id -u):$(id -g); echo home=$(stat -c %u:%g /root); exec sleep 600",
        );
        spec.user = nimbus_agent::container::UserSpec {
            uid: 1000,
            gid: 1000,
        };
        spec
    });
    let running = inst.spawn();
    assert!(
        wait_until(Duration::from_secs(10), || inst
            .console_lines("stdout")
            .len()
            >= 2),
        "{}",
        inst.console()
    );
    let out = inst.console_lines("stdout");
    assert_eq!(value(&out, "id"), "1000:1000");
    // Image files owned by uid 0 appear owned by the container's root.
    assert_eq!(value(&out, "home"), "0:0");
    let host_id = inst.spec().id_map.host_id;
    assert_eq!(
        host_uids(running.pid.expect("pid")),
        vec![host_id + 1000; 4]
    );
    let last = inst.client().stop(0).expect("stop");
    inst.assert_torn_down(&last);
}

/// The mountinfo check itself fails on a table without the masking, so a
/// passing isolation test means the mounts are there.
#[test]
fn the_masking_check_rejects_unmasked_mount_tables() {
    let masked = "\
100 90 0:22 / /proc rw,nosuid,nodev,noexec - proc proc rw
101 100 0:5 /null /proc/keys rw,nosuid - devtmpfs udev rw,mode=755
102 100 0:5 /null /proc/timer_list rw,nosuid - devtmpfs udev rw,mode=755
103 100 0:22 /sys /proc/sys ro,nosuid,nodev,noexec - proc proc rw
104 95 0:60 / /sys/firmware ro,relatime - tmpfs tmpfs ro,size=0k
";
    assert_masked_mounts(masked);
    let broken = [
        (
            "/proc/keys",
            "101 100 0:22 /keys /proc/keys rw - proc proc rw",
        ),
        ("/proc/timer_list", ""),
        (
            "/proc/sys",
            "103 100 0:22 /sys /proc/sys rw,nosuid - proc proc rw",
        ),
        (
            "/sys/firmware",
            "104 95 0:23 /firmware /sys/firmware rw - sysfs sysfs rw",
        ),
    ];
    for (path, replacement) in broken {
        let table: String = masked
            .lines()
            .map(|l| {
                if l.split(' ').nth(4) == Some(path) {
                    replacement.to_string()
                } else {
                    l.to_string()
                }
            })
            .filter(|l| !l.is_empty())
            .map(|l| l + "\n")
            .collect();
        let caught = std::panic::catch_unwind(|| assert_masked_mounts(&table));
        assert!(
            caught.is_err(),
            "a table with {path} unmasked passed:\n{table}"
        );
    }
}
