//! Security groups: what a group's rules must satisfy.

use std::collections::BTreeSet;

use nimbus_api::{validate_name, Protocol, SecurityGroupSpec};

/// Rules per group at most: one nftables transaction applies them all.
pub const MAX_RULES: usize = 5000;

/// A security group request the API refuses as invalid (422). `rule` is
/// the rule as the user wrote it: `rule 2 (tcp:80)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecgroupError {
    #[error("{0}")]
    Name(String),
    #[error("the body names security group {body:?} but the path names {path:?}; groups cannot be renamed")]
    Renamed { body: String, path: String },
    #[error("security group {name:?} has {count} rules; at most {max} are allowed", max = MAX_RULES)]
    TooManyRules { name: String, count: usize },
    #[error("{rule}: ports apply to tcp and udp only; drop the port or use tcp/udp")]
    PortsNeedTcpOrUdp { rule: String },
    #[error("{rule}: port range {from}-{to} is empty; write the lower port first (1-65535)")]
    EmptyRange { rule: String, from: u16, to: u16 },
    #[error("{rule}: a last port needs a first port")]
    LastPortWithoutFirst { rule: String },
    #[error("{rule}: port 0 is not a port; use 1-65535")]
    PortZero { rule: String },
    #[error("{rule}: give a source CIDR or a source group, not both; split it into two rules")]
    CidrAndGroup { rule: String },
    #[error("{rule}: {reason}")]
    Cidr { rule: String, reason: String },
    #[error("{rule}: security group {group:?} not found in project {project:?}; create it first")]
    GroupNotFound {
        rule: String,
        group: String,
        project: String,
    },
}

/// A new group's name.
pub fn validate_group_name(name: &str) -> Result<(), SecgroupError> {
    validate_name("security group", name).map_err(SecgroupError::Name)
}

/// A replace body must name the group of its path.
pub fn check_same_name(path_name: &str, body_name: &str) -> Result<(), SecgroupError> {
    if body_name != path_name {
        return Err(SecgroupError::Renamed {
            body: body_name.to_string(),
            path: path_name.to_string(),
        });
    }
    Ok(())
}

/// The other groups a spec's rules name as sources: what the handler looks
/// up before validating. Empty for a spec with too many rules, which is
/// refused before any lookup.
pub fn referenced_groups(name: &str, spec: &SecurityGroupSpec) -> BTreeSet<String> {
    if spec.rules.len() > MAX_RULES {
        return BTreeSet::new();
    }
    spec.rules
        .iter()
        .filter_map(|r| r.group.clone())
        .filter(|g| g != name)
        .collect()
}

