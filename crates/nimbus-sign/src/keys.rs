//! ECDSA P-256 key pairs in cosign's formats: the public key as a PEM
//! `PUBLIC KEY` (SubjectPublicKeyInfo DER), the private key as PKCS#8 DER
//! sealed in go-securesystemslib's envelope (scrypt, then NaCl secretbox),
//! base64 JSON inside a PEM `ENCRYPTED SIGSTORE PRIVATE KEY` block (cosign
//! before 2.0 wrote `ENCRYPTED COSIGN PRIVATE KEY`; both are read).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{pem, SignError};

pub const PRIVATE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const LEGACY_PRIVATE_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
pub const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

/// SubjectPublicKeyInfo of a P-256 key up to the point: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const P256_POINT_BYTES: usize = 65;

/// The memory scrypt may use to open a key: 128 · r · N bytes. cosign's
/// own keys need 32 MiB; a hostile file must not make us allocate more.
const MAX_SCRYPT_MEMORY_BYTES: u64 = 256 << 20;
const SALT_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// scrypt's cost, stored in the key file. `cosign()` is what cosign writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScryptParams {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl ScryptParams {
    /// N = 32768, r = 8, p = 1, as cosign and go-securesystemslib write.
    pub fn cosign() -> ScryptParams {
        ScryptParams {
            log_n: 15,
            r: 8,
            p: 1,
        }
    }

    fn from_envelope(p: &EnvelopeScryptParams) -> Result<ScryptParams, SignError> {
        if p.n < 2 || !p.n.is_power_of_two() || p.r == 0 || p.p == 0 || p.p > 16 {
            return Err(SignError::BadEnvelope(format!(
                "scrypt parameters N={} r={} p={} are not usable (N a power of two ≥ 2, r ≥ 1, 1 ≤ p ≤ 16)",
                p.n, p.r, p.p
            )));
        }
        if 128u64.saturating_mul(u64::from(p.r)).saturating_mul(p.n) > MAX_SCRYPT_MEMORY_BYTES {
            return Err(SignError::BadEnvelope(format!(
                "scrypt parameters N={} r={} need more than {} MiB to open the key",
                p.n,
                p.r,
                MAX_SCRYPT_MEMORY_BYTES >> 20
            )));
        }
        Ok(ScryptParams {
            log_n: p.n.trailing_zeros() as u8,
            r: p.r,
            p: p.p,
        })
    }

    fn derive_key(&self, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, SignError> {
        let params = scrypt::Params::new(self.log_n, self.r, self.p, 32)
            .map_err(|e| SignError::BadEnvelope(format!("scrypt parameters: {e}")))?;
        let mut key = Zeroizing::new([0u8; 32]);
        scrypt::scrypt(password, salt, &params, key.as_mut())
            .map_err(|e| SignError::BadEnvelope(format!("scrypt: {e}")))?;
        Ok(key)
    }
}

// go-securesystemslib's `encrypted` envelope; Go writes `[]byte` as base64.
#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: EnvelopeKdf,
    cipher: EnvelopeCipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeKdf {
    name: String,
    params: EnvelopeScryptParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeCipher {
    name: String,
    nonce: String,
}

/// An ECDSA P-256 private key with its public half.
pub struct KeyPair {
    pair: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", self.public_key().fingerprint())
    }
}

