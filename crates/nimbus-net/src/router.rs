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

use crate::netlink::{parse_mac, Netlink};
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
pub fn ensure_router(spec: &RouterSpec) -> Result<HostSide> {
    let ns_path = names::router_netns(&spec.network_id);
    netns::create(&ns_path)?;
    let host_link = names::host_link(&spec.network_id);
    let gateway = spec.gateway;
    let prefix_len = spec.prefix_len;
    let mac = bridge_mac(&spec.network_id);
    // Inside: loopback, the bridge with the gateway address, forwarding,
    // and bridged IPv4 through the inet hooks (conntrack for the groups).
    netns::run_in(Some(&ns_path), move || {
        let mut nl = Netlink::new()?;
        nl.set_up("lo")?;
        netns::sysctl("net.bridge.bridge-nf-call-iptables", "1").map_err(|e| {
            NetError::Invalid(format!(
                "security groups need bridged traffic to pass nftables, and this kernel has no \
                 br_netfilter loaded ({e}); run `modprobe br_netfilter` and try again"
            ))
        })?;
        netns::sysctl("net.bridge.bridge-nf-call-ip6tables", "0")?;
        netns::sysctl("net.bridge.bridge-nf-call-arptables", "0")?;
        nl.add_bridge(names::BRIDGE, mac)?;
        netns::sysctl(
            &format!("net.ipv6.conf.{}.disable_ipv6", names::BRIDGE),
            "1",
        )?;
        nl.add_address(names::BRIDGE, gateway, prefix_len)?;
        nl.set_up(names::BRIDGE)?;
        netns::sysctl("net.ipv4.ip_forward", "1")?;
        Ok(())
    })?;
    // The uplink veth, made from the host side.
    let ns_for_host = ns_path.clone();
    let link = host_link.clone();
    let network_id = spec.network_id.clone();
    let (host_ip, router_ip) = netns::run_in(None, move || {
        let mut nl = Netlink::new()?;
        let existing = nl.link_index(&link)?;
        let addrs = nl.addresses()?;
        if let Some(index) = existing {
            if let Some((_, ip, _)) = addrs.iter().find(|(i, _, p)| *i == index && *p == 30) {
                let router = Ipv4Addr::from(u32::from(*ip) + 1);
                // Re-applied: a crash may have come between these steps.
                netns::sysctl(&format!("net.ipv4.conf.{link}.forwarding"), "1")?;
                netns::sysctl(&format!("net.ipv4.conf.{link}.route_localnet"), "1")?;
                nl.set_up(&link)?;
                return Ok((*ip, router));
            }
            // A half-made uplink: start over.
            nl.delete_link(&link)?;
        }
        let taken: Vec<Ipv4Addr> = addrs.iter().map(|(_, ip, _)| *ip).collect();
        let mut attempt = 0;
        let (host, router) = loop {
            let (h, r) = transit_block(&network_id, attempt);
            if !taken.contains(&h) && !taken.contains(&r) {
                break (h, r);
            }
            attempt += 1;
            if attempt > 64 {
                return Err(NetError::Invalid(
                    "no free transit block in 100.64.0.0/10 for a router uplink".into(),
                ));
            }
        };
        let ns = netns::open(&ns_for_host)?;
        nl.add_veth(&link, names::UPLINK, Some(netns::raw(&ns)), None, None)?;
        nl.add_address(&link, host, 30)?;
        netns::sysctl(&format!("net.ipv4.conf.{link}.forwarding"), "1")?;
        // Published ports answer connections to 127.0.0.1 too.
        netns::sysctl(&format!("net.ipv4.conf.{link}.route_localnet"), "1")?;
        nl.set_up(&link)?;
        Ok((host, router))
    })?;
    // The router side is applied every time (address and route replace),
    // so a router whose setup was cut short by a crash is completed.
    netns::run_in(Some(&ns_path), move || {
        let mut nl = Netlink::new()?;
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

/// Remove a network's router namespace and uplink.
pub fn remove_router(network_id: &str) -> Result<()> {
    let link = names::host_link(network_id);
    netns::run_in(None, move || Netlink::new()?.delete_link(&link))?;
    netns::remove(&names::router_netns(network_id))
}

fn prepare_port(router: &Path, link: String) -> Result<()> {
    netns::run_in(Some(router), move || {
        let mut nl = Netlink::new()?;
        netns::sysctl(&format!("net.ipv6.conf.{link}.disable_ipv6"), "1")?;
        nl.set_master(&link, names::BRIDGE)?;
        nl.set_up(&link)
    })
}

/// Give a container its network namespace (bind-mounted at the returned
/// path) with `eth0` on the router. Idempotent: an existing port is
/// replaced.
pub fn attach_container(router: &Path, port: &PortSpec) -> Result<PathBuf> {
    let ins = names::instance_netns(&port.instance_id);
    netns::create(&ins)?;
    let link = names::port_link(&port.instance_id);
    let mac = parse_mac(&port.mac)?;
    let mtu = port.mtu;
    let ins_for_router = ins.clone();
    let l = link.clone();
    netns::run_in(Some(router), move || {
        let mut nl = Netlink::new()?;
        nl.delete_link(&l)?;
        let target = netns::open(&ins_for_router)?;
        nl.add_veth(&l, "eth0", Some(netns::raw(&target)), Some(mac), Some(mtu))
    })?;
    prepare_port(router, link)?;
    let (ip, prefix, gw) = (port.ip, port.prefix_len, port.gateway);
    netns::run_in(Some(&ins), move || {
        let mut nl = Netlink::new()?;
        // The namespace belongs to the host's user namespace, where the
        // container's root has no capabilities: let it bind low ports and
        // ping as any process may in a container's own namespace.
        netns::sysctl("net.ipv4.ip_unprivileged_port_start", "0")?;
        netns::sysctl("net.ipv4.ping_group_range", "0 2147483647")?;
        nl.set_up("lo")?;
        nl.add_address("eth0", ip, prefix)?;
        nl.set_up("eth0")?;
        nl.add_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), None)?;
        Ok(())
    })?;
    Ok(ins)
}

/// Remove a container's port and namespace.
pub fn detach_container(router: Option<&Path>, instance_id: &str) -> Result<()> {
    if let Some(r) = router.filter(|r| r.exists()) {
        let link = names::port_link(instance_id);
        netns::run_in(Some(r), move || Netlink::new()?.delete_link(&link))?;
    }
    netns::remove(&names::instance_netns(instance_id))
}

/// Create a VM's persistent tap on its router, as a port of its bridge.
/// The VM's supervisor opens it by name with [`open_tap`] (a shim closes
/// inherited descriptors, so the tap is not handed over as an fd); it
/// stays until [`detach_tap`] deletes it. The VM must use `port.mac` on
/// its NIC: frames with any other source MAC or IP are dropped by the
/// router's rules (DHCP requests from 0.0.0.0 are let through).
pub fn attach_tap(router: &Path, port: &PortSpec) -> Result<()> {
    let name = names::tap_link(&port.instance_id);
    let n = name.clone();
    netns::run_in(Some(router), move || {
        let _ = Netlink::new()?.delete_link(&n);
        let fd = tap::create_tap(&n, false)?;
        tap::set_persistent(&fd)
    })?;
    prepare_port(router, name)
}

/// Open the persistent tap `name` of the router at `router` (for QEMU's
/// `-netdev tap,fd=N`).
pub fn open_tap(router: &Path, name: &str) -> Result<OwnedFd> {
    let n = name.to_string();
    netns::run_in(Some(router), move || tap::create_tap(&n, false))
}

/// Remove a VM's tap.
pub fn detach_tap(router: &Path, instance_id: &str) -> Result<()> {
    let link = names::tap_link(instance_id);
    netns::run_in(Some(router), move || Netlink::new()?.delete_link(&link))
}
