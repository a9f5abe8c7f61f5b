//! The spine benchmark: event store, commands, relay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::StreamExt;
use hdrhistogram::Histogram;
use opmas::println_out as out;

use crate::common::{Servers, drop_db, error_cmd, meta, register};
use opmas_store::{AgentStore, OutboxNotifier, Relay, RelayConfig, StreamSettings};
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Options of `bench spine`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    servers: Servers,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent tasks for (a) and (b).
    #[arg(long, default_value_t = 32)]
    tasks: usize,
    /// Events of the long agent in (c).
    #[arg(long, default_value_t = 100_000)]
    long_history: i64,
    /// Events in the backlog of (e).
    #[arg(long, default_value_t = 200_000)]
    backlog: i64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let db_name = format!("opmas_bench_{tag}");
    let admin = opmas_store::db::connect(&args.servers.database_url, 1).await?;
    let pool = args.servers.fresh_db(&admin, &db_name, 48).await?;
    let client = async_nats::connect(&args.servers.nats_url).await?;
    let settings = StreamSettings::isolated(&format!("bench_{tag}"));
    let result = phases(&args, &pool, &client, &settings).await;
    let js = async_nats::jetstream::new(client.clone());
    let _ = js.delete_stream(&settings.name).await;
    pool.close().await;
    drop_db(&admin, &db_name).await?;
    result
}

async fn phases(
    args: &Args,
    pool: &PgPool,
    client: &async_nats::Client,
    settings: &StreamSettings,
) -> anyhow::Result<()> {
    out(&format!(
        "bench spine: {} tasks, {} s per phase, postgres {}, {} cores",
        args.tasks,
        args.seconds,
        sqlx::query_scalar::<_, String>("show server_version")
            .fetch_one(pool)
            .await?,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    ));
    let notify_cancel = CancellationToken::new();
    let notifier = OutboxNotifier::spawn(pool.clone(), notify_cancel.clone());
    let store = AgentStore::new(pool.clone())
        .with_notifier(notifier.clone())
        .with_group_commit(64);
    // (a) and (b) alternate in three rounds; medians are compared, so that
    // noise from the shared machine hits both alike.
    sqlx::query("create table bench_raw (id bigserial primary key, agent text not null, payload json not null)")
        .execute(pool)
        .await?;
    let agents: Vec<String> = (0..1000).map(|i| format!("agent-{i}")).collect();
    for id in &agents {
        store.execute(id, register(id)?, meta()).await?;
    }
    let relay_cancel = CancellationToken::new();
    let relay = spawn_relay(pool, client, settings, &relay_cancel, Some(&notifier));
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        raw.push(raw_inserts(pool, args).await?);
        ours.push(commands(&store, &agents, args).await?);
    }
    let (a, b) = (median(&mut raw), median(&mut ours));
    out(&format!(
        "(a) raw single-row insert transactions, {} tasks: {a:.0} tx/s (rounds: {})",
        args.tasks,
        list(&raw)
    ));
    out(&format!(
        "(b) commands over 1,000 agents, {} tasks, relay running: {b:.0} commands/s = {:.2} x (a) (rounds: {})",
        args.tasks,
        b / a,
        list(&ours)
    ));
    let d = latency(&store, client, settings, args).await?;
    out(&format!(
        "(d) commit -> visible on JetStream at 1,000 commands/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        d.value_at_quantile(0.5) as f64 / 1000.0,
        d.value_at_quantile(0.99) as f64 / 1000.0,
        d.max() as f64 / 1000.0,
        d.len()
    ));
    relay_cancel.cancel();
    let _ = relay.await;

    let (first, last, no_snap) = long_history(pool, args).await?;
    out(&format!(
        "(c) one agent, sequential, no aggregate cache: {first:.0} commands/s on a new agent, {last:.0} commands/s at event {} ({:+.1}%); without snapshots at event 1,000: {no_snap:.0} commands/s",
        args.long_history,
        (last / first - 1.0) * 100.0
    ));
    let (e, resume) = drain(pool, args).await?;
    out(&format!(
        "(e) relay backlog of {} events after a NATS outage: publishing resumed {:.2} s after the server was back, then drained at {e:.0} events/s",
        args.backlog,
        resume.as_secs_f64()
    ));
    notify_cancel.cancel();
    Ok(())
}

