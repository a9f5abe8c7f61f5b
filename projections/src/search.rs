//! Read queries over the telemetry models, for the API: log search (agent,
//! levels, time range, text; the text match uses the trigram index) and
//! metric series (raw or rolled up).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::Error;

/// What to look for in `agent_logs`; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub agent_id: Option<String>,
    /// Levels to include (`info`, `warn`, ...); empty: all.
    pub levels: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the line.
    pub text: Option<String>,
    /// Most lines returned (newest first).
    pub limit: i64,
}

/// One stored log line.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct LogRecord {
    pub stream_sequence: i64,
    pub agent_id: String,
    pub at: DateTime<Utc>,
    pub level: String,
    pub stream: String,
    pub node: String,
    pub pid: i64,
    pub line: String,
    pub dropped_before: i64,
}

/// Escapes `%`, `_` and `\` for `ilike`.
fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Lines matching `query`, newest first.
pub async fn search_logs(pool: &PgPool, query: &LogQuery) -> Result<Vec<LogRecord>, Error> {
    let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new(
        "select stream_sequence, agent_id, at, level, stream, node, pid, line, dropped_before \
         from agent_logs where true",
    );
    if let Some(agent) = &query.agent_id {
        q.push(" and agent_id = ").push_bind(agent.clone());
    }
    if !query.levels.is_empty() {
        q.push(" and level = any(")
            .push_bind(query.levels.clone())
            .push(")");
    }
    if let Some(since) = query.since {
        q.push(" and at >= ").push_bind(since);
    }
    if let Some(until) = query.until {
        q.push(" and at < ").push_bind(until);
    }
    if let Some(text) = query.text.as_deref().filter(|t| !t.is_empty()) {
        q.push(" and line ilike ").push_bind(like_pattern(text));
    }
    q.push(" order by at desc, stream_sequence desc limit ")
        .push_bind(query.limit.max(0));
    Ok(q.build_query_as().fetch_all(pool).await?)
}

/// One point of a metric series (raw: min = avg = max = last).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct MetricPoint {
    pub bucket: DateTime<Utc>,
    pub samples: i64,
    pub cpu_min: f64,
    pub cpu_avg: f64,
    pub cpu_max: f64,
    pub cpu_last: f64,
    pub rss_min: f64,
    pub rss_avg: f64,
    pub rss_max: f64,
    pub rss_last: f64,
    pub threads_min: f64,
    pub threads_avg: f64,
    pub threads_max: f64,
    pub threads_last: f64,
    pub fds_min: f64,
    pub fds_avg: f64,
    pub fds_max: f64,
    pub fds_last: f64,
}

/// An agent's CPU, memory, threads and open files in `[since, until)`:
/// `resolution` is `raw`, `1m` or `1h` (rollups cover closed minutes only).
pub async fn metric_series(
    pool: &PgPool,
    agent_id: &str,
    resolution: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<MetricPoint>, Error> {
    let sql = match resolution {
        "raw" => {
            "select at as bucket, 1::bigint as samples, cpu_percent as cpu_min, cpu_percent as cpu_avg, \
             cpu_percent as cpu_max, cpu_percent as cpu_last, rss_bytes::float8 as rss_min, \
             rss_bytes::float8 as rss_avg, rss_bytes::float8 as rss_max, rss_bytes::float8 as rss_last, \
             threads::float8 as threads_min, threads::float8 as threads_avg, threads::float8 as threads_max, \
             threads::float8 as threads_last, open_fds::float8 as fds_min, open_fds::float8 as fds_avg, \
             open_fds::float8 as fds_max, open_fds::float8 as fds_last \
             from agent_metric_samples where agent_id = $1 and at >= $3 and at < $4 and $2 = 'raw' \
             order by at"
        }
        "1m" | "1h" => {
            "select bucket, samples, cpu_min, cpu_avg, cpu_max, cpu_last, rss_min, rss_avg, rss_max, \
             rss_last, threads_min, threads_avg, threads_max, threads_last, fds_min, fds_avg, fds_max, \
             fds_last from agent_metric_rollups where agent_id = $1 and resolution = $2 \
             and bucket >= $3 and bucket < $4 order by bucket"
        }
        other => {
            return Err(Error::NotFound(format!(
                "resolution `{other}`: use raw, 1m or 1h"
            )));
        }
    };
    Ok(sqlx::query_as(sql)
        .bind(agent_id)
        .bind(resolution)
        .bind(since)
        .bind(until)
        .fetch_all(pool)
        .await?)
}
