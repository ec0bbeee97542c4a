//! `nimbus network ...`, `nimbus secgroup ...`, `nimbus address ...`

use clap::Subcommand;
use nimbus_api::client::Method;
use nimbus_api::{
    CreateRequest, Network, NetworkSpec, Protocol, PublishedPort, PublishedPortSpec, ResourceList,
    SecurityGroup, SecurityGroupSpec, SecurityRule,
};

use crate::ctx::Globals;
use crate::output::{age, opt, print, table};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a private network.
    #[command(after_help = "Examples:\n  nimbus network create backend --subnet 10.20.0.0/24")]
    Create {
        name: String,
        /// IPv4 subnet, /16 to /29.
        #[arg(long)]
        subnet: String,
        /// Default: the first address of the subnet.
        #[arg(long)]
        gateway: Option<std::net::Ipv4Addr>,
        /// Resolver for instances (repeatable); default: the gateway.
        #[arg(long)]
        dns: Vec<std::net::Ipv4Addr>,
    },
    /// List networks of the project.
    #[command(alias = "ls")]
    List,
    /// Show one network.
    Get { name: String },
    /// Delete a network no instance uses.
    #[command(alias = "delete")]
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum SecgroupCmd {
    /// Create a security group: members accept ingress from each other and
    /// what the rules allow; everything else is dropped.
    #[command(
        after_help = "Rules: PROTO[:PORT[-PORT]][:CIDR], PROTO one of tcp, udp, icmp, any.\nExamples:\n  nimbus secgroup create web --allow tcp:80 --allow tcp:22:10.0.0.0/8 --allow-from-group web"
    )]
    Create {
        name: String,
        /// Allowed ingress, e.g. tcp:80, udp:5000-5100, tcp:22:10.0.0.0/8, icmp.
        #[arg(long)]
        allow: Vec<String>,
        /// Allow everything from members of this group (repeatable).
        #[arg(long)]
        allow_from_group: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Add rules to a group; running members get them at once.
    Allow {
        name: String,
        rules: Vec<String>,
        #[arg(long)]
        from_group: Vec<String>,
    },
    /// Remove rules from a group; running members lose them at once.
    Revoke {
        name: String,
        rules: Vec<String>,
        #[arg(long)]
        from_group: Vec<String>,
    },
    /// List security groups of the project.
    #[command(alias = "ls")]
    List,
    /// Show one group and its rules.
    Get { name: String },
    /// Delete a group no instance uses.
    #[command(alias = "delete")]
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum AddressCmd {
    /// Forward a host port to an instance port.
    #[command(
        after_help = "Examples:\n  nimbus address publish api --port 8080:80\n  nimbus address publish dns --port 5353:53/udp"
    )]
    Publish {
        /// The instance that receives the traffic.
        instance: String,
        /// HOST:INSTANCE[/tcp|/udp].
        #[arg(long)]
        port: String,
        /// Name of the published port (default: `<instance>-<protocol>-<host port>`).
        #[arg(long)]
        name: Option<String>,
        /// Return once the port is recorded, without waiting until the
        /// host forwards it.
        #[arg(long)]
        no_wait: bool,
    },
    /// List published ports of the project.
    #[command(alias = "ls")]
    List,
    /// Stop forwarding a published port.
    #[command(alias = "delete", alias = "unpublish")]
    Rm { name: String },
}