/// Check group `name`'s rules; `existing` holds which of the groups they
/// name exist in the project (a group may name itself).
pub fn validate_spec(
    project: &str,
    name: &str,
    spec: &SecurityGroupSpec,
    existing: &BTreeSet<String>,
) -> Result<(), SecgroupError> {
    if spec.rules.len() > MAX_RULES {
        return Err(SecgroupError::TooManyRules {
            name: name.to_string(),
            count: spec.rules.len(),
        });
    }
    for (n, r) in spec.rules.iter().enumerate() {
        let rule = format!("rule {} ({})", n + 1, r.describe());
        let ports = r.port_from.is_some() || r.port_to.is_some();
        if ports && !matches!(r.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(SecgroupError::PortsNeedTcpOrUdp { rule });
        }
        if let (Some(from), Some(to)) = (r.port_from, r.port_to) {
            if from > to || from == 0 {
                return Err(SecgroupError::EmptyRange { rule, from, to });
            }
        }
        if r.port_to.is_some() && r.port_from.is_none() {
            return Err(SecgroupError::LastPortWithoutFirst { rule });
        }
        if r.port_from == Some(0) {
            return Err(SecgroupError::PortZero { rule });
        }
        if r.cidr.is_some() && r.group.is_some() {
            return Err(SecgroupError::CidrAndGroup { rule });
        }
        if let Some(c) = &r.cidr {
            if let Err(reason) = nimbus_api::cidr::parse_source(c) {
                return Err(SecgroupError::Cidr { rule, reason });
            }
        }
        if let Some(g) = &r.group {
            if g != name && !existing.contains(g) {
                return Err(SecgroupError::GroupNotFound {
                    rule,
                    group: g.clone(),
                    project: project.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nimbus_api::SecurityRule;

    use super::*;

    fn tcp(from: Option<u16>, to: Option<u16>) -> SecurityRule {
        SecurityRule {
            protocol: Protocol::Tcp,
            port_from: from,
            port_to: to,
            cidr: None,
            group: None,
        }
    }

    fn check(rules: Vec<SecurityRule>) -> Result<(), SecgroupError> {
        let existing: BTreeSet<String> = ["db".to_string()].into();
        validate_spec(
            "ops",
            "web",
            &SecurityGroupSpec {
                rules,
                ..Default::default()
            },
            &existing,
        )
    }

    fn refused(rules: Vec<SecurityRule>) -> String {
        check(rules).expect_err("refused").to_string()
    }

    #[test]
    fn good_rules_are_accepted() {
        let from_db = SecurityRule {
            group: Some("db".into()),
            ..tcp(Some(5432), None)
        };
        let from_self = SecurityRule {
            group: Some("web".into()),
            ..tcp(None, None)
        };
        let from_lan = SecurityRule {
            cidr: Some("10.0.0.0/8".into()),
            ..tcp(Some(8000), Some(8080))
        };
        let icmp = SecurityRule {
            protocol: Protocol::Icmp,
            ..tcp(None, None)
        };
        assert_eq!(check(vec![from_db, from_self, from_lan, icmp]), Ok(()));
    }

    #[test]
    fn ports_are_for_tcp_and_udp_and_ranges_run_upwards_from_1() {
        let icmp_port = SecurityRule {
            protocol: Protocol::Icmp,
            ..tcp(Some(80), None)
        };
        assert!(refused(vec![icmp_port]).contains("ports apply to tcp and udp only"));
        assert_eq!(
            refused(vec![tcp(Some(90), Some(80))]),
            "rule 1 (tcp:90-80): port range 90-80 is empty; write the lower port first (1-65535)"
        );
        assert!(refused(vec![tcp(Some(0), Some(80))]).contains("port range 0-80 is empty"));
        assert!(refused(vec![tcp(None, Some(80))]).ends_with("a last port needs a first port"));
        assert!(refused(vec![tcp(Some(0), None)]).ends_with("port 0 is not a port; use 1-65535"));
        // The rule number counts from 1.
        assert!(refused(vec![tcp(Some(22), None), tcp(Some(0), None)]).starts_with("rule 2 "));
    }

    #[test]
    fn sources_are_one_valid_cidr_or_one_existing_group() {
        let both = SecurityRule {
            cidr: Some("10.0.0.0/8".into()),
            group: Some("db".into()),
            ..tcp(None, None)
        };
        assert!(refused(vec![both]).contains("not both"));
        let bad_cidr = SecurityRule {
            cidr: Some("10.0.0.0/33".into()),
            ..tcp(None, None)
        };
        assert!(matches!(
            check(vec![bad_cidr]),
            Err(SecgroupError::Cidr { .. })
        ));
        let missing = SecurityRule {
            group: Some("cache".into()),
            ..tcp(None, None)
        };
        assert!(refused(vec![missing])
            .ends_with("security group \"cache\" not found in project \"ops\"; create it first"));
    }

    #[test]
    fn at_most_max_rules_and_no_lookups_past_it() {
        let many = vec![tcp(Some(80), None); MAX_RULES + 1];
        assert_eq!(
            refused(many.clone()),
            format!(
                "security group \"web\" has {} rules; at most 5000 are allowed",
                MAX_RULES + 1
            )
        );
        let spec = SecurityGroupSpec {
            rules: many,
            ..Default::default()
        };
        assert!(referenced_groups("web", &spec).is_empty());
        let spec = SecurityGroupSpec {
            rules: vec![
                SecurityRule {
                    group: Some("db".into()),
                    ..tcp(None, None)
                },
                SecurityRule {
                    group: Some("web".into()),
                    ..tcp(None, None)
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            referenced_groups("web", &spec),
            ["db".to_string()].into_iter().collect()
        );
    }

    #[test]
    fn names() {
        assert_eq!(validate_group_name("web-sg"), Ok(()));
        assert!(validate_group_name("Web SG")
            .expect_err("name")
            .to_string()
            .contains("security group name \"Web SG\" is invalid"));
        assert_eq!(check_same_name("web", "web"), Ok(()));
        assert!(check_same_name("web", "db")
            .expect_err("rename")
            .to_string()
            .contains("groups cannot be renamed"));
    }
}
