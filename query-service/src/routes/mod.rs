//! The router: every endpoint of the contract, and the layers every
//! request passes (size limits, timeout, metrics, the position header).

pub mod audit;
pub mod conversations;
pub mod dashboard;
pub mod incidents;
pub mod live;
pub mod series;
pub mod streams;
pub mod users;
pub mod workflows;

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use sha2::Digest as _;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use tracing::Instrument;

use crate::metrics::metrics;
use crate::problem::ApiError;
use crate::state::{AppState, POSITION_HEADER};

pub const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// Largest request body accepted (a search with a 4,096-dimension vector fits).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest total of request header names and values.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The browser-facing headers: HSTS under HTTPS, a content security
/// policy for the dashboard page, `nosniff` everywhere, and CORS for the
/// configured origins (none: same origin only).
pub struct WebSecurity {
    hsts: bool,
    cors: Option<CorsLayer>,
}

impl WebSecurity {
    /// `Err(origin)` names an origin that is not one.
    pub fn new(tls: bool, origins: &[String]) -> Result<Self, String> {
        let cors = if origins.is_empty() {
            None
        } else {
            let origins = origins
                .iter()
                .map(|o| HeaderValue::from_str(o).map_err(|_| o.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Some(
                CorsLayer::new()
                    .allow_origin(AllowOrigin::list(origins))
                    .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
                    .allow_headers([
                        header::AUTHORIZATION,
                        header::CONTENT_TYPE,
                        header::CACHE_CONTROL,
                        HeaderName::from_static("x-min-position"),
                        HeaderName::from_static("x-wait-ms"),
                        REQUEST_ID,
                    ])
                    .expose_headers([
                        POSITION_HEADER,
                        REQUEST_ID,
                        HeaderName::from_static("x-cache"),
                    ])
                    .max_age(std::time::Duration::from_secs(600)),
            )
        };
        Ok(WebSecurity { hsts: tls, cors })
    }
}

pub fn router(state: AppState, web: &WebSecurity) -> Router {
    let page = Router::new()
        .route("/", get(dashboard_page))
        .route("/static/uplot.js", get(charting_library))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            dashboard_csp(),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ));
    let mut router = Router::new()
        .merge(page)
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/v1/me", get(users::me))
        .route("/v1/users", get(users::list_users))
        .route("/v1/users/{id}", get(users::get_user))
        .route("/v1/sessions", get(users::list_sessions))
        .route("/v1/conversations", get(conversations::list))
        .route("/v1/conversations/{id}", get(conversations::get))
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::messages),
        )
        .route("/v1/workflows", get(workflows::list))
        .route("/v1/workflows/{id}", get(workflows::get))
        .route("/v1/executions", get(workflows::list_executions))
        .route("/v1/executions/{id}", get(workflows::get_execution))
        .route("/v1/incidents", get(incidents::list))
        .route("/v1/incidents/{id}", get(incidents::get))
        .route("/v1/runbooks", get(incidents::list_runbooks))
        .route("/v1/runbooks/{id}", get(incidents::get_runbook))
        .route("/v1/audit", get(audit::list))
        .route("/v1/search", post(crate::search::search))
        .route("/v1/dashboard/summary", get(dashboard::summary))
        .route("/v1/series/{metric}", get(series::series))
        .route("/v1/commands/{command_id}", get(streams::command))
        .route("/v1/streams/{id}/events", get(streams::events))
        .route("/v1/live", get(live::live))
        .route("/v1/live/presence", get(live::presence))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        // gzip when the client asks for it; never for event streams (the
        // default predicate leaves `text/event-stream` and small bodies alone).
        .layer(CompressionLayer::new())
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    if web.hsts {
        router = router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        ));
    }
    if let Some(cors) = &web.cors {
        router = router.layer(cors.clone());
    }
    router.with_state(state)
}

/// The dashboard page's policy: nothing but its own inline script and
/// style (by hash) and requests to this origin.
fn dashboard_csp() -> HeaderValue {
    static CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        let page = include_str!("../../static/index.html");
        let hash_of = |open: &str, close: &str| {
            let inline = page
                .split_once(open)
                .and_then(|(_, rest)| rest.split_once(close))
                .map_or("", |(inline, _)| inline);
            let digest = sha2::Sha256::digest(inline.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        let policy = format!(
            "default-src 'none'; script-src 'self' {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash_of("<script>", "</script>"),
            hash_of("<style>", "</style>")
        );
        HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
    });
    CSP.clone()
}

struct MethodNotAllowed;

impl IntoResponse for MethodNotAllowed {
    fn into_response(self) -> Response {
        let problem = crate::problem::Problem {
            kind: "/problems/method-not-allowed".into(),
            title: "Method Not Allowed".into(),
            status: 405,
            detail: "this route does not take that method".into(),
            parameter: None,
        };
        crate::problem::problem_response(&problem)
    }
}

/// Size limits, the request timeout, metrics and `X-Projection-Position`.
async fn edge(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let method = request.method().to_string();
    // The caller's request id, or a new one; echoed back and in every log line.
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let span = tracing::info_span!("request", %method, %route, request_id = %request_id);
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let mut response = if header_bytes > MAX_HEADER_BYTES {
        ApiError::HeadersTooLarge(MAX_HEADER_BYTES).into_response()
    } else {
        let timeout = state.request_timeout;
        let run = tokio::time::timeout(timeout, next.run(request)).instrument(span.clone());
        match run.await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
                .into_response(),
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), ms, "request");
        }
    });
    if !response.headers().contains_key(POSITION_HEADER) {
        let position = state.db.progress.current("relational");
        if let Ok(value) = HeaderValue::from_str(&position.to_string()) {
            response.headers_mut().insert(POSITION_HEADER, value);
        }
    }
    let m = metrics();
    m.requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let m = metrics();
    let pools = std::iter::once(("primary", &state.db.primary))
        .chain(state.db.replica.iter().map(|r| ("replica", r)));
    for (name, pool) in pools {
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        let size = i64::from(pool.size());
        m.pool.with_label_values(&[name, "idle"]).set(idle);
        m.pool.with_label_values(&[name, "in_use"]).set(size - idle);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        infra::metrics::render(),
    )
        .into_response()
}

async fn dashboard_page() -> Html<&'static str> {
    Html(include_str!("../../static/index.html"))
}

/// The page's charting library: uPlot 1.6.32 (MIT, from npm), vendored
/// unchanged (static/vendor/; sha256 in static/vendor/README).
async fn charting_library() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../static/vendor/uplot-1.6.32.iife.min.js"),
    )
        .into_response()
}

/// A JSON request body: `Content-Type: application/json`, at most
/// [`MAX_BODY_BYTES`], unknown fields refused, a wrong field named.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::bad(
                "Content-Type",
                "the body must be application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(MAX_BODY_BYTES)
                } else {
                    ApiError::bad("body", format!("cannot read the body: {rejection}"))
                }
            })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let detail = format!("malformed JSON body at `{path}`: {}", e.inner());
            ApiError::bad("body", detail)
        })?;
        deserializer
            .end()
            .map_err(|e| ApiError::bad("body", format!("malformed JSON body: {e}")))?;
        Ok(JsonBody(value))
    }
}
