//! ETags as S3 defines them: the MD5 of the bytes in hex for a single PUT;
//! for a multipart upload, the MD5 of the parts' binary MD5s followed by
//! `-<number of parts>`.

use md5::{Digest, Md5};

pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// The ETag of a multipart object from its parts' ETags (hex, unquoted).
/// `None` when a part's ETag is not MD5 hex.
pub fn multipart(part_etags: &[&str]) -> Option<String> {
    let mut all = Md5::new();
    for part in part_etags {
        let raw = hex::decode(part.trim_matches('"')).ok()?;
        if raw.len() != 16 {
            return None;
        }
        all.update(&raw);
    }
    Some(format!(
        "{}-{}",
        hex::encode(all.finalize()),
        part_etags.len()
    ))
}

/// Whether a `Content-MD5` header (base64 of the binary MD5) names `md5_hex`.
pub fn content_md5_matches(header: &str, md5_hex: &str) -> bool {
    base64_simd::STANDARD
        .decode_to_vec(header.trim())
        .is_ok_and(|raw| hex::encode(raw) == md5_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_put_etag_is_md5_hex() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
    }

    #[test]
    fn multipart_etag_is_md5_of_md5s_with_part_count() {
        let a = md5_hex(b"part one");
        let b = md5_hex(b"part two");
        let mut raw = hex::decode(&a).unwrap();
        raw.extend(hex::decode(&b).unwrap());
        let expected = format!("{}-2", md5_hex(&raw));
        assert_eq!(multipart(&[&a, &format!("\"{b}\"")]).unwrap(), expected);
        assert_eq!(multipart(&["not-hex"]), None);
    }

    #[test]
    fn content_md5_is_base64_of_the_binary_digest() {
        // base64(md5("hello"))
        assert!(content_md5_matches(
            "XUFAKrxLKna5cZ2REBfFkg==",
            "5d41402abc4b2a76b9719d911017c592"
        ));
        assert!(!content_md5_matches(
            "XUFAKrxLKna5cZ2REBfFkg==",
            "d41d8cd98f00b204e9800998ecf8427e"
        ));
        assert!(!content_md5_matches(
            "!!!",
            "d41d8cd98f00b204e9800998ecf8427e"
        ));
    }
}
