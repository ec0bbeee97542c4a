//! Tenant networks that span hosts: one VXLAN device per router namespace
//! on each host that has an instance of the network, with the network's
//! VNI (allocated in the store, unique in the cluster).
//!
//! The device is made from the host's namespace, so its UDP socket (on
//! the host's underlay address, port 4789) lives there, and placed in the
//! router namespace as a port of `br0` (`vx0`): frames between instances
//! of one network on two hosts cross the two bridges and the underlay.
//! It learns nothing and floods nothing: for every instance of the network
//! on another host, the store gives a forwarding entry (its MAC → that
//! host's underlay address) and a neighbour entry (its IPv4 → MAC) from
//! which the device answers ARP itself (`proxy`). A frame for an address
//! with no entry goes nowhere. Two networks never share a VNI, so
//! projects with the same subnet never see each other's frames.
//!
//! The bridge-family rules treat `vx0` as the port of exactly the remote
//! instances (their MACs and addresses are its elements in `rules`), so a
//! remote host cannot inject frames with any other source, and the
//! security groups of a local instance filter traffic from remote ones as
//! from local ones (the remote host's groups filter the other way).
//!
//! VXLAN over IPv4 costs 50 bytes of each underlay packet: instances on a
//! network that spans hosts get an MTU 50 bytes under the underlay's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use crate::host::{in_netns, Netns};
use crate::names;
use crate::netlink::VxlanLink;
use crate::Result;

/// The IANA port for VXLAN.
pub const DEFAULT_PORT: u16 = 4789;
/// Outer Ethernet-less IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD: u32 = 50;
/// VNIs are 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Where a host meets the others: its underlay ("data-centre") address
/// and the UDP port of its VXLAN endpoint (the same on every host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub address: Ipv4Addr,
    pub port: u16,
}

impl Underlay {
    /// The device of a network with `vni` on this underlay; `mtu` is the
    /// instances' (the underlay's minus [`OVERHEAD`]).
    pub fn link(&self, vni: u32, mtu: u32) -> VxlanLink {
        VxlanLink {
            vni,
            local: self.address,
            port: self.port,
            mtu,
        }
    }
}

/// Refuse an underlay this host cannot use: not a unicast IPv4 address of
/// one of its links, or port 0.
pub fn check_underlay(u: &Underlay) -> Result<()> {
    let a = u.address;
    if a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
        return Err(crate::NetError::Invalid(format!(
            "tunnel address {a} cannot carry traffic between hosts; give this host's address on the network the hosts share (see `ip -4 addr`)"
        )));
    }
    if u.port == 0 {
        return Err(crate::NetError::Invalid(
            "tunnel port 0 is not a port; leave --tunnel-port out for 4789, or give the same port on every host".into(),
        ));
    }
    std::net::UdpSocket::bind((a, 0)).map_err(|e| {
        crate::NetError::Invalid(format!(
            "tunnel address {a} is not an address of this host ({e}); give one of its own (see `ip -4 addr`)"
        ))
    })?;
    Ok(())
}

/// An instance of the network on another host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemotePort {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The underlay address of the instance's host.
    pub host: Ipv4Addr,
}

/// What [`sync_remotes`] changes: entries to set and to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemotePlan {
    pub fdb_set: Vec<([u8; 6], Ipv4Addr)>,
    pub fdb_remove: Vec<[u8; 6]>,
    pub neighbour_set: Vec<(Ipv4Addr, [u8; 6])>,
    pub neighbour_remove: Vec<Ipv4Addr>,
}

impl RemotePlan {
    pub fn is_empty(&self) -> bool {
        *self == RemotePlan::default()
    }
}

/// The entries that bring the device from what it holds (`fdb`,
/// `neighbours`) to exactly `want`. Should two remote ports claim one
/// address or MAC (an address reused while the old instance's entry
/// lingers in the store), the last in order wins.
pub fn plan_remotes(
    fdb: &[([u8; 6], Ipv4Addr)],
    neighbours: &[(Ipv4Addr, [u8; 6])],
    want: &[RemotePort],
) -> RemotePlan {
    let want_fdb: BTreeMap<[u8; 6], Ipv4Addr> = want.iter().map(|r| (r.mac, r.host)).collect();
    let want_neigh: BTreeMap<Ipv4Addr, [u8; 6]> = want.iter().map(|r| (r.ip, r.mac)).collect();
    let have_neigh: BTreeMap<Ipv4Addr, [u8; 6]> = neighbours.iter().copied().collect();
    // A MAC with a remote not wanted (or several, appended by hand) is
    // removed whole, then set again if wanted.
    let fdb_remove: Vec<[u8; 6]> = fdb
        .iter()
        .filter(|(m, h)| want_fdb.get(m) != Some(h))
        .map(|(m, _)| *m)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    RemotePlan {
        fdb_set: want_fdb
            .iter()
            .filter(|(m, h)| fdb_remove.contains(*m) || !fdb.contains(&(**m, **h)))
            .map(|(m, h)| (*m, *h))
            .collect(),
        fdb_remove,
        neighbour_set: want_neigh
            .iter()
            .filter(|(ip, m)| have_neigh.get(*ip) != Some(*m))
            .map(|(ip, m)| (*ip, *m))
            .collect(),
        neighbour_remove: have_neigh
            .keys()
            .filter(|ip| !want_neigh.contains_key(*ip))
            .copied()
            .collect(),
    }
}

