//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use super::{addresses, audit, hosts, images, instances, networks, projects, secgroups, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "Nimbus API", description = "Private and hybrid cloud: projects, images, instances, hosts."),
    paths(
        super::health, super::whoami, audit::list,
        projects::list, projects::create, projects::get, projects::update, projects::delete,
        users::list, users::create, users::get, users::delete,
        users::create_token, users::list_tokens, users::get_token, users::delete_token,
        users::list_bindings, users::get_binding, users::create_binding, users::delete_binding,
        hosts::list, hosts::get, hosts::register, hosts::report,
        images::list, images::get, images::import, images::delete,
        instances::list, instances::list_all, instances::get, instances::create, instances::replace,
        instances::start, instances::stop, instances::restart, instances::delete,
        instances::report_status, instances::logs, instances::exec, instances::secret_env,
        networks::list, networks::list_all, networks::get, networks::create, networks::delete,
        secgroups::list, secgroups::list_all, secgroups::get, secgroups::create, secgroups::replace, secgroups::delete,
        addresses::list, addresses::list_all, addresses::get, addresses::create, addresses::delete,
        addresses::report_status,
        instances::pause, instances::resume, instances::console,
    ),
    components(schemas(nimbus_api::error::ErrorResponse, nimbus_api::WatchEvent<nimbus_api::Instance>)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
