//! Which tracked flows a rule change must drop. NAT and the security
//! groups' verdict are decided on a flow's first packet, so a flow that
//! outlives the rule it was admitted by keeps its old fate: these pure
//! functions pick the flows that must go, and leave every other one
//! (another port's, another address's, the host's own connections) alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::conntrack::Flow;
use crate::rules::{AllowRule, Forward, HostForward, Ingress, Proto, RouterRules};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

fn proto(udp: bool) -> u8 {
    if udp {
        UDP
    } else {
        TCP
    }
}

/// Tracked flows inside a router that its new rules must not inherit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleRouterFlows {
    /// Addresses of ports that are gone (an address may go to a new
    /// instance, which must not inherit the old one's connections).
    pub addresses: Vec<Ipv4Addr>,
    /// (IP protocol, port) of published ports that changed, to the
    /// router's uplink address.
    pub forwards: Vec<(u8, u16)>,
    pub router_ip: Option<Ipv4Addr>,
    /// Ports whose ingress filter (or a group it names) changed: address →
    /// the new filter. Flows into them it no longer admits go.
    pub refiltered: BTreeMap<Ipv4Addr, Ingress>,
    /// Group members under the new rules, for `refiltered`.
    pub groups: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The router's own addresses: its flows to a port (DNS, DHCP) never
    /// pass a port's filter.
    pub router_addresses: Vec<Ipv4Addr>,
}

impl StaleRouterFlows {
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.forwards.is_empty() && self.refiltered.is_empty()
    }

    pub fn matches(&self, f: &Flow) -> bool {
        self.addresses
            .iter()
            .any(|a| f.src == *a || f.dst == *a || f.reply_src == *a)
            || (Some(f.dst) == self.router_ip && self.forwards.contains(&(f.proto, f.dport)))
            || self.refused_now(f)
    }

    /// Whether `f` goes into a refiltered port whose new filter refuses it.
    fn refused_now(&self, f: &Flow) -> bool {
        if self.router_addresses.contains(&f.src) {
            return false;
        }
        // Bridged, the flow goes to the port's address; published, it went
        // to the uplink and was translated to the port's (`reply_src`).
        let (ip, port) = if self.refiltered.contains_key(&f.dst) {
            (f.dst, f.dport)
        } else if f.reply_src != f.dst && self.refiltered.contains_key(&f.reply_src) {
            (f.reply_src, f.reply_sport)
        } else {
            return false;
        };
        if f.src == ip {
            // The instance's own connection to itself through a forward.
            return false;
        }
        self.refiltered
            .get(&ip)
            .is_some_and(|ing| !admits(ing, &self.groups, f.proto, f.src, port))
    }
}

/// Whether the filter `ing` lets a flow of `proto` from `src` to `port` in.
pub fn admits(
    ing: &Ingress,
    groups: &BTreeMap<String, Vec<Ipv4Addr>>,
    proto: u8,
    src: Ipv4Addr,
    port: u16,
) -> bool {
    let member = |g: &str| groups.get(g).is_some_and(|m| m.contains(&src));
    ing.own_groups.iter().any(|g| member(g))
        || ing
            .rules
            .iter()
            .any(|r| rule_admits(r, &member, proto, src, port))
}

fn rule_admits(
    r: &AllowRule,
    member: &dyn Fn(&str) -> bool,
    proto: u8,
    src: Ipv4Addr,
    port: u16,
) -> bool {
    let proto_ok = match r.proto {
        Proto::Tcp => proto == TCP,
        Proto::Udp => proto == UDP,
        Proto::Icmp => proto == ICMP,
        Proto::Any => true,
    };
    let ports_ok = match (r.proto, r.ports) {
        (Proto::Tcp | Proto::Udp, Some((from, to))) => (from..=to).contains(&port),
        _ => true,
    };
    let cidr_ok = r.cidr.as_deref().is_none_or(|c| cidr_contains(c, src));
    let group_ok = r.group.as_deref().is_none_or(member);
    proto_ok && ports_ok && cidr_ok && group_ok
}

