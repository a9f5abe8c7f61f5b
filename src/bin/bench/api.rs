//! The API benchmark: with N registered agents (default 1,000), the
//! throughput and latency of `GET /api/v1/agents/{id}/status` under
//! concurrent closed-loop load, and the latency of listing all agents
//! (`GET /api/v1/agents?limit=1000`) at a fixed open-loop rate.
//!
//! The API runs on its own tokio runtime (2 worker threads) in this process,
//! as `opmas api` would, over a fresh database filled by the real write path
//! and projector; the load generator (reqwest, keep-alive connections) runs
//! on the main runtime. Client, server, PostgreSQL and nats-server share the
//! machine's cores, so the figures are a floor for a server with a
//! separate load generator.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use opmas::println_out as out;
use opmas_api::auth::jwt::{Claims, JwtKey, JwtVerifier, sign_hs256};
use opmas_api::{ApiConfig, AppState, Role};
use opmas_projections::{Config, Projector};
use tokio_util::sync::CancellationToken;

use crate::common::{Scratch, Servers, header, meta, register, write_path};

const SECRET: &[u8] = b"bench-secret-of-at-least-32-bytes!!";

/// Options of `bench api`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    servers: Servers,
    /// Registered agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections of the status phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second of the list phase (open loop).
    #[arg(long, default_value_t = 200)]
    list_rate: u64,
    /// Events per second committed during the second list phase.
    #[arg(long, default_value_t = 100)]
    write_rate: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = Scratch::new(&args.servers, 32).await?;
    let result = phases(&args, &scratch).await;
    scratch.finish().await?;
    result
}

