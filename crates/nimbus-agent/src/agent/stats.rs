//! What this host's instances use, read every few seconds and pushed to
//! the server as one report (`PUT /v1/hosts/{host}/stats`), which keeps the
//! latest in memory for `/metrics`. The agent only ever calls the server,
//! so this works the same when the host is remote.
//!
//! Sources, for both cgroup layouts the agent runs on:
//! - CPU: v2 `cpu.stat` `usage_usec`; v1 `cpuacct.usage` (nanoseconds);
//! - memory: v2 `memory.current` / `memory.max`; v1
//!   `memory.usage_in_bytes` / `memory.limit_in_bytes`;
//! - OOM kills: `host::cgroups::oom_kill_count_on` (v1 `memory.oom_control`,
//!   v2 `memory.events`);
//! - network: for containers `/proc/<pid>/net/dev` of a process in the
//!   instance's cgroup, which shows the container's own network namespace;
//!   for VMs the counters of the VM's tap in its router namespace, turned
//!   to the guest's view;
//! - vCPU time (VMs): the emulator's `CPU n/KVM` (or `/TCG`) threads'
//!   `utime + stime` from `/proc/<pid>/task/<tid>/stat`.
//!
//! The parsers are pure and unit-tested; the file reads go through
//! `CgroupFs`, so the whole collection runs against a fake host in tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nimbus_api::stats::{HostStats, InstanceStats, NetworkCounters};

use super::Agent;
use crate::host::cgroupfs::{CgroupFs, HostCgroupFs};
use crate::host::cgroups;
use crate::host::layout::{current_or_legacy, CgroupLayout};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 reports an unlimited memory cgroup as a huge page-rounded number.
const V1_UNLIMITED: u64 = 1 << 62;

/// What the collector needs to know of an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub id: String,
    /// Its workload is an emulator (VM, unikernel): vCPU threads are read,
    /// and as the emulator's network namespace is the host's, its traffic
    /// is read from its tap in the router namespace.
    pub emulated: bool,
}

/// `usage_usec` of a v2 `cpu.stat`, in seconds.
pub fn parse_v2_cpu_seconds(cpu_stat: &str) -> Option<f64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|usec| usec as f64 / 1e6)
}

/// A v1 `cpuacct.usage` (nanoseconds), in seconds.
pub fn parse_v1_cpu_seconds(usage: &str) -> Option<f64> {
    usage.trim().parse::<u64>().ok().map(|ns| ns as f64 / 1e9)
}

/// A memory limit file: v2 `max` or v1's huge number mean no limit.
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|&v| v < V1_UNLIMITED)
}

/// The rows of a `/proc/net/dev` table: interface name and its counters.
fn net_dev_rows(text: &str) -> impl Iterator<Item = (&str, NetworkCounters)> {
    // Two header lines, then `iface: rx_bytes rx_packets errs drop fifo
    // frame compressed multicast tx_bytes tx_packets ...`.
    text.lines().skip(2).filter_map(|line| {
        let (name, counters) = line.split_once(':')?;
        let v: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        (v.len() >= 10).then(|| {
            (
                name.trim(),
                NetworkCounters {
                    rx_bytes: v[0],
                    rx_packets: v[1],
                    tx_bytes: v[8],
                    tx_packets: v[9],
                },
            )
        })
    })
}

/// The sum over every interface but loopback of a `/proc/net/dev` table.
pub fn parse_net_dev(text: &str) -> Option<NetworkCounters> {
    let mut total = None::<NetworkCounters>;
    for (_, c) in net_dev_rows(text).filter(|(name, _)| *name != "lo") {
        let t = total.get_or_insert_with(NetworkCounters::default);
        t.rx_bytes += c.rx_bytes;
        t.rx_packets += c.rx_packets;
        t.tx_bytes += c.tx_bytes;
        t.tx_packets += c.tx_packets;
    }
    total
}

/// A VM's traffic from the counters of its tap (`link`) in a
/// `/proc/net/dev` table of its router namespace, turned to the guest's
/// view: what the tap receives, the guest sent.
pub fn parse_tap_as_guest(text: &str, link: &str) -> Option<NetworkCounters> {
    net_dev_rows(text)
        .find(|(name, _)| *name == link)
        .map(|(_, tap)| NetworkCounters {
            rx_bytes: tap.tx_bytes,
            rx_packets: tap.tx_packets,
            tx_bytes: tap.rx_bytes,
            tx_packets: tap.rx_packets,
        })
}

