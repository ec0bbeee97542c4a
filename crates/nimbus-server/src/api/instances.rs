//! Instances: create, read, change, start/stop/restart, delete, status
//! reports from agents, logs and exec.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use nimbus_api::exec::ExecRequest;
use nimbus_api::resources::Object;
use nimbus_api::{
    validate_name, ApiError, CreateRequest, DesiredState, Image, Instance, InstanceDefaults,
    InstanceKind, InstancePhase, InstanceSpec, InstanceStatus, ListOptions, Metadata, Project,
    ResourceList, RestartMode, Role, SecretEnv, StatusUpdate, WatchEvent, SECRET_REDACTED,
};

use super::body::JsonBody;
use super::params::{InstancePath, ProjectPath};
use super::St;
use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

#[utoipa::path(get, path = "/v1/projects/{project}/instances", operation_id = "list_instances", params(ProjectPath, ListOptions),
    responses((status = 200, description = "A page of the project's instances; with `watch=true` a stream of changes, one `WatchEvent` per line",
        content((ResourceList<Instance> = "application/json"), (WatchEvent<Instance> = "application/x-ndjson")))))]
pub async fn list(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Query(opts): Query<ListOptions>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    super::watch::list_in_project::<Instance>(&state, caller, project, &opts, &headers).await
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
#[utoipa::path(get, path = "/v1/instances", operation_id = "list_all_instances", params(AllQuery),
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
    let host = q.host.clone();
    let on_host = move |i: &Instance| host.is_none() || i.status.host == host;
    let guard = super::watch::Guard::admin_or_host(caller);
    super::watch::list_or_watch::<Instance>(&state, None, &q.list_options(), on_host, guard).await
}

#[utoipa::path(get, path = "/v1/projects/{project}/instances/{name}", operation_id = "get_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "The instance, secret environment values shown as `<secret>`")))]
pub async fn get(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    Ok(shown(state.repo.get(Some(&project), &name).await?))
}

/// An instance as responses show it: secret values replaced by
/// `<secret>`. Every handler answers with this, never the stored object.
fn shown(mut instance: Instance) -> Json<Instance> {
    instance.redact();
    Json(instance)
}

/// Seal the secret values of a spec for the store. `current` is what the
/// store holds (on replace): a value sent back as `<secret>` keeps it.
fn seal_secret_env(
    state: &AppState,
    instance_id: &str,
    given: std::collections::BTreeMap<String, String>,
    current: Option<&std::collections::BTreeMap<String, String>>,
) -> ApiResult<std::collections::BTreeMap<String, String>> {
    let mut sealed = std::collections::BTreeMap::new();
    for (key, value) in given {
        let stored = if value == SECRET_REDACTED {
            match current.and_then(|c| c.get(&key)) {
                Some(old) if crate::secrets::is_sealed(old) => old.clone(),
                _ => {
                    return Err(ServerError(ApiError::invalid(format!(
                        "secret environment variable {key:?} has the placeholder value {SECRET_REDACTED:?} but no stored value to keep; give its real value"
                    ))))
                }
            }
        } else {
            state
                .secrets
                .seal(&crate::secrets::env_context(instance_id, &key), &value)
                .map_err(|e| ServerError(ApiError::internal(e.to_string())))?
        };
        sealed.insert(key, stored);
    }
    Ok(sealed)
}

/// The secret environment values of an instance, for the agent of the host
/// it is bound to, which needs them to start the workload. Nobody else,
/// administrators included, gets them through the API.
#[utoipa::path(get, path = "/v1/projects/{project}/instances/{name}/secret-env", operation_id = "get_instance_secret_env", params(InstancePath),
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

