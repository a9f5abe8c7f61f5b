//! `opmas events verify`: compares the Postgres event store with the
//! `OPMAS_EVENTS` stream, agent by agent (count, ids, order), and repairs the
//! stream from Postgres (the durable truth) when asked.

use std::collections::{BTreeMap, HashSet};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::Error;
use crate::stream::{StreamSettings, headers};

/// What differs for one agent.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AgentDiff {
    /// The agent.
    pub agent_id: String,
    /// Sequences in Postgres, published (not in the outbox), absent from the stream.
    pub missing: Vec<i64>,
    /// Sequences in the stream that Postgres does not hold.
    pub unexpected: Vec<i64>,
    /// Sequences the stream holds more than once.
    pub duplicates: Vec<i64>,
    /// The stream holds this agent's events out of sequence order.
    pub out_of_order: bool,
}

/// Result of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Agents seen in either place.
    pub agents: usize,
    /// Events in Postgres.
    pub store_events: u64,
    /// Event messages in the stream.
    pub stream_messages: u64,
    /// Events committed but still waiting in the outbox (not a difference).
    pub pending: u64,
    /// Agents with differences.
    pub diffs: Vec<AgentDiff>,
}

impl Report {
    /// No agent differs.
    pub fn is_clean(&self) -> bool {
        self.diffs.is_empty()
    }
}

