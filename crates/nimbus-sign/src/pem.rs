//! PEM armour, as Go's `encoding/pem` writes it (64-column base64).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::SignError;

/// Wrap DER (or any bytes) in a PEM block.
pub fn encode(label: &str, bytes: &[u8]) -> String {
    let b64 = STANDARD.encode(bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The first PEM block in `text`: its label and decoded bytes.
pub fn decode_first(text: &str) -> Option<Result<(String, Vec<u8>), SignError>> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let Some(label_end) = rest.find("-----") else {
        return Some(Err(bad("?", "the BEGIN line is not closed")));
    };
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let Some(body_end) = body.find(&end_marker) else {
        return Some(Err(bad(&label, "no matching END line")));
    };
    let b64: String = body[..body_end]
        .lines()
        // Headers (`Proc-Type: ...`) are not used by any key format here.
        .filter(|l| !l.contains(':'))
        .flat_map(|l| l.trim().chars())
        .collect();
    Some(
        STANDARD
            .decode(b64.as_bytes())
            .map(|bytes| (label.clone(), bytes))
            .map_err(|e| bad(&label, &format!("bad base64: {e}"))),
    )
}

fn bad(label: &str, reason: &str) -> SignError {
    SignError::BadPem {
        label: label.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_wraps_at_64_columns() {
        let bytes: Vec<u8> = (0..200u8).collect();
        let pem = encode("PUBLIC KEY", &bytes);
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        let (label, back) = decode_first(&pem).expect("a block").expect("valid");
        assert_eq!(label, "PUBLIC KEY");
        assert_eq!(back, bytes);
    }

    #[test]
    fn truncated_and_garbled_blocks_are_errors_not_panics() {
        assert!(decode_first("no pem here").is_none());
        assert!(decode_first("-----BEGIN X-----\nAAAA\n")
            .expect("block")
            .is_err());
        assert!(decode_first("-----BEGIN X-----\n!!!!\n-----END X-----\n")
            .expect("block")
            .is_err());
        assert!(decode_first("-----BEGIN X").expect("block").is_err());
    }
}
