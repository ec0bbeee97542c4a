//! Networks across hosts, as root, in throwaway namespaces: two network
//! namespaces stand for two hosts on one data-centre bridge; on each, the
//! router namespaces, instance ports and VXLAN devices are made by
//! `nimbus_net`. Two instances of one network on the two hosts ping and
//! exchange data over TCP (more than one MTU's worth); a second network
//! with the same subnet (even the same address) and another VNI never
//! sees them; a compromised remote host cannot inject a source address
//! no remote instance holds; forwarding entries removed, the remote is
//! unreachable; and removal leaves no device, socket or namespace.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use common::{exchange, is_root, serve_tagged, skip, unique_id};
use nimbus_net::host::{in_netns, KernelNetns};
use nimbus_net::netlink::{parse_mac, Netlink, VxlanLink};
use nimbus_net::rules::{self, PortRules, RouterRules};
use nimbus_net::vxlan::{self, RemotePort};
use nimbus_net::{names, netns, nft, router, PortSpec, RouterSpec};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const MTU: u32 = 1500 - vxlan::OVERHEAD;

/// One instance: its host (index into the hosts), router and port.
struct Instance {
    host: usize,
    router: usize,
    port: PortSpec,
}

/// One network's router on one host.
struct Router {
    host: usize,
    network_id: String,
    vni: u32,
}

impl Router {
    fn netns(&self) -> PathBuf {
        names::router_netns(&self.network_id)
    }
}

fn instance(host: usize, last: u8, mac_tag: u8) -> Instance {
    Instance {
        host,
        router: 0,
        port: PortSpec {
            instance_id: unique_id(),
            ip: Ipv4Addr::new(10, 98, 0, last),
            prefix_len: 24,
            gateway: GATEWAY,
            mac: format!("02:00:00:00:{mac_tag:02x}:{last:02x}"),
            mtu: MTU,
        },
    }
}

/// Two hosts (`h0`, `h1`) with underlay addresses 192.168.77.1 and .2 on
/// a bridge in a third namespace, and everything made on them.
struct Lab {
    dc: PathBuf,
    hosts: Vec<PathBuf>,
    routers: Vec<Router>,
    instances: Vec<Instance>,
}

fn underlay(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, host as u8 + 1)
}

impl Lab {
    fn new() -> Lab {
        let tag = &unique_id()[..8];
        let dir = Path::new(names::NETNS_DIR);
        let lab = Lab {
            dc: dir.join(format!("tvx-{tag}-dc")),
            hosts: (0..2)
                .map(|h| dir.join(format!("tvx-{tag}-h{h}")))
                .collect(),
            routers: Vec::new(),
            instances: Vec::new(),
        };
        for ns in std::iter::once(&lab.dc).chain(&lab.hosts) {
            netns::create(ns).expect("a namespace standing for a host");
        }
        in_netns(&KernelNetns, Some(&lab.dc), |nl| {
            nl.add_bridge("dc0", [2, 0xdc, 0, 0, 0, 1])?;
            nl.set_up("dc0")?;
            for (h, ns) in lab.hosts.iter().enumerate() {
                let link = format!("u{h}");
                nl.add_veth(&link, "eth0", Some(ns), None, None)?;
                nl.set_master(&link, "dc0")?;
                nl.set_up(&link)?;
            }
            Ok(())
        })
        .expect("the data-centre bridge");
        for (h, ns) in lab.hosts.iter().enumerate() {
            in_netns(&KernelNetns, Some(ns), |nl| {
                nl.set_up("lo")?;
                nl.add_address("eth0", underlay(h), 24)?;
                nl.set_up("eth0")
            })
            .expect("the host's underlay address");
        }
        lab
    }

    /// Run `f` on a thread in host `h`'s namespace: there the dataplane's
    /// "host namespace" is that host's.
    fn on_host<T: Send>(&self, h: usize, f: impl FnOnce() -> nimbus_net::Result<T> + Send) -> T {
        netns::run_in(Some(&self.hosts[h]), f).expect("work on a host")
    }

    /// The router of a network (by VNI) on host `h`, with its VXLAN device.
    fn router(&mut self, h: usize, vni: u32) -> usize {
        let network_id = unique_id();
        let spec = RouterSpec {
            network_id: network_id.clone(),
            gateway: GATEWAY,
            prefix_len: 24,
        };
        let r = Router {
            host: h,
            network_id,
            vni,
        };
        let ns = r.netns();
        self.routers.push(r);
        self.on_host(h, || {
            router::ensure_router(&KernelNetns, &spec)?;
            vxlan::ensure_tunnel(
                &KernelNetns,
                &ns,
                &VxlanLink {
                    vni,
                    local: underlay(h),
                    port: vxlan::DEFAULT_PORT,
                    mtu: MTU,
                },
            )
        });
        self.routers.len() - 1
    }

    fn attach(&mut self, router: usize, mut i: Instance) -> (usize, PathBuf) {
        i.router = router;
        let ns = self.routers[router].netns();
        let port = i.port.clone();
        let ins = self.on_host(i.host, || {
            router::attach_container(&KernelNetns, &ns, &port)
        });
        self.instances.push(i);
        (self.instances.len() - 1, ins)
    }