/// Check a spec against its image and sane bounds; returns the id of the
/// image it names.
async fn validate_spec(state: &AppState, project: &str, spec: &InstanceSpec) -> ApiResult<String> {
    let image: Option<Image> = state.repo.try_get(Some(project), &spec.image).await?;
    let Some(image) = image else {
        let how = match spec.kind {
            InstanceKind::Container => "nimbus image import <file>",
            InstanceKind::Vm => "nimbus image import-disk <file>",
            InstanceKind::Unikernel => "nimbus image import-kernel <file>",
        };
        return Err(ServerError(ApiError::invalid(format!(
            "image {:?} not found in project {project:?}; import it with `{how} --name {}`",
            spec.image, spec.image
        ))));
    };
    if spec.kind == InstanceKind::Unikernel && !spec.networks.is_empty() {
        return Err(ServerError(ApiError::invalid(
            "a unikernel cannot join a network; drop --network",
        )));
    }
    if spec.kind == InstanceKind::Vm
        && !spec.networks.is_empty()
        && spec
            .vm
            .as_ref()
            .is_some_and(|v| !v.port_forwards.is_empty())
    {
        return Err(ServerError(ApiError::invalid(
            "a VM on a network is reached through it; drop --forward and publish ports with `nimbus address publish`",
        )));
    }
    if spec.kind != InstanceKind::Container {
        validate_vm_spec(state, spec, &image).await?;
        return Ok(image.metadata.id);
    }
    if spec.vm.is_some() {
        return Err(ServerError(ApiError::invalid(
            "vm settings (vcpus, disk, ssh keys, user-data) apply to kind vm or unikernel only",
        )));
    }
    if image.status.disk.is_some() || image.status.kernel.is_some() {
        return Err(ServerError(ApiError::invalid(format!(
            "image {:?} is a {} image for virtual machines; run it with --kind vm{}",
            spec.image,
            image.status.format,
            if image.status.kernel.is_some() {
                " or --kind unikernel"
            } else {
                ""
            }
        ))));
    }
    if spec.args.is_empty()
        && image.status.defaults.entrypoint.is_empty()
        && image.status.defaults.cmd.is_empty()
    {
        return Err(ServerError(ApiError::invalid(format!(
            "image {:?} has no default command; give one after `--`, e.g. `-- sh -c 'echo hi'`",
            spec.image
        ))));
    }
    if let Some(m) = spec.resources.memory_bytes {
        if m < 4 << 20 {
            return Err(ServerError(ApiError::invalid(format!(
                "memory limit of {m} bytes is below the 4 MiB minimum; ask for at least 4MiB"
            ))));
        }
    }
    if spec.resources.cpu_millis == Some(0) {
        return Err(ServerError(ApiError::invalid(
            "cpu of 0 would never run; give at least 1 millicpu (e.g. 500 for half a CPU)",
        )));
    }
    if let Some(p) = spec.resources.pids_max {
        if p < 1 {
            return Err(ServerError(ApiError::invalid(format!(
                "pids limit {p} is below 1; give at least 1"
            ))));
        }
    }
    if spec.restart_policy.max_retries.is_some()
        && spec.restart_policy.mode != RestartMode::OnFailure
    {
        return Err(ServerError(ApiError::invalid(
            "max_retries applies to the on_failure restart policy only",
        )));
    }
    for key in spec.env.keys().chain(spec.secret_env.keys()) {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ServerError(ApiError::invalid(format!(
                "environment variable name {key:?} is invalid; it must be non-empty without '='"
            ))));
        }
    }
    if let Some(key) = spec.secret_env.keys().find(|k| spec.env.contains_key(*k)) {
        return Err(ServerError(ApiError::invalid(format!(
            "environment variable {key:?} is given both as --env and --secret-env; give it once"
        ))));
    }
    if let Some((key, _)) = spec.secret_env.iter().find(|(_, v)| v.contains('\0')) {
        return Err(ServerError(ApiError::invalid(format!(
            "the value of secret environment variable {key:?} contains a NUL byte, which an environment cannot carry"
        ))));
    }
    if let Some(u) = &spec.user {
        let ok = u
            .split(':')
            .all(|p| !p.is_empty() && p.parse::<u32>().map(|n| n < 65536).unwrap_or(false))
            && u.split(':').count() <= 2;
        if !ok {
            return Err(ServerError(ApiError::invalid(format!(
                "user {u:?} is invalid; give a numeric uid or uid:gid below 65536"
            ))));
        }
    }
    if spec.networks.len() > 1 {
        return Err(ServerError(ApiError::invalid(
            "an instance can join one network for now; give a single --network",
        )));
    }
    for g in &spec.secgroups {
        let found: Option<nimbus_api::SecurityGroup> = state.repo.try_get(Some(project), g).await?;
        if found.is_none() {
            return Err(ServerError(ApiError::invalid(format!(
                "security group {g:?} not found in project {project:?}; create it with `nimbus secgroup create {g} --allow tcp:80`"
            ))));
        }
    }
    if !spec.secgroups.is_empty() && spec.networks.is_empty() {
        return Err(ServerError(ApiError::invalid(
            "security groups filter network traffic, but the instance joins no network; add --network <name>",
        )));
    }
    Ok(image.metadata.id)
}

/// The networks an instance spec names; `default` is created on demand.
async fn resolve_networks(
    state: &AppState,
    project: &str,
    spec: &InstanceSpec,
) -> ApiResult<Vec<nimbus_api::Network>> {
    let mut nets = Vec::new();
    for n in &spec.networks {
        if n == super::networks::DEFAULT_NETWORK {
            nets.push(super::networks::default_network(&state.repo, project).await?);
            continue;
        }
        match state.repo.try_get(Some(project), n).await? {
            Some(net) => nets.push(net),
            None => {
                return Err(ServerError(ApiError::invalid(format!(
                    "network {n:?} not found in project {project:?}; create it with `nimbus network create {n} --subnet 10.20.0.0/24`"
                ))))
            }
        }
    }
    Ok(nets)
}

