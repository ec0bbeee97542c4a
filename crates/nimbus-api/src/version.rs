//! What "version" means between Nimbus's servers and agents, and the skew
//! rule they enforce on each other during a rolling upgrade.
//!
//! A build has two versions:
//! - its release, the crate version (`0.1.0`), shown to people;
//! - its protocol level, [`PROTOCOL_LEVEL`], an integer bumped by one in
//!   every release that changes what travels between servers and agents
//!   (API bodies, stored resources they both read). Releases that change
//!   neither keep the level.
//!
//! The rule: two components whose levels differ by at most one work
//! together; further apart they refuse each other. Servers are upgraded
//! first, then agents, so the usual skew is servers one level ahead.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// This build's release (the crate version).
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// This build's protocol level (see the module's docs). Level 0 stands for
/// builds older than the level itself (they report none).
pub const PROTOCOL_LEVEL: u32 = 1;

/// How far apart two protocol levels may be and still work together.
pub const MAX_LEVEL_SKEW: u32 = 1;

/// A component's versions, as it reports them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct BuildVersion {
    /// The release, e.g. `0.1.0`.
    pub release: String,
    /// The protocol level (0: a build older than protocol levels).
    pub protocol: u32,
}

/// What the running executable was stamped with at build time, if
/// anything (see [`stamp`]).
static STAMPED: std::sync::OnceLock<BuildVersion> = std::sync::OnceLock::new();

/// Makes this process report `release` and `protocol` instead of the
/// source's [`RELEASE`] and [`PROTOCOL_LEVEL`]. The `nimbus` executable
/// calls it first thing with what its builder set in
/// `NIMBUS_BUILD_RELEASE` / `NIMBUS_BUILD_PROTOCOL`: a packager's release
/// string (`0.1.0+deb12u1`), or `scripts/build-next`'s stand-in for the
/// next release. Only the first call counts.
pub fn stamp(release: Option<&str>, protocol: Option<u32>) {
    if release.is_some() || protocol.is_some() {
        let _ = STAMPED.set(BuildVersion {
            release: release.unwrap_or(RELEASE).to_string(),
            protocol: protocol.unwrap_or(PROTOCOL_LEVEL),
        });
    }
}

impl BuildVersion {
    /// This build: the source's release and level, or what the executable
    /// was stamped with ([`stamp`]).
    pub fn current() -> BuildVersion {
        STAMPED.get().cloned().unwrap_or_else(|| BuildVersion {
            release: RELEASE.to_string(),
            protocol: PROTOCOL_LEVEL,
        })
    }
}

impl std::fmt::Display for BuildVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (protocol {})", self.release, self.protocol)
    }
}

/// `GET /v1/version`: the answering server's build and the agent levels
/// it accepts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServerVersion {
    /// The server that answered.
    pub server: String,
    #[serde(flatten)]
    pub build: BuildVersion,
    /// The lowest agent protocol level this server accepts.
    pub min_agent_protocol: u32,
    /// The highest agent protocol level this server accepts.
    pub max_agent_protocol: u32,
}

impl ServerVersion {
    pub fn current(server: &str) -> ServerVersion {
        let (min, max) = accepted_levels(PROTOCOL_LEVEL);
        ServerVersion {
            server: server.to_string(),
            build: BuildVersion::current(),
            min_agent_protocol: min,
            max_agent_protocol: max,
        }
    }
}

/// The levels a component at `level` works with.
pub fn accepted_levels(level: u32) -> (u32, u32) {
    (
        level.saturating_sub(MAX_LEVEL_SKEW),
        level.saturating_add(MAX_LEVEL_SKEW),
    )
}

/// Why a server and an agent refuse each other.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error("the agent of host {host:?} runs nimbus {agent}, the servers run {server}: protocol levels more than {MAX_LEVEL_SKEW} apart do not work together; upgrade the servers first, one release at a time, to within one level of this agent (see docs/operations.md)")]
    AgentTooNew {
        host: String,
        agent: BuildVersion,
        server: BuildVersion,
    },
    #[error("the agent of host {host:?} runs nimbus {agent}, the servers run {server}: protocol levels more than {MAX_LEVEL_SKEW} apart do not work together; upgrade this host's agent to the servers' release (see docs/operations.md)")]
    AgentTooOld {
        host: String,
        agent: BuildVersion,
        server: BuildVersion,
    },
}

