//! [`ApiError`]: every error response is
//! `{"error": {"code", "message", "details"}}` with a stable `code`.
//!
//! Internals (SQL, stack traces, connection strings) never reach a client:
//! they are logged with the request id and the client gets `INTERNAL` or,
//! for an unreachable database or NATS, `UNAVAILABLE` with `Retry-After`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opmas_domain::AgentError;
use opmas_store::CommandError;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

/// Seconds a client should wait after `UNAVAILABLE`.
pub const RETRY_AFTER_UNAVAILABLE: u64 = 1;

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `AGENT_NOT_FOUND`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// Extra facts (the offending field, the current version ...).
    #[schema(value_type = Object)]
    pub details: Value,
}

/// An error answer: status, code, message, details, optional `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn agent_not_found(agent_id: &str) -> Self {
        Self::not_found(
            "AGENT_NOT_FOUND",
            format!("agent `{agent_id}` is not registered"),
        )
        .with_details(json!({ "agent_id": agent_id }))
    }

    /// A request value that is wrong: names the field and why.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            format!("`{field}`: {message}"),
        )
        .with_details(json!({ "field": field, "reason": message }))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn unavailable(what: &str) -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_UNAVAILABLE),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!("{what} is unavailable; retry shortly"),
            )
        }
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many requests for this token; retry after the number of seconds in Retry-After",
            )
        }
    }

    /// Logs `err` (with its internals) and returns an opaque 500.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; the server log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// True for errors that mean "the database cannot be reached right now".
pub fn db_unreachable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if db_unreachable(&err) {
            tracing::warn!(error = %err, "database unreachable");
            Self::unavailable("the database")
        } else {
            Self::internal(err)
        }
    }
}

impl From<opmas_projections::Error> for ApiError {
    fn from(err: opmas_projections::Error) -> Self {
        match err {
            opmas_projections::Error::Database(e) => e.into(),
            opmas_projections::Error::NotFound(msg) => Self::not_found("NOT_FOUND", msg),
            other => Self::internal(other),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::Rejected(e) => e.into(),
            CommandError::Conflict => Self::new(
                StatusCode::CONFLICT,
                "CONFLICT",
                "another command on this agent committed at the same time; retry",
            ),
            CommandError::Unavailable(e) => {
                tracing::warn!(error = %e, "event store unreachable");
                Self::unavailable("the event store")
            }
            CommandError::Internal(e) => Self::internal(e),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(err: AgentError) -> Self {
        let message = err.to_string();
        let conflict = |code| Self::new(StatusCode::CONFLICT, code, message.clone());
        match &err {
            AgentError::NotRegistered => Self::not_found("AGENT_NOT_FOUND", message),
            AgentError::AlreadyRegistered => conflict("AGENT_EXISTS"),
            AgentError::Deregistered => conflict("AGENT_DEREGISTERED"),
            AgentError::InvalidTransition {
                command,
                status,
                desired,
            } => conflict("INVALID_TRANSITION").with_details(json!({
                "command": command, "status": status.as_str(), "desired_state": desired.as_str(),
            })),
            AgentError::VersionConflict { expected, actual } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "VERSION_CONFLICT",
                format!("{message}; read the config again and retry with If-Match: \"{actual}\""),
            )
            .with_details(json!({ "expected": expected, "current": actual })),
            AgentError::UnknownConfigVersion { requested, latest } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "VALIDATION_FAILED",
                message.clone(),
            )
            .with_details(json!({ "field": "version", "requested": requested, "latest": latest })),
            AgentError::InvalidSpec(e) => {
                Self::validation(&format!("spec.{}", e.field), &e.message)
            }
            AgentError::InvalidId(e) => Self::validation("agent_id", e.to_string()),
            AgentError::Validation { field, message } => Self::validation(field, message),
            AgentError::StaleFact { .. } => conflict("STALE_FACT"),
            AgentError::RecoveryInProgress { attempt } => {
                conflict("RECOVERY_IN_PROGRESS").with_details(json!({ "attempt": attempt }))
            }
            AgentError::NoRecoveryInProgress => conflict("NO_RECOVERY_IN_PROGRESS"),
            AgentError::RecoveryExhausted {
                attempts,
                max_attempts,
            } => conflict("RECOVERY_EXHAUSTED")
                .with_details(json!({ "attempts": attempts, "max_attempts": max_attempts })),
        }
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
