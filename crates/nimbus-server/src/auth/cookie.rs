//! Browser sessions: an HttpOnly cookie standing for a token.
//!
//! Signing in with a token (a form POST, see `console::signin`) makes a
//! random session id, sent to the browser as an HttpOnly, Secure,
//! SameSite=Strict cookie and kept here, in memory, mapped to the token's
//! id and the SHA-256 of its secret. A request carrying the cookie is
//! verified through [`super::verify`] exactly as that bearer token would
//! be, so a session ends when its token is revoked or expires, or its user
//! is gone; roles are checked per call by the handlers as for any caller.
//! A cookie-authenticated call that changes anything must also carry
//! `X-CSRF-Token` equal to the session's own CSRF secret, which only the
//! console's page can read (`GET /ui/session`).
//!
//! Sessions are not persisted: a server restart signs every browser out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The cookie's name.
pub const COOKIE: &str = "nimbus_session";
/// The header a cookie-authenticated mutating call carries.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after it was made, whatever its token says.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept; the oldest goes first.
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct BrowserSession {
    pub token_id: String,
    pub secret_sha256: [u8; 32],
    /// Given to the page; echoed in `X-CSRF-Token` on mutating calls.
    pub csrf: String,
    pub created: Instant,
}

/// Signed-in browsers, keyed by the SHA-256 of their session id (a lookup
/// then reveals nothing through timing about valid ids).
#[derive(Default)]
pub struct CookieSessions {
    sessions: Mutex<HashMap<[u8; 32], BrowserSession>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn key(session_id: &str) -> [u8; 32] {
    Sha256::digest(session_id.as_bytes()).into()
}

impl CookieSessions {
    /// Start a session for a verified token; returns the new session id.
    pub fn create(&self, token_id: &str, secret_sha256: [u8; 32]) -> String {
        let id = random_hex();
        let session = BrowserSession {
            token_id: token_id.to_string(),
            secret_sha256,
            csrf: random_hex(),
            created: Instant::now(),
        };
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, v| v.created.elapsed() < MAX_AGE);
            if s.len() >= MAX_SESSIONS {
                if let Some(oldest) = s.iter().min_by_key(|(_, v)| v.created).map(|(k, _)| *k) {
                    s.remove(&oldest);
                }
            }
            s.insert(key(&id), session);
        }
        id
    }

    /// The live session named by `session_id`, if any.
    pub fn get(&self, session_id: &str) -> Option<BrowserSession> {
        let mut s = self.sessions.lock().ok()?;
        let k = key(session_id);
        match s.get(&k) {
            Some(v) if v.created.elapsed() < MAX_AGE => Some(v.clone()),
            Some(_) => {
                s.remove(&k);
                None
            }
            None => None,
        }
    }

    /// End a session (sign-out).
    pub fn remove(&self, session_id: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&key(session_id));
        }
    }

    /// End every session of a token (revoked through this server).
    pub fn remove_token(&self, token_id: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, v| v.token_id != token_id);
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id in the request's `Cookie` header, if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether the request's `X-CSRF-Token` equals the session's secret
/// (compared in constant time).
pub fn csrf_matches(headers: &HeaderMap, session: &BrowserSession) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| {
            given.len() == session.csrf.len()
                && bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes()))
        })
}

/// `Set-Cookie` value for a new session.
pub fn set_cookie(session_id: &str) -> String {
    format!(
        "{COOKIE}={session_id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        MAX_AGE.as_secs()
    )
}

/// `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_at_sign_out() {
        let sessions = CookieSessions::default();
        let id = sessions.create("t1", [7; 32]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            format!("other=1; {COOKIE}={id}; x=y").parse().unwrap(),
        );
        let found = session_id(&headers).expect("cookie read");
        assert_eq!(found, id);
        let s = sessions.get(&found).expect("live session");
        assert_eq!(s.token_id, "t1");
        assert!(!csrf_matches(&headers, &s), "no CSRF header given");
        headers.insert(CSRF_HEADER, "0".repeat(64).parse().unwrap());
        assert!(!csrf_matches(&headers, &s), "a wrong CSRF token");
        headers.insert(CSRF_HEADER, s.csrf.parse().unwrap());
        assert!(csrf_matches(&headers, &s));
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none(), "signed out");
    }

    #[test]
    fn revoking_a_token_ends_its_sessions_only() {
        let sessions = CookieSessions::default();
        let a = sessions.create("t1", [1; 32]);
        let b = sessions.create("t2", [2; 32]);
        sessions.remove_token("t1");
        assert!(sessions.get(&a).is_none());
        assert!(sessions.get(&b).is_some());
    }

    #[test]
    fn the_cookie_is_http_only_secure_and_strict() {
        let c = set_cookie("abc");
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