/// Guest RAM when a VM or unikernel asks for none.
const DEFAULT_VM_MEMORY_BYTES: u64 = 512 << 20;
const DEFAULT_UNIKERNEL_MEMORY_BYTES: u64 = 64 << 20;

/// Largest user-data accepted (cloud-init's NoCloud seed is a small disk).
const MAX_USER_DATA_BYTES: usize = 256 << 10;

async fn validate_vm_spec(state: &AppState, spec: &InstanceSpec, image: &Image) -> ApiResult<()> {
    let bad = |msg: String| Err(ServerError(ApiError::invalid(msg)));
    let vm = spec.vm.clone().unwrap_or_default();
    let kind = if spec.kind == InstanceKind::Vm {
        "vm"
    } else {
        "unikernel"
    };
    match (spec.kind, &image.status.disk, &image.status.kernel) {
        (InstanceKind::Unikernel, _, None) => {
            return bad(format!(
                "image {:?} is not a kernel image; a unikernel boots from one imported with `nimbus image import-kernel`",
                spec.image
            ))
        }
        (InstanceKind::Vm, None, None) => {
            return bad(format!(
                "image {:?} is a {} image for containers; a vm boots from `nimbus image import-disk` or `import-kernel` images",
                spec.image, image.status.format
            ))
        }
        _ => {}
    }
    if spec.kind == InstanceKind::Unikernel
        && (vm.disk_bytes.is_some()
            || !vm.ssh_authorized_keys.is_empty()
            || vm.user_data.is_some()
            || !vm.port_forwards.is_empty())
    {
        return bad(
            "a unikernel gets no disk, cloud-init data or network; drop --disk, --ssh-key, --user-data and --forward".into(),
        );
    }
    if let Some(k) = &vm.kernel_image {
        if spec.kind != InstanceKind::Vm || image.status.disk.is_none() {
            return bad(format!(
                "--kernel-image boots a disk image's VM directly; image {:?} is not a disk image",
                spec.image
            ));
        }
        let project = image.metadata.project.clone().unwrap_or_default();
        let kernel: Option<Image> = state.repo.try_get(Some(&project), k).await?;
        match kernel {
            Some(kimg) if kimg.status.kernel.is_some() => {}
            Some(_) => {
                return bad(format!(
                    "image {k:?} is not a kernel image; import one with `nimbus image import-kernel`"
                ))
            }
            None => {
                return bad(format!(
                    "kernel image {k:?} not found in project {project:?}; import it with `nimbus image import-kernel <vmlinux> --initrd <initrd> --name {k}`"
                ))
            }
        }
    } else if image.status.disk.is_some() && !spec.args.is_empty() {
        return bad(format!(
            "image {:?} boots from its disk through firmware, so a kernel command line cannot be given; drop the arguments after `--` or boot a kernel with --kernel-image",
            spec.image
        ));
    }
    if let Some(m) = spec.resources.memory_bytes {
        if m < 16 << 20 {
            return bad(format!(
                "memory of {m} bytes is below the 16 MiB a {kind} needs; ask for at least 16MiB"
            ));
        }
    }
    if spec.restart_policy.mode != RestartMode::Never {
        return bad(format!(
            "restart policies apply to containers for now; a {kind} runs until it powers off or is stopped; start it again with `nimbus instance start`"
        ));
    }
    if spec.resources.pids_max.is_some() || spec.resources.cpu_millis.is_some() {
        return bad(format!(
            "--cpus and --pids limit containers; a {kind} takes --vcpus"
        ));
    }
    if let Some(v) = vm.vcpus {
        if !(1..=64).contains(&v) {
            return bad(format!("vcpus {v} is not between 1 and 64"));
        }
    }
    if let (Some(want), Some(disk)) = (vm.disk_bytes, &image.status.disk) {
        if want < disk.virtual_size_bytes {
            return bad(format!(
                "disk of {want} bytes is smaller than image {:?} ({} bytes); ask for at least its size",
                spec.image, disk.virtual_size_bytes
            ));
        }
    }
    if vm.disk_bytes.is_some() && image.status.disk.is_none() {
        return bad(format!(
            "image {:?} is a kernel image without a disk; --disk applies to disk images",
            spec.image
        ));
    }
    if let Some(ud) = &vm.user_data {
        if ud.len() > MAX_USER_DATA_BYTES {
            return bad(format!(
                "user-data is {} bytes, more than {MAX_USER_DATA_BYTES}; keep it smaller or fetch the rest from the guest",
                ud.len()
            ));
        }
        if !(ud.starts_with("#cloud-config") || ud.starts_with("#!")) {
            return bad(
                "user-data must start with `#cloud-config` or a `#!` script line, as cloud-init expects".into(),
            );
        }
    }
    for key in &vm.ssh_authorized_keys {
        let kind_ok = key.split_whitespace().next().is_some_and(|t| {
            t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-")
        });
        if !kind_ok || key.contains('\n') || key.split_whitespace().count() < 2 {
            return bad(format!(
                "{:?} is not an SSH public key line; pass the .pub file, e.g. --ssh-key ~/.ssh/id_ed25519.pub",
                key.chars().take(40).collect::<String>()
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &vm.port_forwards {
        if f.host_port < 1024 || f.guest_port == 0 || !seen.insert(f.host_port) {
            return bad(format!(
                "port forward {}:{} is invalid; give distinct HOST:GUEST ports with HOST from 1024 up",
                f.host_port, f.guest_port
            ));
        }
    }
    if !spec.env.is_empty()
        || !spec.secret_env.is_empty()
        || spec.working_dir.is_some()
        || spec.user.is_some()
    {
        return bad(format!(
            "--env, --secret-env, --workdir and --user apply to containers; give a {kind} its settings through --user-data"
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/projects/{project}/instances", operation_id = "create_instance", params(ProjectPath), request_body = CreateRequest<InstanceSpec>,
    responses((status = 201, body = Instance, description = "Created, `phase: pending`"),
        (status = 409, description = "An instance of that name already exists in the project"),
        (status = 422, description = "The spec is invalid, or names an image, network or security group that does not exist")))]
pub async fn create(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<CreateRequest<InstanceSpec>>,
) -> ApiResult<(StatusCode, Json<Instance>)> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    validate_name("instance", &req.name).map_err(ApiError::invalid)?;
    let image_id = validate_spec(&state, &project, &req.spec).await?;
    let networks = resolve_networks(&state, &project, &req.spec).await?;
    let mut metadata = Metadata::new(&req.name, Some(&project));
    metadata.labels = req.labels;
    let mut spec = req.spec;
    spec.secret_env = seal_secret_env(&state, &metadata.id, spec.secret_env, None)?;
    spec.restart_generation = spec.restart_generation.max(1);
    apply_default_limits(&state, &project, &mut spec).await?;
    let instance = Instance {
        metadata,
        spec,
        status: InstanceStatus {
            phase: InstancePhase::Pending,
            reason: Some("waiting for the scheduler to choose a host".into()),
            image_id: Some(image_id),
            ..Default::default()
        },
    };
    // A VM's forwards bind host ports on 127.0.0.1: claimed like published
    // ports, under the same policy and checks.
    let forwards: Vec<crate::hostports::Claim> = instance
        .spec
        .vm
        .as_ref()
        .map(|vm| {
            vm.port_forwards
                .iter()
                .map(|f| crate::hostports::Claim {
                    protocol: nimbus_api::Protocol::Tcp,
                    port: f.host_port,
                })
                .collect()
        })
        .unwrap_or_default();
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

/// Record the limits the instance will really run with, so `instance get`
/// shows them and the scheduler counts them: a container without its own
/// limits gets the project's defaults, then the built-in ones (one tenant's
/// fork bomb or memory hog must not starve the host). A VM's or unikernel's
/// memory is its guest RAM, with a default of its own; their CPU is
/// `--vcpus` and QEMU's process count is capped by the agent, so those two
/// limits stay unset for them.
async fn apply_default_limits(
    state: &AppState,
    project: &str,
    spec: &mut InstanceSpec,
) -> ApiResult<()> {
    match spec.kind {
        InstanceKind::Container => {
            let project: Project = state.repo.get(None, project).await?;
            spec.resources =
                InstanceDefaults::effective(&spec.resources, &project.spec.instance_defaults);
        }
        InstanceKind::Vm => {
            spec.resources
                .memory_bytes
                .get_or_insert(DEFAULT_VM_MEMORY_BYTES);
        }
        InstanceKind::Unikernel => {
            spec.resources
                .memory_bytes
                .get_or_insert(DEFAULT_UNIKERNEL_MEMORY_BYTES);
        }
    }
    Ok(())
}

/// Replace labels and spec; `metadata.revision` must be current (409 if not).
#[utoipa::path(put, path = "/v1/projects/{project}/instances/{name}", operation_id = "replace_instance", params(InstancePath), request_body = Instance,
    responses((status = 200, body = Instance, description = "The instance as stored"), (status = 409, description = "`metadata.revision` is not the current one: read it again and retry")))]
pub async fn replace(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<Instance>,
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    if body.metadata.name != name {
        return Err(ServerError(ApiError::invalid(format!(
            "the body names instance {:?} but the path names {name:?}; instances cannot be renamed",
            body.metadata.name
        ))));
    }
    let image_id = validate_spec(&state, &project, &body.spec).await?;
    let mut current: Instance = state.repo.get(Some(&project), &name).await?;
    if current.metadata.deletion_requested_at.is_some() {
        return Err(ServerError(ApiError::conflict(format!(
            "instance {name:?} is being deleted"
        ))));
    }
    if body.spec.networks != current.spec.networks {
        return Err(ServerError(ApiError::invalid(format!(
            "the networks of instance {name:?} cannot change; create a new instance on the other network"
        ))));
    }
    // What an instance was made from stays: its kind, and for VMs the image,
    // boot kernel and disk the overlay was built on.
    let (old, new) = (&current.spec, &body.spec);
    let old_vm = old.vm.clone().unwrap_or_default();
    let new_vm = new.vm.clone().unwrap_or_default();
    let fixed = if old.kind != new.kind {
        Some("kind")
    } else if old.kind != InstanceKind::Container && old.image != new.image {
        Some("image")
    } else if old_vm.kernel_image != new_vm.kernel_image {
        Some("kernel image")
    } else if old_vm.disk_bytes != new_vm.disk_bytes {
        Some("disk size")
    } else if old_vm.port_forwards != new_vm.port_forwards {
        Some("port forwards")
    } else {
        None
    };
    if let Some(what) = fixed {
        return Err(ServerError(ApiError::invalid(format!(
            "the {what} of instance {name:?} cannot change; delete it and run a new one"
        ))));
    }
    // Limits the body sets are kept; unset ones (a client that built the
    // spec from scratch) get the project's current defaults, so no replace
    // can leave an instance unlimited.
    let mut spec = body.spec;
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

async fn change_spec(
    state: &Arc<AppState>,
    caller: &Caller,
    project: &str,
    name: &str,
    change: impl Fn(&mut InstanceSpec),
) -> ApiResult<Json<Instance>> {
    auth::require_role(&state.repo, caller, project, Role::Member).await?;
    let saved = state
        .repo
        .modify::<Instance, _>(Some(project), name, |i| {
            if i.metadata.deletion_requested_at.is_some() {
                return Err(ServerError(ApiError::conflict(format!(
                    "instance {name:?} is being deleted"
                ))));
            }
            change(&mut i.spec);
            Ok(())
        })
        .await?;
    Ok(shown(saved))
}

#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/start", operation_id = "start_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Started (or already running): the restart generation moves on")))]
pub async fn start(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    let current: Instance = {
        auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
        state.repo.get(Some(&project), &name).await?
    };
    let running =
        current.spec.desired_state == DesiredState::Running && !current.status.phase.is_terminal();
    if running {
        return Ok(shown(current));
    }
    change_spec(&state, &caller, &project, &name, |s| {
        s.desired_state = DesiredState::Running;
        s.restart_generation += 1;
    })
    .await
}

#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/stop", operation_id = "stop_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Asked to stop")))]
pub async fn stop(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    change_spec(&state, &caller, &project, &name, |s| {
        s.desired_state = DesiredState::Stopped;
    })
    .await
}

#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/restart", operation_id = "restart_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Asked to restart: the restart generation moves on")))]
pub async fn restart(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    change_spec(&state, &caller, &project, &name, |s| {
        s.desired_state = DesiredState::Running;
        s.restart_generation += 1;
    })
    .await
}

async fn running_vm(
    state: &Arc<AppState>,
    caller: &Caller,
    project: &str,
    name: &str,
    action: &str,
) -> ApiResult<Instance> {
    auth::require_role(&state.repo, caller, project, Role::Member).await?;
    let instance: Instance = state.repo.get(Some(project), name).await?;
    if instance.spec.kind == InstanceKind::Container {
        return Err(ServerError(ApiError::invalid(format!(
            "{action} works on virtual machines and unikernels; instance {name:?} is a container (use `nimbus instance exec` or stop it)"
        ))));
    }
    Ok(instance)
}

async fn set_paused(
    state: Arc<AppState>,
    caller: Caller,
    project: String,
    name: String,
    paused: bool,
) -> ApiResult<Json<Instance>> {
    let action = if paused { "pause" } else { "resume" };
    let instance = running_vm(&state, &caller, &project, &name, action).await?;
    let wanted_from = if paused {
        InstancePhase::Running
    } else {
        InstancePhase::Paused
    };
    if instance.status.phase != wanted_from {
        return Err(ServerError(ApiError::conflict(format!(
            "instance {name:?} is {}; only a {} instance can be {action}d",
            instance.status.phase.as_str(),
            wanted_from.as_str()
        ))));
    }
    let io = state
        .host_io()
        .ok_or_else(|| ApiError::unavailable("no agent can reach this instance's host"))?;
    io.set_paused(&instance, paused).await?;
    // The agent reports the new phase; wait briefly so the answer shows it.
    let want = if paused {
        InstancePhase::Paused
    } else {
        InstancePhase::Running
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now: Instance = state.repo.get(Some(&project), &name).await?;
        if now.status.phase == want || tokio::time::Instant::now() > deadline {
            return Ok(shown(now));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/pause", operation_id = "pause_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Paused (a running VM or unikernel)"), (status = 409, description = "The instance is not in the phase this needs"),
        (status = 422, description = "The instance is a container")))]
pub async fn pause(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    set_paused(state, caller, project, name, true).await
}

#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/resume", operation_id = "resume_instance", params(InstancePath),
    responses((status = 200, body = Instance, description = "Resumed (a paused VM or unikernel)"), (status = 409, description = "The instance is not in the phase this needs"),
        (status = 422, description = "The instance is a container")))]
pub async fn resume(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Instance>> {
    set_paused(state, caller, project, name, false).await
}

/// Attach to the serial console of a running or paused VM or unikernel.
///
/// The request carries `Connection: upgrade` and `Upgrade: nimbus-exec`;
/// the server answers 101 and from then on the connection carries the exec
/// frames of `exec_in_instance`, each `[kind u8][length u32 big-endian]
/// [payload]`: 0 STDIN (keystrokes) from the client, 1 STDOUT (console
/// output) from the server. The console ends when the caller loses the
/// member role in the project or their token.
#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/console", operation_id = "attach_instance_console",
    params(InstancePath, ("Upgrade" = String, Header, description = "`nimbus-exec`, with `Connection: upgrade`")),
    request_body(content = serde_json::Value, description = "An empty JSON object, `{}`"),
    responses(
        (status = 101, description = "Switching Protocols: the connection becomes the serial console of the VM or unikernel, carrying exec frames (see the operation's description): STDIN (0) in, STDOUT (1) out",
            headers(("Upgrade" = String, description = "`nimbus-exec`"), ("Connection" = String, description = "`upgrade`"))),
        (status = 409, description = "The instance is not running or paused"),
        (status = 422, description = "The instance is a container")))]
pub async fn console(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    mut req: Request,
) -> ApiResult<Response> {
    let instance = running_vm(&state, &caller, &project, &name, "console").await?;
    let session = super::watch::Guard::role(caller, &project, Role::Member).open(&state)?;
    if !matches!(
        instance.status.phase,
        InstancePhase::Running | InstancePhase::Paused
    ) {
        return Err(ServerError(ApiError::conflict(format!(
            "instance {name:?} is {}, not running; start it with `nimbus instance start {name}`",
            instance.status.phase.as_str()
        ))));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The body (an empty JSON object) must be read before the upgrade.
    let _ = axum::body::to_bytes(req.into_body(), 4 << 10).await;
    let io = state
        .host_io()
        .ok_or_else(|| ApiError::unavailable("no agent can serve consoles on this server"))?;
    let shim = io.console(&instance).await?;
    // The console (often a root shell) ends when the caller loses member
    // in the project or their token.
    upgrade_to_relay(&state, session, on_upgrade, shim, "console")
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Kill a running workload at once instead of giving it its stop
    /// grace period.
    #[serde(default)]
    pub force: bool,
}

/// Deletion: instances never started are removed at once; others are
/// marked and their host's agent removes everything, then finalizes.
#[utoipa::path(delete, path = "/v1/projects/{project}/instances/{name}", operation_id = "delete_instance", params(InstancePath, DeleteQuery),
    responses((status = 202, body = Instance, description = "Deletion in progress: the host's agent cleans up, then the instance goes"),
        (status = 204, description = "Deleted (it was never bound to a host)")))]
pub async fn delete(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    let current: Instance = state.repo.get(Some(&project), &name).await?;
    if current.status.host.is_none() {
        crate::ipam::delete_with_addresses(&state.repo, &current, Some(current.metadata.revision))
            .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let saved = state
        .repo
        .modify::<Instance, _>(Some(&project), &name, |i| {
            if i.metadata.deletion_requested_at.is_none() {
                i.metadata.deletion_requested_at = Some(Utc::now());
            }
            if q.force {
                // The agent stops the workload with the spec's grace
                // period: none means SIGKILL at once.
                i.spec.stop_grace_ms = Some(0);
            }
            i.status.phase = InstancePhase::Deleting;
            i.status.reason = Some("deletion requested; the host is cleaning up".into());
            Ok(())
        })
        .await?;
    Ok((StatusCode::ACCEPTED, shown(saved)).into_response())
}

/// An agent reports the observed status of an instance on its host.
#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/status", operation_id = "report_instance_status", params(InstancePath), request_body = StatusUpdate,
    responses((status = 200, body = Instance, description = "The instance with the reported status"),
        (status = 204, description = "Finalized and removed"),
        (status = 409, description = "`finalized` was reported for an instance not being deleted")))]
