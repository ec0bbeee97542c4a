//! The store side of host I/O tickets (`nimbus_api::hostio::ticket`): the
//! server issues one per call to a host's I/O endpoint; the host's agent
//! consumes it, which deletes it, so it serves once.

use chrono::{DateTime, Utc};
use nimbus_api::hostio::ticket::{self, HostIoAction, HostIoTicket, TicketRefusal};
use nimbus_api::{ApiError, Instance};
use nimbus_store::{Store, StoreError};
use rand::RngCore;

use crate::error::{ApiResult, ServerError};

fn key(host: &str, id: &str) -> String {
    format!("{}{id}", ticket::store_prefix(host))
}

/// Store a ticket for `action` on `instance` at `host`; its id, to send
/// along with the call.
pub async fn issue(
    store: &dyn Store,
    host: &str,
    action: HostIoAction,
    instance: Option<&Instance>,
) -> ApiResult<String> {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let id = hex::encode(secret);
    let t = HostIoTicket::new(host, action, instance.cloned(), Utc::now());
    let value = serde_json::to_vec(&t).map_err(|e| ApiError::internal(e.to_string()))?;
    store.create(&key(host, &id), value).await?;
    sweep_expired(store, host, Utc::now()).await;
    Ok(id)
}

/// Delete `host`'s tickets that expired unused (their host never asked
/// for them, say it crashed meanwhile). Best effort: a failure leaves them
/// for the next call.
async fn sweep_expired(store: &dyn Store, host: &str, now: DateTime<Utc>) {
    let Ok(page) = store.list(&ticket::store_prefix(host), None, 0).await else {
        return;
    };
    for kv in page.kvs {
        let expired =
            serde_json::from_slice::<HostIoTicket>(&kv.value).map_or(true, |t| t.expires_at < now);
        if expired {
            let _ = store.delete(&kv.key, Some(kv.mod_revision)).await;
        }
    }
}

/// Drop a ticket whose call never reached its host (best effort: an
/// unconsumed ticket only expires).
pub async fn revoke(store: &dyn Store, host: &str, id: &str) {
    let _ = store.delete(&key(host, id), None).await;
}

/// Host `caller` consumes ticket `id` of `host` at `now`: deleted in the
/// same step it is read, so of two uses one fails. Refused if it is not
/// the caller's own, unknown (used, never made) or expired.
pub async fn consume(
    store: &dyn Store,
    caller: &str,
    host: &str,
    id: &str,
    now: DateTime<Utc>,
) -> ApiResult<HostIoTicket> {
    if caller != host {
        return Err(refused(TicketRefusal::OtherHost {
            ticket: host.to_string(),
            caller: caller.to_string(),
        }));
    }
    if !ticket::valid_ticket_id(id) {
        return Err(refused(TicketRefusal::Unknown));
    }
    let kv = match store.delete(&key(host, id), None).await {
        Ok(kv) => kv,
        Err(StoreError::NotFound(_)) => return Err(refused(TicketRefusal::Unknown)),
        Err(e) => return Err(e.into()),
    };
    let t: HostIoTicket = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored host I/O ticket: {e}")))?;
    t.check_consumer(caller, now).map_err(refused)?;
    Ok(t)
}

fn refused(why: TicketRefusal) -> ServerError {
    let what = format!("{why}; the server issues a new one for each call");
    ServerError(match why {
        TicketRefusal::OtherHost { .. } => ApiError::forbidden(what),
        _ => ApiError::not_found(what),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::ErrorCode;

    fn store() -> nimbus_store::SqliteStore {
        nimbus_store::SqliteStore::open_in_memory().expect("store")
    }

    fn code(r: ApiResult<HostIoTicket>) -> ErrorCode {
        r.expect_err("must be refused").0.code
    }

    #[tokio::test]
    async fn a_ticket_is_consumed_once_by_its_own_host() {
        let s = store();
        let id = issue(&s, "h1", HostIoAction::Listeners, None)
            .await
            .expect("issue");
        let now = Utc::now();
        assert_eq!(
            code(consume(&s, "h2", "h1", &id, now).await),
            ErrorCode::Forbidden,
            "another host's credential"
        );
        let t = consume(&s, "h1", "h1", &id, now).await.expect("first use");
        assert_eq!(t.action, HostIoAction::Listeners);
        assert_eq!(
            code(consume(&s, "h1", "h1", &id, now).await),
            ErrorCode::NotFound,
            "a replayed ticket"
        );
    }

    #[tokio::test]
    async fn expired_forged_and_revoked_tickets_are_refused() {
        let s = store();
        let id = issue(&s, "h1", HostIoAction::Listeners, None)
            .await
            .expect("issue");
        let later = Utc::now() + chrono::Duration::seconds(ticket::TICKET_TTL_SECS + 5);
        assert_eq!(
            code(consume(&s, "h1", "h1", &id, later).await),
            ErrorCode::NotFound
        );
        let forged = "ab".repeat(32);
        assert_eq!(
            code(consume(&s, "h1", "h1", &forged, Utc::now()).await),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(consume(&s, "h1", "h1", "nmb_some_user_token", Utc::now()).await),
            ErrorCode::NotFound
        );
        let id = issue(&s, "h1", HostIoAction::Listeners, None)
            .await
            .expect("issue");
        revoke(&s, "h1", &id).await;
        // Expired tickets left unused are swept when the next is issued.
        sweep_expired(&s, "h1", later).await;
        let left = s
            .list(&ticket::store_prefix("h1"), None, 0)
            .await
            .expect("list");
        assert!(left.kvs.is_empty(), "{} tickets left", left.kvs.len());
        assert_eq!(
            code(consume(&s, "h1", "h1", &id, Utc::now()).await),
            ErrorCode::NotFound
        );
    }
}
