//! Workloads outlive the daemon: `kill -9` of `nimbus up` leaves
//! containers running; the next start re-adopts them and records exits
//! that happened meanwhile.

mod common;

use std::time::Duration;

use common::Cloud;

const T: Duration = Duration::from_secs(60);

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn containers_survive_daemon_kill_and_are_readopted() {
    let mut cloud = Cloud::start();
    cloud.ok(&[
        "instance", "run", "keeper", "--image", "busybox", "--", "sleep", "600",
    ]);
    cloud.ok(&[
        "instance",
        "run",
        "quitter",
        "--image",
        "busybox",
        "--",
        "sh",
        "-c",
        // Exits (5) only when told, while the daemon is down: a timer
        // could fire before the kill on a slow machine.
        "trap 'exit 5' USR1; echo armed; sleep 600 & wait",
    ]);
    cloud.ok(&[
        "instance",
        "run",
        "phoenix",
        "--image",
        "busybox",
        "--restart",
        "always",
        "--",
        "sleep",
        "600",
    ]);
    let keeper = cloud.wait_phase("keeper", &["running"], T);
    let pid = keeper["status"]["pid"].as_i64().unwrap();
    let quitter = cloud.wait_phase("quitter", &["running"], T);
    let quitter_pid = quitter["status"]["pid"].as_i64().unwrap();
    let phoenix = cloud.wait_phase("phoenix", &["running"], T);
    let phoenix_pid = phoenix["status"]["pid"].as_i64().unwrap();
    let phoenix_dir = cloud
        .data_dir()
        .join("instances")
        .join(phoenix["metadata"]["id"].as_str().unwrap());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(phoenix_dir.join("state.json")).unwrap()).unwrap();
    let phoenix_shim = state["shim_pid"].as_i64().unwrap() as i32;

    // All three are seen running, their processes alive, before the kill;
    // quitter's trap is set.
    common::wait_until(T, "quitter's trap to be set", || {
        cloud.logs("quitter").contains("armed").then_some(())
    });
    for (name, p) in [
        ("keeper", pid),
        ("quitter", quitter_pid),
        ("phoenix", phoenix_pid),
    ] {
        assert!(
            alive(p),
            "{name} ({p}) must be alive before the daemon is killed"
        );
    }
    cloud.kill_daemon();
    assert!(
        alive(pid),
        "the container must survive kill -9 of the daemon"
    );
    // As after a crash: phoenix loses its supervisor and its process.
    // SAFETY: signalling processes this test started.
    unsafe {
        libc::kill(phoenix_shim, libc::SIGKILL);
        libc::kill(phoenix_pid as i32, libc::SIGKILL);
    }
    // quitter exits while nobody watches.
    // SAFETY: signalling a process this test started.
    unsafe {
        libc::kill(quitter_pid as i32, libc::SIGUSR1);
    }
    common::wait_until(T, "quitter to exit", || (!alive(quitter_pid)).then_some(()));
    assert!(alive(pid));

    cloud.spawn_daemon();
    cloud.wait_ready();
    let v = cloud.wait_phase("quitter", &["exited"], T);
    assert_eq!(
        v["status"]["exit_code"], 5,
        "the exit during the downtime is recorded: {v}"
    );
    let v = cloud.wait_phase("keeper", &["running"], T);
    assert_eq!(
        v["status"]["pid"].as_i64(),
        Some(pid),
        "same process, re-adopted"
    );
    // phoenix's restart policy brings it back with a new process.
    let v = common::wait_until(T, "phoenix to run again", || {
        let v = cloud.instance("phoenix");
        (v["status"]["phase"] == "running" && v["status"]["pid"].as_i64()? != phoenix_pid)
            .then_some(v)
    });
    assert!(alive(v["status"]["pid"].as_i64().unwrap()));

    // The re-adopted instance can still be controlled.
    let ps = cloud.ok(&["instance", "exec", "keeper", "--", "ps"]);
    assert!(ps.contains("sleep 600"));
    cloud.ok(&["instance", "stop", "keeper"]);
    assert!(!alive(pid));
    cloud.remove_everything();
}

#[test]
fn daemon_killed_mid_import_leaves_nothing_behind() {
    use std::io::Write;
    let mut cloud = Cloud::start();
    let images = cloud.data_dir().join("images");
    let listing = |dir: &std::path::Path| -> Vec<String> {
        let mut out: Vec<String> = ["blobs/sha256", "layers", "tmp"]
            .iter()
            .flat_map(|sub| {
                std::fs::read_dir(dir.join(sub))
                    .map(|d| {
                        d.flatten()
                            .map(|e| format!("{sub}/{}", e.file_name().to_string_lossy()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        out.sort();
        out
    };
    let before = listing(&images);
    // Start uploading a 64 MiB root filesystem and stop a quarter of the way.
    let total: usize = 64 << 20;
    let mut s = std::os::unix::net::UnixStream::connect(cloud.data_dir().join("api.sock")).unwrap();
    write!(
        s,
        "POST /v1/projects/default/images?name=big HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\nAuthorization: Bearer {}\r\n\r\n",
        cloud.admin_token()
    )
    .unwrap();
    let mut header = [0u8; 512];
    let name = b"big.bin";
    header[..name.len()].copy_from_slice(name);
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{:011o}", total - 1024).as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| *b as u32).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    s.write_all(&header).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..16 {
        s.write_all(&chunk).unwrap();
    }
    // The importer is now writing into the store's staging area.
    common::wait_until(T, "the import to be under way", || {
        std::fs::read_dir(images.join("tmp"))
            .ok()?
            .next()
            .map(|_| ())
    });
    cloud.kill_daemon();
    drop(s);

    cloud.spawn_daemon();
    cloud.wait_ready();
    assert_eq!(
        listing(&images),
        before,
        "a killed import leaves nothing behind"
    );
    assert!(!cloud.nimbus(&["image", "get", "big"]).status.success());
}
