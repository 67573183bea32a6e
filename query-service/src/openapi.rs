//! `GET /openapi.json`: the OpenAPI 3 document, generated from the
//! handlers and their types; the responses every route shares (problems,
//! the position header, bearer authentication) are added here once.

use axum::Json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::Required;
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::problem::Problem;
use crate::routes::{
    audit, conversations, dashboard, incidents, live, series, streams, users, workflows,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "copilot-data query API", description = "Read models of the copilot's event log, for dashboards."),
    paths(
        users::me, users::list_users, users::get_user, users::list_sessions,
        conversations::list, conversations::get, conversations::messages,
        workflows::list, workflows::get, workflows::list_executions, workflows::get_execution,
        incidents::list, incidents::get, incidents::list_runbooks, incidents::get_runbook,
        audit::list, crate::search::search, dashboard::summary, series::series,
        streams::command, streams::events, live::live, live::presence,
        crate::health::healthz, crate::health::readyz,
    ),
    components(schemas(Problem)),
    modifiers(&Shared)
)]
pub struct ApiDoc;

struct Shared;

/// Statuses any `/v1` route may answer with a problem body.
const PROBLEMS: [(&str, &str); 10] = [
    (
        "400",
        "a parameter, header or body field is invalid (named in `parameter`)",
    ),
    (
        "401",
        "missing, malformed, unknown, expired or revoked credentials",
    ),
    ("403", "an endpoint for administrators"),
    ("404", "no such resource visible to the caller"),
    ("413", "the body is too large"),
    ("429", "the caller's rate limit; see Retry-After"),
    ("431", "the headers are too large"),
    ("500", "an internal error"),
    (
        "503",
        "a dependency is down, or X-Min-Position was not reached within X-Wait-Ms",
    ),
    ("504", "the request took too long"),
];

fn problem_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("a session token (cps_…) or an API key (cpk_…)"))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/");
            for operation in operations(item) {
                let responses = &mut operation.responses.responses;
                for (_, response) in responses.iter_mut() {
                    if let utoipa::openapi::RefOr::T(response) = response {
                        response.headers.insert(
                            "X-Projection-Position".into(),
                            HeaderBuilder::new()
                                .description(Some(
                                    "the projection position the answer reflects (generation.tx_id.seq)",
                                ))
                                .build(),
                        );
                    }
                }
                if api {
                    for (status, description) in PROBLEMS {
                        responses
                            .entry(status.to_string())
                            .or_insert_with(|| problem_response(description).into());
                    }
                    operation.security = Some(vec![SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
                    let parameters = operation.parameters.get_or_insert_with(Vec::new);
                    parameters.extend(consistency_headers());
                }
            }
        }
    }
}

/// `X-Min-Position`, `X-Wait-Ms` and `Cache-Control`, taken by every `/v1` route.
fn consistency_headers() -> Vec<Parameter> {
    let string = |pattern: Option<&str>| {
        let mut schema = ObjectBuilder::new().schema_type(Type::String);
        if let Some(p) = pattern {
            schema = schema.pattern(Some(p));
        }
        schema.build()
    };
    vec![
        ParameterBuilder::new()
            .name("X-Min-Position")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some("wait until the projections read have passed this position (a command's `position`)"))
            .schema(Some(string(Some(r"^[0-9]+\.[0-9]+\.[0-9]+$"))))
            .build(),
        ParameterBuilder::new()
            .name("X-Wait-Ms")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some("how long to wait for X-Min-Position (default 5000, at most 30000), else 503"))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(30_000))
                    .build(),
            ))
            .build(),
        ParameterBuilder::new()
            .name("Cache-Control")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some("`no-cache`: answer from the database, not from the response cache"))
            .schema(Some(string(None)))
            .build(),
    ]
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
