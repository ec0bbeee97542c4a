//! The agent's side of the version-skew rule (`nimbus_api::version`): at
//! start it asks the servers for their release and protocol level and
//! refuses to run beside servers more than one level away. The servers
//! check the other direction on every registration and heartbeat.

use nimbus_api::client::{Client, ClientError};
use nimbus_api::version::{check_agent_skew, SkewError};
use nimbus_api::{BuildVersion, ErrorCode, ServerVersion};

/// What the agent makes of the servers' answer to `GET /v1/version`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within one level: run.
    Compatible(BuildVersion),
    /// Further apart: refuse to start, with the error saying what to upgrade.
    Refused(SkewError),
    /// No answer yet (servers unreachable, or another failure): run and
    /// let the servers check at registration.
    Unknown(String),
}

/// Decides from the answer; a server without `/v1/version` is older than
/// protocol levels (level 0).
pub fn verdict(host: &str, answer: Result<ServerVersion, ClientError>) -> Verdict {
    let server = match answer {
        Ok(v) => v.build,
        Err(e) if e.code() == Some(ErrorCode::NotFound) => BuildVersion {
            release: "before 0.1".to_string(),
            protocol: 0,
        },
        Err(e) => return Verdict::Unknown(e.to_string()),
    };
    match check_agent_skew(host, &BuildVersion::current(), &server) {
        Ok(()) => Verdict::Compatible(server),
        Err(e) => Verdict::Refused(e),
    }
}

/// Asks the servers and refuses (an error saying which to upgrade) when
/// they are more than one protocol level away.
pub async fn check_servers(client: &Client, host: &str) -> Result<(), SkewError> {
    let answer = client.get::<ServerVersion>("/v1/version").await;
    match verdict(host, answer) {
        Verdict::Compatible(server) => {
            tracing::info!(host, agent = %BuildVersion::current(), servers = %server, "the servers' protocol level works with this agent's");
            Ok(())
        }
        Verdict::Refused(e) => Err(e),
        Verdict::Unknown(why) => {
            tracing::warn!(error = %why, "cannot ask the servers for their version yet; they check this agent's at registration");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::version::PROTOCOL_LEVEL;
    use nimbus_api::ApiError;

    fn server_at(protocol: u32) -> Result<ServerVersion, ClientError> {
        let mut v = ServerVersion::current("s1");
        v.build.protocol = protocol;
        v.build.release = format!("9.{protocol}.0");
        Ok(v)
    }

    #[test]
    fn servers_one_level_ahead_or_behind_are_accepted() {
        for level in [PROTOCOL_LEVEL - 1, PROTOCOL_LEVEL, PROTOCOL_LEVEL + 1] {
            assert!(
                matches!(verdict("h", server_at(level)), Verdict::Compatible(_)),
                "level {level}"
            );
        }
    }

    #[test]
    fn servers_two_levels_ahead_make_the_agent_refuse_and_say_to_upgrade_it() {
        match verdict("node7", server_at(PROTOCOL_LEVEL + 2)) {
            Verdict::Refused(e) => {
                assert!(e.to_string().contains("upgrade this host's agent"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn servers_without_a_version_route_are_taken_as_level_zero() {
        let missing = Err(ClientError::Api(ApiError::not_found("no API route")));
        assert!(
            matches!(verdict("h", missing), Verdict::Compatible(ref v) if v.protocol == 0),
            "level {PROTOCOL_LEVEL} works with level 0"
        );
    }

    #[test]
    fn unreachable_servers_do_not_stop_the_agent() {
        let down = Err(ClientError::Http {
            endpoint: "https://10.0.0.1:7443".into(),
            message: "connection refused".into(),
        });
        assert!(matches!(verdict("h", down), Verdict::Unknown(_)));
    }
}
