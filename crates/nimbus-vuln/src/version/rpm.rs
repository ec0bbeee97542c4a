//! rpm version ordering, after rpm's `rpmvercmp` and `rpmVersionCompare`:
//! `[epoch:]version[-release]`, each of version and release compared segment by
//! segment (digits as numbers, letters as text, `~` before anything, `^` after the
//! end but before any further segment).

use std::cmp::Ordering;

/// Longest version string accepted.
const MAX_LEN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpmVersion {
    epoch: u64,
    version: String,
    release: String,
}

impl RpmVersion {
    pub fn parse(text: &str) -> Option<RpmVersion> {
        if text.is_empty() || text.len() > MAX_LEN || text.chars().any(char::is_whitespace) {
            return None;
        }
        let (epoch, rest) = match text.split_once(':') {
            Some((e, rest)) => (e.parse().ok()?, rest),
            None => (0, text),
        };
        let (version, release) = match rest.rsplit_once('-') {
            Some((v, r)) => (v, r),
            None => (rest, ""),
        };
        if version.is_empty() {
            return None;
        }
        Some(RpmVersion {
            epoch,
            version: version.to_string(),
            release: release.to_string(),
        })
    }
}

impl Ord for RpmVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| rpmvercmp(&self.version, &other.version))
            .then_with(|| rpmvercmp(&self.release, &other.release))
    }
}

impl PartialOrd for RpmVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn is_separator(c: u8) -> bool {
    !c.is_ascii_alphanumeric() && c != b'~' && c != b'^'
}

/// rpm's segment-wise comparison of two version (or release) strings.
pub(crate) fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (mut one, mut two) = (a.as_bytes(), b.as_bytes());
    loop {
        while one.first().is_some_and(|c| is_separator(*c)) {
            one = &one[1..];
        }
        while two.first().is_some_and(|c| is_separator(*c)) {
            two = &two[1..];
        }
        // A tilde sorts before everything, even the end of the string.
        match (one.first() == Some(&b'~'), two.first() == Some(&b'~')) {
            (true, true) => {
                one = &one[1..];
                two = &two[1..];
                continue;
            }
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        // A caret sorts after the end of the string, before anything else.
        if one.first() == Some(&b'^') || two.first() == Some(&b'^') {
            if one.is_empty() {
                return Ordering::Less;
            }
            if two.is_empty() {
                return Ordering::Greater;
            }
            match (one[0] == b'^', two[0] == b'^') {
                (true, true) => {
                    one = &one[1..];
                    two = &two[1..];
                    continue;
                }
                (false, _) => return Ordering::Greater,
                (_, false) => return Ordering::Less,
            }
        }
        if one.is_empty() || two.is_empty() {
            break;
        }
        let numeric = one[0].is_ascii_digit();
        let take = |s: &[u8]| -> usize {
            s.iter()
                .take_while(|c| {
                    if numeric {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (n1, n2) = (take(one), take(two));
        let (seg1, seg2) = (&one[..n1], &two[..n2]);
        one = &one[n1..];
        two = &two[n2..];
        if seg2.is_empty() {
            // Different kinds: a number is newer than letters.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let order = if numeric {
            let s1 = trim_zeros(seg1);
            let s2 = trim_zeros(seg2);
            s1.len().cmp(&s2.len()).then_with(|| s1.cmp(s2))
        } else {
            seg1.cmp(seg2)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    match (one.is_empty(), two.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let start = digits.iter().take_while(|c| **c == b'0').count();
    &digits[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpmvercmp_follows_rpm() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0.1", Less),
            ("2.0.1a", "2.0.1", Greater),
            ("10", "9", Greater),
            ("1.010", "1.10", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0^git1", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("el9_3", "el9_2", Greater),
            ("1a", "1.1", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(rpmvercmp(a, b), want, "{a} vs {b}");
            assert_eq!(rpmvercmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn epochs_then_versions_then_releases() {
        let v = |s: &str| RpmVersion::parse(s).expect(s);
        assert!(v("1:1.0-1") > v("2.0-1"));
        assert!(v("0:3.0.7-25.el9_3") > v("3.0.7-24.el9"));
        assert_eq!(v("0:1.0-1").cmp(&v("1.0-1")), Ordering::Equal);
        assert!(RpmVersion::parse("x:1.0").is_none());
    }
}
