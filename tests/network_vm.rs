//! A VM on a Nimbus network: the tiny test guest (TCG) gets its address
//! from the router's DHCP, reaches a container's web server and serves
//! one the container reaches; its port and the router go when the
//! instances are removed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, Cloud};

const T: Duration = Duration::from_secs(60);

fn tiny_guest() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(repo.join("scripts/build-guests"))
        .arg("tiny")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/build-guests");
    assert!(
        out.status.success(),
        "the tiny test guest is needed: scripts/build-guests tiny failed:\n{}",
        common::tail(&String::from_utf8_lossy(&out.stderr), 20)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    )
}

/// Types `input` on the VM's console until `expect` shows up.
fn console_roundtrip(cloud: &Cloud, name: &str, input: &str, expect: &str) -> String {
    let mut child = cloud
        .command()
        .args(["instance", "console", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nimbus instance console");
    let stdout = child.stdout.take().expect("stdout");
    let mut stdin = child.stdin.take().expect("stdin");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if tx.send(std::mem::take(&mut line)).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    for _ in 0..15 {
        let _ = stdin.write_all(format!("{input}\n").as_bytes());
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push_str(&l);
            }
            if seen.contains(expect) {
                let _ = child.kill();
                let _ = child.wait();
                return seen;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the console never showed {expect:?}:\n{seen}");
}

#[test]
fn vm_gets_its_address_and_reaches_a_container() {
    let cloud = Cloud::start();
    let dir = tiny_guest();
    cloud.ok(&[
        "image",
        "import-kernel",
        &dir.join("vmlinux").to_string_lossy(),
        "--initrd",
        &dir.join("tiny-initrd.img").to_string_lossy(),
        "--name",
        "tiny",
    ]);
    cloud.ok(&["network", "create", "mixed", "--subnet", "10.70.0.0/24"]);
    cloud.ok(&[
        "instance",
        "run",
        "web",
        "--image",
        "busybox",
        "--network",
        "mixed",
        "--",
        "sh",
        "-c",
        "mkdir -p /www && echo from-container > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    cloud.wait_phase("web", &["running"], T);
    cloud.ok(&[
        "instance",
        "run",
        "vm1",
        "--kind",
        "vm",
        "--image",
        "tiny",
        "--memory",
        "128MiB",
        "--network",
        "mixed",
    ]);
    let vm = cloud.instance("vm1");
    let vm_ip = vm["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("vm address")
        .to_string();
    let web_ip = cloud.instance("web")["status"]["addresses"][0]["ip"]
        .as_str()
        .expect("web address")
        .to_string();
    // The guest's DHCP client prints its lease on the console.
    let lease = format!("NIMBUS-TINY: dhcp eth0 {vm_ip}/24");
    wait_until(Duration::from_secs(180), "the VM's DHCP lease", || {
        cloud.logs("vm1").contains(&lease).then_some(())
    });
    // The VM reaches the container's web server.
    let seen = console_roundtrip(
        &cloud,
        "vm1",
        &format!("wget -q -O - http://{web_ip}/"),
        "from-container",
    );
    assert!(seen.contains("from-container"));
    // And the container reaches a web server in the VM (the marker is
    // computed by the guest's shell, so the echoed input never matches).
    console_roundtrip(
        &cloud,
        "vm1",
        "mkdir -p /w && echo from-vm > /w/index.html && httpd -p 8080 -h /w && echo HTTPD-$((1+1))UP",
        "HTTPD-2UP",
    );
    let body = wait_until(T, "the container to reach the VM", || {
        let out = cloud.nimbus(&[
            "instance",
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {vm_ip} 8080"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("from-vm").then_some(text)
    });
    assert!(body.contains("from-vm"), "{body}");
    cloud.ok(&["instance", "rm", "vm1"]);
    cloud.ok(&["instance", "rm", "web"]);
    // The router namespace (with the VM's tap in it) went with the instances.
    let net_id = cloud.json(&["network", "get", "mixed"]).expect("net")["metadata"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_until(T, "the router to go", || {
        (!Path::new(&format!("/run/nimbus/netns/nr-{net_id}")).exists()).then_some(())
    });
}
