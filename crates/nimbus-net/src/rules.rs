//! The nftables scripts: two tables per router namespace (`bridge nimbus`
//! for anti-spoofing at the bridge ports, `inet nimbus` for the stateful
//! security groups, NAT and the router's own services), one per Nimbus
//! host agent in the host namespace. Each change is one script, so one
//! transaction: running instances never see a half-made ruleset.
//!
//! The bridge tables see each frame with its real port, the inet tables
//! (through `bridge-nf-call-iptables`) see bridged packets with the bridge
//! as both interfaces. So ports are pinned to their MAC and IPv4 address
//! in the bridge table, frames to a port must carry that port's address,
//! and the inet table can then filter ingress by destination address.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::names::{BRIDGE, HOST_LINK_PREFIX, UPLINK};

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
    // Set names: letters, digits, underscore. Every other byte is escaped
    // (`_` as `__`, others as `_xx`), so distinct groups never share a set.
    let mut clean = String::new();
    for b in group.bytes() {
        match b {
            b'_' => clean.push_str("__"),
            b if b.is_ascii_alphanumeric() => clean.push(b as char),
            b => clean.push_str(&format!("_{b:02x}")),
        }
    }
    format!("g_{clean}")
}

fn rule_line(r: &AllowRule) -> String {
    let mut m = String::new();
    if let Some(c) = &r.cidr {
        // The server stores only validated CIDRs; anything else that got
        // in matches nothing rather than breaking the network's ruleset.
        if !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
        {
            let _ = write!(m, "ip saddr {c} ");
        } else {
            let _ = write!(m, "ip saddr 0.0.0.0/32 ip saddr != 0.0.0.0/32 ");
        }
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

/// Base chains of a router's bridge table: (name, definition).
const BRIDGE_BASE_CHAINS: [(&str, &str); 2] = [
    (
        "antispoof",
        "type filter hook prerouting priority -300; policy accept;",
    ),
    (
        "deliver",
        "type filter hook forward priority -300; policy accept;",
    ),
];

/// Base chains of a router's inet table: (name, definition).
const ROUTER_BASE_CHAINS: [(&str, &str); 5] = [
    (
        "links",
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

/// Sets and maps every router table has: (family, kind, name, type).
const ROUTER_SETS: [(&str, &str, &str, &str); 5] = [
    ("bridge", "set", "ports", "ifname"),
    ("bridge", "set", "port_macs", "ifname . ether_addr"),
    ("bridge", "set", "port_ips", "ifname . ipv4_addr"),
    ("bridge", "set", "dhcp_ports", "ifname"),
    ("inet", "map", "ingress", "ipv4_addr : verdict"),
];

fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// The rule lines of an ingress filter.
fn ingress_lines(ing: &Ingress) -> Vec<String> {
    let mut lines: Vec<String> = ing
        .own_groups
        .iter()
        .map(|g| format!("ip saddr @{} accept", set_name(g)))
        .chain(ing.rules.iter().map(rule_line))
        .collect();
    let mut seen = std::collections::HashSet::new();
    lines.retain(|l| seen.insert(l.clone()));
    lines.push("drop".into());
    lines
}

/// Ports with the same filter share one chain, named after its rules: a
/// launch into an existing group adds map elements, not rules.
fn ingress_chain(lines: &[String]) -> String {
    format!("sg_{:08x}", fnv(&lines.join("\n")))
}

fn verdict(p: &PortRules) -> String {
    match &p.ingress {
        None => "accept".into(),
        Some(ing) => format!("jump {}", ingress_chain(&ingress_lines(ing))),
    }
}

/// What needs rules (not just set elements) to change.
#[derive(PartialEq, Eq)]
struct Structure<'a> {
    gateway: Ipv4Addr,
    subnet: &'a str,
    forwards: &'a [Forward],
    groups: Vec<&'a String>,
    chains: BTreeMap<String, Vec<String>>,
}

fn structure(r: &RouterRules) -> Structure<'_> {
    Structure {
        gateway: r.gateway,
        subnet: &r.subnet,
        forwards: &r.forwards,
        groups: r.groups.keys().collect(),
        chains: r
            .ports
            .iter()
            .filter_map(|p| p.ingress.as_ref())
            .map(|ing| {
                let lines = ingress_lines(ing);
                (ingress_chain(&lines), lines)
            })
            .collect(),
    }
}

/// Every element of every set and map: (family, set) → elements. Map
/// elements are `key : value`.
fn elements(
    r: &RouterRules,
) -> BTreeMap<(&'static str, String), std::collections::BTreeSet<String>> {
    let mut e: BTreeMap<(&'static str, String), std::collections::BTreeSet<String>> =
        BTreeMap::new();
    for (family, _, name, _) in ROUTER_SETS {
        e.entry((family, name.to_string())).or_default();
    }
    fn put(
        e: &mut BTreeMap<(&'static str, String), std::collections::BTreeSet<String>>,
        family: &'static str,
        set: &str,
        value: String,
    ) {
        e.entry((family, set.to_string()))
            .or_default()
            .insert(value);
    }
    for p in &r.ports {
        let l = format!("\"{}\"", p.link);
        put(&mut e, "bridge", "ports", l.clone());
        put(&mut e, "bridge", "port_macs", format!("{l} . {}", p.mac));
        put(&mut e, "bridge", "port_ips", format!("{l} . {}", p.ip));
        if p.dhcp {
            put(&mut e, "bridge", "dhcp_ports", l.clone());
        }
    }
    // One verdict per address. Two ports hold one address only for the
    // moment a removed instance's port outlives the reuse of its address:
    // until it is gone, that address is closed.
    let mut by_ip: BTreeMap<Ipv4Addr, std::collections::BTreeSet<String>> = BTreeMap::new();
    for p in &r.ports {
        by_ip.entry(p.ip).or_default().insert(verdict(p));
    }
    for (ip, verdicts) in by_ip {
        let v = match verdicts.len() {
            1 => verdicts.into_iter().next().unwrap_or_else(|| "drop".into()),
            _ => "drop".into(),
        };
        put(&mut e, "inet", "ingress", format!("{ip} : {v}"));
    }
    for (g, members) in &r.groups {
        let set = e.entry(("inet", set_name(g))).or_default();
        for m in members {
            set.insert(m.to_string());
        }
    }
    e
}

/// The script that brings a router's tables (`inet` and `bridge`) from
/// `previous` (what this process applied last; `None`: unknown) to `r`.
///
/// Ports, their addresses and filters, and group members are elements of
/// sets and maps, so a launch or a membership change only adds and removes
/// elements. Rules change only when the structure does (a new filter, a
/// rule edit, a published port); then base chains are flushed rather than
/// deleted. Both matter here: a transaction that changes rules waits for
/// an RCU grace period in the kernel (about 15 ms on this machine kind),
/// one that only changes elements does not. With `previous` unknown the
/// tables are replaced whole, once.
pub fn router_script(r: &RouterRules, previous: Option<&RouterRules>) -> String {
    let t = ROUTER_TABLE;
    let mut s = String::with_capacity(4096 + r.ports.len() * 512);
    let now = elements(r);
    let restructure = previous.is_none_or(|p| structure(p) != structure(r));
    if !restructure {
        let before = previous.map(elements).unwrap_or_default();
        let key = |e: &str| e.split(" : ").next().unwrap_or(e).to_string();
        for ((family, set), items) in &now {
            let old = before.get(&(*family, set.clone()));
            let gone: Vec<String> = old
                .map(|o| o.difference(items).map(|e| key(e)).collect())
                .unwrap_or_default();
            let new: Vec<&String> = items
                .iter()
                .filter(|e| old.is_none_or(|o| !o.contains(*e)))
                .collect();
            if !gone.is_empty() {
                let _ = writeln!(
                    s,
                    "delete element {family} {t} {set} {{ {} }}",
                    gone.join(", ")
                );
            }
            if !new.is_empty() {
                let list: Vec<&str> = new.iter().map(|e| e.as_str()).collect();
                let _ = writeln!(
                    s,
                    "add element {family} {t} {set} {{ {} }}",
                    list.join(", ")
                );
            }
        }
        return s;
    }
    if previous.is_none() {
        let _ = writeln!(
            s,
            "table inet {t}\ndelete table inet {t}\ntable bridge {t}\ndelete table bridge {t}\ntable arp {t}\ndelete table arp {t}"
        );
    }
    let _ = writeln!(s, "add table inet {t}\nadd table bridge {t}");
    for (family, kind, name, typ) in ROUTER_SETS {
        let _ = writeln!(
            s,
            "add {kind} {family} {t} {name} {{ type {typ}; }}\nflush {kind} {family} {t} {name}"
        );
    }
    let st = structure(r);
    for g in r.groups.keys() {
        let g = set_name(g);
        let _ = writeln!(
            s,
            "add set inet {t} {g} {{ type ipv4_addr; }}\nflush set inet {t} {g}"
        );
    }
    for (name, def) in BRIDGE_BASE_CHAINS {
        let _ = writeln!(
            s,
            "add chain bridge {t} {name} {{ {def} }}\nflush chain bridge {t} {name}"
        );
    }
    for (name, def) in ROUTER_BASE_CHAINS {
        let _ = writeln!(
            s,
            "add chain inet {t} {name} {{ {def} }}\nflush chain inet {t} {name}"
        );
    }
    for c in st.chains.keys() {
        let _ = writeln!(s, "add chain inet {t} {c}\nflush chain inet {t} {c}");
    }
    // Unreferenced now (the map and the chains were flushed above).
    if let Some(prev) = previous {
        let old = structure(prev);
        for c in old.chains.keys().filter(|c| !st.chains.contains_key(*c)) {
            let _ = writeln!(s, "delete chain inet {t} {c}");
        }
        for g in prev.groups.keys().filter(|g| !r.groups.contains_key(*g)) {
            let _ = writeln!(s, "delete set inet {t} {}", set_name(g));
        }
    }
    let rule = |s: &mut String, chain: &str, text: &str| {
        let _ = writeln!(s, "add rule inet {t} {chain} {text}");
    };
    for (c, lines) in &st.chains {
        for l in lines {
            rule(&mut s, c, l);
        }
    }
    // Frames from a port must carry the port's own MAC and IPv4 address
    // (ARP included), and be IPv4 or ARP; links that are not ports yet
    // send nothing. Only an address-less DHCP request is let through.
    for text in [
        "iifname != @ports drop",
        "iifname . ether saddr != @port_macs drop",
        "ether type != { ip, arp } drop",
        "iifname @dhcp_ports ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp dport 67 accept",
        "ether type ip iifname . ip saddr != @port_ips drop",
        "ether type arp iifname . arp saddr ether != @port_macs drop",
        "ether type arp arp saddr ip 0.0.0.0 accept",
        "ether type arp iifname . arp saddr ip != @port_ips drop",
    ] {
        let _ = writeln!(s, "add rule bridge {t} antispoof {text}");
    }
    // A bridged IPv4 frame reaches a port only if addressed to that
    // port's address, so the inet table's filter by destination address
    // is the filter of the port the frame goes out of.
    let _ = writeln!(
        s,
        "add rule bridge {t} deliver ether type ip oifname . ip daddr != @port_ips drop"
    );
    // IPv4 enters the router only from loopback, the uplink or the bridge
    // (whose ports the bridge table guards); any other link is not ours.
    rule(
        &mut s,
        "links",
        &format!("iifname != {{ \"lo\", \"{UPLINK}\", \"{BRIDGE}\" }} drop"),
    );
    // From outside, only published ports (DNAT) may reach a port, and
    // then through its ingress filter like any other traffic. Bridged
    // packets show the bridge as both interfaces.
    for text in [
        // Nothing from outside may claim an address of the network.
        format!("iifname \"{UPLINK}\" ip saddr {} drop", r.subnet),
        "ct state established,related accept".to_string(),
        "ct state invalid drop".into(),
        format!("iifname \"{UPLINK}\" ct status dnat ip daddr vmap @ingress"),
        format!("iifname \"{UPLINK}\" drop"),
        format!("oifname \"{BRIDGE}\" ip daddr vmap @ingress"),
        format!("oifname \"{UPLINK}\" ip daddr {} drop", r.subnet),
        format!("oifname \"{UPLINK}\" accept"),
    ] {
        rule(&mut s, "forward", &text);
    }
    let gw = r.gateway;
    for text in [
        "ct state established,related accept".to_string(),
        "iifname \"lo\" accept".into(),
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
    for ((family, set), items) in &now {
        if !items.is_empty() {
            let list: Vec<&str> = items.iter().map(|e| e.as_str()).collect();
            let _ = writeln!(
                s,
                "add element {family} {t} {set} {{ {} }}",
                list.join(", ")
            );
        }
    }
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
        &format!("iifname \"{p}*\" ct state established,related accept"),
    );
    // Every Nimbus uplink, also of routers not (yet) reopened after a restart.
    rule(&mut s, "input", &format!("iifname \"{p}*\" drop"));
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

    #[test]
    fn group_sets_never_collide() {
        let names = ["db-clients", "db.clients", "db_clients", "db__clients"];
        let sets: std::collections::BTreeSet<String> = names.iter().map(|n| set_name(n)).collect();
        assert_eq!(sets.len(), names.len(), "{sets:?}");
    }

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
        assert!(s.starts_with("table inet nimbus\ndelete table inet nimbus\n"));
        assert!(
            s.contains("add element bridge nimbus port_macs { \"pabc\" . 02:00:00:00:00:05 }"),
            "{s}"
        );
        assert!(
            s.contains("ether type ip iifname . ip saddr != @port_ips drop"),
            "{s}"
        );
        assert!(
            s.contains("add element inet nimbus ingress { 10.20.0.5 : jump sg_"),
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
        // A second port with the same filter: only elements change.
        let mut next = sample();
        let mut second = next.ports[0].clone();
        second.link = "pdef".into();
        second.ip = Ipv4Addr::new(10, 20, 0, 6);
        second.mac = "02:00:00:00:00:06".into();
        next.ports.push(second);
        next.groups.insert(
            "web".into(),
            vec![Ipv4Addr::new(10, 20, 0, 5), Ipv4Addr::new(10, 20, 0, 6)],
        );
        let inc = router_script(&next, Some(&sample()));
        assert!(!inc.contains("add rule"), "{inc}");
        assert!(
            inc.contains("add element bridge nimbus ports { \"pdef\" }"),
            "{inc}"
        );
        assert!(
            inc.contains("add element inet nimbus g_web { 10.20.0.6 }"),
            "{inc}"
        );
        // Removing every port and group: chains and sets go, base chains stay.
        let mut empty = sample();
        empty.ports.clear();
        empty.groups.clear();
        let inc = router_script(&empty, Some(&next));
        assert!(!inc.contains("delete table"), "{inc}");
        assert!(inc.contains("flush chain inet nimbus forward"), "{inc}");
        assert!(inc.contains("delete chain inet nimbus sg_"), "{inc}");
        assert!(inc.contains("delete set inet nimbus g_web"), "{inc}");
    }

    #[test]
    fn an_address_held_by_two_ports_is_closed() {
        let mut r = sample();
        let mut old = r.ports[0].clone();
        old.link = "pold".into();
        old.ingress = None;
        r.ports.push(old);
        let s = router_script(&r, None);
        assert!(
            s.contains("add element inet nimbus ingress { 10.20.0.5 : drop }"),
            "{s}"
        );
        assert!(
            s.contains("iifname \"uplink\" ip saddr 10.20.0.0/24 drop"),
            "{s}"
        );
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

    fn allow(proto: Proto, ports: Option<(u16, u16)>) -> AllowRule {
        AllowRule {
            proto,
            ports,
            cidr: None,
            group: None,
        }
    }

    fn port(d: u8, ingress: Option<Ingress>) -> PortRules {
        PortRules {
            link: format!("p{d}"),
            ip: Ipv4Addr::new(10, 20, 0, d),
            mac: format!("02:00:00:00:00:{d:02x}"),
            dhcp: false,
            ingress,
        }
    }

    fn lines_of<'a>(script: &'a str, chain: &str) -> Vec<&'a str> {
        let prefix = format!("add rule inet nimbus {chain} ");
        script
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The rules of the ingress chain the port at `ip` jumps to.
    fn filter_of<'a>(script: &'a str, ip: &str) -> Vec<&'a str> {
        let chain = script
            .lines()
            .find(|l| l.starts_with("add element inet nimbus ingress {"))
            .and_then(|l| l.split(&format!("{ip} : jump ")).nth(1))
            .and_then(|rest| rest.split([',', ' ']).next())
            .unwrap_or_else(|| panic!("{ip} has no filter: {script}"));
        lines_of(script, chain)
    }

    #[test]
    fn ingress_is_denied_by_default_and_open_only_to_the_rules() {
        let mut r = sample();
        r.forwards.clear();
        r.groups.clear();
        r.ports = vec![
            port(
                5,
                Some(Ingress {
                    own_groups: Vec::new(),
                    rules: vec![
                        allow(Proto::Tcp, Some((80, 80))),
                        allow(Proto::Udp, Some((6000, 6100))),
                        allow(Proto::Icmp, None),
                    ],
                }),
            ),
            port(6, Some(Ingress::default())),
        ];
        let s = router_script(&r, None);
        assert!(s.contains(
            "add chain inet nimbus forward { type filter hook forward priority 0; policy drop; }"
        ));
        assert!(s.contains(
            "add chain inet nimbus input { type filter hook input priority 0; policy drop; }"
        ));
        assert_eq!(
            filter_of(&s, "10.20.0.5"),
            vec![
                "tcp dport 80 accept",
                "udp dport 6000-6100 accept",
                "meta l4proto icmp accept",
                "drop"
            ]
        );
        assert_eq!(filter_of(&s, "10.20.0.6"), vec!["drop"], "no rules: closed");
        // Traffic from outside only through a published port's DNAT.
        let forward = lines_of(&s, "forward");
        let dnat = forward
            .iter()
            .position(|l| *l == "iifname \"uplink\" ct status dnat ip daddr vmap @ingress");
        let rest = forward.iter().position(|l| *l == "iifname \"uplink\" drop");
        assert!(
            dnat.is_some() && rest.is_some() && dnat < rest,
            "{forward:?}"
        );
        assert!(!s.contains("dnat ip to"), "no published port, no DNAT: {s}");
    }

    #[test]
    fn sources_are_a_cidr_a_group_or_nothing_that_is_not_a_cidr() {
        let mut r = sample();
        r.ports = vec![port(
            5,
            Some(Ingress {
                own_groups: Vec::new(),
                rules: vec![
                    AllowRule {
                        cidr: Some("192.168.0.0/16".into()),
                        ..allow(Proto::Any, None)
                    },
                    AllowRule {
                        group: Some("db clients".into()),
                        ..allow(Proto::Tcp, Some((5432, 5432)))
                    },
                    AllowRule {
                        cidr: Some("0.0.0.0/0; flush ruleset".into()),
                        ..allow(Proto::Tcp, Some((22, 22)))
                    },
                ],
            }),
        )];
        r.groups = BTreeMap::from([("db clients".to_string(), vec![Ipv4Addr::new(10, 20, 0, 9)])]);
        let s = router_script(&r, None);
        let filter = filter_of(&s, "10.20.0.5");
        assert_eq!(filter[0], "ip saddr 192.168.0.0/16 accept");
        assert_eq!(filter[1], "ip saddr @g_db_20clients tcp dport 5432 accept");
        assert_eq!(
            filter[2], "ip saddr 0.0.0.0/32 ip saddr != 0.0.0.0/32 tcp dport 22 accept",
            "a bad CIDR matches nothing"
        );
        assert!(!s.contains("flush ruleset"), "{s}");
        assert!(s.contains("add element inet nimbus g_db_20clients { 10.20.0.9 }"));
    }

    #[test]
    fn ports_with_one_filter_share_a_chain_and_other_filters_get_their_own() {
        let web = Ingress {
            own_groups: vec!["web".into()],
            rules: vec![allow(Proto::Tcp, Some((80, 80)))],
        };
        let db = Ingress {
            own_groups: vec!["db".into()],
            rules: Vec::new(),
        };
        let mut r = sample();
        r.ports = vec![
            port(5, Some(web.clone())),
            port(6, Some(web)),
            port(7, Some(db)),
        ];
        let s = router_script(&r, None);
        let chains: std::collections::BTreeSet<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("add chain inet nimbus sg_"))
            .collect();
        assert_eq!(chains.len(), 2, "{chains:?}");
        assert_eq!(filter_of(&s, "10.20.0.5"), filter_of(&s, "10.20.0.6"));
        assert_eq!(
            filter_of(&s, "10.20.0.7"),
            vec!["ip saddr @g_db accept", "drop"]
        );
    }

    #[test]
    fn published_ports_are_dnat_to_the_instance_and_egress_is_masqueraded() {
        let mut r = sample();
        r.forwards.push(Forward {
            udp: true,
            port: 5353,
            ip: Ipv4Addr::new(10, 20, 0, 5),
            to_port: 53,
        });
        let s = router_script(&r, None);
        assert_eq!(
            lines_of(&s, "portfwd"),
            vec![
                "iifname \"uplink\" tcp dport 8080 dnat ip to 10.20.0.5:80",
                "iifname \"uplink\" udp dport 5353 dnat ip to 10.20.0.5:53",
            ]
        );
        assert_eq!(
            lines_of(&s, "egress"),
            vec!["oifname \"uplink\" masquerade"]
        );
        // Unpublishing rewrites the rules: the DNAT goes.
        let inc = router_script(&sample(), Some(&r));
        assert!(inc.contains("flush chain inet nimbus portfwd"), "{inc}");
        assert!(!inc.contains("udp dport 5353"), "{inc}");
        assert!(
            inc.contains("tcp dport 8080 dnat ip to 10.20.0.5:80"),
            "{inc}"
        );
    }

    #[test]
    fn only_vm_ports_may_send_dhcp_requests() {
        let mut r = sample();
        let mut vm = port(7, None);
        vm.link = "t7".into();
        vm.dhcp = true;
        r.ports.push(vm);
        let s = router_script(&r, None);
        assert!(
            s.contains("add element bridge nimbus dhcp_ports { \"t7\" }"),
            "{s}"
        );
        assert!(!s.contains("dhcp_ports { \"pabc\""), "{s}");
        assert!(s.contains(
            "add rule bridge nimbus antispoof iifname @dhcp_ports ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp dport 67 accept"
        ));
    }

    #[test]
    fn the_host_table_isolates_networks_and_forwards_only_published_ports() {
        let uplinks = vec!["nb01".to_string(), "nb02".to_string()];
        let forwards = [HostForward {
            udp: false,
            port: 8080,
            router_ip: Ipv4Addr::new(100, 64, 0, 2),
        }];
        let s = host_script("nimbus_t1", &uplinks, &forwards, false);
        assert!(!s.contains("delete table"), "refilled, not replaced: {s}");
        let rules = |chain: &str| -> Vec<String> {
            let prefix = format!("add rule inet nimbus_t1 {chain} ");
            s.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            rules("forward"),
            vec!["iifname \"nb*\" oifname \"nb*\" drop"]
        );
        assert_eq!(
            rules("input"),
            vec![
                "iifname \"nb*\" ct state established,related accept",
                "iifname \"nb*\" drop"
            ],
            "instances never reach the host's own services"
        );
        let dnat = "fib daddr type local tcp dport 8080 dnat ip to 100.64.0.2:8080";
        assert_eq!(rules("prerouting"), vec![dnat]);
        assert_eq!(
            rules("output"),
            vec![dnat],
            "the host itself reaches it too"
        );
        assert!(rules("postrouting")
            .contains(&"iifname @uplinks oifname != \"nb*\" masquerade".to_string()));
        assert!(s.contains("add element inet nimbus_t1 uplinks { \"nb01\", \"nb02\" }"));
        let none = host_script("nimbus_t1", &uplinks, &[], false);
        assert!(!none.contains("dnat"), "{none}");
    }
}
