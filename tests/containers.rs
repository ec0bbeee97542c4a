//! Real containers end to end: output, isolation, limits, restart
//! policies, stop/start, exec, and nothing left behind after removal.

mod common;

use std::time::Duration;

use common::Cloud;

const T: Duration = Duration::from_secs(60);

#[test]
fn container_runs_and_is_isolated() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance",
        "run",
        "hello",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo hi from nimbus",
    ]);
    let v = cloud.wait_phase("hello", &["exited"], T);
    assert_eq!(v["status"]["exit_code"], 0, "{v}");
    assert!(cloud.logs("hello").contains("hi from nimbus"));
    let stamped = cloud.ok(&["instance", "logs", "hello", "--timestamps"]);
    assert!(stamped.contains(" stdout hi from nimbus"), "{stamped}");

    let script = "cat /proc/self/status; echo HOST=$(hostname); echo MAP=$(cat /proc/self/uid_map); \
                  echo INIT=$(cat /proc/1/cmdline | tr '\\0' ' '); echo PIDS=$(ls /proc | grep -c '^[0-9]'); \
                  mkdir /tmp/ok && echo MKDIR=ok; mount -t tmpfs x /mnt 2>&1 || echo MOUNT=denied; \
                  echo IFACES=$(ls /sys/class/net | tr '\\n' ' '); sleep 600";
    cloud.ok(&[
        "instance",
        "run",
        "iso",
        "--image",
        "busybox",
        "--network",
        "none",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let v = cloud.wait_phase("iso", &["running"], T);
    let out = common::wait_until(T, "isolation output", || {
        let l = cloud.logs("iso");
        l.lines()
            .any(|line| line.starts_with("IFACES="))
            .then_some(l)
    });
    assert!(
        out.contains("Seccomp:\t2") || out.contains("Seccomp: 2"),
        "seccomp filter not applied:\n{out}"
    );
    let cap_eff = out
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff line");
    let caps = u64::from_str_radix(cap_eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        caps & (1 << 21),
        0,
        "CAP_SYS_ADMIN must be dropped: {cap_eff}"
    );
    assert_ne!(caps, 0x1ff_ffff_ffff, "capabilities were not reduced");
    assert!(
        out.lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "no_new_privs:\n{out}"
    );
    assert!(out.contains("HOST=iso"), "{out}");
    let host_uid = v["status"]["host_uid"]
        .as_u64()
        .expect("host_uid in status");
    assert!(host_uid >= 100_000);
    let map = out
        .lines()
        .find_map(|l| l.strip_prefix("MAP="))
        .expect("MAP line");
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &host_uid.to_string(), "65536"],
        "uid map"
    );
    assert!(
        out.contains("INIT=sh -c"),
        "PID 1 must be the container's command:\n{out}"
    );
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("PIDS="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        pids < 10,
        "own PID namespace shows only the container's processes, saw {pids}"
    );
    assert!(out.contains("MKDIR=ok"));
    assert!(out.contains("MOUNT=denied"), "{out}");
    assert!(out.contains("IFACES=lo"), "only loopback: {out}");
    // From the host, the workload runs as the mapped, unprivileged uid.
    let pid = v["status"]["pid"].as_i64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1).unwrap(),
        host_uid.to_string(),
        "{uid_line}"
    );

    // The masked and read-only paths, from the container's own mount table.
    let mountinfo = cloud.ok(&[
        "instance",
        "exec",
        "iso",
        "--",
        "cat",
        "/proc/self/mountinfo",
    ]);
    common::assert_masked_mounts(&mountinfo);
    let nulls = cloud.ok(&[
        "instance",
        "exec",
        "iso",
        "--",
        "stat",
        "-c",
        "%n %t:%T",
        "/proc/keys",
        "/proc/timer_list",
    ]);
    assert_eq!(
        nulls.lines().collect::<Vec<_>>(),
        ["/proc/keys 1:3", "/proc/timer_list 1:3"],
        "the masked files are the null device"
    );
    let firmware = cloud.ok(&["instance", "exec", "iso", "--", "ls", "-A", "/sys/firmware"]);
    assert_eq!(firmware.trim(), "", "/sys/firmware is empty");

    // Exec: output and exit codes.
    let ps = cloud.ok(&["instance", "exec", "iso", "--", "ps"]);
    assert!(ps.contains("sleep 600"), "{ps}");
    let out = cloud.nimbus(&[
        "instance",
        "exec",
        "iso",
        "--",
        "sh",
        "-c",
        "echo to-err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-err"));

    // A second instance gets a different id range.
    cloud.ok(&[
        "instance", "run", "iso2", "--image", "busybox", "--", "sleep", "600",
    ]);
    let v2 = cloud.wait_phase("iso2", &["running"], T);
    assert_ne!(v2["status"]["host_uid"].as_u64().unwrap(), host_uid);

    cloud.remove_everything();
}

