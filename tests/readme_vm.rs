//! README features of VMs and images, end to end: `--forward` reaches a
//! service in the guest from 127.0.0.1, detaching from the serial console
//! with Ctrl-] leaves the VM running, and zstd root filesystems and raw
//! disks imported through the HTTP API run.

mod common;
mod readme_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{http_raw, wait_until, Cloud};
use readme_support::PtySession;

const T: Duration = Duration::from_secs(60);
/// A TCG boot of the tiny guest on a busy two-core machine.
const BOOT: Duration = Duration::from_secs(180);

fn pid_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_log(cloud: &Cloud, name: &str, needle: &str, timeout: Duration) -> String {
    wait_until(
        timeout,
        &format!("{needle:?} in the logs of {name}"),
        || {
            let logs = cloud.logs(name);
            logs.contains(needle).then_some(logs)
        },
    )
}

/// An HTTP GET from the host: the response, or None.
fn get_from_host(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains("200 OK").then_some(text)
}

#[test]
fn forward_reaches_the_guest_and_ctrl_bracket_detaches_from_the_console() {
    let cloud = Cloud::start();
    cloud.import_tiny();
    let work = tempfile::tempdir().expect("tempdir");
    let user_data = work.path().join("user-data");
    std::fs::write(
        &user_data,
        "#!/bin/sh\nmkdir -p /www\necho forwarded-guest-answers > /www/index.html\n\
         httpd -p 80 -h /www && echo WEB-STARTED\n",
    )
    .expect("write user-data");
    let port = common::free_port();
    cloud.ok(&[
        "instance",
        "run",
        "fw",
        "--kind",
        "vm",
        "--image",
        "tiny",
        "--memory",
        "128MiB",
        "--user-data",
        &user_data.to_string_lossy(),
        "--forward",
        &format!("{port}:80"),
    ]);
    let logs = wait_log(&cloud, "fw", "NIMBUS-TINY: ready", BOOT);
    assert!(logs.contains("WEB-STARTED"), "httpd in the guest: {logs}");
    let v = cloud.instance("fw");
    assert_eq!(
        v["status"]["addresses"].as_array().map_or(0, |a| a.len()),
        0,
        "a VM reached with --forward joins no network: {v}"
    );

    // --forward: host 127.0.0.1:port is the guest's port 80.
    let text = wait_until(T, "the forwarded port to answer", || {
        get_from_host(SocketAddr::from(([127, 0, 0, 1], port)))
    });
    assert!(text.contains("forwarded-guest-answers"), "{text}");

    // The serial console on a terminal; Ctrl-] detaches.
    let qemu = v["status"]["qemu_pid"].as_i64().expect("qemu pid");
    let mut command = cloud.command();
    command.args(["instance", "console", "fw"]);
    let mut term = PtySession::spawn(command);
    let mut answered = false;
    for _ in 0..10 {
        term.type_line("echo CONSOLE-$((6*7))");
        if term.shows("CONSOLE-42", Duration::from_secs(5)) {
            answered = true;
            break;
        }
    }
    assert!(answered, "the console never answered: {:?}", term.seen);
    term.type_bytes(&[0x1d]);
    let status = term
        .exits_within(T)
        .unwrap_or_else(|| panic!("Ctrl-] did not end the console: {:?}", term.seen));
    assert_eq!(status.code(), Some(0), "detaching exits 0: {:?}", term.seen);
    assert!(term.seen.contains("Detached"), "{:?}", term.seen);
    drop(term);
    let v = cloud.instance("fw");
    assert_eq!(v["status"]["phase"], "running", "the VM keeps running: {v}");
    assert_eq!(v["status"]["qemu_pid"], qemu, "the same QEMU: {v}");
    assert!(pid_alive(qemu));
    // The console can be attached again and the service still answers.
    common::Console::attach(&cloud, "fw").roundtrip("echo AGAIN-$((5*5))", "AGAIN-25");
    assert!(get_from_host(SocketAddr::from(([127, 0, 0, 1], port))).is_some());

    cloud.ok(&["instance", "rm", "fw"]);
    wait_until(T, "QEMU to end after rm", || {
        (!pid_alive(qemu)).then_some(())
    });
    assert!(
        get_from_host(SocketAddr::from(([127, 0, 0, 1], port))).is_none(),
        "the forward closes with the VM"
    );
    cloud.remove_everything();
}

