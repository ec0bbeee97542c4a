//! OSV records (the schema at ossf.github.io/osv-schema): parsed, validated, and
//! reduced to what matching needs. Only the fields Nimbus uses are read; unknown
//! fields are allowed, as the schema says.

use nimbus_api::Severity;
use serde::Deserialize;

use crate::version::Family;

/// Most affected entries, ranges per entry and events per range accepted in one
/// record: real records have a handful; more is hostile.
const MAX_AFFECTED: usize = 10_000;
const MAX_EVENTS: usize = 1_000;

#[derive(Debug, Deserialize)]
struct Record {
    id: String,
    modified: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    severity: Vec<SeverityEntry>,
    #[serde(default)]
    affected: Vec<Affected>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct SeverityEntry {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Debug, Deserialize)]
struct Affected {
    package: Option<Package>,
    #[serde(default)]
    ranges: Vec<Range>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    severity: Vec<SeverityEntry>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Package {
    ecosystem: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Range {
    #[serde(rename = "type")]
    kind: String,
    events: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One range event, in the order the record lists them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
}

/// One affected package of one advisory, ready to index.
#[derive(Clone, Debug, PartialEq, serde::Serialize, Deserialize)]
pub struct AffectedPackage {
    pub advisory: String,
    pub aliases: Vec<String>,
    pub summary: String,
    pub ecosystem: String,
    pub package: String,
    pub severity: Severity,
    /// ECOSYSTEM ranges only: each a list of events.
    pub ranges: Vec<Vec<Event>>,
    pub versions: Vec<String>,
}

/// A record that parsed, reduced to the packages Nimbus can match.
#[derive(Debug)]
pub struct ParsedRecord {
    pub id: String,
    pub packages: Vec<AffectedPackage>,
    /// Whether some affected entry names an ecosystem Nimbus does not match.
    pub has_other_ecosystems: bool,
}

/// Parses and validates one OSV JSON record; the error says what is wrong.
pub fn parse_record(json: &[u8]) -> Result<ParsedRecord, String> {
    let record: Record =
        serde_json::from_slice(json).map_err(|e| format!("not an OSV record: {e}"))?;
    if record.id.trim().is_empty() || record.id.len() > 256 {
        return Err("the record's \"id\" is empty or longer than 256 characters".into());
    }
    if chrono::DateTime::parse_from_rfc3339(&record.modified).is_err() {
        return Err(format!(
            "record {}: \"modified\" {:?} is not an RFC 3339 time",
            record.id, record.modified
        ));
    }
    if record.affected.len() > MAX_AFFECTED {
        return Err(format!(
            "record {}: more than {MAX_AFFECTED} affected entries",
            record.id
        ));
    }
    let record_severity = severity_of(&record.severity, record.database_specific.as_ref());
    let mut packages = Vec::new();
    let mut has_other_ecosystems = false;
    for (i, affected) in record.affected.iter().enumerate() {
        let what = format!("record {} affected[{i}]", record.id);
        let Some(package) = &affected.package else {
            continue;
        };
        if package.name.is_empty() || package.ecosystem.is_empty() {
            return Err(format!("{what}: the package has no name or ecosystem"));
        }
        let ranges = affected
            .ranges
            .iter()
            .map(|r| parse_range(r, &what))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(family) = Family::of_ecosystem(&package.ecosystem) else {
            has_other_ecosystems = true;
            continue;
        };
        let ranges: Vec<Vec<Event>> = ranges.into_iter().flatten().collect();
        check_versions(family, &ranges, &affected.versions, &what)?;
        let own = severity_of(&affected.severity, affected.database_specific.as_ref());
        packages.push(AffectedPackage {
            advisory: record.id.clone(),
            aliases: record.aliases.clone(),
            summary: record.summary.clone().unwrap_or_default(),
            ecosystem: package.ecosystem.clone(),
            package: package.name.clone(),
            severity: own.max(record_severity),
            ranges,
            versions: affected.versions.clone(),
        });
    }
    Ok(ParsedRecord {
        id: record.id,
        packages,
        has_other_ecosystems,
    })
}

/// The events of an ECOSYSTEM range; `None` for other range types (SEMVER, GIT).
fn parse_range(range: &Range, what: &str) -> Result<Option<Vec<Event>>, String> {
    if range.events.len() > MAX_EVENTS || range.events.is_empty() {
        return Err(format!("{what}: a range needs 1 to {MAX_EVENTS} events"));
    }
    let mut events = Vec::with_capacity(range.events.len());
    for event in &range.events {
        let (key, value) = match (event.len(), event.iter().next()) {
            (1, Some((k, serde_json::Value::String(v)))) => (k.as_str(), v.clone()),
            _ => {
                return Err(format!(
                    "{what}: an event must hold exactly one of introduced, fixed, last_affected or limit, as a string"
                ))
            }
        };
        match key {
            "introduced" => events.push(Event::Introduced(value)),
            "fixed" => events.push(Event::Fixed(value)),
            "last_affected" => events.push(Event::LastAffected(value)),
            "limit" => {}
            other => return Err(format!("{what}: unknown range event {other:?}")),
        }
    }
    Ok((range.kind == "ECOSYSTEM").then_some(events))
}

/// Every version named must parse in the ecosystem's ordering ("0" means "any").
fn check_versions(
    family: Family,
    ranges: &[Vec<Event>],
    versions: &[String],
    what: &str,
) -> Result<(), String> {
    let named = ranges.iter().flatten().filter_map(|e| match e {
        Event::Introduced(v) if v == "0" => None,
        Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) => Some(v),
    });
    for version in named.chain(versions) {
        family.parse(version).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// The worst of the CVSS v3 vectors given, else the database's own rating.
fn severity_of(entries: &[SeverityEntry], database: Option<&serde_json::Value>) -> Severity {
    let scored = entries
        .iter()
        .filter(|e| e.kind == "CVSS_V3")
        .filter_map(|e| e.score.parse::<cvss::v3::Vector>().ok())
        .map(|base| from_score(base.score().value()))
        .max();
    scored.unwrap_or_else(|| {
        database
            .and_then(|d| d.get("severity"))
            .and_then(|s| s.as_str())
            .map(from_label)
            .unwrap_or_default()
    })
}

/// CVSS v3 qualitative rating bands.
fn from_score(score: f64) -> Severity {
    match score {
        s if s >= 9.0 => Severity::Critical,
        s if s >= 7.0 => Severity::High,
        s if s >= 4.0 => Severity::Medium,
        _ => Severity::Low,
    }
}

/// A database's label (`HIGH`, `Moderate`, `important`) on the same scale.
fn from_label(label: &str) -> Severity {
    match label.to_ascii_lowercase().as_str() {
        "critical" => Severity::Critical,
        "high" | "important" => Severity::High,
        "medium" | "moderate" => Severity::Medium,
        "low" | "negligible" | "unimportant" => Severity::Low,
        _ => Severity::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_record_is_reduced_to_its_ranges_and_severity() {
        let json = br#"{
          "id": "DEBIAN-CVE-2024-0001", "modified": "2024-05-01T00:00:00Z",
          "aliases": ["CVE-2024-0001"],
          "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
          "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}]},
            {"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}]
        }"#;
        let parsed = parse_record(json).expect("parses");
        assert_eq!(parsed.packages.len(), 1);
        assert!(parsed.has_other_ecosystems);
        let p = &parsed.packages[0];
        assert_eq!(p.severity, Severity::Critical, "9.8 is critical");
        assert_eq!(
            p.ranges,
            vec![vec![
                Event::Introduced("0".into()),
                Event::Fixed("3.0.11-1~deb12u2".into())
            ]]
        );
    }

    #[test]
    fn database_labels_rate_records_without_cvss() {
        let json = br#"{"id": "ALPINE-1", "modified": "2024-05-01T00:00:00Z",
          "database_specific": {"severity": "Moderate"},
          "affected": [{"package": {"ecosystem": "Alpine:v3.19", "name": "busybox"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.36.1-r16"}]}]}]}"#;
        let parsed = parse_record(json).expect("parses");
        assert_eq!(parsed.packages[0].severity, Severity::Medium);
    }

    #[test]
    fn malformed_records_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 5] = [
            (b"[1, 2]", "not an OSV record"),
            (br#"{"id": "X-1"}"#, "modified"),
            (br#"{"id": "X-1", "modified": "yesterday"}"#, "RFC 3339"),
            (
                br#"{"id": "X-1", "modified": "2024-01-01T00:00:00Z", "affected": [{"package": {"ecosystem": "Debian:12", "name": "a"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0", "fixed": "1"}]}]}]}"#,
                "exactly one",
            ),
            (
                br#"{"id": "X-1", "modified": "2024-01-01T00:00:00Z", "affected": [{"package": {"ecosystem": "Alpine:v3.19", "name": "a"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "not a version!"}]}]}]}"#,
                "not an Alpine package version",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_record(json).expect_err("refused");
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}
