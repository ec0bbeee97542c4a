//! A real etcd cluster for tests: members of Debian's `etcd-server` (`etcd` on the
//! PATH) on loopback, with free ports and data directories in a temporary directory.
//! Dropping the cluster kills every member and removes the directory, also when the
//! test panics.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nimbus_store::{EtcdConfig, EtcdStore};
use tempfile::TempDir;

/// How long a cluster may take to elect a leader and answer.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The etcd binary, if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

fn must_run() -> bool {
    std::env::var("NIMBUS_TESTS_REQUIRE_ROOT").as_deref() == Ok("1")
        // SAFETY: geteuid has no preconditions and cannot fail.
        || unsafe { libc::geteuid() } == 0
}

/// Why the etcd tests cannot run here, when they may be skipped: etcd is missing and
/// the run is neither as root nor under NIMBUS_TESTS_REQUIRE_ROOT=1. Under those, a
/// missing etcd fails the test loudly instead (in [`EtcdCluster::start`]).
pub fn skip_reason() -> Option<String> {
    if etcd_binary().is_none() && !must_run() {
        Some("etcd is not installed (apt-get install etcd-server, or scripts/deps)".into())
    } else {
        None
    }
}

/// True (after printing a SKIPPED line for `test`) when the etcd tests
/// cannot run here (see [`skip_reason`]).
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            true
        }
        None => false,
    }
}

/// At most this many clusters run at once in one test binary, so a loaded machine
/// still elects leaders within the deadlines.
pub async fn cluster_permit() -> tokio::sync::OwnedSemaphorePermit {
    static PERMITS: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    let permits = PERMITS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(2)));
    Arc::clone(permits)
        .acquire_owned()
        .await
        .expect("cluster semaphore is never closed")
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: TempDir,
    token: String,
}

/// `count` free loopback ports, none handed out before in this test
/// binary: a stopped member comes back on its own ports, which another
/// test running beside it must not have been given meanwhile.
pub fn free_ports(count: usize) -> Vec<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let port = listener.local_addr().expect("local address").port();
        if GIVEN.lock().map(|mut g| g.insert(port)).unwrap_or(true) {
            ports.push(port);
        }
    }
    ports
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers reads.
    pub async fn start(size: usize) -> EtcdCluster {
        let Some(binary) = etcd_binary() else {
            panic!("etcd is not installed: the etcd store tests need Debian's etcd-server (apt-get install etcd-server, or scripts/deps)");
        };
        let dir = tempfile::tempdir().expect("create a temp dir for etcd");
        let ports = free_ports(2 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let token = format!("nimbus-test-{}-{}", std::process::id(), ports[0]);
        let mut cluster = EtcdCluster {
            members,
            dir,
            token,
        };
        for i in 0..size {
            cluster.start_member(&binary, i);
        }
        cluster.wait_ready().await;
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_member(&mut self, binary: &Path, i: usize) {
        let initial_cluster = self.initial_cluster();
        let dir = self.dir.path().to_path_buf();
        let member = &mut self.members[i];
        let log = std::fs::File::create(dir.join(format!("{}.log", member.name)))
            .expect("create the member's log file");
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new(binary)
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(dir.join(&member.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--max-txn-ops", "1000"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("start etcd member {}: {err}", member.name));
        member.child = Some(child);
    }

    /// Kills member `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory (after [`kill`](Self::kill)); it
    /// rejoins the cluster and catches up.
    pub fn restart(&mut self, i: usize) {
        let binary = etcd_binary().expect("etcd is installed: the cluster started");
        self.start_member(&binary, i);
    }

    /// A config naming only the given members.
    pub fn config_of(&self, members: &[usize]) -> EtcdConfig {
        EtcdConfig {
            endpoints: members
                .iter()
                .map(|&i| self.members[i].endpoint())
                .collect(),
            prefix: "/nimbus/".into(),
        }
    }

    /// Every member's `host:port`, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints(),
            prefix: "/nimbus/".into(),
        }
    }

    /// Waits until a store over every member answers.
    pub async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            match EtcdStore::connect(&self.config()).await {
                Ok(_) => return,
                Err(err) if started.elapsed() < READY_DEADLINE => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!(
                    "etcd cluster at {:?} not ready within {READY_DEADLINE:?}: {err}; logs in {}",
                    self.endpoints(),
                    self.dir.path().display()
                ),
            }
        }
    }

    /// The index of the current leader, asked of the running members through the
    /// maintenance status API.
    pub async fn leader(&self) -> usize {
        let started = Instant::now();
        loop {
            for member in self.members.iter().filter(|m| m.is_running()) {
                let url = format!("http://{}", member.endpoint());
                let Ok(mut client) = etcd_client::Client::connect([url], None).await else {
                    continue;
                };
                let Ok(status) = client.status().await else {
                    continue;
                };
                let leader_id = status.leader();
                if leader_id == 0 {
                    continue;
                }
                for (i, other) in self.members.iter().enumerate() {
                    let url = format!("http://{}", other.endpoint());
                    if !other.is_running() {
                        continue;
                    }
                    let Ok(mut client) = etcd_client::Client::connect([url], None).await else {
                        continue;
                    };
                    if let Ok(status) = client.status().await {
                        if status.header().map(|h| h.member_id()) == Some(leader_id) {
                            return i;
                        }
                    }
                }
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "no etcd leader found among {:?} within {READY_DEADLINE:?}",
                self.endpoints()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
