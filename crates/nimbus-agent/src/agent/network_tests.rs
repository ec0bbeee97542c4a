//! The network driver's decisions against `nimbus_net::fake::FakeHost`:
//! which routers, links and namespaces exist for the recorded ports, which
//! rules go to which namespace, which tracked flows are flushed. No root.

use std::sync::Arc;

use nimbus_api::resources::{
    InstanceSpec, InstanceStatus, NetworkSpec, NetworkStatus, PublishedPortSpec, SecurityGroupSpec,
    SecurityGroupStatus, SecurityRule,
};
use nimbus_api::Metadata;
use nimbus_net::conntrack::Flow;
use nimbus_net::fake::FakeHost;

use super::*;
use crate::agent::error::AgentError;

/// Port numbers no host service of the test machine is expected to hold.
const HOST_PORT: u16 = 47913;
const OTHER_HOST_PORT: u16 = 47914;

pub(super) struct Fixture {
    pub(super) host: Arc<FakeHost>,
    pub(super) driver: NetDriver,
    _dir: tempfile::TempDir,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temp dir");
    let host = Arc::new(FakeHost::new());
    let driver = NetDriver::with_dataplane(dir.path(), vec![7443], FakeHost::dataplane(&host));
    Fixture {
        host,
        driver,
        _dir: dir,
    }
}

fn meta(project: &str, name: &str, id: &str) -> Metadata {
    let mut m = Metadata::new(name, Some(project));
    m.id = id.to_string();
    m
}

pub(super) fn network(project: &str, name: &str, id: &str, third_octet: u8) -> Network {
    Network {
        metadata: meta(project, name, id),
        spec: NetworkSpec {
            subnet: format!("10.{third_octet}.0.0/24"),
            gateway: None,
            dns: Vec::new(),
            dns_search: None,
        },
        status: NetworkStatus::default(),
    }
}

pub(super) fn instance(id: &str, name: &str, net: &Network, last: u8, groups: &[&str]) -> Instance {
    let project = net.metadata.project.clone().unwrap_or_default();
    let octet: u8 = net.spec.subnet[3..]
        .split('.')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    Instance {
        metadata: meta(&project, name, id),
        spec: InstanceSpec {
            image: "web:1".into(),
            secgroups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        },
        status: InstanceStatus {
            addresses: vec![InstanceAddress {
                network: net.metadata.name.clone(),
                network_id: net.metadata.id.clone(),
                ip: Ipv4Addr::new(10, octet, 0, last),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, octet, 0, 1),
                mac: format!("02:00:00:00:00:{last:02x}"),
            }],
            ..Default::default()
        },
    }
}

fn published(project: &str, inst: &str, host_port: u16, instance_port: u16) -> PublishedPort {
    PublishedPort {
        metadata: meta(
            project,
            &format!("{inst}-tcp-{host_port}"),
            &format!("pp-{inst}-{host_port}"),
        ),
        spec: PublishedPortSpec {
            instance: inst.into(),
            protocol: Protocol::Tcp,
            host_port,
            instance_port,
        },
        status: Default::default(),
    }
}

fn secgroup(project: &str, name: &str, rules: Vec<SecurityRule>) -> SecurityGroup {
    SecurityGroup {
        metadata: meta(project, name, &format!("sg-{name}")),
        spec: SecurityGroupSpec {
            description: String::new(),
            rules,
        },
        status: SecurityGroupStatus {},
    }
}

impl Fixture {
    /// What the watches and an attach would have left: the network and
    /// instance known, the instance's port recorded.
    pub(super) fn add(&self, net: &Network, inst: &Instance) {
        let project = inst.metadata.project.clone().unwrap_or_default();
        if let Ok(mut k) = self.driver.known.lock() {
            k.networks
                .insert(pkey(&net.metadata.project, &net.metadata.name), net.clone());
            k.instances.insert(inst.metadata.id.clone(), inst.clone());
        }
        let addr = &inst.status.addresses[0];
        let record = PortRecord {
            network_id: net.metadata.id.clone(),
            project,
            link: names::port_link(&inst.metadata.id),
            ip: addr.ip,
            mac: addr.mac.clone(),
            vm: false,
        };
        self.driver
            .save_port(&inst.metadata.id, &record)
            .expect("a port record");
    }

