//! The launch policy, checked again on the host before an instance starts:
//! the server checked it when the instance was created, but the policy or
//! the image may have changed since. The agent reads the project's policy
//! and the image digest's signatures with its host token and verifies
//! them itself (`nimbus_sign`), trusting no verdict of the server's.

use nimbus_api::client::{Client, ClientError};
use nimbus_api::{ErrorCode, Image, ImageSignatures, Policy};
use nimbus_sign::PublicKey;

use super::error::AgentError;

/// Ok when the project's policy admits `image`, or requires nothing.
pub async fn check(client: &Client, project: &str, image: &Image) -> Result<(), AgentError> {
    let refused = |message: String| AgentError::SignaturePolicy {
        image: image.metadata.name.clone(),
        message,
    };
    let lookup = |source: ClientError| AgentError::ImageLookup {
        name: image.metadata.name.clone(),
        source,
    };
    let policy: Policy = client
        .get(&format!("/v1/projects/{project}/policy"))
        .await
        .map_err(lookup)?;
    if !policy.spec.requires_signature() {
        return Ok(());
    }
    let keys = policy
        .spec
        .keys
        .iter()
        .map(|k| PublicKey::from_pem(&k.public_key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("a key of the policy is unreadable: {e}")))?;
    let digest = &image.status.digest;
    let tag = nimbus_sign::signature_tag(digest).map_err(|e| refused(e.to_string()))?;
    let pairs = match client
        .get::<ImageSignatures>(&format!(
            "/v1/projects/{project}/images/{}/signatures/{tag}",
            image.metadata.name
        ))
        .await
    {
        Ok(record) => {
            nimbus_sign::parse_stored_signatures(&record.spec.manifest, &record.spec.blobs)
                .map_err(|e| refused(e.to_string()))?
        }
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Vec::new(),
        Err(e) => return Err(lookup(e)),
    };
    nimbus_sign::check_signatures(digest, &pairs, &keys)
        .map(|_| ())
        .map_err(|refusal| refused(refusal.to_string()))
}