/// `tcp:80`, `tcp:8000-8080`, `tcp:22:10.0.0.0/8`, `icmp`, `any:10.0.0.0/8`.
pub fn parse_rule(text: &str) -> anyhow::Result<SecurityRule> {
    let mut parts = text.splitn(3, ':');
    let proto = parts.next().unwrap_or_default();
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        "any" | "all" => Protocol::Any,
        _ => anyhow::bail!(
            "rule {text:?}: protocol {proto:?} is not tcp, udp, icmp or any (e.g. tcp:80)"
        ),
    };
    let mut rule = SecurityRule {
        protocol,
        ..Default::default()
    };
    let rest: Vec<&str> = parts.collect();
    let (ports, cidr) = match (protocol, rest.as_slice()) {
        (Protocol::Tcp | Protocol::Udp, [p]) => (Some(*p), None),
        (Protocol::Tcp | Protocol::Udp, [p, c]) => (Some(*p), Some(*c)),
        (_, []) => (None, None),
        (_, [c]) => (None, Some(*c)),
        (_, ["", c]) => (None, Some(*c)),
        _ => anyhow::bail!("rule {text:?}: {proto} takes no port; write {proto}:CIDR"),
    };
    if let Some(p) = ports.filter(|p| !p.is_empty() && *p != "*") {
        let (from, to) = p.split_once('-').unwrap_or((p, p));
        let parse = |s: &str| -> anyhow::Result<u16> {
            s.parse()
                .map_err(|_| anyhow::anyhow!("rule {text:?}: {s:?} is not a port (1-65535)"))
        };
        rule.port_from = Some(parse(from)?);
        rule.port_to = Some(parse(to)?);
    }
    if let Some(c) = cidr.filter(|c| !c.is_empty()) {
        nimbus_api::cidr::parse_source(c).map_err(|e| anyhow::anyhow!("rule {text:?}: {e}"))?;
        rule.cidr = Some(c.to_string());
    }
    Ok(rule)
}

fn group_rule(group: &str) -> SecurityRule {
    SecurityRule {
        protocol: Protocol::Any,
        group: Some(group.to_string()),
        ..Default::default()
    }
}

fn network_rows(items: &[Network]) -> String {
    table(
        &["name", "subnet", "gateway", "addresses", "age"],
        items
            .iter()
            .map(|n| {
                vec![
                    n.metadata.name.clone(),
                    n.spec.subnet.clone(),
                    opt(n.status.gateway.or(n.spec.gateway)),
                    if n.status.capacity > 0 {
                        format!("{}/{}", n.status.allocated, n.status.capacity)
                    } else {
                        "-".into()
                    },
                    age(Some(n.metadata.created_at)),
                ]
            })
            .collect(),
    )
}

pub async fn network(g: &Globals, cmd: NetworkCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    match cmd {
        NetworkCmd::Create {
            name,
            subnet,
            gateway,
            dns,
        } => {
            let req = CreateRequest {
                name,
                labels: Default::default(),
                spec: NetworkSpec {
                    subnet,
                    gateway,
                    dns,
                    dns_search: None,
                },
            };
            let n: Network = client
                .post(&format!("/v1/projects/{p}/networks"), &req)
                .await?;
            print(g, &n, || network_rows(std::slice::from_ref(&n)))
        }
        NetworkCmd::List => {
            let list: ResourceList<Network> = client
                .list_all(&format!("/v1/projects/{p}/networks"))
                .await?;
            print(g, &list, || network_rows(&list.items))
        }
        NetworkCmd::Get { name } => {
            let n: Network = client
                .get(&format!("/v1/projects/{p}/networks/{name}"))
                .await?;
            print(g, &n, || {
                let vni = n.status.vni.map(|v| v.to_string());
                format!(
                    "{}\n\nvxlan vni: {} (carries the network between hosts)",
                    network_rows(std::slice::from_ref(&n)),
                    vni.as_deref()
                        .unwrap_or("none yet (given at the next launch)")
                )
            })
        }
        NetworkCmd::Rm { name } => {
            client
                .request_bytes(
                    Method::DELETE,
                    &format!("/v1/projects/{p}/networks/{name}"),
                    None,
                )
                .await?;
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("network {name:?} deleted")
            })
        }
    }
}

fn group_detail(sg: &SecurityGroup) -> String {
    let mut out = format!(
        "security group {:?}: members accept ingress from each other",
        sg.metadata.name
    );
    if sg.spec.rules.is_empty() {
        out.push_str(" only");
    }
    for r in &sg.spec.rules {
        out.push_str(&format!("\n  allow {}", r.describe()));
    }
    out
}

