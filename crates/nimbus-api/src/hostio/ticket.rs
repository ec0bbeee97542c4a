//! One-time tickets for a host's I/O endpoint.
//!
//! The server that checked a user's right to read logs or exec in an
//! instance writes a ticket under `/hostio/tickets/<host>/<id>` naming the
//! action and the instance, valid [`TICKET_TTL_SECS`]; it hands the id to
//! the instance's host with the call. The host's agent consumes the ticket
//! with its own host credential (the store deletes it in the same step, so
//! it serves one call) and checks that it allows what is asked. No user
//! token or host credential opens the endpoint: only a ticket does.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Instance;

/// How long a ticket may wait for its call.
pub const TICKET_TTL_SECS: i64 = 30;
/// The request header that carries the ticket id to the host.
pub const TICKET_HEADER: &str = "x-nimbus-hostio-ticket";
/// Where the store keeps the tickets of `host`.
pub fn store_prefix(host: &str) -> String {
    format!("/hostio/tickets/{host}/")
}

/// What a ticket lets its call do.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostIoAction {
    Logs,
    Exec,
    Console,
    Pause,
    Resume,
    /// Which host services listen on a port (no instance).
    Listeners,
}

impl HostIoAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HostIoAction::Logs => "logs",
            HostIoAction::Exec => "exec",
            HostIoAction::Console => "console",
            HostIoAction::Pause => "pause",
            HostIoAction::Resume => "resume",
            HostIoAction::Listeners => "listeners",
        }
    }
}

/// A consumed ticket, as the server hands it to the host's agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HostIoTicket {
    /// The host whose agent may consume it.
    pub host: String,
    pub action: HostIoAction,
    /// The instance it is for (none for `listeners`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    pub expires_at: DateTime<Utc>,
}

/// Why a ticket does not allow a call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketRefusal {
    #[error("no such host I/O ticket: it was already used, expired or never made")]
    Unknown,
    #[error("the host I/O ticket expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the host I/O ticket is for host {ticket:?}, not {caller:?}")]
    OtherHost { ticket: String, caller: String },
    #[error("the host I/O ticket allows {allowed}, not {asked}")]
    OtherAction { allowed: String, asked: String },
    #[error("the host I/O ticket is for another instance")]
    OtherInstance,
}

impl HostIoTicket {
    pub fn new(
        host: &str,
        action: HostIoAction,
        instance: Option<Instance>,
        now: DateTime<Utc>,
    ) -> HostIoTicket {
        HostIoTicket {
            host: host.to_string(),
            action,
            instance,
            expires_at: now + Duration::seconds(TICKET_TTL_SECS),
        }
    }

    /// The server's check when host `caller` consumes the ticket at `now`.
    pub fn check_consumer(&self, caller: &str, now: DateTime<Utc>) -> Result<(), TicketRefusal> {
        if self.host != caller {
            return Err(TicketRefusal::OtherHost {
                ticket: self.host.clone(),
                caller: caller.to_string(),
            });
        }
        if self.expires_at < now {
            return Err(TicketRefusal::Expired(self.expires_at));
        }
        Ok(())
    }

    /// The agent's check that the ticket allows `asked` on the instance
    /// with id `instance_id` (none for `listeners`).
    pub fn check_allows(
        &self,
        asked: HostIoAction,
        instance_id: Option<&str>,
    ) -> Result<(), TicketRefusal> {
        if self.action != asked {
            return Err(TicketRefusal::OtherAction {
                allowed: self.action.as_str().into(),
                asked: asked.as_str().into(),
            });
        }
        let ticket_instance = self.instance.as_ref().map(|i| i.metadata.id.as_str());
        if ticket_instance != instance_id {
            return Err(TicketRefusal::OtherInstance);
        }
        Ok(())
    }
}

/// A ticket id as the server makes them: 64 lowercase hex digits. Anything
/// else is refused before the store is asked.
pub fn valid_ticket_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Instance {
        let mut metadata = crate::Metadata::new("web", Some("ops"));
        metadata.id = id.to_string();
        Instance {
            metadata,
            spec: Default::default(),
            status: Default::default(),
        }
    }

    #[test]
    fn a_ticket_serves_its_host_until_it_expires() {
        let now = Utc::now();
        let t = HostIoTicket::new("h1", HostIoAction::Logs, Some(instance("i1")), now);
        assert_eq!(t.check_consumer("h1", now), Ok(()));
        assert_eq!(
            t.check_consumer("h1", now + Duration::seconds(TICKET_TTL_SECS + 1)),
            Err(TicketRefusal::Expired(t.expires_at))
        );
        assert!(matches!(
            t.check_consumer("h2", now),
            Err(TicketRefusal::OtherHost { .. })
        ));
    }

    #[test]
    fn a_ticket_allows_only_its_action_on_its_instance() {
        let t = HostIoTicket::new("h1", HostIoAction::Exec, Some(instance("i1")), Utc::now());
        assert_eq!(t.check_allows(HostIoAction::Exec, Some("i1")), Ok(()));
        assert!(matches!(
            t.check_allows(HostIoAction::Console, Some("i1")),
            Err(TicketRefusal::OtherAction { .. })
        ));
        assert_eq!(
            t.check_allows(HostIoAction::Exec, Some("i2")),
            Err(TicketRefusal::OtherInstance)
        );
        assert_eq!(
            t.check_allows(HostIoAction::Exec, None),
            Err(TicketRefusal::OtherInstance)
        );
        let l = HostIoTicket::new("h1", HostIoAction::Listeners, None, Utc::now());
        assert_eq!(l.check_allows(HostIoAction::Listeners, None), Ok(()));
    }

    #[test]
    fn only_well_formed_ids_are_asked_for() {
        assert!(valid_ticket_id(&"a1".repeat(32)));
        assert!(!valid_ticket_id("nmb_user_token"));
        assert!(!valid_ticket_id(&"A1".repeat(32)));
        assert!(!valid_ticket_id(&"a1".repeat(33)));
    }
}
