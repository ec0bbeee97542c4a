//! Which registry operation a request path names, parsed before anything is
//! read or stored. Repository names are `<project>/<name>[/<more>]` in the
//! spec's grammar: lowercase components joined by `.`, `_`, `__` or dashes.

use super::error::{Code, RegResult, RegistryError};

/// A repository: the project it belongs to and the path below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoName {
    pub project: String,
    pub path: String,
}

impl RepoName {
    pub fn full(&self) -> String {
        format!("{}/{}", self.project, self.path)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    Blob(RepoName, String),
    StartUpload(RepoName),
    Upload(RepoName, String),
}

const MAX_NAME_BYTES: usize = 255;

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> RegResult<Endpoint> {
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let n = parts.len();
    let name = |count: usize| repo_name(&parts[..n.saturating_sub(count)]);
    match parts.as_slice() {
        [.., "tags", "list"] => Ok(Endpoint::Tags(name(2)?)),
        [.., "manifests", reference] => Ok(Endpoint::Manifest(name(2)?, parse_reference(reference)?)),
        [.., "blobs", "uploads", ""] | [.., "blobs", "uploads"] => {
            let count = if parts[n - 1].is_empty() { 3 } else { 2 };
            Ok(Endpoint::StartUpload(name(count)?))
        }
        [.., "blobs", "uploads", id] => Ok(Endpoint::Upload(name(3)?, (*id).to_string())),
        [.., "blobs", digest] => {
            let digest = (*digest).to_string();
            check_digest(&digest)?;
            Ok(Endpoint::Blob(name(2)?, digest))
        }
        _ => Err(RegistryError::new(
            Code::Unsupported,
            format!(
                "no registry route /v2/{rest}; the registry serves /v2/<project>/<name>/manifests/<reference>, \
                 /blobs/<digest>, /blobs/uploads/, /tags/list and /v2/_catalog"
            ),
        )),
    }
}

fn repo_name(parts: &[&str]) -> RegResult<RepoName> {
    let joined = parts.join("/");
    let invalid = |why: &str| {
        RegistryError::new(
            Code::NameInvalid,
            format!(
                "repository name {joined:?} is invalid: {why}; name it <project>/<name>, in lowercase \
                 letters and digits joined by '.', '_' or '-' (for example ops/web)"
            ),
        )
    };
    if joined.len() > MAX_NAME_BYTES {
        return Err(invalid("it is longer than 255 characters"));
    }
    if parts.len() < 2 {
        return Err(invalid("it has no project part"));
    }
    if let Some(bad) = parts.iter().find(|p| !is_component(p)) {
        return Err(invalid(&format!("component {bad:?} is not allowed")));
    }
    nimbus_api::validate_name("project", parts[0]).map_err(|e| invalid(&e))?;
    Ok(RepoName {
        project: parts[0].to_string(),
        path: parts[1..].join("/"),
    })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_component(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn parse_reference(reference: &str) -> RegResult<Reference> {
    if reference.contains(':') {
        check_digest(reference)?;
        return Ok(Reference::Digest(reference.to_string()));
    }
    // `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
    let ok = !reference.is_empty()
        && reference.len() <= 128
        && !reference.starts_with(['.', '-'])
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(RegistryError::new(
            Code::ManifestInvalid,
            format!(
                "tag {reference:?} is invalid: use up to 128 letters, digits, '.', '_' or '-', \
                 not starting with '.' or '-'"
            ),
        ));
    }
    Ok(Reference::Tag(reference.to_string()))
}

/// A digest as the store accepts it (only sha256 is supported).
pub fn check_digest(digest: &str) -> RegResult<()> {
    nimbus_image::check_digest(digest).map_err(|e| {
        RegistryError::new(
            Code::DigestInvalid,
            format!("{e}; only sha256 digests are supported"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(project: &str, path: &str) -> RepoName {
        RepoName {
            project: project.into(),
            path: path.into(),
        }
    }

    #[test]
    fn registry_paths_parse_from_the_right() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse("_catalog").unwrap(), Endpoint::Catalog);
        assert_eq!(
            parse("ops/app/tags/list").unwrap(),
            Endpoint::Tags(repo("ops", "app"))
        );
        assert_eq!(
            parse("ops/team/app/manifests/1.0").unwrap(),
            Endpoint::Manifest(repo("ops", "team/app"), Reference::Tag("1.0".into()))
        );
        assert_eq!(
            parse(&format!("ops/app/manifests/{d}")).unwrap(),
            Endpoint::Manifest(repo("ops", "app"), Reference::Digest(d.clone()))
        );
        assert_eq!(
            parse("ops/blobs/blobs/uploads/").unwrap(),
            Endpoint::StartUpload(repo("ops", "blobs"))
        );
        assert_eq!(
            parse("ops/app/blobs/uploads/abc-1").unwrap(),
            Endpoint::Upload(repo("ops", "app"), "abc-1".into())
        );
        assert_eq!(
            parse(&format!("ops/app/blobs/{d}")).unwrap(),
            Endpoint::Blob(repo("ops", "app"), d)
        );
    }

    #[test]
    fn bad_names_references_and_digests_get_their_codes() {
        let code = |p: &str| parse(p).unwrap_err().code;
        for bad in [
            "ops/../x/tags/list",
            "ops/App/tags/list",
            "app/tags/list",
            "ops/a..b/tags/list",
            "ops/a%2e%2e/tags/list",
            "ops//app/tags/list",
            "Ops/app/tags/list",
            "ops/-app/tags/list",
        ] {
            assert_eq!(code(bad), Code::NameInvalid, "{bad}");
        }
        assert!(is_component("a__b") && is_component("a---b") && is_component("a.b_c"));
        assert!(!is_component("a___b") && !is_component("a._b"));
        assert_eq!(code("ops/app/manifests/.hidden"), Code::ManifestInvalid);
        assert_eq!(code("ops/app/manifests/sha256:abc"), Code::DigestInvalid);
        assert_eq!(code("ops/app/blobs/sha512:abc"), Code::DigestInvalid);
        assert_eq!(code("ops/app/blobs"), Code::Unsupported);
        let long = format!("ops/{}/tags/list", "a".repeat(260));
        assert_eq!(code(&long), Code::NameInvalid);
    }
}
