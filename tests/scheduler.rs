//! The scheduler end to end: hosts registered through the API besides the
//! real local one (fake hosts that never run anything: the test checks
//! only where instances are bound), placement by required and preferred
//! labels, spread and pack, anti-affinity, cordon, project quotas, and the
//! message `nimbus instance get` gives when nothing fits.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{http, is_root, wait_until, Cloud};

const FAKE_HOSTS: [(&str, &str); 3] = [
    ("fake-a", r#"{"site":"bj","disk":"ssd"}"#),
    ("fake-b", r#"{"site":"bj"}"#),
    ("fake-c", r#"{"site":"sh"}"#),
];

/// Register (or re-register, which is a heartbeat) the fake hosts.
fn beat(cloud: &Cloud, admin: &str) {
    for (name, labels) in FAKE_HOSTS {
        let body = format!(
            r#"{{"name":"{name}","labels":{labels},"spec":{{}},"status":{{"phase":"ready","cpus":4,"memory_bytes":8589934592,"disk_bytes":107374182400,"architecture":"x86_64","kernel":"fake"}}}}"#
        );
        let (status, resp) = http(cloud, "POST", "/v1/hosts", Some(admin), body.as_bytes());
        assert_eq!(status, 200, "registering {name}: {resp}");
    }
}

fn run(cloud: &Cloud, name: &str, flags: &[&str]) {
    let mut args = vec!["instance", "run", name, "--image", "busybox", "--no-wait"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sleep", "600"]);
    cloud.ok(&args);
}

/// The host the instance is bound to, once it is.
fn bound(cloud: &Cloud, name: &str) -> String {
    wait_until(
        Duration::from_secs(20),
        &format!("{name} to be placed"),
        || {
            cloud.instance(name)["status"]["host"]
                .as_str()
                .map(str::to_string)
        },
    )
}

/// The reason the scheduler gave for leaving the instance pending.
fn unschedulable(cloud: &Cloud, name: &str) -> String {
    common::wait_unschedulable(name, || Some(cloud.instance(name)))
}

#[test]
fn placement_by_labels_spread_anti_affinity_cordon_quota() {
    if !is_root("scheduler end-to-end test") {
        return;
    }
    let cloud = Cloud::start_with(&["--host-label", "site=local"]);
    let admin = cloud.admin_token();

    // The local host carries the label given to `nimbus up`.
    let local = cloud.json(&["host", "get", &cloud.host]).expect("host get");
    assert_eq!(local["metadata"]["labels"]["site"], "local", "{local}");
    assert!(cloud.ok(&["host", "list"]).contains("site=local"));

    beat(&cloud, &admin);

    // Required and preferred labels: site=bj has a and b, only a has ssd.
    run(
        &cloud,
        "w1",
        &["--require", "label:site=bj", "--prefer", "label:disk=ssd"],
    );
    assert_eq!(bound(&cloud, "w1"), "fake-a");
    let shown = cloud.ok(&["instance", "get", "w1"]);
    assert!(shown.contains("placed on host \"fake-a\""), "{shown}");

    // Spread (the default) takes turns between a and b.
    let mut per_host: BTreeMap<String, usize> = BTreeMap::from([("fake-a".into(), 1)]);
    for n in 0..3 {
        let name = format!("s{n}");
        run(
            &cloud,
            &name,
            &["--require", "label:site=bj", "--spread", "host"],
        );
        *per_host.entry(bound(&cloud, &name)).or_default() += 1;
    }
    assert_eq!(per_host.len(), 2, "{per_host:?}");
    assert!(per_host.values().all(|n| *n == 2), "{per_host:?}");

    // Pack: both on the same, fullest, host.
    run(&cloud, "p0", &["--require", "label:site=bj", "--pack"]);
    let first = bound(&cloud, "p0");
    run(&cloud, "p1", &["--require", "label:site=bj", "--pack"]);
    assert_eq!(bound(&cloud, "p1"), first);

    // Anti-affinity: one app=web per host, the third has nowhere to go.
    beat(&cloud, &admin);
    let web = [
        "--label",
        "app=web",
        "--anti-affinity",
        "app=web",
        "--require",
        "label:site=bj",
    ];
    run(&cloud, "web0", &web);
    run(&cloud, "web1", &web);
    assert_ne!(bound(&cloud, "web0"), bound(&cloud, "web1"));
    run(&cloud, "web2", &web);
    let why = unschedulable(&cloud, "web2");
    assert!(why.contains("2 hosts lack label site=bj"), "{why}");
    assert!(
        why.contains("2 hosts run an instance labelled app=web"),
        "{why}"
    );
    let shown = cloud.ok(&["instance", "get", "web2"]);
    assert!(
        shown.contains("2 hosts run an instance labelled app=web"),
        "{shown}"
    );

    // Cordon: nothing new on fake-c until it is uncordoned.
    cloud.ok(&["host", "cordon", "fake-c"]);
    assert!(cloud.ok(&["host", "list"]).contains("ready,cordoned"));
    run(&cloud, "c0", &["--require", "label:site=sh"]);
    let why = unschedulable(&cloud, "c0");
    assert!(why.contains("1 host is cordoned"), "{why}");
    assert!(why.contains("3 hosts lack label site=sh"), "{why}");
    beat(&cloud, &admin);
    cloud.ok(&["host", "uncordon", "fake-c"]);
    assert_eq!(bound(&cloud, "c0"), "fake-c");

    // Nothing has 64 GiB free: every ready host says so.
    run(&cloud, "big", &["--memory", "64GiB"]);
    let why = unschedulable(&cloud, "big");
    assert!(why.contains("4 hosts lack 64GiB of free memory"), "{why}");

    // Quotas refuse at once, with the limit and how to raise it.
    let held = cloud.json(&["instance", "list"]).expect("list")["items"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    cloud.ok(&["quota", "set", "--instances", &held.to_string()]);
    let out = cloud.nimbus(&[
        "instance",
        "run",
        "q0",
        "--image",
        "busybox",
        "--no-wait",
        "--",
        "sleep",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "quota admitted q0");
    assert!(
        err.contains(&format!("may hold {held} instance(s) and holds {held}")),
        "{err}"
    );
    assert!(err.contains("nimbus quota set --instances"), "{err}");
    cloud.ok(&["quota", "set", "--instances", "none", "--memory", "1GiB"]);
    let out = cloud.nimbus(&[
        "instance",
        "run",
        "q1",
        "--image",
        "busybox",
        "--memory",
        "2GiB",
        "--no-wait",
        "--",
        "sleep",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "memory quota admitted q1");
    assert!(err.contains("may use 1GiB of memory"), "{err}");
    let q = cloud.json(&["quota", "get"]).expect("quota get");
    assert_eq!(q["used"]["instances"], held, "{q}");
    assert_eq!(q["quota"]["memory_bytes"], 1u64 << 30, "{q}");
    cloud.ok(&["quota", "set", "--memory", "none"]);

    // Removing a host: refused while its agent heartbeats, unless forced.
    let out = cloud.nimbus(&["host", "rm", "fake-c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a ready host was removed");
    assert!(err.contains("nimbus host rm fake-c --force"), "{err}");
    assert!(cloud.ok(&["host", "list"]).contains("fake-c"));

    // What was being deleted on a removed host goes (no agent is left to
    // finish it); what runs there waits to be placed again.
    let w1_host = bound(&cloud, "w1");
    cloud.ok(&["instance", "rm", "w1", "--no-wait"]);
    assert_eq!(cloud.instance("w1")["status"]["phase"], "deleting");
    let removed = cloud
        .json(&["host", "rm", &w1_host, "--force"])
        .expect("host rm");
    assert_eq!(
        removed["finalized"],
        serde_json::json!(["default/w1"]),
        "{removed}"
    );
    assert!(
        cloud.json(&["instance", "get", "w1"]).is_err(),
        "w1 is still there"
    );
    let released = removed["released"].as_array().map(Vec::len).unwrap_or(0);
    assert!(released >= 2, "{removed}");
    for (name, _) in FAKE_HOSTS.iter().filter(|(n, _)| *n != w1_host) {
        let shown = cloud.ok(&["host", "rm", name, "--force"]);
        assert!(shown.contains(&format!("host {name:?} removed")), "{shown}");
    }
    assert!(!cloud.ok(&["host", "list"]).contains("fake-"));
    // c0 needs site=sh, which only fake-c had: released, it stays unbound.
    let c0 = cloud.instance("c0");
    assert!(c0["status"]["host"].is_null(), "{c0}");
    let why = unschedulable(&cloud, "c0");
    assert!(why.contains("1 host lacks label site=sh"), "{why}");

    cloud.remove_everything();
}