    fn publish(&self, pp: PublishedPort) {
        if let Ok(mut k) = self.driver.known.lock() {
            k.published
                .insert(pkey(&pp.metadata.project, &pp.metadata.name), pp);
        }
    }

    fn unpublish(&self, pp: &PublishedPort) {
        if let Ok(mut k) = self.driver.known.lock() {
            k.published
                .remove(&pkey(&pp.metadata.project, &pp.metadata.name));
        }
    }

    fn add_group(&self, sg: SecurityGroup) {
        if let Ok(mut k) = self.driver.known.lock() {
            k.secgroups
                .insert(pkey(&sg.metadata.project, &sg.metadata.name), sg);
        }
    }

    pub(super) async fn sync(&self) {
        let mut routers = self.driver.routers.lock().await;
        self.driver.sync_locked(&mut routers).await;
    }

    async fn router_ip(&self, network_id: &str) -> Ipv4Addr {
        let routers = self.driver.routers.lock().await;
        routers[network_id].host.router_ip
    }

    /// The last script applied in the router namespace of `network_id`.
    pub(super) fn router_script(&self, network_id: &str) -> String {
        let ns = names::router_netns(network_id);
        self.host
            .scripts(Some(&ns))
            .pop()
            .unwrap_or_else(|| panic!("no rules were applied on the router of {network_id}"))
    }

    fn host_script(&self) -> String {
        self.host
            .scripts(None)
            .pop()
            .expect("no host rules were applied")
    }

    async fn guarded(&self, network_id: &str, instance_id: &str) -> bool {
        let routers = self.driver.routers.lock().await;
        rules_cover(&routers, network_id, &names::port_link(instance_id))
    }
}

const NET_A: &str = "aaaa0001-0000-4000-8000-000000000001";
const NET_B: &str = "bbbb0002-0000-4000-8000-000000000002";
const WEB: &str = "c0de0001-0000-4000-8000-000000000011";
const DB: &str = "c0de0002-0000-4000-8000-000000000012";
const OTHER: &str = "c0de0003-0000-4000-8000-000000000013";

#[tokio::test]
async fn a_recorded_port_gets_a_router_rules_and_its_published_port_forwarded() {
    let f = fixture();
    let net = network("shop", "front", NET_A, 20);
    f.add(&net, &instance(WEB, "web", &net, 5, &[]));
    f.publish(published("shop", "web", HOST_PORT, 80));
    f.sync().await;

    let router_ns = names::router_netns(NET_A);
    {
        let s = f.host.state();
        let ns = s.namespaces.get(&router_ns).expect("the router namespace");
        assert_eq!(ns.addresses_of(names::BRIDGE), vec!["10.20.0.1/24"]);
        assert!(s.host.link(&names::host_link(NET_A)).is_some(), "uplink");
    }
    let script = f.router_script(NET_A);
    let link = names::port_link(WEB);
    assert!(
        script.contains(&format!("\"{link}\" . 10.20.0.5")),
        "the port is pinned to its address: {script}"
    );
    assert!(
        script.contains(&format!(
            "iifname \"uplink\" tcp dport {HOST_PORT} dnat ip to 10.20.0.5:80"
        )),
        "{script}"
    );
    assert!(
        script.contains("ingress { 10.20.0.5 : accept }"),
        "no security group: open ingress {script}"
    );
    let router_ip = f.router_ip(NET_A).await;
    let host = f.host_script();
    assert!(
        host.contains(&format!(
            "tcp dport {HOST_PORT} dnat ip to {router_ip}:{HOST_PORT}"
        )),
        "{host}"
    );
    assert!(
        host.contains(&format!("uplinks {{ \"{}\" }}", names::host_link(NET_A))),
        "{host}"
    );
    assert!(
        host.contains("iifname \"nb*\" oifname \"nb*\" drop"),
        "{host}"
    );
    assert!(f.guarded(NET_A, WEB).await);

    // Nothing changed: nothing is applied again.
    let applied = f.host.state().applied.len();
    f.sync().await;
    assert_eq!(f.host.state().applied.len(), applied);
}

