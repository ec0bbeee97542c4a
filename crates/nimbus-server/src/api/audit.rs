//! Reading the audit log.

use axum::extract::{Query, State};
use axum::{Extension, Json};
use nimbus_api::{AuditRecord, ResourceList, Role};

use super::St;
use crate::auth::{self, audit::PREFIX, Caller};
use crate::error::ApiResult;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records of this project.
    pub project: Option<String>,
    /// Page size (default 500, at most 5000).
    pub limit: Option<usize>,
    /// Continue token from a previous page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// System administrators see every record; a project admin sees the
/// records of that project (pass `project`).
#[utoipa::path(get, path = "/v1/audit", operation_id = "list_audit_records", params(AuditQuery),
    responses((status = 200, body = ResourceList<AuditRecord>, description = "A page of audit records, oldest first")))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<ResourceList<AuditRecord>>> {
    match &q.project {
        Some(p) if !caller.system_admin => {
            auth::require_role(&state.repo, &caller, p, Role::Admin).await?;
        }
        _ => auth::require_system_admin(&caller)?,
    }
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    let mut start_after = q.continue_token.as_ref().map(|c| format!("{PREFIX}{c}"));
    let mut items = Vec::new();
    let mut revision;
    let mut next = None;
    loop {
        let page = state
            .repo
            .store
            .list(PREFIX, start_after.as_deref(), 1000)
            .await?;
        revision = page.revision;
        for kv in &page.kvs {
            start_after = Some(kv.key.clone());
            let Ok(rec) = serde_json::from_slice::<AuditRecord>(&kv.value) else {
                continue;
            };
            if q.project.is_none() || rec.project == q.project {
                items.push(rec);
                if items.len() == limit {
                    next = Some(kv.key[PREFIX.len()..].to_string());
                    break;
                }
            }
        }
        if next.is_some() || !page.more {
            break;
        }
    }
    Ok(Json(ResourceList {
        items,
        revision,
        next,
    }))
}
