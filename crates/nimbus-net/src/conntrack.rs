//! Removing connection-tracking entries through ctnetlink, so a change of
//! published ports takes effect on flows that already exist: NAT is
//! decided on a flow's first packet, so without this a UDP client that
//! kept sending to a host port before it was published would never reach
//! the instance, and a flow to a port that was unpublished (or whose
//! instance is gone) would keep being forwarded until it went idle.
//!
//! Handwritten: a dump request and a delete per matching entry, with the
//! fixed nfnetlink header and a few nested attributes.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{NetError, Result};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDR: usize = 16;
const NFGEN_HDR: usize = 4;

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

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Attributes of a netlink attribute area: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

fn find(area: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(area)
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::new(
        *b.first()?,
        *b.get(1)?,
        *b.get(2)?,
        *b.get(3)?,
    ))
}

fn port(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// A tuple: (protocol, source, destination, source port, destination port).
fn tuple_of(tuple: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, u16, u16)> {
    let ip = find(tuple, CTA_TUPLE_IP)?;
    let proto = find(tuple, CTA_TUPLE_PROTO)?;
    Some((
        *find(proto, CTA_PROTO_NUM)?.first()?,
        ipv4(find(ip, CTA_IP_V4_SRC)?)?,
        ipv4(find(ip, CTA_IP_V4_DST)?)?,
        port(find(proto, CTA_PROTO_SRC_PORT)?)?,
        port(find(proto, CTA_PROTO_DST_PORT)?)?,
    ))
}

/// The flow an entry's attributes describe; None for anything but a
/// complete IPv4 TCP/UDP entry.
fn flow_of(entry: &[u8]) -> Option<Flow> {
    let (proto, src, dst, _, dport) = tuple_of(find(entry, CTA_TUPLE_ORIG)?)?;
    let (_, reply_src, _, reply_sport, _) = tuple_of(find(entry, CTA_TUPLE_REPLY)?)?;
    Some(Flow {
        proto,
        src,
        dst,
        dport,
        reply_src,
        reply_sport,
    })
}

fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + NFGEN_HDR + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0.
    m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    m.extend_from_slice(payload);
    m
}

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut a = Vec::with_capacity(align(len));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(align(len), 0);
    a
}

struct Socket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Socket {
    fn open() -> Result<Socket> {
        // SAFETY: socket(2) and bind(2) on a descriptor owned from creation.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            );
            if fd < 0 {
                return Err(NetError::io(
                    "open a ctnetlink socket",
                    std::io::Error::last_os_error(),
                ));
            }
            let owned = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            if libc::bind(
                fd,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) != 0
            {
                return Err(NetError::io(
                    "bind the ctnetlink socket",
                    std::io::Error::last_os_error(),
                ));
            }
            crate::set_recv_timeout(fd, std::time::Duration::from_secs(5))?;
            Ok(Socket {
                fd: owned,
                buf: vec![0u8; 256 * 1024],
            })
        }
    }

    fn send(&self, msg: &[u8]) -> Result<()> {
        // SAFETY: sending an initialised buffer on our socket.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if n < 0 {
            return Err(NetError::io(
                "send a ctnetlink request",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            return Err(NetError::io(
                "receive a ctnetlink reply",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(n as usize)
    }

    /// Read replies to `seq` until the dump ends or the ack comes; each
    /// reply's attribute area goes to `each`. Err for a negative ack.
    fn replies(&mut self, seq: u32, mut each: impl FnMut(&[u8])) -> Result<()> {
        let malformed = || {
            NetError::io(
                "ctnetlink",
                std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed reply"),
            )
        };
        let status = |body: &[u8]| -> Result<()> {
            let code = body
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            if code == 0 {
                Ok(())
            } else {
                Err(NetError::io(
                    "ctnetlink",
                    std::io::Error::from_raw_os_error(-code),
                ))
            }
        };
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            let n = match self.recv(&mut buf) {
                Ok(n) if n > buf.len() => break Err(malformed()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            let mut off = 0;
            let mut end = None;
            while off + NLMSG_HDR <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < NLMSG_HDR || off + len > n {
                    end = Some(Err(malformed()));
                    break;
                }
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq =
                    u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                let body = &buf[off + NLMSG_HDR..off + len];
                if mseq == seq {
                    match kind as libc::c_int {
                        libc::NLMSG_DONE | libc::NLMSG_ERROR => {
                            end = Some(status(body));
                            break;
                        }
                        _ => {
                            if body.len() >= NFGEN_HDR {
                                each(&body[NFGEN_HDR..]);
                            }
                        }
                    }
                }
                off += align(len);
            }
            if let Some(r) = end {
                break r;
            }
        };
        self.buf = buf;
        result
    }
}

/// Remove the tracked IPv4 TCP and UDP flows of the calling thread's
/// network namespace that `matches` picks; returns how many went. Entries
/// that vanish meanwhile are not an error.
pub fn remove_flows(matches: impl Fn(&Flow) -> bool) -> Result<usize> {
    let mut sock = Socket::open()?;
    let mut victims: Vec<Vec<u8>> = Vec::new();
    sock.send(&message(IPCTNL_MSG_CT_GET, libc::NLM_F_DUMP as u16, 1, &[]))?;
    sock.replies(1, |area| {
        if !flow_of(area).is_some_and(|f| matches(&f)) {
            return;
        }
        let Some(tuple) = find(area, CTA_TUPLE_ORIG) else {
            return;
        };
        let mut payload = attr(CTA_TUPLE_ORIG | libc::NLA_F_NESTED as u16, tuple);
        if let Some(zone) = find(area, CTA_ZONE) {
            payload.extend(attr(CTA_ZONE, zone));
        }
        victims.push(payload);
    })?;
    let mut removed = 0;
    for (i, payload) in victims.iter().enumerate() {
        let seq = 2 + i as u32;
        sock.send(&message(
            IPCTNL_MSG_CT_DELETE,
            libc::NLM_F_ACK as u16,
            seq,
            payload,
        ))?;
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

    fn tuple(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let ip = [attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)].concat();
        let l4 = [
            attr(CTA_PROTO_NUM, &[proto]),
            attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        [
            attr(CTA_TUPLE_IP | libc::NLA_F_NESTED as u16, &ip),
            attr(CTA_TUPLE_PROTO | libc::NLA_F_NESTED as u16, &l4),
        ]
        .concat()
    }

    #[test]
    fn reads_both_directions_of_an_entry() {
        // 127.0.0.1:40000 → 127.0.0.1:5353, DNAT'ed to 100.64.0.2:5353.
        let entry = [
            attr(
                CTA_TUPLE_ORIG | libc::NLA_F_NESTED as u16,
                &tuple(17, [127, 0, 0, 1], [127, 0, 0, 1], 40000, 5353),
            ),
            attr(
                CTA_TUPLE_REPLY | libc::NLA_F_NESTED as u16,
                &tuple(17, [100, 64, 0, 2], [100, 64, 0, 1], 5353, 40000),
            ),
        ]
        .concat();
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
        assert_eq!(flow_of(&entry[..20]), None, "a cut entry reads as nothing");
    }
}