impl KeyPair {
    /// A new random key pair.
    pub fn generate() -> Result<KeyPair, SignError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| SignError::Crypto("the system random source failed".into()))?;
        KeyPair::from_pkcs8(doc.as_ref())
    }

    /// A key pair from PKCS#8 DER (an ECDSA P-256 private key that
    /// carries its public key, as cosign, Go and RustCrypto write them).
    pub fn from_pkcs8(der: &[u8]) -> Result<KeyPair, SignError> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng).map_err(|e| {
                match key_algorithm(der) {
                    Some(found) if found != P256 => SignError::NotP256 {
                        found: found.to_string(),
                    },
                    _ => {
                        SignError::BadKey(format!("PKCS#8 ECDSA P-256 private key rejected ({e})"))
                    }
                }
            })?;
        Ok(KeyPair {
            pair,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    /// Open a private key file written by cosign or `nimbus key create`.
    pub fn from_encrypted_pem(text: &str, password: &[u8]) -> Result<KeyPair, SignError> {
        let (label, bytes) = pem::decode_first(text).ok_or(SignError::NotPem {
            what: "the private key",
            label: PRIVATE_KEY_LABEL,
            hint: "give the .key file written by `nimbus key create` or `cosign generate-key-pair`, not the .pub",
        })??;
        if label != PRIVATE_KEY_LABEL && label != LEGACY_PRIVATE_KEY_LABEL {
            return Err(SignError::NotPem {
                what: "the private key",
                label: PRIVATE_KEY_LABEL,
                hint: if label == PUBLIC_KEY_LABEL {
                    "this is a public key: sign with the .key file"
                } else {
                    "only cosign's encrypted key format is read (create one with `nimbus key create`)"
                },
            });
        }
        let envelope: Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| SignError::BadEnvelope(format!("not the expected JSON: {e}")))?;
        let plain = open_envelope(&envelope, password)?;
        KeyPair::from_pkcs8(&plain)
    }

    /// The private key sealed in cosign's format, under `password`.
    pub fn to_encrypted_pem(
        &self,
        password: &[u8],
        params: ScryptParams,
    ) -> Result<String, SignError> {
        let rng = SystemRandom::new();
        let mut salt = [0u8; SALT_BYTES];
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill(&mut salt)
            .and_then(|()| rng.fill(&mut nonce))
            .map_err(|_| SignError::Crypto("the system random source failed".into()))?;
        let key = params.derive_key(password, &salt)?;
        let cipher = XSalsa20Poly1305::new(key.as_ref().into());
        let sealed = cipher
            .encrypt(&nonce.into(), self.pkcs8.as_slice())
            .map_err(|_| SignError::Crypto("secretbox sealing failed".into()))?;
        let envelope = Envelope {
            kdf: EnvelopeKdf {
                name: "scrypt".into(),
                params: EnvelopeScryptParams {
                    n: 1u64 << params.log_n,
                    r: params.r,
                    p: params.p,
                },
                salt: STANDARD.encode(salt),
            },
            cipher: EnvelopeCipher {
                name: "nacl/secretbox".into(),
                nonce: STANDARD.encode(nonce),
            },
            ciphertext: STANDARD.encode(sealed),
        };
        let json = serde_json::to_vec(&envelope)
            .map_err(|e| SignError::Crypto(format!("encoding the envelope: {e}")))?;
        Ok(pem::encode(PRIVATE_KEY_LABEL, &json))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_point(self.pair.public_key().as_ref())
    }

    /// An ASN.1 DER ECDSA P-256 SHA-256 signature over `message`, as cosign makes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let sig = self
            .pair
            .sign(&SystemRandom::new(), message)
            .map_err(|_| SignError::Crypto("ECDSA signing failed".into()))?;
        Ok(sig.as_ref().to_vec())
    }
}

fn open_envelope(envelope: &Envelope, password: &[u8]) -> Result<Zeroizing<Vec<u8>>, SignError> {
    if envelope.kdf.name != "scrypt" {
        return Err(SignError::BadEnvelope(format!(
            "key derivation {:?} is not scrypt",
            envelope.kdf.name
        )));
    }
    if envelope.cipher.name != "nacl/secretbox" {
        return Err(SignError::BadEnvelope(format!(
            "cipher {:?} is not nacl/secretbox",
            envelope.cipher.name
        )));
    }
    let params = ScryptParams::from_envelope(&envelope.kdf.params)?;
    let decode = |what: &str, s: &str| {
        STANDARD
            .decode(s)
            .map_err(|e| SignError::BadEnvelope(format!("{what} is not base64: {e}")))
    };
    let salt = decode("the salt", &envelope.kdf.salt)?;
    let nonce: [u8; NONCE_BYTES] = decode("the nonce", &envelope.cipher.nonce)?
        .try_into()
        .map_err(|_| SignError::BadEnvelope(format!("the nonce is not {NONCE_BYTES} bytes")))?;
    let sealed = decode("the ciphertext", &envelope.ciphertext)?;
    let key = params.derive_key(password, &salt)?;
    let cipher = XSalsa20Poly1305::new(key.as_ref().into());
    cipher
        .decrypt(&nonce.into(), sealed.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| SignError::WrongPassword)
}