pub async fn report_status(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    JsonBody(update): JsonBody<StatusUpdate>,
) -> ApiResult<Response> {
    // Users without a role in the project must not learn what exists there.
    if !caller.is_host_agent() {
        auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    }
    let current: Instance = state.repo.get(Some(&project), &name).await?;
    let host = current.status.host.clone();
    if !(caller.system_admin || (caller.host.is_some() && caller.host == host)) {
        return Err(ServerError(ApiError::forbidden(format!(
            "only the agent of the host running instance {name:?} may report its status"
        ))));
    }
    if update.finalized {
        if current.metadata.deletion_requested_at.is_none() {
            return Err(ServerError(ApiError::conflict(format!(
                "instance {name:?} was not being deleted; not finalizing"
            ))));
        }
        crate::ipam::delete_with_addresses(&state.repo, &current, None).await?;
        // Finalizing removes the instance: audited even from an agent.
        let mut resp = StatusCode::NO_CONTENT.into_response();
        resp.extensions_mut()
            .insert(crate::auth::audit::AuditAgentCall);
        return Ok(resp);
    }
    let saved = state
        .repo
        .modify::<Instance, _>(Some(&project), &name, |i| {
            let deleting = i.metadata.deletion_requested_at.is_some();
            let image_id = i.status.image_id.take();
            let addresses = std::mem::take(&mut i.status.addresses);
            i.status = update.status.clone();
            i.status.host = host.clone();
            i.status.image_id = image_id;
            i.status.addresses = addresses;
            if deleting {
                i.status.phase = InstancePhase::Deleting;
            } else if i.spec.auto_remove
                && i.status.phase.is_terminal()
                && i.status.observed_generation >= i.spec.restart_generation
            {
                // The workload ended for good (a restart policy that
                // restarts it keeps it in `backoff`): delete the instance
                // as `rm` would. The ending phase stays visible in this
                // revision, so a watcher sees how it ended.
                i.metadata.deletion_requested_at = Some(Utc::now());
            }
            Ok(())
        })
        .await?;
    Ok(shown(saved).into_response())
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Keep streaming new lines until the instance stops.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
}

