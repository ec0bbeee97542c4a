//! Content discovery: a repository's tags, and the catalog of the
//! repositories in the caller's projects (no other project's name shows).

use std::collections::HashMap;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api::Repository;

use super::endpoint::RepoName;
use super::error::RegResult;
use super::{records, Ctx};
use crate::repo::MAX_PAGE;

/// One page of sorted `names`: after `last`, at most `n`; and the link to
/// the next page when there is one.
fn page(
    names: Vec<String>,
    query: &HashMap<String, String>,
    path: &str,
) -> (Vec<String>, Option<String>) {
    let last = query.get("last").cloned().unwrap_or_default();
    let n = query.get("n").and_then(|n| n.parse::<usize>().ok());
    let mut rest: Vec<String> = names
        .into_iter()
        .filter(|t| last.is_empty() || *t > last)
        .collect();
    let Some(n) = n else {
        return (rest, None);
    };
    let more = rest.len() > n;
    rest.truncate(n);
    let next = match rest.last() {
        Some(end) if more => Some(format!("<{path}?n={n}&last={end}>; rel=\"next\"")),
        _ => None,
    };
    (rest, next)
}

fn with_link(body: serde_json::Value, link: Option<String>) -> Response {
    let mut resp = Json(body).into_response();
    if let Some(link) = link.and_then(|l| l.parse().ok()) {
        resp.headers_mut().insert(header::LINK, link);
    }
    resp
}

pub async fn tags(
    ctx: &Ctx,
    name: &RepoName,
    query: &HashMap<String, String>,
) -> RegResult<Response> {
    let repo = records::load_existing(&ctx.state, name).await?;
    let all: Vec<String> = repo.status.tags.keys().cloned().collect();
    let (tags, link) = page(all, query, &format!("/v2/{}/tags/list", name.full()));
    Ok(with_link(
        serde_json::json!({"name": name.full(), "tags": tags}),
        link,
    ))
}

pub async fn catalog(ctx: &Ctx, query: &HashMap<String, String>) -> RegResult<Response> {
    let projects: Option<Vec<String>> =
        crate::auth::visible_projects(&ctx.state.repo, &ctx.caller).await?;
    let repos = ctx
        .state
        .repo
        .list_every::<Repository>(None, MAX_PAGE)
        .await?;
    let mut names: Vec<String> = repos
        .into_iter()
        .filter_map(|r| {
            let project = r.metadata.project?;
            let visible = projects.as_ref().is_none_or(|p| p.contains(&project));
            visible.then(|| format!("{project}/{}", r.metadata.name))
        })
        .collect();
    names.sort();
    let (repositories, link) = page(names, query, "/v2/_catalog");
    Ok(with_link(
        serde_json::json!({"repositories": repositories}),
        link,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_after_last_and_link_the_next() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let (all, link) = page(names.clone(), &q(&[]), "/p");
        assert_eq!(all.len(), 4);
        assert!(link.is_none());
        let (first, link) = page(names.clone(), &q(&[("n", "2")]), "/p");
        assert_eq!(first, ["a", "b"]);
        assert_eq!(link.as_deref(), Some("</p?n=2&last=b>; rel=\"next\""));
        let (second, link) = page(names, &q(&[("n", "2"), ("last", "b")]), "/p");
        assert_eq!(second, ["c", "d"]);
        assert!(link.is_none());
    }
}
