//! A host's agent consumes the one-time ticket a server sent along with a
//! call to its I/O endpoint (see `hostio::tickets`).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use nimbus_api::hostio::ticket::HostIoTicket;
use nimbus_api::ApiError;
use utoipa::IntoParams;

use super::St;
use crate::auth::Caller;
use crate::error::{ApiResult, ServerError};

/// `{host}` and the `{ticket}` id.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TicketPath {
    /// Host name.
    pub host: String,
    /// The ticket id the server sent with the call (64 hex digits).
    pub ticket: String,
}

#[utoipa::path(post, path = "/v1/hosts/{host}/io-tickets/{ticket}", operation_id = "consume_host_io_ticket", tag = "hosts", params(TicketPath),
    responses((status = 200, body = HostIoTicket, description = "The ticket, now deleted: the action and instance the call may serve"),
        (status = 403, description = "Not this host's own credential (only a host's agent may consume its tickets)"),
        (status = 404, description = "No such ticket: already used, expired or never made")))]
pub async fn consume(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((host, ticket)): Path<(String, String)>,
) -> ApiResult<Json<HostIoTicket>> {
    let Some(caller_host) = caller.host.as_deref() else {
        return Err(ServerError(ApiError::forbidden(
            "only a host's agent consumes host I/O tickets, with its own host credential",
        )));
    };
    let consumed = crate::hostio::tickets::consume(
        state.repo.store.as_ref(),
        caller_host,
        &host,
        &ticket,
        chrono::Utc::now(),
    )
    .await?;
    Ok(Json(consumed))
}
