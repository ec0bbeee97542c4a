//! Cutting a host off the data-centre bridge and bringing it back, and
//! what the cut-off scenario sees: where the instance went, when the old
//! copy stopped, and what the host still holds of it.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::plumbing::ip;
use super::Cluster;
use crate::common::{cgroup_mounts, processes_mentioning, wait_until_or};

impl Cluster {
    /// Take `host`'s link to the bridge down (`false`) or up again.
    pub fn set_link(&self, name: &str, up: bool) {
        let port = &self.host(name).bridge_port;
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.dc_netns, "link", "set", port, state]);
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
            Duration::from_secs(120),
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
        self.wait_host_phase(host, "ready", Duration::from_secs(60));
        wait_until_or(
            Duration::from_secs(60),
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
