//! Removing connection-tracking entries through ctnetlink, so a change of
//! published ports takes effect on flows that already exist: NAT is
//! decided on a flow's first packet, so without this a UDP client that
//! kept sending to a host port before it was published would never reach
//! the instance, and a flow to a port that was unpublished (or whose
//! instance is gone) would keep being forwarded until it went idle.
//!
//! A dump request and a delete per matching entry; the messages are
//! decoded and encoded with `netlink-packet-netfilter`.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::Socket;

use crate::{NetError, Result};

/// Not among the attributes the crate names: kept as it came, so the
/// delete addresses the entry's zone.
const CTA_ZONE: u16 = 18;

/// One tracked IPv4 flow: its original direction (as the first packet
/// went) and the reply direction (as the answer comes back; after NAT it
/// names the translated address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol: 6 TCP, 17 UDP.
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub reply_src: Ipv4Addr,
    pub reply_sport: u16,
}

/// A tuple: (protocol, source, destination, source port, destination
/// port); None unless it is a complete IPv4 one with ports.
fn tuple_of(tuple: &[Tuple]) -> Option<(u8, Ipv4Addr, Ipv4Addr, u16, u16)> {
    let (mut proto, mut src, mut dst, mut sport, mut dport) = (None, None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(IpAddr::V4(a)) => src = Some(*a),
                        IPTuple::DestinationAddress(IpAddr::V4(a)) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(l4) => {
                for p in l4 {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, src?, dst?, sport?, dport?))
}

/// The flow an entry's attributes describe; None for anything but a
/// complete IPv4 TCP/UDP entry.
fn flow_of(entry: &[ConntrackAttribute]) -> Option<Flow> {
    let orig = entry.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) => Some(t),
        _ => None,
    })?;
    let reply = entry.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleReply(t) => Some(t),
        _ => None,
    })?;
    let (proto, src, dst, _, dport) = tuple_of(orig)?;
    let (_, reply_src, _, reply_sport, _) = tuple_of(reply)?;
    Some(Flow {
        proto,
        src,
        dst,
        dport,
        reply_src,
        reply_sport,
    })
}

/// What deletes `entry`: its original tuple, and its zone if it has one.
fn delete_of(entry: &[ConntrackAttribute]) -> Option<ConntrackMessage> {
    let mut attrs = Vec::with_capacity(2);
    for a in entry {
        match a {
            ConntrackAttribute::CtaTupleOrig(_) => attrs.push(a.clone()),
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => attrs.push(a.clone()),
            _ => {}
        }
    }
    attrs
        .iter()
        .any(|a| matches!(a, ConntrackAttribute::CtaTupleOrig(_)))
        .then_some(ConntrackMessage::Delete(attrs))
}

/// A ctnetlink request for IPv4, as bytes.
fn request(message: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut nl = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            message,
        )),
    );
    nl.header.flags = NLM_F_REQUEST | flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut buf = vec![0u8; nl.header.length as usize];
    nl.serialize(&mut buf[..]);
    buf
}

struct Ctnetlink {
    socket: Socket,
    buf: Vec<u8>,
}

impl Ctnetlink {
    /// A socket in the calling thread's network namespace.
    fn open() -> Result<Ctnetlink> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| NetError::io("open a ctnetlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetError::io("bind the ctnetlink socket", e))?;
        crate::set_recv_timeout(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            std::time::Duration::from_secs(5),
        )?;
        Ok(Ctnetlink {
            socket,
            buf: vec![0u8; 256 * 1024],
        })
    }

    fn send(&self, msg: &[u8]) -> Result<()> {
        self.socket
            .send(msg, 0)
            .map_err(|e| NetError::io("send a ctnetlink request", e))?;
        Ok(())
    }

    /// Read replies to `seq` until the dump ends or the ack comes; each
    /// conntrack entry's attributes go to `each`. Err for a negative ack.
    /// An entry the crate cannot read is skipped, not fatal.
    fn replies(&mut self, seq: u32, mut each: impl FnMut(&[ConntrackAttribute])) -> Result<()> {
        let malformed = || {
            NetError::io(
                "ctnetlink",
                std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed reply"),
            )
        };
        let mut buf = std::mem::take(&mut self.buf);
        let result = 'recv: loop {
            let n = match self.socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
                Ok(n) if n > buf.len() => break Err(malformed()),
                Ok(n) => n,
                Err(e) => break Err(NetError::io("receive a ctnetlink reply", e)),
            };
            let mut off = 0;
            while off < n {
                let Ok(header) = NetlinkBuffer::new_checked(&buf[off..n]) else {
                    break 'recv Err(malformed());
                };
                let len = header.length() as usize;
                let mseq = header.sequence_number();
                let msg = &buf[off..off + len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                let parsed = match NetlinkMessage::<NetfilterMessage>::deserialize(msg) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "skipping an unreadable conntrack entry");
                        continue;
                    }
                };
                match parsed.payload {
                    NetlinkPayload::Done(_) => break 'recv Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_none() => break 'recv Ok(()),
                    NetlinkPayload::Error(e) => {
                        break 'recv Err(NetError::io("ctnetlink", e.to_io()))
                    }
                    // Dumped entries come back with the request's type (GET).
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner:
                            NetfilterMessageInner::Conntrack(
                                ConntrackMessage::Get(attrs) | ConntrackMessage::New(attrs),
                            ),
                        ..
                    }) => each(&attrs),
                    _ => {}
                }
            }
        };
        self.buf = buf;
        result
    }
}

