//! Removing connection-tracking entries through ctnetlink, so a change of
//! published ports takes effect on flows that already exist: NAT is
//! decided on a flow's first packet, so without this a UDP client that
//! kept sending to a host port before it was published would never reach
//! the instance, and a flow to a port that was unpublished (or whose
//! instance is gone) would keep being forwarded until it went idle.
//!
//! Handwritten: a dump request and a delete per matching entry, with the
//! fixed nfnetlink header and a few nested attributes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{NetError, Result};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDR: usize = 16;
const NFGEN_HDR: usize = 4;

/// A tracked flow to remove: IP protocol (6 TCP, 17 UDP) and original
/// destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowPort {
    pub proto: u8,
    pub port: u16,
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

/// The original tuple's protocol and destination port, if it has both.
fn flow_of(tuple: &[u8]) -> Option<FlowPort> {
    let (_, proto) = attrs(tuple)
        .into_iter()
        .find(|(k, _)| *k == CTA_TUPLE_PROTO)?;
    let a = attrs(proto);
    let num = a.iter().find(|(k, _)| *k == CTA_PROTO_NUM)?.1.first()?;
    let port = a.iter().find(|(k, _)| *k == CTA_PROTO_DST_PORT)?.1;
    Some(FlowPort {
        proto: *num,
        port: u16::from_be_bytes([*port.first()?, *port.get(1)?]),
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

struct Socket(OwnedFd);

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
            let tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            Ok(Socket(owned))
        }
    }

    fn send(&self, msg: &[u8]) -> Result<()> {
        // SAFETY: sending an initialised buffer on our socket.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
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
                self.0.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
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
    fn replies(&self, seq: u32, mut each: impl FnMut(&[u8])) -> Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let mut off = 0;
            while off + NLMSG_HDR <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < NLMSG_HDR || off + len > n {
                    return Ok(());
                }
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq =
                    u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                let body = &buf[off + NLMSG_HDR..off + len];
                if mseq == seq {
                    match kind as libc::c_int {
                        libc::NLMSG_DONE => return Ok(()),
                        libc::NLMSG_ERROR => {
                            let code = body
                                .get(..4)
                                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                                .unwrap_or(0);
                            if code == 0 {
                                return Ok(());
                            }
                            return Err(NetError::io(
                                "ctnetlink",
                                std::io::Error::from_raw_os_error(-code),
                            ));
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
        }
    }
}

/// Remove the tracked IPv4 flows of the calling thread's network namespace
/// whose original destination port and protocol are in `ports`; returns
/// how many went. Entries that vanish meanwhile are not an error.
pub fn remove_flows(ports: &[FlowPort]) -> Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let sock = Socket::open()?;
    let mut victims: Vec<Vec<u8>> = Vec::new();
    sock.send(&message(IPCTNL_MSG_CT_GET, libc::NLM_F_DUMP as u16, 1, &[]))?;
    sock.replies(1, |area| {
        let a = attrs(area);
        let Some((_, tuple)) = a.iter().find(|(k, _)| *k == CTA_TUPLE_ORIG) else {
            return;
        };
        if !flow_of(tuple).is_some_and(|f| ports.contains(&f)) {
            return;
        }
        let mut payload = attr(CTA_TUPLE_ORIG | libc::NLA_F_NESTED as u16, tuple);
        if let Some((_, zone)) = a.iter().find(|(k, _)| *k == CTA_ZONE) {
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

    #[test]
    fn reads_the_protocol_and_port_of_a_tuple() {
        let proto = [
            attr(CTA_PROTO_NUM, &[17]),
            attr(2, &1234u16.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &5353u16.to_be_bytes()),
        ]
        .concat();
        let tuple = [
            attr(1 | libc::NLA_F_NESTED as u16, &attr(1, &[10, 0, 0, 1])),
            attr(CTA_TUPLE_PROTO | libc::NLA_F_NESTED as u16, &proto),
        ]
        .concat();
        assert_eq!(
            flow_of(&tuple),
            Some(FlowPort {
                proto: 17,
                port: 5353
            })
        );
        assert_eq!(flow_of(&tuple[..8]), None, "a cut tuple reads as nothing");
    }
}
