//! The audit trail and derived histories: status transitions, recovery
//! attempts, and the raw events (paged by sequence).

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{AgentPath, Query, page_limit};
use crate::AppState;
use crate::auth::{Authorized, VIEWER};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// 404 unless the agent has a read-model row.
pub(crate) async fn ensure_agent(state: &AppState, id: &str) -> ApiResult<()> {
    let found: Option<i32> = sqlx::query_scalar("select 1 from agent_status where agent_id = $1")
        .bind(id)
        .fetch_optional(state.pool())
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| ApiError::agent_not_found(id))
}

/// One status transition.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Transition {
    pub sequence: i64,
    pub event_type: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub from_desired: Option<String>,
    pub to_desired: String,
    pub reason: Option<String>,
    pub actor: String,
    pub correlation_id: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Only entries with a sequence below this (for the next page, pass the
    /// smallest sequence you have).
    pub before: Option<i64>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<i64>,
}

/// Every status transition of an agent, newest first.
#[utoipa::path(get, path = "/agents/{id}/history", tag = "history",
    params(("id" = String, Path, description = "Agent id"), PageParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<Transition>), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
    Query(p): Query<PageParams>,
) -> ApiResult<Response> {
    ensure_agent(&state, &id).await?;
    let limit = page_limit(p.limit, 100, 1000)?;
    let rows: Vec<Transition> = sqlx::query_as(
        "select sequence, event_type, from_status, to_status, from_desired, to_desired, reason, \
         actor, correlation_id, at from agent_status_history \
         where agent_id = $1 and ($2::bigint is null or sequence < $2) \
         order by sequence desc limit $3",
    )
    .bind(&id)
    .bind(p.before)
    .bind(limit)
    .fetch_all(state.pool())
    .await?;
    Ok(super::ok(rows))
}

/// One recovery attempt.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RecoveryAttempt {
    pub sequence: i64,
    pub attempt: i32,
    pub strategy: String,
    pub reason: String,
    pub actor: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// `in_progress`, `succeeded` or `failed`.
    pub outcome: String,
    pub error: Option<String>,
}

/// Recovery attempts of an agent, newest first.
#[utoipa::path(get, path = "/agents/{id}/recovery", tag = "history",
    params(("id" = String, Path, description = "Agent id"), PageParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<RecoveryAttempt>), (status = 404, body = ErrorBody)))]
pub async fn recovery(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
    Query(p): Query<PageParams>,
) -> ApiResult<Response> {
    ensure_agent(&state, &id).await?;
    let limit = page_limit(p.limit, 100, 1000)?;
    let rows: Vec<RecoveryAttempt> = sqlx::query_as(
        "select sequence, attempt, strategy, reason, actor, started_at, completed_at, outcome, error \
         from agent_recovery_attempts where agent_id = $1 and ($2::bigint is null or sequence < $2) \
         order by sequence desc limit $3",
    )
    .bind(&id)
    .bind(p.before)
    .bind(limit)
    .fetch_all(state.pool())
    .await?;
    Ok(super::ok(rows))
}

/// One committed event, as stored (secrets redacted).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventRecord {
    pub sequence: i64,
    pub event_type: String,
    /// The event's fields.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub actor: String,
    pub reason: Option<String>,
    pub correlation_id: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventRecord>,
    /// Pass as `after` for the next page; `null` when this page is the last.
    pub next_after: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events with a sequence above this (default 0: from the start).
    pub after: Option<i64>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<i64>,
    /// Only events of this type, e.g. `ProcessExited`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
}

/// Redacts the secrets of an event's payload: `env` values named in a
/// sibling `secret_env` and config fields a sibling `config_schema` marks
/// `x-secret` (specs inside events), and the `config` of config events by
/// the agent's current `schema`.
pub fn redact_event(payload: &mut Value, schema: Option<&Value>) {
    redact_secrets(payload);
    if let (Some(schema), Some(config)) = (schema, payload.get_mut("config")) {
        opmas_domain::spec::redact_secrets(schema, config);
    }
}

/// Replaces `env` values named in a sibling `secret_env` with `***`, and
/// config fields a sibling `config_schema` marks secret, anywhere in
/// `value` (specs inside events); sealed values anywhere too.
pub fn redact_secrets(value: &mut Value) {
    match value {
        Value::String(text) if opmas_domain::secret::is_sealed(text) => {
            "***".clone_into(text);
        }
        Value::Object(map) => {
            if let Some(schema) = map.get("config_schema").cloned()
                && let Some(config) = map.get_mut("config")
            {
                opmas_domain::spec::redact_secrets(&schema, config);
            }
            let secrets: Vec<String> = map
                .get("secret_env")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::Object(env)) = map.get_mut("env") {
                for key in &secrets {
                    if let Some(v) = env.get_mut(key) {
                        *v = Value::String("***".to_owned());
                    }
                }
            }
            for v in map.values_mut() {
                redact_secrets(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// The audit trail: an agent's events in order, with actor and reason.
#[utoipa::path(get, path = "/agents/{id}/events", tag = "history",
    params(("id" = String, Path, description = "Agent id"), EventParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = EventPage), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
    Query(p): Query<EventParams>,
) -> ApiResult<Response> {
    let limit = page_limit(p.limit, 100, 1000)?;
    let after = p.after.unwrap_or(0);
    let exists: bool = sqlx::query_scalar(
        "select exists(select 1 from events where aggregate_type = 'Agent' and aggregate_id = $1)",
    )
    .bind(&id)
    .fetch_one(state.pool())
    .await?;
    if !exists {
        return Err(ApiError::agent_not_found(&id));
    }
    let sql = format!(
        "select {} from events e where e.aggregate_type = 'Agent' and e.aggregate_id = $1 \
         and e.sequence > $2 and ($3::text is null or e.event_type = $3) \
         order by e.sequence limit $4",
        opmas_projections::envelope::COLUMNS
    );
    let rows = sqlx::query(&sql)
        .bind(&id)
        .bind(after)
        .bind(&p.event_type)
        .bind(limit + 1)
        .fetch_all(state.pool())
        .await?;
    let (agent, _) = match state.store().cached(&id) {
        Some(c) => c,
        None => state.store().load(&id).await?,
    };
    let schema = agent.spec.as_ref().and_then(|s| s.config_schema.clone());
    let mut items = Vec::with_capacity(rows.len());
    for row in rows.iter().take(usize::try_from(limit).unwrap_or(0)) {
        let env = opmas_projections::envelope::Envelope::from_row(row)?;
        let mut payload = serde_json::to_value(&env.event).map_err(ApiError::internal)?;
        // Externally tagged: unwrap `{"Type": {...}}` to its fields.
        if let Value::Object(map) = &payload
            && map.len() == 1
            && let Some(inner) = map.values().next()
        {
            payload = inner.clone();
        }
        redact_event(&mut payload, schema.as_ref());
        items.push(EventRecord {
            sequence: env.sequence,
            event_type: env.event.event_type(),
            actor: env.actor().to_owned(),
            reason: env.reason().map(str::to_owned),
            correlation_id: env.correlation_id().map(str::to_owned),
            recorded_at: env.recorded_at,
            payload,
        });
    }
    let next_after = (rows.len() > items.len())
        .then(|| items.last().map(|e| e.sequence))
        .flatten();
    Ok(super::ok(EventPage { items, next_after }))
}