    /// Instances (by index) on the network of `router`, split into that
    /// router's own and the others' (on other hosts, same VNI).
    fn members(&self, router: usize, all: &[(usize, usize)]) -> (Vec<&PortSpec>, Vec<RemotePort>) {
        let r = &self.routers[router];
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for (on_router, i) in all {
            let other = &self.routers[*on_router];
            if other.vni != r.vni {
                continue;
            }
            let inst = &self.instances[*i];
            if inst.host == r.host {
                local.push(&inst.port);
            } else {
                remote.push(RemotePort {
                    ip: inst.port.ip,
                    mac: parse_mac(&inst.port.mac).expect("mac"),
                    host: underlay(inst.host),
                });
            }
        }
        (local, remote)
    }

    /// Program `router` for the instances `all` ((router, instance)):
    /// forwarding entries for the remote ones and the rules for all.
    fn program(&self, router: usize, all: &[(usize, usize)]) {
        let (local, remote) = self.members(router, all);
        let ns = self.routers[router].netns();
        let mut ports: Vec<PortRules> = local
            .iter()
            .map(|p| PortRules {
                link: names::port_link(&p.instance_id),
                ip: p.ip,
                mac: p.mac.clone(),
                dhcp: false,
                ingress: None,
            })
            .collect();
        ports.extend(remote.iter().map(|r| PortRules {
            link: names::VXLAN.into(),
            ip: r.ip,
            mac: nimbus_net::netlink::format_mac(r.mac),
            dhcp: false,
            ingress: None,
        }));
        let rr = RouterRules {
            gateway: GATEWAY,
            subnet: "10.98.0.0/24".into(),
            ports,
            forwards: vec![],
            groups: Default::default(),
        };
        self.on_host(self.routers[router].host, || {
            vxlan::sync_remotes(&KernelNetns, &ns, &remote)?;
            nft::apply(Some(&ns), &rules::router_script(&rr, None))
        });
    }

    /// UDP sockets bound to the VXLAN port in host `h`'s namespace.
    fn vxlan_sockets(&self, h: usize) -> usize {
        self.on_host(h, || {
            let text = std::fs::read_to_string("/proc/thread-self/net/udp")
                .map_err(|e| nimbus_net::NetError::io("read /proc/thread-self/net/udp", e))?;
            let port = format!(":{:04X} ", vxlan::DEFAULT_PORT);
            Ok(text.lines().filter(|l| l.contains(&port)).count())
        })
    }

    fn teardown(&self) -> nimbus_net::Result<()> {
        for i in &self.instances {
            let router_ns = self.routers[i.router].netns();
            netns::run_in(Some(&self.hosts[i.host]), || {
                router::detach_container(&KernelNetns, Some(&router_ns), &i.port.instance_id)
            })?;
        }
        for r in &self.routers {
            netns::run_in(Some(&self.hosts[r.host]), || {
                vxlan::remove_tunnel(&KernelNetns, &r.netns())?;
                router::remove_router(&KernelNetns, &r.network_id)
            })?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever a failed test left: ports, routers, then the hosts.
        let _ = self.teardown();
        for i in &self.instances {
            let _ = netns::remove(&names::instance_netns(&i.port.instance_id));
        }
        for r in &self.routers {
            let _ = netns::remove(&r.netns());
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.dc)) {
            let _ = netns::remove(ns);
        }
    }
}

/// Datagrams received on `port` inside `ns`, as they come.
fn udp_inbox(ns: &Path, port: u16) -> std::sync::mpsc::Receiver<String> {
    let sock = netns::run_in(Some(ns), move || {
        std::net::UdpSocket::bind(("0.0.0.0", port))
            .map_err(|e| nimbus_net::NetError::io("bind udp", e))
    })
    .expect("udp listener");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).to_string())
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// What arrived within `wait` (a datagram that did not, never will: the
/// path is two bridges and a tunnel on one machine).
fn received(inbox: &std::sync::mpsc::Receiver<String>, wait: std::time::Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match inbox.recv_timeout(left) {
            Ok(m) => got.push(m),
            Err(_) => break,
        }
    }
    got
}

/// One datagram from `src` (an address of `ns`) to `to:port`.
fn send_udp(ns: &Path, src: Ipv4Addr, to: Ipv4Addr, port: u16, what: &'static [u8]) {
    netns::run_in(Some(ns), move || {
        let sock = std::net::UdpSocket::bind((src, 0))
            .map_err(|e| nimbus_net::NetError::io("bind udp", e))?;
        sock.send_to(what, (to, port))
            .map_err(|e| nimbus_net::NetError::io("send udp", e))?;
        Ok(())
    })
    .expect("send a datagram");
}

