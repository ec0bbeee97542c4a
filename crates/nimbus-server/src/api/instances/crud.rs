//! Instances: list (and watch), get, create, replace, delete, and the
//! secret environment for the agent of the instance's host. Each handler
//! parses, fetches what the request names, hands the request to
//! `domain::instances` and writes what it returns.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use nimbus_api::{
    ApiError, CreateRequest, Image, Instance, InstanceSpec, ListOptions, Metadata, Project,
    ResourceList, Role, SecretEnv, WatchEvent,
};

use super::shown;
use crate::api::body::JsonBody;
use crate::api::params::{InstancePath, ProjectPath};
use crate::api::St;
use crate::auth::{self, Caller};
use crate::domain::instances::{self as domain, Named, SecretValue, SpecError};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

#[utoipa::path(get, tag = "instances", path = "/v1/projects/{project}/instances", operation_id = "list_instances", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's instances; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Instance> = "application/json"), (WatchEvent<Instance> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    crate::api::watch::list_in_project::<Instance>(&state, caller, project, &opts, &headers).await
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllQuery {
    /// Only instances bound to this host.
    pub host: Option<String>,
    /// Label selector: `key=value,key2!=value,key3` (comma = and).
    pub selector: Option<String>,
    /// Page size (default 500, at most 5000).
    pub limit: Option<usize>,
    /// Continue token from a previous page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    /// Stream changes as JSON lines instead of listing.
    pub watch: Option<bool>,
    /// With `watch`: stream changes after this revision (from a list).
    pub revision: Option<i64>,
}

impl AllQuery {
    fn list_options(&self) -> ListOptions {
        ListOptions {
            selector: self.selector.clone(),
            limit: self.limit,
            continue_token: self.continue_token.clone(),
            watch: self.watch,
            revision: self.revision,
        }
    }
}

/// Instances of every project: for system administrators and host agents.
#[utoipa::path(get, tag = "instances", path = "/v1/instances", operation_id = "list_all_instances", params(AllQuery),
    responses((status = 200, description = "A page of instances of every project; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Instance> = "application/json"), (WatchEvent<Instance> = "application/x-ndjson")))))]
pub async fn list_all(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AllQuery>,
) -> ApiResult<Response> {
    if !caller.system_admin && !caller.is_host_agent() {
        return Err(ServerError(ApiError::forbidden(
            "listing instances of every project needs a system administrator; use /v1/projects/{project}/instances",
        )));
    }
    if let Some(own) = caller
        .host
        .as_deref()
        .filter(|own| q.host.as_deref() != Some(own))
    {
        return Err(ServerError(ApiError::forbidden(format!(
            "the agent of host {own:?} reads only the instances bound to it: ask for /v1/instances?host={own}"
        ))));
    }
    let host = q.host.clone();
    let on_host = move |i: &Instance| host.is_none() || i.status.host == host;
    let guard = crate::api::watch::Guard::admin_or_host(caller);
    crate::api::watch::list_or_watch::<Instance>(&state, None, &q.list_options(), on_host, guard)
        .await
}

#[utoipa::path(get, tag = "instances", path = "/v1/projects/{project}/instances/{name}", operation_id = "get_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "The instance, secret environment values shown as `<secret>`")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(shown(state.repo.get(Some(&project), &name).await?))
}

/// Seal the secret values of a spec for the store. `current` is what the
/// store holds (on replace): a value sent back as `<secret>` keeps it.
fn seal_secret_env(
    state: &AppState,
    instance_id: &str,
    given: BTreeMap<String, String>,
    current: Option<&BTreeMap<String, String>>,
) -> ApiResult<BTreeMap<String, String>> {
    let mut sealed = BTreeMap::new();
    for (key, change) in domain::secret_env_changes(given, current)? {
        let stored = match change {
            SecretValue::Keep(old) => old,
            SecretValue::Seal(plain) => state
                .secrets
                .seal(&crate::secrets::env_context(instance_id, &key), &plain)
                .map_err(|e| ServerError(ApiError::internal(e.to_string())))?,
        };
        sealed.insert(key, stored);
    }
    Ok(sealed)
}

/// The secret environment values of an instance, for the agent of the host
/// it is bound to, which needs them to start the workload. Nobody else,
/// administrators included, gets them through the API.
#[utoipa::path(get, tag = "instances", path = "/v1/projects/{project}/instances/{name}/secret-env", operation_id = "get_instance_secret_env", params(InstancePath),
    responses((status = 200, body = SecretEnv, description = "The plain secret environment values (host agent of the instance's host only)")))]
