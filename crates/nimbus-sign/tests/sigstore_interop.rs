//! Interoperability with an independent cosign implementation: the
//! `sigstore` crate (sigstore-rs) reads what Nimbus writes and Nimbus reads
//! what it writes: encrypted private keys, public keys, and signatures over
//! the simple-signing payload, also as they sit in a `.sig` manifest layer.
//!
//! The cosign binary is not available on these machines; sigstore-rs is
//! the cosign format's other implementation we can run.

use nimbus_sign::{
    check_signatures, parse_signature_manifest, KeyPair, PublicKey, ScryptParams,
    SignatureManifest, SignaturePair, SimpleSigning,
};
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};

const DIGEST: &str = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";
const PASSWORD: &[u8] = b"correct horse";

fn payload() -> Vec<u8> {
    SimpleSigning::new("127.0.0.1:7443/ops/app", DIGEST)
        .expect("payload")
        .to_bytes()
}

#[test]
fn sigstore_opens_a_nimbus_private_key_and_derives_the_same_public_key() {
    let ours = KeyPair::generate().expect("generate");
    let pem = ours
        .to_encrypted_pem(PASSWORD, ScryptParams::cosign())
        .expect("seal");
    let theirs = SigStoreKeyPair::from_encrypted_pem(pem.as_bytes(), PASSWORD)
        .expect("sigstore opens the key nimbus wrote");
    let their_public = theirs.public_key_to_pem().expect("public pem");
    assert_eq!(
        PublicKey::from_pem(&their_public).expect("nimbus reads it"),
        ours.public_key()
    );
    assert!(SigStoreKeyPair::from_encrypted_pem(pem.as_bytes(), b"wrong").is_err());
}

#[test]
fn nimbus_opens_a_sigstore_private_key_and_signs_verifiably() {
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .expect("sigstore key");
    let theirs = signer.to_sigstore_keypair().expect("key pair");
    let pem = theirs
        .private_key_to_encrypted_pem(PASSWORD)
        .expect("sigstore seals");
    let ours = KeyPair::from_encrypted_pem(&pem, PASSWORD).expect("nimbus opens sigstore's key");
    let their_public = theirs.public_key_to_pem().expect("public pem");
    assert_eq!(
        ours.public_key(),
        PublicKey::from_pem(&their_public).expect("public")
    );
    let err = KeyPair::from_encrypted_pem(&pem, b"wrong").expect_err("wrong password");
    assert!(err.to_string().contains("wrong password"), "{err}");
}

#[test]
fn sigstore_verifies_a_nimbus_signature_over_a_nimbus_payload() {
    let ours = KeyPair::generate().expect("generate");
    let payload = payload();
    let signature = ours.sign(&payload).expect("sign");
    let key = CosignVerificationKey::from_pem(
        ours.public_key().to_pem().as_bytes(),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .expect("sigstore reads the nimbus public key");
    key.verify_signature(Signature::Raw(&signature), &payload)
        .expect("sigstore accepts the nimbus signature");
    // The base64 form stored in the `.sig` layer's annotation, too.
    let b64 = base64_of(&signature);
    key.verify_signature(Signature::Base64Encoded(b64.as_bytes()), &payload)
        .expect("sigstore accepts the annotation's base64");
    assert!(key
        .verify_signature(Signature::Raw(&signature), b"another payload")
        .is_err());
}

#[test]
fn nimbus_accepts_a_signature_made_by_sigstore_and_refuses_it_for_another_digest() {
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .expect("sigstore key");
    let public_pem = signer
        .to_sigstore_keypair()
        .expect("key pair")
        .public_key_to_pem()
        .expect("public pem");
    let key = PublicKey::from_pem(&public_pem).expect("nimbus reads sigstore's public key");
    let payload = payload();
    let signature = signer.sign(&payload).expect("sigstore signs");
    // Through a `.sig` manifest, as the policy reads signatures.
    let manifest = SignatureManifest::build(&[SignaturePair {
        payload,
        signature,
        signer: None,
    }])
    .expect("manifest");
    let pairs = parse_signature_manifest(&manifest.manifest, |d| manifest.blobs.get(d).cloned())
        .expect("parse");
    let accepted = check_signatures(DIGEST, &pairs, std::slice::from_ref(&key))
        .expect("nimbus accepts sigstore's signature");
    assert_eq!(accepted.key_fingerprint, key.fingerprint());
    let other = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    assert!(check_signatures(other, &pairs, &[key]).is_err());
}

#[test]
fn a_nimbus_sig_manifest_layer_verifies_with_sigstore() {
    let ours = KeyPair::generate().expect("generate");
    let payload = payload();
    let manifest = SignatureManifest::build(&[SignaturePair {
        signature: ours.sign(&payload).expect("sign"),
        payload,
        signer: Some(ours.public_key().fingerprint()),
    }])
    .expect("manifest");
    // Read the layer back as any cosign client does: the payload blob by
    // the layer's digest, the signature from the annotation.
    let v: serde_json::Value = serde_json::from_slice(&manifest.manifest).expect("json");
    let layer = &v["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let blob = &manifest.blobs[layer["digest"].as_str().expect("digest")];
    let sig = layer["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .expect("annotation");
    let key = CosignVerificationKey::from_pem(
        ours.public_key().to_pem().as_bytes(),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .expect("key");
    key.verify_signature(Signature::Base64Encoded(sig.as_bytes()), blob)
        .expect("sigstore accepts the layer");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
