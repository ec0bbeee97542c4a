//! End-to-end: a shim runs a container, logs its output, reports its exit, and
//! leaves nothing behind.

mod container_support;

use std::time::{Duration, Instant};

use container_support::*;
use nimbus_agent::container::{RestartMode, RestartPolicy};
use nimbus_agent::shim::Phase;

#[test]
fn echo_hi_is_logged_and_exits_zero() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("echo", |id, layer| {
        sh_spec(id, layer, "echo hi; echo oops >&2")
    });
    let first = inst.spawn();
    assert!(
        matches!(
            first.phase,
            Phase::Running | Phase::Stopping | Phase::Exited
        ),
        "spawn reported {first:?}"
    );
    let last = inst.wait_final(Duration::from_secs(20));
    assert_eq!(last.phase, Phase::Exited, "{last:?}");
    assert_eq!(last.exit_code, Some(0));
    assert_eq!(last.reason.as_deref(), Some("exited with code 0"));
    assert_eq!(inst.console_lines("stdout"), vec!["hi"]);
    assert_eq!(inst.console_lines("stderr"), vec!["oops"]);
    let line = inst
        .console()
        .lines()
        .find(|l| l.ends_with(" stdout hi"))
        .map(str::to_string)
        .expect("hi line");
    let ts = line.split(' ').next().expect("timestamp");
    let parsed = chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339 timestamp");
    assert_eq!(parsed.offset().local_minus_utc(), 0);
    assert_eq!(
        ts.split('.').nth(1).map(|f| f.len()),
        Some(10),
        "nanoseconds + Z in {ts}"
    );
    assert!(wait_until(Duration::from_secs(5), || !is_shim_of(
        last.shim_pid,
        &inst.dir
    )));
    inst.assert_torn_down(&last);
}

#[test]
fn on_failure_restarts_up_to_max_retries() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("onfail", |id, layer| {
        let mut spec = sh_spec(id, layer, "echo run; exit 3");
        spec.restart = RestartPolicy {
            policy: RestartMode::OnFailure,
            max_retries: Some(2),
        };
        spec
    });
    inst.spawn();
    // Subscribing may miss the first run if it was very quick; the phases seen from
    // here on must still end with the final exit.
    let seen: Vec<_> = match inst.client_if_alive() {
        Some(client) => client
            .subscribe()
            .expect("subscribe")
            .map(|s| s.expect("state"))
            .collect(),
        None => Vec::new(),
    };
    let last = inst.wait_final(Duration::from_secs(30));
    assert_eq!(last.phase, Phase::Exited, "{last:?}");
    assert_eq!(last.restart_count, 2);
    assert_eq!(last.exit_code, Some(3));
    assert_eq!(last.reason.as_deref(), Some("exited with code 3"));
    assert_eq!(inst.console_lines("stdout"), vec!["run", "run", "run"]);
    if let Some(final_seen) = seen.last() {
        assert_eq!(
            final_seen, &last,
            "the subscription ends with the final state"
        );
    }
    inst.assert_torn_down(&last);
}

#[test]
fn always_restarts_even_after_success() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("always", |id, layer| {
        let mut spec = sh_spec(id, layer, "echo run; exit 0");
        spec.restart = RestartPolicy {
            policy: RestartMode::Always,
            max_retries: None,
        };
        spec
    });
    inst.spawn();
    inst.wait_for("two restarts", Duration::from_secs(30), |s| {
        s.restart_count >= 2
    });
    let last = inst
        .client()
        .stop(0)
        .unwrap_or_else(|e| panic!("stop failed: {e}; state file: {:?}", inst.state()));
    assert_eq!(last.phase, Phase::Exited);
    assert!(last.restart_count >= 2);
    let runs = inst.console_lines("stdout").len() as u32;
    assert!(
        runs > last.restart_count,
        "{runs} runs, {} restarts",
        last.restart_count
    );
    // No restart after an explicit stop: the shim is gone and nothing runs.
    inst.assert_torn_down(&last);
}

#[test]
fn never_does_not_restart() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("never", |id, layer| sh_spec(id, layer, "echo run; exit 1"));
    inst.spawn();
    let last = inst.wait_final(Duration::from_secs(20));
    assert_eq!(last.phase, Phase::Exited);
    assert_eq!(last.restart_count, 0);
    assert_eq!(last.exit_code, Some(1));
    assert_eq!(last.reason.as_deref(), Some("exited with code 1"));
    assert_eq!(inst.console_lines("stdout"), vec!["run"]);
    inst.assert_torn_down(&last);
}

