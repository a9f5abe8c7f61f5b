//! Route table. Every `/api/v1` route is declared with `#[utoipa::path]`
//! and registered through `utoipa_axum::routes!`, so the OpenAPI document
//! is generated from the same list that serves requests. Each operation's
//! `security` scope names the least role it needs; handlers enforce it
//! with [`Principal::require`](crate::auth::Principal::require) (a test
//! checks both agree).

pub mod agents;
pub mod audit;
pub mod config;
pub mod fleet;
pub mod health;
pub mod nodes;
pub mod packages;
pub mod telemetry;
pub mod tokens;
pub mod whoami;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiError;

/// The authenticated `/api/v1` routes.
pub fn api_router(state: AppState) -> OpenApiRouter {
    let protected = OpenApiRouter::new()
        .routes(routes!(agents::list, agents::register))
        .routes(routes!(packages::discover))
        .routes(routes!(agents::get, agents::update, agents::deregister))
        .routes(routes!(agents::start))
        .routes(routes!(agents::stop))
        .routes(routes!(agents::restart))
        .routes(routes!(agents::recover))
        .routes(routes!(agents::set_recovery_policy))
        .routes(routes!(agents::status))
        .routes(routes!(audit::history))
        .routes(routes!(audit::recovery))
        .routes(routes!(audit::events))
        .routes(routes!(telemetry::metrics))
        .routes(routes!(telemetry::errors))
        .routes(routes!(telemetry::logs))
        .routes(routes!(config::get, config::put))
        .routes(routes!(config::versions))
        .routes(routes!(config::rollback))
        .routes(routes!(nodes::list))
        .routes(routes!(whoami::whoami))
        .routes(routes!(fleet::latest_metrics))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(crate::live::ws))
        .routes(routes!(crate::live::sse))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ));
    OpenApiRouter::with_openapi(crate::openapi::base())
        .nest("/api/v1", protected)
        .with_state(state)
}

/// 404 for unknown paths, in the error format.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("no route for {}", uri.path()))
        .with_details(json!({ "path": uri.path() }))
}

/// JSON body extractor whose rejections use the error format and name the
/// offending field.
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    "the request body is larger than this server accepts",
                ));
            }
            Err(e) => return Err(ApiError::bad_request(e.body_text())),
        };
        // PostgreSQL cannot store NUL in text or jsonb: refuse it here, by field.
        if let Some(field) = nul_field(&bytes) {
            return Err(ApiError::validation(
                &field,
                "must not contain NUL (\\u0000) characters",
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(JsonRejection::JsonDataError(e)) => {
                // "Failed to deserialize the JSON body into the target type: path: reason"
                let text = e.body_text();
                let detail = text
                    .split_once("target type: ")
                    .map_or(text.as_str(), |(_, rest)| rest)
                    .to_owned();
                let (field, reason) = match detail.split_once(": ") {
                    Some((field, reason)) if !field.contains(' ') => {
                        (field.to_owned(), reason.to_owned())
                    }
                    _ => ("body".to_owned(), detail.clone()),
                };
                // The reason shows the value; an env value may be a secret.
                if opmas_domain::secret::is_env_value(&field) {
                    let hidden = opmas_domain::secret::ENV_VALUE_REFUSED;
                    return Err(ApiError::validation(&field, hidden));
                }
                Err(ApiError::validation(&field, reason))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::bad_request(format!(
                "the body is not valid JSON: {}",
                e.body_text()
            ))),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "send the body as JSON with `Content-Type: application/json`",
            )),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    "the request body is larger than this server accepts",
                ))
            }
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

/// Whether the request says its body is JSON (`application/json` or `+json`).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// The path of the first string (or key) holding a NUL character, if any.
fn nul_field(bytes: &[u8]) -> Option<String> {
    // In JSON, NUL can only be written as the escape `\u0000`.
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return None;
    }
    fn walk(v: &Value, path: &str) -> Option<String> {
        let here = || {
            if path.is_empty() {
                "body".to_owned()
            } else {
                path.to_owned()
            }
        };
        match v {
            Value::String(s) if s.contains('\0') => Some(here()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, &format!("{path}[{i}]"))),
            Value::Object(map) => map.iter().find_map(|(k, item)| {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains('\0') {
                    Some(here())
                } else {
                    walk(item, &child)
                }
            }),
            _ => None,
        }
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    walk(&value, "")
}

/// Query-string extractor whose rejections use the error format.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        if query.contains("%00") {
            return Err(ApiError::validation(
                "query",
                "must not contain NUL (%00) characters",
            ));
        }
        let de = serde_urlencoded_de(query);
        de.map(Query)
    }
}

fn serde_urlencoded_de<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::bad_request("malformed query string"))?,
    )
    .map(|q| q.0)
    .map_err(|e| {
        let text = e.body_text();
        let detail = text
            .split_once("Failed to deserialize query string: ")
            .map_or(text.as_str(), |(_, rest)| rest)
            .to_owned();
        ApiError::validation("query", detail)
    })
}

/// Agent id from the path, validated.
pub struct AgentPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AgentPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(params) = axum::extract::Path::<
            std::collections::HashMap<String, String>,
        >::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let id = params
            .get("id")
            .ok_or_else(|| ApiError::bad_request("missing agent id in the path"))?;
        opmas_domain::AgentId::parse(id).map_err(|e| {
            ApiError::validation("id", e.to_string())
                .with_details(json!({"field": "id", "value": id, "reason": e.to_string()}))
        })?;
        Ok(AgentPath(id.clone()))
    }
}

/// The request id (from `x-request-id`), used as the correlation id of the
/// events a request causes.
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(
            parts
                .headers
                .get(crate::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
        ))
    }
}

/// Parses an RFC 3339 instant from a query parameter.
pub fn instant(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::validation(
                field,
                format!("`{value}` is not an RFC 3339 time such as 2026-11-24T10:00:00Z ({e})"),
            )
        })
}

/// Bounds a page size: `default` when absent, 1..=`max` otherwise.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::validation(
            "limit",
            format!("{n} is out of range: use 1 to {max}"),
        )),
    }
}

/// `200 OK` with a JSON body.
pub fn ok<T: serde::Serialize>(value: T) -> axum::response::Response {
    axum::Json(value).into_response()
}
