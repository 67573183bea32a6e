//! Every error the API answers with, mapped once to an RFC 9457 problem
//! (`application/problem+json` with `type`, `title`, `status`, `detail`).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` style tags under `/problems/`).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request parameter, header or field at fault, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        parameter: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Admin-only endpoints for a non-admin (resources of other users answer
    /// [`ApiError::NotFound`] instead, so ids cannot be probed).
    #[error("this endpoint is for administrators")]
    Forbidden,
    #[error("no {0} with this id is visible to you")]
    NotFound(&'static str),
    #[error("no such route")]
    NoRoute,
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("too many requests; retry after {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("at most {0} live streams may be open at once per user; close one first")]
    TooManyStreams(usize),
    /// An API key without the scope reading needs.
    #[error("the API key lacks the `read` scope")]
    MissingScope,
    /// `X-Min-Position` not reached within `X-Wait-Ms`.
    #[error("the {projection} projection has not reached position {wanted} within {waited_ms} ms (it is at {at})")]
    NotYetConsistent {
        projection: &'static str,
        wanted: String,
        at: String,
        waited_ms: u64,
    },
    /// A dependency failed: the client is told which (`what`), the cause
    /// is logged (it may name hosts, users or internals).
    #[error("{what} is unavailable")]
    Unavailable { what: &'static str, cause: String },
    #[error("the request took longer than {0} ms")]
    Timeout(u64),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad(parameter: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            parameter,
            detail: detail.into(),
        }
    }

    pub fn unavailable(what: &'static str, cause: impl std::fmt::Display) -> Self {
        ApiError::Unavailable {
            what,
            cause: cause.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RateLimited(_) | ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MissingScope => StatusCode::FORBIDDEN,
            ApiError::NotYetConsistent { .. } | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "bad-request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) | ApiError::NoRoute => "not-found",
            ApiError::TooLarge(_) => "payload-too-large",
            ApiError::HeadersTooLarge(_) => "headers-too-large",
            ApiError::RateLimited(_) => "rate-limited",
            ApiError::TooManyStreams(_) => "too-many-streams",
            ApiError::MissingScope => "missing-scope",
            ApiError::NotYetConsistent { .. } => "not-yet-consistent",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: format!("/problems/{}", self.kind()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            parameter: match self {
                ApiError::BadRequest { parameter, .. } => Some((*parameter).to_string()),
                _ => None,
            },
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::unavailable("PostgreSQL", error)
            }
            _ => ApiError::Internal(format!("database: {error}")),
        }
    }
}

impl From<eventstore::StoreError> for ApiError {
    fn from(error: eventstore::StoreError) -> Self {
        if error.is_transient() {
            ApiError::unavailable("the event store", error)
        } else {
            ApiError::Internal(format!("event store: {error}"))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The cause stays in the log; the client learns nothing of the internals.
        match &self {
            ApiError::Internal(reason) => tracing::error!(%reason, "request failed"),
            ApiError::Unavailable { what, cause } => {
                tracing::warn!(dependency = %what, %cause, "request failed: a dependency is unavailable")
            }
            _ => {}
        }
        let problem = self.problem();
        let mut response = problem_response(&problem);
        if let ApiError::RateLimited(after) = &self {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if let ApiError::Unauthorized(_) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"copilot-data\""),
            );
        }
        response
    }
}

pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body,
    )
        .into_response()
}

pub type ApiResult<T> = Result<T, ApiError>;