pub async fn secret_env(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<SecretEnv>> {
    if !caller.is_host_agent() {
        // Users without a role in the project must not learn what exists there.
        auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
        return Err(ServerError(ApiError::forbidden(format!(
            "secret environment values of instance {name:?} go only to the agent of its host; they are never shown"
        ))));
    }
    let instance: Instance = state.repo.get(Some(&project), &name).await?;
    if caller.host.is_none() || caller.host != instance.status.host {
        return Err(ServerError(ApiError::forbidden(format!(
            "only the agent of the host running instance {name:?} may read its secret environment"
        ))));
    }
    let mut values = std::collections::BTreeMap::new();
    for (key, sealed) in &instance.spec.secret_env {
        let context = crate::secrets::env_context(&instance.metadata.id, key);
        let plain = state
            .secrets
            .unseal(&context, sealed)
            .map_err(|e| ServerError(ApiError::internal(e.to_string())))?;
        values.insert(key.clone(), plain);
    }
    Ok(Json(SecretEnv { values }))
}

/// Fetch what a spec names (its image, the kernel image it boots, its
/// security groups) and check the spec against them; returns the id of the
/// image.
async fn validate_spec(state: &AppState, project: &str, spec: &InstanceSpec) -> ApiResult<String> {
    let image: Option<Image> = state.repo.try_get(Some(project), &spec.image).await?;
    let kernel_image: Option<Image> = match spec.vm.as_ref().and_then(|v| v.kernel_image.as_ref()) {
        Some(k) => state.repo.try_get(Some(project), k).await?,
        None => None,
    };
    let mut secgroups = BTreeSet::new();
    for g in &spec.secgroups {
        let found: Option<nimbus_api::SecurityGroup> = state.repo.try_get(Some(project), g).await?;
        if found.is_some() {
            secgroups.insert(g.clone());
        }
    }
    let named = Named {
        image: image.as_ref(),
        kernel_image: kernel_image.as_ref(),
        secgroups: Some(&secgroups),
    };
    let image_id = domain::validate_spec(project, spec, named)?;
    if let Some(image) = &image {
        let all = nimbus_api::ListOptions {
            limit: Some(5000),
            ..Default::default()
        };
        let hosts = state
            .repo
            .list::<nimbus_api::Host>(None, &all, |_| true)
            .await?;
        let architectures: BTreeSet<String> = hosts
            .items
            .iter()
            .map(|h| h.status.architecture.clone())
            .filter(|a| !a.is_empty())
            .collect();
        let imported = nimbus_image::ImportedImage::from_api(&image.status);
        domain::check_image_platform(&spec.image, &imported, &architectures)?;
        crate::vulnscan::policy::enforce_launch_policy(state, project, image).await?;
        crate::signatures::enforce_launch_policy(
            &state.repo,
            state.signatures.as_ref(),
            project,
            image,
        )
        .await?;
    }
    Ok(image_id)
}

/// The networks an instance spec names; `default` is created on demand.
async fn resolve_networks(
    state: &AppState,
    project: &str,
    spec: &InstanceSpec,
) -> ApiResult<Vec<nimbus_api::Network>> {
    let mut nets = Vec::new();
    for n in &spec.networks {
        if n == crate::api::networks::DEFAULT_NETWORK {
            nets.push(crate::api::networks::default_network(&state.repo, project).await?);
            continue;
        }
        match state.repo.try_get(Some(project), n).await? {
            // A network stored before VNIs existed gets one now.
            Some(net) => nets.push(crate::vni::ensure(&state.repo, net).await?),
            None => {
                return Err(SpecError::NetworkNotFound {
                    network: n.clone(),
                    project: project.to_string(),
                }
                .into())
            }
        }
    }
    Ok(nets)
}

/// Give a spec the limits it does not set itself (see
/// `domain::instances::apply_default_limits`), from the project's defaults.
async fn apply_default_limits(
    state: &AppState,
    project: &str,
    spec: &mut InstanceSpec,
) -> ApiResult<Project> {
    let project: Project = state.repo.get(None, project).await?;
    domain::apply_default_limits(spec, &project.spec.instance_defaults);
    Ok(project)
}

/// Refuse an instance the project's quota does not admit (409).
async fn check_instance_quota(
    state: &AppState,
    project: &str,
    spec: &InstanceSpec,
) -> ApiResult<()> {
    let p: Project = state.repo.get(None, project).await?;
    let q = &p.spec.quota;
    if q.instances.is_none()
        && q.vcpus.is_none()
        && q.memory_bytes.is_none()
        && q.disk_bytes.is_none()
    {
        return Ok(());
    }
    let all = ListOptions {
        limit: Some(100_000),
        ..Default::default()
    };
    let existing = state
        .repo
        .list::<Instance>(Some(project), &all, |_| true)
        .await?
        .items;
    crate::scheduler::quota::check_instance_quota(project, q, &existing, spec)?;
    Ok(())
}

#[utoipa::path(post, tag = "instances", path = "/v1/projects/{project}/instances", operation_id = "create_instance", params(ProjectPath), request_body = CreateRequest<InstanceSpec>,
    responses((status = 201, body = Instance, description = "Created, `phase: pending`"),
        (status = 409, description = "An instance of that name already exists in the project, or the project's quota does not admit it"),
        (status = 422, description = "The spec is invalid, or names an image, network or security group that does not exist")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<CreateRequest<InstanceSpec>>,
) -> ApiResult<(StatusCode, Json<Instance>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    domain::validate_instance_name(&req.name)?;
    let image_id = validate_spec(&state, &project, &req.spec).await?;
    let networks = resolve_networks(&state, &project, &req.spec).await?;
    let mut metadata = Metadata::new(&req.name, Some(&project));
    metadata.labels = req.labels;
    let mut spec = req.spec;
    domain::apply_log_cap(&mut spec, state.config.log_max_bytes)?;
    spec.secret_env = seal_secret_env(&state, &metadata.id, spec.secret_env, None)?;
    let p = apply_default_limits(&state, &project, &mut spec).await?;
    domain::size_for_disk_quota(&mut spec, &p.spec.quota);
    let _attaching =
        crate::api::volumes::check_new_attachments(&state.repo, &project, &spec).await?;
    check_instance_quota(&state, &project, &spec).await?;
    let instance = domain::pending_instance(metadata, spec, image_id);
    let forwards = domain::host_port_claims(&instance.spec);
    let created = if networks.is_empty() && forwards.is_empty() {
        state.repo.create(instance).await?
    } else if forwards.is_empty() {
        crate::ipam::create_with_addresses(&state.repo, instance, &networks).await?
    } else {
        let _claiming = state.host_port_claims.lock().await;
        crate::hostports::check(&state, &project, None, &forwards).await?;
        crate::ipam::create_with_addresses(&state.repo, instance, &networks).await?
    };
    crate::scheduler::nudge(&state);
    Ok((StatusCode::CREATED, shown(created)))
}

/// Replace labels and spec; `metadata.revision` must be current (409 if not).
#[utoipa::path(put, tag = "instances", path = "/v1/projects/{project}/instances/{name}", operation_id = "replace_instance", params(InstancePath), request_body = Instance,
    responses((status = 200, body = Instance, description = "The instance as stored"), (status = 409, description = "`metadata.revision` is not the current one: read it again and retry")))]