/// Make the network's VXLAN device in the router namespace at `router`
/// unless it is there: made from the caller's namespace (the host's), a
/// port of the bridge, up. Idempotent.
pub fn ensure_tunnel(host: &dyn Netns, router: &Path, tunnel: &VxlanLink) -> Result<()> {
    let present = in_netns(host, Some(router), |nl| {
        Ok(nl.link_index(names::VXLAN)?.is_some())
    })?;
    if !present {
        let t = tunnel.clone();
        in_netns(host, None, |nl| {
            nl.add_vxlan(names::VXLAN, &t, Some(router))
        })?;
    }
    in_netns(host, Some(router), |nl| {
        nl.sysctl(&format!("net.ipv6.conf.{}.disable_ipv6", names::VXLAN), "1")?;
        nl.set_master(names::VXLAN, names::BRIDGE)?;
        nl.set_up(names::VXLAN)
    })
}

/// Program the device's forwarding and neighbour entries to be exactly
/// `remotes`; what changed.
pub fn sync_remotes(host: &dyn Netns, router: &Path, remotes: &[RemotePort]) -> Result<RemotePlan> {
    in_netns(host, Some(router), |nl| {
        let link = names::VXLAN;
        let plan = plan_remotes(&nl.fdb_remotes(link)?, &nl.neighbours(link)?, remotes);
        // Removals first: a moved instance's MAC is re-pointed, not doubled.
        for mac in &plan.fdb_remove {
            nl.set_fdb(link, *mac, None)?;
        }
        for ip in &plan.neighbour_remove {
            nl.set_neighbour(link, *ip, None)?;
        }
        for (mac, remote) in &plan.fdb_set {
            nl.set_fdb(link, *mac, Some(*remote))?;
        }
        for (ip, mac) in &plan.neighbour_set {
            nl.set_neighbour(link, *ip, Some(*mac))?;
        }
        Ok(plan)
    })
}

