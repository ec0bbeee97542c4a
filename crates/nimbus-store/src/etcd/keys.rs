//! Pure mappings between the store's view and etcd's: keys under a namespace prefix,
//! key ranges for prefixes, and revisions.
//!
//! Store revisions are etcd revisions shifted by one: an empty etcd keyspace is at
//! revision 1 (its first write gets 2), while the [`Store`](crate::Store) trait starts
//! at 0 (first write 1). The shift is the same for every server sharing the etcd, so
//! any of them reads the revisions another wrote.

use crate::Revision;

/// The store revision of an etcd revision (a header, `mod_revision` or
/// `create_revision` of a key that exists).
pub(crate) fn store_revision(etcd_revision: i64) -> Revision {
    (etcd_revision - 1).max(0)
}

/// The etcd revision of a store revision. A store revision of 0 in a compare means
/// "absent" exactly as etcd's `mod_revision` 0 does, so it stays 0; a negative one
/// matches no key in either.
pub(crate) fn etcd_revision(store_revision: Revision) -> i64 {
    if store_revision <= 0 {
        store_revision
    } else {
        store_revision + 1
    }
}

/// The namespace every key lives under, so that one etcd can be shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Namespace(String);

impl Namespace {
    pub fn new(prefix: &str) -> Self {
        Namespace(prefix.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The etcd key of a store key.
    pub fn etcd_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.0).into_bytes()
    }

    /// The store key of an etcd key under this namespace.
    pub fn store_key(&self, etcd_key: &[u8]) -> String {
        let key = etcd_key.strip_prefix(self.0.as_bytes()).unwrap_or(etcd_key);
        String::from_utf8_lossy(key).into_owned()
    }

    /// The etcd range `[start, end)` holding every store key with `prefix`.
    pub fn prefix_range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.etcd_key(prefix);
        let end = range_end_of_prefix(&start);
        (start, end)
    }
}

/// etcd's range end for "every key starting with `prefix`": the prefix with its last
/// byte below 0xff incremented, or `\0` (etcd's "to the end of the keyspace") when
/// there is no such byte (the empty prefix, or all 0xff).
pub(crate) fn range_end_of_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// True when `key` lies before the range end `end` (`\0` meaning the keyspace's end).
pub(crate) fn before_range_end(key: &[u8], end: &[u8]) -> bool {
    end == [0] || key < end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_shift_by_one_and_keep_absent_at_zero() {
        assert_eq!(store_revision(1), 0, "an empty etcd is an empty store");
        assert_eq!(store_revision(2), 1, "the first write is store revision 1");
        assert_eq!(etcd_revision(1), 2);
        assert_eq!(etcd_revision(0), 0, "mod_revision 0 means absent in both");
        assert_eq!(etcd_revision(-3), -3);
        for revision in 1..100 {
            assert_eq!(store_revision(etcd_revision(revision)), revision);
        }
    }

    #[test]
    fn namespace_maps_keys_both_ways() {
        let ns = Namespace::new("/nimbus/");
        assert_eq!(
            ns.etcd_key("/instances/ops/web"),
            b"/nimbus//instances/ops/web"
        );
        assert_eq!(
            ns.store_key(b"/nimbus//instances/ops/web"),
            "/instances/ops/web"
        );
        assert_eq!(
            ns.prefix_range("/a/"),
            (b"/nimbus//a/".to_vec(), b"/nimbus//a0".to_vec())
        );
        assert_eq!(
            ns.prefix_range(""),
            (b"/nimbus/".to_vec(), b"/nimbus0".to_vec())
        );
    }

    #[test]
    fn range_end_handles_empty_and_ff_prefixes() {
        assert_eq!(range_end_of_prefix(b""), [0]);
        assert_eq!(range_end_of_prefix(&[b'a', 0xff]), b"b");
        assert_eq!(range_end_of_prefix(&[0xff, 0xff]), [0]);
        assert!(before_range_end(b"zzz", &[0]));
        assert!(before_range_end(b"a", b"b"));
        assert!(!before_range_end(b"b", b"b"));
    }
}
