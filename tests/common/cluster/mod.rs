//! Several hosts on one machine: one `nimbus server` and N `nimbus agent`s,
//! each host as a real one would be.
//!
//! - The data centre is a network namespace holding a bridge (`dc0`,
//!   10.77.0.1/24) and the server, listening on 10.77.0.1. Clusters side by
//!   side each have their own, so their addresses never meet.
//! - Each host is an agent in its own network namespace, joined to the
//!   bridge by a veth (`eth0`, 10.77.0.1N/24), with its own data directory,
//!   labels and host name, joined with a one-time token.
//! - Each agent also has its own mount and cgroup namespaces, rooted at its
//!   own cgroup (`/nimbus-cluster-<tag>/<host>` in every hierarchy): there it
//!   sees a sysfs of its network namespace, the cgroup hierarchies rooted at
//!   its cgroup and a private `/run/nimbus`. So the `nimbus/<id>` cgroups
//!   and `/run/nimbus/netns/` mounts of one instance on two hosts (the
//!   stale copy and the moved one) never collide, as on two machines.
//!
//! Cutting a host off takes its veth down on the bridge side. Dropping the
//! cluster stops every process left in its cgroups, removes the cgroups
//! and deletes the namespaces (which takes the bridge and veths along),
//! also after a panic.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cgroup_mounts, tail, wait_until_or, NIMBUS};

mod cutoff;
mod plumbing;
mod teardown;

// Re-exported for the tests; not every test binary uses each.
#[allow(unused_imports)]
pub use cutoff::{pid_alive, Moved};
#[allow(unused_imports)]
pub use plumbing::mount_into;
use plumbing::{agent_script, cgroup_mount_lines, ip, log_file, make_cgroups};

/// The data centre's subnet prefix; the server is `.1`, host i is `.1i`.
const SUBNET: &str = "10.77.0";
const SERVER_PORT: u16 = 7443;

/// One host of a [`Cluster`] to be.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub labels: Vec<String>,
}

impl HostSpec {
    pub fn new(name: &str, labels: &[&str]) -> HostSpec {
        HostSpec {
            name: name.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
        }
    }
}

/// A running agent and where it lives.
pub struct ClusterHost {
    pub name: String,
    pub ip: String,
    /// Its network namespace, under `/run/netns/`.
    pub netns: String,
    pub data_dir: PathBuf,
    /// Its cgroup, relative to each hierarchy's root.
    pub cgroup: String,
    /// The veth's end on the bridge, in the data centre's namespace.
    bridge_port: String,
    agent: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    tag: String,
    /// The data centre's network namespace (bridge and server).
    pub dc_netns: String,
    /// The cluster's cgroup, relative to each hierarchy's root.
    pub cgroup: String,
    server: Option<Child>,
    pub hosts: Vec<ClusterHost>,
    fence_after: String,
    netns_made: Vec<String>,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// A server and one agent per spec, all joined and ready. `fence_after`
    /// is each agent's `--fence-after` (the server moves a fenced host's
    /// instances 4 s after it).
    pub fn start(specs: &[HostSpec], fence_after: &str) -> Cluster {
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("nimbus-cluster-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let mut cluster = Cluster {
            dir,
            dc_netns: format!("nimbus-dc-{tag}"),
            cgroup: format!("/nimbus-cluster-{tag}"),
            tag,
            server: None,
            hosts: Vec::new(),
            fence_after: fence_after.to_string(),
            netns_made: Vec::new(),
        };
        cluster.make_data_centre();
        cluster.start_server();
        for (i, spec) in specs.iter().enumerate() {
            cluster.add_host(i + 1, spec);
        }
        for h in 0..cluster.hosts.len() {
            let name = cluster.hosts[h].name.clone();
            cluster.wait_host_phase(&name, "ready", Duration::from_secs(60));
        }
        cluster
    }

    fn add_netns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.netns_made.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    fn make_data_centre(&mut self) {
        let dc = self.dc_netns.clone();
        self.add_netns(&dc);
        ip(&["-n", &dc, "link", "add", "dc0", "type", "bridge"]);
        ip(&[
            "-n",
            &dc,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "dc0",
        ]);
        ip(&["-n", &dc, "link", "set", "dc0", "up"]);
    }

