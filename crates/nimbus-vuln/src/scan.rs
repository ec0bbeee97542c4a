//! Matching an inventory against the index: OSV range semantics over each
//! ecosystem's version ordering.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use nimbus_api::Finding;

use crate::db::VulnIndex;
use crate::error::ScanError;
use crate::inventory::{Inventory, Package};
use crate::osv::{AffectedPackage, Event};
use crate::version::{Family, Version};

/// Where advisories for packages come from (the SQLite index, or a map in tests).
pub trait AdvisorySource {
    fn advisories(&self, ecosystem: &str, package: &str)
        -> Result<Vec<AffectedPackage>, ScanError>;
}

impl AdvisorySource for VulnIndex {
    fn advisories(
        &self,
        ecosystem: &str,
        package: &str,
    ) -> Result<Vec<AffectedPackage>, ScanError> {
        VulnIndex::advisories(self, ecosystem, package)
    }
}

/// Every advisory that affects an installed package, worst first.
pub fn match_inventory(
    inventory: &Inventory,
    source: &dyn AdvisorySource,
) -> Result<Vec<Finding>, ScanError> {
    let Some(family) = Family::of_ecosystem(&inventory.ecosystem) else {
        return Ok(Vec::new());
    };
    let ecosystems = ecosystems_to_query(&inventory.ecosystem);
    let mut findings = Vec::new();
    for package in &inventory.packages {
        findings.extend(match_package(package, family, &ecosystems, source)?);
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.package.cmp(&b.package))
            .then_with(|| a.advisory.cmp(&b.advisory))
    });
    Ok(findings)
}

/// `Debian:12` and the release-less `Debian` that some records use.
fn ecosystems_to_query(ecosystem: &str) -> Vec<String> {
    let mut list = vec![ecosystem.to_string()];
    if let Some((base, _)) = ecosystem.split_once(':') {
        list.push(base.to_string());
    }
    list
}

fn match_package(
    package: &Package,
    family: Family,
    ecosystems: &[String],
    source: &dyn AdvisorySource,
) -> Result<Vec<Finding>, ScanError> {
    // Debian advisories name the source package and its version; apk advisories the
    // origin. Both are tried, then the binary name.
    let mut candidates = Vec::new();
    if let Some(src) = &package.source {
        let version = package.source_version.as_ref().unwrap_or(&package.version);
        candidates.push((src, version));
    }
    candidates.push((&package.name, &package.version));
    let mut seen = BTreeSet::new();
    let mut findings = Vec::new();
    for (name, raw_version) in candidates {
        let Ok(version) = family.parse(raw_version) else {
            tracing::debug!(package = %package.name, version = %raw_version, "unparsable installed version skipped");
            continue;
        };
        for ecosystem in ecosystems {
            for advisory in source.advisories(ecosystem, name)? {
                let Some(fixed) = affects(&advisory, family, &version, raw_version) else {
                    continue;
                };
                if !seen.insert(advisory.advisory.clone()) {
                    continue;
                }
                findings.push(Finding {
                    package: package.name.clone(),
                    source_package: (name != &package.name).then(|| name.clone()),
                    installed_version: raw_version.clone(),
                    advisory: advisory.advisory,
                    aliases: advisory.aliases,
                    severity: advisory.severity,
                    fixed_version: fixed,
                    summary: advisory.summary,
                });
            }
        }
    }
    Ok(findings)
}

/// `Some(first fixed version above it)` when `version` is affected.
pub fn affects(
    advisory: &AffectedPackage,
    family: Family,
    version: &Version,
    raw: &str,
) -> Option<Option<String>> {
    let listed = advisory.versions.iter().any(|v| v == raw);
    let mut affected = listed;
    let mut fixed: Option<(Version, String)> = None;
    for range in &advisory.ranges {
        let (hit, range_fix) = in_range(range, family, version);
        affected |= hit;
        if let Some((v, raw_fix)) = range_fix {
            if hit
                && fixed
                    .as_ref()
                    .is_none_or(|(f, _)| v.compare(f) == Some(Ordering::Less))
            {
                fixed = Some((v, raw_fix));
            }
        }
    }
    affected.then(|| fixed.map(|(_, raw)| raw))
}

