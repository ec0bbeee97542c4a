//! The launch policy's verdict: does some signature by a required key
//! name exactly this manifest digest?

use std::fmt;

use crate::{PublicKey, SignaturePair, SimpleSigning};

/// The signature that admitted an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub key_fingerprint: String,
}

/// What was found instead of an acceptable signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No signature at all for the digest.
    Nothing,
    /// Signatures that no required key verifies; the signers' fingerprints
    /// where their uploader named them.
    OtherKeys { signers: Vec<Option<String>> },
    /// A required key's signature, but over a payload naming other digests:
    /// the signature was made for another image (a moved tag, a copied
    /// signature).
    OtherDigests { signed: Vec<String> },
}

/// Why an image may not launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub digest: String,
    pub required: Vec<String>,
    pub found: Found,
}

/// Accept when some pair verifies under some key AND its payload names
/// `digest`. Malformed payloads and signatures count as another key's.
pub fn check_signatures(
    digest: &str,
    pairs: &[SignaturePair],
    keys: &[PublicKey],
) -> Result<Accepted, Refusal> {
    let mut other_digests = Vec::new();
    let mut signers = Vec::new();
    for pair in pairs {
        let Some(key) = keys
            .iter()
            .find(|k| k.verifies(&pair.payload, &pair.signature))
        else {
            signers.push(pair.signer.clone());
            continue;
        };
        match SimpleSigning::parse(&pair.payload) {
            Ok(p) if p.digest() == digest => {
                return Ok(Accepted {
                    key_fingerprint: key.fingerprint(),
                })
            }
            Ok(p) => other_digests.push(p.digest().to_string()),
            Err(_) => signers.push(pair.signer.clone()),
        }
    }
    let found = if !other_digests.is_empty() {
        Found::OtherDigests {
            signed: other_digests,
        }
    } else if !signers.is_empty() {
        Found::OtherKeys { signers }
    } else {
        Found::Nothing
    };
    Err(Refusal {
        digest: digest.to_string(),
        required: keys.iter().map(PublicKey::fingerprint).collect(),
        found,
    })
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let required = if self.required.is_empty() {
            "no key is listed (add one with `nimbus policy set --require-signature --key FILE.pub`)"
                .to_string()
        } else {
            format!("key {}", self.required.join(" or key "))
        };
        match &self.found {
            Found::Nothing => write!(
                f,
                "image {} has no signature; the project's policy requires one by {required}. Sign it with `nimbus image sign IMAGE --key cosign.key`",
                self.digest
            ),
            Found::OtherKeys { signers } => {
                let named: Vec<String> = signers
                    .iter()
                    .map(|s| s.clone().unwrap_or_else(|| "an unnamed key".into()))
                    .collect();
                write!(
                    f,
                    "image {} is signed only by another key ({}), not by {required} as the project's policy requires. Sign it with a required key, or trust the signer with `nimbus policy set --require-signature --key SIGNER.pub`",
                    self.digest,
                    named.join(", ")
                )
            }
            Found::OtherDigests { signed } => write!(
                f,
                "image {} is not what was signed: the signature by {required} is for {}, so the image changed after signing (re-imported or re-tagged). Sign the current image again with `nimbus image sign IMAGE --key cosign.key` if it is trusted",
                self.digest,
                signed.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn signed(key: &KeyPair, digest: &str) -> SignaturePair {
        crate::testing::signed(key, "ops/app", digest)
    }

    #[test]
    fn a_signature_by_a_required_key_for_the_digest_is_accepted() {
        let ops = KeyPair::generate().expect("key");
        let other = KeyPair::generate().expect("key");
        let pairs = [signed(&other, D1), signed(&ops, D1)];
        let keys = [other.public_key(), ops.public_key()];
        let ok = check_signatures(D1, &pairs, &keys[1..]).expect("accepted");
        assert_eq!(ok.key_fingerprint, ops.public_key().fingerprint());
        assert!(check_signatures(D1, &pairs, &keys).is_ok());
    }

    #[test]
    fn refusals_say_what_was_required_and_what_was_found() {
        let ops = KeyPair::generate().expect("key");
        let other = KeyPair::generate().expect("key");
        let keys = [ops.public_key()];
        let fp = ops.public_key().fingerprint();

        let none = check_signatures(D1, &[], &keys).expect_err("unsigned");
        assert_eq!(none.found, Found::Nothing);
        assert!(none.to_string().contains("has no signature"), "{none}");
        assert!(none.to_string().contains(&fp), "{none}");

        let by_other = check_signatures(D1, &[signed(&other, D1)], &keys).expect_err("other key");
        let msg = by_other.to_string();
        assert!(msg.contains(&other.public_key().fingerprint()), "{msg}");
        assert!(msg.contains(&fp), "{msg}");

        // A moved tag / copied signature: right key, wrong digest.
        let moved = check_signatures(D2, &[signed(&ops, D1)], &keys).expect_err("moved");
        assert_eq!(
            moved.found,
            Found::OtherDigests {
                signed: vec![D1.to_string()]
            }
        );
        assert!(
            moved.to_string().contains("changed after signing"),
            "{moved}"
        );
    }

    #[test]
    fn a_tampered_payload_or_signature_is_not_accepted() {
        let ops = KeyPair::generate().expect("key");
        let mut p = signed(&ops, D1);
        p.payload = SimpleSigning::new("ops/evil", D1)
            .expect("payload")
            .to_bytes();
        assert!(check_signatures(D1, &[p], &[ops.public_key()]).is_err());
        let mut p = signed(&ops, D1);
        p.signature = b"garbage".to_vec();
        assert!(check_signatures(D1, &[p], &[ops.public_key()]).is_err());
    }
}