/// `ping -c 1` from inside `ns` (busybox's, as root: raw sockets).
fn ping(ns: &Path, to: Ipv4Addr) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["/bin/busybox", "ping", "-c", "1", "-W", "2"])
        .arg(to.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn a_network_spans_two_hosts_and_another_vni_with_the_same_subnet_stays_apart() {
    if !is_root() {
        skip("the VXLAN test needs root (namespaces, links, nftables)");
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        skip("/bin/busybox (busybox-static, for ping) is missing; scripts/deps installs it");
        return;
    }
    let mut lab = Lab::new();
    // Network "blue" (VNI 0x10_0001) of one project, "green" (0x10_0002)
    // of another: same subnet; green's instance on h1 even holds blue's
    // address there.
    let (blue, green) = (0x10_0001, 0x10_0002);
    let blue0 = lab.router(0, blue);
    let blue1 = lab.router(1, blue);
    let green0 = lab.router(0, green);
    let green1 = lab.router(1, green);
    let (a, a_ns) = lab.attach(blue0, instance(0, 5, 1));
    let (b, b_ns) = lab.attach(blue1, instance(1, 6, 1));
    let (c, c_ns) = lab.attach(green0, instance(0, 7, 2));
    let (d, d_ns) = lab.attach(green1, instance(1, 6, 2));
    let all = [(blue0, a), (blue1, b), (green0, c), (green1, d)];
    for r in [blue0, blue1, green0, green1] {
        lab.program(r, &all);
    }
    let b_ip = lab.instances[b].port.ip;
    let a_ip = lab.instances[a].port.ip;
    serve_tagged(&b_ns, 8000, "blue");
    serve_tagged(&d_ns, 8000, "green");
    serve_tagged(&a_ns, 8000, "blue-a");

    assert!(ping(&a_ns, b_ip), "a pings b on the other host");
    assert!(ping(&b_ns, a_ip), "b pings a back");
    // 1 MiB: many full-size frames, so the MTU left for VXLAN is right.
    assert_eq!(
        exchange(&a_ns, b_ip, 8000, 1 << 20).as_deref(),
        Some("blue:1048576"),
        "a's TCP data reaches b (and only b) across the hosts"
    );
    assert_eq!(
        exchange(&b_ns, a_ip, 8000, 4096).as_deref(),
        Some("blue-a:4096")
    );
    // Green's c asks for the same address: it reaches green's d, never b.
    assert_eq!(
        exchange(&c_ns, b_ip, 8000, 4096).as_deref(),
        Some("green:4096"),
        "the same address on another VNI is another instance"
    );
    assert_eq!(
        exchange(&c_ns, a_ip, 8000, 16),
        None,
        "green never reaches blue's a (an address green does not have)"
    );
    assert!(!ping(&d_ns, a_ip), "nor pings it");

    // Nothing learned, nothing flooded: the device holds exactly the
    // entries given, one per remote instance.
    let blue0_ns = lab.routers[blue0].netns();
    let fdb = lab.on_host(0, || {
        in_netns(&KernelNetns, Some(&blue0_ns), |nl| {
            nl.fdb_remotes(names::VXLAN)
        })
    });
    assert_eq!(
        fdb,
        vec![(
            parse_mac(&lab.instances[b].port.mac).expect("mac"),
            underlay(1)
        )]
    );

    // A compromised host 1 (its router's rules gone) lets b send from an
    // address that is not b's: host 0's rules on vx0 drop it, while the
    // same datagram from b's own address arrives.
    let b1_ns = lab.routers[blue1].netns();
    lab.on_host(1, || nft::apply(Some(&b1_ns), "flush ruleset"));
    let spoofed = Ipv4Addr::new(10, 98, 0, 77);
    netns::run_in(Some(&b_ns), || {
        Netlink::new()?.add_address("eth0", spoofed, 24)
    })
    .expect("a second address on b");
    let inbox = udp_inbox(&a_ns, 9000);
    send_udp(&b_ns, b_ip, a_ip, 9000, b"from-b");
    send_udp(&b_ns, spoofed, a_ip, 9000, b"spoofed");
    let got = received(&inbox, std::time::Duration::from_secs(2));
    assert!(
        got.contains(&"from-b".to_string()),
        "b's own address arrives: {got:?}"
    );
    assert!(
        !got.contains(&"spoofed".to_string()),
        "a source no remote instance holds is dropped at vx0: {got:?}"
    );

    // Entries gone (the instance left): unreachable.
    lab.on_host(0, || vxlan::sync_remotes(&KernelNetns, &blue0_ns, &[]));
    assert_eq!(
        exchange(&a_ns, b_ip, 8000, 16),
        None,
        "without forwarding entries nothing crosses"
    );

    assert!(
        lab.vxlan_sockets(0) > 0,
        "the tunnel's socket is in the host namespace"
    );
    lab.teardown().expect("teardown");
    for h in 0..2 {
        assert_eq!(lab.vxlan_sockets(h), 0, "host {h} still has a VXLAN socket");
        let links = lab.on_host(h, || Netlink::new()?.links());
        assert!(
            links.iter().all(|(_, n)| n == "lo" || n == "eth0"),
            "host {h} has links left: {links:?}"
        );
    }
    for r in &lab.routers {
        assert!(!r.netns().exists(), "router namespace left");
    }
    for ns in [&a_ns, &b_ns, &c_ns, &d_ns] {
        assert!(!ns.exists(), "instance namespace {} left", ns.display());
    }
}