#[utoipa::path(get, path = "/v1/projects/{project}/instances/{name}/logs", operation_id = "get_instance_logs", params(InstancePath, LogQuery),
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Lines `<RFC 3339 time> <stdout|stderr> <text>`. With `follow=true` the body is streamed (chunked): new lines arrive as the workload writes them, until the instance stops or the caller loses their role or token")))]
pub async fn logs(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Reader).await?;
    let instance: Instance = state.repo.get(Some(&project), &name).await?;
    let io = state.host_io().ok_or_else(|| {
        ApiError::unavailable("no agent can serve logs on this server; is the host agent running?")
    })?;
    // Counted against the caller's stream limits only when it is long-lived.
    let session = if q.follow {
        Some(super::watch::Guard::role(caller, &project, Role::Reader).open(&state)?)
    } else {
        None
    };
    let files = io.log_files(&instance).await?;
    // A followed log ends when the caller loses their role in the project
    // or their token.
    use futures::StreamExt;
    let lines = crate::controllers::logs::stream(state.clone(), instance, files, q.tail, q.follow);
    let stream = match session {
        Some(session) => lines.take_until(session.revoked(state.clone())).boxed(),
        None => lines.boxed(),
    };
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .map_err(|e| ServerError(ApiError::internal(e.to_string())))
}

