//! Long-lived sessions (watch streams, followed logs, exec and console):
//! what keeps them allowed, and how many one token or user may hold.
//!
//! A session is authorised once when it opens, then re-checked every
//! [`RECHECK`] against the store itself (not the token cache): it ends when
//! its token is deleted or expires, its user is deleted, or the caller no
//! longer has what opened it (a project role of at least the one needed,
//! or the system administrator flag).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_api::{ApiError, Role};

use super::Caller;
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

/// How often an open session re-checks its caller.
pub const RECHECK: Duration = Duration::from_secs(2);

/// What a session needs to stay open.
#[derive(Clone, Debug)]
pub enum Need {
    /// Only a valid token (e.g. watching one's own tokens).
    Token,
    /// The system administrator flag.
    SystemAdmin,
    /// At least `min` in `project`.
    Role { project: String, min: Role },
}

/// Who holds a session and what it needs.
#[derive(Clone, Debug)]
pub struct Guard {
    pub caller: Caller,
    pub need: Need,
}

impl Guard {
    pub fn new(caller: Caller, need: Need) -> Guard {
        Guard { caller, need }
    }

    /// A session that needs `min` in `project`.
    pub fn role(caller: Caller, project: &str, min: Role) -> Guard {
        Guard::new(
            caller,
            Need::Role {
                project: project.to_string(),
                min,
            },
        )
    }

    /// A session of a system administrator or a host agent: an
    /// administrator's ends when the flag is removed, an agent's when its
    /// token goes.
    pub fn admin_or_host(caller: Caller) -> Guard {
        let need = if caller.is_host_agent() {
            Need::Token
        } else {
            Need::SystemAdmin
        };
        Guard::new(caller, need)
    }

    /// A session whose filter was chosen by the administrator flag at open
    /// (administrators see everyone's): it ends when that flag is removed,
    /// or for others when the token goes.
    pub fn admin_or_self(caller: Caller) -> Guard {
        let need = if caller.system_admin {
            Need::SystemAdmin
        } else {
            Need::Token
        };
        Guard::new(caller, need)
    }

    /// Count the session against its token's and user's limits; the
    /// returned session holds the place until it is dropped.
    pub fn open(self, state: &Arc<AppState>) -> ApiResult<Session> {
        let permit = state.streams.try_acquire(
            &self.caller,
            state.config.max_streams_per_token,
            state.config.max_streams_per_user,
        )?;
        Ok(Session {
            guard: self,
            _permit: permit,
        })
    }
}

/// An open, counted session.
pub struct Session {
    guard: Guard,
    _permit: StreamPermit,
}

impl Session {
    /// Resolves once the session is no longer allowed (checked every
    /// [`RECHECK`]); the caller ends the session there. The session's
    /// place in the limits is held until this future is dropped.
    pub async fn revoked(self, state: Arc<AppState>) {
        loop {
            tokio::time::sleep(RECHECK).await;
            match still_allowed(&state, &self.guard).await {
                Ok(true) => continue,
                Ok(false) => {
                    tracing::info!(
                        user = %self.guard.caller.user,
                        token_id = %self.guard.caller.token_id,
                        need = ?self.guard.need,
                        "ending a session: its caller is no longer allowed"
                    );
                    return;
                }
                // Fail closed: a session that cannot be re-checked ends.
                Err(e) => {
                    tracing::warn!(error = %e, "ending a session: could not re-check its caller");
                    return;
                }
            }
        }
    }
}

