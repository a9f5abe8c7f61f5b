//! The telemetry projectors: `OPMAS_METRICS` → `agent_metric_samples` (and
//! the dirty minutes the rollup job picks up), `OPMAS_LOGS` → `agent_logs`.
//! Checkpointed by stream sequence (`projection_consumers`): a message at or
//! below it is a redelivery and is skipped; rows are also keyed so that a
//! repeat changes nothing (`(agent_id, at)` for samples, the stream
//! sequence for log lines).

use async_nats::jetstream::Message;
use opmas_domain::telemetry::{LogLine, MetricSample};
use serde::Serialize;
use sqlx::PgConnection;
use tracing::warn;

use crate::Error;
use crate::consumer::{Sink, stream_sequence};

const SAMPLES: &str = "
with s as (select * from json_populate_recordset(null::agent_metric_samples, $1::json)),
ins as (
  insert into agent_metric_samples (agent_id, at, node, pid, cpu_percent, rss_bytes, threads, open_fds)
  select agent_id, at, node, pid, cpu_percent, rss_bytes, threads, open_fds from s
  on conflict do nothing)
insert into agent_metric_dirty (bucket)
select distinct date_trunc('minute', at, 'UTC') from s
on conflict do nothing";

/// The latest heartbeat per agent carried by a batch (`[[agent, time]]`).
const HEARTBEATS: &str = "
insert into agent_heartbeats (agent_id, last_seen)
select x->>0, (x->>1)::timestamptz from json_array_elements($1::json) as x
on conflict (agent_id) do update set last_seen = greatest(agent_heartbeats.last_seen, excluded.last_seen)";

const LOGS: &str = "
insert into agent_logs (stream_sequence, agent_id, at, level, stream, node, pid, line, dropped_before)
select stream_sequence, agent_id, at, level, stream, node, pid, line, dropped_before
from json_populate_recordset(null::agent_logs, $1::json)
on conflict do nothing";

fn decode<T: serde::de::DeserializeOwned>(messages: &[Message], after: u64) -> Vec<(u64, T)> {
    messages
        .iter()
        .filter_map(|msg| {
            let sequence = stream_sequence(msg);
            if sequence != 0 && sequence <= after {
                return None;
            }
            match serde_json::from_slice(&msg.payload) {
                Ok(value) => Some((sequence, value)),
                Err(err) => {
                    warn!(subject = %msg.subject, error = %err, "undecodable telemetry skipped");
                    None
                }
            }
        })
        .collect()
}

/// Writes metric samples.
#[derive(Debug, Clone, Default)]
pub struct MetricsSink;

impl Sink for MetricsSink {
    async fn write(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
        after: u64,
    ) -> Result<(), Error> {
        let samples: Vec<MetricSample> = decode(messages, after)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        write_samples(conn, &samples).await
    }
}

/// Inserts samples (repeats ignored) and marks their minutes for rollup.
pub async fn write_samples(conn: &mut PgConnection, samples: &[MetricSample]) -> Result<(), Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(samples).map_err(Error::corrupt)?;
    sqlx::query(SAMPLES).bind(json).execute(&mut *conn).await?;
    let mut latest: std::collections::BTreeMap<&str, chrono::DateTime<chrono::Utc>> =
        std::collections::BTreeMap::new();
    for s in samples {
        if let Some(at) = s.last_heartbeat_at {
            let e = latest.entry(s.agent_id.as_str()).or_insert(at);
            *e = (*e).max(at);
        }
    }
    if !latest.is_empty() {
        let rows: Vec<(&str, chrono::DateTime<chrono::Utc>)> = latest.into_iter().collect();
        let json = serde_json::to_string(&rows).map_err(Error::corrupt)?;
        sqlx::query(HEARTBEATS)
            .bind(json)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[derive(Serialize)]
struct LogRow<'a> {
    stream_sequence: u64,
    #[serde(flatten)]
    line: &'a LogLine,
}

/// Writes log lines.
#[derive(Debug, Clone, Default)]
pub struct LogsSink;

impl Sink for LogsSink {
    async fn write(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
        after: u64,
    ) -> Result<(), Error> {
        let mut lines: Vec<(u64, LogLine)> = decode(messages, after);
        for (_, l) in &mut lines {
            if l.line.contains('\0') {
                l.line = l.line.replace('\0', "\u{fffd}");
            }
        }
        let rows: Vec<LogRow<'_>> = lines
            .iter()
            .map(|(stream_sequence, line)| LogRow {
                stream_sequence: *stream_sequence,
                line,
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_string(&rows).map_err(Error::corrupt)?;
        sqlx::query(LOGS).bind(json).execute(conn).await?;
        Ok(())
    }
}