/// Run a command in a running instance, its input and output relayed over
/// the upgraded connection.
///
/// The request carries `Connection: upgrade` and `Upgrade: nimbus-exec`;
/// the server answers 101 and from then on the connection carries frames
/// in both directions, each `[kind u8][length u32 big-endian][payload]`,
/// payloads of at most 1 MiB. Client to server: 0 STDIN (bytes for the
/// process's stdin), 4 RESIZE (terminal rows u16 BE, then cols u16 BE),
/// 5 STDIN_EOF (no more stdin). Server to client: 1 STDOUT, 2 STDERR,
/// 3 EXIT (last frame: the exit code as i32 BE, 128+n if killed by signal
/// n). The session ends when the process exits, or when the caller loses
/// the member role in the project or their token.
#[utoipa::path(post, path = "/v1/projects/{project}/instances/{name}/exec", operation_id = "exec_in_instance",
    params(InstancePath, ("Upgrade" = String, Header, description = "`nimbus-exec`, with `Connection: upgrade`")),
    request_body = ExecRequest,
    responses(
        (status = 101, description = "Switching Protocols: the connection becomes a framed exec stream (see the operation's description)",
            headers(("Upgrade" = String, description = "`nimbus-exec`"), ("Connection" = String, description = "`upgrade`"))),
        (status = 409, description = "The instance is not running"),
        (status = 422, description = "No command given")))]