pub async fn replace(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<Instance>,
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    domain::check_same_name(&name, &body.metadata.name)?;
    let image_id = validate_spec(&state, &project, &body.spec).await?;
    let mut current: Instance = state.repo.get(Some(&project), &name).await?;
    domain::check_not_deleting(&current)?;
    domain::check_replace(&name, &current.spec, &body.spec)?;
    if body.spec.volumes != current.spec.volumes {
        return Err(ServerError(ApiError::invalid(format!(
            "the volumes of instance {name:?} cannot change; create a new instance with the --volume flags you want"
        ))));
    }
    // Limits the body sets are kept; unset ones (a client that built the
    // spec from scratch) get the project's current defaults, so no replace
    // can leave an instance unlimited.
    let mut spec = body.spec;
    // The log cap is fixed at creation: counted in the quota then.
    spec.log_max_bytes = current.spec.log_max_bytes;
    apply_default_limits(&state, &project, &mut spec).await?;
    spec.secret_env = seal_secret_env(
        &state,
        &current.metadata.id,
        spec.secret_env,
        Some(&current.spec.secret_env),
    )?;
    current.metadata.labels = body.metadata.labels;
    current.metadata.revision = body.metadata.revision;
    current.spec = spec;
    current.status.image_id = Some(image_id);
    Ok(shown(state.repo.update(current).await?))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Kill a running workload at once instead of giving it its stop
    /// grace period.
    #[serde(default)]
    pub force: bool,
}

