//! Projects: the unit of tenancy.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use nimbus_api::resources::Object;
use nimbus_api::{
    validate_name, ApiError, CreateRequest, Image, Instance, ListOptions, Metadata, Network,
    Project, ProjectSpec, ProjectStatus, PublishedPort, ResourceList, Role, RoleBinding,
    SecurityGroup, WatchEvent,
};
use nimbus_store::{Op, Txn};

use super::params::ProjectPath;
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::repo::{Repo, MAX_PAGE};

#[utoipa::path(get, path = "/v1/projects", operation_id = "list_projects", params(ListOptions),
    responses((status = 200, description = "The projects the caller has a role in (all for system administrators); with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Project> = "application/json"), (WatchEvent<Project> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(opts): Query<ListOptions>,
) -> ApiResult<axum::response::Response> {
    let visible: Option<std::collections::HashSet<String>> =
        auth::visible_projects(&state.repo, &caller).await?;
    let guard = super::watch::Guard::admin_or_self(caller.clone());
    super::watch::list_or_watch::<Project>(
        &state,
        None,
        &opts,
        move |p| {
            visible
                .as_ref()
                .is_none_or(|v| v.contains(&p.metadata.name))
        },
        guard,
    )
    .await
}

#[utoipa::path(post, path = "/v1/projects", operation_id = "create_project", request_body = CreateRequest<ProjectSpec>,
    responses((status = 201, body = Project, description = "Created"), (status = 409, description = "A project of that name already exists")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    super::body::JsonBody(req): super::body::JsonBody<CreateRequest<ProjectSpec>>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    auth::require_system_admin(&caller)?;
    validate_name("project", &req.name).map_err(ApiError::invalid)?;
    validate_project_spec(&req.spec).map_err(ApiError::invalid)?;
    let mut metadata = Metadata::new(&req.name, None);
    metadata.labels = req.labels;
    let project = state
        .repo
        .create(Project {
            metadata,
            spec: req.spec,
            status: ProjectStatus::default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/v1/projects/{project}", operation_id = "get_project", params(ProjectPath),
    responses((status = 200, body = Project, description = "The project"), (status = 404, description = "Not found, or the caller has no role in it")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Json<Project>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(Json(state.repo.get(None, &project).await?))
}

/// Replace a project's settings: description, instance defaults and host
/// port policy (system administrators).
#[utoipa::path(put, path = "/v1/projects/{project}", operation_id = "update_project", params(ProjectPath), request_body = ProjectSpec,
    responses((status = 200, body = Project, description = "The project with its new settings"), (status = 404, description = "Not found, or the caller has no role in it")))]
pub async fn update(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    super::body::JsonBody(spec): super::body::JsonBody<ProjectSpec>,
) -> ApiResult<Json<Project>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    auth::require_system_admin(&caller)?;
    validate_project_spec(&spec).map_err(ApiError::invalid)?;
    let saved = state
        .repo
        .modify::<Project, _>(None, &project, |p| {
            p.spec = spec.clone();
            Ok(())
        })
        .await?;
    Ok(Json(saved))
}

/// Names of what a project still holds, per kind.
struct Holdings {
    kinds: Vec<HeldKind>,
}

struct HeldKind {
    /// Plural noun for the message.
    noun: &'static str,
    /// The command removing one, without the name.
    remove: &'static str,
    names: Vec<String>,
}

/// How many names of each kind a refusal lists.
const NAMES_SHOWN: usize = 5;

impl Holdings {
    /// In the order `project rm --force` removes them: published ports
    /// point at instances, instances use security groups, networks and
    /// images.
    async fn of(repo: &Repo, project: &str) -> ApiResult<Holdings> {
        async fn names<T: Object>(repo: &Repo, project: &str) -> ApiResult<Vec<String>> {
            Ok(repo
                .list_every::<T>(Some(project), MAX_PAGE)
                .await?
                .into_iter()
                .map(|o| o.metadata().name.clone())
                .collect())
        }
        Ok(Holdings {
            kinds: vec![
                HeldKind {
                    noun: "published ports",
                    remove: "nimbus address rm",
                    names: names::<PublishedPort>(repo, project).await?,
                },
                HeldKind {
                    noun: "instances",
                    remove: "nimbus instance rm",
                    names: names::<Instance>(repo, project).await?,
                },
                HeldKind {
                    noun: "security groups",
                    remove: "nimbus secgroup rm",
                    names: names::<SecurityGroup>(repo, project).await?,
                },
                HeldKind {
                    noun: "networks",
                    remove: "nimbus network rm",
                    names: names::<Network>(repo, project).await?,
                },
                HeldKind {
                    noun: "images",
                    remove: "nimbus image rm",
                    names: names::<Image>(repo, project).await?,
                },
                HeldKind {
                    noun: "volumes",
                    remove: "nimbus volume rm",
                    names: names::<nimbus_api::Volume>(repo, project).await?,
                },
            ],
        })
    }

    /// The 409 message naming what is left and how to remove it, or None
    /// when the project is empty.
    fn refusal(&self, project: &str) -> Option<String> {
        let held: Vec<&HeldKind> = self.kinds.iter().filter(|k| !k.names.is_empty()).collect();
        if held.is_empty() {
            return None;
        }
        let what: Vec<String> = held
            .iter()
            .map(|k| {
                let mut shown: Vec<&str> = k
                    .names
                    .iter()
                    .take(NAMES_SHOWN)
                    .map(String::as_str)
                    .collect();
                if k.names.len() > NAMES_SHOWN {
                    shown.push("...");
                }
                format!("{} {} ({})", k.names.len(), k.noun, shown.join(", "))
            })
            .collect();
        let how: Vec<String> = held
            .iter()
            .map(|k| format!("`{} <name> --project {project}`", k.remove))
            .collect();
        Some(format!(
            "project {project:?} still holds {}; remove everything with `nimbus project rm {project} --force`, or one by one in this order: {}",
            what.join(", "),
            how.join(", ")
        ))
    }
}

/// Deletes the project's address keys, its registry repositories and the
/// host ports claimed in its name. Called once no instance, network or published port of the project
/// is left, so every such key is an orphan.
async fn sweep_orphan_keys(repo: &Repo, project: &str) -> ApiResult<()> {
    let ipam_prefix = format!("/ipam/{project}/");
    let addresses = repo.store.list(&ipam_prefix, None, 0).await?;
    // Registry repositories: their tagged images are gone by now, so
    // what they still name is left to the image store's collection.
    let repositories = repo
        .store
        .list(
            &crate::repo::prefix::<nimbus_api::Repository>(Some(project)),
            None,
            0,
        )
        .await?;
    let claimed = repo.store.list("/hostports/", None, 0).await?;
    let owner = format!("{project}/");
    let mut ops: Vec<Op> = addresses
        .kvs
        .iter()
        .chain(&repositories.kvs)
        .map(|kv| Op::Delete {
            key: kv.key.clone(),
        })
        .collect();
    ops.extend(
        claimed
            .kvs
            .iter()
            .filter(|kv| kv.value.starts_with(owner.as_bytes()))
            .map(|kv| Op::Delete {
                key: kv.key.clone(),
            }),
    );
    // Scans and the launch policy: a later project of the same name must
    // not inherit a policy it never set.
    for prefix in crate::vulnscan::project_key_prefixes(project) {
        let kvs = repo.store.list(&prefix, None, 0).await?.kvs;
        ops.extend(kvs.into_iter().map(|kv| Op::Delete { key: kv.key }));
    }
    if ops.is_empty() {
        return Ok(());
    }
    tracing::info!(
        project,
        keys = ops.len(),
        "removing the address, host-port, scan, policy and registry repository keys of a deleted project"
    );
    repo.store
        .txn(Txn {
            compares: vec![],
            success: ops,
            failure: vec![],
        })
        .await?;
    Ok(())
}

/// What a project's settings must satisfy.
pub fn validate_project_spec(spec: &ProjectSpec) -> Result<(), String> {
    let ports = &spec.host_ports;
    if ports.min < 1024 {
        return Err(format!(
            "host port range starts at {}: ports below 1024 belong to the host; use 1024 or more",
            ports.min
        ));
    }
    if ports.min > ports.max {
        return Err(format!(
            "host port range {}-{} is empty: give the lower port first",
            ports.min, ports.max
        ));
    }
    let d = &spec.instance_defaults;
    if d.memory_bytes.is_some_and(|m| m < 4 << 20) {
        return Err("default memory must be at least 4 MiB".into());
    }
    if d.cpu_millis == Some(0) {
        return Err("default CPU must be more than 0".into());
    }
    if d.pids_max.is_some_and(|p| p < 1) {
        return Err("default pids limit must be at least 1".into());
    }
    Ok(())
}

#[utoipa::path(delete, path = "/v1/projects/{project}", operation_id = "delete_project", params(ProjectPath),
    responses((status = 204, description = "Deleted"), (status = 409, description = "The project still holds published ports, instances, security groups, networks or images")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    auth::require_system_admin(&caller)?;
    let held = Holdings::of(&state.repo, &project).await?;
    if let Some(message) = held.refusal(&project) {
        return Err(ServerError(ApiError::conflict(message)));
    }
    // Nothing names the project any more; keys no resource owns (an
    // address or host port whose owner went in a crash, or a store written
    // before deletions swept them) go with it, so a later project of the
    // same name starts empty.
    sweep_orphan_keys(&state.repo, &project).await?;
    crate::signatures::forget_project(&state.repo, &project).await?;
    // Every binding goes, page by page: a later project of the same name
    // must not inherit roles.
    loop {
        let bindings = state
            .repo
            .list::<RoleBinding>(Some(&project), &ListOptions::default(), |_| true)
            .await?;
        if bindings.items.is_empty() {
            break;
        }
        for b in bindings.items {
            state
                .repo
                .delete::<RoleBinding>(Some(&project), &b.metadata.name, None)
                .await?;
        }
    }
    state.repo.delete::<Project>(None, &project, None).await?;
    state.tokens.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::{HeldKind, Holdings};

    fn kind(noun: &'static str, remove: &'static str, names: &[&str]) -> HeldKind {
        HeldKind {
            noun,
            remove,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_project_is_not_refused() {
        let held = Holdings {
            kinds: vec![kind("instances", "nimbus instance rm", &[])],
        };
        assert_eq!(held.refusal("ops"), None);
    }

    #[test]
    fn a_refusal_names_a_few_of_each_kind_and_the_commands() {
        let held = Holdings {
            kinds: vec![
                kind("published ports", "nimbus address rm", &[]),
                kind(
                    "instances",
                    "nimbus instance rm",
                    &["a", "b", "c", "d", "e", "f", "g"],
                ),
                kind("networks", "nimbus network rm", &["default"]),
            ],
        };
        let message = held.refusal("ops").expect("refused");
        assert!(
            message.contains("7 instances (a, b, c, d, e, ...)"),
            "{message}"
        );
        assert!(message.contains("1 networks (default)"), "{message}");
        assert!(!message.contains("published ports"), "{message}");
        assert!(
            message.contains("`nimbus project rm ops --force`"),
            "{message}"
        );
        assert!(
            message.contains("`nimbus instance rm <name> --project ops`, `nimbus network rm <name> --project ops`"),
            "{message}"
        );
    }
}
