//! The REST API under `/v1`: one file per group of resources.

pub mod addresses;
pub mod audit;
pub mod body;
pub mod events;
pub mod host_join;
pub mod hostio_tickets;
pub mod hosts;
pub mod image_blobs;
pub mod image_scans;
pub mod images;
pub mod instances;
pub mod metrics;
pub mod network_peers;
pub mod networks;
pub mod objects;
pub mod openapi;
pub mod params;
pub mod policies;
pub mod projects;
pub mod registry;
pub mod secgroups;
pub mod servers;
pub mod signatures;
pub mod usage;
pub mod users;
pub mod volume_attach;
pub mod volumes;
pub mod vulndb;
pub mod watch;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use nimbus_api::{ApiError, WhoAmI};

use crate::auth::{self, Caller};
use crate::error::{ApiResult, ServerError};
use crate::state::AppState;

pub type St = axum::extract::State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let image_limit = usize::try_from(state.config.max_image_bytes).unwrap_or(usize::MAX);
    let images = Router::new()
        .route(
            "/v1/projects/{project}/images",
            get(images::list).post(images::import),
        )
        .layer(DefaultBodyLimit::max(image_limit));
    let vulndb_upload = Router::new()
        .route("/v1/vulndb", get(vulndb::get).post(vulndb::import))
        .layer(DefaultBodyLimit::max(vulndb::MAX_VULNDB_UPLOAD_BYTES));
    let api = Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/whoami", get(whoami))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/export", get(audit::export))
        .route("/v1/projects", get(projects::list).post(projects::create))
        .route(
            "/v1/projects/{project}",
            get(projects::get)
                .put(projects::update)
                .delete(projects::delete),
        )
        .route(
            "/v1/projects/{project}/rolebindings",
            get(users::list_bindings).post(users::create_binding),
        )
        .route(
            "/v1/projects/{project}/rolebindings/{user}",
            get(users::get_binding).delete(users::delete_binding),
        )
        .route("/v1/users", get(users::list).post(users::create))
        .route("/v1/users/{user}", get(users::get).delete(users::delete))
        .route(
            "/v1/tokens",
            get(users::list_tokens).post(users::create_token),
        )
        .route(
            "/v1/tokens/{token}",
            get(users::get_token).delete(users::delete_token),
        )
        .route("/v1/servers", get(servers::list))
        .route("/v1/version", get(servers::version))
        .route("/v1/hosts", get(hosts::list).post(hosts::register))
        .route(
            "/v1/hosts/join-tokens",
            get(host_join::list).post(host_join::create),
        )
        .route(
            "/v1/hosts/join-tokens/{token}",
            axum::routing::delete(host_join::delete),
        )
        // `auth::JOIN_PATH`, spelled out: the OpenAPI test reads route literals.
        .route("/v1/hosts/join", post(host_join::join))
        .route("/v1/hosts/{host}", get(hosts::get).delete(hosts::remove))
        .route("/v1/hosts/{host}/status", post(hosts::report))
        .route("/v1/hosts/{host}/network-peers", get(network_peers::list))
        .route(
            "/v1/hosts/{host}/io-tickets/{ticket}",
            post(hostio_tickets::consume),
        )
        .route("/v1/hosts/{host}/cordon", post(hosts::cordon))
        .route("/v1/hosts/{host}/uncordon", post(hosts::uncordon))
        .route("/v1/hosts/{host}/stats", put(metrics::report_stats))
        .merge(images)
        .route(
            "/v1/projects/{project}/images/{name}",
            get(images::get).delete(images::delete),
        )
        .route(
            "/v1/projects/{project}/images/{name}/scan",
            get(image_scans::get).post(image_scans::scan),
        )
        .merge(vulndb_upload)
        .route(
            "/v1/projects/{project}/images/{name}/blobs/{digest}",
            get(image_blobs::get),
        )
        .route(
            "/v1/projects/{project}/images/{name}/signatures",
            post(signatures::add),
        )
        .route(
            "/v1/projects/{project}/images/{name}/signatures/{tag}",
            get(signatures::get),
        )
        .route(
            "/v1/projects/{project}/policy",
            get(policies::get).put(policies::set),
        )
        .merge(instances::routes())
        .route("/v1/projects/{project}/events", get(events::list))
        .route("/v1/projects/{project}/usage", get(usage::get))
        .route("/v1/networks", get(networks::list_all))
        .route(
            "/v1/projects/{project}/networks",
            get(networks::list).post(networks::create),
        )
        .route(
            "/v1/projects/{project}/networks/{name}",
            get(networks::get).delete(networks::delete),
        )
        .route("/v1/secgroups", get(secgroups::list_all))
        .route(
            "/v1/projects/{project}/secgroups",
            get(secgroups::list).post(secgroups::create),
        )
        .route(
            "/v1/projects/{project}/secgroups/{name}",
            get(secgroups::get)
                .put(secgroups::replace)
                .delete(secgroups::delete),
        )
        .route("/v1/addresses", get(addresses::list_all))
        .route(
            "/v1/projects/{project}/addresses",
            get(addresses::list).post(addresses::create),
        )
        .route(
            "/v1/projects/{project}/addresses/{name}",
            get(addresses::get).delete(addresses::delete),
        )
        .route(
            "/v1/projects/{project}/addresses/{name}/status",
            post(addresses::report_status),
        )
        .route(
            "/v1/projects/{project}/buckets",
            get(objects::list_buckets).post(objects::create_bucket),
        )
        .route(
            "/v1/projects/{project}/buckets/{name}",
            axum::routing::delete(objects::delete_bucket),
        )
        .route(
            "/v1/projects/{project}/s3credentials",
            get(objects::list_credentials).post(objects::create_credential),
        )
        .route(
            "/v1/projects/{project}/s3credentials/{name}",
            axum::routing::delete(objects::delete_credential),
        )
        .route("/v1/volumes", get(volumes::list_all))
        .route(
            "/v1/projects/{project}/volumes",
            get(volumes::list).post(volumes::create),
        )
        .route(
            "/v1/projects/{project}/volumes/{name}",
            get(volumes::get).delete(volumes::delete),
        )
        .route(
            "/v1/projects/{project}/volumes/{name}/attach",
            post(volume_attach::attach),
        )
        .route(
            "/v1/projects/{project}/volumes/{name}/detach",
            post(volume_attach::detach),
        )
        .route(
            "/v1/projects/{project}/volumes/{name}/resize",
            post(volumes::resize),
        )
        .route(
            "/v1/projects/{project}/volumes/{name}/snapshots",
            post(volumes::create_snapshot),
        )
        .route(
            "/v1/projects/{project}/volumes/{name}/snapshots/{snapshot}",
            axum::routing::delete(volumes::delete_snapshot),
        )
        .route(
            "/v1/projects/{project}/volumes/{name}/status",
            post(volumes::report_status),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::auth_layer,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Its own authentication (Basic or Bearer, with a challenge) and
        // error format, so merged after the API's layers.
        .merge(registry::router(state.clone()));
    // Outermost, so a request's time includes authentication; applied per
    // route, so the route template (`MatchedPath`) is known.
    let api = match metrics::CountRequestsLayer::new(&state.metrics) {
        Some(count) => api.layer(count),
        None => api,
    };
    api.with_state(state.clone())
        .merge(crate::console::router(state))
}

