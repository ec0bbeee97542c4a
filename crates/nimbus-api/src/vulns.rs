//! Vulnerability scanning: the loaded OSV database, scan results per image
//! digest, and the project's launch policy.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::meta::Metadata;
use crate::resources::{object, Object};

/// How bad a finding is, from the advisory's CVSS v3 base score or its
/// database's own rating. Ordered: `unknown` < `low` < ... < `critical`.
#[derive(
    Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The advisory rates nothing.
    #[default]
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Unknown,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown severity {s:?}: use unknown, low, medium, high or critical")
            })
    }
}

/// The name the cluster-wide vulnerability database record is stored under.
pub const VULNDB_NAME: &str = "osv";

/// What `nimbus vulndb import` loaded; one record for the cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VulnDbStatus {
    /// `sha256:` of the imported zip; every server's index must carry it.
    pub digest: String,
    /// OSV records in the zip.
    pub records: u64,
    /// Package entries indexed for matching, per ecosystem (`Debian:12`).
    pub ecosystems: std::collections::BTreeMap<String, u64>,
    /// Records whose ecosystems Nimbus does not match (kept out of the index).
    pub skipped_records: u64,
    pub imported_at: Option<DateTime<Utc>>,
    /// The server (`--server-name`) that imported it.
    #[serde(default)]
    pub imported_on: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VulnDb {
    pub metadata: Metadata,
    pub status: VulnDbStatus,
}

/// `GET /v1/vulndb`: the cluster's database and whether the answering
/// server holds its index.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VulnDbInfo {
    /// Absent when nothing was imported.
    pub database: Option<VulnDbStatus>,
    /// Digest of the index on the server that answered (empty: none).
    pub this_server_digest: String,
}

/// One advisory matching one installed package.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Finding {
    /// Binary package name as installed.
    pub package: String,
    /// Source package the advisory names, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_package: Option<String>,
    pub installed_version: String,
    /// OSV id, e.g. `DSA-5678-1` or `CVE-2024-1234`.
    pub advisory: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub severity: Severity,
    /// The first version that fixes it; absent when no fix exists yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_version: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageScanStatus {
    /// Manifest digest of the scanned image.
    pub image_digest: String,
    /// OSV ecosystem of the image's distribution (`Debian:12`, `Alpine:v3.19`),
    /// empty when `/etc/os-release` names none Nimbus knows.
    pub ecosystem: String,
    /// Package databases read (`dpkg`, `apk`).
    pub package_databases: Vec<String>,
    pub packages: u64,
    pub findings: Vec<Finding>,
    /// Findings per severity.
    pub counts: std::collections::BTreeMap<String, u64>,
    pub worst: Option<Severity>,
    /// The vulnerability database digest it was matched against.
    pub vulndb_digest: String,
    pub scanned_at: Option<DateTime<Utc>>,
}

/// What `GET /v1/projects/{project}/images/{name}` shows of the last scan of
/// the image's digest: the counts without the findings (those are in
/// `GET .../images/{name}/scan`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ScanSummary {
    /// OSV ecosystem of the image's distribution; empty when unknown.
    pub ecosystem: String,
    /// Package databases read (`dpkg`, `apk`, `rpm`).
    pub package_databases: Vec<String>,
    pub packages: u64,
    /// How many findings in all.
    pub findings: u64,
    /// Findings per severity.
    pub counts: std::collections::BTreeMap<String, u64>,
    pub worst: Option<Severity>,
    /// The vulnerability database digest it was matched against.
    pub vulndb_digest: String,
    pub scanned_at: Option<DateTime<Utc>>,
}

impl From<&ImageScanStatus> for ScanSummary {
    fn from(s: &ImageScanStatus) -> Self {
        ScanSummary {
            ecosystem: s.ecosystem.clone(),
            package_databases: s.package_databases.clone(),
            packages: s.packages,
            findings: s.findings.len() as u64,
            counts: s.counts.clone(),
            worst: s.worst,
            vulndb_digest: s.vulndb_digest.clone(),
            scanned_at: s.scanned_at,
        }
    }
}

/// The result of scanning an image digest in one project; named
/// `sha256-<hex>` after the digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ImageScan {
    pub metadata: Metadata,
    pub status: ImageScanStatus,
}

impl ImageScan {
    /// The record name for a `sha256:<hex>` digest.
    pub fn name_for(digest: &str) -> String {
        digest.replacen(':', "-", 1)
    }
}

object!(VulnDb, "vulndbs", "vulnerability database", false);
object!(ImageScan, "imagescans", "image scan", true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_and_parse() {
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::Low > Severity::Unknown);
        assert_eq!("HIGH".parse::<Severity>(), Ok(Severity::High));
        assert!("severe".parse::<Severity>().is_err());
    }
}