#[tokio::test]
async fn each_network_has_its_own_router_and_rules() {
    let f = fixture();
    let a = network("shop", "front", NET_A, 20);
    let b = network("bank", "vault", NET_B, 30);
    f.add(&a, &instance(WEB, "web", &a, 5, &[]));
    f.add(&b, &instance(OTHER, "ledger", &b, 5, &[]));
    f.sync().await;

    let in_a = f.router_script(NET_A);
    let in_b = f.router_script(NET_B);
    assert!(in_a.contains(&names::port_link(WEB)), "{in_a}");
    assert!(!in_a.contains(&names::port_link(OTHER)), "{in_a}");
    assert!(in_b.contains(&names::port_link(OTHER)), "{in_b}");
    assert!(!in_b.contains(&names::port_link(WEB)), "{in_b}");
    // Nothing from outside may claim a network's own addresses.
    assert!(in_a.contains("iifname \"uplink\" ip saddr 10.20.0.0/24 drop"));
    assert!(in_b.contains("iifname \"uplink\" ip saddr 10.30.0.0/24 drop"));
    let host = f.host_script();
    let (ua, ub) = (names::host_link(NET_A), names::host_link(NET_B));
    let mut uplinks = [ua, ub];
    uplinks.sort();
    assert!(
        host.contains(&format!(
            "uplinks {{ \"{}\", \"{}\" }}",
            uplinks[0], uplinks[1]
        )),
        "{host}"
    );
}

#[tokio::test]
async fn security_groups_close_a_port_except_to_their_rules_and_members() {
    let f = fixture();
    let net = network("shop", "front", NET_A, 20);
    f.add_group(secgroup(
        "shop",
        "web",
        vec![SecurityRule {
            protocol: Protocol::Tcp,
            port_from: Some(8000),
            port_to: Some(8080),
            cidr: Some("10.0.0.0/8".into()),
            group: None,
        }],
    ));
    f.add(&net, &instance(WEB, "web", &net, 5, &["web"]));
    f.add(&net, &instance(DB, "db", &net, 6, &[]));
    f.sync().await;
    let script = f.router_script(NET_A);
    assert!(
        script.contains("ip saddr 10.0.0.0/8 tcp dport 8000-8080 accept"),
        "{script}"
    );
    assert!(script.contains("ip saddr @g_web accept"), "{script}");
    assert!(
        script.contains("add element inet nimbus g_web { 10.20.0.5 }"),
        "only members are in the group's set: {script}"
    );
    assert!(script.contains("10.20.0.5 : jump sg_"), "{script}");
    assert!(script.contains("10.20.0.6 : accept"), "{script}");
    assert!(
        script.contains("type filter hook forward priority 0; policy drop;"),
        "default deny: {script}"
    );
}

#[tokio::test]
async fn an_instance_not_seen_yet_is_closed_not_open() {
    let f = fixture();
    let net = network("shop", "front", NET_A, 20);
    f.add(&net, &instance(WEB, "web", &net, 5, &[]));
    // A port recorded before a restart, whose instance the watch has not
    // delivered yet: its security groups are unknown.
    let unseen = instance(DB, "db", &net, 6, &[]);
    f.add(&net, &unseen);
    if let Ok(mut k) = f.driver.known.lock() {
        k.instances.remove(DB);
    }
    f.sync().await;
    let script = f.router_script(NET_A);
    let element = script
        .lines()
        .find(|l| l.starts_with("add element inet nimbus ingress {"))
        .expect("the ingress map");
    assert!(element.contains("10.20.0.5 : accept"), "{element}");
    let chain = element
        .split("10.20.0.6 : jump ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("the unseen port jumps to a filter: {element}"));
    let rules: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with(&format!("add rule inet nimbus {chain} ")))
        .collect();
    assert_eq!(rules, vec![format!("add rule inet nimbus {chain} drop")]);
}

