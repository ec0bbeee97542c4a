//! End-to-end: processes started in a running container through the shim.

mod container_support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use container_support::*;
use nimbus_agent::shim::{encode_frame, frame, read_frame, ExecRequest, Phase, ShimClient};

struct ExecOutput {
    stdout: String,
    stderr: String,
    code: i32,
}

fn collect(mut stream: UnixStream) -> ExecOutput {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (mut stdout, mut stderr, mut code) = (Vec::new(), Vec::new(), None);
    while let Some((kind, payload)) = read_frame(&mut stream).expect("frame") {
        match kind {
            frame::STDOUT => stdout.extend(payload),
            frame::STDERR => stderr.extend(payload),
            frame::EXIT => {
                code = Some(i32::from_be_bytes(
                    payload.try_into().expect("4-byte exit code"),
                ));
            }
            other => panic!("unexpected frame kind {other}"),
        }
    }
    ExecOutput {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        code: code.expect("an exit frame ends the stream"),
    }
}

fn exec(client: &ShimClient, args: &[&str], stdin: Option<&[u8]>) -> ExecOutput {
    let req = ExecRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let (_pid, mut stream) = client.exec(&req).expect("exec");
    // A process that does not read stdin may be gone (and the stream closed by the
    // shim) before these arrive, so write errors are expected and ignored.
    if let Some(input) = stdin {
        let _ = stream.write_all(&encode_frame(frame::STDIN, input));
    }
    let _ = stream.write_all(&encode_frame(frame::STDIN_EOF, &[]));
    collect(stream)
}

fn running_instance(name: &str) -> Instance {
    let inst = Instance::new(name, |id, layer| {
        sh_spec(id, layer, "echo up; exec sleep 600")
    });
    let state = inst.spawn();
    assert_eq!(state.phase, Phase::Running, "{state:?}");
    inst
}

#[test]
fn exec_runs_inside_the_container() {
    if !is_root() {
        return;
    }
    let inst = running_instance("exec");
    let client = inst.client();
    let spec = inst.spec();

    // The workload is `sh -c "echo up; exec sleep 600"`: running is
    // reported once `sh` runs, and on a busy machine it may not have
    // exec'd `sleep` yet, so wait for that rather than race it.
    let pid1_command = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some("1"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ps = loop {
        let ps = exec(&client, &["ps", "-o", "pid,comm"], None);
        assert_eq!(ps.code, 0, "{}", ps.stderr);
        if pid1_command(&ps.stdout).as_deref() != Some("sh") || std::time::Instant::now() > deadline
        {
            break ps;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        pid1_command(&ps.stdout).as_deref(),
        Some("sleep"),
        "{}",
        ps.stdout
    );
    assert!(
        ps.stdout.lines().count() <= 4,
        "host processes visible:\n{}",
        ps.stdout
    );

    assert_eq!(exec(&client, &["sh", "-c", "exit 7"], None).code, 7);

    let split = exec(&client, &["sh", "-c", "echo out; echo err >&2"], None);
    assert_eq!(
        (split.stdout.as_str(), split.stderr.as_str(), split.code),
        ("out\n", "err\n", 0)
    );

    let cat = exec(&client, &["cat"], Some(b"hello through stdin\n"));
    assert_eq!(cat.stdout, "hello through stdin\n");

    // Same confinement as the init: user namespace, seccomp, capabilities, hostname.
    let probe = exec(
        &client,
        &["sh", "-c", "cat /proc/self/uid_map; id -u; grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status; hostname; mount -t tmpfs x /mnt || echo mount-denied"],
        None,
    );
    let lines: Vec<String> = probe
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines[0],
        format!("0 {} {}", spec.id_map.host_id, spec.id_map.size),
        "{lines:?}"
    );
    assert_eq!(lines[1], "0");
    assert!(lines.contains(&"Seccomp: 2".to_string()), "{lines:?}");
    assert!(lines.contains(&"NoNewPrivs: 1".to_string()), "{lines:?}");
    assert!(
        lines.contains(&"CapEff: 00000000a80425fb".to_string()),
        "{lines:?}"
    );
    assert!(lines.contains(&spec.hostname), "{lines:?}");
    assert!(lines.contains(&"mount-denied".to_string()), "{lines:?}");

    // From the host, the exec'd process runs as the instance's host id, in its cgroup.
    let req = ExecRequest {
        args: vec!["sleep".into(), "30".into()],
        ..Default::default()
    };
    let (pid, stream) = client.exec(&req).expect("exec sleep");
    assert_eq!(host_uids(pid), vec![spec.id_map.host_id; 4]);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        cgroup.contains(&format!(":pids:/nimbus/{}", inst.id)),
        "{cgroup}"
    );
    drop(stream);

    let missing = client.exec(&ExecRequest {
        args: vec!["no-such-tool".into()],
        ..Default::default()
    });
    let err = missing
        .expect_err("exec of a missing program fails")
        .to_string();
    assert!(
        err.contains("no-such-tool") && err.contains("not found"),
        "{err}"
    );

    let last = client.stop(0).expect("stop");
    inst.assert_torn_down(&last);
}

