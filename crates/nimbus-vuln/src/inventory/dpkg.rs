//! dpkg's database: `/var/lib/dpkg/status` and, in distroless images, one file per
//! package under `/var/lib/dpkg/status.d/`.

use super::{ImageFiles, Package, MAX_DATABASE_BYTES, MAX_SMALL_FILE_BYTES, MAX_STATUS_D_FILES};
use crate::error::ScanError;

const STATUS: &str = "/var/lib/dpkg/status";
const STATUS_D: &str = "/var/lib/dpkg/status.d";

/// The installed packages, or `None` when the image has no dpkg database.
pub(super) fn read(files: &dyn ImageFiles) -> Result<Option<Vec<Package>>, ScanError> {
    let mut found = false;
    let mut packages = Vec::new();
    if let Some(status) = super::read(files, STATUS, MAX_DATABASE_BYTES)? {
        found = true;
        packages.extend(parse(&String::from_utf8_lossy(&status)));
    }
    let names = files
        .list_dir(STATUS_D, MAX_STATUS_D_FILES)
        .map_err(ScanError::Image)?;
    for name in names {
        // Distroless keeps `<pkg>.md5sums` beside each `<pkg>` paragraph.
        if name.ends_with(".md5sums") {
            continue;
        }
        let path = format!("{STATUS_D}/{name}");
        if let Some(content) = super::read(files, &path, MAX_SMALL_FILE_BYTES)? {
            found = true;
            packages.extend(parse(&String::from_utf8_lossy(&content)));
        }
    }
    Ok(found.then_some(packages))
}

/// Installed packages of a status file: paragraphs of `Field: value` lines.
pub(super) fn parse(status: &str) -> Vec<Package> {
    status
        .split("\n\n")
        .filter_map(|paragraph| {
            let field = |key: &str| {
                paragraph.lines().find_map(|line| {
                    let (k, v) = line.split_once(':')?;
                    (k == key).then(|| v.trim().to_string())
                })
            };
            // status.d files carry no Status: they list installed packages only.
            if let Some(status) = field("Status") {
                if status.split_whitespace().nth(2) != Some("installed") {
                    return None;
                }
            }
            let name = field("Package")?;
            let version = field("Version")?;
            let (source, source_version) = match field("Source") {
                Some(source) => split_source(&source),
                None => (None, None),
            };
            Some(Package {
                source: source.filter(|s| *s != name),
                source_version: source_version.filter(|v| *v != version),
                name,
                version,
            })
        })
        .collect()
}

/// `openssl (3.0.11-1)` → (openssl, 3.0.11-1).
fn split_source(source: &str) -> (Option<String>, Option<String>) {
    match source.split_once(' ') {
        Some((name, rest)) => {
            let version = rest.trim().trim_start_matches('(').trim_end_matches(')');
            (Some(name.to_string()), Some(version.to_string()))
        }
        None => (Some(source.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binnmu_keeps_its_source_version() {
        let p = parse("Package: libfoo1\nStatus: install ok installed\nSource: foo (1.0-1)\nVersion: 1.0-1+b1\n");
        assert_eq!(p[0].source.as_deref(), Some("foo"));
        assert_eq!(p[0].source_version.as_deref(), Some("1.0-1"));
    }
}