/// The tracked IPv4 TCP and UDP flows of the calling thread's network
/// namespace.
pub fn list_flows() -> Result<Vec<Flow>> {
    let mut sock = Ctnetlink::open()?;
    let mut flows = Vec::new();
    sock.send(&request(ConntrackMessage::Get(Vec::new()), NLM_F_DUMP, 1))?;
    sock.replies(1, |entry| flows.extend(flow_of(entry)))?;
    Ok(flows)
}

/// Remove the tracked IPv4 TCP and UDP flows of the calling thread's
/// network namespace that `matches` picks; returns how many went. Entries
/// that vanish meanwhile are not an error.
pub fn remove_flows(matches: impl Fn(&Flow) -> bool) -> Result<usize> {
    let mut sock = Ctnetlink::open()?;
    let mut victims: Vec<ConntrackMessage> = Vec::new();
    sock.send(&request(ConntrackMessage::Get(Vec::new()), NLM_F_DUMP, 1))?;
    sock.replies(1, |entry| {
        if flow_of(entry).is_some_and(|f| matches(&f)) {
            victims.extend(delete_of(entry));
        }
    })?;
    let mut removed = 0;
    for (i, delete) in victims.into_iter().enumerate() {
        let seq = 2 + i as u32;
        sock.send(&request(delete, NLM_F_ACK, seq))?;
        match sock.replies(seq, |_| {}) {
            Ok(()) => removed += 1,
            Err(NetError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NESTED: u16 = libc::NLA_F_NESTED as u16;

    /// A netlink attribute as the kernel lays it out, padded to 4 bytes.
    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = 4 + payload.len();
        let mut a = Vec::new();
        a.extend_from_slice(&(len as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize((len + 3) & !3, 0);
        a
    }

    fn tuple(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let ip = [attr(1, &src), attr(2, &dst)].concat();
        let l4 = [
            attr(1, &[proto]),
            attr(2, &sport.to_be_bytes()),
            attr(3, &dport.to_be_bytes()),
        ]
        .concat();
        [attr(1 | NESTED, &ip), attr(2 | NESTED, &l4)].concat()
    }

    /// A dumped entry as the kernel sends it: nlmsghdr (ctnetlink GET),
    /// nfgenmsg, then the attributes.
    fn dumped(attrs: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((1u16 << 8) | 1).to_ne_bytes());
        m.extend_from_slice(&(libc::NLM_F_MULTI as u16).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        m.extend_from_slice(attrs);
        m
    }

    fn entry_attrs(bytes: &[u8]) -> Vec<ConntrackAttribute> {
        let msg = <NetlinkMessage<NetfilterMessage>>::deserialize(bytes).expect("an entry");
        match msg.payload {
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Get(attrs)),
                ..
            }) => attrs,
            other => panic!("not a conntrack entry: {other:?}"),
        }
    }

    // 127.0.0.1:40000 → 127.0.0.1:5353, DNAT'ed to 100.64.0.2:5353, in zone 7.
    fn nat_entry() -> Vec<u8> {
        [
            attr(
                1 | NESTED,
                &tuple(17, [127, 0, 0, 1], [127, 0, 0, 1], 40000, 5353),
            ),
            attr(
                2 | NESTED,
                &tuple(17, [100, 64, 0, 2], [100, 64, 0, 1], 5353, 40000),
            ),
            attr(3, &0x188u32.to_be_bytes()), // CTA_STATUS
            attr(CTA_ZONE, &7u16.to_be_bytes()),
        ]
        .concat()
    }

    #[test]
    fn reads_both_directions_of_an_entry() {
        let entry = entry_attrs(&dumped(&nat_entry()));
        assert_eq!(
            flow_of(&entry),
            Some(Flow {
                proto: 17,
                src: Ipv4Addr::new(127, 0, 0, 1),
                dst: Ipv4Addr::new(127, 0, 0, 1),
                dport: 5353,
                reply_src: Ipv4Addr::new(100, 64, 0, 2),
                reply_sport: 5353,
            })
        );
        let cut = [attr(
            1 | NESTED,
            &tuple(6, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2),
        )]
        .concat();
        assert_eq!(
            flow_of(&entry_attrs(&dumped(&cut))),
            None,
            "an entry without its reply direction reads as nothing"
        );
    }

    #[test]
    fn deletes_name_the_original_tuple_and_the_zone() {
        let entry = entry_attrs(&dumped(&nat_entry()));
        let delete = delete_of(&entry).expect("a delete");
        let bytes = request(delete, NLM_F_ACK, 9);
        let attrs = [
            attr(
                1 | NESTED,
                &tuple(17, [127, 0, 0, 1], [127, 0, 0, 1], 40000, 5353),
            ),
            attr(CTA_ZONE, &7u16.to_be_bytes()),
        ]
        .concat();
        let mut expected = Vec::new();
        expected.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_ne_bytes());
        expected.extend_from_slice(&((1u16 << 8) | 2).to_ne_bytes()); // CT_DELETE
        expected.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        expected.extend_from_slice(&9u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        expected.extend_from_slice(&attrs);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn dump_request_is_a_ctnetlink_get() {
        let bytes = request(ConntrackMessage::Get(Vec::new()), NLM_F_DUMP, 1);
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[4..6], &((1u16 << 8) | 1).to_ne_bytes());
        assert_eq!(
            &bytes[6..8],
            &((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes()
        );
        assert_eq!(&bytes[16..20], &[libc::AF_INET as u8, 0, 0, 0]);
    }
}
