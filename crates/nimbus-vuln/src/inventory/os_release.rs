//! `/etc/os-release` to an OSV ecosystem name.

/// `Debian:12`, `Alpine:v3.19`, or empty for a distribution Nimbus does not match.
pub fn ecosystem_of(os_release: &str) -> String {
    let field = |key: &str| {
        os_release.lines().find_map(|line| {
            let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            Some(
                value
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_string(),
            )
        })
    };
    let version = field("VERSION_ID").unwrap_or_default();
    match field("ID").as_deref() {
        Some("debian") => with_major("Debian", &version),
        Some("almalinux") => with_major("AlmaLinux", &version),
        Some("rocky") => with_major("Rocky Linux", &version),
        Some("alpine") => {
            let mut parts = version.split('.');
            match (parts.next(), parts.next()) {
                (Some(major), Some(minor)) => format!("Alpine:v{major}.{minor}"),
                _ => "Alpine".into(),
            }
        }
        _ => String::new(),
    }
}

/// `AlmaLinux:9` from `9.3`.
fn with_major(name: &str, version: &str) -> String {
    match version.split('.').next() {
        Some(major) if !major.is_empty() => format!("{name}:{major}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::ecosystem_of;

    #[test]
    fn releases_name_their_osv_ecosystem() {
        assert_eq!(ecosystem_of("ID=debian\nVERSION_ID=\"11\""), "Debian:11");
        assert_eq!(
            ecosystem_of("ID=debian\n"),
            "Debian",
            "sid has no VERSION_ID"
        );
        assert_eq!(
            ecosystem_of("ID=alpine\nVERSION_ID=3.20.0_alpha1"),
            "Alpine:v3.20"
        );
        assert_eq!(
            ecosystem_of("ID=\"rocky\"\nVERSION_ID=\"9.3\""),
            "Rocky Linux:9"
        );
        assert_eq!(ecosystem_of("ID=fedora\nVERSION_ID=40"), "");
    }
}
