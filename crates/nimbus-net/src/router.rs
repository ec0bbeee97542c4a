//! Router namespaces and instance ports: links, addresses, routes and
//! sysctls, all through netlink and `/proc/sys` of the namespace itself.
//!
//! Each router namespace holds one Linux bridge (`br0`) carrying the
//! network's gateway address; every instance port (the router end of a
//! container's veth, or a VM's tap) is a port of that bridge. Instances on
//! one network exchange frames through the bridge. The bridge family of
//! this kernel has no connection tracking, so the namespace turns on
//! `bridge-nf-call-iptables`: bridged IPv4 packets then also pass the
//! namespace's `inet` hooks, where the stateful security groups match
//! them by destination address (sources and destinations are made
//! trustworthy by the bridge-family anti-spoofing rules, see `rules`).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::host::{in_netns, Links, Netns};
use crate::netlink::parse_mac;
use crate::{names, netns, tap, NetError, Result};

pub const DEFAULT_MTU: u32 = 1500;

/// A network's router, as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSpec {
    pub network_id: String,
    pub gateway: Ipv4Addr,
    /// Prefix length of the network's subnet.
    pub prefix_len: u8,
}

/// The bridge's MAC: locally administered, fixed per network.
fn bridge_mac(network_id: &str) -> [u8; 6] {
    let (h, _) = transit_block(network_id, 0);
    let b = u32::from(h).to_be_bytes();
    [0x02, 0x6e, b[0], b[1], b[2], b[3]]
}

/// The uplink between a router namespace and the host: a /30 from
/// 100.64.0.0/10 (host .1, router .2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSide {
    pub netns: PathBuf,
    pub host_link: String,
    pub host_ip: Ipv4Addr,
    pub router_ip: Ipv4Addr,
}

/// One instance's port on its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub instance_id: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub mtu: u32,
}

