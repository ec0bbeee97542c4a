//! `nimbus image sign`: a cosign signature made here, with the private key
//! that never leaves this machine, uploaded to the
//! `sha256-<hex>.sig` tag of the image's registry repository.

use std::path::Path;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use nimbus_api::{Image, SignatureAdded, SignatureUpload};
use nimbus_sign::{KeyPair, SimpleSigning};

use crate::ctx::Globals;
use crate::output::print;

pub async fn sign(
    g: &Globals,
    client: &nimbus_api::client::Client,
    name: &str,
    key_file: &Path,
) -> anyhow::Result<()> {
    let p = &g.project;
    let pem = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading the private key {}", key_file.display()))?;
    let password = super::key::password(false)?;
    let pair = KeyPair::from_encrypted_pem(&pem, password.as_bytes())
        .with_context(|| format!("opening {}", key_file.display()))?;
    let image: Image = client
        .get(&format!("/v1/projects/{p}/images/{name}"))
        .await?;
    let reference = nimbus_sign::docker_reference(p, name);
    let payload = SimpleSigning::new(&reference, &image.status.digest)
        .with_context(|| format!("image {name:?} has no manifest digest to sign"))?
        .to_bytes();
    let signature = pair.sign(&payload)?;
    let upload = SignatureUpload {
        payload: STANDARD.encode(&payload),
        signature: STANDARD.encode(&signature),
        public_key: pair.public_key().to_pem(),
    };
    let added: SignatureAdded = client
        .post(
            &format!("/v1/projects/{p}/images/{name}/signatures"),
            &upload,
        )
        .await?;
    print(g, &added, || {
        format!(
            "image {name:?} ({}) signed with key {}; {} signature(s) under {}",
            added.digest, added.key_fingerprint, added.signatures, added.tag
        )
    })
}
