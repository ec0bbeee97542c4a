//! apk's database: `/lib/apk/db/installed`, one paragraph of `X:value` lines per package.

use super::Package;

pub(super) const INSTALLED: &str = "/lib/apk/db/installed";

pub(super) fn parse(installed: &str) -> Vec<Package> {
    installed
        .split("\n\n")
        .filter_map(|paragraph| {
            let field = |key: &str| {
                paragraph
                    .lines()
                    .find_map(|line| line.strip_prefix(key).map(str::to_string))
            };
            let name = field("P:")?;
            let version = field("V:")?;
            Some(Package {
                source: field("o:").filter(|o| *o != name),
                source_version: None,
                name,
                version,
            })
        })
        .collect()
}
