//! Metadata shared by every resource, lists and watch events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Identity and bookkeeping of a resource. `revision` is the store revision
/// of the resource's last change; send it back on update for optimistic
/// concurrency (a stale revision gets 409 Conflict).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Metadata {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set when deletion was requested and a controller is cleaning up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_requested_at: Option<DateTime<Utc>>,
}

impl Metadata {
    pub fn new(name: &str, project: Option<&str>) -> Self {
        let now = Utc::now();
        Metadata {
            id: new_id(),
            name: name.to_string(),
            project: project.map(str::to_string),
            labels: BTreeMap::new(),
            revision: 0,
            created_at: now,
            updated_at: now,
            deletion_requested_at: None,
        }
    }
}

/// A random 128-bit identifier rendered as 32 hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom_fill(&mut bytes).is_err() {
        // Fall back to time + counter; ids need uniqueness, not secrecy.
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128;
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// A page of resources. `revision` is the store revision the list was read
/// at: watch from it to receive exactly the later changes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ResourceList<T> {
    pub items: Vec<T>,
    pub revision: i64,
    /// Pass as `continue` to get the next page; absent on the last page.
    /// (Older servers named it `next`; that name is still read.)
    #[serde(
        default,
        rename = "continue",
        alias = "next",
        skip_serializing_if = "Option::is_none"
    )]
    pub continue_token: Option<String>,
}

/// Query options of a list call.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListOptions {
    /// Label selector: `key=value,key2!=value,key3` (comma = and).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Page size (default 500, at most 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Continue token from a previous page.
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
    /// Stream changes as JSON lines instead of listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<bool>,
    /// With `watch`: stream changes after this revision (from a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    /// The watch cannot continue (e.g. compacted): re-list and watch again.
    Error,
}

/// One line of a watch stream.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WatchEvent<T> {
    #[serde(rename = "type")]
    pub event_type: WatchEventType,
    pub revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorBody>,
}

/// A parsed label selector term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// Parse `a=b,c!=d,e,!f`.
pub fn parse_selector(selector: &str) -> Result<Vec<SelectorTerm>, String> {
    let mut terms = Vec::new();
    for raw in selector.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let term = if let Some((k, v)) = raw.split_once("!=") {
            SelectorTerm::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
            SelectorTerm::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = raw.strip_prefix('!') {
            SelectorTerm::NotExists(k.trim().into())
        } else {
            SelectorTerm::Exists(raw.into())
        };
        let key = match &term {
            SelectorTerm::Equals(k, _)
            | SelectorTerm::NotEquals(k, _)
            | SelectorTerm::Exists(k)
            | SelectorTerm::NotExists(k) => k,
        };
        if key.is_empty() {
            return Err(format!(
                "label selector term {raw:?} has no key; write key=value, key!=value, key or !key"
            ));
        }
        terms.push(term);
    }
    Ok(terms)
}

pub fn selector_matches(terms: &[SelectorTerm], labels: &BTreeMap<String, String>) -> bool {
    terms.iter().all(|t| match t {
        SelectorTerm::Equals(k, v) => labels.get(k) == Some(v),
        SelectorTerm::NotEquals(k, v) => labels.get(k) != Some(v),
        SelectorTerm::Exists(k) => labels.contains_key(k),
        SelectorTerm::NotExists(k) => !labels.contains_key(k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_parses_and_matches() {
        let terms = parse_selector("tier=web, env!=prod,team,!legacy").unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("tier".to_string(), "web".to_string());
        labels.insert("team".to_string(), "a".to_string());
        assert!(selector_matches(&terms, &labels));
        labels.insert("env".to_string(), "prod".to_string());
        assert!(!selector_matches(&terms, &labels));
        assert!(parse_selector("=x").is_err());
    }
}