/// Remove the network's VXLAN device (and with it every entry); a router
/// without one is fine.
pub fn remove_tunnel(host: &dyn Netns, router: &Path) -> Result<()> {
    if !host.exists(router) {
        return Ok(());
    }
    in_netns(host, Some(router), |nl| nl.delete_link(names::VXLAN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeHost, LinkKind};
    use crate::router::{ensure_router, RouterSpec};

    const NET: &str = "5f0e1d2c-0000-4000-8000-00000000aa01";

    fn tunnel() -> VxlanLink {
        VxlanLink {
            vni: 4242,
            local: Ipv4Addr::new(192, 168, 50, 1),
            port: DEFAULT_PORT,
            mtu: 1450,
        }
    }

    fn remote(last: u8, host: u8) -> RemotePort {
        RemotePort {
            ip: Ipv4Addr::new(10, 20, 0, last),
            mac: [2, 0, 0, 0, 0, last],
            host: Ipv4Addr::new(192, 168, 50, host),
        }
    }

    fn router(host: &FakeHost) -> std::path::PathBuf {
        ensure_router(
            host,
            &RouterSpec {
                network_id: NET.into(),
                gateway: Ipv4Addr::new(10, 20, 0, 1),
                prefix_len: 24,
            },
        )
        .unwrap()
        .netns
    }

    #[test]
    fn the_device_is_made_from_the_host_and_is_a_port_of_the_bridge() {
        let host = FakeHost::new();
        let r = router(&host);
        ensure_tunnel(&host, &r, &tunnel()).unwrap();
        ensure_tunnel(&host, &r, &tunnel()).unwrap();
        let s = host.state();
        assert_eq!(s.calls_with("add_vxlan").len(), 1, "made once");
        assert!(
            s.calls_with("add_vxlan")[0].starts_with("host "),
            "made from the host's namespace, so its socket is there"
        );
        let vx = s.namespaces[&r]
            .link(names::VXLAN)
            .expect("vx0 in the router");
        assert_eq!(vx.kind, LinkKind::Vxlan);
        assert_eq!(vx.master.as_deref(), Some(names::BRIDGE));
        assert!(vx.up);
        let (settings, socket_ns) = vx.vxlan.clone().unwrap();
        assert_eq!(settings, tunnel());
        assert_eq!(socket_ns, None, "the socket lives in the host namespace");
        assert!(s.host.link(names::VXLAN).is_none());
    }

    #[test]
    fn entries_follow_the_remote_ports_exactly() {
        let host = FakeHost::new();
        let r = router(&host);
        ensure_tunnel(&host, &r, &tunnel()).unwrap();
        let first = sync_remotes(&host, &r, &[remote(5, 2), remote(6, 3)]).unwrap();
        assert_eq!(first.fdb_set.len(), 2);
        assert_eq!(first.neighbour_set.len(), 2);
        {
            let s = host.state();
            let ns = &s.namespaces[&r];
            assert_eq!(
                ns.fdb.get(&(names::VXLAN.into(), [2, 0, 0, 0, 0, 5])),
                Some(&Ipv4Addr::new(192, 168, 50, 2))
            );
            assert_eq!(
                ns.neighbours
                    .get(&(names::VXLAN.into(), Ipv4Addr::new(10, 20, 0, 6))),
                Some(&[2, 0, 0, 0, 0, 6])
            );
        }
        // Nothing changed: nothing sent.
        assert!(sync_remotes(&host, &r, &[remote(6, 3), remote(5, 2)])
            .unwrap()
            .is_empty());
        // .5 moved to host .4, .6 went away.
        let moved = sync_remotes(&host, &r, &[remote(5, 4)]).unwrap();
        assert_eq!(
            moved.fdb_set,
            vec![([2, 0, 0, 0, 0, 5], Ipv4Addr::new(192, 168, 50, 4))]
        );
        assert_eq!(moved.neighbour_remove, vec![Ipv4Addr::new(10, 20, 0, 6)]);
        let s = host.state();
        let ns = &s.namespaces[&r];
        assert_eq!(ns.fdb.len(), 1);
        assert_eq!(ns.neighbours.len(), 1);
    }

    #[test]
    fn removing_the_device_takes_its_entries_and_a_missing_router_is_fine() {
        let host = FakeHost::new();
        let r = router(&host);
        ensure_tunnel(&host, &r, &tunnel()).unwrap();
        sync_remotes(&host, &r, &[remote(5, 2)]).unwrap();
        remove_tunnel(&host, &r).unwrap();
        {
            let s = host.state();
            let ns = &s.namespaces[&r];
            assert!(ns.link(names::VXLAN).is_none());
            assert!(ns.fdb.is_empty() && ns.neighbours.is_empty());
        }
        remove_tunnel(&host, Path::new("/run/nimbus/netns/nr-gone")).unwrap();
    }

    #[test]
    fn an_underlay_must_be_an_address_of_this_host() {
        let bad = |a: [u8; 4], port| {
            check_underlay(&Underlay {
                address: Ipv4Addr::from(a),
                port,
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad([127, 0, 0, 1], 4789).contains("ip -4 addr"));
        assert!(bad([0, 0, 0, 0], 4789).contains("cannot carry"));
        // TEST-NET-3: no host of ours holds it.
        assert!(bad([203, 0, 113, 77], 4789).contains("not an address of this host"));
        assert!(bad([203, 0, 113, 77], 0).contains("port 0"));
    }

    #[test]
    fn a_plan_from_a_hand_made_state_removes_strays() {
        let stray_mac = [2, 9, 9, 9, 9, 9];
        let plan = plan_remotes(
            &[
                (stray_mac, Ipv4Addr::new(192, 168, 50, 9)),
                ([2, 0, 0, 0, 0, 5], Ipv4Addr::new(192, 168, 50, 2)),
                ([2, 0, 0, 0, 0, 5], Ipv4Addr::new(192, 168, 50, 7)),
            ],
            &[(Ipv4Addr::new(10, 20, 0, 9), stray_mac)],
            &[remote(5, 2)],
        );
        assert_eq!(plan.fdb_remove, vec![[2, 0, 0, 0, 0, 5], stray_mac]);
        assert_eq!(plan.neighbour_remove, vec![Ipv4Addr::new(10, 20, 0, 9)]);
        assert_eq!(plan.neighbour_set.len(), 1);
    }
}