/// Whether `version` falls in the range, and the lowest fix above it. Events are
/// applied in version order, as the OSV schema's evaluation describes.
fn in_range(
    events: &[Event],
    family: Family,
    version: &Version,
) -> (bool, Option<(Version, String)>) {
    let mut parsed: Vec<(Option<Version>, &Event)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Introduced(v) if v == "0" => Some((None, e)),
            Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) => {
                family.parse(v).ok().map(|p| (Some(p), e))
            }
        })
        .collect();
    // "0" (None) sorts first.
    parsed.sort_by(|(a, _), (b, _)| match (a, b) {
        (None, None) => Ordering::Equal,
        (None, _) => Ordering::Less,
        (_, None) => Ordering::Greater,
        (Some(a), Some(b)) => a.compare(b).unwrap_or(Ordering::Equal),
    });
    let mut affected = false;
    let mut next_fix = None;
    for (at, event) in parsed {
        let order = at
            .as_ref()
            .map_or(Some(Ordering::Less), |a| a.compare(version));
        match (event, order) {
            (Event::Introduced(_), Some(Ordering::Less | Ordering::Equal)) => affected = true,
            (Event::Fixed(_), Some(Ordering::Less | Ordering::Equal)) => affected = false,
            (Event::LastAffected(_), Some(Ordering::Less)) => affected = false,
            (Event::Fixed(raw), Some(Ordering::Greater)) if affected && next_fix.is_none() => {
                next_fix = at.map(|v| (v, raw.clone()));
            }
            _ => {}
        }
    }
    (affected, next_fix.filter(|_| affected))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use nimbus_api::Severity;

    use super::*;

    struct Map(HashMap<(String, String), Vec<AffectedPackage>>);

    impl AdvisorySource for Map {
        fn advisories(&self, e: &str, p: &str) -> Result<Vec<AffectedPackage>, ScanError> {
            Ok(self
                .0
                .get(&(e.to_string(), p.to_string()))
                .cloned()
                .unwrap_or_default())
        }
    }

    fn advisory(
        id: &str,
        eco: &str,
        pkg: &str,
        ranges: Vec<Vec<Event>>,
        versions: &[&str],
    ) -> AffectedPackage {
        AffectedPackage {
            advisory: id.into(),
            aliases: vec![],
            summary: String::new(),
            ecosystem: eco.into(),
            package: pkg.into(),
            severity: Severity::High,
            ranges,
            versions: versions.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn check(family: Family, a: &AffectedPackage, v: &str) -> Option<Option<String>> {
        affects(a, family, &family.parse(v).expect("version"), v)
    }

    #[test]
    fn introduced_fixed_and_last_affected_bound_the_range() {
        use Event::*;
        let a = advisory(
            "X",
            "Debian:12",
            "openssl",
            vec![vec![
                Introduced("0".into()),
                Fixed("3.0.11-1~deb12u2".into()),
            ]],
            &[],
        );
        let d = Family::Debian;
        assert_eq!(
            check(d, &a, "3.0.11-1~deb12u1"),
            Some(Some("3.0.11-1~deb12u2".into()))
        );
        assert_eq!(
            check(d, &a, "3.0.11-1~deb12u2"),
            None,
            "the fixed version is not affected"
        );
        assert_eq!(check(d, &a, "3.0.13-1~deb12u1"), None);
        let b = advisory(
            "Y",
            "Alpine:v3.19",
            "busybox",
            vec![vec![
                Introduced("1.30.0-r0".into()),
                LastAffected("1.36.1-r15".into()),
            ]],
            &[],
        );
        let al = Family::Alpine;
        assert_eq!(
            check(al, &b, "1.36.1-r15"),
            Some(None),
            "last_affected is included, no fix"
        );
        assert_eq!(check(al, &b, "1.36.1-r16"), None);
        assert_eq!(check(al, &b, "1.29.9-r0"), None, "before introduced");
        let r = advisory(
            "ALSA-2024:1",
            "AlmaLinux:9",
            "openssl",
            vec![vec![
                Introduced("0".into()),
                Fixed("1:3.0.7-25.el9_3".into()),
            ]],
            &[],
        );
        let rpm = Family::Rpm;
        assert_eq!(
            check(rpm, &r, "1:3.0.7-24.el9"),
            Some(Some("1:3.0.7-25.el9_3".into()))
        );
        assert_eq!(check(rpm, &r, "1:3.0.7-25.el9_3"), None);
        assert_eq!(
            check(rpm, &r, "3.0.8-1.el9"),
            Some(Some("1:3.0.7-25.el9_3".into())),
            "epoch 0 is older"
        );
        let c = advisory("Z", "Alpine:v3.19", "musl", vec![], &["1.2.4-r1"]);
        assert_eq!(check(al, &c, "1.2.4-r1"), Some(None), "listed in versions");
        assert_eq!(check(al, &c, "1.2.4-r2"), None);
    }

    #[test]
    fn debian_advisories_match_through_the_source_package() {
        use Event::*;
        let mut map = HashMap::new();
        map.insert(
            ("Debian:12".to_string(), "openssl".to_string()),
            vec![advisory(
                "DSA-1",
                "Debian:12",
                "openssl",
                vec![vec![
                    Introduced("0".into()),
                    Fixed("3.0.11-1~deb12u2".into()),
                ]],
                &[],
            )],
        );
        let inventory = Inventory {
            ecosystem: "Debian:12".into(),
            databases: vec!["dpkg".into()],
            packages: vec![Package {
                name: "libssl3".into(),
                version: "3.0.11-1~deb12u1".into(),
                source: Some("openssl".into()),
                source_version: None,
            }],
        };
        let findings = match_inventory(&inventory, &Map(map)).expect("scan");
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].package, "libssl3");
        assert_eq!(findings[0].source_package.as_deref(), Some("openssl"));
        assert_eq!(
            findings[0].fixed_version.as_deref(),
            Some("3.0.11-1~deb12u2")
        );
    }
}