#[test]
fn limits_are_enforced() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance",
        "run",
        "hog",
        "--image",
        "busybox",
        "--memory",
        "16MiB",
        "--",
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\000' a); echo survived ${#x}",
    ]);
    let v = cloud.wait_phase("hog", &["exited", "failed"], T);
    assert_eq!(v["status"]["oom_killed"], true, "{v}");
    assert_eq!(v["status"]["exit_code"], 137, "{v}");
    let reason = v["status"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        reason.contains("oom") || reason.contains("memory"),
        "reason must say OOM: {reason}"
    );
    assert!(!cloud.logs("hog").contains("survived"));

    // A fork bomb hits the pids limit: forks fail and it never finishes.
    // The same script without a limit finishes, so the limit is what stops it.
    let bomb = "for i in $(seq 1 60); do sleep 30 & done; echo finished";
    cloud.ok(&[
        "instance", "run", "bomb", "--image", "busybox", "--pids", "20", "--", "sh", "-c", bomb,
    ]);
    let v = cloud.wait_phase("bomb", &["exited"], T);
    let logs = cloud.logs("bomb");
    assert!(
        logs.contains("can't fork"),
        "forks must fail at the limit: {logs}"
    );
    assert!(!logs.contains("finished"), "{logs}");
    assert_ne!(v["status"]["exit_code"], 0);
    cloud.ok(&[
        "instance", "run", "nobomb", "--image", "busybox", "--", "sh", "-c", bomb,
    ]);
    common::wait_until(T, "the unlimited loop to finish", || {
        cloud.logs("nobomb").contains("finished").then_some(())
    });
    cloud.remove_everything();
}

#[test]
fn restart_policies_and_lifecycle() {
    let cloud = Cloud::start();
    cloud.ok(&[
        "instance",
        "run",
        "flaky",
        "--image",
        "busybox",
        "--restart",
        "on-failure:2",
        "--",
        "sh",
        "-c",
        "echo run; exit 3",
    ]);
    let v = common::wait_until(T, "flaky to give up", || {
        let v = cloud.instance("flaky");
        (v["status"]["phase"] == "exited" && v["status"]["restart_count"] == 2).then_some(v)
    });
    assert_eq!(v["status"]["exit_code"], 3);
    assert_eq!(cloud.logs("flaky").matches("run").count(), 3);

    cloud.ok(&[
        "instance", "run", "once", "--image", "busybox", "--", "sh", "-c", "exit 1",
    ]);
    let v = cloud.wait_phase("once", &["exited"], T);
    assert_eq!(v["status"]["restart_count"], 0);
    assert_eq!(v["status"]["exit_code"], 1);
    assert!(v["status"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("1"));

    cloud.ok(&[
        "instance",
        "run",
        "loop",
        "--image",
        "busybox",
        "--restart",
        "always",
        "--",
        "sh",
        "-c",
        "exit 0",
    ]);
    common::wait_until(T, "always to restart", || {
        (cloud.instance("loop")["status"]["restart_count"].as_u64()? >= 2).then_some(())
    });
    cloud.ok(&["instance", "stop", "loop"]);

    // Stop: SIGTERM ends a plain sleep quickly; an instance ignoring TERM is killed after the grace.
    cloud.ok(&[
        "instance",
        "run",
        "web",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 600 & wait",
    ]);
    cloud.wait_phase("web", &["running"], T);
    let started = std::time::Instant::now();
    cloud.ok(&["instance", "stop", "web"]);
    let v = cloud.instance("web");
    assert_eq!(v["status"]["phase"], "stopped", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a TERM-handling container stops without the grace period"
    );

    cloud.ok(&[
        "instance",
        "run",
        "stubborn",
        "--image",
        "busybox",
        "--stop-timeout",
        "1",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    cloud.wait_phase("stubborn", &["running"], T);
    cloud.ok(&["instance", "stop", "stubborn"]);
    let v = cloud.instance("stubborn");
    assert_eq!(v["status"]["phase"], "stopped");
    assert_eq!(
        v["status"]["signal"], 9,
        "killed after the grace period: {v}"
    );

    // Start again, then restart: the same instance runs anew.
    cloud.ok(&["instance", "start", "web"]);
    let v = cloud.wait_phase("web", &["running"], T);
    let pid1 = v["status"]["pid"].as_i64().unwrap();
    cloud.ok(&["instance", "restart", "web"]);
    let v = common::wait_until(T, "web to run with a new pid", || {
        let v = cloud.instance("web");
        (v["status"]["phase"] == "running" && v["status"]["pid"].as_i64()? != pid1).then_some(v)
    });
    assert!(v["status"]["pid"].as_i64().is_some());
    cloud.remove_everything();
}
