//! The API servers sharing the store and which one leads.

use axum::extract::State;
use axum::{Extension, Json};
use nimbus_api::{ApiError, ServerList, ServerVersion};

use super::St;
use crate::auth::Caller;
use crate::error::{ApiResult, ServerError};

#[utoipa::path(get, path = "/v1/servers", operation_id = "list_servers", tag = "system",
    responses((status = 200, body = ServerList, description = "Every live server sharing the store, the leader (which runs the scheduler and the controllers) and the server that answered (system administrators and host agents)")))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<ServerList>> {
    if !caller.system_admin && !caller.is_host_agent() {
        return Err(ServerError(ApiError::forbidden(
            "the server list is visible to system administrators only",
        )));
    }
    Ok(Json(crate::cluster::servers::list(&state).await?))
}

#[utoipa::path(get, path = "/v1/version", operation_id = "server_version", tag = "system",
    responses((status = 200, body = ServerVersion, description = "The answering server's release and protocol level, and the agent protocol levels it accepts (any caller)")))]
pub async fn version(State(state): St) -> Json<ServerVersion> {
    Json(ServerVersion::current(&state.config.server_name))
}
