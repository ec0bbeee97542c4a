//! A project's launch policy: `/v1/projects/{project}/policy` (signatures
//! by trusted keys, the highest vulnerability severity).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use nimbus_api::{
    ApiError, Metadata, Policy, PolicySpec, PolicyUpdate, Role, TrustedKey, POLICY_NAME,
};
use nimbus_sign::PublicKey;

use super::body::JsonBody;
use super::params::ProjectPath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};

#[utoipa::path(get, path = "/v1/projects/{project}/policy", operation_id = "get_policy", tag = "policies", params(ProjectPath),
    responses((status = 200, body = Policy, description = "The project's launch policy (empty when none was set)")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Policy>> {
    auth::require_host_or_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(
        crate::signatures::policy(&state.repo, &project).await?,
    ))
}

#[utoipa::path(put, path = "/v1/projects/{project}/policy", operation_id = "set_policy", tag = "policies", params(ProjectPath), request_body = PolicyUpdate,
    responses((status = 200, body = Policy, description = "The policy as stored"),
        (status = 422, description = "A key is not an ECDSA P-256 public key, a removed key is not in the policy, or a signature is required with no key to check it")))]
pub async fn set(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(update): JsonBody<PolicyUpdate>,
) -> ApiResult<Json<Policy>> {
    auth::require_role(&state.repo, &caller, &project, Role::Admin).await?;
    let added = checked_keys(&update.add_keys)?;
    let fresh = || Policy {
        metadata: Metadata::new(POLICY_NAME, Some(&project)),
        spec: PolicySpec::default(),
    };
    let stored = state
        .repo
        .modify_or_create(Some(&project), POLICY_NAME, fresh, |policy: &mut Policy| {
            apply(&mut policy.spec, &update, &added)
        })
        .await?;
    Ok(Json(stored))
}

/// Parse every key; the fingerprint is always the server's own.
fn checked_keys(keys: &[TrustedKey]) -> ApiResult<Vec<TrustedKey>> {
    keys.iter()
        .map(|k| {
            let key = PublicKey::from_pem(&k.public_key).map_err(|e| {
                ApiError::invalid(format!(
                    "key {:?} cannot be trusted: {e}",
                    if k.source.is_empty() {
                        "given"
                    } else {
                        &k.source
                    }
                ))
            })?;
            Ok(TrustedKey {
                fingerprint: key.fingerprint(),
                public_key: key.to_pem(),
                source: k.source.clone(),
            })
        })
        .collect()
}

/// Merge an update into a policy; refuses a policy that would require a
/// signature no key can check.
fn apply(spec: &mut PolicySpec, update: &PolicyUpdate, added: &[TrustedKey]) -> ApiResult<()> {
    for fingerprint in &update.remove_keys {
        let before = spec.keys.len();
        spec.keys.retain(|k| &k.fingerprint != fingerprint);
        if spec.keys.len() == before {
            return Err(ServerError(ApiError::invalid(format!(
                "key {fingerprint} is not in the policy; `nimbus policy get` lists the keys by fingerprint"
            ))));
        }
    }
    for key in added {
        if !spec.keys.iter().any(|k| k.fingerprint == key.fingerprint) {
            spec.keys.push(key.clone());
        }
    }
    if update.require_signature.is_some() {
        spec.require_signature = update.require_signature;
    }
    if update.clear_max_severity {
        spec.max_severity = None;
    }
    if update.max_severity.is_some() {
        spec.max_severity = update.max_severity;
    }
    if spec.requires_signature() && spec.keys.is_empty() {
        return Err(ServerError(ApiError::invalid(
            "a signature cannot be required with no key to check it: add one with `nimbus policy set --require-signature --key FILE.pub`",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TrustedKey {
        TrustedKey {
            fingerprint: String::new(),
            public_key: nimbus_sign::KeyPair::generate()
                .expect("key")
                .public_key()
                .to_pem(),
            source: "ops.pub".into(),
        }
    }

    #[test]
    fn keys_are_added_once_by_fingerprint_and_removed_by_it() {
        let mut spec = PolicySpec::default();
        let added = checked_keys(&[key()]).expect("valid key");
        let update = PolicyUpdate {
            require_signature: Some(true),
            ..Default::default()
        };
        apply(&mut spec, &update, &added).expect("apply");
        apply(&mut spec, &update, &added).expect("again");
        assert_eq!(spec.keys.len(), 1);
        assert!(spec.keys[0].fingerprint.starts_with("sha256:"));
        let remove = PolicyUpdate {
            require_signature: Some(false),
            remove_keys: vec![spec.keys[0].fingerprint.clone()],
            ..Default::default()
        };
        apply(&mut spec, &remove, &[]).expect("remove");
        assert!(spec.keys.is_empty());
        assert_eq!(spec.require_signature, Some(false));
    }

    #[test]
    fn the_severity_rule_is_set_cleared_and_left_alone_by_other_changes() {
        let mut spec = PolicySpec::default();
        let high = PolicyUpdate {
            max_severity: Some(nimbus_api::Severity::High),
            ..Default::default()
        };
        apply(&mut spec, &high, &[]).expect("set");
        assert_eq!(spec.max_severity, Some(nimbus_api::Severity::High));
        let added = checked_keys(&[key()]).expect("valid key");
        let signed = PolicyUpdate {
            require_signature: Some(true),
            ..Default::default()
        };
        apply(&mut spec, &signed, &added).expect("keys");
        assert_eq!(spec.max_severity, Some(nimbus_api::Severity::High));
        let clear = PolicyUpdate {
            clear_max_severity: true,
            ..Default::default()
        };
        apply(&mut spec, &clear, &[]).expect("clear");
        assert_eq!(spec.max_severity, None);
        assert!(spec.requires_signature());
    }

    #[test]
    fn bad_updates_are_refused_with_the_next_step() {
        let mut spec = PolicySpec::default();
        let err = apply(
            &mut spec,
            &PolicyUpdate {
                require_signature: Some(true),
                ..Default::default()
            },
            &[],
        )
        .expect_err("no key");
        assert!(err.0.message.contains("--key"), "{}", err.0.message);
        let bad = TrustedKey {
            public_key: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            ..key()
        };
        let err = checked_keys(&[bad]).expect_err("bad key");
        assert!(err.0.message.contains("ops.pub"), "{}", err.0.message);
        let err = apply(
            &mut spec,
            &PolicyUpdate {
                remove_keys: vec!["sha256:nope".into()],
                ..Default::default()
            },
            &[],
        )
        .expect_err("unknown key");
        assert!(
            err.0.message.contains("nimbus policy get"),
            "{}",
            err.0.message
        );
    }
}
