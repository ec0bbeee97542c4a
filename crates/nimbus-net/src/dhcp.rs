//! A DHCP responder per router, for VM ports: it answers DISCOVER and
//! REQUEST from a MAC it has a lease for, with the address the server
//! allocated (the same one a NoCloud network-config would carry), so a
//! stock guest that only does DHCP comes up networked. Messages are
//! decoded and encoded with `dhcproto`; the socket handling is ours.
//!
//! The socket is bound to port 67 inside the router namespace; replies are
//! broadcast out of the port the request came in on (IP_PKTINFO).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use dhcproto::v4::{self, DhcpOption, HType, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::{netns, NetError, Result};

/// What a MAC is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub mtu: u16,
}

/// Leases by MAC address.
pub type Leases = Arc<RwLock<HashMap<[u8; 6], Lease>>>;

const LEASE_SECS: u32 = 86_400;
/// Where the options start: after the fixed BOOTP header and the cookie.
const OPTIONS_AT: usize = 240;

/// A running responder; stops when dropped.
pub struct DhcpServer {
    stop: Arc<AtomicBool>,
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        return Err(NetError::io(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn socket_in_router() -> Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor we own from creation on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(fd, "DHCP socket")?;
        let owned = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = &one as *const libc::c_int as *const libc::c_void;
        check(
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, p, len),
            "SO_BROADCAST",
        )?;
        check(
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, len),
            "SO_REUSEADDR",
        )?;
        check(
            libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, p, len),
            "IP_PKTINFO",
        )?;
        crate::set_recv_timeout(fd, std::time::Duration::from_millis(500))?;
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = 67u16.to_be();
        check(
            libc::bind(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            "bind DHCP port 67",
        )?;
        Ok(owned)
    }
}

/// Serve `leases` on the router namespace at `netns_path`; `server` is the
/// gateway address, given as the server identifier.
pub fn start(netns_path: &Path, server: Ipv4Addr, leases: Leases) -> Result<DhcpServer> {
    let fd = netns::run_in(Some(netns_path), socket_in_router)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("nimbus-dhcp".into())
        .spawn(move || serve(fd, server, leases, flag))
        .map_err(|e| NetError::io("start the DHCP thread", e))?;
    Ok(DhcpServer { stop })
}

fn serve(fd: OwnedFd, server: Ipv4Addr, leases: Leases, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Some((n, ifindex)) = recv(&fd, &mut buf) else {
            continue;
        };
        let Some(req) = Request::parse(&buf[..n]) else {
            continue;
        };
        let lease = leases.read().ok().and_then(|l| l.get(&req.mac).cloned());
        let Some(lease) = lease else { continue };
        let Some(reply) = req.reply(&lease, server) else {
            continue;
        };
        send(&fd, &reply, ifindex);
    }
}

/// A request from an Ethernet client: its MAC and DHCP message type.
#[derive(Debug)]
pub struct Request {
    pub mac: [u8; 6],
    pub kind: MessageType,
    message: v4::Message,
}

impl Request {
    /// Decode a BOOTREQUEST from an Ethernet client that carries a DHCP
    /// message type; None for anything else.
    pub fn parse(msg: &[u8]) -> Option<Request> {
        // dhcproto reads the magic cookie without checking it: a BOOTP
        // message without one has no DHCP options to trust.
        if msg.get(OPTIONS_AT - 4..OPTIONS_AT) != Some(&v4::MAGIC[..]) {
            return None;
        }
        let message = v4::Message::decode(&mut Decoder::new(msg)).ok()?;
        if message.opcode() != Opcode::BootRequest
            || message.htype() != HType::Eth
            || message.hlen() != 6
        {
            return None;
        }
        let mac = <[u8; 6]>::try_from(message.chaddr()).ok()?;
        let kind = message.opts().msg_type()?;
        Some(Request { mac, kind, message })
    }

    /// The OFFER for a DISCOVER, the ACK for a REQUEST, with `lease`;
    /// `server` is the server identifier. None for other message types.
    pub fn reply(&self, lease: &Lease, server: Ipv4Addr) -> Option<Vec<u8>> {
        let kind = match self.kind {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request => MessageType::Ack,
            _ => return None,
        };
        let asked = &self.message;
        let mut reply = v4::Message::new_with_id(
            asked.xid(),
            Ipv4Addr::UNSPECIFIED,
            lease.ip,
            server,
            asked.giaddr(),
            &self.mac,
        );
        reply.set_opcode(Opcode::BootReply).set_flags(asked.flags());
        let mask = if lease.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(lease.prefix_len.min(32)))
        };
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(server));
        opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::from(mask)));
        opts.insert(DhcpOption::Router(vec![lease.gateway]));
        if !lease.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
        }
        opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
        let mut out = Vec::with_capacity(OPTIONS_AT + 64);
        reply.encode(&mut Encoder::new(&mut out)).ok()?;
        Some(out)
    }
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Option<(usize, i32)> {
    // SAFETY: recvmsg into buffers we own, sized as declared; the control
    // messages are walked with the libc CMSG helpers.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u8; 128];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len();
        let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, 0);
        if n <= 0 {
            return None;
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info = libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo;
                return Some((n as usize, (*info).ipi_ifindex));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        None
    }
}

