//! Where object-storage metadata lives in the store. Every key starts with
//! `/s3/`, so the whole object layer moves with the store (to etcd with the
//! cluster) and never mixes with the API's resources.

use crate::error::ObjectsError;

pub const BUCKETS: &str = "/s3/buckets/";
pub const OBJECTS: &str = "/s3/objects/";
pub const CREDENTIALS: &str = "/s3/credentials/";
pub const UPLOADS: &str = "/s3/uploads/";
pub const PARTS: &str = "/s3/parts/";
pub const VERSIONS: &str = "/s3/versions/";

/// Between an object key and its version's sort token. NUL sorts before
/// every other character, so all versions of `a` come before those of
/// `a/b` or `a!`, and a version listing walks keys in S3's order.
pub const VERSION_SEPARATOR: char = '\0';

pub fn bucket(name: &str) -> String {
    format!("{BUCKETS}{name}")
}

/// Prefix of every object of `bucket` (bucket names hold no `/`).
pub fn objects_of(bucket: &str) -> String {
    format!("{OBJECTS}{bucket}/")
}

/// The object's metadata key. The object key is kept verbatim: it is a
/// store key, never a path.
pub fn object(bucket: &str, key: &str) -> String {
    format!("{OBJECTS}{bucket}/{key}")
}

/// Prefix of every stored version of every key in `bucket`.
pub fn versions_of(bucket: &str) -> String {
    format!("{VERSIONS}{bucket}/")
}

/// Prefix of the versions of one key (the newest first).
pub fn versions_of_key(bucket: &str, key: &str) -> String {
    format!("{VERSIONS}{bucket}/{key}{VERSION_SEPARATOR}")
}

/// The record of one version of `key`: `token` orders it (see
/// `crate::versioning::sort_token`).
pub fn version(bucket: &str, key: &str, token: &str) -> String {
    format!("{}{token}", versions_of_key(bucket, key))
}

/// Split a store key under [`versions_of`] (already stripped of it) into
/// the object key and the sort token. The token holds no NUL, so the last
/// one is the separator whatever the object key holds.
pub fn split_version(rest: &str) -> Option<(&str, &str)> {
    rest.rsplit_once(VERSION_SEPARATOR)
}

/// Prefix of the multipart uploads in progress in `bucket`.
pub fn uploads_of(bucket: &str) -> String {
    format!("{UPLOADS}{bucket}/")
}

pub fn upload(bucket: &str, upload_id: &str) -> String {
    format!("{UPLOADS}{bucket}/{upload_id}")
}

/// Prefix of the parts of one upload (upload ids are random hex).
pub fn parts_of(upload_id: &str) -> String {
    format!("{PARTS}{upload_id}/")
}

/// Zero-padded, so the store lists parts in number order.
pub fn part(upload_id: &str, part_number: i32) -> String {
    format!("{PARTS}{upload_id}/{part_number:05}")
}

pub fn credential(access_key_id: &str) -> String {
    format!("{CREDENTIALS}{access_key_id}")
}

/// S3's bucket naming rules (the DNS-compatible subset): 3-63 characters
/// of lowercase letters, digits, `-` and `.`, starting and ending with a
/// letter or digit.
pub fn validate_bucket_name(name: &str) -> Result<(), ObjectsError> {
    let invalid = |reason| ObjectsError::InvalidBucketName {
        name: name.to_string(),
        reason,
    };
    if !(3..=63).contains(&name.len()) {
        return Err(invalid("it must be 3 to 63 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "it may hold only lowercase letters, digits, '-' and '.'",
        ));
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !name.bytes().next().is_some_and(edge_ok) || !name.bytes().last().is_some_and(edge_ok) {
        return Err(invalid("it must start and end with a letter or digit"));
    }
    if name.contains("..") {
        return Err(invalid("it may not hold two '.' in a row"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_stay_under_their_bucket_prefix() {
        for key in ["../x", "a/../../b", "/abs", "ünï/ᚠ", ""] {
            assert!(object("photos", key).starts_with(&objects_of("photos")));
        }
        // A bucket whose name is a prefix of another's does not share keys.
        assert!(!object("photos2", "a").starts_with(&objects_of("photos")));
    }

    #[test]
    fn versions_sort_by_key_then_token_and_split_back() {
        let a = version("b", "a", "0001");
        let a_child = version("b", "a/b", "0000");
        let a_bang = version("b", "a!", "0000");
        assert!(a < a_child && a < a_bang);
        let rest = &a_child[versions_of("b").len()..];
        assert_eq!(split_version(rest), Some(("a/b", "0000")));
        assert!(a.starts_with(&versions_of_key("b", "a")));
        assert!(!a_child.starts_with(&versions_of_key("b", "a")));
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["photos", "a.b-c", "123"] {
            validate_bucket_name(ok).unwrap();
        }
        for bad in [
            "ab",
            "Photos",
            "a/b",
            "-ab",
            "ab-",
            "a..b",
            "../x",
            &"a".repeat(64),
        ] {
            assert!(validate_bucket_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
