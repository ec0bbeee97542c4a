//! Series rendered from current state at each scrape (a custom
//! `Collector`): what no longer exists is simply not rendered.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::snapshot::{HostRow, InstanceRow, NetworkRow, Snapshot};

/// One scrape's state, encoded once when the registry is.
#[derive(Debug)]
pub struct Current(pub Snapshot);

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

/// A series without labels.
fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn gauges<S: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, V)>,
) -> Result<(), std::fmt::Error> {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<S: EncodeLabelSet, V: prometheus_client::encoding::EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, V)>,
) -> Result<(), std::fmt::Error> {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn host(h: &HostRow) -> Labels<'_, 1> {
    [("host", &h.name)]
}

/// `instance_name`, not `instance`: Prometheus gives every scraped series
/// an `instance` label of its own (the scrape target) and would rename ours.
fn inst(i: &InstanceRow) -> Labels<'_, 2> {
    [("project", &i.project), ("instance_name", &i.name)]
}

fn network(n: &NetworkRow) -> Labels<'_, 2> {
    [("project", &n.project), ("network", &n.name)]
}

impl Collector for Current {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        gauge(
            &mut e,
            "store_revision",
            "The store's current revision",
            s.store_revision,
        )?;
        gauge(
            &mut e,
            "scheduler_pending_instances",
            "Instances waiting to be bound to a host",
            s.pending_instances,
        )?;

        gauges(
            &mut e,
            "host_up",
            "1 when the host is ready, 0 otherwise (phase in the label)",
            s.hosts.iter().map(|h| {
                let labels: Labels<2> = [("host", &h.name), ("phase", &h.phase)];
                (labels, i64::from(h.phase == "ready"))
            }),
        )?;
        gauges(
            &mut e,
            "host_cpus",
            "CPUs of the host",
            s.hosts.iter().map(|h| (host(h), h.cpus)),
        )?;
        gauges(
            &mut e,
            "host_memory_bytes",
            "Memory of the host",
            s.hosts.iter().map(|h| (host(h), h.memory_bytes)),
        )?;
        gauges(
            &mut e,
            "host_disk_bytes",
            "Disk of the host's data directory",
            s.hosts.iter().map(|h| (host(h), h.disk_bytes)),
        )?;
        gauges(
            &mut e,
            "host_allocated_memory_bytes",
            "Memory limits of the instances bound to the host and meant to run",
            s.hosts.iter().map(|h| (host(h), h.allocated_memory_bytes)),
        )?;
        gauges(
            &mut e,
            "host_allocated_cpus",
            "CPU limits (in CPUs) of the instances bound to the host and meant to run",
            s.hosts
                .iter()
                .map(|h| (host(h), h.allocated_cpu_millis as f64 / 1000.0)),
        )?;
        gauges(
            &mut e,
            "host_instances",
            "Instances bound to the host and meant to run",
            s.hosts.iter().map(|h| (host(h), h.instances)),
        )?;