async fn raw_inserts(pool: &PgPool, args: &Args) -> anyhow::Result<f64> {
    let payload = serde_json::to_string(&error_cmd(1))?;
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..args.tasks {
        let (pool, count, stop, payload) =
            (pool.clone(), count.clone(), stop.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sqlx::query("insert into bench_raw (agent, payload) values ($1, $2::json)")
                    .bind(format!("agent-{t}"))
                    .bind(&payload)
                    .execute(&pool)
                    .await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    timed(count, stop, tasks, args.seconds).await
}

async fn timed(
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    seconds: u64,
) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    let start_count = count.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let done = count.load(Ordering::Relaxed) - start_count;
    let rate = done as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(rate)
}

async fn commands(store: &AgentStore, agents: &[String], args: &Args) -> anyhow::Result<f64> {
    let agents = agents.to_vec();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..args.tasks {
        let (store, count, stop, agents) =
            (store.clone(), count.clone(), stop.clone(), agents.clone());
        let step = args.tasks as u64;
        tasks.push(tokio::spawn(async move {
            let mut n = t as u64;
            while !stop.load(Ordering::Relaxed) {
                let id = &agents[(n.wrapping_mul(2_654_435_761) % 1000) as usize];
                store
                    .execute_with_retry(id, error_cmd(n), meta(), 20)
                    .await?;
                count.fetch_add(1, Ordering::Relaxed);
                n += step;
            }
            anyhow::Ok(())
        }));
    }
    timed(count, stop, tasks, args.seconds).await
}

fn spawn_relay(
    pool: &PgPool,
    client: &async_nats::Client,
    settings: &StreamSettings,
    cancel: &CancellationToken,
    notifier: Option<&OutboxNotifier>,
) -> tokio::task::JoinHandle<Result<(), opmas_store::Error>> {
    let config = RelayConfig {
        stream: settings.clone(),
        ..RelayConfig::default()
    };
    let mut relay = Relay::new(pool.clone(), client.clone(), config);
    if let Some(n) = notifier {
        relay = relay.with_wake(n.subscribe());
    }
    tokio::spawn(relay.run(cancel.clone()))
}

async fn latency(
    store: &AgentStore,
    client: &async_nats::Client,
    settings: &StreamSettings,
    args: &Args,
) -> anyhow::Result<Histogram<u64>> {
    // Wait for (b)'s backlog to be gone, then follow the stream from its end.
    while opmas_store::relay::backlog(store.event_store().pool()).await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&settings.name).await?;
    // A push consumer: the server delivers each message as soon as it is
    // stored (a pull consumer adds its request round trips to the figure).
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            headers_only: true,
            ..OrderedConfig::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let committed: Arc<Mutex<HashMap<(String, i64), Instant>>> = Arc::default();
    let total = 1_000 * args.seconds;
    let reader = {
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut seen = 0;
            while seen < total {
                let Some(msg) = messages.next().await else {
                    break;
                };
                let now = Instant::now();
                let msg = msg?;
                let h = msg.headers.as_ref().context("headers")?;
                let agent = h.get("Opmas-Agent-Id").context("agent")?.to_string();
                let seq: i64 = h.get("Opmas-Sequence").context("seq")?.as_str().parse()?;
                // The committing task records its instant right after commit;
                // wait for it if the message overtook the bookkeeping.
                let at = loop {
                    if let Some(at) = committed.lock().await.remove(&(agent.clone(), seq)) {
                        break at;
                    }
                    tokio::task::yield_now().await;
                };
                hist.record(now.saturating_duration_since(at).as_micros() as u64)?;
                seen += 1;
            }
            anyhow::Ok(hist)
        })
    };
    // 1,000 commands/s: 10 tasks, each one command every 10 ms.
    let mut tasks = Vec::new();
    for t in 0..10u64 {
        let (store, committed) = (store.clone(), committed.clone());
        let per_task = total / 10;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..per_task {
                tick.tick().await;
                let id = format!("agent-{}", (t * 100 + i % 100) % 1000);
                let events = store
                    .execute_with_retry(&id, error_cmd(i), meta(), 20)
                    .await?;
                let now = Instant::now();
                let mut map = committed.lock().await;
                for e in events {
                    map.insert((id.clone(), e.sequence as i64), now);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    tokio::time::timeout(Duration::from_secs(30), reader).await??
}

/// (c): sequential commands on one agent, fresh and at `long_history` events.
/// The aggregate cache is off here, so every command loads the agent from
/// Postgres (snapshot + tail): this is the cost the snapshots bound. The two
/// agents are measured in alternating rounds of 1,000 commands and the
/// medians compared, so that machine noise hits both alike.
async fn long_history(pool: &PgPool, args: &Args) -> anyhow::Result<(f64, f64, f64)> {
    let store = AgentStore::new(pool.clone()).with_cache_capacity(0);
    let rate = |store: AgentStore, id: &'static str, n: u64| async move {
        let start = Instant::now();
        for i in 0..n {
            store.execute(id, error_cmd(i), meta()).await?;
        }
        anyhow::Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    store.execute("fresh", register("fresh")?, meta()).await?;
    store.execute("fresh", error_cmd(0), meta()).await?;

    // Grow "long" to long_history events in bulk (copies of the payload the
    // commands write), then let commands cross a snapshot boundary.
    store.execute("long", register("long")?, meta()).await?;
    store.execute("long", error_cmd(0), meta()).await?;
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         select 'Agent', 'long', g, event_type, event_version, payload, metadata \
         from events, generate_series(3, $1) g where aggregate_id = 'long' and sequence = 2",
    )
    .bind(args.long_history - 64)
    .execute(pool)
    .await?;
    sqlx::query("delete from outbox").execute(pool).await?;
    rate(store.clone(), "long", 64).await?;

    let (mut fresh, mut long) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        fresh.push(rate(store.clone(), "fresh", 1_000).await?);
        long.push(rate(store.clone(), "long", 1_000).await?);
    }

    // Without snapshots (postgres-es's default mode), at event 1,000.
    let plain = store.clone().with_snapshot_every(0);
    plain.execute("plain", register("plain")?, meta()).await?;
    for i in 0..999 {
        plain.execute("plain", error_cmd(i), meta()).await?;
    }
    let no_snap = rate(plain, "plain", 200).await?;
    sqlx::query("delete from outbox").execute(pool).await?;
    Ok((median(&mut fresh), median(&mut long), no_snap))
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (e): a relay publishing to a private nats-server that is stopped; the
/// outbox fills as during an outage; the server comes back. Prints how long
/// the relay took to resume and the drain rate from its first publish on.
async fn drain(pool: &PgPool, args: &Args) -> anyhow::Result<(f64, Duration)> {
    let dir = tempfile::tempdir()?;
    let mut server = opmas_embedded::NatsServer::start(dir.path()).await?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await?;
    let settings = StreamSettings::default();
    sqlx::query("delete from outbox").execute(pool).await?;
    let cancel = CancellationToken::new();
    let config = RelayConfig {
        stream: settings.clone(),
        ..RelayConfig::default()
    };
    let relay = tokio::spawn(Relay::new(pool.clone(), client.clone(), config).run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await;
    let per_agent = args.backlog / 1000;
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         select 'Agent', 'drain-' || a, s, e.event_type, e.event_version, e.payload, e.metadata \
         from (select * from events where aggregate_id = 'fresh' and sequence = 2) e, \
              generate_series(1, 1000) a, generate_series(1, $1) s",
    )
    .bind(per_agent)
    .execute(pool)
    .await?;
    let total = opmas_store::relay::backlog(pool).await?;
    let back = Instant::now();
    server.restart().await?;
    let mut resumed = None;
    loop {
        let left = opmas_store::relay::backlog(pool).await?;
        if resumed.is_none() && left < total {
            resumed = Some((Instant::now(), left));
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (first, left_then) = resumed.context("relay never resumed")?;
    let rate = left_then as f64 / first.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = relay.await;
    server.stop().await;
    Ok((rate, first.duration_since(back)))
}