/// A VM's traffic, read from its tap in whichever router namespace holds
/// it (the emulator itself runs in the host's namespace). `None` for a VM
/// on no network.
fn vm_network(instance_id: &str) -> Option<NetworkCounters> {
    let tap = nimbus_net::names::tap_link(instance_id);
    nimbus_net::netns::list(Path::new(nimbus_net::names::NETNS_DIR), "nr-")
        .iter()
        .find_map(|ns| {
            nimbus_net::netns::run_in(Some(ns), || {
                // The calling thread's namespace, not the process's.
                std::fs::read_to_string("/proc/thread-self/net/dev")
                    .map_err(|e| nimbus_net::NetError::io("read /proc/thread-self/net/dev", e))
            })
            .ok()
            .and_then(|text| parse_tap_as_guest(&text, &tap))
        })
}

/// `utime + stime` (clock ticks) of a `/proc/<pid>/task/<tid>/stat` line.
pub fn parse_task_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// QEMU names its vCPU threads `CPU <n>/KVM` (or `/TCG`).
pub fn is_vcpu_thread(comm: &str) -> bool {
    let comm = comm.trim();
    comm.starts_with("CPU ") && (comm.ends_with("/KVM") || comm.ends_with("/TCG"))
}

/// Reads one instance's numbers from the cgroup files and `/proc` under
/// `proc_root`. `None` when the instance has no cgroup (not running).
pub fn collect_instance(
    fs: &dyn CgroupFs,
    layout: &CgroupLayout,
    proc_root: &Path,
    clock_ticks_per_second: u64,
    target: &Target,
) -> Option<InstanceStats> {
    let cgroup = layout.instance_cgroup(&target.id);
    let relative = cgroup.strip_prefix("/").unwrap_or(&cgroup);
    let v2 = Path::new(CGROUP_ROOT).join(relative);
    let v1 = |controller: &str| Path::new(CGROUP_ROOT).join(controller).join(relative);
    let read = |p: PathBuf| fs.read(&p).ok();
    let mut stats = InstanceStats {
        id: target.id.clone(),
        ..InstanceStats::default()
    };
    if let Some(cpu) = read(v2.join("cpu.stat")) {
        stats.cpu_seconds = parse_v2_cpu_seconds(&cpu).unwrap_or(0.0);
        stats.memory_bytes = read(v2.join("memory.current"))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        stats.memory_limit_bytes = read(v2.join("memory.max")).and_then(|t| parse_memory_limit(&t));
    } else if fs.is_dir(&v1("memory")) || fs.is_dir(&v1("cpuacct")) {
        stats.cpu_seconds = read(v1("cpuacct").join("cpuacct.usage"))
            .and_then(|t| parse_v1_cpu_seconds(&t))
            .unwrap_or(0.0);
        stats.memory_bytes = read(v1("memory").join("memory.usage_in_bytes"))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        stats.memory_limit_bytes =
            read(v1("memory").join("memory.limit_in_bytes")).and_then(|t| parse_memory_limit(&t));
    } else {
        return None;
    }
    stats.oom_kills = cgroups::oom_kill_count_on(fs, layout, &target.id);
    let pids = cgroups::instance_pids_on(fs, layout, &target.id);
    if target.emulated {
        let ticks: u64 = pids
            .iter()
            .flat_map(|pid| vcpu_ticks(fs, proc_root, *pid))
            .sum();
        if !pids.is_empty() {
            stats.vcpu_seconds = Some(ticks as f64 / clock_ticks_per_second.max(1) as f64);
        }
    } else {
        stats.network = pids.iter().find_map(|pid| {
            read(proc_root.join(pid.to_string()).join("net/dev")).and_then(|t| parse_net_dev(&t))
        });
    }
    Some(stats)
}

/// Clock ticks of each vCPU thread of process `pid`.
fn vcpu_ticks(fs: &dyn CgroupFs, proc_root: &Path, pid: i32) -> Vec<u64> {
    let tasks = proc_root.join(pid.to_string()).join("task");
    fs.read_dir(&tasks)
        .unwrap_or_default()
        .into_iter()
        .filter(|task| {
            fs.read(&task.join("comm"))
                .is_ok_and(|comm| is_vcpu_thread(&comm))
        })
        .filter_map(|task| fs.read(&task.join("stat")).ok())
        .filter_map(|stat| parse_task_ticks(&stat))
        .collect()
}