/// Uploads `body` to `path` as the CLI does (`application/octet-stream`):
/// the image the API returns.
fn upload(cloud: &Cloud, path: &str, body: &[u8]) -> serde_json::Value {
    let token = cloud.admin_token();
    let (status, text) = http_raw(
        cloud,
        "POST",
        path,
        Some(&token),
        body,
        "application/octet-stream",
    );
    assert_eq!(status, 201, "POST {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
}

#[test]
fn zstd_rootfs_and_raw_disk_imported_through_the_api_run() {
    let cloud = Cloud::start();
    let work = tempfile::tempdir().expect("tempdir");

    // A zstd root filesystem tar, uploaded over HTTP, runs as a container.
    let zst = work.path().join("rootfs.tar.zst");
    let st = Command::new("zstd")
        .args(["-q", "-f", &cloud.starter_tar(), "-o"])
        .arg(&zst)
        .status()
        .expect("zstd");
    assert!(st.success(), "zstd the starter rootfs");
    let bytes = std::fs::read(&zst).expect("read rootfs.tar.zst");
    assert_eq!(bytes[..4], [0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let image = upload(
        &cloud,
        "/v1/projects/default/images?name=zbox&source=rootfs.tar.zst",
        &bytes,
    );
    assert_eq!(image["metadata"]["name"], "zbox", "{image}");
    cloud.ok(&[
        "instance",
        "run",
        "zc",
        "--image",
        "zbox",
        "--",
        "sh",
        "-c",
        "echo zstd-rootfs-runs; exec sleep 600",
    ]);
    cloud.wait_phase("zc", &["running"], T);
    wait_log(&cloud, "zc", "zstd-rootfs-runs", T);
    let out = cloud.ok(&["instance", "exec", "zc", "--", "ls", "/bin/busybox"]);
    assert!(
        out.contains("/bin/busybox"),
        "the image's files are there: {out}"
    );

    // A raw disk, uploaded over HTTP, boots as a VM's disk (with the tiny
    // guest's kernel) and the guest reads what the test wrote on it.
    cloud.import_tiny();
    let marker = b"NIMBUS-RAW-DISK-MARKER";
    let mut raw = vec![0u8; 16 << 20];
    raw[..marker.len()].copy_from_slice(marker);
    let image = upload(
        &cloud,
        "/v1/projects/default/images?kind=disk&name=rawdisk&format=raw&source=disk.raw",
        &raw,
    );
    assert_eq!(image["status"]["disk"]["format"], "raw", "{image}");
    assert_eq!(
        image["status"]["disk"]["virtual_size_bytes"],
        16 << 20,
        "{image}"
    );
    let user_data = work.path().join("user-data");
    std::fs::write(
        &user_data,
        "#!/bin/sh\nfor d in /dev/vd?; do echo \"DISK $d $(head -c 22 $d)\"; done\n",
    )
    .expect("write user-data");
    cloud.ok(&[
        "instance",
        "run",
        "rawvm",
        "--kind",
        "vm",
        "--image",
        "rawdisk",
        "--kernel-image",
        "tiny",
        "--memory",
        "128MiB",
        "--network",
        "none",
        "--user-data",
        &user_data.to_string_lossy(),
    ]);
    let logs = wait_log(&cloud, "rawvm", "NIMBUS-TINY: ready", BOOT);
    assert!(
        logs.lines()
            .map(str::trim_end)
            .any(|l| l.starts_with("DISK /dev/vd") && l.ends_with("NIMBUS-RAW-DISK-MARKER")),
        "the guest reads the raw disk's first bytes: {}",
        common::tail(&logs, 40)
    );
    cloud.remove_everything();
}