/// `10.0.0.0/8` contains `ip`; anything unreadable contains nothing (as
/// the rendered rule matches nothing).
fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    if len > 32 {
        return false;
    }
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// What going from the router rules `old` to `new` leaves stale, on the
/// router whose uplink address is `router_ip`.
pub fn stale_router_flows(
    old: &RouterRules,
    new: &RouterRules,
    router_ip: Ipv4Addr,
) -> StaleRouterFlows {
    let addresses = old
        .ports
        .iter()
        .map(|p| p.ip)
        .filter(|ip| !new.ports.iter().any(|p| p.ip == *ip))
        .collect();
    let before: BTreeSet<&Forward> = old.forwards.iter().collect();
    let after: BTreeSet<&Forward> = new.forwards.iter().collect();
    let forwards: BTreeSet<(u8, u16)> = before
        .symmetric_difference(&after)
        .map(|f| (proto(f.udp), f.port))
        .collect();
    // A port's filter, or the members of a group it names, changed.
    let names = |ing: &Ingress| -> BTreeSet<String> {
        ing.own_groups
            .iter()
            .cloned()
            .chain(ing.rules.iter().filter_map(|r| r.group.clone()))
            .collect()
    };
    let refiltered = new
        .ports
        .iter()
        .filter_map(|p| {
            let before = old.ports.iter().find(|o| o.ip == p.ip)?;
            let ing = p.ingress.as_ref()?;
            let changed = before.ingress.as_ref() != Some(ing)
                || names(ing)
                    .iter()
                    .any(|g| old.groups.get(g) != new.groups.get(g));
            changed.then(|| (p.ip, ing.clone()))
        })
        .collect();
    StaleRouterFlows {
        addresses,
        forwards: forwards.into_iter().collect(),
        router_ip: Some(router_ip),
        refiltered,
        groups: new.groups.clone(),
        router_addresses: vec![new.gateway, router_ip],
    }
}

