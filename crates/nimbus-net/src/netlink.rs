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
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
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
}
