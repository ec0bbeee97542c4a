//! The nftables scripts: one table per router namespace, one per Nimbus
//! host agent in the host namespace. Each script replaces its whole table
//! in one transaction, so a change (a new port, a security-group edit) is
//! applied atomically and running instances never see a half-made ruleset.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::names::{HOST_LINK_PREFIX, UPLINK};

/// Name of the table inside router namespaces.
pub const ROUTER_TABLE: &str = "nimbus";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Any,
}

impl Proto {
    fn l4(self) -> Option<&'static str> {
        match self {
            Proto::Tcp => Some("tcp"),
            Proto::Udp => Some("udp"),
            Proto::Icmp => Some("icmp"),
            Proto::Any => None,
        }
    }
}

/// One allow rule of a security group, resolved for nftables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    pub proto: Proto,
    pub ports: Option<(u16, u16)>,
    /// Source prefix (`10.0.0.0/8`).
    pub cidr: Option<String>,
    /// Source: the member set of this group (a key of `RouterRules::groups`).
    pub group: Option<String>,
}

/// Ingress filter of one port: `None` in `PortRules` means unfiltered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingress {
    /// Groups of the instance itself: their members may always reach it.
    pub own_groups: Vec<String>,
    pub rules: Vec<AllowRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRules {
    /// Link name inside the router namespace.
    pub link: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Let DHCP requests (source 0.0.0.0) through: VM ports.
    pub dhcp: bool,
    pub ingress: Option<Ingress>,
}

/// A published port, as seen inside the router: traffic to `port` on the
/// uplink goes to `ip:to_port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    pub udp: bool,
    pub port: u16,
    pub ip: Ipv4Addr,
    pub to_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterRules {
    pub gateway: Ipv4Addr,
    pub subnet: String,
    pub ports: Vec<PortRules>,
    pub forwards: Vec<Forward>,
    /// Member addresses of each security group referenced by the ports.
    pub groups: BTreeMap<String, Vec<Ipv4Addr>>,
}

fn set_name(group: &str) -> String {
    // Set names: letters, digits, underscore.
    let clean: String = group
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("g_{clean}")
}

fn chain_name(link: &str) -> String {
    format!("in_{link}")
}

fn rule_line(r: &AllowRule) -> String {
    let mut m = String::new();
    if let Some(c) = &r.cidr {
        let _ = write!(m, "ip saddr {c} ");
    }
    if let Some(g) = &r.group {
        let _ = write!(m, "ip saddr @{} ", set_name(g));
    }
    match (r.proto.l4(), r.ports) {
        (Some(p @ ("tcp" | "udp")), Some((a, b))) if a == b => {
            let _ = write!(m, "{p} dport {a} ");
        }
        (Some(p @ ("tcp" | "udp")), Some((a, b))) => {
            let _ = write!(m, "{p} dport {a}-{b} ");
        }
        (Some(p), _) => {
            let _ = write!(m, "meta l4proto {p} ");
        }
        (None, _) => {}
    }
    m.push_str("accept");
    m
}

/// The router namespace's whole table.
pub fn router_script(r: &RouterRules) -> String {
    let mut s = String::with_capacity(4096 + r.ports.len() * 512);
    let t = ROUTER_TABLE;
    let _ = writeln!(
        s,
        "table inet {t}\ndelete table inet {t}\ntable inet {t} {{"
    );
    for (g, members) in &r.groups {
        let _ = writeln!(s, "  set {} {{\n    type ipv4_addr", set_name(g));
        if !members.is_empty() {
            let list: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            let _ = writeln!(s, "    elements = {{ {} }}", list.join(", "));
        }
        s.push_str("  }\n");
    }
    // Frames from a port must carry the port's own MAC and IPv4 address.
    s.push_str(
        "  chain antispoof {\n    type filter hook prerouting priority -300; policy accept;\n",
    );
    for p in &r.ports {
        let l = &p.link;
        let _ = writeln!(s, "    iifname \"{l}\" ether saddr != {} drop", p.mac);
        if p.dhcp {
            let _ = writeln!(
                s,
                "    iifname \"{l}\" ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp dport 67 accept"
            );
        }
        let _ = writeln!(
            s,
            "    iifname \"{l}\" meta nfproto ipv4 ip saddr != {} drop",
            p.ip
        );
        let _ = writeln!(s, "    iifname \"{l}\" meta nfproto ipv6 drop");
    }
    s.push_str("  }\n");
    // Ingress of each port.
    for p in &r.ports {
        let _ = writeln!(s, "  chain {} {{", chain_name(&p.link));
        match &p.ingress {
            None => s.push_str("    accept\n"),
            Some(ing) => {
                let mut lines: Vec<String> = ing
                    .own_groups
                    .iter()
                    .map(|g| format!("ip saddr @{} accept", set_name(g)))
                    .chain(ing.rules.iter().map(rule_line))
                    .collect();
                let mut seen = std::collections::HashSet::new();
                lines.retain(|l| seen.insert(l.clone()));
                for l in lines {
                    let _ = writeln!(s, "    {l}");
                }
                s.push_str("    drop\n");
            }
        }
        s.push_str("  }\n");
    }
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n    ct state invalid drop"
    );
    // From outside, only published ports (DNAT) may reach a port, and
    // then through its ingress filter like any other traffic.
    let map: Vec<String> = r
        .ports
        .iter()
        .map(|p| format!("\"{}\" : jump {}", p.link, chain_name(&p.link)))
        .collect();
    if !map.is_empty() {
        let _ = writeln!(
            s,
            "    iifname \"{UPLINK}\" ct status dnat oifname vmap {{ {} }}",
            map.join(", ")
        );
    }
    let _ = writeln!(s, "    iifname \"{UPLINK}\" drop");
    if !map.is_empty() {
        let _ = writeln!(s, "    oifname vmap {{ {} }}", map.join(", "));
    }
    let _ = writeln!(
        s,
        "    oifname \"{UPLINK}\" ip daddr {} drop\n    oifname \"{UPLINK}\" accept\n  }}",
        r.subnet
    );
    let gw = r.gateway;
    let _ = writeln!(
        s,
        "  chain input {{\n    type filter hook input priority 0; policy drop;\n    ct state established,related accept\n    iifname \"lo\" accept\n    iifname != \"{UPLINK}\" ip daddr {gw} udp dport 53 accept\n    iifname != \"{UPLINK}\" ip daddr {gw} tcp dport 53 accept\n    iifname != \"{UPLINK}\" udp dport 67 accept\n    iifname != \"{UPLINK}\" icmp type echo-request accept\n  }}"
    );
    s.push_str("  chain portfwd {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    for f in &r.forwards {
        let p = if f.udp { "udp" } else { "tcp" };
        let _ = writeln!(
            s,
            "    iifname \"{UPLINK}\" {p} dport {} dnat ip to {}:{}",
            f.port, f.ip, f.to_port
        );
    }
    s.push_str("  }\n");
    let _ = writeln!(
        s,
        "  chain egress {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{UPLINK}\" masquerade\n  }}\n}}"
    );
    s
}