async fn not_found(uri: axum::http::Uri) -> ServerError {
    ServerError(ApiError::not_found(format!(
        "no API route {}; see /v1/openapi.json for the routes",
        uri.path()
    )))
}

#[utoipa::path(get, path = "/v1/health", operation_id = "health", tag = "system", security(()),
    responses((status = 200, body = serde_json::Value, description = "The server is up: `{\"status\": \"ok\", \"version\": \"<version>\"}`")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(
        serde_json::json!({"status": "ok", "version": nimbus_api::BuildVersion::current().release}),
    )
}

#[utoipa::path(get, path = "/v1/whoami", operation_id = "whoami", tag = "system",
    responses((status = 200, body = WhoAmI, description = "The caller: user, token, system administrator or not, roles per project")))]
pub async fn whoami(
    axum::extract::State(state): St,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<WhoAmI>> {
    let mut roles = std::collections::BTreeMap::new();
    let page = state
        .repo
        .list::<nimbus_api::RoleBinding>(None, &Default::default(), |b| b.spec.user == caller.user)
        .await?;
    for b in page.items {
        if let Some(p) = b.metadata.project {
            roles.insert(p, b.spec.role);
        }
    }
    Ok(Json(WhoAmI {
        user: caller.user.clone(),
        system_admin: caller.system_admin,
        metrics_reader: caller.metrics_reader,
        token_id: caller.token_id.clone(),
        roles,
    }))
}