fn transit_block(network_id: &str, attempt: u32) -> (Ipv4Addr, Ipv4Addr) {
    let mut h: u32 = 0x811c9dc5;
    for b in network_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    // 2^20 /30 blocks in 100.64.0.0/10.
    let block = (h.wrapping_add(attempt)) & 0xfffff;
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + block * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// Make (or find) the router namespace of a network and its uplink.
/// Idempotent: what a crash left half-made is completed.
pub fn ensure_router(host: &dyn Netns, spec: &RouterSpec) -> Result<HostSide> {
    let ns_path = names::router_netns(&spec.network_id);
    host.create(&ns_path)?;
    let host_link = names::host_link(&spec.network_id);
    let gateway = spec.gateway;
    let prefix_len = spec.prefix_len;
    let mac = bridge_mac(&spec.network_id);
    // Inside: loopback, the bridge with the gateway address, forwarding,
    // and bridged IPv4 through the inet hooks (conntrack for the groups).
    in_netns(host, Some(&ns_path), |nl| {
        nl.set_up("lo")?;
        nl.sysctl("net.bridge.bridge-nf-call-iptables", "1")
            .map_err(|e| {
                NetError::Invalid(format!(
                    "security groups need bridged traffic to pass nftables, and this kernel has no \
                     br_netfilter loaded ({e}); run `modprobe br_netfilter` and try again"
                ))
            })?;
        nl.sysctl("net.bridge.bridge-nf-call-ip6tables", "0")?;
        nl.sysctl("net.bridge.bridge-nf-call-arptables", "0")?;
        nl.add_bridge(names::BRIDGE, mac)?;
        nl.sysctl(
            &format!("net.ipv6.conf.{}.disable_ipv6", names::BRIDGE),
            "1",
        )?;
        nl.add_address(names::BRIDGE, gateway, prefix_len)?;
        nl.set_up(names::BRIDGE)?;
        nl.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(())
    })?;
    // The uplink veth, made from the host side.
    let link = &host_link;
    let network_id = &spec.network_id;
    let router_ns = &ns_path;
    let (host_ip, router_ip) = in_netns(host, None, |nl| {
        let existing = nl.link_index(link)?;
        let addrs = nl.addresses()?;
        if let Some(index) = existing {
            if let Some((_, ip, _)) = addrs.iter().find(|(i, _, p)| *i == index && *p == 30) {
                let router = Ipv4Addr::from(u32::from(*ip) + 1);
                // Re-applied: a crash may have come between these steps.
                nl.sysctl(&format!("net.ipv4.conf.{link}.forwarding"), "1")?;
                nl.sysctl(&format!("net.ipv4.conf.{link}.route_localnet"), "1")?;
                nl.set_up(link)?;
                return Ok((*ip, router));
            }
            // A half-made uplink: start over.
            nl.delete_link(link)?;
        }
        let taken: Vec<Ipv4Addr> = addrs.iter().map(|(_, ip, _)| *ip).collect();
        let (host_ip, router_ip) = free_transit_block(network_id, &taken)?;
        nl.add_veth(link, names::UPLINK, Some(router_ns), None, None)?;
        nl.add_address(link, host_ip, 30)?;
        nl.sysctl(&format!("net.ipv4.conf.{link}.forwarding"), "1")?;
        // Published ports answer connections to 127.0.0.1 too.
        nl.sysctl(&format!("net.ipv4.conf.{link}.route_localnet"), "1")?;
        nl.set_up(link)?;
        Ok((host_ip, router_ip))
    })?;
    // The router side is applied every time (address and route replace),
    // so a router whose setup was cut short by a crash is completed.
    in_netns(host, Some(&ns_path), |nl| {
        nl.add_address(names::UPLINK, router_ip, 30)?;
        nl.set_up(names::UPLINK)?;
        nl.add_route(Ipv4Addr::UNSPECIFIED, 0, Some(host_ip), None)?;
        Ok(())
    })?;
    Ok(HostSide {
        netns: ns_path,
        host_link,
        host_ip,
        router_ip,
    })
}

/// The first /30 of the network's sequence whose addresses no host link holds.
fn free_transit_block(network_id: &str, taken: &[Ipv4Addr]) -> Result<(Ipv4Addr, Ipv4Addr)> {
    (0..=64)
        .map(|attempt| transit_block(network_id, attempt))
        .find(|(h, r)| !taken.contains(h) && !taken.contains(r))
        .ok_or_else(|| {
            NetError::Invalid("no free transit block in 100.64.0.0/10 for a router uplink".into())
        })
}

/// Remove a network's router namespace, its VXLAN device (whose socket
/// is the host's) and its uplink.
pub fn remove_router(host: &dyn Netns, network_id: &str) -> Result<()> {
    let ns = names::router_netns(network_id);
    crate::vxlan::remove_tunnel(host, &ns)?;
    let link = names::host_link(network_id);
    in_netns(host, None, |nl| nl.delete_link(&link))?;
    host.remove(&ns)
}

fn prepare_port(nl: &mut dyn Links, link: &str) -> Result<()> {
    nl.sysctl(&format!("net.ipv6.conf.{link}.disable_ipv6"), "1")?;
    nl.set_master(link, names::BRIDGE)?;
    nl.set_up(link)
}

/// Give a container its network namespace (bind-mounted at the returned
/// path) with `eth0` on the router. Idempotent: an existing port is
/// replaced.
pub fn attach_container(host: &dyn Netns, router: &Path, port: &PortSpec) -> Result<PathBuf> {
    let ins = names::instance_netns(&port.instance_id);
    host.create(&ins)?;
    let link = names::port_link(&port.instance_id);
    let mac = parse_mac(&port.mac)?;
    let mtu = port.mtu;
    in_netns(host, Some(router), |nl| {
        nl.delete_link(&link)?;
        nl.add_veth(&link, "eth0", Some(&ins), Some(mac), Some(mtu))?;
        prepare_port(nl, &link)
    })?;
    let (ip, prefix, gw) = (port.ip, port.prefix_len, port.gateway);
    in_netns(host, Some(&ins), |nl| {
        // The namespace belongs to the host's user namespace, where the
        // container's root has no capabilities: let it bind low ports and
        // ping as any process may in a container's own namespace.
        nl.sysctl("net.ipv4.ip_unprivileged_port_start", "0")?;
        nl.sysctl("net.ipv4.ping_group_range", "0 2147483647")?;
        nl.set_up("lo")?;
        nl.add_address("eth0", ip, prefix)?;
        nl.set_up("eth0")?;
        nl.add_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), None)?;
        Ok(())
    })?;
    Ok(ins)
}