    pub fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    pub fn server_url(&self) -> String {
        format!("https://{SUBNET}.1:{SERVER_PORT}")
    }

    fn start_server(&mut self) {
        let dir = self.server_dir();
        std::fs::create_dir_all(&dir).expect("server dir");
        let log = log_file(&dir.join("server.log"));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.dc_netns))
            .args([NIMBUS, "server", "--no-s3", "--host-timeout", "10s"])
            .args(["--listen", &format!("{SUBNET}.1:{SERVER_PORT}")])
            .env("NIMBUS_DATA_DIR", &dir)
            .env("NIMBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nimbus server");
        self.server = Some(child);
        wait_until_or(
            Duration::from_secs(60),
            "the server to serve",
            || self.json(&["whoami"]).ok().map(|_| ()),
            || self.logs_tail(),
        );
    }

    /// Host number `i` (1-based): its namespace, veth, cgroup and agent.
    fn add_host(&mut self, i: usize, spec: &HostSpec) {
        let netns = format!("nimbus-h{i}-{}", self.tag);
        self.add_netns(&netns);
        let bridge_port = format!("h{i}");
        let dc = self.dc_netns.clone();
        ip(&[
            "-n",
            &dc,
            "link",
            "add",
            &bridge_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ]);
        ip(&[
            "-n",
            &dc,
            "link",
            "set",
            &bridge_port,
            "master",
            "dc0",
            "up",
        ]);
        let addr = format!("{SUBNET}.{}", 10 + i);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        let data_dir = self.dir.path().join(&spec.name);
        std::fs::create_dir_all(&data_dir).expect("host data dir");
        let cgroup = format!("{}/{}", self.cgroup, spec.name);
        make_cgroups(&cgroup);
        let mut host = ClusterHost {
            name: spec.name.clone(),
            ip: addr,
            netns,
            data_dir,
            cgroup,
            bridge_port,
            agent: None,
        };
        let token = self.join_token();
        let mut args = vec![
            "--join".to_string(),
            token,
            "--host-name".to_string(),
            spec.name.clone(),
        ];
        for l in &spec.labels {
            args.extend(["--host-label".to_string(), l.clone()]);
        }
        host.agent = Some(self.spawn_agent(&host, &args));
        self.hosts.push(host);
    }

    /// The agent of `host` in its namespaces, with `extra` arguments.
    fn spawn_agent(&self, host: &ClusterHost, extra: &[String]) -> Child {
        let script = self.dir.path().join("agent-in-namespaces.sh");
        if !script.exists() {
            std::fs::write(&script, agent_script()).expect("agent script");
        }
        let procs: Vec<String> = cgroup_mounts()
            .iter()
            .map(|m| {
                m.mount_point
                    .join(host.cgroup.trim_start_matches('/'))
                    .join("cgroup.procs")
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
        let log = log_file(&host.data_dir.join("agent.log"));
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", host.netns))
            .arg("sh")
            .arg(&script)
            .args(["agent", "--server", &self.server_url()])
            .args(["--fence-after", &self.fence_after])
            .args(extra)
            .env("NIMBUS_EXE", NIMBUS)
            .env("NIMBUS_CLUSTER_CGROUP_PROCS", procs.join(" "))
            .env("NIMBUS_CLUSTER_CGROUP_MOUNTS", cgroup_mount_lines())
            .env("NIMBUS_DATA_DIR", &host.data_dir)
            .env("NIMBUS_LOG", "info")
            .env_remove("NIMBUS_JOIN_TOKEN")
            .env_remove("NIMBUS_SERVER")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nimbus agent")
    }

    pub fn host(&self, name: &str) -> &ClusterHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the cluster"))
    }

    /// The host whose cgroup holds process `pid` (from /proc/PID/cgroup,
    /// seen from outside every agent's namespaces).
    pub fn host_of_pid(&self, pid: i64) -> Option<String> {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let pids_line = membership
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "pids"))
            })
            .or_else(|| membership.lines().find(|l| l.starts_with("0::")))?;
        let path = pids_line.splitn(3, ':').nth(2)?;
        self.hosts
            .iter()
            .find(|h| path.starts_with(&format!("{}/", h.cgroup)))
            .map(|h| h.name.clone())
    }

    // --- the CLI, against the server's local socket ---

    pub fn nimbus(&self, args: &[&str]) -> Output {
        Command::new(NIMBUS)
            .args(args)
            .env("NIMBUS_DATA_DIR", self.server_dir())
            .env_remove("NIMBUS_TOKEN")
            .env_remove("NIMBUS_ENDPOINT")
            .env_remove("NIMBUS_PROJECT")
            .stdin(Stdio::null())
            .output()
            .expect("run nimbus")
    }

    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.nimbus(&[args, &["-o", "json"]].concat());
        super::json_output(out)
    }

    /// `nimbus ARGS -o json`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Value {
        self.json(args)
            .unwrap_or_else(|e| panic!("nimbus {args:?}: {e}\n{}", self.logs_tail()))
    }

    /// `nimbus ARGS` (no JSON), which must succeed.
    pub fn run_ok(&self, args: &[&str]) {
        let out = self.nimbus(args);
        assert!(
            out.status.success(),
            "nimbus {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs_tail()
        );
    }

    fn join_token(&self) -> String {
        let created = self.ok(&["host", "join-token", "create", "--ttl", "10m"]);
        created["token"].as_str().expect("token").to_string()
    }

    pub fn host_record(&self, name: &str) -> Option<Value> {
        self.ok(&["host", "list"])["items"]
            .as_array()?
            .iter()
            .find(|h| h["metadata"]["name"] == name)
            .cloned()
    }

    pub fn wait_host_phase(&self, name: &str, phase: &str, timeout: Duration) -> Value {
        wait_until_or(
            timeout,
            &format!("host {name} to be {phase}"),
            || {
                self.host_record(name)
                    .filter(|h| h["status"]["phase"] == phase)
            },
            || self.logs_tail(),
        )
    }

    pub fn instance(&self, name: &str) -> Option<Value> {
        self.json(&["instance", "get", name]).ok()
    }

    /// Waits until `name` runs: its record, with a host and a live pid.
    pub fn wait_running(&self, name: &str, timeout: Duration) -> Value {
        wait_until_or(
            timeout,
            &format!("{name} to run"),
            || {
                let i = self.instance(name)?;
                let pid = i["status"]["pid"].as_i64()?;
                (i["status"]["phase"] == "running" && pid_alive(pid)).then_some(i)
            },
            || format!("{name}: {:?}\n{}", self.instance(name), self.logs_tail()),
        )
    }

    /// A busybox root filesystem imported on the server as image `name`;
    /// the agents fetch its blobs by digest.
    pub fn import_busybox(&self, name: &str) {
        self.import_busybox_with(name, &[], &[]);
    }

    /// [`Cluster::import_busybox`] with the host's files `host_files` and
    /// the empty directories `dirs` in the image.
    pub fn import_busybox_with(&self, name: &str, host_files: &[&str], dirs: &[&str]) {
        let work = tempfile::tempdir().expect("tempdir");
        let tar = super::busybox_rootfs_tar_with(work.path(), host_files, dirs);
        self.run_ok(&["image", "import", &tar, "--name", name]);
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.server_dir().join("server.log")).unwrap_or_default()
    }

    pub fn agent_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.host(host).data_dir.join("agent.log")).unwrap_or_default()
    }

    /// The last lines of the server's and every agent's log.
    pub fn logs_tail(&self) -> String {
        let mut out = format!("--- server log ---\n{}\n", tail(&self.server_log(), 20));
        for h in &self.hosts {
            out.push_str(&format!(
                "--- agent {} ---\n{}\n",
                h.name,
                tail(&self.agent_log(&h.name), 15)
            ));
        }
        out
    }

    fn stop_children(&mut self) {
        let mut children: Vec<Child> = self
            .hosts
            .iter_mut()
            .filter_map(|h| h.agent.take())
            .collect();
        children.extend(self.server.take());
        for c in &children {
            // SAFETY: SIGTERM to a child this cluster started.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut children {
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl ClusterHost {
    /// The agent's pid (the script `exec`s into it), while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }
}