#[test]
fn exec_with_a_tty() {
    if !is_root() {
        return;
    }
    let inst = running_instance("tty");
    let client = inst.client();
    let req = ExecRequest {
        args: vec![
            "sh".into(),
            "-c".into(),
            "test -t 0 && echo is-a-tty; echo tty=$(tty); stty size; read line; echo got-$line"
                .into(),
        ],
        tty: true,
        rows: Some(33),
        cols: Some(101),
        ..Default::default()
    };
    let (_pid, mut stream) = client.exec(&req).expect("exec with tty");
    stream
        .write_all(&encode_frame(frame::STDIN, b"typed\n"))
        .expect("type");
    let out = collect(stream);
    assert_eq!(out.code, 0);
    assert!(out.stderr.is_empty(), "a tty merges stderr into stdout");
    let text = out.stdout.replace('\r', "");
    assert!(text.contains("is-a-tty\n"), "{text:?}");
    // The container's own devpts, not the host's (whose pts the container
    // cannot name: `tty` said "not a tty").
    assert!(text.contains("tty=/dev/pts/"), "{text:?}");
    assert!(text.contains("33 101\n"), "{text:?}");
    assert!(text.contains("got-typed\n"), "{text:?}");

    // Resizing reaches the terminal.
    let req = ExecRequest {
        args: vec!["sh".into(), "-c".into(), "read x; stty size".into()],
        tty: true,
        ..Default::default()
    };
    let (_pid, mut stream) = client.exec(&req).expect("exec with tty");
    let mut size = Vec::new();
    size.extend(50u16.to_be_bytes());
    size.extend(132u16.to_be_bytes());
    stream
        .write_all(&encode_frame(frame::RESIZE, &size))
        .expect("resize");
    stream
        .write_all(&encode_frame(frame::STDIN, b"go\n"))
        .expect("type");
    let out = collect(stream);
    assert!(
        out.stdout.replace('\r', "").contains("50 132\n"),
        "{:?}",
        out.stdout
    );

    let last = client.stop(0).expect("stop");
    inst.assert_torn_down(&last);
}

#[test]
fn exec_is_refused_when_nothing_runs() {
    if !is_root() {
        return;
    }
    let inst = Instance::new("noexec", |id, layer| {
        let mut spec = sh_spec(id, layer, "exit 1");
        spec.restart.policy = nimbus_agent::container::RestartMode::Always;
        spec.restart.max_retries = Some(1000);
        spec
    });
    inst.spawn();
    let state = inst.wait_for("back-off", Duration::from_secs(20), |s| {
        s.phase == Phase::Backoff && s.restart_count >= 3
    });
    assert!(state.pid.is_none());
    // The back-off is long enough by now (>= 800 ms) to catch it.
    let refused = inst.client().exec(&ExecRequest {
        args: vec!["true".into()],
        ..Default::default()
    });
    let err = refused.expect_err("exec while in back-off").to_string();
    assert!(err.contains("not running"), "{err}");
}

#[tokio::test]
async fn async_client_follows_the_instance() {
    if !is_root() {
        return;
    }
    let inst = running_instance("async");
    let client = inst.client();
    assert_eq!(
        client.status_async().await.expect("status").phase,
        Phase::Running
    );
    let mut events = client.subscribe_async().await.expect("subscribe");
    let first = events.next().await.expect("first state").expect("state");
    assert_eq!(first.phase, Phase::Running);

    let req = ExecRequest {
        args: vec!["echo".into(), "async".into()],
        ..Default::default()
    };
    let (_pid, mut stream) = client.exec_async(&req).await.expect("exec");
    let mut out = Vec::new();
    let mut code = None;
    while let Some((kind, payload)) = nimbus_agent::shim::read_frame_async(&mut stream)
        .await
        .expect("frame")
    {
        match kind {
            frame::STDOUT => out.extend(payload),
            frame::EXIT => code = Some(i32::from_be_bytes(payload.try_into().expect("code"))),
            _ => {}
        }
    }
    assert_eq!((out.as_slice(), code), (&b"async\n"[..], Some(0)));

    let stopper = client.clone();
    let stop = tokio::spawn(async move { stopper.stop_async(0).await });
    let mut phases = Vec::new();
    while let Some(state) = events.next().await {
        phases.push(state.expect("state").phase);
    }
    assert_eq!(phases.first(), Some(&Phase::Stopping), "{phases:?}");
    assert_eq!(phases.last(), Some(&Phase::Exited), "{phases:?}");
    let last = stop.await.expect("join").expect("stop");
    assert_eq!(last.phase, Phase::Exited);
    inst.assert_torn_down(&last);
}
