//! The OpenAPI document, generated from the handlers' annotations.
//!
//! Each handler declares its path and query parameters, its request body
//! and its success responses; `ErrorResponses` adds the error responses
//! every operation of its kind can give (all in the API's error format),
//! so a handler only spells out the ones it says something specific about.

use axum::Json;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::OpenApi;

use super::{
    addresses, audit, events, host_join, hostio_tickets, hosts, image_blobs, image_scans, images,
    instances, metrics, network_peers, networks, objects, policies, projects, secgroups, servers,
    signatures, usage, users, volume_attach, volumes, vulndb,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Nimbus API", description = "Private and hybrid cloud: projects, images, instances, hosts.

Errors are JSON: `{\"error\": {\"code\", \"status\", \"message\"}}` (`ErrorResponse`). Lists take `selector`, `limit` and `continue`; with `watch=true` (and optionally `revision=N` from a list) they stream `application/x-ndjson` instead: one `WatchEvent` per line (`ADDED`, `MODIFIED`, `DELETED`, or `ERROR` when the history is gone: re-list and watch again)."),
    paths(
        super::health, super::whoami, document, audit::list, audit::export,
        projects::list, projects::create, projects::get, projects::update, projects::delete,
        users::list, users::create, users::get, users::delete,
        users::create_token, users::list_tokens, users::get_token, users::delete_token,
        users::list_bindings, users::get_binding, users::create_binding, users::delete_binding,
        servers::list, servers::version, hosts::list, hosts::get, hosts::remove, hosts::register, hosts::report, hosts::cordon, hosts::uncordon,
        network_peers::list,
        hostio_tickets::consume, host_join::create, host_join::list, host_join::delete, host_join::join,
        images::list, images::get, images::import, images::delete, image_blobs::get,
        signatures::add, signatures::get, policies::get, policies::set,
        instances::crud::list, instances::crud::list_all, instances::crud::get, instances::crud::create, instances::crud::replace,
        instances::actions::start, instances::actions::stop, instances::actions::restart, instances::crud::delete,
        instances::actions::report_status, instances::streams::logs, instances::streams::exec, instances::crud::secret_env,
        networks::list, networks::list_all, networks::get, networks::create, networks::delete,
        secgroups::list, secgroups::list_all, secgroups::get, secgroups::create, secgroups::replace, secgroups::delete,
        addresses::list, addresses::list_all, addresses::get, addresses::create, addresses::delete,
        addresses::report_status,
        instances::actions::pause, instances::actions::resume, instances::streams::console,
        events::list, usage::get, metrics::scrape, metrics::report_stats,
        objects::list_buckets, objects::create_bucket, objects::delete_bucket,
        objects::list_credentials, objects::create_credential, objects::delete_credential,
        volumes::list, volumes::list_all, volumes::get, volumes::create, volumes::delete,
        volumes::resize, volumes::create_snapshot, volumes::delete_snapshot, volumes::report_status,
        volume_attach::attach, volume_attach::detach,
        vulndb::get, vulndb::import, image_scans::scan, image_scans::get,
    ),
    components(schemas(nimbus_api::error::ErrorResponse)),
    modifiers(&BearerAuth, &ErrorResponses),
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

/// One error response shared by the operations: its status, the name of
/// its entry in `components/responses`, and what it means.
struct CommonError {
    status: &'static str,
    component: &'static str,
    description: &'static str,
    /// Whether an operation can give it.
    applies: fn(&OperationFacts) -> bool,
}

/// What decides which errors an operation can give.
struct OperationFacts {
    method: &'static str,
    /// Served without a token (`security: [{}]`).
    public: bool,
    has_path_params: bool,
    has_params: bool,
    has_body: bool,
    has_json_body: bool,
    /// Opens a long-lived stream (watch, followed logs, exec, console),
    /// which counts against the caller's stream limits.
    streams: bool,
}

const COMMON_ERRORS: &[CommonError] = &[
    CommonError {
        status: "400",
        component: "BadRequest",
        description: "The request is malformed: a query parameter, path or body that does not parse",
        applies: |o| o.has_params || o.has_body,
    },
    CommonError {
        status: "401",
        component: "Unauthenticated",
        description: "No token, or an unknown, expired or revoked one",
        applies: |o| !o.public,
    },
    CommonError {
        status: "403",
        component: "Forbidden",
        description: "The caller's role (or token kind) does not allow this",
        applies: |o| !o.public,
    },
    CommonError {
        status: "404",
        component: "NotFound",
        description: "Not found, or in a project the caller has no role in",
        applies: |o| o.has_path_params,
    },
    CommonError {
        status: "409",
        component: "Conflict",
        description: "Conflicts with the current state (already exists, in use, stale revision)",
        applies: |o| !o.public && matches!(o.method, "post" | "put" | "delete" | "patch"),
    },
    CommonError {
        status: "413",
        component: "PayloadTooLarge",
        description: "The request body is larger than the server accepts",
        applies: |o| o.has_body,
    },
    CommonError {
        status: "415",
        component: "UnsupportedMediaType",
        description: "The request body is not `application/json`",
        applies: |o| o.has_json_body && !o.streams,
    },
    CommonError {
        status: "422",
        component: "Invalid",
        description: "The request is well-formed but invalid: the message says which field and why",
        applies: |o| matches!(o.method, "post" | "put" | "patch"),
    },
    CommonError {
        status: "429",
        component: "TooManyRequests",
        description: "The caller's token or user has as many streams open as allowed; close one",
        applies: |o| o.streams,
    },
    CommonError {
        status: "507",
        component: "InsufficientStorage",
        description: "The disk holding the server's data is full: nothing was changed; the message names the path and what to free",
        applies: |o| !o.public && matches!(o.method, "post" | "put" | "delete" | "patch"),
    },
    CommonError {
        status: "default",
        component: "Error",
        description: "Any other error: 410 when a watch's revision is compacted, 500 internal, 503 unavailable (no agent reachable)",
        applies: |_| true,
    },
];

/// Adds the shared error responses to every operation they apply to, and
/// the error body to error responses an annotation declared without one.
struct ErrorResponses;

fn error_content() -> Content {
    Content::new(Some(Ref::from_schema_name("ErrorResponse")))
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
        ("head", item.head.as_mut()),
        ("options", item.options.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

fn facts(method: &'static str, op: &Operation) -> OperationFacts {
    let params = op.parameters.as_deref().unwrap_or_default();
    let in_path = |p: &&utoipa::openapi::path::Parameter| p.parameter_in == ParameterIn::Path;
    let query_named = |name: &str| {
        params
            .iter()
            .any(|p| p.parameter_in == ParameterIn::Query && p.name == name)
    };
    let has_json_body = op
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"));
    OperationFacts {
        method,
        public: op
            .security
            .as_ref()
            .is_some_and(|s| s.iter().all(|r| *r == Default::default())),
        has_path_params: params.iter().any(|p| in_path(&p)),
        has_params: params.iter().any(|p| p.parameter_in != ParameterIn::Header),
        has_body: op.request_body.is_some(),
        has_json_body,
        streams: query_named("watch")
            || query_named("follow")
            || op.responses.responses.contains_key("101"),
    }
}

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for e in COMMON_ERRORS {
            let mut response = Response::new(e.description);
            response
                .content
                .insert("application/json".into(), error_content());
            components
                .responses
                .insert(e.component.into(), RefOr::T(response));
        }
        for item in openapi.paths.paths.values_mut() {
            for (method, op) in operations_mut(item) {
                let facts = facts(method, op);
                let responses = &mut op.responses.responses;
                for e in COMMON_ERRORS.iter().filter(|e| (e.applies)(&facts)) {
                    responses.entry(e.status.into()).or_insert_with(|| {
                        RefOr::Ref(Ref::new(format!("#/components/responses/{}", e.component)))
                    });
                }
                // Errors an annotation describes specifically still carry
                // the error body.
                for (status, response) in responses.iter_mut() {
                    let is_error = status == "default" || status.starts_with(['4', '5']);
                    if let (true, RefOr::T(r)) = (is_error, response) {
                        if r.content.is_empty() {
                            r.content.insert("application/json".into(), error_content());
                        }
                    }
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi_document", tag = "system", security(()),
    responses((status = 200, body = serde_json::Value, description = "This OpenAPI 3.1 document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;
    use utoipa::OpenApi;

    use super::ApiDoc;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).expect("the document serializes")
    }

    /// `(method, path, operation)` of every operation in the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                if let Some(op) = item.get(m) {
                    out.push((m.to_string(), path.clone(), op.clone()));
                }
            }
        }
        out
    }

    /// The `{param}` names of a path template.
    fn template_params(path: &str) -> BTreeSet<String> {
        path.split('{')
            .skip(1)
            .filter_map(|s| s.split_once('}').map(|(name, _)| name.to_string()))
            .collect()
    }

    /// The routes `router()` registers, read from its source and from the
    /// sources of the routers it merges: `(method, path)` for every method
    /// router of every `.route(path, ...)` call.
    fn router_routes() -> BTreeSet<(String, String)> {
        let sources = [
            ("mod.rs", include_str!("mod.rs"), "pub fn router("),
            (
                "instances/mod.rs",
                include_str!("instances/mod.rs"),
                "pub fn routes(",
            ),
        ];
        let mut routes = BTreeSet::new();
        for (file, source, start) in sources {
            let router_fn = source
                .split_once(start)
                .map(|(_, rest)| rest)
                .unwrap_or_else(|| panic!("{file} has `{start}`"));
            read_routes(router_fn, &mut routes);
        }
        routes
    }

    fn read_routes(router_fn: &str, routes: &mut BTreeSet<(String, String)>) {
        for call in router_fn.split(".route(").skip(1) {
            let call = call.trim_start();
            let rest = call.strip_prefix('"').expect("a route path literal");
            let (path, rest) = rest.split_once('"').expect("the path literal ends");
            let rest = rest.trim_start().strip_prefix(',').expect("a comma");
            // The method router expression: identifiers called at depth 0
            // (`get(..).post(..)`) are the methods.
            let mut depth = 0i32;
            let mut ident = String::new();
            for c in rest.chars() {
                match c {
                    '(' => {
                        if depth == 0 && METHODS.contains(&ident.as_str()) {
                            routes.insert((ident.clone(), path.to_string()));
                        }
                        depth += 1;
                        ident.clear();
                    }
                    ')' => {
                        depth -= 1;
                        if depth < 0 {
                            break;
                        }
                        ident.clear();
                    }
                    c if c.is_alphanumeric() || c == '_' => ident.push(c),
                    _ => ident.clear(),
                }
            }
        }
    }

    #[test]
    fn every_path_parameter_is_declared_on_every_operation() {
        let doc = document();
        let mut problems = Vec::new();
        for (method, path, op) in operations(&doc) {
            let wanted = template_params(&path);
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let declared: BTreeMap<String, bool> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["required"] == true,
                    )
                })
                .collect();
            let names: BTreeSet<String> = declared.keys().cloned().collect();
            if names != wanted {
                problems.push(format!(
                    "{} {path}: path parameters {names:?}, the path has {wanted:?}",
                    method.to_uppercase()
                ));
            }
            for (name, required) in declared {
                if !required {
                    problems.push(format!(
                        "{} {path}: path parameter {name:?} is not required",
                        method.to_uppercase()
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_router_reader_finds_routes() {
        let routes = router_routes();
        // Spot checks that the source reader works: one route with three
        // methods, one in the images sub-router, one single-method route.
        for (m, p) in [
            ("get", "/v1/projects/{project}/instances/{name}"),
            ("put", "/v1/projects/{project}/instances/{name}"),
            ("delete", "/v1/projects/{project}/instances/{name}"),
            ("post", "/v1/projects/{project}/images"),
            ("get", "/v1/openapi.json"),
        ] {
            assert!(
                routes.contains(&(m.to_string(), p.to_string())),
                "{m} {p} not read from the router sources: {routes:?}"
            );
        }
        assert!(routes.len() > 50, "only {} routes read", routes.len());
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let doc = document();
        let documented: BTreeSet<(String, String)> = operations(&doc)
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        let routed = router_routes();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document (annotate the handler and add it to `paths(...)` in openapi.rs): {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented operations the router does not serve: {unrouted:?}"
        );
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document();
        let mut seen = BTreeMap::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
                .to_string();
            if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
                panic!("operationId {id:?} is used by {other} and {method} {path}");
            }
        }
    }

    /// Where a response (inline or a `components/responses` reference)
    /// points its JSON content.
    fn json_schema_ref(doc: &Value, response: &Value) -> Option<String> {
        let response = match response["$ref"].as_str() {
            Some(r) => {
                let name = r.rsplit('/').next()?;
                &doc["components"]["responses"][name]
            }
            None => response,
        };
        response["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .map(str::to_string)
    }

    #[test]
    fn every_operation_documents_its_errors_in_the_error_format() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().expect("responses");
            let errors: Vec<&String> = responses
                .keys()
                .filter(|s| *s == "default" || s.starts_with('4') || s.starts_with('5'))
                .collect();
            assert!(
                responses.contains_key("default"),
                "{method} {path} has no default error response"
            );
            for status in errors {
                assert_eq!(
                    json_schema_ref(&doc, &responses[status]).as_deref(),
                    Some("#/components/schemas/ErrorResponse"),
                    "{method} {path}: response {status} is not an ErrorResponse"
                );
            }
            let authenticated = op.get("security").is_none();
            if authenticated {
                for status in ["401", "403"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} needs a token but documents no {status}"
                    );
                }
            }
            if !template_params(&path).is_empty() {
                assert!(responses.contains_key("404"), "{method} {path} has no 404");
            }
        }
    }

    #[test]
    fn streaming_operations_are_documented_as_streams() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let query = |name: &str| {
                params
                    .iter()
                    .any(|p| p["in"] == "query" && p["name"] == name)
            };
            let ok = &op["responses"]["200"]["content"];
            if query("watch") {
                assert!(
                    ok["application/x-ndjson"]["schema"]["$ref"]
                        .as_str()
                        .is_some_and(|r| r.contains("WatchEvent")),
                    "{method} {path} takes watch but documents no x-ndjson WatchEvent stream: {ok}"
                );
                assert!(
                    ok["application/json"]["schema"]["$ref"]
                        .as_str()
                        .is_some_and(|r| r.contains("ResourceList")),
                    "{method} {path} documents no list: {ok}"
                );
                assert!(op["responses"].get("429").is_some(), "{method} {path}");
            }
            if query("follow") {
                assert!(ok.get("text/plain").is_some(), "{method} {path}: {ok}");
            }
        }
        for action in ["exec", "console"] {
            let path = format!("/v1/projects/{{project}}/instances/{{name}}/{action}");
            let op = &doc["paths"][&path]["post"];
            assert!(
                op["responses"]["101"]["headers"].get("Upgrade").is_some(),
                "{path}: {}",
                op["responses"]
            );
            assert!(
                op["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("[kind u8][length u32 big-endian]")),
                "{path} does not describe the frame protocol"
            );
        }
    }
}