pub async fn secgroup(g: &Globals, cmd: SecgroupCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    let path = |name: &str| format!("/v1/projects/{p}/secgroups/{name}");
    match cmd {
        SecgroupCmd::Create {
            name,
            allow,
            allow_from_group,
            description,
        } => {
            let mut rules = allow
                .iter()
                .map(|r| parse_rule(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            rules.extend(allow_from_group.iter().map(|g| group_rule(g)));
            let req = CreateRequest {
                name,
                labels: Default::default(),
                spec: SecurityGroupSpec { description, rules },
            };
            let sg: SecurityGroup = client
                .post(&format!("/v1/projects/{p}/secgroups"), &req)
                .await?;
            print(g, &sg, || group_detail(&sg))
        }
        SecgroupCmd::Allow {
            name,
            rules,
            from_group,
        } => {
            let mut add = rules
                .iter()
                .map(|r| parse_rule(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            add.extend(from_group.iter().map(|g| group_rule(g)));
            let mut sg: SecurityGroup = client.get(&path(&name)).await?;
            for r in add {
                if !sg.spec.rules.contains(&r) {
                    sg.spec.rules.push(r);
                }
            }
            let sg: SecurityGroup = client.put(&path(&name), &sg).await?;
            print(g, &sg, || group_detail(&sg))
        }
        SecgroupCmd::Revoke {
            name,
            rules,
            from_group,
        } => {
            let mut remove = rules
                .iter()
                .map(|r| parse_rule(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            remove.extend(from_group.iter().map(|g| group_rule(g)));
            let mut sg: SecurityGroup = client.get(&path(&name)).await?;
            let before = sg.spec.rules.len();
            sg.spec.rules.retain(|r| !remove.contains(r));
            if sg.spec.rules.len() == before {
                anyhow::bail!(
                    "security group {name:?} has none of these rules; see `nimbus secgroup get {name}`"
                );
            }
            let sg: SecurityGroup = client.put(&path(&name), &sg).await?;
            print(g, &sg, || group_detail(&sg))
        }
        SecgroupCmd::List => {
            let list: ResourceList<SecurityGroup> = client
                .list_all(&format!("/v1/projects/{p}/secgroups"))
                .await?;
            print(g, &list, || {
                table(
                    &["name", "rules", "age"],
                    list.items
                        .iter()
                        .map(|s| {
                            vec![
                                s.metadata.name.clone(),
                                s.spec.rules.len().to_string(),
                                age(Some(s.metadata.created_at)),
                            ]
                        })
                        .collect(),
                )
            })
        }
        SecgroupCmd::Get { name } => {
            let sg: SecurityGroup = client.get(&path(&name)).await?;
            print(g, &sg, || group_detail(&sg))
        }
        SecgroupCmd::Rm { name } => {
            client
                .request_bytes(Method::DELETE, &path(&name), None)
                .await?;
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("security group {name:?} deleted")
            })
        }
    }
}

/// `8080:80`, `5353:53/udp`.
pub fn parse_port(text: &str) -> anyhow::Result<(u16, u16, Protocol)> {
    let (ports, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => anyhow::bail!("port {text:?}: protocol {proto:?} is not tcp or udp"),
    };
    let (h, i) = ports.split_once(':').unwrap_or((ports, ports));
    let parse = |s: &str| -> anyhow::Result<u16> {
        s.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            anyhow::anyhow!(
                "port {text:?}: {s:?} is not a port (1-65535); write HOST:INSTANCE, e.g. 8080:80"
            )
        })
    };
    Ok((parse(h)?, parse(i)?, protocol))
}

fn address_rows(items: &[PublishedPort]) -> String {
    table(
        &[
            "name",
            "instance",
            "host port",
            "instance port",
            "protocol",
            "forwarded",
            "age",
        ],
        items
            .iter()
            .map(|a| {
                vec![
                    a.metadata.name.clone(),
                    a.spec.instance.clone(),
                    a.spec.host_port.to_string(),
                    a.spec.instance_port.to_string(),
                    a.spec.protocol.as_str().into(),
                    match (&a.status.reason, a.status.applied) {
                        (_, true) => "yes".into(),
                        (Some(why), false) => format!("no: {why}"),
                        (None, false) => "not yet".into(),
                    },
                    age(Some(a.metadata.created_at)),
                ]
            })
            .collect(),
    )
}

/// How long `address publish` waits for the host to forward the port.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Wait until the agent of the instance's host reports the port forwarded
/// (its rules are in place, so a connection now reaches the instance), or
/// says why it is not.
async fn forwarded(
    client: &nimbus_api::client::Client,
    project: &str,
    created: PublishedPort,
) -> anyhow::Result<PublishedPort> {
    use crate::cmd::wait::{self, Waited};
    let name = created.metadata.name.clone();
    let instance = created.spec.instance.clone();
    let collection = format!("/v1/projects/{project}/addresses");
    let waited = wait::until(
        client,
        &collection,
        &name,
        Some(created),
        FORWARD_TIMEOUT,
        |p: &PublishedPort| p.status.applied || p.status.reason.is_some(),
    )
    .await?;
    match waited {
        Waited::Done(p) if p.status.applied => Ok(p),
        Waited::Done(p) => anyhow::bail!(
            "published port {name:?} is recorded but host {} does not forward it: {}; remove it with `nimbus address rm {name}` and pick another host port",
            p.status.host.as_deref().unwrap_or("(unknown)"),
            p.status.reason.unwrap_or_default()
        ),
        Waited::Gone => anyhow::bail!(
            "published port {name:?} was removed while waiting for it to be forwarded (was instance {instance:?} deleted?)"
        ),
        Waited::TimedOut(_) => anyhow::bail!(
            "published port {name:?} is recorded, but the host of instance {instance:?} has not forwarded it after {} s; is the instance running (`nimbus instance get {instance}`)? Use --no-wait not to wait",
            FORWARD_TIMEOUT.as_secs()
        ),
    }
}

pub async fn address(g: &Globals, cmd: AddressCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    let p = &g.project;
    match cmd {
        AddressCmd::Publish {
            instance,
            port,
            name,
            no_wait,
        } => {
            let (host_port, instance_port, protocol) = parse_port(&port)?;
            let req = CreateRequest {
                name: name.unwrap_or_default(),
                labels: Default::default(),
                spec: PublishedPortSpec {
                    instance,
                    protocol,
                    host_port,
                    instance_port,
                },
            };
            let a: PublishedPort = client
                .post(&format!("/v1/projects/{p}/addresses"), &req)
                .await?;
            let a = if no_wait {
                a
            } else {
                forwarded(&client, p, a).await?
            };
            print(g, &a, || address_rows(std::slice::from_ref(&a)))
        }
        AddressCmd::List => {
            let list: ResourceList<PublishedPort> = client
                .list_all(&format!("/v1/projects/{p}/addresses"))
                .await?;
            print(g, &list, || address_rows(&list.items))
        }
        AddressCmd::Rm { name } => {
            client
                .request_bytes(
                    Method::DELETE,
                    &format!("/v1/projects/{p}/addresses/{name}"),
                    None,
                )
                .await?;
            print(g, &serde_json::json!({"deleted": name}), || {
                format!("published port {name:?} removed")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let r = parse_rule("tcp:22:10.0.0.0/8").unwrap();
        assert_eq!(r.port_from, Some(22));
        assert_eq!(r.cidr.as_deref(), Some("10.0.0.0/8"));
        let r = parse_rule("udp:5000-5100").unwrap();
        assert_eq!((r.port_from, r.port_to), (Some(5000), Some(5100)));
        assert_eq!(parse_rule("icmp").unwrap().protocol, Protocol::Icmp);
        assert!(parse_rule("sctp:1").is_err());
        assert!(parse_rule("tcp:http").is_err());
        assert_eq!(parse_port("8080:80").unwrap(), (8080, 80, Protocol::Tcp));
        assert_eq!(parse_port("53:53/udp").unwrap().2, Protocol::Udp);
        assert!(parse_port("0:80").is_err());
    }
}
