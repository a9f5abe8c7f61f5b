//! The projections benchmark: event committed → visible in `agent_status`,
//! replay rate, metrics ingestion into raw samples and rollups.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use opmas::println_out as out;

use crate::common::{Scratch, Servers, error_cmd, header, meta, register, write_path};
use opmas_domain::telemetry::MetricSample;
use opmas_projections::{Config, Projector};
use opmas_store::{AgentStore, StreamSettings, TelemetrySettings};
use sqlx::{PgPool, Row};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Options of `bench projections`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    servers: Servers,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events in the store for the replay phase.
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: i64,
    /// Metric samples for the ingestion phase.
    #[arg(long, default_value_t = 200_000)]
    samples: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = Scratch::new(&args.servers, 32).await?;
    let result = phases(
        &args,
        &scratch.pool,
        &scratch.client,
        &scratch.events,
        &scratch.telemetry,
    )
    .await;
    scratch.finish().await?;
    result
}

async fn phases(
    args: &Args,
    pool: &PgPool,
    client: &async_nats::Client,
    events: &StreamSettings,
    telemetry: &TelemetrySettings,
) -> anyhow::Result<()> {
    out(&header("projections", pool).await?);
    let config = Config {
        events: events.clone(),
        telemetry: telemetry.clone(),
        // Rollups are timed on their own in (3): the periodic job would
        // otherwise re-aggregate the bench's closed minutes on every pass
        // while they still receive samples.
        rollup_interval: Duration::from_secs(3600),
        ..Config::default()
    };
    let cancel = CancellationToken::new();
    let store = write_path(pool, client, events, &cancel);
    tokio::spawn(Projector::new(pool.clone(), client.clone(), config).run(cancel.clone()));

    let h = latency(&store, pool, args).await?;
    out(&format!(
        "(1) event committed -> visible in agent_status at 1,000 events/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events; polled every 1 ms)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    ));
    let (samples, rate) = ingestion(pool, client, telemetry, args).await?;
    out(&format!(
        "(3) metrics ingestion: {samples} samples into raw + 1 min/1 h rollups at {rate:.0} samples/s"
    ));
    cancel.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (n, rate) = replay(pool, args).await?;
    out(&format!(
        "(2) replay of {n} events into fresh tables and swap: {rate:.0} events/s"
    ));
    Ok(())
}

/// Committed events not yet seen in `agent_status`: agent → (sequence, commit instant).
type Pending = Arc<Mutex<HashMap<String, Vec<(i64, Instant)>>>>;

/// 10 tasks, 100 commands/s each, over 100 agents; a poller reads
/// `agent_status` every millisecond and times each event from its commit.
async fn latency(store: &AgentStore, pool: &PgPool, args: &Args) -> anyhow::Result<Histogram<u64>> {
    let agents: Vec<String> = (0..100).map(|i| format!("lat-{i}")).collect();
    for id in &agents {
        store.execute(id, register(id)?, meta()).await?;
    }
    while sqlx::query_scalar::<_, i64>("select count(*) from agent_status")
        .fetch_one(pool)
        .await?
        < 100
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending: Pending = Arc::default();
    let total = 1_000 * args.seconds;
    let done = CancellationToken::new();
    let poller = {
        let (pending, pool, done) = (pending.clone(), pool.clone(), done.clone());
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while hist.len() < total {
                tick.tick().await;
                let rows = sqlx::query("select agent_id, last_sequence from agent_status")
                    .fetch_all(&pool)
                    .await?;
                let now = Instant::now();
                let mut pending = pending.lock().await;
                for row in rows {
                    let id: String = row.get("agent_id");
                    let seq: i64 = row.get("last_sequence");
                    if let Some(list) = pending.get_mut(&id) {
                        list.retain(|(s, at)| {
                            if *s <= seq {
                                let _ = hist.record(now.duration_since(*at).as_micros() as u64);
                                false
                            } else {
                                true
                            }
                        });
                    }
                }
                if done.is_cancelled() && pending.values().all(Vec::is_empty) {
                    break;
                }
            }
            anyhow::Ok(hist)
        })
    };
    let mut tasks = Vec::new();
    for t in 0..10u64 {
        let (store, pending, agents) = (store.clone(), pending.clone(), agents.clone());
        let per_task = total / 10;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..per_task {
                tick.tick().await;
                let id = &agents[((t * 10 + i) % 100) as usize];
                let events = store
                    .execute_with_retry(id, error_cmd(i), meta(), 20)
                    .await?;
                let now = Instant::now();
                let mut p = pending.lock().await;
                for e in events {
                    p.entry(id.clone())
                        .or_default()
                        .push((e.sequence as i64, now));
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    done.cancel();
    tokio::time::timeout(Duration::from_secs(60), poller).await??
}

/// Publishes `samples` metric samples (10,000 agents, closed minutes of the
/// last half hour) to the metrics stream as a supervisor would, then times
/// the projector until every sample is stored and every minute rolled up.
async fn ingestion(
    pool: &PgPool,
    client: &async_nats::Client,
    telemetry: &TelemetrySettings,
    args: &Args,
) -> anyhow::Result<(usize, f64)> {
    let start = Instant::now();
    let base = chrono::Utc::now() - chrono::Duration::minutes(30);
    for i in 0..args.samples {
        let agent = format!("m-{}", i % 10_000);
        let sample = MetricSample {
            agent_id: agent.clone(),
            node: "bench".into(),
            pid: 1000 + (i % 10_000) as u32,
            at: base + chrono::Duration::milliseconds((i / 10_000) as i64 * 500),
            cpu_percent: (i % 100) as f64,
            rss_bytes: 10_000_000 + i as u64,
            threads: 4,
            open_fds: 12,
            last_heartbeat_at: None,
        };
        client
            .publish(
                telemetry.metrics_subject(&agent),
                serde_json::to_vec(&sample)?.into(),
            )
            .await?;
    }
    client.flush().await?;
    let published = start.elapsed();
    loop {
        let raw: i64 = sqlx::query_scalar("select count(*) from agent_metric_samples")
            .fetch_one(pool)
            .await?;
        if raw as usize >= args.samples {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "ingestion stalled at {raw} samples"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = start.elapsed();
    // One rollup pass over every minute that received samples, as the job
    // runs once a minute has closed (all of the bench's minutes are).
    let rolling = Instant::now();
    let minutes = opmas_projections::maintenance::rollup(pool, chrono::Utc::now()).await?;
    let rolled = rolling.elapsed();
    let dirty: i64 = sqlx::query_scalar("select count(*) from agent_metric_dirty")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(dirty == 0, "{dirty} minutes left unrolled");
    let (raw_rate, total) = (args.samples as f64 / stored.as_secs_f64(), stored + rolled);
    out(&format!(
        "  (3) parts: all published (and flushed) after {:.2} s; all raw rows stored after {:.2} s ({raw_rate:.0} samples/s); one rollup pass over the {minutes} minutes (1 min and 1 h rows) {:.2} s",
        published.as_secs_f64(),
        stored.as_secs_f64(),
        rolled.as_secs_f64(),
    ));
    Ok((args.samples, args.samples as f64 / total.as_secs_f64()))
}

/// Grows the store to `replay_events` events (10,000 agents, each an
/// `AgentRegistered` and copies of a real `ErrorRecorded`), then times
/// `opmas replay` (rebuild into fresh tables and swap).
async fn replay(pool: &PgPool, args: &Args) -> anyhow::Result<(u64, f64)> {
    let per_agent = (args.replay_events / 10_000).max(2);
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         select 'Agent', 'r-' || a, 1, e.event_type, e.event_version, \
                replace(e.payload::text, '\"lat-0\"', '\"r-' || a || '\"')::json, e.metadata \
         from (select * from events where aggregate_id = 'lat-0' and sequence = 1) e, generate_series(1, 10000) a",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         select 'Agent', 'r-' || a, s, e.event_type, e.event_version, e.payload, e.metadata \
         from (select * from events where aggregate_id = 'lat-0' and sequence = 2) e, \
              generate_series(1, 10000) a, generate_series(2, $1) s",
    )
    .bind(per_agent)
    .execute(pool)
    .await?;
    sqlx::query("truncate outbox").execute(pool).await?;
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    let n = opmas_projections::replay::replay(&mut conn, |p| {
        eprintln!(
            "replay: {} of {} events, {:.0}/s, eta {:?}",
            p.events,
            p.total,
            p.rate(),
            p.eta()
        );
    })
    .await?;
    Ok((n, n as f64 / start.elapsed().as_secs_f64()))
}