#[tokio::test]
async fn unpublishing_flushes_that_ports_flows_and_no_others() {
    let f = fixture();
    let net = network("shop", "front", NET_A, 20);
    f.add(&net, &instance(WEB, "web", &net, 5, &[]));
    let pp = published("shop", "web", HOST_PORT, 80);
    f.publish(pp.clone());
    f.publish(published("shop", "web", OTHER_HOST_PORT, 81));
    f.sync().await;
    let router_ip = f.router_ip(NET_A).await;
    let client = Ipv4Addr::new(203, 0, 113, 9);
    let host_ip = Ipv4Addr::new(192, 168, 1, 10);
    let to_router = |port: u16| Flow {
        proto: 6,
        src: client,
        dst: host_ip,
        dport: port,
        reply_src: router_ip,
        reply_sport: port,
    };
    let outgoing = Flow {
        proto: 6,
        src: host_ip,
        dst: Ipv4Addr::new(198, 51, 100, 1),
        dport: HOST_PORT,
        reply_src: Ipv4Addr::new(198, 51, 100, 1),
        reply_sport: HOST_PORT,
    };
    let router_ns = names::router_netns(NET_A);
    let in_router = |port: u16, to_port: u16| Flow {
        proto: 6,
        src: client,
        dst: router_ip,
        dport: port,
        reply_src: Ipv4Addr::new(10, 20, 0, 5),
        reply_sport: to_port,
    };
    {
        let mut s = f.host.state();
        s.flows.insert(
            None,
            vec![to_router(HOST_PORT), to_router(OTHER_HOST_PORT), outgoing],
        );
        s.flows.insert(
            Some(router_ns.clone()),
            vec![in_router(HOST_PORT, 80), in_router(OTHER_HOST_PORT, 81)],
        );
    }
    f.unpublish(&pp);
    f.sync().await;
    let s = f.host.state();
    let removed: Vec<(Option<PathBuf>, Flow)> = s.removed_flows.clone();
    assert_eq!(
        removed,
        vec![
            (Some(router_ns.clone()), in_router(HOST_PORT, 80)),
            (None, to_router(HOST_PORT)),
        ]
    );
    assert_eq!(
        s.flows[&None],
        vec![to_router(OTHER_HOST_PORT), outgoing],
        "the other published port and the host's own connection stay"
    );
    drop(s);
    let host = f.host_script();
    assert!(!host.contains(&format!("dport {HOST_PORT} ")), "{host}");
    assert!(
        host.contains(&format!("dport {OTHER_HOST_PORT} ")),
        "{host}"
    );
}

#[tokio::test]
async fn detaching_removes_the_port_and_its_flows_and_the_last_one_the_router() {
    let f = fixture();
    let net = network("shop", "front", NET_A, 20);
    f.add(&net, &instance(WEB, "web", &net, 5, &[]));
    f.add(&net, &instance(DB, "db", &net, 6, &[]));
    f.sync().await;
    let router_ns = names::router_netns(NET_A);
    // The ports as an attach makes them.
    for (id, last) in [(WEB, 5), (DB, 6)] {
        let port = PortSpec {
            instance_id: id.into(),
            ip: Ipv4Addr::new(10, 20, 0, last),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            mac: format!("02:00:00:00:00:{last:02x}"),
            mtu: router::DEFAULT_MTU,
        };
        router::attach_container(&*f.host, &router_ns, &port).expect("a port");
    }
    let web = Ipv4Addr::new(10, 20, 0, 5);
    let db = Ipv4Addr::new(10, 20, 0, 6);
    let flow = |src: Ipv4Addr, dst: Ipv4Addr| Flow {
        proto: 6,
        src,
        dst,
        dport: 5432,
        reply_src: dst,
        reply_sport: 5432,
    };
    let outside = Ipv4Addr::new(1, 1, 1, 1);
    f.host.state().flows.insert(
        Some(router_ns.clone()),
        vec![flow(web, db), flow(db, outside)],
    );
    f.driver.detach(WEB).await;
    {
        let s = f.host.state();
        let router = &s.namespaces[&router_ns];
        assert!(router.link(&names::port_link(WEB)).is_none());
        assert!(router.link(&names::port_link(DB)).is_some());
        assert!(!s.namespaces.contains_key(&names::instance_netns(WEB)));
        assert_eq!(
            s.flows[&Some(router_ns.clone())],
            vec![flow(db, outside)],
            "flows of the removed address go, the other port's stay"
        );
    }
    let script = f.router_script(NET_A);
    assert!(
        script.contains(&format!(
            "delete element bridge nimbus ports {{ \"{}\" }}",
            names::port_link(WEB)
        )),
        "{script}"
    );
    assert!(!f.driver.port_record_path(WEB).exists());

    f.driver.detach(DB).await;
    let s = f.host.state();
    assert!(s.namespaces.is_empty(), "{:?}", s.namespaces.keys());
    assert!(s.host.link(&names::host_link(NET_A)).is_none());
    assert_eq!(
        s.deleted_tables,
        vec![("inet".to_string(), f.driver.host_table.clone())]
    );
    assert!(!f.driver.router_record_path(NET_A).exists());
}

