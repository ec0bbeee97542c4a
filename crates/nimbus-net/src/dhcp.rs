//! A DHCP responder per router, for VM ports: it answers DISCOVER and
//! REQUEST from a MAC it has a lease for, with the address the server
//! allocated (the same one a NoCloud network-config would carry), so a
//! stock guest that only does DHCP comes up networked. Handwritten: it
//! needs the fixed BOOTP header and six options.
//!
//! The socket is bound to port 67 inside the router namespace; replies are
//! broadcast out of the port the request came in on (IP_PKTINFO).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

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
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;

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
        let Some(req) = parse(&buf[..n]) else {
            continue;
        };
        let lease = leases.read().ok().and_then(|l| l.get(&req.mac).cloned());
        let Some(lease) = lease else { continue };
        let kind = match req.kind {
            DISCOVER => OFFER,
            REQUEST => ACK,
            _ => continue,
        };
        let reply = answer(&buf[..n], &lease, server, kind);
        send(&fd, &reply, ifindex);
    }
}

/// A request: the client's MAC and the DHCP message type.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub mac: [u8; 6],
    pub kind: u8,
}

/// Parse a BOOTREQUEST from an Ethernet client.
pub fn parse(msg: &[u8]) -> Option<Request> {
    if msg.len() < 240 || msg[0] != 1 || msg[1] != 1 || msg[2] != 6 || msg[236..240] != MAGIC {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg[28..34]);
    let mut i = 240;
    while i < msg.len() {
        let code = msg[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *msg.get(i + 1)? as usize;
        if code == 53 && len == 1 {
            return Some(Request {
                mac,
                kind: *msg.get(i + 2)?,
            });
        }
        i += 2 + len;
    }
    None
}

/// The OFFER or ACK for `request`.
pub fn answer(request: &[u8], lease: &Lease, server: Ipv4Addr, kind: u8) -> Vec<u8> {
    let mut out = vec![0u8; 240];
    out[0] = 2; // BOOTREPLY
    out[1] = 1;
    out[2] = 6;
    out[4..8].copy_from_slice(&request[4..8]); // xid
    out[10..12].copy_from_slice(&request[10..12]); // flags
    out[16..20].copy_from_slice(&lease.ip.octets()); // yiaddr
    out[20..24].copy_from_slice(&server.octets()); // siaddr
    out[24..28].copy_from_slice(&request[24..28]); // giaddr
    out[28..44].copy_from_slice(&request[28..44]); // chaddr
    out[236..240].copy_from_slice(&MAGIC);
    let mask = if lease.prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(lease.prefix_len))
    };
    let mut opt = |code: u8, data: &[u8]| {
        out.push(code);
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    };
    opt(53, &[kind]);
    opt(54, &server.octets());
    opt(51, &LEASE_SECS.to_be_bytes());
    opt(1, &mask.to_be_bytes());
    opt(3, &lease.gateway.octets());
    let dns: Vec<u8> = lease.dns.iter().flat_map(|d| d.octets()).collect();
    if !dns.is_empty() {
        opt(6, &dns);
    }
    opt(26, &lease.mtu.to_be_bytes());
    out.push(255);
    out
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

    #[test]
    fn offers_the_lease_of_the_mac() {
        let mut req = vec![0u8; 240];
        req[0] = 1;
        req[1] = 1;
        req[2] = 6;
        req[4..8].copy_from_slice(&[1, 2, 3, 4]);
        req[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        req[236..240].copy_from_slice(&MAGIC);
        req.extend_from_slice(&[53, 1, DISCOVER, 255]);
        let r = parse(&req).expect("request");
        assert_eq!(r.mac, [2, 0, 0, 0, 0, 7]);
        assert_eq!(r.kind, DISCOVER);
        let lease = Lease {
            ip: Ipv4Addr::new(10, 20, 0, 7),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            dns: vec![Ipv4Addr::new(10, 20, 0, 1)],
            mtu: 1500,
        };
        let a = answer(&req, &lease, Ipv4Addr::new(10, 20, 0, 1), OFFER);
        assert_eq!(a[0], 2);
        assert_eq!(&a[4..8], &[1, 2, 3, 4]);
        assert_eq!(&a[16..20], &[10, 20, 0, 7]);
        assert_eq!(&a[240..243], &[53, 1, OFFER]);
        assert!(a.windows(6).any(|w| w == [1, 4, 255, 255, 255, 0]));
        assert!(parse(&req[..100]).is_none());
    }
}