/// The report for `targets`, read from the host.
pub fn collect(targets: &[Target]) -> HostStats {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).unwrap_or(100);
    let layout = current_or_legacy();
    HostStats {
        instances: targets
            .iter()
            .filter_map(|t| {
                let mut stats =
                    collect_instance(&HostCgroupFs, &layout, Path::new("/proc"), ticks, t)?;
                if t.emulated {
                    stats.network = vm_network(&t.id);
                }
                Some(stats)
            })
            .collect(),
    }
}

impl Agent {
    /// The instances this agent runs, and whether each is emulated.
    fn stats_targets(&self) -> Vec<Target> {
        let ids: Vec<String> = self
            .workers
            .lock()
            .map(|w| w.keys().cloned().collect())
            .unwrap_or_default();
        ids.into_iter()
            .map(|id| {
                let emulated = self
                    .drivers
                    .for_dir(&self.instance_dir(&id))
                    .is_some_and(|d| d.runs_an_emulator());
                Target { id, emulated }
            })
            .collect()
    }

    /// Push a report every `stats_ms`, forever; never with `stats_ms` 0
    /// (the server's metrics are off: nothing would read the reports). A
    /// failed push is logged and the next one carries fresh numbers anyway.
    pub(super) async fn stats_loop(self: Arc<Self>) {
        if self.config.stats_ms == 0 {
            return;
        }
        let path = format!("/v1/hosts/{}/stats", self.config.host_name);
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.stats_ms.max(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let targets = self.stats_targets();
            let Ok(report) = tokio::task::spawn_blocking(move || collect(&targets)).await else {
                continue;
            };
            let body = match serde_json::to_vec(&report) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "encoding the statistics report failed");
                    continue;
                }
            };
            if let Err(e) = self
                .client
                .request_bytes(hyper::Method::PUT, &path, Some(body))
                .await
            {
                tracing::debug!(error = %e, "statistics report failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroupfs::FakeCgroupFs;
    use crate::host::layout::CgroupMode;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0
";

    #[test]
    fn cgroup_cpu_files_of_both_layouts_give_seconds() {
        let v2 = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n";
        assert_eq!(parse_v2_cpu_seconds(v2), Some(2.5));
        assert_eq!(parse_v1_cpu_seconds("1500000000\n"), Some(1.5));
        assert_eq!(parse_v2_cpu_seconds("user_usec 1\n"), None);
        assert_eq!(parse_v1_cpu_seconds("garbage"), None);
    }

    #[test]
    fn memory_limits_read_unlimited_as_none() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(
            parse_memory_limit("9223372036854771712\n"),
            None,
            "v1 unlimited"
        );
        assert_eq!(parse_memory_limit("268435456\n"), Some(268_435_456));
    }

    #[test]
    fn network_counters_leave_out_loopback() {
        assert_eq!(
            parse_net_dev(NET_DEV),
            Some(NetworkCounters {
                rx_bytes: 1000,
                tx_bytes: 2000,
                rx_packets: 10,
                tx_packets: 20,
            })
        );
        let only_lo = NET_DEV.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_net_dev(&only_lo), None);
    }

    #[test]
    fn a_vms_tap_counts_in_the_guests_direction() {
        let table = format!("{NET_DEV}  tab12: 300 3 0 0 0 0 0 0 7000 70 0 0 0 0 0 0\n");
        assert_eq!(
            parse_tap_as_guest(&table, "tab12"),
            Some(NetworkCounters {
                rx_bytes: 7000,
                rx_packets: 70,
                tx_bytes: 300,
                tx_packets: 3,
            }),
            "the tap's transmit is what the guest received"
        );
        assert_eq!(parse_tap_as_guest(&table, "tother"), None);
    }

    #[test]
    fn task_ticks_survive_a_command_name_with_spaces_and_parens() {
        let stat =
            "4242 (CPU 0/KVM) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 300 0 0 20 0 3 0 1 0 0";
        assert_eq!(parse_task_ticks(stat), Some(1000));
        let odd = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0";
        assert_eq!(parse_task_ticks(odd), Some(33));
        assert!(is_vcpu_thread("CPU 1/KVM\n"));
        assert!(is_vcpu_thread("CPU 0/TCG"));
        assert!(!is_vcpu_thread("qemu-system-x86"));
    }

    fn v1() -> CgroupLayout {
        CgroupLayout::legacy(CgroupMode::V1)
    }

    fn target(id: &str, emulated: bool) -> Target {
        Target {
            id: id.into(),
            emulated,
        }
    }

    #[test]
    fn a_v1_container_reports_cpu_memory_ooms_and_its_namespace_traffic() {
        let fs = FakeCgroupFs::new();
        let dir = |c: &str| format!("{CGROUP_ROOT}/{c}/nimbus/c1");
        fs.add_cgroup(dir("cpuacct"), &[]);
        fs.add_cgroup(dir("memory"), &[77]);
        fs.add_file(format!("{}/cpuacct.usage", dir("cpuacct")), "3000000000\n");
        fs.add_file(format!("{}/memory.usage_in_bytes", dir("memory")), "4096\n");
        fs.add_file(format!("{}/memory.limit_in_bytes", dir("memory")), "8192\n");
        fs.add_file(
            format!("{}/memory.oom_control", dir("memory")),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        fs.add_file("/proc/77/net/dev", NET_DEV);
        let s =
            collect_instance(&fs, &v1(), Path::new("/proc"), 100, &target("c1", false)).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!((s.memory_bytes, s.memory_limit_bytes), (4096, Some(8192)));
        assert_eq!(s.oom_kills, 2);
        assert_eq!(s.network.map(|n| n.tx_bytes), Some(2000));
        assert_eq!(s.vcpu_seconds, None);
        assert_eq!(
            collect_instance(&fs, &v1(), Path::new("/proc"), 100, &target("gone", false)),
            None,
            "an instance without a cgroup is not reported"
        );
    }

    #[test]
    fn a_v2_vm_reports_its_vcpu_threads_and_no_host_traffic() {
        let fs = FakeCgroupFs::new();
        let dir = format!("{CGROUP_ROOT}/nimbus/vm1");
        fs.add_cgroup(&dir, &[900]);
        fs.add_file(format!("{dir}/cpu.stat"), "usage_usec 5000000\n");
        fs.add_file(format!("{dir}/memory.current"), "1048576\n");
        fs.add_file(format!("{dir}/memory.max"), "max\n");
        fs.add_file(
            format!("{dir}/memory.events"),
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        );
        for (tid, comm, ticks) in [
            (900, "qemu-system-x86", "50 50"),
            (901, "CPU 0/KVM", "150 50"),
            (902, "CPU 1/KVM", "100 0"),
        ] {
            fs.add_file(format!("/proc/900/task/{tid}/comm"), &format!("{comm}\n"));
            fs.add_file(
                format!("/proc/900/task/{tid}/stat"),
                &format!("{tid} ({comm}) S 1 900 900 0 -1 0 0 0 0 0 {ticks} 0 0 20 0"),
            );
        }
        fs.add_file("/proc/900/net/dev", NET_DEV);
        let s = collect_instance(
            &fs,
            &CgroupLayout::legacy(CgroupMode::Unified),
            Path::new("/proc"),
            100,
            &target("vm1", true),
        )
        .unwrap();
        assert_eq!(s.cpu_seconds, 5.0);
        assert_eq!((s.memory_bytes, s.memory_limit_bytes), (1_048_576, None));
        assert_eq!(s.vcpu_seconds, Some(3.0), "CPU 0 and CPU 1 threads only");
        assert_eq!(s.network, None, "the emulator's namespace is the host's");
    }

    #[test]
    fn a_container_in_a_delegated_subtree_is_read_there() {
        let fs = FakeCgroupFs::new();
        let layout = CgroupLayout {
            mode: CgroupMode::Unified,
            delegated: Some(PathBuf::from("/system.slice/nimbus-cgroup.service")),
        };
        let dir = format!("{CGROUP_ROOT}/system.slice/nimbus-cgroup.service/instances/c2");
        fs.add_cgroup(&dir, &[]);
        fs.add_file(format!("{dir}/cpu.stat"), "usage_usec 2500000\n");
        fs.add_file(format!("{dir}/memory.current"), "4096\n");
        fs.add_file(format!("{dir}/memory.max"), "8192\n");
        fs.add_file(format!("{dir}/memory.events"), "oom 1\noom_kill 1\n");
        let s = collect_instance(&fs, &layout, Path::new("/proc"), 100, &target("c2", false))
            .expect("the instance's cgroup is under the delegated subtree");
        assert_eq!(s.cpu_seconds, 2.5);
        assert_eq!((s.memory_bytes, s.memory_limit_bytes), (4096, Some(8192)));
        assert_eq!(s.oom_kills, 1);
        assert_eq!(
            collect_instance(
                &fs,
                &CgroupLayout::legacy(CgroupMode::Unified),
                Path::new("/proc"),
                100,
                &target("c2", false)
            ),
            None,
            "the historical path holds nothing"
        );
    }
}
