//! The API servers sharing one store, and which of them leads (runs the
//! controllers and the scheduler).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a server records about itself in the store while it runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServerRecord {
    /// Unique among the servers on the store (`--server-name`).
    pub name: String,
    /// Where it serves the API over TLS, e.g. `https://10.0.0.1:7443`;
    /// empty when it serves only its local socket.
    #[serde(default)]
    pub endpoint: String,
    /// The version of its `nimbus` binary.
    pub version: String,
    /// Its protocol level (`nimbus_api::version`); 0 from servers older
    /// than protocol levels.
    #[serde(default)]
    pub protocol: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// One server as `GET /v1/servers` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServerInfo {
    #[serde(flatten)]
    pub record: ServerRecord,
    /// This server runs the controllers and the scheduler.
    pub leader: bool,
}

/// `GET /v1/servers`: every live server and the leader's name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServerList {
    pub items: Vec<ServerInfo>,
    /// The leader's name; absent while an election is under way.
    pub leader: Option<String>,
    /// The server that answered this request.
    pub answered_by: String,
}