/// Whether the host `instance` is bound to no longer exists.
async fn host_removed(state: &AppState, instance: &Instance) -> ApiResult<bool> {
    let Some(host) = instance.status.host.as_deref() else {
        return Ok(false);
    };
    Ok(state
        .repo
        .try_get::<nimbus_api::Host>(None, host)
        .await?
        .is_none())
}

/// Deletion: instances never started (or bound to a removed host) are
/// removed at once; others are
/// marked and their host's agent removes everything, then finalizes.
#[utoipa::path(delete, tag = "instances", path = "/v1/projects/{project}/instances/{name}", operation_id = "delete_instance", params(InstancePath, DeleteQuery),
    responses((status = 202, body = Instance, description = "Deletion in progress: the host's agent cleans up, then the instance goes"),
        (status = 204, description = "Deleted (it was never bound to a host)")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let mut attempts = 0;
    let current: Instance = loop {
        let current: Instance = state.repo.get(Some(&project), &name).await?;
        if current.status.host.is_some() {
            break current;
        }
        let deleted = crate::events::instance_deleted(&current)?;
        match crate::ipam::delete_with_addresses(
            &state.repo,
            &current,
            Some(current.metadata.revision),
            deleted,
        )
        .await
        {
            Ok(()) => return Ok(StatusCode::NO_CONTENT.into_response()),
            // The scheduler wrote it meanwhile (a placement, or why none):
            // the user asked for no revision, so read it again and decide
            // anew, bound or not.
            Err(e) if e.0.code == nimbus_api::ErrorCode::Conflict && attempts < 5 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    };
    if host_removed(&state, &current).await? {
        // Bound to a host removed since (`nimbus host rm`): no agent is
        // left to clean up, so it goes now.
        super::actions::finalize(&state.repo, &current).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let saved = state
        .repo
        .modify::<Instance, _>(Some(&project), &name, |i| {
            // With `force` the agent stops the workload with a grace
            // period of none: SIGKILL at once.
            domain::request_deletion(i, q.force, Utc::now());
            Ok(())
        })
        .await?;
    Ok((StatusCode::ACCEPTED, shown(saved)).into_response())
}
