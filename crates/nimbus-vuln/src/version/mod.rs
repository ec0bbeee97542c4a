//! Version ordering per ecosystem: Debian through the `debversion` crate (dpkg's
//! rules), Alpine and rpm through our own implementations of apk's and rpm's rules
//! (no maintained crate implements them).

mod apk;
mod rpm;

use std::cmp::Ordering;

pub use apk::ApkVersion;
pub use rpm::RpmVersion;

/// The distribution families Nimbus matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Debian,
    Alpine,
    /// AlmaLinux and Rocky Linux (rpm `epoch:version-release`).
    Rpm,
}

impl Family {
    /// The family of an OSV ecosystem string (`Debian:12`, `Alpine:v3.19`, `Debian`).
    pub fn of_ecosystem(ecosystem: &str) -> Option<Family> {
        let base = ecosystem.split(':').next().unwrap_or_default();
        match base {
            "Debian" => Some(Family::Debian),
            "Alpine" => Some(Family::Alpine),
            "AlmaLinux" | "Rocky Linux" => Some(Family::Rpm),
            _ => None,
        }
    }

    /// Whether `version` is valid in this family.
    pub fn parse(self, version: &str) -> Result<Version, String> {
        match self {
            Family::Debian => version
                .parse::<debversion::Version>()
                .map(Version::Debian)
                .map_err(|e| format!("{version:?} is not a Debian version: {e}")),
            Family::Alpine => ApkVersion::parse(version)
                .map(Version::Apk)
                .ok_or_else(|| format!("{version:?} is not an Alpine package version")),
            Family::Rpm => RpmVersion::parse(version)
                .map(Version::Rpm)
                .ok_or_else(|| format!("{version:?} is not an rpm version")),
        }
    }
}

/// A parsed version of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Debian(debversion::Version),
    Apk(ApkVersion),
    Rpm(RpmVersion),
}

impl Version {
    /// Ordering within one family; versions of different families never compare.
    pub fn compare(&self, other: &Version) -> Option<Ordering> {
        match (self, other) {
            (Version::Debian(a), Version::Debian(b)) => Some(a.cmp(b)),
            (Version::Apk(a), Version::Apk(b)) => Some(a.cmp(b)),
            (Version::Rpm(a), Version::Rpm(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(family: Family, a: &str, b: &str) -> Ordering {
        let a = family.parse(a).expect("a parses");
        let b = family.parse(b).expect("b parses");
        a.compare(&b).expect("same family")
    }

    #[test]
    fn debian_epochs_tildes_and_revisions() {
        use Ordering::*;
        let d = Family::Debian;
        assert_eq!(
            cmp(d, "1:1.0-1", "2.0-1"),
            Greater,
            "an epoch beats any upstream"
        );
        assert_eq!(
            cmp(d, "1.0~rc1-1", "1.0-1"),
            Less,
            "a tilde sorts before nothing"
        );
        assert_eq!(cmp(d, "1.0~~", "1.0~"), Less);
        assert_eq!(cmp(d, "1.0-1", "1.0-1+deb12u1"), Less);
        assert_eq!(cmp(d, "3.0.11-1~deb12u2", "3.0.11-1"), Less);
        assert_eq!(
            cmp(d, "1.2.13.dfsg-1", "1.2.13-1"),
            Greater,
            "letters after digits"
        );
        assert_eq!(cmp(d, "0:1.0", "1.0"), Equal, "epoch 0 is no epoch");
        assert_eq!(cmp(d, "1.10", "1.9"), Greater, "digits compare as numbers");
    }

    #[test]
    fn alpine_suffixes_and_revisions() {
        use Ordering::*;
        let a = Family::Alpine;
        assert_eq!(cmp(a, "1.2.3-r1", "1.2.3-r0"), Greater);
        assert_eq!(
            cmp(a, "1.2.3_alpha1-r0", "1.2.3-r0"),
            Less,
            "_alpha is a pre-release"
        );
        assert_eq!(cmp(a, "1.2.3_rc1", "1.2.3_beta2"), Greater);
        assert_eq!(cmp(a, "1.2.3_p1", "1.2.3"), Greater, "_p is a post-release");
        assert_eq!(cmp(a, "1.2.10", "1.2.9"), Greater);
        assert_eq!(
            cmp(a, "1.2a", "1.2"),
            Greater,
            "a letter follows the digits"
        );
        assert_eq!(cmp(a, "3.1.4-r5", "3.1.4-r5"), Equal);
        assert_eq!(cmp(a, "1.0_git20240101", "1.0"), Greater);
        assert_eq!(cmp(a, "2.0", "1.99_p9"), Greater);
        assert!(a.parse("not a version").is_err());
        assert!(a.parse("").is_err());
    }

    #[test]
    fn families_of_osv_ecosystems() {
        assert_eq!(Family::of_ecosystem("Debian:12"), Some(Family::Debian));
        assert_eq!(Family::of_ecosystem("Alpine:v3.19"), Some(Family::Alpine));
        assert_eq!(Family::of_ecosystem("AlmaLinux:9"), Some(Family::Rpm));
        assert_eq!(Family::of_ecosystem("PyPI"), None);
    }
}
