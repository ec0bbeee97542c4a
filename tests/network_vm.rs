//! A VM on a Nimbus network: the tiny test guest (TCG) gets its address
//! from the router's DHCP, reaches a container's web server and serves
//! one the container reaches; its port and the router go when the
//! instances are removed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_until, Cloud};

const T: Duration = Duration::from_secs(60);

#[test]
fn vm_gets_its_address_and_reaches_a_container() {
    let cloud = Cloud::start();
    cloud.import_tiny();
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
    common::Console::attach(&cloud, "vm1")
        .roundtrip(&format!("wget -q -O - http://{web_ip}/"), "from-container");
    // And the container reaches a web server in the VM (the marker is
    // computed by the guest's shell, so the echoed input never matches).
    common::Console::attach(&cloud, "vm1").roundtrip(
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
