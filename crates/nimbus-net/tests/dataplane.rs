//! The dataplane as root, in throwaway namespaces: two ports on one router
//! talk over TCP, a security group blocks and then allows, a spoofed
//! source address is dropped, and removal leaves no link or namespace.

use std::net::{Ipv4Addr, TcpStream};

mod common;

use common::{is_root, serve, skip, talk, unique_id};
use nimbus_net::host::KernelNetns;
use nimbus_net::rules::{self, AllowRule, Ingress, PortRules, Proto, RouterRules};
use nimbus_net::{names, netlink::Netlink, netns, nft, router, PortSpec, RouterSpec};

fn port(id: &str, last: u8) -> PortSpec {
    PortSpec {
        instance_id: id.to_string(),
        ip: Ipv4Addr::new(10, 99, 0, last),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 99, 0, 1),
        mac: format!("02:00:00:00:00:{last:02x}"),
        mtu: 1500,
    }
}

fn port_rules(p: &PortSpec, ingress: Option<Ingress>) -> PortRules {
    PortRules {
        link: names::port_link(&p.instance_id),
        ip: p.ip,
        mac: p.mac.clone(),
        dhcp: false,
        ingress,
    }
}

#[test]
fn ports_talk_filter_and_clean_up() {
    if !is_root() {
        skip("the dataplane test needs root (namespaces, links, nftables)");
        return;
    }
    let net_id = unique_id();
    let router_ns = names::router_netns(&net_id);
    let a = port(&unique_id(), 5);
    let b = port(&unique_id(), 6);
    let _cleanup = Cleanup(
        net_id.clone(),
        vec![a.instance_id.clone(), b.instance_id.clone()],
    );
    let host = router::ensure_router(
        &KernelNetns,
        &RouterSpec {
            network_id: net_id.clone(),
            gateway: Ipv4Addr::new(10, 99, 0, 1),
            prefix_len: 24,
        },
    )
    .expect("router");
    let a_ns = router::attach_container(&KernelNetns, &router_ns, &a).expect("attach a");
    let b_ns = router::attach_container(&KernelNetns, &router_ns, &b).expect("attach b");
    let mut rr = RouterRules {
        gateway: Ipv4Addr::new(10, 99, 0, 1),
        subnet: "10.99.0.0/24".into(),
        ports: vec![port_rules(&a, None), port_rules(&b, None)],
        forwards: vec![],
        groups: Default::default(),
    };
    nft::apply(Some(&router_ns), &rules::router_script(&rr, None)).expect("rules");
    // One Linux bridge per network, the two ports on it.
    let mut on_bridge = netns::run_in(Some(&router_ns), || {
        Netlink::new()?.bridge_ports(names::BRIDGE)
    })
    .expect("bridge ports");
    on_bridge.sort();
    let mut expected = vec![
        names::port_link(&a.instance_id),
        names::port_link(&b.instance_id),
    ];
    expected.sort();
    assert_eq!(on_bridge, expected, "ports of the network's bridge");
    serve(&b_ns, 8000);
    assert!(talk(&a_ns, b.ip, 8000), "a reaches b on an open port");

    // A group with no rules: b accepts nothing from a.
    let before = rr.clone();
    rr.ports[1].ingress = Some(Ingress::default());
    nft::apply(Some(&router_ns), &rules::router_script(&rr, Some(&before))).expect("rules");
    assert!(!talk(&a_ns, b.ip, 8000), "the security group blocks a");

    // Allow tcp:8000: the running listener is reachable again.
    let before = rr.clone();
    rr.ports[1].ingress = Some(Ingress {
        own_groups: vec![],
        rules: vec![AllowRule {
            proto: Proto::Tcp,
            ports: Some((8000, 8000)),
            cidr: None,
            group: None,
        }],
    });
    nft::apply(Some(&router_ns), &rules::router_script(&rr, Some(&before))).expect("rules");
    assert!(talk(&a_ns, b.ip, 8000), "the new rule lets a in");

    // a takes another address: its packets are dropped.
    netns::run_in(Some(&a_ns), || {
        let mut nl = Netlink::new()?;
        nl.add_address("eth0", Ipv4Addr::new(10, 99, 0, 77), 24)?;
        Ok(())
    })
    .expect("extra address");
    let spoofed = netns::run_in(Some(&a_ns), move || {
        let sock = std::net::UdpSocket::bind("10.99.0.77:0")
            .map_err(|e| nimbus_net::NetError::io("bind", e))?;
        let _ = sock;
        let s = socket_from(Ipv4Addr::new(10, 99, 0, 77));
        Ok(s)
    })
    .expect("spoof attempt");
    assert!(
        !spoofed,
        "a connection from a spoofed source must not get through"
    );

    // DHCP: a port marked for it gets its address from the router (as a
    // VM's tap would); busybox's udhcpc stands for the guest's client.
    let before = rr.clone();
    rr.ports[0].dhcp = true;
    nft::apply(Some(&router_ns), &rules::router_script(&rr, Some(&before))).expect("rules");
    let leases: nimbus_net::dhcp::Leases = Default::default();
    if let Ok(mut l) = leases.write() {
        l.insert(
            nimbus_net::netlink::parse_mac(&a.mac).expect("mac"),
            nimbus_net::dhcp::Lease {
                ip: a.ip,
                prefix_len: 24,
                gateway: a.gateway,
                dns: vec![a.gateway],
                mtu: 1500,
            },
        );
    }
    let _dhcp = nimbus_net::dhcp::start(&router_ns, a.gateway, leases).expect("dhcp");
    if std::path::Path::new("/bin/busybox").exists() {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", a_ns.display()))
            .args([
                "/bin/busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-f",
                "-t",
                "3",
                "-T",
                "1",
                "-s",
                "/bin/true",
            ])
            .output()
            .expect("udhcpc");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("lease of {} obtained", a.ip)),
            "no DHCP lease:\n{text}"
        );
    } else {
        skip("the DHCP check: /bin/busybox (busybox-static) is missing; scripts/deps installs it");
    }

    router::detach_container(&KernelNetns, Some(&router_ns), &a.instance_id).expect("detach a");
    router::detach_container(&KernelNetns, Some(&router_ns), &b.instance_id).expect("detach b");
    router::remove_router(&KernelNetns, &net_id).expect("remove router");
    let links = netns::run_in(None, || Netlink::new()?.links()).expect("links");
    assert!(
        !links.iter().any(|(_, n)| *n == host.host_link),
        "uplink {} left behind",
        host.host_link
    );
    assert!(!router_ns.exists() && !a_ns.exists() && !b_ns.exists());
}

/// Removes what a failed test left behind.
struct Cleanup(String, Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let r = names::router_netns(&self.0);
        for i in &self.1 {
            let _ = router::detach_container(&KernelNetns, Some(&r), i);
        }
        let _ = router::remove_router(&KernelNetns, &self.0);
    }
}

/// Connect to b (10.99.0.6:8000) from `src`; true if it answered.
fn socket_from(src: Ipv4Addr) -> bool {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket/bind/connect on a fd we own and wrap at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return false;
        }
        let stream = TcpStream::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from(src).to_be();
        if libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            return false;
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as u16;
        to.sin_port = 8000u16.to_be();
        to.sin_addr.s_addr = u32::from(Ipv4Addr::new(10, 99, 0, 6)).to_be();
        let ok = libc::connect(
            fd,
            &to as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) == 0;
        drop(stream);
        ok
    }
}