#[test]
fn stop_kills_after_grace_when_term_is_ignored() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("stubborn", |id, layer| {
        sh_spec(id, layer, "trap '' TERM; echo ready; sleep 600")
    });
    inst.spawn();
    assert!(wait_until(Duration::from_secs(10), || inst
        .console_lines("stdout")
        == ["ready"]));
    let started = Instant::now();
    let last = inst.client().stop(700).expect("stop");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "stopped after {took:?}, before the grace period"
    );
    assert_eq!(last.phase, Phase::Exited);
    assert_eq!(last.signal, Some(9), "{last:?}");
    assert_eq!(last.exit_code, Some(137));
    assert!(
        last.reason.as_deref().unwrap_or_default().contains("grace"),
        "{last:?}"
    );
    inst.assert_torn_down(&last);
}

#[test]
fn stop_lets_a_cooperative_container_exit_on_sigterm() {
    if !is_root() {
        return;
    }
    let script = "trap 'echo bye; exit 0' TERM; echo ready; sleep 600 & wait";
    let inst = Instance::new("polite", |id, layer| sh_spec(id, layer, script));
    inst.spawn();
    assert!(wait_until(Duration::from_secs(10), || inst
        .console_lines("stdout")
        == ["ready"]));
    let started = Instant::now();
    let last = inst.client().stop(30_000).expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "SIGTERM was not delivered"
    );
    assert_eq!(last.phase, Phase::Exited);
    assert_eq!(last.exit_code, Some(0), "{last:?}");
    assert_eq!(last.signal, None);
    assert_eq!(inst.console_lines("stdout"), vec!["ready", "bye"]);
    inst.assert_torn_down(&last);
}

#[test]
fn writable_layer_persists_across_stop_and_start() {
    if !is_root() {
        return;
    }
    let script = "cat /data/file 2>/dev/null || echo none; mkdir -p /data; echo kept > /data/file";
    let inst = Instance::new("upper", |id, layer| sh_spec(id, layer, script));
    inst.spawn();
    let first = inst.wait_final(Duration::from_secs(20));
    inst.assert_torn_down(&first);
    inst.spawn();
    let second = inst.wait_final(Duration::from_secs(20));
    assert_eq!(second.exit_code, Some(0));
    assert_eq!(inst.console_lines("stdout"), vec!["none", "kept"]);
    assert!(
        !inst.layer.join("data").exists(),
        "the image layer must stay untouched"
    );
    inst.assert_torn_down(&second);
}

#[test]
fn missing_layer_fails_with_a_reason_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("nolayer", |id, layer| {
        let mut spec = sh_spec(id, layer, "true");
        spec.layers.push(layer.join("does-not-exist"));
        spec
    });
    let state = inst.spawn();
    assert_eq!(state.phase, Phase::Failed, "{state:?}");
    let reason = state.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("image rootfs could not be mounted"),
        "{reason}"
    );
    assert!(reason.contains("does-not-exist"), "{reason}");
    assert!(wait_until(Duration::from_secs(5), || !is_shim_of(
        state.shim_pid,
        &inst.dir
    )));
    assert_eq!(mounts_under(&inst.dir), Vec::<String>::new());
    assert_eq!(cgroup_dirs(&inst.id), Vec::<std::path::PathBuf>::new());
    assert!(!inst.dir.join("shim.sock").exists());
}

#[test]
fn shim_outlives_the_agent_that_spawned_it() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("orphan", |id, layer| {
        sh_spec(id, layer, "echo up; exec sleep 600")
    });
    // The "agent": a separate process that spawns the shim and then gets SIGKILLed.
    let mut agent = std::process::Command::new(SHIM_EXE)
        .arg("spawn-and-wait")
        .arg(&inst.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start agent stand-in");
    let running = inst.wait_for("running", Duration::from_secs(20), |s| {
        s.phase == Phase::Running
    });
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(agent.stdout.take().expect("agent stdout")),
        &mut line,
    )
    .expect("agent reports");
    assert_eq!(line.trim(), "Running");
    agent.kill().expect("SIGKILL the agent");
    agent.wait().expect("reap the agent");

    let pid = running.pid.expect("init pid");
    assert!(
        is_in_instance(pid, &inst.id),
        "the container died with its agent"
    );
    assert!(
        is_shim_of(running.shim_pid, &inst.dir),
        "the shim died with its agent"
    );
    // A new agent finds the shim through the socket.
    let client = nimbus_agent::shim::ShimClient::connect(&inst.dir).expect("reconnect");
    let status = client.status().expect("status");
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(status.pid, Some(pid));
    let last = client.stop(0).expect("stop");
    assert_eq!(last.phase, Phase::Exited);
    inst.assert_torn_down(&last);
}