/// An ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    point: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    fn from_point(point: &[u8]) -> PublicKey {
        PublicKey {
            point: point.to_vec(),
        }
    }

    /// A public key from SubjectPublicKeyInfo DER.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, SignError> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == P256_POINT_BYTES && point[0] == 0x04 => {
                Ok(PublicKey::from_point(point))
            }
            _ => match key_algorithm(der) {
                Some(found) if found != P256 => Err(SignError::NotP256 {
                    found: found.to_string(),
                }),
                _ => Err(SignError::BadKey(
                    "not an uncompressed ECDSA P-256 SubjectPublicKeyInfo".into(),
                )),
            },
        }
    }

    /// A public key from a PEM `PUBLIC KEY` file (cosign.pub).
    pub fn from_pem(text: &str) -> Result<PublicKey, SignError> {
        let (label, der) = pem::decode_first(text).ok_or(SignError::NotPem {
            what: "the public key",
            label: PUBLIC_KEY_LABEL,
            hint: "give the .pub file written by `nimbus key create` or `cosign generate-key-pair`",
        })??;
        if label != PUBLIC_KEY_LABEL {
            return Err(SignError::NotPem {
                what: "the public key",
                label: PUBLIC_KEY_LABEL,
                hint: "this looks like a private key or certificate: give the .pub file",
            });
        }
        PublicKey::from_spki_der(&der)
    }

    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        der
    }

    pub fn to_pem(&self) -> String {
        pem::encode(PUBLIC_KEY_LABEL, &self.to_spki_der())
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo DER: how Nimbus names a key.
    pub fn fingerprint(&self) -> String {
        crate::sha256_digest(&self.to_spki_der())
    }

    /// Whether `signature` (ASN.1 DER) is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(message, signature)
            .is_ok()
    }
}

const P256: &str = "an ECDSA P-256 key";