pub async fn exec(
    State(state): St,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    mut req: Request,
) -> ApiResult<Response> {
    auth::require_role(&state.repo, &caller, &project, Role::Member).await?;
    // Counted before the shim is asked for anything.
    let session = super::watch::Guard::role(caller, &project, Role::Member).open(&state)?;
    let instance: Instance = state.repo.get(Some(&project), &name).await?;
    if instance.status.phase != InstancePhase::Running {
        return Err(ServerError(ApiError::conflict(format!(
            "instance {name:?} is {}, not running; start it with `nimbus instance start {name}`",
            instance.status.phase.as_str()
        ))));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 64 << 10)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the exec request: {e}")))?;
    let exec_req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the exec request is not valid JSON: {e}")))?;
    if exec_req.args.is_empty() {
        return Err(ServerError(ApiError::invalid(
            "exec needs a command, e.g. `nimbus instance exec web -- ps`",
        )));
    }
    let io = state
        .host_io()
        .ok_or_else(|| ApiError::unavailable("no agent can serve exec on this server"))?;
    let shim = io.exec(&instance, &exec_req).await?;
    // The session ends when the caller loses member in the project or
    // their token.
    upgrade_to_relay(&state, session, on_upgrade, shim, "exec")
}

/// Answer 101 and relay the upgraded connection to the shim's stream (exec
/// or console) until either ends, or until the session is revoked.
fn upgrade_to_relay(
    state: &Arc<AppState>,
    session: crate::auth::session::Session,
    on_upgrade: hyper::upgrade::OnUpgrade,
    shim: Box<dyn crate::hostio::ExecStream>,
    what: &'static str,
) -> ApiResult<Response> {
    let revoked = session.revoked(state.clone());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // Dropping the relay drops both directions and both
                // connections: nothing typed after revocation reaches the shim.
                tokio::select! {
                    _ = relay_exec(hyper_util::rt::TokioIo::new(upgraded), shim) => {}
                    _ = revoked => tracing::info!("{what} session ended: its caller is no longer allowed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "{what} upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "nimbus-exec")
        .body(Body::empty())
        .map_err(|e| ServerError(ApiError::internal(e.to_string())))
}

/// Relay an exec session. The shim's output is copied to its end even if
/// the other direction fails first, so the exit frame always arrives. Both
/// directions run inside this one future (no spawned task), so dropping it
/// ends the whole session.
async fn relay_exec<C, S>(client: C, shim: S)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut shim_rd, mut shim_wr) = tokio::io::split(shim);
    let input = async {
        let _ = tokio::io::copy(&mut client_rd, &mut shim_wr).await;
        let _ = shim_wr.shutdown().await;
    };
    let output = async {
        let _ = tokio::io::copy(&mut shim_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    };
    tokio::pin!(input, output);
    let mut input_done = false;
    loop {
        tokio::select! {
            _ = &mut input, if !input_done => input_done = true,
            _ = &mut output => return,
        }
    }
}

#[cfg(test)]
mod relay_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Dropping a relay (as revocation does) must stop input at once: the
    /// old relay copied stdin in a spawned task that outlived it.
    #[tokio::test]
    async fn a_dropped_relay_forwards_no_more_input() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (shim, mut shim_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(super::relay_exec(client, shim));
        client_peer
            .write_all(b"before")
            .await
            .expect("write before");
        let mut got = [0u8; 6];
        shim_peer
            .read_exact(&mut got)
            .await
            .expect("relayed before");
        assert_eq!(&got, b"before");
        relay.abort();
        let _ = relay.await;
        // The relay is gone: the shim side sees the end of its stream,
        // never the bytes typed afterwards.
        let _ = client_peer.write_all(b"after").await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            shim_peer.read_to_end(&mut rest),
        )
        .await
        .expect("the shim side must be closed once the relay is dropped");
        assert!(read.is_ok());
        assert!(
            rest.is_empty(),
            "input after the relay ended reached the shim: {rest:?}"
        );
    }
}
