//! A small DNS responder per network: answers A queries for the names of
//! the network's instances, forwards other names to the host's resolver,
//! refuses what it cannot serve. Written by hand: it needs a few dozen
//! lines of the wire format, and the DNS crates bring whole resolvers.
//!
//! The socket is opened by a thread inside the router namespace (bound to
//! the gateway address, port 53) and served from the agent's namespace,
//! where upstream resolvers are reachable.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::{netns, NetError, Result};

/// Instance names (lowercase, without a domain) to addresses.
pub type Names = Arc<RwLock<HashMap<String, Ipv4Addr>>>;

const TTL_SECS: u32 = 5;
/// Upstream lookups in flight at once per network.
const MAX_FORWARDS: usize = 32;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_REFUSED: u8 = 5;

/// A running responder; stops when dropped.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    pub addr: SocketAddr,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serve `names` on `addr:53` inside the namespace at `netns_path`.
/// `domain`: names may also be asked as `<name>.<domain>`.
pub fn start(
    netns_path: &Path,
    addr: Ipv4Addr,
    domain: String,
    names: Names,
    upstream: Option<SocketAddr>,
) -> Result<DnsServer> {
    let socket = netns::run_in(Some(netns_path), move || {
        UdpSocket::bind((addr, 53)).map_err(|e| NetError::io(format!("bind DNS on {addr}:53"), e))
    })?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| NetError::io("DNS socket timeout", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let local = socket
        .local_addr()
        .map_err(|e| NetError::io("DNS socket address", e))?;
    std::thread::Builder::new()
        .name("nimbus-dns".into())
        .spawn(move || serve(socket, domain, names, upstream, flag))
        .map_err(|e| NetError::io("start the DNS thread", e))?;
    Ok(DnsServer { stop, addr: local })
}

/// The first `nameserver` of the host's /etc/resolv.conf that is not a
/// loopback address (those would not be the host's from a router).
pub fn host_upstream() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::from((ip, 53)))
        .next()
}

fn serve(
    socket: UdpSocket,
    domain: String,
    names: Names,
    upstream: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 1500];
    let in_flight = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..n];
        let Some(q) = parse_query(query) else {
            continue;
        };
        let lookup = q.name.trim_end_matches('.').to_ascii_lowercase();
        let short = lookup
            .strip_suffix(&format!(".{domain}"))
            .unwrap_or(&lookup)
            .to_string();
        let found = names.read().ok().and_then(|m| m.get(&short).copied());
        let reply = match found {
            Some(ip) if q.qtype == TYPE_A && q.qclass == CLASS_IN => answer(query, &q, Some(ip), 0),
            // A known name without an A record asked: no data, no error.
            Some(_) => answer(query, &q, None, 0),
            None if !short.contains('.') => answer(query, &q, None, RCODE_NXDOMAIN),
            None => match upstream {
                Some(up) => {
                    // At most MAX_FORWARDS lookups in flight per network: a
                    // flood of queries is answered SERVFAIL, not with threads.
                    if in_flight.load(Ordering::Acquire) >= MAX_FORWARDS {
                        answer(query, &q, None, RCODE_SERVFAIL)
                    } else {
                        let socket = match socket.try_clone() {
                            Ok(s) => s,
                            Err(_) => continue,
                        };
                        let owned = query.to_vec();
                        let q2 = q.clone();
                        in_flight.fetch_add(1, Ordering::AcqRel);
                        let counter = in_flight.clone();
                        let spawned = std::thread::Builder::new()
                            .name("nimbus-dns-fwd".into())
                            .spawn(move || {
                                let reply = forward(&owned, up)
                                    .unwrap_or_else(|| answer(&owned, &q2, None, RCODE_SERVFAIL));
                                let _ = socket.send_to(&reply, peer);
                                counter.fetch_sub(1, Ordering::AcqRel);
                            });
                        if spawned.is_err() {
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                        }
                        continue;
                    }
                }
                None => answer(query, &q, None, RCODE_REFUSED),
            },
        };
        let _ = socket.send_to(&reply, peer);
    }
}

fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(query, upstream).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    (n >= 2 && buf[..2] == query[..2]).then(|| buf[..n].to_vec())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section.
    pub end: usize,
}

/// The first question of a standard query.
pub fn parse_query(msg: &[u8]) -> Option<Query> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount < 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_string());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(pos + 2)?, *msg.get(pos + 3)?]);
    Some(Query {
        name: labels.join("."),
        qtype,
        qclass,
        end: pos + 4,
    })
}

/// A response to `query` with at most one A record.
pub fn answer(query: &[u8], q: &Query, ip: Option<Ipv4Addr>, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.end + 16);
    out.extend_from_slice(&query[..2]);
    let rd = query[2] & 0x01;
    out.push(0x80 | 0x04 | rd); // QR, AA, RD copied
    out.push(0x80 | (rcode & 0x0f)); // RA
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&(ip.is_some() as u16).to_be_bytes()); // ANCOUNT
    out.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    out.extend_from_slice(&query[12..q.end]);
    if let Some(ip) = ip {
        out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn answers_a_records() {
        let q = query("db.backend", TYPE_A);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.name, "db.backend");
        let r = answer(&q, &parsed, Some(Ipv4Addr::new(10, 20, 0, 5)), 0);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
        assert_eq!(&r[r.len() - 4..], &[10, 20, 0, 5]);
        let nx = answer(&q, &parsed, None, RCODE_NXDOMAIN);
        assert_eq!(nx[3] & 0x0f, RCODE_NXDOMAIN);
        assert!(parse_query(&q[..10]).is_none());
    }
}