        gauges(
            &mut e,
            "instance_info",
            "1 per instance, with its kind, host and phase as labels",
            s.instances.iter().map(|i| {
                let labels: Labels<5> = [
                    ("project", &i.project),
                    ("instance_name", &i.name),
                    ("kind", &i.kind),
                    ("host", &i.host),
                    ("phase", &i.phase),
                ];
                (labels, 1i64)
            }),
        )?;
        counters(
            &mut e,
            "instance_restarts",
            "Times the instance was restarted by its restart policy",
            s.instances.iter().map(|i| (inst(i), u64::from(i.restarts))),
        )?;
        let observed = || {
            s.instances
                .iter()
                .filter_map(|i| i.stats.as_ref().map(|st| (inst(i), st)))
        };
        counters(
            &mut e,
            "instance_cpu_seconds",
            "CPU time used by the instance's cgroup",
            observed().map(|(l, st)| (l, st.cpu_seconds)),
        )?;
        gauges(
            &mut e,
            "instance_memory_bytes",
            "Memory in use by the instance's cgroup",
            observed().map(|(l, st)| (l, st.memory_bytes)),
        )?;
        gauges(
            &mut e,
            "instance_memory_limit_bytes",
            "Memory limit of the instance's cgroup",
            observed().filter_map(|(l, st)| st.memory_limit_bytes.map(|m| (l, m))),
        )?;
        counters(
            &mut e,
            "instance_oom_kills",
            "Processes the kernel OOM-killed in the instance's cgroup",
            observed().map(|(l, st)| (l, st.oom_kills)),
        )?;
        let net = || observed().filter_map(|(l, st)| st.network.map(|n| (l, n)));
        counters(
            &mut e,
            "instance_network_receive_bytes",
            "Bytes the instance received",
            net().map(|(l, n)| (l, n.rx_bytes)),
        )?;
        counters(
            &mut e,
            "instance_network_transmit_bytes",
            "Bytes the instance sent",
            net().map(|(l, n)| (l, n.tx_bytes)),
        )?;
        counters(
            &mut e,
            "instance_network_receive_packets",
            "Packets the instance received",
            net().map(|(l, n)| (l, n.rx_packets)),
        )?;
        counters(
            &mut e,
            "instance_network_transmit_packets",
            "Packets the instance sent",
            net().map(|(l, n)| (l, n.tx_packets)),
        )?;
        counters(
            &mut e,
            "instance_vcpu_seconds",
            "VMs: CPU time of the emulator's vCPU threads",
            observed().filter_map(|(l, st)| st.vcpu_seconds.map(|v| (l, v))),
        )?;

        gauges(
            &mut e,
            "network_addresses_allocated",
            "Addresses allocated on the network (gateway included)",
            s.networks
                .iter()
                .map(|n| (network(n), n.addresses_allocated)),
        )?;
        gauges(
            &mut e,
            "network_addresses_capacity",
            "Addresses the network's subnet can give to instances",
            s.networks
                .iter()
                .map(|n| (network(n), n.addresses_capacity)),
        )?;
        gauges(
            &mut e,
            "network_ports",
            "Instances plugged into the network (one bridge port each)",
            s.networks.iter().map(|n| (network(n), n.ports)),
        )?;
        gauges(
            &mut e,
            "network_published_ports",
            "Host ports published to instances on the network",
            s.networks.iter().map(|n| (network(n), n.published_ports)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use nimbus_api::stats::{InstanceStats, NetworkCounters};

    use super::super::Metrics;
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            store_revision: 42,
            pending_instances: 1,
            hosts: vec![HostRow {
                name: "h1".into(),
                phase: "ready".into(),
                cpus: 4,
                memory_bytes: 8 << 30,
                disk_bytes: 100 << 30,
                allocated_memory_bytes: 256 << 20,
                allocated_cpu_millis: 1500,
                instances: 1,
            }],
            instances: vec![
                InstanceRow {
                    project: "ops".into(),
                    name: "web".into(),
                    kind: "container".into(),
                    host: "h1".into(),
                    phase: "running".into(),
                    restarts: 2,
                    stats: Some(InstanceStats {
                        id: "id-web".into(),
                        cpu_seconds: 1.5,
                        memory_bytes: 1 << 20,
                        memory_limit_bytes: Some(256 << 20),
                        oom_kills: 1,
                        network: Some(NetworkCounters {
                            rx_bytes: 10,
                            tx_bytes: 20,
                            rx_packets: 1,
                            tx_packets: 2,
                        }),
                        vcpu_seconds: None,
                    }),
                },
                InstanceRow {
                    project: "ops".into(),
                    name: "queued".into(),
                    kind: "vm".into(),
                    phase: "pending".into(),
                    ..InstanceRow::default()
                },
            ],
            networks: vec![NetworkRow {
                project: "ops".into(),
                name: "default".into(),
                addresses_allocated: 2,
                addresses_capacity: 253,
                ports: 1,
                published_ports: 0,
            }],
        }
    }

