//! A real etcd cluster for end-to-end tests: members of Debian's
//! `etcd-server` on loopback with free ports and data directories in a
//! temporary directory. Dropping it kills every member (also when the test
//! panics) and removes the directory.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

struct Member {
    client_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one answers.
    pub fn start(size: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("nimbus-e2e-{}-{}", std::process::id(), ports[0].0);
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| {
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))
                    .expect("etcd log file");
                let client = format!("http://127.0.0.1:{client_port}");
                let peer = format!("http://127.0.0.1:{peer_port}");
                let child = Command::new("etcd")
                    .args(["--name", &format!("m{i}"), "--data-dir"])
                    .arg(dir.path().join(format!("m{i}")))
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &initial_cluster])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &token])
                    .args(["--max-txn-ops", "1000"])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("clone etcd log"))
                    .stderr(log)
                    .spawn()
                    .expect("start etcd (apt-get install etcd-server, or scripts/deps)");
                Member {
                    client_port,
                    child: Some(child),
                }
            })
            .collect();
        let cluster = EtcdCluster { members, dir };
        wait_until(Duration::from_secs(60), "etcd to answer", || {
            cluster
                .etcdctl(&["endpoint", "health"])
                .status
                .success()
                .then_some(())
        });
        cluster
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `--store` URL naming every member.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }

    /// `etcdctl` (v3 API) against every member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints()))
            .args(args)
            .output()
            .expect("run etcdctl (apt-get install etcd-client)")
    }

    /// Kill member `i` (as a crashed machine would stop), leaving the
    /// others to keep a quorum.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where the members log, for failure messages.
    pub fn log_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