/// Which algorithm a key's DER names, by the object identifiers it holds;
/// only for error messages.
fn key_algorithm(der: &[u8]) -> Option<&'static str> {
    const KNOWN: [(&[u8], &str); 6] = [
        (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07], P256),
        (&[0x2b, 0x81, 0x04, 0x00, 0x22], "an ECDSA P-384 key"),
        (&[0x2b, 0x81, 0x04, 0x00, 0x23], "an ECDSA P-521 key"),
        (&[0x2b, 0x81, 0x04, 0x00, 0x0a], "an ECDSA secp256k1 key"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x70], "an Ed25519 key"),
        (
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            "an RSA key",
        ),
    ];
    KNOWN
        .iter()
        .find(|(oid, _)| der.windows(oid.len()).any(|w| w == *oid))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters for tests that are not about the format's cost.
    fn fast() -> ScryptParams {
        ScryptParams {
            log_n: 4,
            r: 8,
            p: 1,
        }
    }

    #[test]
    fn encrypted_pem_round_trips_and_signs_verifiably() {
        let pair = KeyPair::generate().expect("generate");
        let pem = pair.to_encrypted_pem(b"hunter2", fast()).expect("seal");
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let back = KeyPair::from_encrypted_pem(&pem, b"hunter2").expect("open");
        assert_eq!(back.public_key(), pair.public_key());
        let sig = back.sign(b"payload").expect("sign");
        assert!(pair.public_key().verifies(b"payload", &sig));
        assert!(!pair.public_key().verifies(b"payloaD", &sig));
    }

    #[test]
    fn the_envelope_has_cosigns_fields_and_default_cost() {
        let pair = KeyPair::generate().expect("generate");
        let pem = pair
            .to_encrypted_pem(b"", ScryptParams::cosign())
            .expect("seal");
        let (_, json) = pem::decode_first(&pem).expect("block").expect("valid");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v["kdf"]["name"], "scrypt");
        assert_eq!(v["kdf"]["params"]["N"], 32768);
        assert_eq!(v["kdf"]["params"]["r"], 8);
        assert_eq!(v["kdf"]["params"]["p"], 1);
        assert_eq!(v["cipher"]["name"], "nacl/secretbox");
        let salt = STANDARD
            .decode(v["kdf"]["salt"].as_str().expect("salt"))
            .expect("b64");
        assert_eq!(salt.len(), SALT_BYTES);
    }

    #[test]
    fn wrong_password_is_named_as_such() {
        let pem = KeyPair::generate()
            .expect("generate")
            .to_encrypted_pem(b"right", fast())
            .expect("seal");
        let err = KeyPair::from_encrypted_pem(&pem, b"wrong").expect_err("must fail");
        assert!(matches!(err, SignError::WrongPassword), "{err}");
        assert!(err.to_string().contains("COSIGN_PASSWORD"), "{err}");
    }

    #[test]
    fn the_legacy_cosign_label_is_read() {
        let pair = KeyPair::generate().expect("generate");
        let pem = pair
            .to_encrypted_pem(b"pw", fast())
            .expect("seal")
            .replace(PRIVATE_KEY_LABEL, LEGACY_PRIVATE_KEY_LABEL);
        let back = KeyPair::from_encrypted_pem(&pem, b"pw").expect("open");
        assert_eq!(back.public_key(), pair.public_key());
    }

    #[test]
    fn hostile_envelopes_are_refused_before_any_work() {
        let pair = KeyPair::generate().expect("generate");
        let pem = pair.to_encrypted_pem(b"pw", fast()).expect("seal");
        let (_, json) = pem::decode_first(&pem).expect("block").expect("valid");
        let mut v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        v["kdf"]["params"]["N"] = serde_json::json!(1u64 << 40);
        let huge = pem::encode(PRIVATE_KEY_LABEL, v.to_string().as_bytes());
        let err = KeyPair::from_encrypted_pem(&huge, b"pw").expect_err("huge N");
        assert!(err.to_string().contains("MiB"), "{err}");
        v["kdf"]["params"]["N"] = serde_json::json!(1000);
        let odd = pem::encode(PRIVATE_KEY_LABEL, v.to_string().as_bytes());
        assert!(matches!(
            KeyPair::from_encrypted_pem(&odd, b"pw"),
            Err(SignError::BadEnvelope(_))
        ));
        let garbage = pem::encode(PRIVATE_KEY_LABEL, b"{not json");
        assert!(matches!(
            KeyPair::from_encrypted_pem(&garbage, b"pw"),
            Err(SignError::BadEnvelope(_))
        ));
    }

    #[test]
    fn a_public_key_given_as_private_key_says_so() {
        let public = KeyPair::generate().expect("generate").public_key().to_pem();
        let err = KeyPair::from_encrypted_pem(&public, b"pw").expect_err("must fail");
        assert!(err.to_string().contains("public key"), "{err}");
        let err = KeyPair::from_encrypted_pem("hello", b"pw").expect_err("must fail");
        assert!(err.to_string().contains("not a PEM file"), "{err}");
    }

    #[test]
    fn public_key_pem_round_trips_with_a_stable_fingerprint() {
        let key = KeyPair::generate().expect("generate").public_key();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let back = PublicKey::from_pem(&pem).expect("parse");
        assert_eq!(back, key);
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(key.to_spki_der().len(), 91);
    }

    #[test]
    fn non_p256_keys_are_named() {
        // An Ed25519 SubjectPublicKeyInfo (RFC 8410 example).
        let ed = STANDARD
            .decode("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
            .expect("b64");
        let err = PublicKey::from_spki_der(&ed).expect_err("ed25519");
        assert!(err.to_string().contains("Ed25519"), "{err}");
        // A P-384 SubjectPublicKeyInfo header with a point of the right length.
        let mut p384 = vec![
            0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00, 0x04,
        ];
        p384.resize(120, 7);
        let err = PublicKey::from_spki_der(&p384).expect_err("p384");
        assert!(err.to_string().contains("P-384"), "{err}");
        assert!(err.to_string().contains("nimbus key create"), "{err}");
        let err = KeyPair::from_pkcs8(&p384).expect_err("p384 private");
        assert!(matches!(err, SignError::NotP256 { .. }), "{err}");
    }
}
