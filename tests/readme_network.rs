//! README network features with real traffic, each allowed path shown
//! before the blocked one: `--allow-from-group`, a CIDR-limited rule,
//! stateful replies for an instance whose group blocks inbound, and a
//! published port answering on a host address other than 127.0.0.1.

mod common;
mod readme_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::{wait_until, Cloud};
use readme_support::{ExtraHostAddress, NetworkGuard};

const T: Duration = Duration::from_secs(60);

/// busybox httpd answering `body` on port 80.
fn web(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

fn run(cloud: &Cloud, name: &str, extra: &[&str], script: &str) {
    let mut args = vec!["instance", "run", name, "--image", "busybox"];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", script]);
    cloud.ok(&args);
    cloud.wait_phase(name, &["running"], T);
}

fn ip_of(cloud: &Cloud, name: &str) -> Ipv4Addr {
    let v = cloud.instance(name);
    v["status"]["addresses"][0]["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("instance {name} has no address: {v}"))
}

/// An HTTP GET from inside instance `from` to `host`:80: the body, or None
/// when nothing answered within 2 s.
fn get_from(cloud: &Cloud, from: &str, host: &str) -> Option<String> {
    let out = cloud.nimbus(&[
        "instance",
        "exec",
        from,
        "--",
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} 80; echo NC-RAN"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // A refusal must come from the network, not from exec failing.
    assert!(
        text.contains("NC-RAN"),
        "exec in {from} did not run nc ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.contains("200 OK").then_some(text)
}

/// The first GET from `from` to `to` that answers, within the deadline.
fn reaches(cloud: &Cloud, from: &str, to: &str, body: &str) {
    let text = wait_until(T, &format!("{from} to reach {to}:80"), || {
        get_from(cloud, from, to)
    });
    assert!(text.contains(body), "{from} → {to}: {text}");
}

/// Three GETs from `from` to `to`, none answered.
fn is_refused(cloud: &Cloud, from: &str, to: &str) {
    for _ in 0..3 {
        if let Some(text) = get_from(cloud, from, to) {
            panic!("{from} reached {to}:80, which its rules refuse: {text}");
        }
    }
}

/// The longest prefix holding `inside` but not `outside`: a real CIDR
/// block, wider than one address whenever the two differ past the first
/// bit of the host part.
fn cidr_between(inside: Ipv4Addr, outside: Ipv4Addr) -> String {
    let common = (u32::from(inside) ^ u32::from(outside)).leading_zeros();
    assert!(common < 32, "two instances share {inside}");
    let prefix = common + 1;
    let mask = u32::MAX << (32 - prefix);
    format!("{}/{prefix}", Ipv4Addr::from(u32::from(inside) & mask))
}

#[test]
fn group_cidr_and_stateful_rules_with_real_traffic() {
    let cloud = Cloud::start();
    let network = NetworkGuard::create(&cloud, "rules", "10.40.0.0/24");
    let net = ["--network", "rules"];
    let with_group = |group: &'static str| [&net[..], &["--secgroup", group]].concat();

    // `db` lets in members of `app` (--allow-from-group); `member` is in
    // `app`, which has no rules of its own, so nothing may come in to it;
    // `plain` has no group; `guarded`'s group gets a CIDR-limited rule.
    cloud.ok(&["secgroup", "create", "app"]);
    cloud.ok(&["secgroup", "create", "db", "--allow-from-group", "app"]);
    cloud.ok(&["secgroup", "create", "cidr"]);
    run(&cloud, "db", &with_group("db"), &web("db-answers"));
    run(&cloud, "member", &with_group("app"), &web("member-answers"));
    run(&cloud, "plain", &net, &web("plain-answers"));
    run(
        &cloud,
        "guarded",
        &with_group("cidr"),
        &web("guarded-answers"),
    );
    let router = network.router_netns();
    assert!(
        router.exists(),
        "{} is the network's router",
        router.display()
    );
    let inside = ip_of(&cloud, "plain");
    let outside = ip_of(&cloud, "member");
    let block = cidr_between(inside, outside);
    cloud.ok(&["secgroup", "allow", "cidr", &format!("tcp:80:{block}")]);
    let group = cloud
        .json(&["secgroup", "get", "cidr"])
        .expect("secgroup get");
    assert!(
        group.to_string().contains(&block),
        "the rule keeps its source block {block}: {group}"
    );

    // Allowed paths first: each client is shown to connect.
    // --allow-from-group: a member of `app` reaches `db`.
    reaches(&cloud, "member", "db", "db-answers");
    // The CIDR rule: `plain`, inside the block, reaches `guarded`.
    reaches(&cloud, "plain", "guarded", "guarded-answers");
    // Stateful: `member`'s own outgoing connection gets its replies,
    // though its group lets nothing in.
    reaches(&cloud, "member", "plain", "plain-answers");

    // Then the blocked ones, from the same clients.
    // Not a member of `app`: refused by `db`.
    is_refused(&cloud, "plain", "db");
    // Outside the block: refused by `guarded`.
    is_refused(&cloud, "member", "guarded");
    // Nothing comes in to `member` unasked.
    is_refused(&cloud, "plain", "member");

    cloud.remove_everything();
    cloud.ok(&["network", "rm", "rules"]);
    assert!(!router.exists(), "network rm removes {}", router.display());
}

/// An HTTP GET from the host to `addr`: the body, or None.
fn get_from_host(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains("200 OK").then_some(text)
}

#[test]
fn published_ports_answer_on_other_host_addresses() {
    let extra = ExtraHostAddress::add();
    let cloud = Cloud::start();
    run(&cloud, "site", &[], &web("site-answers"));
    let port = common::free_port();
    cloud.ok(&[
        "address",
        "publish",
        "site",
        "--port",
        &format!("{port}:80"),
    ]);

    let loopback = SocketAddr::from(([127, 0, 0, 1], port));
    let text = get_from_host(loopback).expect("the published port answers on 127.0.0.1");
    assert!(text.contains("site-answers"), "{text}");
    // Another host address: the test's dummy link.
    let other = SocketAddr::from((extra.addr, port));
    let text = wait_until(T, &format!("the published port on {other}"), || {
        get_from_host(other)
    });
    assert!(text.contains("site-answers"), "{text}");
    // Another loopback address.
    let second_loopback = SocketAddr::from(([127, 0, 0, 2], port));
    let text = wait_until(
        T,
        &format!("the published port on {second_loopback}"),
        || get_from_host(second_loopback),
    );
    assert!(text.contains("site-answers"), "{text}");

    // Unpublished: no address answers any more.
    let name = cloud.json(&["address", "list"]).expect("address list")["items"][0]["metadata"]
        ["name"]
        .as_str()
        .expect("published port name")
        .to_string();
    cloud.ok(&["address", "rm", &name]);
    for addr in [loopback, other, second_loopback] {
        wait_until(T, &format!("{addr} to stop answering"), || {
            get_from_host(addr).is_none().then_some(())
        });
    }
    cloud.remove_everything();
    drop(extra);
}
