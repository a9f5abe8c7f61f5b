//! Rollups and retention, run periodically by the [`Maintenance`] task.
//!
//! - Rollups: the minutes that received samples (`agent_metric_dirty`) are
//!   recomputed from the raw samples once closed, then their hours from the
//!   minute rows; min/avg/max/last per metric. Recomputing (rather than
//!   adding) makes a rollup equal its raw data even after late samples.
//! - Retention deletes rows older than their limit in small batches, each
//!   its own short transaction, so writers are never blocked for long.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Error;

/// Rollup column prefix → raw sample column.
const METRICS: [(&str, &str); 4] = [
    ("cpu", "cpu_percent"),
    ("rss", "rss_bytes"),
    ("threads", "threads"),
    ("fds", "open_fds"),
];

fn columns() -> String {
    METRICS
        .iter()
        .flat_map(|(p, _)| ["min", "avg", "max", "last"].map(|s| format!("{p}_{s}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn upsert(select: &str) -> String {
    let cols = columns();
    let set: Vec<String> = cols
        .split(", ")
        .chain(["samples", "last_at", "updated_at"])
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "insert into agent_metric_rollups (agent_id, resolution, bucket, samples, {cols}, last_at, updated_at) \
         {select} on conflict (agent_id, resolution, bucket) do update set {}",
        set.join(", ")
    )
}

fn minute_sql() -> String {
    let aggs: Vec<String> = METRICS
        .iter()
        .map(|(_, c)| {
            format!(
                "min({c})::float8, avg({c})::float8, max({c})::float8, \
                 ((array_agg({c} order by at desc))[1])::float8"
            )
        })
        .collect();
    upsert(&format!(
        "select s.agent_id, '1m', b, count(*), {}, max(at), now() \
         from unnest($1::timestamptz[]) b \
         join agent_metric_samples s on s.at >= b and s.at < b + interval '1 minute' \
         group by s.agent_id, b",
        aggs.join(", ")
    ))
}

fn hour_sql() -> String {
    let aggs: Vec<String> = METRICS
        .iter()
        .map(|(p, _)| {
            format!(
                "min({p}_min), sum({p}_avg * samples) / sum(samples)::float8, max({p}_max), \
                 (array_agg({p}_last order by last_at desc))[1]"
            )
        })
        .collect();
    upsert(&format!(
        "select r.agent_id, '1h', h, sum(samples)::bigint, {}, max(last_at), now() \
         from unnest($1::timestamptz[]) h \
         join agent_metric_rollups r on r.resolution = '1m' \
              and r.bucket >= h and r.bucket < h + interval '1 hour' \
         group by r.agent_id, h",
        aggs.join(", ")
    ))
}

/// Rolls up every minute closed at `now` that received samples, and its
/// hour. Returns the number of minutes rolled up.
pub async fn rollup(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, Error> {
    let mut tx = pool.begin().await?;
    let minutes: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "delete from agent_metric_dirty where bucket + interval '1 minute' <= $1 returning bucket",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    if minutes.is_empty() {
        return Ok(0);
    }
    sqlx::query(&minute_sql())
        .bind(&minutes)
        .execute(&mut *tx)
        .await?;
    let hours: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "select distinct date_trunc('hour', m, 'UTC') from unnest($1::timestamptz[]) m",
    )
    .bind(&minutes)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(&hour_sql())
        .bind(&hours)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(minutes.len())
}

/// How long rows are kept.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Raw metric samples (default 7 days).
    pub raw_metrics: Duration,
    /// Minute and hour rollups (default 90 days).
    pub rollups: Duration,
    /// Log lines (default 7 days).
    pub logs: Duration,
    /// Rows deleted per statement.
    pub batch: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            raw_metrics: Duration::from_secs(7 * 86_400),
            rollups: Duration::from_secs(90 * 86_400),
            logs: Duration::from_secs(7 * 86_400),
            batch: 10_000,
        }
    }
}

/// Rows removed by one retention run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub samples: u64,
    pub rollups: u64,
    pub logs: u64,
    /// Live-heartbeat rows not refreshed within the raw-metrics retention
    /// (agents gone or stopped that long).
    pub heartbeats: u64,
}

async fn delete_older(
    pool: &PgPool,
    table: &str,
    column: &str,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64, Error> {
    let sql = format!(
        "delete from {table} where ctid = any(array(select ctid from {table} where {column} < $1 limit $2))"
    );
    let mut total = 0;
    loop {
        let n = sqlx::query(&sql)
            .bind(cutoff)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < u64::try_from(batch).unwrap_or(0) || n == 0 {
            return Ok(total);
        }
    }
}

/// Deletes what is older than its limit at `now`.
pub async fn retain(
    pool: &PgPool,
    retention: &Retention,
    now: DateTime<Utc>,
) -> Result<Removed, Error> {
    let cutoff = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let b = retention.batch.max(1);
    Ok(Removed {
        samples: delete_older(
            pool,
            "agent_metric_samples",
            "at",
            cutoff(retention.raw_metrics),
            b,
        )
        .await?,
        rollups: delete_older(
            pool,
            "agent_metric_rollups",
            "bucket",
            cutoff(retention.rollups),
            b,
        )
        .await?,
        logs: delete_older(pool, "agent_logs", "at", cutoff(retention.logs), b).await?,
        heartbeats: delete_older(
            pool,
            "agent_heartbeats",
            "last_seen",
            cutoff(retention.raw_metrics),
            b,
        )
        .await?,
    })
}

/// The periodic rollup and retention task.
pub struct Maintenance {
    pub pool: PgPool,
    pub rollup_interval: Duration,
    pub retention_interval: Duration,
    pub retention: Retention,
}

impl Maintenance {
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        // First runs one period after start (not at once).
        let start = tokio::time::Instant::now();
        let mut rollups =
            tokio::time::interval_at(start + self.rollup_interval, self.rollup_interval);
        let mut retention =
            tokio::time::interval_at(start + self.retention_interval, self.retention_interval);
        for timer in [&mut rollups, &mut retention] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = rollups.tick() => match rollup(&self.pool, Utc::now()).await {
                    Ok(minutes) => debug!(minutes, "metrics rolled up"),
                    Err(err) => warn!(error = %err, "rollup failed"),
                },
                _ = retention.tick() => match retain(&self.pool, &self.retention, Utc::now()).await {
                    Ok(removed) => debug!(?removed, "retention done"),
                    Err(err) => warn!(error = %err, "retention failed"),
                },
            }
        }
    }
}
