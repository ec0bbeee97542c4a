//! A project's usage per hour (`crate::usage`): instance-hours by kind,
//! vCPU-hours, memory-GiB-hours, image and object GiB-hours over a window. Readers
//! of the project and above see it; a caller with no role in the project
//! gets 404.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use chrono::Utc;
use nimbus_api::{ApiError, Role, UsageReport};

use super::params::ProjectPath;
use super::St;
use crate::auth::{self, Caller};
use crate::domain::usage::aggregate;
use crate::error::{ApiResult, ServerError};

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start of the window: `YYYY-MM-DD` (midnight UTC) or an RFC 3339
    /// time. Default: midnight UTC today.
    pub from: Option<String>,
    /// End of the window (excluded), as `from`. Default: a day after `from`.
    pub to: Option<String>,
}

/// Every hour of `[from, to)`, oldest first, and the window's totals.
/// Instances count while their workload runs (from the start to the end
/// the agent reports); images while they are stored; S3 objects from
/// their Last-Modified second until overwritten or deleted. Running
/// instances and stored images and objects count up to now. `image_bytes`
/// is what the project's images hold now (its `image_bytes` quota's count).
#[utoipa::path(get, tag = "usage", path = "/v1/projects/{project}/usage", operation_id = "get_usage", params(ProjectPath, UsageQuery),
    responses((status = 200, body = UsageReport, description = "The project's usage in each hour of the window, and its totals")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    let now = Utc::now();
    let (from, to) = aggregate::window(q.from.as_deref(), q.to.as_deref(), now)
        .map_err(|e| ServerError(ApiError::bad_request(e.to_string())))?;
    let mut records = crate::usage::records_before(&state.repo, &project, to).await?;
    records.extend(crate::usage::objects::live_objects(&state.repo, &project, to).await?);
    let mut report = aggregate::report(&project, &records, from, to, now);
    report.image_bytes = crate::image_quota::usage(&state, &project).await?.total();
    Ok(Json(report))
}