async fn phases(args: &Args, scratch: &Scratch) -> anyhow::Result<()> {
    let Scratch {
        pool,
        client,
        events,
        telemetry,
        tag,
        db_name,
        ..
    } = scratch;
    out(&format!(
        "{}, {} agents",
        header("api", pool).await?,
        args.agents
    ));
    let js = async_nats::jetstream::new(client.clone());
    events.ensure(&js).await?;
    telemetry.ensure(&js).await?;
    let cancel = CancellationToken::new();
    let store = write_path(pool, client, events, &cancel);
    let config = Config {
        events: events.clone(),
        telemetry: telemetry.clone(),
        ..Config::default()
    };
    tokio::spawn(Projector::new(pool.clone(), client.clone(), config).run(cancel.clone()));
    let ids: Vec<String> = (0..args.agents).map(|i| format!("agent-{i:05}")).collect();
    for id in &ids {
        store.execute(id, register(id)?, meta()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = sqlx::query_scalar("select count(*) from agent_status where registered")
            .fetch_one(pool)
            .await?;
        if n as usize >= ids.len() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "projector did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The API on its own runtime, as a separate `opmas api` would have.
    let api_pool = opmas_store::db::connect(&args.servers.url_of(db_name)?, 16).await?;
    let state = AppState::new(
        api_pool,
        store.clone(),
        client.clone(),
        ApiConfig {
            jwt: JwtVerifier::new(
                vec![JwtKey::hs256(Some("bench"), SECRET)],
                "opmas",
                "opmas-api",
            ),
            rate_per_second: NonZeroU32::new(1_000_000).context("rate")?,
            rate_burst: NonZeroU32::new(1_000_000).context("burst")?,
            body_limit: 1 << 20,
            events: events.clone(),
            telemetry: telemetry.clone(),
            nodes_bucket: format!("OPMAS_NODES_BENCH_{}", tag.to_uppercase()),
            live_buffer: 1024,
            // The benchmark's specs carry no secrets: nothing to seal.
            secret_key: None,
        },
    );
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let server_cancel = cancel.clone();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            opmas_api::serve(listener, state, server_cancel).await?;
            Ok(())
        })
    });
    let base = format!("http://{addr}");
    let now = chrono::Utc::now().timestamp();
    let jwt = sign_hs256(
        Some("bench"),
        SECRET,
        &Claims {
            sub: "bench".into(),
            role: Role::Viewer,
            exp: (now + 3600) as u64,
            nbf: None,
            iss: "opmas".into(),
            aud: "opmas-api".into(),
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let api_token = opmas_api::auth::tokens::create(pool, "bench", Role::Viewer, "bench", None)
        .await?
        .token;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    // Warm-up: connections, prepared statements, caches.
    let _ = status_load(
        &http,
        &base,
        &jwt,
        &ids,
        args.concurrency,
        Duration::from_secs(2),
    )
    .await?;

    let secs = Duration::from_secs(args.seconds);
    for (name, token) in [("JWT", &jwt), ("API token", &api_token)] {
        let (n, h) = status_load(&http, &base, token, &ids, args.concurrency, secs).await?;
        out(&format!(
            "GET /agents/{{id}}/status, {} connections, {name}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms (target >= 10,000/s)",
            args.concurrency,
            n as f64 / secs.as_secs_f64(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        ));
    }

    let (n, h) = list_load(&http, &base, &jwt, args.list_rate, secs, args.agents).await?;
    out(&format!(
        "GET /agents?limit=1000 ({} agents) at {} requests/s: {n} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 20 ms)",
        args.agents,
        args.list_rate,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    ));
    // The same while events are committed (each one changes the read model,
    // so answers cannot come from the list cache between them).
    let writing = CancellationToken::new();
    let writer = {
        let (store, ids, stop) = (store.clone(), ids.clone(), writing.clone());
        let rate = args.write_rate;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut n = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                let id = &ids[(n as usize * 7919) % ids.len()];
                let _ = store.execute(id, crate::common::error_cmd(n), meta()).await;
                n += 1;
            }
            n
        })
    };
    let (n, h) = list_load(&http, &base, &jwt, args.list_rate, secs, args.agents).await?;
    writing.cancel();
    let written = writer.await.unwrap_or(0);
    out(&format!(
        "  the same while {written} events were committed ({} /s): {n} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.write_rate,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    ));
    let (n, h) = list_closed(&http, &base, &jwt, 4, secs).await?;
    out(&format!(
        "GET /agents?limit=1000 closed loop, 4 connections: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
        n as f64 / secs.as_secs_f64(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    ));
    cancel.cancel();
    let _ = tokio::task::spawn_blocking(move || server.join()).await;
    Ok(())
}

/// `concurrency` tasks each request the status of pseudo-random agents in a loop.
async fn status_load(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let (ids, base) = (Arc::new(ids.to_vec()), base.to_string());
    closed_loop(http, token, concurrency, duration, move |task, n| {
        let i = (task * 7919 + (n as usize + 1) * 104_729) % ids.len();
        format!("{base}/api/v1/agents/{}/status", ids[i])
    })
    .await
}

/// `concurrency` tasks each GET `url(task, n)` in a loop for `duration`:
/// requests made and their latencies.
async fn closed_loop(
    http: &reqwest::Client,
    token: &str,
    concurrency: usize,
    duration: Duration,
    url: impl Fn(usize, u64) -> String + Send + Sync + 'static,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let url = Arc::new(url);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (http, token, url, stop) = (http.clone(), token.to_string(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let resp = http.get(url(t, n)).bearer_auth(&token).send().await?;
                anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                let _ = resp.bytes().await?;
                h.record(start.elapsed().as_micros() as u64)?;
                n += 1;
            }
            Ok::<_, anyhow::Error>((n, h))
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        hist.add(h)?;
    }
    Ok((total, hist))
}

/// Lists all agents at a fixed rate; latency counts from the scheduled
/// send time (no coordinated omission).
async fn list_load(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    rate: u64,
    duration: Duration,
    expected: usize,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let mut k = 0u32;
    loop {
        let at = start + interval * k;
        if at.duration_since(start) >= duration {
            break;
        }
        tokio::time::sleep_until(at).await;
        let (http, url, token) = (
            http.clone(),
            format!("{base}/api/v1/agents?limit=1000"),
            token.to_string(),
        );
        let check = k == 0;
        tasks.push(tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(&token).send().await?;
            anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
            let body = resp.bytes().await?;
            let latency = at.elapsed();
            // The first answer is checked whole; parsing every one would
            // load the shared cores with client work.
            let items = if check {
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                Some(v["items"].as_array().map_or(0, Vec::len))
            } else {
                None
            };
            Ok::<_, anyhow::Error>((latency, items))
        }));
        k += 1;
    }
    let mut h = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (latency, items) = t.await??;
        if let Some(items) = items {
            anyhow::ensure!(items == expected.min(1000), "list returned {items} agents");
        }
        h.record(latency.as_micros() as u64)?;
    }
    Ok((u64::from(k), h))
}

/// `concurrency` tasks list all agents in a loop (the most the API sustains).
async fn list_closed(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let url = format!("{base}/api/v1/agents?limit=1000");
    closed_loop(http, token, concurrency, duration, move |_, _| url.clone()).await
}
