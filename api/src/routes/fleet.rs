//! Fleet-wide reads that would otherwise cost one request per agent: the
//! latest resource sample of every agent (the dashboard's overview).

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authorized, VIEWER};
use crate::error::{ApiResult, ErrorBody};

/// Samples older than this are not "latest" any more (the agent stopped
/// or its supervisor is gone).
pub const LATEST_MAX_AGE: Duration = Duration::minutes(10);

/// The newest resource sample of one agent.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct LatestSample {
    pub agent_id: String,
    pub at: DateTime<Utc>,
    pub node: String,
    pub pid: i64,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: i64,
    pub threads: i64,
    pub open_fds: i64,
}

/// The newest resource sample of every registered agent (samples of the
/// last ten minutes only; agents without one are left out).
#[utoipa::path(get, path = "/metrics/latest", tag = "telemetry",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<LatestSample>), (status = 401, body = ErrorBody)))]
pub async fn latest_metrics(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
) -> ApiResult<Response> {
    // One index probe per agent on the (agent_id, at) primary key.
    let rows: Vec<LatestSample> = sqlx::query_as(
        "select s.agent_id, s.at, s.node, s.pid, s.cpu_percent, s.rss_bytes, s.threads, s.open_fds \
         from agent_status a cross join lateral ( \
           select m.agent_id, m.at, m.node, m.pid, m.cpu_percent, m.rss_bytes, m.threads, m.open_fds \
           from agent_metric_samples m where m.agent_id = a.agent_id and m.at >= $1 \
           order by m.at desc limit 1) s \
         where a.registered and not a.deregistered order by s.agent_id",
    )
    .bind(Utc::now() - LATEST_MAX_AGE)
    .fetch_all(state.pool())
    .await?;
    Ok(super::ok(rows))
}