#[tokio::test]
async fn rejected_rules_leave_the_port_unguarded_until_a_whole_replacement_succeeds() {
    let f = fixture();
    let net = network("shop", "front", NET_A, 20);
    f.add(&net, &instance(WEB, "web", &net, 5, &[]));
    f.host.state().fail_on.push("nft apply".into());
    f.sync().await;
    assert!(!f.guarded(NET_A, WEB).await);
    f.host.state().fail_on.clear();
    f.sync().await;
    assert!(f.guarded(NET_A, WEB).await);
    assert!(
        f.router_script(NET_A)
            .starts_with("table inet nimbus\ndelete table inet nimbus\n"),
        "after a failure the tables are replaced whole"
    );
}

#[tokio::test]
async fn a_restarted_agent_removes_routers_no_port_uses() {
    let f = fixture();
    let stale_ns = names::router_netns(NET_B);
    nimbus_net::host::Netns::create(&*f.host, &stale_ns).expect("a namespace");
    std::fs::create_dir_all(f.driver.dir.join("routers")).expect("dir");
    std::fs::write(f.driver.router_record_path(NET_B), "bank").expect("record");
    let net = network("shop", "front", NET_A, 20);
    f.add(&net, &instance(WEB, "web", &net, 5, &[]));
    f.driver.rebuild().await;
    assert!(!f.host.state().namespaces.contains_key(&stale_ns));
    assert!(!f.driver.router_record_path(NET_B).exists());
    assert_eq!(f.driver.recorded_ports(), vec![WEB.to_string()]);
}

#[test]
fn network_errors_name_the_network_and_what_to_do() {
    let e = NetworkError::RulesNotApplied {
        network: "front".into(),
    };
    assert!(e.to_string().contains("\"front\""), "{e}");
    assert!(e.to_string().contains("nftables"), "{e}");
    let e = NetworkError::Attach {
        network: "front".into(),
        source: NetError::Invalid("MAC address \"zz\" is not hex".into()),
    };
    let text = AgentError::from(e).to_string();
    assert!(
        text.starts_with("attaching to network \"front\": "),
        "{text}"
    );
}

#[tokio::test]
async fn removing_a_security_group_rule_cuts_the_connections_it_admitted() {
    let f = fixture();
    let net = network("shop", "front", NET_A, 20);
    let rule = |port| SecurityRule {
        protocol: Protocol::Tcp,
        port_from: Some(port),
        port_to: None,
        cidr: None,
        group: None,
    };
    f.add_group(secgroup("shop", "web", vec![rule(80), rule(22)]));
    f.add(&net, &instance(WEB, "web", &net, 5, &["web"]));
    f.add(&net, &instance(DB, "db", &net, 6, &[]));
    f.sync().await;
    let web = Ipv4Addr::new(10, 20, 0, 5);
    let db = Ipv4Addr::new(10, 20, 0, 6);
    let to_web = |port| Flow {
        proto: 6,
        src: db,
        dst: web,
        dport: port,
        reply_src: web,
        reply_sport: port,
    };
    let to_db = Flow {
        proto: 6,
        src: web,
        dst: db,
        dport: 22,
        reply_src: db,
        reply_sport: 22,
    };
    let router_ns = names::router_netns(NET_A);
    f.host
        .state()
        .flows
        .insert(Some(router_ns.clone()), vec![to_web(80), to_web(22), to_db]);
    f.add_group(secgroup("shop", "web", vec![rule(80)]));
    f.sync().await;
    let s = f.host.state();
    assert_eq!(
        s.removed_flows,
        vec![(Some(router_ns.clone()), to_web(22))],
        "ssh to web goes; http to web and web's own ssh to db stay"
    );
}
