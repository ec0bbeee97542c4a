//! Listing as S3 defines it (ListObjectsV2 and v1), independent of the
//! store: keys come in in order; keys that hold the delimiter after the
//! prefix fold into one common prefix; at most `max_keys` entries (objects
//! and common prefixes together) per page; the last entry returned is the
//! continuation point.

/// What the caller should do after [`Lister::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Feed the next key.
    Next,
    /// Every further key starting with this common prefix folds into it:
    /// resume the store listing after [`skip_past`] of it.
    SkipPast(String),
    /// The page is full.
    Done,
}

#[derive(Debug)]
pub struct Page<T> {
    pub objects: Vec<(String, T)>,
    pub common_prefixes: Vec<String>,
    /// The last key or common prefix returned, when more follow.
    pub next_marker: Option<String>,
}

pub struct Lister<T> {
    prefix: String,
    delimiter: Option<String>,
    max_keys: usize,
    objects: Vec<(String, T)>,
    common_prefixes: Vec<String>,
    last: Option<String>,
    truncated: bool,
}

impl<T> Lister<T> {
    pub fn new(prefix: &str, delimiter: Option<&str>, max_keys: usize) -> Lister<T> {
        Lister {
            prefix: prefix.to_string(),
            delimiter: delimiter.filter(|d| !d.is_empty()).map(str::to_string),
            max_keys,
            objects: Vec::new(),
            common_prefixes: Vec::new(),
            last: None,
            truncated: false,
        }
    }

    fn len(&self) -> usize {
        self.objects.len() + self.common_prefixes.len()
    }

    /// Feed the next key (in ascending order, starting with the prefix).
    pub fn push(&mut self, key: String, value: T) -> Step {
        if self.len() >= self.max_keys {
            self.truncated = true;
            return Step::Done;
        }
        if let Some(cp) = common_prefix(&key, &self.prefix, self.delimiter.as_deref()) {
            self.common_prefixes.push(cp.to_string());
            self.last = Some(cp.to_string());
            return Step::SkipPast(cp.to_string());
        }
        self.last = Some(key.clone());
        self.objects.push((key, value));
        Step::Next
    }

    pub fn finish(self) -> Page<T> {
        Page {
            next_marker: if self.truncated { self.last } else { None },
            objects: self.objects,
            common_prefixes: self.common_prefixes,
        }
    }
}

/// The common prefix `key` folds into: the prefix, then up to and with the
/// first delimiter after it.
pub fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    let delimiter = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.strip_prefix(prefix)?;
    let at = rest.find(delimiter)?;
    Some(&key[..prefix.len() + at + delimiter.len()])
}

/// A key that sorts after every key starting with `common_prefix` (for
/// keys whose next character is below U+10FFFF, i.e. all in practice).
pub fn skip_past(common_prefix: &str) -> String {
    format!("{common_prefix}{}", char::MAX)
}

/// Where to resume after a continuation marker: after the whole common
/// prefix when the marker is one, else just after the key.
pub fn resume_after(marker: &str, prefix: &str, delimiter: Option<&str>) -> String {
    match common_prefix(marker, prefix, delimiter) {
        Some(cp) if cp == marker => skip_past(marker),
        _ => marker.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists `keys` (sorted) like the service lists the store.
    fn list(
        keys: &[&str],
        prefix: &str,
        delimiter: Option<&str>,
        max: usize,
        after: Option<&str>,
    ) -> Page<()> {
        let mut lister = Lister::new(prefix, delimiter, max);
        let mut start = after.map(|m| resume_after(m, prefix, delimiter));
        'outer: loop {
            let rest = keys
                .iter()
                .filter(|k| k.starts_with(prefix))
                .filter(|k| start.as_deref().is_none_or(|s| **k > s));
            for k in rest {
                match lister.push(k.to_string(), ()) {
                    Step::Next => {}
                    Step::SkipPast(cp) => {
                        start = Some(skip_past(&cp));
                        continue 'outer;
                    }
                    Step::Done => break 'outer,
                }
            }
            break;
        }
        lister.finish()
    }

    fn names(page: &Page<()>) -> Vec<&str> {
        page.objects.iter().map(|(k, _)| k.as_str()).collect()
    }

    const KEYS: &[&str] = &[
        "a.txt",
        "photos/2024/a.jpg",
        "photos/2024/b.jpg",
        "photos/2025/c.jpg",
        "photos/top.jpg",
        "z.txt",
    ];

    #[test]
    fn the_delimiter_folds_keys_into_common_prefixes() {
        let page = list(KEYS, "", Some("/"), 1000, None);
        assert_eq!(names(&page), ["a.txt", "z.txt"]);
        assert_eq!(page.common_prefixes, ["photos/"]);
        assert_eq!(page.next_marker, None);
        let page = list(KEYS, "photos/", Some("/"), 1000, None);
        assert_eq!(names(&page), ["photos/top.jpg"]);
        assert_eq!(page.common_prefixes, ["photos/2024/", "photos/2025/"]);
    }

    #[test]
    fn continuation_walks_every_entry_once_across_pages() {
        let mut seen = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = list(KEYS, "", Some("/"), 1, marker.as_deref());
            seen.extend(names(&page).iter().map(|s| s.to_string()));
            seen.extend(page.common_prefixes.iter().cloned());
            assert!(page.objects.len() + page.common_prefixes.len() <= 1);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        assert_eq!(seen, ["a.txt", "photos/", "z.txt"]);
    }

    #[test]
    fn without_a_delimiter_every_key_is_listed_and_pages_are_exact() {
        let page = list(KEYS, "photos/", None, 2, None);
        assert_eq!(names(&page), ["photos/2024/a.jpg", "photos/2024/b.jpg"]);
        assert_eq!(page.next_marker.as_deref(), Some("photos/2024/b.jpg"));
        let page = list(KEYS, "photos/", None, 2, Some("photos/2024/b.jpg"));
        assert_eq!(names(&page), ["photos/2025/c.jpg", "photos/top.jpg"]);
        // Exactly full and nothing after: not truncated.
        assert_eq!(page.next_marker, None);
    }

    #[test]
    fn keys_with_dot_dot_are_ordinary_keys() {
        let page = list(&["../etc/passwd", "a"], "", Some("/"), 10, None);
        assert_eq!(page.common_prefixes, ["../"]);
        assert_eq!(names(&page), ["a"]);
    }
}
