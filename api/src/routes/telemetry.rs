//! Metrics series, recorded errors and logs of one agent.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use opmas_projections::search::{LogQuery, LogRecord, MetricPoint};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::audit::ensure_agent;
use super::{AgentPath, Query, instant, page_limit};
use crate::AppState;
use crate::auth::{Authorized, VIEWER};
use crate::error::{ApiError, ApiResult, ErrorBody};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricParams {
    /// `raw`, `1m` or `1h` (default `1m`).
    pub resolution: Option<String>,
    /// RFC 3339 start (default: one hour before `until`).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339 end, exclusive (default: now).
    #[param(format = DateTime)]
    pub until: Option<String>,
}

/// A metric series.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricSeries {
    pub agent_id: String,
    pub resolution: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    #[schema(value_type = Vec<Object>)]
    pub points: Vec<MetricPoint>,
}

/// CPU and memory of an agent over a time range, raw or rolled up.
#[utoipa::path(get, path = "/agents/{id}/metrics", tag = "telemetry",
    params(("id" = String, Path, description = "Agent id"), MetricParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = MetricSeries), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
    Query(p): Query<MetricParams>,
) -> ApiResult<Response> {
    let resolution = p.resolution.unwrap_or_else(|| "1m".to_owned());
    if !["raw", "1m", "1h"].contains(&resolution.as_str()) {
        return Err(ApiError::validation(
            "resolution",
            format!("`{resolution}` is not a resolution: use raw, 1m or 1h"),
        ));
    }
    let until = p
        .until
        .as_deref()
        .map(|v| instant("until", v))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let since = p
        .since
        .as_deref()
        .map(|v| instant("since", v))
        .transpose()?
        .unwrap_or(until - Duration::hours(1));
    if since >= until {
        return Err(ApiError::validation("since", "must be before `until`"));
    }
    ensure_agent(&state, &id).await?;
    let points =
        opmas_projections::search::metric_series(state.pool(), &id, &resolution, since, until)
            .await?;
    Ok(super::ok(MetricSeries {
        agent_id: id,
        resolution,
        since,
        until,
        points,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ErrorParams {
    /// Only this severity (`info`, `warning`, `error`, `critical`).
    pub severity: Option<String>,
    /// Only this category.
    pub category: Option<String>,
    /// Group repeats by fingerprint (default false: every occurrence).
    pub grouped: Option<bool>,
    /// RFC 3339: only errors at or after this time.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<i64>,
}

/// One recorded error.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ErrorRecord {
    pub sequence: i64,
    pub severity: String,
    pub category: String,
    pub error_type: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub context: Value,
    pub fingerprint: String,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// Repeats of one error, grouped by fingerprint.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ErrorGroup {
    pub fingerprint: String,
    pub severity: String,
    pub category: String,
    pub error_type: String,
    pub first_message: String,
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Errors of an agent, newest first, or grouped by fingerprint.
#[utoipa::path(get, path = "/agents/{id}/errors", tag = "telemetry",
    params(("id" = String, Path, description = "Agent id"), ErrorParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, description = "ErrorRecord list, or ErrorGroup list when grouped=true", body = Vec<ErrorRecord>),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn errors(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
    Query(p): Query<ErrorParams>,
) -> ApiResult<Response> {
    let limit = page_limit(p.limit, 100, 1000)?;
    let since = p
        .since
        .as_deref()
        .map(|v| instant("since", v))
        .transpose()?;
    ensure_agent(&state, &id).await?;
    if p.grouped.unwrap_or(false) {
        let rows: Vec<ErrorGroup> = sqlx::query_as(
            "select fingerprint, severity, category, error_type, first_message, count, first_seen, last_seen \
             from agent_error_groups where agent_id = $1 \
             and ($2::text is null or severity = $2) and ($3::text is null or category = $3) \
             and ($4::timestamptz is null or last_seen >= $4) \
             order by last_seen desc limit $5",
        )
        .bind(&id)
        .bind(&p.severity)
        .bind(&p.category)
        .bind(since)
        .bind(limit)
        .fetch_all(state.pool())
        .await?;
        return Ok(super::ok(rows));
    }
    let rows: Vec<ErrorRecord> = sqlx::query_as(
        "select sequence, severity, category, error_type, message, context, fingerprint, actor, at \
         from agent_errors where agent_id = $1 \
         and ($2::text is null or severity = $2) and ($3::text is null or category = $3) \
         and ($4::timestamptz is null or at >= $4) \
         order by sequence desc limit $5",
    )
    .bind(&id)
    .bind(&p.severity)
    .bind(&p.category)
    .bind(since)
    .bind(limit)
    .fetch_all(state.pool())
    .await?;
    Ok(super::ok(rows))
}

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Comma-separated levels: trace, debug, info, warn, error (default: all).
    pub level: Option<String>,
    /// RFC 3339 start.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339 end, exclusive.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Case-insensitive text the line must contain.
    pub q: Option<String>,
    /// Lines returned, 1..=5000 (default 200), newest first.
    pub limit: Option<i64>,
    /// Stream new lines as Server-Sent Events instead (`text/event-stream`).
    pub follow: Option<bool>,
}

/// Log lines of an agent: search by level, time range and text, or follow.
#[utoipa::path(get, path = "/agents/{id}/logs", tag = "telemetry",
    params(("id" = String, Path, description = "Agent id"), LogParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, description = "Lines (newest first), or a text/event-stream of new lines with follow=true", body = Vec<Object>),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    AgentPath(id): AgentPath,
    Query(p): Query<LogParams>,
) -> ApiResult<Response> {
    let levels: Vec<String> = match p.level.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => s.split(',').map(|l| l.trim().to_lowercase()).collect(),
    };
    if let Some(bad) = levels.iter().find(|l| !LEVELS.contains(&l.as_str())) {
        return Err(ApiError::validation(
            "level",
            format!("`{bad}` is not a level: use {}", LEVELS.join(", ")),
        ));
    }
    let limit = page_limit(p.limit, 200, 5000)?;
    let since = p
        .since
        .as_deref()
        .map(|v| instant("since", v))
        .transpose()?;
    let until = p
        .until
        .as_deref()
        .map(|v| instant("until", v))
        .transpose()?;
    ensure_agent(&state, &id).await?;
    if p.follow.unwrap_or(false) {
        return follow(state, id, levels, p.q).await;
    }
    let rows: Vec<LogRecord> = opmas_projections::search::search_logs(
        state.pool(),
        &LogQuery {
            agent_id: Some(id),
            levels,
            since,
            until,
            text: p.q,
            limit,
        },
    )
    .await?;
    Ok(super::ok(rows))
}

/// New lines of one agent from `OPMAS_LOGS`, as SSE `log` events.
async fn follow(
    state: AppState,
    id: String,
    levels: Vec<String>,
    text: Option<String>,
) -> ApiResult<Response> {
    let subject = format!("{}.{id}.*", state.config().telemetry.logs_prefix);
    let sub = tokio::time::timeout(crate::PROBE_TIMEOUT, state.nats().subscribe(subject))
        .await
        .map_err(|_| ApiError::unavailable("NATS"))?
        .map_err(|_| ApiError::unavailable("NATS"))?;
    let needle = text.map(|t| t.to_lowercase()).filter(|t| !t.is_empty());
    let stream = sub.filter_map(move |msg| {
        let keep = (|| {
            let line: Value = serde_json::from_slice(&msg.payload).ok()?;
            if !levels.is_empty() {
                let level = line.get("level")?.as_str()?;
                if !levels.iter().any(|l| l == level) {
                    return None;
                }
            }
            if let Some(n) = &needle {
                let text = line.get("line")?.as_str()?.to_lowercase();
                if !text.contains(n.as_str()) {
                    return None;
                }
            }
            Some(Ok::<_, Infallible>(
                Event::default().event("log").data(line.to_string()),
            ))
        })();
        futures::future::ready(keep)
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