/// In the host namespace: whether `f` must go when the published ports
/// `gone` were removed and `new` were added. Flows DNAT'ed to a forward
/// that is gone go, and so do flows to a newly published port that
/// reached the host itself untranslated (sent before the port was
/// published; `local`: the host's addresses). Outgoing connections of the
/// host and of instances are never touched.
pub fn host_flow_is_stale(
    f: &Flow,
    gone: &[HostForward],
    new: &[HostForward],
    local: &[Ipv4Addr],
) -> bool {
    let dnat_gone = gone
        .iter()
        .any(|h| f.proto == proto(h.udp) && f.reply_src == h.router_ip && f.reply_sport == h.port);
    let untranslated_new = f.reply_src == f.dst
        && f.reply_sport == f.dport
        && (f.dst.is_loopback() || local.contains(&f.dst))
        && new
            .iter()
            .any(|h| f.proto == proto(h.udp) && f.dport == h.port);
    dnat_gone || untranslated_new
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::rules::PortRules;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 20, 0, d)
    }

    const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    fn flow(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Flow {
        // Untranslated: the reply comes from where the packet went.
        Flow {
            proto,
            src,
            dst,
            dport,
            reply_src: dst,
            reply_sport: dport,
        }
    }

    fn port(d: u8) -> PortRules {
        PortRules {
            link: format!("p{d}"),
            ip: ip(d),
            mac: format!("02:00:00:00:00:{d:02x}"),
            dhcp: false,
            ingress: None,
        }
    }

    fn rules(ports: &[u8], forwards: Vec<Forward>) -> RouterRules {
        RouterRules {
            gateway: ip(1),
            subnet: "10.20.0.0/24".into(),
            ports: ports.iter().map(|d| port(*d)).collect(),
            forwards,
            groups: BTreeMap::new(),
        }
    }

    fn forward(udp: bool, port: u16, d: u8, to_port: u16) -> Forward {
        Forward {
            udp,
            port,
            ip: ip(d),
            to_port,
        }
    }

    #[test]
    fn a_removed_port_takes_every_flow_of_its_address_and_only_those() {
        let old = rules(&[5, 6], Vec::new());
        let new = rules(&[6], Vec::new());
        let stale = stale_router_flows(&old, &new, ROUTER);
        assert_eq!(stale.addresses, vec![ip(5)]);
        // To, from, and DNAT'ed to the removed address: gone.
        assert!(stale.matches(&flow(TCP, ip(6), ip(5), 80)));
        assert!(stale.matches(&flow(TCP, ip(5), Ipv4Addr::new(1, 1, 1, 1), 443)));
        let dnat = Flow {
            reply_src: ip(5),
            reply_sport: 80,
            ..flow(TCP, HOST, ROUTER, 8080)
        };
        assert!(stale.matches(&dnat));
        // The remaining port's own flows stay.
        assert!(!stale.matches(&flow(TCP, ip(6), Ipv4Addr::new(1, 1, 1, 1), 443)));
        assert!(!stale.matches(&flow(UDP, ip(6), ip(1), 53)));
    }

    #[test]
    fn a_changed_forward_takes_its_port_and_protocol_only() {
        let old = rules(&[5], vec![forward(false, 8080, 5, 80)]);
        let new = rules(&[5], vec![forward(false, 8080, 5, 81)]);
        let stale = stale_router_flows(&old, &new, ROUTER);
        assert_eq!(stale.forwards, vec![(TCP, 8080)]);
        assert!(stale.matches(&flow(TCP, HOST, ROUTER, 8080)));
        assert!(!stale.matches(&flow(UDP, HOST, ROUTER, 8080)), "UDP 8080");
        assert!(
            !stale.matches(&flow(TCP, HOST, ROUTER, 8081)),
            "another port"
        );
        assert!(
            !stale.matches(&flow(TCP, HOST, ip(5), 8080)),
            "not to the uplink"
        );
    }

    #[test]
    fn unchanged_rules_leave_nothing_stale() {
        let r = rules(&[5, 6], vec![forward(true, 5353, 6, 53)]);
        assert!(stale_router_flows(&r, &r, ROUTER).is_empty());
        let more = rules(&[5, 6, 7], vec![forward(true, 5353, 6, 53)]);
        assert!(
            stale_router_flows(&r, &more, ROUTER).is_empty(),
            "a new port makes nothing stale"
        );
    }

    fn host_fwd(udp: bool, port: u16, router_ip: Ipv4Addr) -> HostForward {
        HostForward {
            udp,
            port,
            router_ip,
        }
    }

    #[test]
    fn an_unpublished_port_takes_its_translated_flows_only() {
        let gone = [host_fwd(false, 8080, ROUTER)];
        let to_router = |proto, port| Flow {
            reply_src: ROUTER,
            reply_sport: port,
            ..flow(proto, Ipv4Addr::new(203, 0, 113, 9), HOST, port)
        };
        assert!(host_flow_is_stale(
            &to_router(TCP, 8080),
            &gone,
            &[],
            &[HOST]
        ));
        assert!(!host_flow_is_stale(
            &to_router(UDP, 8080),
            &gone,
            &[],
            &[HOST]
        ));
        assert!(!host_flow_is_stale(
            &to_router(TCP, 8081),
            &gone,
            &[],
            &[HOST]
        ));
        let other_router = Flow {
            reply_src: Ipv4Addr::new(100, 64, 0, 6),
            ..to_router(TCP, 8080)
        };
        assert!(
            !host_flow_is_stale(&other_router, &gone, &[], &[HOST]),
            "another network's forward on the same port number stays"
        );
    }

    #[test]
    fn a_new_published_port_takes_untranslated_flows_to_the_host_only() {
        let new = [host_fwd(true, 5353, ROUTER)];
        let client = Ipv4Addr::new(203, 0, 113, 9);
        assert!(host_flow_is_stale(
            &flow(UDP, client, HOST, 5353),
            &[],
            &new,
            &[HOST]
        ));
        assert!(host_flow_is_stale(
            &flow(UDP, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 5353),
            &[],
            &new,
            &[HOST]
        ));
        // The host's own outgoing flow to port 5353 elsewhere stays.
        let outgoing = flow(UDP, HOST, Ipv4Addr::new(8, 8, 8, 8), 5353);
        assert!(!host_flow_is_stale(&outgoing, &[], &new, &[HOST]));
        // An instance's egress (masqueraded: the reply goes to the host).
        let egress = Flow {
            reply_src: Ipv4Addr::new(8, 8, 8, 8),
            reply_sport: 5353,
            ..flow(UDP, ip(5), Ipv4Addr::new(8, 8, 8, 8), 5353)
        };
        assert!(!host_flow_is_stale(&egress, &[], &new, &[HOST]));
        assert!(!host_flow_is_stale(
            &flow(TCP, client, HOST, 5353),
            &[],
            &new,
            &[HOST]
        ));
    }

    fn filtered(d: u8, ingress: Ingress) -> PortRules {
        PortRules {
            ingress: Some(ingress),
            ..port(d)
        }
    }

    fn tcp(ports: (u16, u16)) -> AllowRule {
        AllowRule {
            proto: Proto::Tcp,
            ports: Some(ports),
            cidr: None,
            group: None,
        }
    }

    #[test]
    fn a_removed_rule_takes_the_flows_it_admitted_and_no_others() {
        let client = Ipv4Addr::new(10, 1, 2, 3);
        let mut old = rules(&[6], Vec::new());
        old.ports = vec![
            filtered(
                5,
                Ingress {
                    own_groups: Vec::new(),
                    rules: vec![
                        tcp((80, 80)),
                        AllowRule {
                            cidr: Some("10.0.0.0/8".into()),
                            ..tcp((22, 22))
                        },
                    ],
                },
            ),
            port(6),
        ];
        let mut new = old.clone();
        new.ports[0].ingress = Some(Ingress {
            own_groups: Vec::new(),
            rules: vec![tcp((80, 80))],
        });
        let stale = stale_router_flows(&old, &new, ROUTER);
        assert!(!stale.is_empty());
        assert!(stale.matches(&flow(TCP, client, ip(5), 22)), "ssh went");
        assert!(!stale.matches(&flow(TCP, client, ip(5), 80)), "http stays");
        assert!(
            !stale.matches(&flow(TCP, client, ip(6), 22)),
            "an unfiltered port's flows stay"
        );
        assert!(
            !stale.matches(&flow(TCP, ip(5), client, 22)),
            "the instance's own outgoing connection stays"
        );
        assert!(
            !stale.matches(&flow(UDP, ip(1), ip(5), 68)),
            "the router's own flows stay"
        );
        // Published: to the uplink, translated to the port.
        let published = |to_port| Flow {
            reply_src: ip(5),
            reply_sport: to_port,
            ..flow(TCP, HOST, ROUTER, 2222)
        };
        assert!(stale.matches(&published(22)));
        assert!(!stale.matches(&published(80)));
    }

    #[test]
    fn leaving_a_group_takes_the_flows_the_membership_admitted() {
        let ing = Ingress {
            own_groups: vec!["db".into()],
            rules: vec![AllowRule {
                group: Some("app".into()),
                ..tcp((5432, 5432))
            }],
        };
        let mut old = rules(&[], Vec::new());
        old.ports = vec![filtered(5, ing), port(6), port(7)];
        old.groups = BTreeMap::from([
            ("db".to_string(), vec![ip(5)]),
            ("app".to_string(), vec![ip(6), ip(7)]),
        ]);
        let mut new = old.clone();
        new.groups.insert("app".into(), vec![ip(7)]);
        let stale = stale_router_flows(&old, &new, ROUTER);
        assert!(stale.matches(&flow(TCP, ip(6), ip(5), 5432)), "6 left app");
        assert!(
            !stale.matches(&flow(TCP, ip(7), ip(5), 5432)),
            "7 is still in app"
        );
        // A change of an unrelated group leaves the port's flows alone.
        let mut other = old.clone();
        other.groups.insert("web".into(), vec![ip(7)]);
        assert!(stale_router_flows(&old, &other, ROUTER).is_empty());
    }

    #[test]
    fn cidrs_contain_what_nftables_would_match() {
        assert!(cidr_contains("10.0.0.0/8", Ipv4Addr::new(10, 255, 0, 1)));
        assert!(!cidr_contains("10.0.0.0/8", Ipv4Addr::new(11, 0, 0, 1)));
        assert!(cidr_contains("0.0.0.0/0", Ipv4Addr::new(8, 8, 8, 8)));
        assert!(cidr_contains("10.20.0.5/32", ip(5)));
        assert!(!cidr_contains("10.20.0.5/33", ip(5)));
        assert!(!cidr_contains("bogus", ip(5)));
    }
}
