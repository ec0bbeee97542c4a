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

/// Anti-spoofing chain of a port (reached through one map lookup, so the
/// cost per packet does not grow with the number of ports).
fn spoof_chain(link: &str) -> String {
    format!("as_{link}")
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

/// Base chains of a router's table: (name, definition).
const ROUTER_BASE_CHAINS: [(&str, &str); 5] = [
    (
        "antispoof",
        "type filter hook prerouting priority -300; policy accept;",
    ),
    (
        "forward",
        "type filter hook forward priority 0; policy drop;",
    ),
    ("input", "type filter hook input priority 0; policy drop;"),
    (
        "portfwd",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "egress",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
];

/// The script that brings a router's tables (`inet` and `arp`) from
/// `previous` (what this process applied last; `None`: unknown) to `r`.
///
/// Base chains are kept and flushed rather than deleted: removing a hook
/// waits for an RCU grace period in the kernel (about 15 ms here), which a
/// launch should not pay. With `previous` unknown the tables are replaced
/// whole, once.
pub fn router_script(r: &RouterRules, previous: Option<&RouterRules>) -> String {
    let t = ROUTER_TABLE;
    let mut s = String::with_capacity(4096 + r.ports.len() * 512);
    if previous.is_none() {
        let _ = writeln!(
            s,
            "table inet {t}\ndelete table inet {t}\ntable arp {t}\ndelete table arp {t}"
        );
    }
    let _ = writeln!(s, "add table inet {t}\nadd table arp {t}");
    let _ = writeln!(
        s,
        "add chain arp {t} input {{ type filter hook input priority 0; policy accept; }}\nflush chain arp {t} input"
    );
    for (name, def) in ROUTER_BASE_CHAINS {
        let _ = writeln!(
            s,
            "add chain inet {t} {name} {{ {def} }}\nflush chain inet {t} {name}"
        );
    }
    for p in &r.ports {
        for c in [chain_name(&p.link), spoof_chain(&p.link)] {
            let _ = writeln!(s, "add chain inet {t} {c}\nflush chain inet {t} {c}");
        }
    }
    for g in r.groups.keys() {
        let g = set_name(g);
        let _ = writeln!(
            s,
            "add set inet {t} {g} {{ type ipv4_addr; }}\nflush set inet {t} {g}"
        );
    }
    // What the previous state had and this one has not: unreferenced now.
    if let Some(prev) = previous {
        for p in &prev.ports {
            if !r.ports.iter().any(|q| q.link == p.link) {
                let _ = writeln!(s, "delete chain inet {t} {}", chain_name(&p.link));
                let _ = writeln!(s, "delete chain inet {t} {}", spoof_chain(&p.link));
            }
        }
        for g in prev.groups.keys() {
            if !r.groups.contains_key(g) {
                let _ = writeln!(s, "delete set inet {t} {}", set_name(g));
            }
        }
    }
    for (g, members) in &r.groups {
        if !members.is_empty() {
            let list: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            let _ = writeln!(
                s,
                "add element inet {t} {} {{ {} }}",
                set_name(g),
                list.join(", ")
            );
        }
    }
    let rule = |s: &mut String, chain: &str, text: &str| {
        let _ = writeln!(s, "add rule inet {t} {chain} {text}");
    };
    // Frames from a port must carry the port's own MAC and IPv4 address.
    for p in &r.ports {
        let l = &p.link;
        let c = spoof_chain(l);
        rule(&mut s, &c, &format!("ether saddr != {} drop", p.mac));
        if p.dhcp {
            rule(
                &mut s,
                &c,
                "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp dport 67 accept",
            );
        }
        rule(
            &mut s,
            &c,
            &format!("meta nfproto ipv4 ip saddr != {} drop", p.ip),
        );
        rule(&mut s, &c, "meta nfproto ipv6 drop");
        let _ = writeln!(
            s,
            "add rule arp {t} input iifname \"{l}\" arp saddr ether != {} drop\nadd rule arp {t} input iifname \"{l}\" arp saddr ip != {{ {}, 0.0.0.0 }} drop",
            p.mac, p.ip
        );
    }
    if !r.ports.is_empty() {
        let map: Vec<String> = r
            .ports
            .iter()
            .map(|p| format!("\"{}\" : jump {}", p.link, spoof_chain(&p.link)))
            .collect();
        rule(
            &mut s,
            "antispoof",
            &format!("iifname vmap {{ {} }}", map.join(", ")),
        );
    }
    // Ingress of each port.
    for p in &r.ports {
        let c = chain_name(&p.link);
        match &p.ingress {
            None => rule(&mut s, &c, "accept"),
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
                    rule(&mut s, &c, &l);
                }
                rule(&mut s, &c, "drop");
            }
        }
    }
    rule(&mut s, "forward", "ct state established,related accept");
    rule(&mut s, "forward", "ct state invalid drop");
    // From outside, only published ports (DNAT) may reach a port, and
    // then through its ingress filter like any other traffic.
    let map: Vec<String> = r
        .ports
        .iter()
        .map(|p| format!("\"{}\" : jump {}", p.link, chain_name(&p.link)))
        .collect();
    if !map.is_empty() {
        rule(
            &mut s,
            "forward",
            &format!(
                "iifname \"{UPLINK}\" ct status dnat oifname vmap {{ {} }}",
                map.join(", ")
            ),
        );
    }
    rule(&mut s, "forward", &format!("iifname \"{UPLINK}\" drop"));
    if !map.is_empty() {
        rule(
            &mut s,
            "forward",
            &format!("oifname vmap {{ {} }}", map.join(", ")),
        );
    }
    rule(
        &mut s,
        "forward",
        &format!("oifname \"{UPLINK}\" ip daddr {} drop", r.subnet),
    );
    rule(&mut s, "forward", &format!("oifname \"{UPLINK}\" accept"));
    let gw = r.gateway;
    for text in [
        "ct state established,related accept".to_string(),
        "iifname \"lo\" accept".to_string(),
        format!("iifname != \"{UPLINK}\" ip daddr {gw} udp dport 53 accept"),
        format!("iifname != \"{UPLINK}\" ip daddr {gw} tcp dport 53 accept"),
        format!("iifname != \"{UPLINK}\" udp dport 67 accept"),
        format!("iifname != \"{UPLINK}\" icmp type echo-request accept"),
    ] {
        rule(&mut s, "input", &text);
    }
    for f in &r.forwards {
        let p = if f.udp { "udp" } else { "tcp" };
        rule(
            &mut s,
            "portfwd",
            &format!(
                "iifname \"{UPLINK}\" {p} dport {} dnat ip to {}:{}",
                f.port, f.ip, f.to_port
            ),
        );
    }
    rule(
        &mut s,
        "egress",
        &format!("oifname \"{UPLINK}\" masquerade"),
    );
    s
}

