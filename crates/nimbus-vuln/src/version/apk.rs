//! apk version ordering, after apk-tools' `version.c`: dot-separated numbers, an
//! optional letter, suffixes (`_alpha` < `_beta` < `_pre` < `_rc` < none < `_cvs` <
//! `_svn` < `_git` < `_hg` < `_p`, each with an optional number), then `-rN`.

use std::cmp::Ordering;

/// The suffixes apk knows; the index is their order, `RELEASE` is "no suffix".
const PRE_SUFFIXES: [&str; 4] = ["alpha", "beta", "pre", "rc"];
const POST_SUFFIXES: [&str; 5] = ["cvs", "svn", "git", "hg", "p"];
const RELEASE: i32 = PRE_SUFFIXES.len() as i32;
/// Longest version string accepted.
const MAX_LEN: usize = 128;

/// A parsed apk version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApkVersion {
    numbers: Vec<u64>,
    letter: Option<u8>,
    /// (rank, number): rank orders the suffix kinds, `RELEASE` ends the list.
    suffixes: Vec<(i32, u64)>,
    revision: u64,
}

impl ApkVersion {
    pub fn parse(text: &str) -> Option<ApkVersion> {
        if text.is_empty() || text.len() > MAX_LEN {
            return None;
        }
        let (main, revision) = match text.rsplit_once("-r") {
            Some((main, rev)) => (main, rev.parse().ok()?),
            None => (text, 0),
        };
        let mut parts = main.split('_');
        let head = parts.next()?;
        let (numbers, letter) = parse_head(head)?;
        let mut suffixes = parts.map(parse_suffix).collect::<Option<Vec<_>>>()?;
        suffixes.push((RELEASE, 0));
        Some(ApkVersion {
            numbers,
            letter,
            suffixes,
            revision,
        })
    }
}

/// `1.2.3a` → ([1, 2, 3], Some('a')).
fn parse_head(head: &str) -> Option<(Vec<u64>, Option<u8>)> {
    let (digits, letter) = match head.as_bytes().last() {
        Some(b) if b.is_ascii_lowercase() => (&head[..head.len() - 1], Some(*b)),
        _ => (head, None),
    };
    let numbers = digits
        .split('.')
        .map(|n| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u64>().ok())
                .flatten()
        })
        .collect::<Option<Vec<_>>>()?;
    Some((numbers, letter))
}

fn parse_suffix(part: &str) -> Option<(i32, u64)> {
    let split = part
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(part.len());
    let (name, number) = part.split_at(split);
    let number = if number.is_empty() {
        0
    } else {
        number.parse().ok()?
    };
    if let Some(i) = PRE_SUFFIXES.iter().position(|s| *s == name) {
        return Some((i as i32, number));
    }
    let i = POST_SUFFIXES.iter().position(|s| *s == name)?;
    Some((RELEASE + 1 + i as i32, number))
}

impl Ord for ApkVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        // Numbers compare one by one; a longer list wins when the shared part ties.
        self.numbers
            .cmp(&other.numbers)
            .then_with(|| self.letter.cmp(&other.letter))
            .then_with(|| self.suffixes.cmp(&other.suffixes))
            .then_with(|| self.revision.cmp(&other.revision))
    }
}

impl PartialOrd for ApkVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