#[test]
fn console_log_rotates() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("rotate", |id, layer| {
        let mut spec = sh_spec(
            id,
            layer,
            "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done",
        );
        spec.log_max_bytes = 4096;
        spec.log_files = 2;
        spec
    });
    inst.spawn();
    let last = inst.wait_final(Duration::from_secs(20));
    assert_eq!(last.exit_code, Some(0));
    let live = std::fs::metadata(inst.dir.join("console.log"))
        .expect("live log")
        .len();
    assert!(live <= 4096, "console.log is {live} bytes");
    assert!(inst.dir.join("console.log.1").exists());
    assert!(
        !inst.dir.join("console.log.2").exists(),
        "only log_files files are kept"
    );
    assert_eq!(
        inst.console_lines("stdout").last().map(String::as_str),
        Some("line-299")
    );
}

#[test]
fn a_second_shim_for_the_same_instance_is_refused() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("twice", |id, layer| sh_spec(id, layer, "exec sleep 600"));
    let first = inst.spawn();
    assert_eq!(first.phase, Phase::Running);
    let err = nimbus_agent::shim::spawn_shim(std::path::Path::new(SHIM_EXE), &inst.dir)
        .expect_err("second shim");
    assert!(err.to_string().contains("already supervised"), "{err}");
    let status = inst.client().status().expect("first shim still answers");
    assert_eq!((status.phase, status.pid), (Phase::Running, first.pid));
    let last = inst.client().stop(0).expect("stop");
    inst.assert_torn_down(&last);
}

#[test]
fn cleanup_after_a_crashed_shim_removes_everything() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("crash", |id, layer| sh_spec(id, layer, "exec sleep 600"));
    let running = inst.spawn();
    let pid = running.pid.expect("init pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    assert!(wait_until(Duration::from_secs(5), || !is_shim_of(
        running.shim_pid,
        &inst.dir
    )));
    assert!(
        is_in_instance(pid, &inst.id),
        "the container outlives its shim"
    );
    assert!(!mounts_under(&inst.dir).is_empty());

    nimbus_agent::container::cleanup_instance_dir(&inst.dir).expect("cleanup");
    assert!(
        wait_until(Duration::from_secs(5), || !is_in_instance(pid, &inst.id)),
        "container init {pid} survived"
    );
    let state = inst.state().expect("state");
    assert_eq!(state.phase, Phase::Failed);
    assert!(
        state.reason.as_deref().unwrap_or_default().contains("died"),
        "{state:?}"
    );
    inst.assert_torn_down(&running);
}

#[test]
fn sigterm_to_the_shim_stops_the_instance_cleanly() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("term", |id, layer| {
        let mut spec = sh_spec(id, layer, "exec sleep 600");
        spec.stop_grace_ms = 100;
        spec
    });
    let running = inst.spawn();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.shim_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the shim");
    let last = inst.wait_final(Duration::from_secs(20));
    assert_eq!(last.phase, Phase::Exited, "{last:?}");
    inst.assert_torn_down(&last);
}

#[test]
fn layers_stack_lowest_first() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("layers", |id, layer| {
        let base = layer.parent().expect("base").join("layer-top");
        std::fs::create_dir_all(base.join("etc")).expect("top layer");
        std::fs::write(base.join("etc/greeting"), "from the top layer\n").expect("write");
        std::fs::write(layer.join("etc/greeting"), "from the base layer\n").expect("write");
        std::fs::write(layer.join("etc/base-only"), "base\n").expect("write");
        let mut spec = sh_spec(
            id,
            layer,
            "cat /etc/greeting /etc/base-only; rm /etc/greeting; ls /etc",
        );
        spec.layers.push(base);
        spec
    });
    inst.spawn();
    let last = inst.wait_final(Duration::from_secs(20));
    assert_eq!(last.exit_code, Some(0), "{}", inst.console());
    let out = inst.console_lines("stdout");
    assert_eq!(&out[..2], ["from the top layer", "base"]);
    assert!(
        !out.iter().any(|l| l == "greeting"),
        "deleted in the container: {out:?}"
    );
    // Both layers are untouched; the deletion is a whiteout in upper/.
    assert!(inst.base.join("layer-top/etc/greeting").exists());
    assert!(inst.layer.join("etc/greeting").exists());
    inst.assert_torn_down(&last);
}

#[test]
fn missing_executable_fails_with_a_reason() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("noexe", |id, layer| {
        let mut spec = sh_spec(id, layer, "true");
        spec.args = vec!["/bin/no-such-program".into()];
        spec
    });
    let state = inst.spawn();
    assert_eq!(state.phase, Phase::Failed, "{state:?}");
    assert!(
        state
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("/bin/no-such-program"),
        "{state:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || !is_shim_of(
        state.shim_pid,
        &inst.dir
    )));
    assert_eq!(mounts_under(&inst.dir), Vec::<String>::new());
    assert_eq!(cgroup_dirs(&inst.id), Vec::<std::path::PathBuf>::new());
}
