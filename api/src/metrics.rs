//! Prometheus `/metrics`: request latency by route, commands by outcome,
//! and, read at scrape time from the shared stores (so they are right
//! whichever process does the work): agents by status and health,
//! projection consumer lag, outbox (relay) backlog, events in the stream.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub status: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
    pub stream: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The registry and the series the API updates.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Histogram, fn() -> Histogram>,
    commands: Family<CommandLabels, Counter>,
    agents: Family<AgentLabels, Gauge>,
    consumer_lag: Family<ConsumerLabels, Gauge>,
    consumer_processed: Family<ConsumerLabels, Gauge>,
    relay_backlog: Gauge,
    heartbeat_lost: Gauge,
    restarts: Gauge,
    stream_messages: Gauge,
    scrape_seconds: F64Gauge,
    live_clients: Gauge,
    live_dropped: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("opmas");
        let requests: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let commands = Family::<CommandLabels, Counter>::default();
        let agents = Family::<AgentLabels, Gauge>::default();
        let consumer_lag = Family::<ConsumerLabels, Gauge>::default();
        let consumer_processed = Family::<ConsumerLabels, Gauge>::default();
        let relay_backlog = Gauge::default();
        let heartbeat_lost = Gauge::default();
        let restarts = Gauge::default();
        let stream_messages = Gauge::default();
        let scrape_seconds = F64Gauge::default();
        let live_clients = Gauge::default();
        let live_dropped = Counter::default();
        registry.register(
            "http_request_duration_seconds",
            "API request latency by method, route and status",
            requests.clone(),
        );
        registry.register(
            "commands",
            "Commands sent to agents, by command and outcome (ok, or the error code)",
            commands.clone(),
        );
        registry.register(
            "agents",
            "Registered agents by process status and health",
            agents.clone(),
        );
        registry.register(
            "projection_consumer_pending",
            "Messages a projection consumer has not processed yet (lag)",
            consumer_lag.clone(),
        );
        registry.register(
            "projection_consumer_processed",
            "Messages a projection consumer has processed",
            consumer_processed.clone(),
        );
        registry.register(
            "relay_backlog",
            "Committed events not yet published to JetStream (outbox rows)",
            relay_backlog.clone(),
        );
        registry.register(
            "agents_heartbeat_lost",
            "Registered agents whose heartbeat is lost",
            heartbeat_lost.clone(),
        );
        registry.register(
            "agent_restarts",
            "Restarts of all registered agents, summed (rises while agents crash-loop)",
            restarts.clone(),
        );
        registry.register(
            "events_stream_messages",
            "Messages in the domain events stream",
            stream_messages.clone(),
        );
        registry.register(
            "scrape_duration_seconds",
            "Time the last /metrics scrape spent reading the stores",
            scrape_seconds.clone(),
        );
        registry.register(
            "live_clients",
            "Connected live-stream clients (WebSocket and SSE)",
            live_clients.clone(),
        );
        registry.register(
            "live_clients_dropped",
            "Live-stream clients dropped because they did not keep up",
            live_dropped.clone(),
        );
        Self {
            registry,
            requests,
            commands,
            agents,
            consumer_lag,
            consumer_processed,
            relay_backlog,
            heartbeat_lost,
            restarts,
            stream_messages,
            scrape_seconds,
            live_clients,
            live_dropped,
        }
    }

    pub fn command(&self, command: &str, outcome: &str) {
        self.commands
            .get_or_create(&CommandLabels {
                command: command.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn live_clients(&self) -> &Gauge {
        &self.live_clients
    }

    pub fn live_dropped(&self) -> &Counter {
        &self.live_dropped
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: records each request's latency under its route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics()
        .requests
        .get_or_create(&RouteLabels {
            method,
            route,
            status: response.status().as_u16().to_string(),
        })
        .observe(start.elapsed().as_secs_f64());
    response
}

/// Reads the scrape-time series and renders everything as Prometheus text.
pub async fn render(state: &AppState) -> Result<String, ApiError> {
    let start = Instant::now();
    let m = state.metrics();
    let pool = state.pool();
    let query = async {
        let agents: Vec<(String, String, i64)> = sqlx::query_as(
            "select status, health, count(*) from agent_status where not deregistered \
             group by status, health",
        )
        .fetch_all(pool)
        .await?;
        let consumers: Vec<(String, String, i64, i64)> =
            sqlx::query_as("select name, stream, pending, processed from projection_consumers")
                .fetch_all(pool)
                .await?;
        let (lost, restarts): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where heartbeat_lost), coalesce(sum(restart_count), 0)::bigint \
             from agent_status where registered and not deregistered",
        )
        .fetch_one(pool)
        .await?;
        let backlog = opmas_store::relay::backlog(pool)
            .await
            .map_err(|e| match e {
                opmas_store::Error::Database(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
        Ok::<_, sqlx::Error>((agents, consumers, backlog, lost, restarts))
    };
    let (agents, consumers, backlog, lost, restarts) =
        tokio::time::timeout(crate::PROBE_TIMEOUT, query)
            .await
            .map_err(|_| ApiError::unavailable("the database"))??;
    m.agents.clear();
    for (status, health, n) in agents {
        m.agents
            .get_or_create(&AgentLabels { status, health })
            .set(n);
    }
    m.consumer_lag.clear();
    m.consumer_processed.clear();
    for (consumer, stream, pending, processed) in consumers {
        let labels = ConsumerLabels { consumer, stream };
        m.consumer_lag.get_or_create(&labels).set(pending);
        m.consumer_processed.get_or_create(&labels).set(processed);
    }
    m.relay_backlog.set(backlog);
    m.heartbeat_lost.set(lost);
    m.restarts.set(restarts);
    let js = async_nats::jetstream::new(state.nats().clone());
    let info = tokio::time::timeout(crate::PROBE_TIMEOUT, async {
        let mut stream = js.get_stream(&state.config().events.name).await.ok()?;
        stream.info().await.ok().map(|i| i.state.messages)
    })
    .await;
    if let Ok(Some(messages)) = info {
        m.stream_messages
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }
    m.scrape_seconds.set(start.elapsed().as_secs_f64());
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry).map_err(ApiError::internal)?;
    Ok(out)
}
