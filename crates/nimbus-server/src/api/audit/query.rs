//! Which audit records a query selects: the query parameters of
//! `GET /v1/audit` and `GET /v1/audit/export`, parsed once into an
//! [`AuditFilter`] that is then matched against each record. Pure: no store,
//! no clock (the caller passes `now`).

use chrono::{DateTime, Utc};
use nimbus_api::AuditRecord;

/// The filters and pager of the audit log's list and export.
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records of this project (a project admin must pass it).
    pub project: Option<String>,
    /// Only calls made by this user (`-` for unauthenticated calls).
    pub actor: Option<String>,
    /// Only calls with this HTTP method (`POST`, `PUT`, `DELETE`, ...).
    pub method: Option<String>,
    /// Only calls whose path starts with this, e.g. `/v1/projects/ops/instances`.
    pub path_prefix: Option<String>,
    /// Only calls that ended with this HTTP status (`404`) or class (`4xx`).
    pub status: Option<String>,
    /// Only records at or after this time: RFC 3339 (`2026-12-01T10:00:00Z`)
    /// or a duration ago (`30m`, `12h`, `7d`).
    pub since: Option<String>,
    /// Only records at or before this time, in the same forms as `since`.
    pub until: Option<String>,
    /// Page size of the list (default 500, at most 5000); ignored by export.
    pub limit: Option<usize>,
    /// Continue token from a previous page of the list (newest first).
    #[serde(rename = "continue", alias = "next")]
    pub continue_token: Option<String>,
}

/// What is wrong with an audit query; answered with 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("{param} {value:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration ago (30m, 12h, 7d)")]
    BadTime { param: &'static str, value: String },
    #[error("status {0:?} is neither an HTTP status (404) nor a class (4xx)")]
    BadStatus(String),
    #[error("since ({since}) is later than until ({until}); swap them")]
    EmptyRange {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    #[error("continue token {0:?} is not one this server hands out; drop `continue` to start again from the newest record")]
    BadContinue(String),
}

/// A status to match: one code, or a class such as 4xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    Class(u16),
}

/// A parsed audit query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub project: Option<String>,
    pub actor: Option<String>,
    /// Upper-cased.
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub status: Option<StatusMatch>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl AuditFilter {
    pub fn parse(q: &AuditQuery, now: DateTime<Utc>) -> Result<Self, QueryError> {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let since = q
            .since
            .as_deref()
            .map(|v| parse_time("since", v, now))
            .transpose()?;
        let until = q
            .until
            .as_deref()
            .map(|v| parse_time("until", v, now))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until) {
            if since > until {
                return Err(QueryError::EmptyRange { since, until });
            }
        }
        Ok(AuditFilter {
            project: non_empty(&q.project),
            actor: non_empty(&q.actor),
            method: non_empty(&q.method).map(|m| m.to_ascii_uppercase()),
            path_prefix: non_empty(&q.path_prefix),
            status: q.status.as_deref().map(parse_status).transpose()?,
            since,
            until,
        })
    }

    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.project
            .as_ref()
            .is_none_or(|p| r.project.as_ref() == Some(p))
            && self.actor.as_ref().is_none_or(|a| &r.actor == a)
            && self.method.as_ref().is_none_or(|m| &r.method == m)
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| r.path.starts_with(p.as_str()))
            && self.status.is_none_or(|s| match s {
                StatusMatch::Exact(code) => r.status == code,
                StatusMatch::Class(class) => r.status / 100 == class,
            })
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time <= t)
    }
}