/// Whether the agent of `host` at `agent` and a server at `server` may work
/// together: levels at most [`MAX_LEVEL_SKEW`] apart. The error says which
/// side to upgrade: servers go first, so a too-new agent waits for them and
/// a too-old agent is the one to upgrade.
pub fn check_agent_skew(
    host: &str,
    agent: &BuildVersion,
    server: &BuildVersion,
) -> Result<(), SkewError> {
    let (min, max) = accepted_levels(server.protocol);
    let (host, agent, server) = (host.to_string(), agent.clone(), server.clone());
    if agent.protocol > max {
        Err(SkewError::AgentTooNew {
            host,
            agent,
            server,
        })
    } else if agent.protocol < min {
        Err(SkewError::AgentTooOld {
            host,
            agent,
            server,
        })
    } else {
        Ok(())
    }
}

/// Whether a server at `new` may join servers at `running` on one store:
/// at most [`MAX_LEVEL_SKEW`] from each (so a rolling upgrade moves one
/// level at a time). The error names the first server out of reach.
pub fn check_server_skew(
    new: &BuildVersion,
    running: &[(String, BuildVersion)],
) -> Result<(), String> {
    let (min, max) = accepted_levels(new.protocol);
    match running
        .iter()
        .find(|(_, v)| v.protocol < min || v.protocol > max)
    {
        None => Ok(()),
        Some((name, v)) if v.protocol < min => Err(format!(
            "server {name:?} on this store runs nimbus {v}, this one {new}: protocol levels more than {MAX_LEVEL_SKEW} apart do not work together; upgrade the servers one release at a time (install a release within one level of {name:?} first, see docs/operations.md)"
        )),
        Some((name, v)) => Err(format!(
            "server {name:?} on this store runs nimbus {v}, newer than this one ({new}) by more than {MAX_LEVEL_SKEW} level; do not start an older release beside it: install {name:?}'s release here (see docs/operations.md)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(protocol: u32) -> BuildVersion {
        BuildVersion {
            release: format!("0.{protocol}.0"),
            protocol,
        }
    }

    #[test]
    fn agents_within_one_level_of_the_servers_work_with_them() {
        for (agent, server) in [(1, 1), (1, 2), (2, 1), (0, 1), (1, 0), (7, 8), (8, 7)] {
            assert_eq!(
                check_agent_skew("h", &at(agent), &at(server)),
                Ok(()),
                "agent {agent} with servers {server}"
            );
        }
    }

    #[test]
    fn an_agent_two_levels_behind_is_told_to_upgrade_itself() {
        let err = check_agent_skew("node7", &at(1), &at(3)).unwrap_err();
        assert!(matches!(err, SkewError::AgentTooOld { .. }), "{err:?}");
        let said = err.to_string();
        assert!(
            said.contains("node7")
                && said.contains("0.1.0 (protocol 1)")
                && said.contains("0.3.0 (protocol 3)")
                && said.contains("upgrade this host's agent"),
            "{said}"
        );
    }

    #[test]
    fn an_agent_two_levels_ahead_is_told_to_wait_for_the_servers() {
        let err = check_agent_skew("node7", &at(5), &at(3)).unwrap_err();
        assert!(matches!(err, SkewError::AgentTooNew { .. }), "{err:?}");
        assert!(
            err.to_string().contains("upgrade the servers first"),
            "{err}"
        );
    }

    #[test]
    fn a_server_joins_servers_within_one_level_and_no_further() {
        let running = [("s1".to_string(), at(2)), ("s2".to_string(), at(3))];
        assert_eq!(check_server_skew(&at(3), &running), Ok(()));
        assert_eq!(check_server_skew(&at(2), &running), Ok(()));
        let too_new = check_server_skew(&at(4), &running).unwrap_err();
        assert!(
            too_new.contains("\"s1\"") && too_new.contains("one release at a time"),
            "{too_new}"
        );
        let too_old = check_server_skew(&at(1), &running).unwrap_err();
        assert!(
            too_old.contains("\"s2\"") && too_old.contains("install \"s2\"'s release"),
            "{too_old}"
        );
        assert_eq!(check_server_skew(&at(9), &[]), Ok(()));
    }

    #[test]
    fn the_levels_accepted_never_wrap() {
        assert_eq!(accepted_levels(0), (0, 1));
        assert_eq!(accepted_levels(u32::MAX), (u32::MAX - 1, u32::MAX));
    }
}
