//! End-to-end: the cgroup limits really hold.

mod container_support;

use std::time::Duration;

use container_support::*;
use nimbus_agent::shim::Phase;

#[test]
fn memory_limit_oom_kills_and_says_so() {
    if !is_root() {
        return;
    }
    // `tail` keeps the last "line" of newline-free input in memory: 64 MiB of it.
    let inst = Instance::new("oom", |id, layer| {
        let mut spec = sh_spec(id, layer, "echo start; head -c 64m /dev/zero | tail");
        spec.resources.memory_bytes = Some(16 << 20);
        spec
    });
    inst.spawn();
    let last = inst.wait_final(Duration::from_secs(30));
    assert_eq!(last.phase, Phase::Exited, "{last:?}");
    assert_eq!(last.exit_code, Some(137), "{last:?}");
    assert!(last.oom_killed, "{last:?}");
    let reason = last.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("OOM") && reason.contains("16 MiB"),
        "reason: {reason}"
    );
    assert_eq!(inst.console_lines("stdout"), vec!["start"]);
    inst.assert_torn_down(&last);
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("pids", |id, layer| {
        // A shell that hits the limit dies ("can't fork"), so the bomb runs in
        // children, started only once the init itself is `sleep`: under the
        // CPU quota the bomb could otherwise take the last pids before the
        // init's own forks, and the container would end.
        let bomb = "(sleep 0.3; for i in 1 2 3; do (while true; do sleep 10 & done) & done) & exec sleep 600";
        let mut spec = sh_spec(id, layer, bomb);
        spec.resources.pids_max = Some(20);
        spec.resources.cpu_millis = Some(200);
        spec
    });
    let running = inst.spawn();
    assert_eq!(running.phase, Phase::Running, "{running:?}");
    let init = i64::from(running.pid.expect("init pid"));
    let cgroup = cgroup_dir_of(init, "pids");
    assert!(
        cgroup.ends_with(&inst.id),
        "the init is in its instance's pids cgroup: {cgroup:?}"
    );
    let read = |file: &str| cgroup_file(init, "pids", file);
    assert_eq!(read("pids.max").trim(), "20");
    // The bomb hits the limit: forks start failing ("max" events count them).
    assert!(
        wait_until(Duration::from_secs(20), || {
            read("pids.events")
                .lines()
                .any(|l| l.starts_with("max ") && l != "max 0")
        }),
        "the fork bomb never hit the limit: pids.events {:?}, container {:?}",
        read("pids.events"),
        inst.client().status().map(|s| s.phase)
    );
    for _ in 0..10 {
        let current = cgroup_number(init, "pids", "pids.current");
        assert!(current <= 20, "pids.current {current} exceeds the limit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = cgroup_number(init, "pids", "pids.peak");
    assert!(peak <= 20, "pids.peak {peak}");
    // The host still forks fine and the shim still answers.
    let status = std::process::Command::new("true")
        .status()
        .expect("host can still fork");
    assert!(status.success());
    assert_eq!(
        inst.client().status().expect("status").phase,
        Phase::Running
    );
    let last = inst.client().stop(0).expect("stop");
    assert_eq!(last.phase, Phase::Exited);
    assert_eq!(last.signal, Some(9));
    inst.assert_torn_down(&last);
}

#[test]
fn cpu_quota_is_applied() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("cpu", |id, layer| {
        let mut spec = sh_spec(id, layer, "exec sleep 600");
        spec.resources.cpu_millis = Some(250);
        spec.resources.memory_bytes = Some(32 << 20);
        spec
    });
    let running = inst.spawn();
    let init = i64::from(running.pid.expect("init pid"));
    for controller in ["cpu", "memory"] {
        let dir = cgroup_dir_of(init, controller);
        assert!(
            dir.ends_with(&inst.id),
            "{controller} cgroup of the init: {dir:?}"
        );
    }
    let read = |file: &str| cgroup_file(init, "cpu", file);
    assert_eq!(read("cpu.cfs_period_us").trim(), "100000");
    assert_eq!(read("cpu.cfs_quota_us").trim(), "25000");
    let mem_read = |file: &str| cgroup_file(init, "memory", file);
    assert_eq!(
        mem_read("memory.limit_in_bytes").trim(),
        (32u64 << 20).to_string()
    );
    assert_eq!(
        mem_read("memory.memsw.limit_in_bytes").trim(),
        (32u64 << 20).to_string()
    );
    let last = inst.client().stop(0).expect("stop");
    inst.assert_torn_down(&last);
}