/// A published host port: to the router whose uplink address is `router_ip`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostForward {
    pub udp: bool,
    pub port: u16,
    pub router_ip: Ipv4Addr,
}

/// The agent's table in the host namespace; like `router_script`, it is
/// replaced whole the first time (`fresh`) and flushed and refilled after.
pub fn host_script(
    table: &str,
    uplinks: &[String],
    forwards: &[HostForward],
    fresh: bool,
) -> String {
    let mut s = String::new();
    if fresh {
        let _ = writeln!(s, "table inet {table}\ndelete table inet {table}");
    }
    let _ = writeln!(
        s,
        "add table inet {table}\nadd set inet {table} uplinks {{ type ifname; }}\nflush set inet {table} uplinks"
    );
    if !uplinks.is_empty() {
        let list: Vec<String> = uplinks.iter().map(|u| format!("\"{u}\"")).collect();
        let _ = writeln!(
            s,
            "add element inet {table} uplinks {{ {} }}",
            list.join(", ")
        );
    }
    for (name, def) in [
        (
            "forward",
            "type filter hook forward priority 0; policy accept;",
        ),
        ("input", "type filter hook input priority 0; policy accept;"),
        (
            "prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        (
            "output",
            "type nat hook output priority -100; policy accept;",
        ),
        (
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
        ),
    ] {
        let _ = writeln!(
            s,
            "add chain inet {table} {name} {{ {def} }}\nflush chain inet {table} {name}"
        );
    }
    let p = HOST_LINK_PREFIX;
    let rule = |s: &mut String, chain: &str, text: &str| {
        let _ = writeln!(s, "add rule inet {table} {chain} {text}");
    };
    // Networks never reach each other, nor the host's own services.
    rule(
        &mut s,
        "forward",
        &format!("iifname \"{p}*\" oifname \"{p}*\" drop"),
    );
    rule(
        &mut s,
        "input",
        "iifname @uplinks ct state established,related accept",
    );
    rule(&mut s, "input", "iifname @uplinks drop");
    for f in forwards {
        let proto = if f.udp { "udp" } else { "tcp" };
        let text = format!(
            "fib daddr type local {proto} dport {} dnat ip to {}:{}",
            f.port, f.router_ip, f.port
        );
        rule(&mut s, "prerouting", &text);
        rule(&mut s, "output", &text);
    }
    rule(
        &mut s,
        "postrouting",
        &format!("iifname @uplinks oifname != \"{p}*\" masquerade"),
    );
    rule(
        &mut s,
        "postrouting",
        "oifname @uplinks ip saddr 127.0.0.0/8 masquerade",
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
        let s = router_script(&sample(), None);
        assert!(
            s.contains("add rule inet nimbus as_pabc ether saddr != 02:00:00:00:00:05 drop"),
            "{s}"
        );
        assert!(
            s.contains("iifname vmap { \"pabc\" : jump as_pabc }"),
            "{s}"
        );
        assert!(s.contains("ip saddr @g_web accept"), "{s}");
        assert!(s.contains("tcp dport 80 accept"), "{s}");
        assert!(s.contains("ip saddr 10.0.0.0/8 tcp dport 22 accept"), "{s}");
        assert!(s.contains("dnat ip to 10.20.0.5:80"), "{s}");
        assert!(
            s.contains("add element inet nimbus g_web { 10.20.0.5 }"),
            "{s}"
        );
        assert!(s.starts_with("table inet nimbus\ndelete table inet nimbus\n"));
        // Later changes keep the base chains and drop what went away.
        let mut next = sample();
        next.ports.clear();
        next.groups.clear();
        let inc = router_script(&next, Some(&sample()));
        assert!(!inc.contains("delete table"), "{inc}");
        assert!(inc.contains("flush chain inet nimbus forward"), "{inc}");
        assert!(inc.contains("delete chain inet nimbus in_pabc"), "{inc}");
        assert!(inc.contains("delete set inet nimbus g_web"), "{inc}");
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
            true,
        );
        assert!(s.starts_with("table inet nimbus_t1\ndelete table inet nimbus_t1\n"));
        assert!(s.contains("udp dport 5353 dnat ip to 100.64.0.2:5353"));
    }
}