/// The ARP filter of a router namespace: a port may only claim its own
/// addresses. (ARP frames never reach the inet family.)
pub fn router_arp_script(ports: &[PortRules]) -> String {
    let mut s = format!("table arp {ROUTER_TABLE}\ndelete table arp {ROUTER_TABLE}\ntable arp {ROUTER_TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n");
    for p in ports {
        let _ = writeln!(
            s,
            "    iifname \"{}\" arp saddr ether != {} drop\n    iifname \"{}\" arp saddr ip != {{ {}, 0.0.0.0 }} drop",
            p.link, p.mac, p.link, p.ip
        );
    }
    s.push_str("  }\n}\n");
    s
}

/// A published host port: to the router whose uplink address is `router_ip`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostForward {
    pub udp: bool,
    pub port: u16,
    pub router_ip: Ipv4Addr,
}

/// The agent's table in the host namespace.
pub fn host_script(table: &str, uplinks: &[String], forwards: &[HostForward]) -> String {
    let mut s = format!("table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  set uplinks {{\n    type ifname\n");
    if !uplinks.is_empty() {
        let list: Vec<String> = uplinks.iter().map(|u| format!("\"{u}\"")).collect();
        let _ = writeln!(s, "    elements = {{ {} }}", list.join(", "));
    }
    s.push_str("  }\n");
    let p = HOST_LINK_PREFIX;
    // Networks never reach each other, nor the host's own services.
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{p}*\" oifname \"{p}*\" drop\n  }}\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname @uplinks ct state established,related accept\n    iifname @uplinks drop\n  }}"
    );
    let mut dnat = String::new();
    for f in forwards {
        let proto = if f.udp { "udp" } else { "tcp" };
        let _ = writeln!(
            dnat,
            "    fib daddr type local {proto} dport {} dnat ip to {}:{}",
            f.port, f.router_ip, f.port
        );
    }
    let _ = writeln!(
        s,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}"
    );
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    iifname @uplinks oifname != \"{p}*\" masquerade\n    oifname @uplinks ip saddr 127.0.0.0/8 masquerade\n  }}\n}}"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RouterRules {
        let mut groups = BTreeMap::new();
        groups.insert("web".to_string(), vec![Ipv4Addr::new(10, 20, 0, 5)]);
        RouterRules {
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            subnet: "10.20.0.0/24".into(),
            ports: vec![PortRules {
                link: "pabc".into(),
                ip: Ipv4Addr::new(10, 20, 0, 5),
                mac: "02:00:00:00:00:05".into(),
                dhcp: false,
                ingress: Some(Ingress {
                    own_groups: vec!["web".into()],
                    rules: vec![
                        AllowRule {
                            proto: Proto::Tcp,
                            ports: Some((80, 80)),
                            cidr: None,
                            group: None,
                        },
                        AllowRule {
                            proto: Proto::Tcp,
                            ports: Some((22, 22)),
                            cidr: Some("10.0.0.0/8".into()),
                            group: None,
                        },
                    ],
                }),
            }],
            forwards: vec![Forward {
                udp: false,
                port: 8080,
                ip: Ipv4Addr::new(10, 20, 0, 5),
                to_port: 80,
            }],
            groups,
        }
    }

    #[test]
    fn router_script_has_filters_and_nat() {
        let s = router_script(&sample());
        assert!(
            s.contains("iifname \"pabc\" ether saddr != 02:00:00:00:00:05 drop"),
            "{s}"
        );
        assert!(s.contains("ip saddr @g_web accept"), "{s}");
        assert!(s.contains("tcp dport 80 accept"), "{s}");
        assert!(s.contains("ip saddr 10.0.0.0/8 tcp dport 22 accept"), "{s}");
        assert!(s.contains("dnat ip to 10.20.0.5:80"), "{s}");
        assert!(s.contains("elements = { 10.20.0.5 }"), "{s}");
    }

    #[test]
    fn host_script_is_scoped_to_its_table() {
        let s = host_script(
            "nimbus_t1",
            &["nb0123456789".into()],
            &[HostForward {
                udp: true,
                port: 5353,
                router_ip: Ipv4Addr::new(100, 64, 0, 2),
            }],
        );
        assert!(s.starts_with("table inet nimbus_t1\ndelete table inet nimbus_t1\n"));
        assert!(s.contains("udp dport 5353 dnat ip to 100.64.0.2:5353"));
    }
}
