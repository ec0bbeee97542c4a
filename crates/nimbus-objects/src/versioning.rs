//! Bucket versioning as S3 defines it, the pure part: version ids, the
//! order of a key's versions, and which one a listing shows as latest.
//!
//! Layout in the store, for a bucket whose versioning was ever set:
//! - `/s3/versions/<bucket>/<key>\0<token>` holds every version and delete
//!   marker, the newest first (`token` = [`sort_token`] of its `seq`);
//! - `/s3/objects/<bucket>/<key>` holds a copy of the newest one (the
//!   "head"), marker or not. Every change to a key compares the head's
//!   revision, so concurrent writers of one key are serialised, and GET
//!   and ListObjects read the head alone, as in an unversioned bucket.
//!
//! A bucket that never had versioning keeps only `/s3/objects/` records
//! without a version: its PUT path is the one it always was.

use crate::records::{ObjectRecord, VersionInfo, Versioning};

/// The version id of writes in a Suspended bucket (and of objects stored
/// before versioning was turned on).
pub const NULL_VERSION: &str = "null";

/// A key in the store that orders versions newest first: the sequence
/// number counted down, fixed width.
pub fn sort_token(seq: u64) -> String {
    format!("{:016x}", u64::MAX - seq)
}

/// The sequence number of a new version: the clock in microseconds, but
/// always past the key's newest version, so a clock stepping back cannot
/// make the new version sort as older than the one it follows.
pub fn next_seq(now_micros: u64, newest: Option<u64>) -> u64 {
    newest.map_or(now_micros, |n| now_micros.max(n.saturating_add(1)))
}

pub fn micros(t: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from(t.timestamp_micros()).unwrap_or(0)
}

/// A new version's id: `null` when suspended, else its sort token and 64
/// random bits (unique even across keys and buckets).
pub fn new_version_id(mode: Versioning, seq: u64) -> String {
    match mode {
        Versioning::Suspended => NULL_VERSION.to_string(),
        Versioning::Enabled => format!(
            "{}{}",
            sort_token(seq),
            hex::encode(rand::random::<[u8; 8]>())
        ),
    }
}

/// What a client's `versionId` names.
#[derive(Debug, PartialEq, Eq)]
pub enum VersionRef<'a> {
    Null,
    /// A generated id, whose first 16 digits are its record's sort token.
    Token(&'a str),
}

/// `None` for a string this server never hands out as a version id.
pub fn parse_version_id(id: &str) -> Option<VersionRef<'_>> {
    if id == NULL_VERSION {
        return Some(VersionRef::Null);
    }
    (id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| VersionRef::Token(&id[..16]))
}

/// `record` as a version of its key with sequence `seq`.
pub fn as_version(mut record: ObjectRecord, id: String, seq: u64) -> ObjectRecord {
    let delete_marker = record.is_delete_marker();
    record.version = Some(VersionInfo {
        id,
        seq,
        delete_marker,
    });
    record
}

/// A delete marker made now (no data; its id and seq are set on commit).
pub fn delete_marker() -> ObjectRecord {
    ObjectRecord {
        data_id: String::new(),
        size: 0,
        etag: String::new(),
        content_type: None,
        user_metadata: Default::default(),
        last_modified: chrono::Utc::now(),
        version: Some(VersionInfo {
            id: String::new(),
            seq: 0,
            delete_marker: true,
        }),
    }
}

/// A record stored before its bucket's versioning was set, made into the
/// `null` version it is in S3's terms.
pub fn adopt_as_null(record: ObjectRecord) -> ObjectRecord {
    let seq = micros(record.last_modified);
    as_version(record, NULL_VERSION.to_string(), seq)
}

/// Marks the first version of each key as the latest while a listing walks
/// versions in store order (each key's newest first).
pub struct LatestTracker {
    previous_key: Option<String>,
}

impl LatestTracker {
    /// `resumed_in_key`: the listing resumes inside this key's versions (a
    /// version-id marker was given), so its first one seen is not latest.
    pub fn new(resumed_in_key: Option<&str>) -> LatestTracker {
        LatestTracker {
            previous_key: resumed_in_key.map(str::to_string),
        }
    }

    pub fn is_latest(&mut self, key: &str) -> bool {
        let latest = self.previous_key.as_deref() != Some(key);
        if latest {
            self.previous_key = Some(key.to_string());
        }
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_sort_first() {
        assert!(sort_token(2) < sort_token(1));
        assert_eq!(sort_token(0).len(), 16);
        assert_eq!(sort_token(u64::MAX).len(), 16);
    }

    #[test]
    fn a_clock_stepping_back_still_gives_a_newer_version() {
        assert_eq!(next_seq(100, None), 100);
        assert_eq!(next_seq(100, Some(50)), 100);
        assert_eq!(next_seq(100, Some(500)), 501);
        assert_eq!(next_seq(100, Some(u64::MAX)), u64::MAX);
    }

    #[test]
    fn version_ids_name_their_sort_token_and_are_unique() {
        let a = new_version_id(Versioning::Enabled, 7);
        let b = new_version_id(Versioning::Enabled, 7);
        assert_ne!(a, b);
        assert_eq!(
            parse_version_id(&a),
            Some(VersionRef::Token(&sort_token(7)))
        );
        assert_eq!(new_version_id(Versioning::Suspended, 7), "null");
        assert_eq!(parse_version_id("null"), Some(VersionRef::Null));
        for bad in ["", "NULL", "../x", &"g".repeat(32), &"a".repeat(31)] {
            assert_eq!(parse_version_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_first_version_of_each_key_is_latest() {
        let mut t = LatestTracker::new(None);
        let seen: Vec<bool> = ["a", "a", "b", "c", "c"]
            .iter()
            .map(|k| t.is_latest(k))
            .collect();
        assert_eq!(seen, [true, false, true, true, false]);
        let mut t = LatestTracker::new(Some("a"));
        assert!(!t.is_latest("a"));
        assert!(t.is_latest("b"));
    }

    #[test]
    fn a_marker_stays_a_marker_when_versioned() {
        let m = as_version(delete_marker(), "x".into(), 3);
        assert!(m.is_delete_marker());
        assert_eq!(m.version.unwrap().seq, 3);
    }
}
