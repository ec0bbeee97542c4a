//! `nimbus up --store etcd://...` keeps its state in etcd: projects created
//! through the CLI are etcd keys under /nimbus/, and a daemon restarted on
//! the same etcd still lists them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_until, Cloud};

/// One etcd member on loopback, killed and removed when dropped.
struct Etcd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let (port, peer) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "e2e", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e2e={peer}")])
            .args(["--max-txn-ops", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server, or scripts/deps)");
        let etcd = Etcd {
            child,
            port,
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "etcd to answer", || {
            etcd.etcdctl(&["endpoint", "health"])
                .status
                .success()
                .then_some(())
        });
        etcd
    }

    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", self.port))
            .args(args)
            .output()
            .expect("run etcdctl (apt-get install etcd-client)")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn projects_live_in_etcd_and_survive_a_daemon_restart() {
    let etcd = Etcd::start();
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
