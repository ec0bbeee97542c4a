//! `nimbus vulndb ...`, `nimbus policy ...` and the scan table of
//! `nimbus image scan`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use nimbus_api::{ImageScan, ScanSummary, Severity, VulnDbInfo, VulnDbStatus};
use tokio_util::io::ReaderStream;

use crate::ctx::Globals;
use crate::output::{age, opt, print, table};

#[derive(Subcommand)]
pub enum VulnDbCmd {
    /// Import an OSV export (a zip of OSV JSON records); system administrators only.
    #[command(
        after_help = "Examples:\n  nimbus vulndb import ./debian-all.zip     # <ecosystem>/all.zip from the OSV data exports\nThe whole archive is validated first; on any error nothing changes."
    )]
    Import { file: PathBuf },
    /// Show the loaded database: records, ecosystems, when it was imported.
    Get,
}

pub async fn vulndb(g: &Globals, cmd: VulnDbCmd) -> anyhow::Result<()> {
    let client = g.client()?;
    match cmd {
        VulnDbCmd::Import { file } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let status: VulnDbStatus = client.upload("/v1/vulndb", ReaderStream::new(f)).await?;
            print(g, &status, || {
                format!(
                    "vulnerability database imported: {} records, {} package entries in {} ecosystem(s), {}",
                    status.records,
                    status.ecosystems.values().sum::<u64>(),
                    status.ecosystems.len(),
                    status.digest
                )
            })
        }
        VulnDbCmd::Get => {
            let info: VulnDbInfo = client.get("/v1/vulndb").await?;
            print(g, &info, || vulndb_text(&info))
        }
    }
}

fn vulndb_text(info: &VulnDbInfo) -> String {
    let Some(db) = &info.database else {
        return "no vulnerability database is loaded; import one with `nimbus vulndb import FILE.zip`".into();
    };
    let ecosystems = table(
        &["ecosystem", "package entries"],
        db.ecosystems
            .iter()
            .map(|(e, n)| vec![e.clone(), n.to_string()])
            .collect(),
    );
    let here = if info.this_server_digest == db.digest {
        "this server holds its index".to_string()
    } else {
        "this server LACKS its index: scans here are refused until it is imported here too"
            .to_string()
    };
    format!(
        "records: {} ({} outside the ecosystems Nimbus matches)\ndigest: {}\nimported: {} ago\n{here}\n{ecosystems}",
        db.records,
        db.skipped_records,
        db.digest,
        age(db.imported_at)
    )
}

/// The findings table of `nimbus image scan`.
pub fn scan_text(scan: &ImageScan) -> String {
    let s = &scan.status;
    let findings = table(
        &["package", "installed", "advisory", "severity", "fixed in"],
        s.findings
            .iter()
            .map(|f| {
                vec![
                    f.package.clone(),
                    f.installed_version.clone(),
                    f.advisory.clone(),
                    f.severity.to_string(),
                    opt(f.fixed_version.clone()),
                ]
            })
            .collect(),
    );
    let mut text = scan_summary(&s.into());
    if !s.findings.is_empty() {
        text.push('\n');
        text.push_str(&findings);
    }
    text
}

/// One line: what was read and how many findings of each severity.
pub fn scan_summary(s: &ScanSummary) -> String {
    let ecosystem = if s.ecosystem.is_empty() {
        "an unknown distribution".to_string()
    } else {
        s.ecosystem.clone()
    };
    let counts = if s.findings == 0 {
        "no known vulnerabilities".to_string()
    } else {
        Severity::ALL
            .iter()
            .rev()
            .filter_map(|sev| s.counts.get(sev.as_str()).map(|n| format!("{n} {sev}")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "vulnerabilities: {counts} ({} packages from {} on {ecosystem}, scanned {} ago)",
        s.packages,
        if s.package_databases.is_empty() {
            "no package database".to_string()
        } else {
            s.package_databases.join("+")
        },
        age(s.scanned_at)
    )
}
