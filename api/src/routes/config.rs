//! An agent's configuration: current version (with `ETag`), optimistic
//! update with `If-Match`, version history with diffs, rollback.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use opmas_domain::AgentCommand;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::agents::{CommandResult, execute};
use super::audit::ensure_agent;
use super::{AgentPath, Body, RequestId};
use crate::AppState;
use crate::auth::{Authorized, OPERATOR, VIEWER};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// The current configuration.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigView {
    pub agent_id: String,
    pub version: u32,
    #[schema(value_type = Object)]
    pub config: Value,
}

fn etag(version: u32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Current config of an agent; the `ETag` is its version.
#[utoipa::path(get, path = "/agents/{id}/config", tag = "config",
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = ConfigView, headers(("ETag" = String, description = "The config version, quoted"))),
              (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
) -> ApiResult<Response> {
    // The aggregate is the authority for the version an If-Match must name.
    let (agent, _) = match state.store().cached(&id) {
        Some(c) => c,
        None => state.store().load(&id).await?,
    };
    if !agent.registered {
        return Err(ApiError::agent_not_found(&id));
    }
    let mut config = agent
        .config()
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    if let Some(schema) = agent.spec.as_ref().and_then(|s| s.config_schema.as_ref()) {
        opmas_domain::spec::redact_secrets(schema, &mut config);
    }
    let view = ConfigView {
        agent_id: id,
        version: agent.config_version,
        config,
    };
    Ok(([(header::ETAG, etag(view.version))], axum::Json(view)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigUpdate {
    /// The whole new config (a JSON object).
    #[schema(value_type = Object)]
    pub config: Value,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Replace the config. `If-Match` must carry the current version (from
/// `GET .../config`'s `ETag`); the new version is in the answer's `ETag`.
#[utoipa::path(put, path = "/agents/{id}/config", tag = "config", request_body = ConfigUpdate,
    params(("id" = String, Path, description = "Agent id"),
           ("If-Match" = String, Header, description = "Current config version, e.g. \"3\"")),
    security(("bearer" = ["operator"])),
    responses((status = 200, body = CommandResult), (status = 404, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 428, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ OPERATOR }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    headers: HeaderMap,
    Body(req): Body<ConfigUpdate>,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    let mut config = req.config;
    // Secret fields sent back as read (`***`) keep their (sealed) value.
    let (agent, _) = match state.store().cached(&id) {
        Some(c) => c,
        None => state.store().load(&id).await?,
    };
    let schema = agent.spec.as_ref().and_then(|s| s.config_schema.as_ref());
    if let (Some(schema), Some(current)) = (schema, agent.config()) {
        opmas_domain::spec::keep_unchanged_secrets(schema, &mut config, current);
    }
    let config = crate::seal::config(&state, schema, &config)?;
    let result = execute(
        &state,
        &principal,
        &rid,
        &id,
        "update_config",
        AgentCommand::UpdateConfig {
            expected_version: expected,
            config,
        },
        req.reason.as_deref(),
    )
    .await?;
    let version = u32::try_from(result.agent.config_version).unwrap_or(0);
    Ok(([(header::ETAG, etag(version))], axum::Json(result)).into_response())
}

fn if_match(headers: &HeaderMap) -> Result<u32, ApiError> {
    let value = headers.get(header::IF_MATCH).ok_or_else(|| {
        ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "PRECONDITION_REQUIRED",
            "send `If-Match: \"<version>\"` with the config version you read (the ETag of GET .../config)",
        )
    })?;
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map_err(|_| {
        ApiError::validation(
            "If-Match",
            format!("`{text}` is not a config version: use the ETag of GET .../config, e.g. \"3\""),
        )
    })
}

/// One config version.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ConfigVersion {
    pub version: i32,
    #[schema(value_type = Object)]
    pub config: Value,
    /// `[{"path", "from", "to"}]` against the previous version.
    #[schema(value_type = Vec<Object>)]
    pub diff: Value,
    pub previous_version: Option<i32>,
    /// Set when this version restored an older one.
    pub rolled_back_to: Option<i32>,
    pub event_type: String,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// Every config version, newest first, with its diff and actor.
#[utoipa::path(get, path = "/agents/{id}/config/versions", tag = "config",
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<ConfigVersion>), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
) -> ApiResult<Response> {
    ensure_agent(&state, &id).await?;
    let mut rows: Vec<ConfigVersion> = sqlx::query_as(
        "select version, config, diff, previous_version, rolled_back_to, event_type, actor, at \
         from agent_configs where agent_id = $1 order by version desc",
    )
    .bind(&id)
    .fetch_all(state.pool())
    .await?;
    // Secrets (sealed ones, and by the agent's current schema) shown as
    // `***`, in the configs and in the diffs.
    for row in &mut rows {
        opmas_domain::secret::mask_sealed(&mut row.config);
        opmas_domain::secret::mask_sealed(&mut row.diff);
    }
    let (agent, _) = match state.store().cached(&id) {
        Some(c) => c,
        None => state.store().load(&id).await?,
    };
    if let Some(schema) = agent.spec.as_ref().and_then(|s| s.config_schema.as_ref()) {
        let secret = opmas_domain::spec::secret_pointers(schema);
        for row in &mut rows {
            opmas_domain::spec::redact_secrets(schema, &mut row.config);
            if let Some(changes) = row.diff.as_array_mut() {
                for change in changes {
                    let path = change["path"].as_str().unwrap_or_default().to_owned();
                    if secret
                        .iter()
                        .any(|s| path == *s || path.starts_with(&format!("{s}/")))
                    {
                        for side in ["from", "to"] {
                            if let Some(v) = change.get_mut(side) {
                                *v = Value::String("***".into());
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(super::ok(rows))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to make current again (as a new version).
    pub to_version: u32,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Make an earlier config current again, as a new version.
#[utoipa::path(post, path = "/agents/{id}/config/rollback", tag = "config", request_body = RollbackRequest,
    params(("id" = String, Path, description = "Agent id")),
    security(("bearer" = ["operator"])),
    responses((status = 200, body = CommandResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ OPERATOR }>,
    RequestId(rid): RequestId,
    AgentPath(id): AgentPath,
    Body(req): Body<RollbackRequest>,
) -> ApiResult<Response> {
    let result = execute(
        &state,
        &principal,
        &rid,
        &id,
        "rollback_config",
        AgentCommand::RollbackConfig {
            to_version: req.to_version,
        },
        req.reason.as_deref(),
    )
    .await?;
    let version = u32::try_from(result.agent.config_version).unwrap_or(0);
    Ok(([(header::ETAG, etag(version))], axum::Json(result)).into_response())
}
