//! Which sockets of a network namespace accept new flows on a port: TCP
//! listeners and unconnected UDP sockets, on any local address, IPv4 and
//! IPv6. A published port's DNAT (`fib daddr type local`) would take such a
//! host service's new connections, so Nimbus refuses to publish over one.
//!
//! Connected sockets (a TCP connection, a UDP client that called
//! `connect`) do not count: their flows are already tracked, and NAT is
//! decided on a flow's first packet only.

use std::net::SocketAddr;

use procfs::net::{TcpNetEntries, TcpNetEntry, TcpState, UdpNetEntries, UdpNetEntry, UdpState};
use procfs::FromReadSI;

use crate::{NetError, Result};

/// The transport of a host port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// Local addresses of the sockets in the calling thread's network
/// namespace that accept new flows on `port` (empty: nothing does). Call it
/// from a thread in the host namespace to learn about host services.
/// Blocking (reads `/proc/thread-self/net/`).
pub fn accepting_on(transport: Transport, port: u16) -> Result<Vec<SocketAddr>> {
    let mut found = Vec::new();
    let info = procfs::current_system_info();
    for family in ["", "6"] {
        let file = format!("/proc/thread-self/net/{}{family}", transport.as_str());
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            // A kernel without IPv6 has no tcp6/udp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && family == "6" => continue,
            Err(e) => return Err(NetError::io(format!("read {file}"), e)),
        };
        let parse_error = |e: procfs::ProcError| NetError::Invalid(format!("parse {file}: {e}"));
        match transport {
            Transport::Tcp => {
                let entries =
                    TcpNetEntries::from_read(bytes.as_slice(), info).map_err(parse_error)?;
                found.extend(tcp_listeners(&entries.0, port));
            }
            Transport::Udp => {
                let entries =
                    UdpNetEntries::from_read(bytes.as_slice(), info).map_err(parse_error)?;
                found.extend(udp_receivers(&entries.0, port));
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// TCP sockets listening on `port`.
pub fn tcp_listeners(entries: &[TcpNetEntry], port: u16) -> Vec<SocketAddr> {
    entries
        .iter()
        .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
        .map(|e| e.local_address)
        .collect()
}

/// UDP sockets bound to `port` that take datagrams from anyone (not
/// connected to one peer: the kernel shows those as established).
pub fn udp_receivers(entries: &[UdpNetEntry], port: u16) -> Vec<SocketAddr> {
    entries
        .iter()
        .filter(|e| e.state != UdpState::Established && e.local_address.port() == port)
        .map(|e| e.local_address)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1D1B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2 0000000000000000 0
  11: 0100007F:9C40 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 3002 2 0000000000000000 0
";

    fn tcp(text: &str) -> Vec<TcpNetEntry> {
        TcpNetEntries::from_read(text.as_bytes(), procfs::current_system_info())
            .unwrap()
            .0
    }

    fn udp(text: &str) -> Vec<UdpNetEntry> {
        UdpNetEntries::from_read(text.as_bytes(), procfs::current_system_info())
            .unwrap()
            .0
    }

    #[test]
    fn only_listening_tcp_sockets_count_on_either_family() {
        // 0x1D1B = 7451 listens on 127.0.0.1; 0x1F90 = 8080 is only a
        // connection on IPv4 but listens on [::].
        let v4 = tcp(TCP);
        assert_eq!(
            tcp_listeners(&v4, 7451),
            vec!["127.0.0.1:7451".parse::<SocketAddr>().unwrap()]
        );
        assert!(
            tcp_listeners(&v4, 8080).is_empty(),
            "a connection is no listener"
        );
        assert_eq!(
            tcp_listeners(&tcp(TCP6), 8080),
            vec!["[::]:8080".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn unconnected_udp_sockets_count_and_connected_clients_do_not() {
        let entries = udp(UDP);
        // 0x14E9 = 5353 bound to 0.0.0.0; 0x9C40 = 40000 a connected client.
        assert_eq!(
            udp_receivers(&entries, 5353),
            vec!["0.0.0.0:5353".parse::<SocketAddr>().unwrap()]
        );
        assert!(udp_receivers(&entries, 40000).is_empty());
    }

    #[test]
    fn sockets_of_this_process_are_found() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let found = std::thread::spawn(move || accepting_on(Transport::Tcp, port))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(found, vec![tcp.local_addr().unwrap()]);
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        assert_eq!(
            accepting_on(Transport::Udp, port).unwrap(),
            vec![udp.local_addr().unwrap()]
        );
        drop(tcp);
    }
}