/// Remove a container's port and namespace.
pub fn detach_container(host: &dyn Netns, router: Option<&Path>, instance_id: &str) -> Result<()> {
    if let Some(r) = router.filter(|r| host.exists(r)) {
        let link = names::port_link(instance_id);
        in_netns(host, Some(r), |nl| nl.delete_link(&link))?;
    }
    host.remove(&names::instance_netns(instance_id))
}

/// Create a VM's persistent tap on its router, as a port of its bridge.
/// The VM's supervisor opens it by name with [`open_tap`] (a shim closes
/// inherited descriptors, so the tap is not handed over as an fd); it
/// stays until [`detach_tap`] deletes it. The VM must use `port.mac` on
/// its NIC: frames with any other source MAC or IP are dropped by the
/// router's rules (DHCP requests from 0.0.0.0 are let through).
pub fn attach_tap(host: &dyn Netns, router: &Path, port: &PortSpec) -> Result<()> {
    let name = names::tap_link(&port.instance_id);
    in_netns(host, Some(router), |nl| {
        let _ = nl.delete_link(&name);
        nl.add_tap(&name)?;
        prepare_port(nl, &name)
    })
}

/// Open the persistent tap `name` of the router at `router` (for QEMU's
/// `-netdev tap,fd=N`).
pub fn open_tap(router: &Path, name: &str) -> Result<OwnedFd> {
    let n = name.to_string();
    netns::run_in(Some(router), move || tap::create_tap(&n, false))
}

