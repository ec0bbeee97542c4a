//! A small synchronous rtnetlink client on `netlink-packet-route`: the few
//! link, address and route operations Nimbus needs. The socket works in the
//! network namespace of the thread that created it (see `netns::run_in`).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

use crate::{NetError, Result};

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

/// Parse `02:aa:bb:cc:dd:ee`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(NetError::Invalid(format!(
            "MAC address {text:?} is not aa:bb:cc:dd:ee:ff"
        )));
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16)
            .map_err(|_| NetError::Invalid(format!("MAC address {text:?} is not hex")))?;
    }
    Ok(mac)
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| NetError::io("open a netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetError::io("bind the netlink socket", e))?;
        Ok(Netlink { socket, seq: 1 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        nl.header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.header.length as usize];
        nl.serialize(&mut buf[..]);
        self.socket
            .send(&buf, 0)
            .map_err(|e| NetError::io("send a netlink request", e))?;
        Ok(self.seq)
    }

    /// Send and collect replies until the ack (or the end of a dump).
    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(|e| NetError::io("receive a netlink reply", e))?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..n])
                    .map_err(|e| NetError::Netlink {
                        what: what.into(),
                        message: format!("unreadable reply: {e}"),
                    })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            if e.code.is_none() {
                                return Ok(out);
                            }
                            return Err(NetError::Netlink {
                                what: what.into(),
                                message: e.to_io().to_string(),
                            });
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Every link's message.
    fn dump_links(&mut self) -> Result<Vec<LinkMessage>> {
        let replies = self.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    fn name_of(link: &LinkMessage) -> Option<String> {
        link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    }

    /// Every link: (index, name).
    pub fn links(&mut self) -> Result<Vec<(u32, String)>> {
        Ok(self
            .dump_links()?
            .iter()
            .filter_map(|l| Some((l.header.index, Self::name_of(l)?)))
            .collect())
    }

    /// Names of the ports of the bridge `bridge`.
    pub fn bridge_ports(&mut self, bridge: &str) -> Result<Vec<String>> {
        let master = self.require_index(bridge)?;
        Ok(self
            .dump_links()?
            .iter()
            .filter(|l| {
                l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == master))
            })
            .filter_map(Self::name_of)
            .collect())
    }

    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(NetError::Netlink { message, .. }) if message.contains("No such device") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn require_index(&mut self, name: &str) -> Result<u32> {
        self.link_index(name)?.ok_or_else(|| NetError::Netlink {
            what: format!("find link {name}"),
            message: "no such link".into(),
        })
    }

    /// A veth pair `name` (here) and `peer` (here, or in the namespace of
    /// `peer_netns` when given), with optional MAC and MTU on the peer.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: Option<RawFd>,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        if let Some(fd) = peer_netns {
            peer_msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        if let Some(mac) = peer_mac {
            peer_msg
                .attributes
                .push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(m) = mtu {
            peer_msg.attributes.push(LinkAttribute::Mtu(m));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            &format!("create veth {name}/{peer}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// A Linux bridge `name` with a fixed MAC address (a bridge otherwise
    /// takes the lowest MAC of its ports, which changes as ports come and
    /// go and makes instances re-learn their gateway). An existing link of
    /// that name is kept.
    pub fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        if self.link_index(name)?.is_some() {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Make `link` a port of the bridge `bridge`.
    pub fn set_master(&mut self, link: &str, bridge: &str) -> Result<()> {
        let index = self.require_index(link)?;
        let master = self.require_index(bridge)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Controller(master));
        self.request(
            &format!("attach {link} to bridge {bridge}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )?;
        Ok(())
    }

    /// Bring a link up.
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        let index = self.require_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            &format!("bring up {name}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )?;
        Ok(())
    }

    /// Delete a link; a missing link is fine.
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let Some(index) = self.link_index(name)? else {
            return Ok(());
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Ok(_) => Ok(()),
            Err(NetError::Netlink { message, .. }) if message.contains("No such device") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Add (or keep) an IPv4 address on a link.
    pub fn add_address(&mut self, link: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let index = self.require_index(link)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.request(
            &format!("add address {ip}/{prefix_len} to {link}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// IPv4 addresses of every link here: (link index, address, prefix).
    pub fn addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(IpAddr::V4(ip)) => {
                        Some((a.header.index, *ip, a.header.prefix_len))
                    }
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    /// A route to `dst/prefix_len` via `gateway`, or directly on `link`.
    pub fn add_route(
        &mut self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        link: Option<&str>,
    ) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(l) = link {
            let index = self.require_index(l)?;
            msg.attributes.push(RouteAttribute::Oif(index));
        }
        self.request(
            &format!("add route {dst}/{prefix_len}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// A VXLAN device `name` made from this namespace, so its UDP socket
    /// (on `local`:`port`) lives here, placed in the namespace `netns`
    /// when given. No learning (forwarding entries come from the store)
    /// and ARP answered from its neighbour table (`proxy`): nothing is
    /// flooded to other hosts.
    pub fn add_vxlan(
        &mut self,
        name: &str,
        tunnel: &VxlanLink,
        netns: Option<RawFd>,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(tunnel.mtu));
        if let Some(fd) = netns {
            msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(tunnel.vni),
                InfoVxlan::Local(tunnel.local),
                InfoVxlan::Port(tunnel.port),
                InfoVxlan::Learning(false),
                InfoVxlan::Proxy(true),
                InfoVxlan::Ttl(64),
            ])),
        ]));
        self.request(
            &format!(
                "create vxlan {name} (vni {}, local {})",
                tunnel.vni, tunnel.local
            ),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn dump_neighbours(&mut self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let replies = self.request(
            "list neighbours",
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// The permanent IPv4 neighbours of `link`: (address, MAC).
    pub fn neighbours(&mut self, link: &str) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let index = self.require_index(link)?;
        Ok(self
            .dump_neighbours(AddressFamily::Inet)?
            .iter()
            .filter(|n| n.header.ifindex == index && n.header.state == NeighbourState::Permanent)
            .filter_map(|n| Some((neighbour_ip(n)?, neighbour_mac(n)?)))
            .collect())
    }

    /// The forwarding entries of the VXLAN device `link` that send to a
    /// remote host: (MAC, remote address).
    pub fn fdb_remotes(&mut self, link: &str) -> Result<Vec<([u8; 6], Ipv4Addr)>> {
        let index = self.require_index(link)?;
        Ok(self
            .dump_neighbours(AddressFamily::Bridge)?
            .iter()
            .filter(|n| n.header.ifindex == index)
            .filter_map(|n| Some((neighbour_mac(n)?, neighbour_ip(n)?)))
            .collect())
    }

    fn neighbour_request(&mut self, what: String, msg: NeighbourMessage, add: bool) -> Result<()> {
        let result = if add {
            self.request(
                &what,
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        } else {
            self.request(&what, RouteNetlinkMessage::DelNeighbour(msg), 0)
        };
        match result {
            Ok(_) => Ok(()),
            // Deleting what is gone is fine (a retried sync).
            Err(NetError::Netlink { message, .. })
                if !add && message.contains("No such file or directory") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Set (`Some(mac)`) or remove (`None`) the permanent neighbour `ip`
    /// on `link`.
    pub fn set_neighbour(&mut self, link: &str, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = self.require_index(link)?;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        if let Some(m) = mac {
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(m.to_vec()));
        }
        self.neighbour_request(format!("neighbour {ip} on {link}"), msg, mac.is_some())
    }

    /// Set (`Some(remote)`) or remove (`None`) the forwarding entry of
    /// `mac` on the VXLAN device `link`.
    pub fn set_fdb(&mut self, link: &str, mac: [u8; 6], remote: Option<Ipv4Addr>) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.require_index(link)?;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        if let Some(ip) = remote {
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        }
        self.neighbour_request(
            format!("forwarding entry {} on {link}", format_mac(mac)),
            msg,
            remote.is_some(),
        )
    }
}

/// What a VXLAN device is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanLink {
    pub vni: u32,
    /// The host's underlay address: the tunnel's source.
    pub local: Ipv4Addr,
    /// UDP port (4789).
    pub port: u16,
    pub mtu: u32,
}

/// `02:aa:bb:cc:dd:ee`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn neighbour_ip(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // A bridge entry's remote is not decoded as IPv4 by the crate.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        _ => None,
    })
}

fn neighbour_mac(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}
