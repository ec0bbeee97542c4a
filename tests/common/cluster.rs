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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cgroup_mounts, processes_mentioning, tail, wait_until_or, NIMBUS};

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

/// Run `cmd`, panicking with its output when it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

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

    /// Take `host`'s link to the bridge down (`false`) or up again.
    pub fn set_link(&self, name: &str, up: bool) {
        let port = &self.host(name).bridge_port;
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.dc_netns, "link", "set", port, state]);
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

    /// Everything of instance `id` still on `host`: its directory, shim and
    /// processes, cgroups, mounts and network namespace there.
    pub fn leftovers_of(&self, host: &str, id: &str) -> Vec<String> {
        let h = self.host(host);
        let mut found = Vec::new();
        let dir = h.data_dir.join("instances").join(id);
        if dir.exists() {
            found.push(format!("directory {}", dir.display()));
        }
        for pid in processes_mentioning(&dir.to_string_lossy()) {
            found.push(format!("process {pid} naming {}", dir.display()));
        }
        for m in cgroup_mounts() {
            let cg = m
                .mount_point
                .join(h.cgroup.trim_start_matches('/'))
                .join("nimbus")
                .join(id);
            if cg.exists() {
                found.push(format!("cgroup {}", cg.display()));
            }
        }
        if let Some(pid) = h.agent_pid() {
            let mountinfo =
                std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            for l in mountinfo.lines().filter(|l| l.contains(id)) {
                found.push(format!("mount {l}"));
            }
            let netns = format!("/proc/{pid}/root/run/nimbus/netns/ni-{id}");
            if Path::new(&netns).exists() {
                found.push(format!("network namespace {netns}"));
            }
        }
        found
    }

    /// Cuts off the host running `name` (which must run) and waits until
    /// the instance runs on another host, noting when the old copy's pid
    /// went; `on_moved` sees the new copy's record as soon as it runs. The
    /// link stays down: [`Cluster::reconnect`] brings it back.
    pub fn cut_off_until_moved(&self, name: &str, on_moved: &dyn Fn(&Value)) -> Moved {
        let first = self.wait_running(name, Duration::from_secs(90));
        let from = first["status"]["host"].as_str().expect("host").to_string();
        let first_pid = first["status"]["pid"].as_i64().expect("pid");
        self.set_link(&from, false);
        let cut = Instant::now();
        let mut old_stopped_after = None;
        let moved = wait_until_or(
            Duration::from_secs(60),
            &format!("{name} to run elsewhere"),
            || {
                if old_stopped_after.is_none() && !pid_alive(first_pid) {
                    old_stopped_after = Some(cut.elapsed());
                }
                let i = self.instance(name)?;
                let pid = i["status"]["pid"].as_i64()?;
                let host = i["status"]["host"].as_str()?;
                (host != from && i["status"]["phase"] == "running" && pid_alive(pid)).then_some(i)
            },
            || self.logs_tail(),
        );
        let recovery = cut.elapsed();
        on_moved(&moved);
        Moved {
            id: moved["metadata"]["id"].as_str().expect("id").to_string(),
            from: from.clone(),
            to: moved["status"]["host"].as_str().expect("host").to_string(),
            first_pid,
            new_pid: moved["status"]["pid"].as_i64().expect("pid"),
            old_stopped_after: old_stopped_after
                .or_else(|| (!pid_alive(first_pid)).then(|| cut.elapsed())),
            recovery,
            // Read while the link is still down: no later heartbeat came.
            last_heartbeat: self.host_record(&from).and_then(|h| heartbeat_of(&h)),
            new_started: moved["status"]["started_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
        }
    }

    /// Brings `host`'s link back and waits until it is ready and nothing of
    /// instance `id` is left there.
    pub fn reconnect(&self, host: &str, id: &str) {
        self.set_link(host, true);
        self.wait_host_phase(host, "ready", Duration::from_secs(30));
        wait_until_or(
            Duration::from_secs(30),
            &format!("{host} to remove its stale copy of {id}"),
            || self.leftovers_of(host, id).is_empty().then_some(()),
            || {
                format!(
                    "left: {:#?}\n{}",
                    self.leftovers_of(host, id),
                    self.logs_tail()
                )
            },
        );
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
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
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
        self.run_ok(&["image", "import", &tar.to_string_lossy(), "--name", name]);
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

/// What [`Cluster::cut_off_until_moved`] saw.
pub struct Moved {
    pub id: String,
    pub from: String,
    pub to: String,
    pub first_pid: i64,
    pub new_pid: i64,
    /// From the cut to the old copy's pid being gone, if it was by the time
    /// the new copy ran.
    pub old_stopped_after: Option<Duration>,
    /// From the cut to the new copy running, as polled.
    pub recovery: Duration,
    /// The cut-off host's last accepted heartbeat, by the servers' clock.
    pub last_heartbeat: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// When the new copy started, by its agent's clock (the same machine's).
    pub new_started: Option<chrono::DateTime<chrono::FixedOffset>>,
}

impl Moved {
    /// From the lost host's last heartbeat to the new copy's start.
    pub fn heartbeat_to_running(&self) -> Option<Duration> {
        let (beat, start) = (self.last_heartbeat?, self.new_started?);
        (start - beat).to_std().ok()
    }
}

fn heartbeat_of(host: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    host["status"]["last_heartbeat"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
}

pub fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl ClusterHost {
    /// The agent's pid (the script `exec`s into it), while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }
}

impl Cluster {
    /// Stops everything the cluster started and removes what it made:
    /// agents and server, every process left in its cgroups (shims and
    /// workloads outlive their agent), the cgroups, the loop devices of its
    /// hosts' disks (freed once their mount namespaces are gone), the
    /// network namespaces (the bridge and veths go with them). Returns what
    /// is still there afterwards.
    fn tear_down(&mut self) -> Vec<String> {
        self.stop_children();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = pids_under(&self.cgroup);
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: killing a process left in this cluster's cgroups.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_cgroups(&self.cgroup);
        let dir = self.dir.path().to_string_lossy().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !loop_devices_of(&dir).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut left: Vec<String> = loop_devices_of(&dir)
            .into_iter()
            .map(|(dev, file)| {
                let _ = Command::new("losetup").args(["-d", &dev]).status();
                format!("loop device {dev} on {file}")
            })
            .collect();
        for ns in self.netns_made.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            if Path::new("/run/netns").join(&ns).exists() {
                left.push(format!("network namespace {ns}"));
            }
        }
        left.extend(
            cgroup_dirs_under(&self.cgroup)
                .iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
        left.extend(
            processes_mentioning(&dir)
                .iter()
                .map(|pid| format!("process {pid} naming {dir}")),
        );
        left.extend(
            super::mounts_under(self.dir.path())
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        left
    }

    /// Tears the cluster down and fails on anything left behind.
    pub fn assert_torn_down(mut self) {
        let left = self.tear_down();
        assert!(left.is_empty(), "the cluster left behind: {left:#?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.tear_down();
    }
}

/// `(device, backing file)` of the loop devices backed by files under `dir`.
fn loop_devices_of(dir: &str) -> Vec<(String, String)> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(dev, file)| (dev.trim().to_string(), file.trim().to_string()))
        .filter(|(_, file)| file.starts_with(dir))
        .collect()
}

/// The script that puts an agent into its cgroup, then into new mount and
/// cgroup namespaces with its own sysfs, cgroup mounts and `/run/nimbus`.
fn agent_script() -> &'static str {
    r#"set -e
for f in $NIMBUS_CLUSTER_CGROUP_PROCS; do echo $$ > "$f"; done
exec unshare --mount --cgroup --propagation private sh -c '
set -e
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
echo "$NIMBUS_CLUSTER_CGROUP_MOUNTS" | while read -r fstype options dir; do
  [ -n "$dir" ] || continue
  mkdir -p "$dir"
  mount -t "$fstype" -o "$options" cgroup "$dir"
done
mkdir -p /run/nimbus
mount -t tmpfs -o mode=755 nimbus-run /run/nimbus
exec "$NIMBUS_EXE" "$@"
' agent-in-namespaces "$@"
"#
}

/// `fstype options mount-point` of each cgroup hierarchy, one a line.
fn cgroup_mount_lines() -> String {
    cgroup_mounts()
        .iter()
        .map(|m| {
            let (fstype, options) = if m.unified {
                ("cgroup2", "rw".to_string())
            } else {
                ("cgroup", m.controllers.join(","))
            };
            format!("{fstype} {options} {}", m.mount_point.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Makes cgroup `relative` (and its parents) in every hierarchy; cpuset
/// cgroups get their parent's cpus and memory nodes, or no process could
/// join them.
fn make_cgroups(relative: &str) {
    for m in cgroup_mounts() {
        let mut dir = m.mount_point.clone();
        for part in relative.trim_start_matches('/').split('/') {
            let parent = dir.clone();
            dir = dir.join(part);
            if dir.exists() {
                continue;
            }
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
            if m.controllers.iter().any(|c| c == "cpuset") {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(parent.join(f)).expect("parent cpuset");
                    std::fs::write(dir.join(f), value.trim())
                        .unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()));
                }
            }
        }
    }
}

/// Every cgroup directory at or below `relative`, deepest first.
fn cgroup_dirs_under(relative: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    for m in cgroup_mounts() {
        let top = m.mount_point.join(relative.trim_start_matches('/'));
        if top.exists() {
            walk(&top, &mut out);
        }
    }
    out
}

fn pids_under(relative: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroup_dirs_under(relative)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn remove_cgroups(relative: &str) {
    for dir in cgroup_dirs_under(relative) {
        let _ = std::fs::remove_dir(&dir);
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// Bind-mounts the host directory `source` at `target` (an existing
/// directory) inside the mount namespace of process `pid`, e.g. a
/// container's: Nimbus has no host-path mounts (a tenant must never reach
/// the host's files), so a test that needs a directory shared by containers
/// on several hosts puts it there itself. The tree is cloned here
/// (`open_tree`) and attached there (`move_mount`) by a child that joined
/// the namespace, as a multi-threaded process cannot.
pub fn mount_into(pid: i64, source: &Path, target: &str) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let src = CString::new(source.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let dst = CString::new(target).map_err(|e| e.to_string())?;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(format!(
            "open_tree {}: {}",
            source.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `tree` is a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("process {pid}'s mount namespace: {e}"))?;
    let (tree_fd, ns_fd) = (tree.as_raw_fd(), ns.as_raw_fd());
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", ":"]);
    // SAFETY: only async-signal-safe syscalls between fork and exec, on fds
    // and C strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let moved = libc::syscall(
                libc::SYS_move_mount,
                tree_fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            );
            if moved != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| {
        format!(
            "mounting {} at {target} in process {pid}'s namespace: {e}",
            source.display()
        )
    })?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("/bin/sh in process {pid}'s namespace: {status}"))
}