/// Remove a VM's tap.
pub fn detach_tap(host: &dyn Netns, router: &Path, instance_id: &str) -> Result<()> {
    let link = names::tap_link(instance_id);
    in_netns(host, Some(router), |nl| nl.delete_link(&link))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeHost, LinkKind};
    use crate::host::Netns;

    const NET: &str = "5f0e1d2c-0000-4000-8000-00000000aa01";
    const INSTANCE: &str = "7a6b5c4d-0000-4000-8000-00000000bb02";

    fn spec() -> RouterSpec {
        RouterSpec {
            network_id: NET.into(),
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            prefix_len: 24,
        }
    }

    fn port() -> PortSpec {
        PortSpec {
            instance_id: INSTANCE.into(),
            ip: Ipv4Addr::new(10, 20, 0, 5),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            mac: "02:00:00:00:00:05".into(),
            mtu: DEFAULT_MTU,
        }
    }

    #[test]
    fn a_router_has_a_bridge_with_the_gateway_and_an_uplink_to_the_host() {
        let host = FakeHost::new();
        let side = ensure_router(&host, &spec()).unwrap();
        let s = host.state();
        let ns = &s.namespaces[&side.netns];
        let bridge = ns.link(names::BRIDGE).expect("the bridge");
        assert_eq!(bridge.kind, LinkKind::Bridge);
        assert!(bridge.up);
        assert_eq!(ns.addresses_of(names::BRIDGE), vec!["10.20.0.1/24"]);
        assert_eq!(
            ns.addresses_of(names::UPLINK),
            vec![format!("{}/30", side.router_ip)]
        );
        assert_eq!(ns.routes[0].gateway, Some(side.host_ip), "default route");
        assert_eq!(ns.sysctls["net.ipv4.ip_forward"], "1");
        assert_eq!(ns.sysctls["net.bridge.bridge-nf-call-iptables"], "1");
        let uplink = s.host.link(&side.host_link).expect("the host end");
        assert!(uplink.up);
        assert_eq!(
            s.host.addresses_of(&side.host_link),
            vec![format!("{}/30", side.host_ip)]
        );
        assert_eq!(u32::from(side.router_ip), u32::from(side.host_ip) + 1);
    }

    #[test]
    fn ensuring_a_router_again_keeps_its_uplink_and_a_half_made_one_is_redone() {
        let host = FakeHost::new();
        let first = ensure_router(&host, &spec()).unwrap();
        let again = ensure_router(&host, &spec()).unwrap();
        assert_eq!(first, again);
        assert!(host.state().calls_with("add_veth").len() == 1);
        // A crash after the veth, before its address: made again.
        let link = names::host_link(NET);
        host.state().host.addresses.clear();
        let redone = ensure_router(&host, &spec()).unwrap();
        assert_eq!(redone.host_ip, first.host_ip);
        assert_eq!(host.state().calls_with("add_veth").len(), 2);
        assert_eq!(
            host.state()
                .calls_with(&format!("delete_link {link}"))
                .len(),
            1
        );
    }

    #[test]
    fn a_taken_transit_block_moves_the_uplink_to_the_next() {
        let host = FakeHost::new();
        let (h, _) = transit_block(NET, 0);
        host.state().host.addresses.push(("lo".into(), h, 30));
        let side = ensure_router(&host, &spec()).unwrap();
        assert_eq!((side.host_ip, side.router_ip), transit_block(NET, 1));
    }

    #[test]
    fn no_br_netfilter_says_what_to_load() {
        let host = FakeHost::new();
        host.state().fail_on.push("bridge-nf-call-iptables".into());
        let err = ensure_router(&host, &spec()).unwrap_err().to_string();
        assert!(err.contains("modprobe br_netfilter"), "{err}");
    }

    #[test]
    fn a_container_port_is_a_bridge_port_and_eth0_in_its_own_namespace() {
        let host = FakeHost::new();
        let side = ensure_router(&host, &spec()).unwrap();
        let ins = attach_container(&host, &side.netns, &port()).unwrap();
        let link = names::port_link(INSTANCE);
        {
            let s = host.state();
            let router_port = s.namespaces[&side.netns].link(&link).expect("port");
            assert_eq!(router_port.master.as_deref(), Some(names::BRIDGE));
            assert!(router_port.up);
            let inside = &s.namespaces[&ins];
            let eth0 = inside.link("eth0").expect("eth0");
            assert_eq!(eth0.mac, Some([2, 0, 0, 0, 0, 5]));
            assert_eq!(eth0.mtu, Some(DEFAULT_MTU));
            assert!(eth0.up && inside.link("lo").is_some_and(|l| l.up));
            assert_eq!(inside.addresses_of("eth0"), vec!["10.20.0.5/24"]);
            assert_eq!(inside.routes[0].gateway, Some(Ipv4Addr::new(10, 20, 0, 1)));
        }
        // Attaching again replaces the port instead of failing on its name.
        attach_container(&host, &side.netns, &port()).unwrap();
        assert_eq!(
            host.state()
                .calls_with(&format!("delete_link {link}"))
                .len(),
            1
        );
        detach_container(&host, Some(&side.netns), INSTANCE).unwrap();
        let s = host.state();
        assert!(!s.namespaces.contains_key(&ins));
        assert!(s.namespaces[&side.netns].link(&link).is_none());
    }

    #[test]
    fn a_bad_mac_is_refused_before_anything_is_made_on_the_router() {
        let host = FakeHost::new();
        let side = ensure_router(&host, &spec()).unwrap();
        let mut p = port();
        p.mac = "02:00:00:00:05".into();
        let err = attach_container(&host, &side.netns, &p).unwrap_err();
        assert!(err.to_string().contains("02:00:00:00:05"), "{err}");
        assert!(host.state().calls_with("add_veth p").is_empty());
    }

    #[test]
    fn a_vm_tap_is_a_bridge_port_until_detached_and_the_router_goes_whole() {
        let host = FakeHost::new();
        let side = ensure_router(&host, &spec()).unwrap();
        attach_tap(&host, &side.netns, &port()).unwrap();
        let tap = names::tap_link(INSTANCE);
        {
            let s = host.state();
            let t = s.namespaces[&side.netns].link(&tap).expect("tap");
            assert_eq!(t.kind, LinkKind::Tap);
            assert_eq!(t.master.as_deref(), Some(names::BRIDGE));
        }
        detach_tap(&host, &side.netns, INSTANCE).unwrap();
        assert!(host.state().namespaces[&side.netns].link(&tap).is_none());
        remove_router(&host, NET).unwrap();
        let s = host.state();
        assert!(s.namespaces.is_empty());
        assert!(s.host.link(&side.host_link).is_none());
        // Removing what is gone is fine (a retried cleanup).
        drop(s);
        remove_router(&host, NET).unwrap();
        detach_container(&host, Some(&side.netns), INSTANCE).unwrap();
        assert!(!host.exists(&side.netns));
    }
}
