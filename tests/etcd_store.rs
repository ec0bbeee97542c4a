//! `nimbus up --store etcd://...` keeps its state in etcd: projects created
//! through the CLI are etcd keys under /nimbus/, and a daemon restarted on
//! the same etcd still lists them.

mod common;

use std::process::{Command, Stdio};

use common::etcd::EtcdCluster;
use common::{free_port, Cloud};

#[test]
fn projects_live_in_etcd_and_survive_a_daemon_restart() {
    let etcd = EtcdCluster::start(1);
    let mut cloud = Cloud::start_with(&["--store", &etcd.url()]);
    cloud.ok(&["project", "create", "ops"]);
    let listed = cloud.ok(&["project", "list"]);
    assert!(listed.contains("ops"), "project list shows ops:\n{listed}");

    let stored = etcd.etcdctl(&["get", "--prefix", "/nimbus/", "--keys-only"]);
    let keys = String::from_utf8_lossy(&stored.stdout);
    assert!(
        keys.lines().any(|key| key.ends_with("/projects/ops")),
        "project ops is an etcd key under /nimbus/:\n{keys}"
    );
    assert!(
        !cloud.data_dir().join("store.db").exists(),
        "no SQLite store is made when the store is etcd"
    );

    cloud.kill_daemon();
    cloud.spawn_daemon();
    cloud.wait_ready();
    let listed = cloud.ok(&["project", "list"]);
    assert!(
        listed.contains("ops"),
        "ops is still listed after a restart:\n{listed}"
    );
}

#[test]
fn server_refuses_an_etcd_that_is_not_running_and_says_what_to_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("127.0.0.1:{}", free_port());
    let out = Command::new(common::NIMBUS)
        .args([
            "server",
            "--no-tls",
            "--store",
            &format!("etcd://{endpoint}"),
        ])
        .env("NIMBUS_DATA_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run nimbus server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "server must not start without its etcd"
    );
    assert!(
        stderr.contains(&endpoint),
        "error names the endpoint: {stderr}"
    );
    assert!(
        stderr.contains("etcdctl"),
        "error says what to check: {stderr}"
    );
}