/// RFC 3339, or a duration before `now` (`30m`, `12h`, `7d`).
pub fn parse_time(
    param: &'static str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, QueryError> {
    let bad = || QueryError::BadTime {
        param,
        value: value.to_string(),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(value.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let secs = nimbus_api::units::parse_duration_secs(value).map_err(|_| bad())?;
    let ago =
        chrono::Duration::try_seconds(i64::try_from(secs).map_err(|_| bad())?).ok_or_else(bad)?;
    now.checked_sub_signed(ago).ok_or_else(bad)
}

fn parse_status(value: &str) -> Result<StatusMatch, QueryError> {
    let bad = || QueryError::BadStatus(value.to_string());
    let v = value.trim();
    if let Some(class) = v.strip_suffix("xx").or_else(|| v.strip_suffix("XX")) {
        return match class.parse::<u16>() {
            Ok(c @ 1..=5) if class.len() == 1 => Ok(StatusMatch::Class(c)),
            _ => Err(bad()),
        };
    }
    match v.parse::<u16>() {
        Ok(code @ 100..=599) => Ok(StatusMatch::Exact(code)),
        _ => Err(bad()),
    }
}

/// Checks a continue token: the key of a record under the audit prefix,
/// `<20 digits of nanoseconds>-<hex id>`.
pub fn check_continue(token: &str) -> Result<(), QueryError> {
    let ok = token.split_once('-').is_some_and(|(nanos, id)| {
        nanos.len() == 20
            && nanos.bytes().all(|b| b.is_ascii_digit())
            && !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(QueryError::BadContinue(token.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
    }

    fn record(actor: &str, method: &str, path: &str, status: u16, hours_ago: i64) -> AuditRecord {
        AuditRecord {
            id: "ab".into(),
            time: now() - chrono::Duration::hours(hours_ago),
            actor: actor.into(),
            token_id: None,
            method: method.into(),
            path: path.into(),
            project: path
                .strip_prefix("/v1/projects/")
                .and_then(|p| p.split('/').next())
                .map(str::to_string),
            status,
            result: "ok".into(),
            source: None,
            count: None,
        }
    }

    fn filter(q: AuditQuery) -> AuditFilter {
        AuditFilter::parse(&q, now()).unwrap()
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_time("since", "1h", now()).unwrap(),
            now() - chrono::Duration::hours(1)
        );
        assert_eq!(
            parse_time("since", "2026-12-01T10:00:00+01:00", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
        );
        let err = parse_time("until", "yesterday", now()).unwrap_err();
        assert!(err.to_string().contains("until \"yesterday\""), "{err}");
    }

    #[test]
    fn each_filter_selects_what_it_names() {
        let r = record("alice", "POST", "/v1/projects/ops/instances", 201, 2);
        assert!(filter(AuditQuery::default()).matches(&r));
        let cases: Vec<(AuditQuery, bool)> = vec![
            (
                AuditQuery {
                    actor: Some("alice".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    actor: Some("bob".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                AuditQuery {
                    project: Some("ops".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    project: Some("dev".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                AuditQuery {
                    method: Some("post".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    method: Some("DELETE".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                AuditQuery {
                    path_prefix: Some("/v1/projects/ops/".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    path_prefix: Some("/v1/users".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                AuditQuery {
                    status: Some("201".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    status: Some("2xx".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    status: Some("4xx".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                AuditQuery {
                    since: Some("3h".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    since: Some("1h".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                AuditQuery {
                    until: Some("1h".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                AuditQuery {
                    until: Some("3h".into()),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (q, want) in cases {
            assert_eq!(filter(q.clone()).matches(&r), want, "{q:?}");
        }
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for status in ["6xx", "abc", "99", "44xx"] {
            let q = AuditQuery {
                status: Some(status.into()),
                ..Default::default()
            };
            assert_eq!(
                AuditFilter::parse(&q, now()),
                Err(QueryError::BadStatus(status.into()))
            );
        }
        let q = AuditQuery {
            since: Some("1h".into()),
            until: Some("2h".into()),
            ..Default::default()
        };
        assert!(matches!(
            AuditFilter::parse(&q, now()),
            Err(QueryError::EmptyRange { .. })
        ));
        assert!(check_continue("00000000000000000001-ab12").is_ok());
        assert!(check_continue("../../users/admin").is_err());
        assert!(check_continue("1-ab").is_err());
    }
}