fn send(fd: &OwnedFd, data: &[u8], ifindex: i32) {
    // SAFETY: sendmsg of buffers we own, with one IP_PKTINFO control
    // message built with the libc CMSG helpers in a buffer large enough.
    unsafe {
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_port = 68u16.to_be();
        to.sin_addr.s_addr = u32::MAX;
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut control = [0u8; 64];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut to as *mut libc::sockaddr_in as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen =
            libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return;
        }
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
        let info = libc::CMSG_DATA(cmsg) as *mut libc::in_pktinfo;
        (*info).ipi_ifindex = ifindex;
        (*info).ipi_spec_dst = std::mem::zeroed();
        (*info).ipi_addr = std::mem::zeroed();
        let _ = libc::sendmsg(fd.as_raw_fd(), &msg, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 4] = [99, 130, 83, 99];

    /// A request as a client sends it, built byte by byte: xid 1.2.3.4,
    /// the broadcast flag, MAC 02:00:00:00:00:07, then `options`.
    fn request(options: &[u8]) -> Vec<u8> {
        let mut req = vec![0u8; 240];
        req[0] = 1; // BOOTREQUEST
        req[1] = 1; // Ethernet
        req[2] = 6;
        req[4..8].copy_from_slice(&[1, 2, 3, 4]);
        req[10] = 0x80;
        req[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        req[236..240].copy_from_slice(&MAGIC);
        req.extend_from_slice(options);
        req
    }

    fn lease() -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 20, 0, 7),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            dns: vec![Ipv4Addr::new(10, 20, 0, 1)],
            mtu: 1450,
        }
    }

    /// The options of a reply as (code, data), in wire order.
    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = OPTIONS_AT;
        while reply[i] != 255 {
            let len = reply[i + 1] as usize;
            out.push((reply[i], reply[i + 2..i + 2 + len].to_vec()));
            i += 2 + len;
        }
        out
    }

    fn option(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        options(reply)
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d)
    }

    fn assert_carries_the_lease(a: &[u8], kind: u8) {
        assert_eq!(a[0], 2, "BOOTREPLY");
        assert_eq!(&a[1..3], &[1, 6], "Ethernet");
        assert_eq!(&a[4..8], &[1, 2, 3, 4], "the xid is copied");
        assert_eq!(a[10], 0x80, "the broadcast flag is copied");
        assert_eq!(&a[12..16], &[0, 0, 0, 0], "ciaddr");
        assert_eq!(&a[16..20], &[10, 20, 0, 7], "yiaddr: the lease");
        assert_eq!(&a[20..24], &[10, 20, 0, 1], "siaddr: the server");
        assert_eq!(&a[28..34], &[2, 0, 0, 0, 0, 7], "chaddr");
        assert_eq!(&a[236..240], &MAGIC);
        assert_eq!(option(a, 53), Some(vec![kind]));
        assert_eq!(option(a, 54), Some(vec![10, 20, 0, 1]), "server id");
        assert_eq!(option(a, 51), Some(86_400u32.to_be_bytes().to_vec()));
        assert_eq!(option(a, 1), Some(vec![255, 255, 255, 0]), "mask");
        assert_eq!(option(a, 3), Some(vec![10, 20, 0, 1]), "router");
        assert_eq!(option(a, 6), Some(vec![10, 20, 0, 1]), "DNS");
        assert_eq!(option(a, 26), Some(1450u16.to_be_bytes().to_vec()), "MTU");
        assert_eq!(options(a).len(), 7, "nothing else");
    }

    #[test]
    fn offers_and_acks_the_lease_of_the_mac() {
        let server = Ipv4Addr::new(10, 20, 0, 1);
        // DISCOVER, with a parameter request list before the type.
        let discover = request(&[55, 3, 1, 3, 6, 53, 1, 1, 255]);
        let r = Request::parse(&discover).expect("request");
        assert_eq!(r.mac, [2, 0, 0, 0, 0, 7]);
        assert_eq!(r.kind, MessageType::Discover);
        let offer = r.reply(&lease(), server).expect("an offer");
        assert_carries_the_lease(&offer, 2);

        // REQUEST for the offered address.
        let req = request(&[53, 1, 3, 50, 4, 10, 20, 0, 7, 54, 4, 10, 20, 0, 1, 255]);
        let r = Request::parse(&req).expect("request");
        assert_eq!(r.kind, MessageType::Request);
        let ack = r.reply(&lease(), server).expect("an ack");
        assert_carries_the_lease(&ack, 5);

        // RELEASE and others get no answer.
        let release = Request::parse(&request(&[53, 1, 7, 255])).expect("request");
        assert!(release.reply(&lease(), server).is_none());
    }

    #[test]
    fn leaves_out_dns_when_the_lease_has_none() {
        let r = Request::parse(&request(&[53, 1, 1, 255])).expect("request");
        let no_dns = Lease {
            dns: vec![],
            ..lease()
        };
        let offer = r.reply(&no_dns, no_dns.gateway).expect("an offer");
        assert_eq!(option(&offer, 6), None);
    }

    #[test]
    fn ignores_what_is_not_a_dhcp_request() {
        let discover = request(&[53, 1, 1, 255]);
        assert!(Request::parse(&discover[..100]).is_none(), "cut");
        assert!(Request::parse(&request(&[255])).is_none(), "plain BOOTP");
        let mut reply = discover.clone();
        reply[0] = 2;
        assert!(Request::parse(&reply).is_none(), "a BOOTREPLY");
        let mut no_cookie = discover.clone();
        no_cookie[236] = 0;
        assert!(Request::parse(&no_cookie).is_none(), "no magic cookie");
        let mut long_hw = discover.clone();
        long_hw[2] = 16;
        assert!(Request::parse(&long_hw).is_none(), "not an Ethernet MAC");
    }
}
