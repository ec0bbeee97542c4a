//! Reading the audit log: a list newest first, page by page, and an export
//! of every matching record as JSON lines, oldest first. Both take the same
//! filters ([`query::AuditQuery`]).

pub mod query;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use nimbus_api::{ApiError, AuditRecord, ResourceList, Role};

use self::query::{AuditFilter, AuditQuery, QueryError};
use super::St;
use crate::auth::audit::{time_key, PREFIX};
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// Records read from the store per step.
const SCAN_BATCH: usize = 1000;

impl From<QueryError> for ServerError {
    fn from(e: QueryError) -> Self {
        ServerError(ApiError::bad_request(e.to_string()))
    }
}

/// System administrators see every record; a project admin sees the
/// records of that project (and must pass `project`); anyone else gets 403
/// (404 for a project they have no role in).
async fn authorize(state: &AppState, caller: &Caller, q: &AuditQuery) -> ApiResult<()> {
    match q.project.as_deref().filter(|p| !p.is_empty()) {
        Some(p) if !caller.system_admin => {
            auth::require_role(&state.repo, caller, p, Role::Admin).await?;
            Ok(())
        }
        _ => auth::require_system_admin(caller),
    }
}

/// A page of audit records, newest first. `continue` on the page fetches
/// the next (older) one; it is absent when no older records are left.
#[utoipa::path(get, path = "/v1/audit", operation_id = "list_audit_records", params(AuditQuery),
    responses((status = 200, body = ResourceList<AuditRecord>, description = "A page of audit records, newest first; pass its `continue` for the next page")))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<ResourceList<AuditRecord>>> {
    authorize(&state, &caller, &q).await?;
    let filter = AuditFilter::parse(&q, chrono::Utc::now())?;
    if let Some(token) = &q.continue_token {
        query::check_continue(token)?;
    }
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    // Start just before the continue token, or just after `until`.
    let mut end_before = match (&q.continue_token, filter.until) {
        (Some(token), _) => Some(format!("{PREFIX}{token}")),
        (None, Some(until)) => Some(time_key(until + chrono::Duration::nanoseconds(1))),
        (None, None) => None,
    };
    let since_key = filter.since.map(time_key);
    let mut items = Vec::new();
    let mut revision;
    let mut continue_token = None;
    'scan: loop {
        let page = state
            .repo
            .store
            .list_reverse(PREFIX, end_before.as_deref(), SCAN_BATCH)
            .await?;
        revision = page.revision;
        for (i, kv) in page.kvs.iter().enumerate() {
            if since_key.as_ref().is_some_and(|since| kv.key < *since) {
                break 'scan;
            }
            end_before = Some(kv.key.clone());
            let Ok(rec) = serde_json::from_slice::<AuditRecord>(&kv.value) else {
                continue;
            };
            if !filter.matches(&rec) {
                continue;
            }
            items.push(rec);
            if items.len() == limit {
                let older_left = page.more || i + 1 < page.kvs.len();
                let older_in_range = page
                    .kvs
                    .get(i + 1)
                    .is_none_or(|next| since_key.as_ref().is_none_or(|s| next.key >= *s));
                if older_left && older_in_range {
                    continue_token = Some(kv.key[PREFIX.len()..].to_string());
                }
                break 'scan;
            }
        }
        if !page.more {
            break;
        }
    }
    Ok(Json(ResourceList {
        items,
        revision,
        continue_token,
    }))
}

/// Every matching record as JSON lines (`application/x-ndjson`), oldest
/// first: for archives and log pipelines. `limit` and `continue` are ignored.
#[utoipa::path(get, path = "/v1/audit/export", operation_id = "export_audit_records", params(AuditQuery),
    responses((status = 200, description = "The matching audit records, one JSON `AuditRecord` per line, oldest first",
        content((AuditRecord = "application/x-ndjson")))))]
pub async fn export(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    authorize(&state, &caller, &q).await?;
    let filter = AuditFilter::parse(&q, chrono::Utc::now())?;
    // Start just before `since`; stop after `until`.
    let start_after = filter
        .since
        .map(|since| time_key(since - chrono::Duration::nanoseconds(1)));
    let stop_at = filter
        .until
        .map(|until| time_key(until + chrono::Duration::nanoseconds(1)));
    let scan = ExportScan {
        state,
        filter,
        start_after,
        stop_at,
        done: false,
    };
    let lines = futures::stream::unfold(scan, |mut scan| async move {
        let chunk = scan.next_chunk().await?;
        Some((chunk, scan))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ServerError(ApiError::internal(e.to_string())))
}

/// Where an export has got to.
struct ExportScan {
    state: Arc<AppState>,
    filter: AuditFilter,
    start_after: Option<String>,
    stop_at: Option<String>,
    done: bool,
}

impl ExportScan {
    /// The next batch of lines, `None` when the export is complete. A
    /// store error ends the stream early (the client sees a cut body).
    async fn next_chunk(&mut self) -> Option<Result<bytes::Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let page = match self
            .state
            .repo
            .store
            .list(PREFIX, self.start_after.as_deref(), SCAN_BATCH)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, "audit export stopped: could not read the store");
                self.done = true;
                return Some(Err(std::io::Error::other(e.to_string())));
            }
        };
        self.done = !page.more;
        let mut out = Vec::new();
        for kv in &page.kvs {
            if self.stop_at.as_ref().is_some_and(|stop| kv.key >= *stop) {
                self.done = true;
                break;
            }
            self.start_after = Some(kv.key.clone());
            let Ok(rec) = serde_json::from_slice::<AuditRecord>(&kv.value) else {
                continue;
            };
            if self.filter.matches(&rec) {
                if let Ok(line) = serde_json::to_vec(&rec) {
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                }
            }
        }
        Some(Ok(bytes::Bytes::from(out)))
    }
}