/// Compares the store with the stream. Events still in the outbox are counted
/// as pending, not missing. While events are being written, one comparison
/// can catch an event in flight (committed after the store was read, or
/// published and taken from the outbox between the reads): a difference
/// counts only if it is there in three comparisons, 300 ms apart.
pub async fn verify(
    pool: &PgPool,
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Report, Error> {
    let mut report = compare_once(pool, js, settings).await?;
    for _ in 0..2 {
        if report.is_clean() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let again = compare_once(pool, js, settings).await?;
        // Keep only what both saw.
        let mut diffs = Vec::new();
        for diff in again.diffs.iter() {
            if let Some(before) = report.diffs.iter().find(|d| d.agent_id == diff.agent_id) {
                let both = |a: &[i64], b: &[i64]| -> Vec<i64> {
                    a.iter().filter(|s| b.contains(s)).copied().collect()
                };
                let kept = AgentDiff {
                    agent_id: diff.agent_id.clone(),
                    missing: both(&diff.missing, &before.missing),
                    unexpected: both(&diff.unexpected, &before.unexpected),
                    duplicates: both(&diff.duplicates, &before.duplicates),
                    out_of_order: diff.out_of_order && before.out_of_order,
                };
                if !(kept.missing.is_empty()
                    && kept.unexpected.is_empty()
                    && kept.duplicates.is_empty()
                    && !kept.out_of_order)
                {
                    diffs.push(kept);
                }
            }
        }
        report = Report { diffs, ..again };
    }
    Ok(report)
}

async fn compare_once(
    pool: &PgPool,
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Report, Error> {
    // The stream first: what it holds was committed before, so the store
    // read after it has every event the stream has.
    let stream = read_stream(js, settings).await?;
    let mut store: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let rows = sqlx::query(
        "select aggregate_id, sequence from events where aggregate_type = 'Agent' \
         order by aggregate_id, sequence",
    )
    .fetch_all(pool)
    .await?;
    for row in &rows {
        store
            .entry(row.get("aggregate_id"))
            .or_default()
            .push(row.get("sequence"));
    }
    let pending: HashSet<(String, i64)> =
        sqlx::query("select aggregate_id, sequence from outbox where aggregate_type = 'Agent'")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| (r.get("aggregate_id"), r.get("sequence")))
            .collect();
    let mut report = Report {
        store_events: rows.len() as u64,
        stream_messages: stream.values().map(|v| v.len() as u64).sum(),
        pending: pending.len() as u64,
        ..Report::default()
    };
    let agents: std::collections::BTreeSet<&String> = store.keys().chain(stream.keys()).collect();
    report.agents = agents.len();
    let empty = Vec::new();
    for agent in agents {
        let stored = store.get(agent).unwrap_or(&empty);
        let seen = stream.get(agent).unwrap_or(&empty);
        let diff = compare(agent, stored, seen, &pending);
        if diff
            != (AgentDiff {
                agent_id: agent.clone(),
                ..AgentDiff::default()
            })
        {
            report.diffs.push(diff);
        }
    }
    Ok(report)
}

fn compare(
    agent: &str,
    stored: &[i64],
    seen: &[i64],
    pending: &HashSet<(String, i64)>,
) -> AgentDiff {
    let stored_set: HashSet<i64> = stored.iter().copied().collect();
    let mut seen_set = HashSet::new();
    let mut diff = AgentDiff {
        agent_id: agent.to_string(),
        ..AgentDiff::default()
    };
    for s in seen {
        if !seen_set.insert(*s) {
            diff.duplicates.push(*s);
        }
        if !stored_set.contains(s) {
            diff.unexpected.push(*s);
        }
    }
    diff.out_of_order = seen.windows(2).any(|w| w[1] < w[0]);
    diff.missing = stored
        .iter()
        .filter(|s| !seen_set.contains(s) && !pending.contains(&(agent.to_string(), **s)))
        .copied()
        .collect();
    diff
}

/// Per agent, the sequences the stream holds, in stream order (headers only).
async fn read_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<BTreeMap<String, Vec<i64>>, Error> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let stream = settings.ensure(js).await?;
    let info = stream.get_info().await.map_err(Error::nats)?;
    if info.state.messages == 0 {
        return Ok(out);
    }
    let last = info.state.last_sequence;
    let consumer = stream
        .create_consumer(OrderedConfig {
            headers_only: true,
            ..OrderedConfig::default()
        })
        .await
        .map_err(Error::nats)?;
    let mut messages = consumer.messages().await.map_err(Error::nats)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(Error::nats)?;
        let info = message.info().map_err(Error::nats)?;
        let stream_sequence = info.stream_sequence;
        let pending = info.pending;
        let headers = message.headers.as_ref();
        let agent = headers
            .and_then(|h| h.get(headers::AGENT_ID))
            .map(|v| v.to_string());
        let sequence = headers
            .and_then(|h| h.get(headers::SEQUENCE))
            .and_then(|v| v.as_str().parse::<i64>().ok());
        if let (Some(agent), Some(sequence)) = (agent, sequence) {
            out.entry(agent).or_default().push(sequence);
        }
        if stream_sequence >= last || pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Repairs the stream from Postgres: an agent whose events are out of order
/// or duplicated has its subjects purged and all its events queued again; an
/// agent with only missing events gets those queued. The relay publishes the
/// queued rows (under fresh message ids). Returns how many rows were queued.
pub async fn repair(
    pool: &PgPool,
    js: &jetstream::Context,
    settings: &StreamSettings,
    report: &Report,
) -> Result<u64, Error> {
    let stream = settings.ensure(js).await?;
    let mut queued = 0;
    for diff in &report.diffs {
        let rebuild =
            diff.out_of_order || !diff.duplicates.is_empty() || !diff.unexpected.is_empty();
        let result = if rebuild {
            stream
                .purge()
                .filter(settings.agent_filter(&diff.agent_id))
                .await
                .map_err(Error::nats)?;
            sqlx::query(
                "insert into outbox (aggregate_type, aggregate_id, sequence, repair) \
                 select aggregate_type, aggregate_id, sequence, true from events \
                 where aggregate_type = 'Agent' and aggregate_id = $1 order by sequence",
            )
            .bind(&diff.agent_id)
            .execute(pool)
            .await?
        } else {
            sqlx::query(
                "insert into outbox (aggregate_type, aggregate_id, sequence, repair) \
                 select 'Agent', $1, s, true from unnest($2::bigint[]) as s order by s",
            )
            .bind(&diff.agent_id)
            .bind(&diff.missing)
            .execute(pool)
            .await?
        };
        queued += result.rows_affected();
    }
    Ok(queued)
}