/// Whether the guard's caller, as the store says now, still has what the
/// session needs.
pub async fn still_allowed(state: &AppState, guard: &Guard) -> ApiResult<bool> {
    let Some(now) = super::load_caller(state, &guard.caller.token_id).await? else {
        return Ok(false);
    };
    if now.user != guard.caller.user {
        return Ok(false);
    }
    Ok(match &guard.need {
        Need::Token => true,
        Need::SystemAdmin => now.system_admin,
        Need::Role { project, min } => super::role_in(&state.repo, &now, project)
            .await?
            .is_some_and(|r| r >= *min),
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Holder {
    Token(String),
    User(String),
}

/// Counts open sessions per token and per user.
#[derive(Default)]
pub struct StreamLimiter {
    open: Mutex<HashMap<Holder, usize>>,
}

impl StreamLimiter {
    /// Take a place for `caller`, or refuse with 429 when its token or
    /// user already holds the most allowed.
    pub fn try_acquire(
        self: &Arc<Self>,
        caller: &Caller,
        max_per_token: usize,
        max_per_user: usize,
    ) -> ApiResult<StreamPermit> {
        let token = Holder::Token(caller.token_id.clone());
        let user = Holder::User(caller.user.clone());
        let mut open = self.open.lock().map_err(|_| {
            ServerError(ApiError::internal("the stream limiter's lock is poisoned"))
        })?;
        let on_token = open.get(&token).copied().unwrap_or(0);
        let on_user = open.get(&user).copied().unwrap_or(0);
        if on_token >= max_per_token {
            return Err(ServerError(ApiError::too_many_requests(format!(
                "token {} already holds {on_token} open streams (watch, logs --follow, exec, console), the most allowed per token; close some first",
                caller.token_id
            ))));
        }
        if on_user >= max_per_user {
            return Err(ServerError(ApiError::too_many_requests(format!(
                "user {:?} already holds {on_user} open streams (watch, logs --follow, exec, console) across its tokens, the most allowed per user; close some first",
                caller.user
            ))));
        }
        *open.entry(token.clone()).or_default() += 1;
        *open.entry(user.clone()).or_default() += 1;
        Ok(StreamPermit {
            limiter: Arc::clone(self),
            token,
            user,
        })
    }

    /// Open sessions in all.
    pub fn total(&self) -> usize {
        self.open
            .lock()
            .map(|o| {
                o.iter()
                    .filter(|(h, _)| matches!(h, Holder::Token(_)))
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    fn release(&self, holders: [&Holder; 2]) {
        if let Ok(mut open) = self.open.lock() {
            for h in holders {
                if let Some(n) = open.get_mut(h) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        open.remove(h);
                    }
                }
            }
        }
    }
}

/// One open session's place; released when dropped.
pub struct StreamPermit {
    limiter: Arc<StreamLimiter>,
    token: Holder,
    user: Holder,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limiter.release([&self.token, &self.user]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: &str, token: &str) -> Caller {
        Caller {
            user: user.into(),
            system_admin: false,
            token_id: token.into(),
            host: None,
            metrics_reader: false,
        }
    }

    #[test]
    fn limits_hold_per_token_and_per_user_and_free_on_drop() {
        let limiter = Arc::new(StreamLimiter::default());
        let a1 = caller("alice", "t1");
        let a2 = caller("alice", "t2");
        let bob = caller("bob", "t3");
        let first: Vec<_> = (0..2)
            .map(|_| limiter.try_acquire(&a1, 2, 3).expect("under the limits"))
            .collect();
        let err = limiter
            .try_acquire(&a1, 2, 3)
            .err()
            .expect("token at its limit");
        assert_eq!(err.0.code, nimbus_api::ErrorCode::TooManyRequests);
        let third = limiter.try_acquire(&a2, 2, 3).expect("another token");
        let err = limiter
            .try_acquire(&a2, 2, 3)
            .err()
            .expect("user at its limit");
        assert!(err.0.message.contains("per user"), "{}", err.0.message);
        let _b = limiter
            .try_acquire(&bob, 2, 3)
            .expect("another user is not affected");
        assert_eq!(limiter.total(), 4);
        drop(first);
        drop(third);
        assert_eq!(limiter.total(), 1);
        limiter
            .try_acquire(&a1, 2, 3)
            .expect("places come back when sessions end");
    }
}
