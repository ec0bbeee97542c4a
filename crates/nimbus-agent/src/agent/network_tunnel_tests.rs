//! The driver's side of networks across hosts, against `FakeHost`: peers
//! become the VXLAN device's entries, ports of its rules, DNS names and
//! group members; no peer, no device; no underlay, never a device.

use nimbus_api::resources::SecurityGroupSpec;
use nimbus_api::SecurityGroup;
use nimbus_net::vxlan::{self, Underlay};

use super::driver_tests::{fixture, instance, network, Fixture};
use super::*;
use crate::agent::tunnel::tests::peer;

const NET: &str = "aaaa0001-0000-4000-8000-000000000001";
const WEB: &str = "c0de0001-0000-4000-8000-000000000011";
const UNDERLAY: Underlay = Underlay {
    address: Ipv4Addr::new(192, 168, 1, 1),
    port: vxlan::DEFAULT_PORT,
};

fn with_web(underlay: Option<Underlay>) -> Fixture {
    let mut f = fixture();
    f.driver.underlay = underlay;
    let net = network("shop", "front", NET, 20);
    if let Ok(mut k) = f.driver.known.lock() {
        k.secgroups.insert(
            "shop/web".into(),
            SecurityGroup {
                metadata: nimbus_api::Metadata::new("web", Some("shop")),
                spec: SecurityGroupSpec::default(),
                status: Default::default(),
            },
        );
    }
    f.add(&net, &instance(WEB, "web", &net, 5, &["web"]));
    f
}

#[tokio::test]
async fn peers_get_forwarding_entries_rules_names_and_group_membership() {
    let f = with_web(Some(UNDERLAY));
    f.driver.set_peers(vec![
        peer(NET, "db", 6, &["web"]),
        peer("another-network", "elsewhere", 7, &[]),
    ]);
    f.sync().await;
    let ns = names::router_netns(NET);
    {
        let s = f.host.state();
        let router = &s.namespaces[&ns];
        let vx = router
            .link(names::VXLAN)
            .expect("a VXLAN device on the router");
        let (link, socket_ns) = vx.vxlan.clone().expect("vxlan settings");
        assert_eq!((link.vni, link.local), (7000, UNDERLAY.address));
        assert_eq!(socket_ns, None, "its socket is the host's");
        assert_eq!(vx.master.as_deref(), Some(names::BRIDGE));
        assert_eq!(
            router.fdb.get(&(names::VXLAN.into(), [2, 0, 0, 0, 0, 6])),
            Some(&Ipv4Addr::new(192, 168, 1, 2))
        );
        assert_eq!(router.fdb.len(), 1, "only this network's peers");
        assert_eq!(router.neighbours.len(), 1);
    }
    let script = f.router_script(NET);
    assert!(
        script.contains("\"vx0\" . 02:00:00:00:00:06"),
        "the device is the port of exactly the remote instance: {script}"
    );
    assert!(!script.contains("10.20.0.7"), "{script}");
    assert!(
        script.contains("g_web { 10.20.0.5, 10.20.0.6 }"),
        "the remote member counts for the group: {script}"
    );
    {
        let routers = f.driver.routers.lock().await;
        let names = routers[NET].names.read().expect("names");
        assert_eq!(names.get("db"), Some(&Ipv4Addr::new(10, 20, 0, 6)));
        assert_eq!(names.get("web"), Some(&Ipv4Addr::new(10, 20, 0, 5)));
    }
    // The peer left: no device any more, and no port of it in the rules.
    f.driver.set_peers(vec![]);
    f.sync().await;
    assert!(f.host.state().namespaces[&ns].link(names::VXLAN).is_none());
    let removal = f.router_script(NET);
    assert!(
        removal.contains("delete element bridge nimbus port_ips { \"vx0\" . 10.20.0.6 }"),
        "{removal}"
    );
}

#[tokio::test]
async fn without_an_underlay_no_device_is_ever_made_and_ports_keep_1500() {
    let f = with_web(None);
    f.driver.set_peers(vec![peer(NET, "db", 6, &[])]);
    f.sync().await;
    assert!(f.host.state().calls_with("add_vxlan").is_empty());
    assert_eq!(tunnel::port_mtu(f.driver.underlay), 1500);
}
