//! A small DNS responder per network: answers A queries for the names of
//! the network's instances, forwards other names to the host's resolver,
//! refuses what it cannot serve. Messages are decoded and encoded with
//! `hickory-proto` (its codec only, without the resolver or a runtime);
//! forwarded queries and their answers pass through as they are.
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

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use crate::{netns, NetError, Result};

/// Instance names (lowercase, without a domain) to addresses.
pub type Names = Arc<RwLock<HashMap<String, Ipv4Addr>>>;

const TTL_SECS: u32 = 5;
/// Upstream lookups in flight at once per network.
const MAX_FORWARDS: usize = 32;

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
        let Some(q) = Query::parse(query) else {
            continue;
        };
        let lookup = q.name();
        let short = lookup
            .strip_suffix(&format!(".{domain}"))
            .unwrap_or(&lookup)
            .to_string();
        let found = names.read().ok().and_then(|m| m.get(&short).copied());
        let reply = match found {
            Some(ip) if q.asks_for_a() => q.answer(Some(ip), ResponseCode::NoError),
            // A known name without an A record asked: no data, no error.
            Some(_) => q.answer(None, ResponseCode::NoError),
            None if !short.contains('.') => q.answer(None, ResponseCode::NXDomain),
            None => match upstream {
                Some(up) => {
                    // At most MAX_FORWARDS lookups in flight per network: a
                    // flood of queries is answered SERVFAIL, not with threads.
                    if in_flight.load(Ordering::Acquire) >= MAX_FORWARDS {
                        q.answer(None, ResponseCode::ServFail)
                    } else {
                        let socket = match socket.try_clone() {
                            Ok(s) => s,
                            Err(_) => continue,
                        };
                        let owned = query.to_vec();
                        in_flight.fetch_add(1, Ordering::AcqRel);
                        let counter = in_flight.clone();
                        let spawned = std::thread::Builder::new()
                            .name("nimbus-dns-fwd".into())
                            .spawn(move || {
                                let reply = forward(&owned, up)
                                    .or_else(|| q.answer(None, ResponseCode::ServFail));
                                if let Some(reply) = reply {
                                    let _ = socket.send_to(&reply, peer);
                                }
                                counter.fetch_sub(1, Ordering::AcqRel);
                            });
                        if spawned.is_err() {
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                        }
                        continue;
                    }
                }
                None => q.answer(None, ResponseCode::Refused),
            },
        };
        let Some(reply) = reply else {
            continue;
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

/// A decoded standard query; only its first question is served.
#[derive(Clone, Debug)]
pub struct Query {
    message: Message,
}

impl Query {
    /// A query (not a response) with at least one question; None for
    /// anything that does not decode.
    pub fn parse(msg: &[u8]) -> Option<Query> {
        let message = Message::from_vec(msg).ok()?;
        (message.metadata.message_type == MessageType::Query && !message.queries.is_empty())
            .then_some(Query { message })
    }

    fn question(&self) -> Option<&hickory_proto::op::Query> {
        self.message.queries.first()
    }

    /// The name asked, lowercase, without the root's trailing dot.
    pub fn name(&self) -> String {
        self.question()
            .map(|q| q.name().to_lowercase().to_ascii())
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_string()
    }

    /// Whether the question is for an IN A record.
    pub fn asks_for_a(&self) -> bool {
        self.question()
            .is_some_and(|q| q.query_type() == RecordType::A && q.query_class() == DNSClass::IN)
    }

    /// The authoritative response: the first question echoed, with at most
    /// one A record for it; RD copied, RA set. None if it cannot be encoded.
    pub fn answer(&self, ip: Option<Ipv4Addr>, rcode: ResponseCode) -> Option<Vec<u8>> {
        let question = self.question()?;
        let asked = &self.message.metadata;
        let mut reply = Message::response(asked.id, asked.op_code);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = asked.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.metadata.response_code = rcode;
        reply.add_query(question.clone());
        if let Some(ip) = ip {
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL_SECS,
                RData::A(A(ip)),
            ));
        }
        reply.to_vec().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE_A: u16 = 1;
    const TYPE_AAAA: u16 = 28;

    /// A query as a stub resolver sends it, built byte by byte (id 0x1234,
    /// RD set, one question of class IN).
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

    fn count(reply: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([reply[at], reply[at + 1]])
    }

    #[test]
    fn answers_a_records() {
        let q = query("DB.backend", TYPE_A);
        let parsed = Query::parse(&q).expect("a query");
        assert_eq!(parsed.name(), "db.backend");
        assert!(parsed.asks_for_a());
        let r = parsed
            .answer(Some(Ipv4Addr::new(10, 20, 0, 5)), ResponseCode::NoError)
            .expect("encoded");
        assert_eq!(&r[..2], &[0x12, 0x34], "the id is copied");
        assert_eq!(r[2] & 0x85, 0x85, "QR, AA and the asked RD are set");
        assert_eq!(r[3] & 0x80, 0x80, "RA is set");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(count(&r, 4), 1, "one question");
        assert_eq!(count(&r, 6), 1, "one answer");
        // The question is echoed as asked, case included.
        assert_eq!(&r[12..q.len()], &q[12..]);
        // The answer: type A, class IN, TTL 5 s, 4 bytes of address.
        assert_eq!(
            &r[r.len() - 14..],
            &[0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 20, 0, 5]
        );
    }

    #[test]
    fn unknown_names_and_other_types_get_no_records() {
        let q = query("nosuch", TYPE_A);
        let parsed = Query::parse(&q).expect("a query");
        let nx = parsed
            .answer(None, ResponseCode::NXDomain)
            .expect("encoded");
        assert_eq!(&nx[..2], &[0x12, 0x34]);
        assert_eq!(nx[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(count(&nx, 6), 0, "no answer");
        assert_eq!(&nx[12..], &q[12..], "only the question");

        let aaaa = Query::parse(&query("web", TYPE_AAAA)).expect("a query");
        assert!(!aaaa.asks_for_a());
        let empty = aaaa.answer(None, ResponseCode::NoError).expect("encoded");
        assert_eq!(empty[3] & 0x0f, 0);
        assert_eq!(count(&empty, 6), 0);
    }

    #[test]
    fn ignores_what_is_not_a_query() {
        let q = query("db", TYPE_A);
        assert!(Query::parse(&q[..10]).is_none(), "cut header");
        assert!(Query::parse(&q[..q.len() - 3]).is_none(), "cut question");
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(Query::parse(&response).is_none(), "a response");
        let mut no_question = q[..12].to_vec();
        no_question[5] = 0;
        assert!(Query::parse(&no_question).is_none(), "no question");
    }

    /// An upstream resolver on loopback that answers one query with
    /// `reply(query)`; joined, it gives the query it got.
    fn upstream(
        reply: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("address");
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = socket.recv_from(&mut buf).expect("query");
            let asked = buf[..n].to_vec();
            socket.send_to(&reply(&asked), peer).expect("send");
            asked
        });
        (addr, thread)
    }

    #[test]
    fn forwards_the_query_and_passes_the_answer_through() {
        let q = query("example.org", TYPE_A);
        let (up, asked) = upstream(|asked| {
            let mut reply = asked.to_vec();
            reply[2] |= 0x80;
            reply.extend_from_slice(b"anything upstream says");
            reply
        });
        let reply = forward(&q, up).expect("an answer");
        assert_eq!(asked.join().expect("upstream"), q, "sent as it was");
        assert_eq!(&reply[..2], &q[..2]);
        assert!(reply.ends_with(b"anything upstream says"), "byte for byte");

        // An answer with another id is not taken for this query's.
        let (up, asked) = upstream(|asked| {
            let mut stray = asked.to_vec();
            stray[0] ^= 0xff;
            stray
        });
        assert_eq!(forward(&q, up), None);
        asked.join().expect("upstream");
    }
}