    fn text(s: Snapshot) -> String {
        Metrics::new(true).encode(s).expect("encodes")
    }

    #[test]
    fn instances_hosts_and_networks_are_rendered_with_their_names() {
        let out = text(snapshot());
        for line in [
            "nimbus_store_revision 42",
            "nimbus_scheduler_pending_instances 1",
            "nimbus_host_memory_bytes{host=\"h1\"} 8589934592",
            "nimbus_host_allocated_cpus{host=\"h1\"} 1.5",
            "nimbus_instance_cpu_seconds_total{project=\"ops\",instance_name=\"web\"} 1.5",
            "nimbus_instance_memory_limit_bytes{project=\"ops\",instance_name=\"web\"} 268435456",
            "nimbus_instance_oom_kills_total{project=\"ops\",instance_name=\"web\"} 1",
            "nimbus_instance_restarts_total{project=\"ops\",instance_name=\"web\"} 2",
            "nimbus_instance_network_transmit_bytes_total{project=\"ops\",instance_name=\"web\"} 20",
            "nimbus_network_addresses_capacity{project=\"ops\",network=\"default\"} 253",
            "# TYPE nimbus_instance_cpu_seconds counter",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "missing {line:?} in:\n{out}"
            );
        }
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn an_instance_without_a_report_has_no_usage_series_and_a_gone_one_has_none() {
        let out = text(snapshot());
        assert!(
            out.contains("instance_name=\"queued\",kind=\"vm\""),
            "{out}"
        );
        assert!(
            !out.lines()
                .any(|l| l.starts_with("nimbus_instance_cpu") && l.contains("queued")),
            "{out}"
        );
        let mut gone = snapshot();
        gone.instances.clear();
        let out = text(gone);
        assert!(!out.contains("instance_name=\""), "{out}");
        assert!(!out.contains("nimbus_instance_cpu_seconds"), "{out}");
    }

    #[test]
    fn requests_are_counted_by_route_template_method_and_status() {
        use axum::http::Method;
        let m = Metrics::new(true);
        let route = "/v1/projects/{project}/instances";
        m.observe_request(
            route,
            &Method::GET,
            200,
            std::time::Duration::from_millis(3),
        );
        m.observe_request(
            route,
            &Method::GET,
            200,
            std::time::Duration::from_millis(5),
        );
        m.observe_request(
            route,
            &Method::POST,
            403,
            std::time::Duration::from_millis(1),
        );
        let out = m.encode(Snapshot::default()).unwrap();
        assert!(out.contains("nimbus_api_requests_total{route=\"/v1/projects/{project}/instances\",method=\"GET\",status=\"200\"} 2"), "{out}");
        assert!(out.contains("status=\"403\"} 1"), "{out}");
        assert!(out.contains("nimbus_api_request_duration_seconds_count{route=\"/v1/projects/{project}/instances\",method=\"GET\"} 2"), "{out}");
        // 3 ms and 5 ms: one under 4 ms, both under 8 ms (buckets are cumulative).
        let get = "route=\"/v1/projects/{project}/instances\",method=\"GET\"";
        assert!(
            out.contains(&format!(
                "nimbus_api_request_duration_seconds_bucket{{le=\"0.004\",{get}}} 1"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "nimbus_api_request_duration_seconds_bucket{{le=\"0.008\",{get}}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "nimbus_api_request_duration_seconds_bucket{{le=\"+Inf\",{get}}} 2"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "nimbus_api_request_duration_seconds_sum{{{get}}} 0.008"
            )),
            "{out}"
        );
        let off = Metrics::new(false);
        off.observe_request(
            route,
            &Method::GET,
            200,
            std::time::Duration::from_millis(3),
        );
        assert!(!off
            .encode(Snapshot::default())
            .unwrap()
            .contains("nimbus_api_requests_total{"));
    }
}
