//! [`Projector`]: the projections role. Runs one durable consumer per source
//! stream (events, metrics, logs) and the maintenance loop (rollups,
//! retention), each as a named task that stops on cancel.

use std::time::Duration;

use async_nats::jetstream;
use opmas_store::{StreamSettings, TelemetrySettings};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::consumer::{Consumer, Lag};
use crate::events::EventsSink;
use crate::maintenance::{Maintenance, Retention};
use crate::telemetry::{LogsSink, MetricsSink};

/// Projector settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The events stream.
    pub events: StreamSettings,
    /// The telemetry streams.
    pub telemetry: TelemetrySettings,
    /// Prefix of the durable consumer names (`<prefix>_events`, ...).
    pub consumer_prefix: String,
    /// Most messages written per transaction.
    pub batch: usize,
    /// Redelivery delay of a message delivered but not acked (a projector
    /// that died mid-batch).
    pub ack_wait: Duration,
    /// Pause after a failure (NATS or Postgres down).
    pub retry_delay: Duration,
    /// How often rollups are computed.
    pub rollup_interval: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// How long each kind of row is kept.
    pub retention: Retention,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            events: StreamSettings::default(),
            telemetry: TelemetrySettings::default(),
            consumer_prefix: "opmas_projections".into(),
            batch: 1_000,
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            rollup_interval: Duration::from_secs(10),
            retention_interval: Duration::from_secs(60),
            retention: Retention::default(),
        }
    }
}

/// The projections service: build with [`Projector::new`], run with
/// [`Projector::run`]; [`Projector::lag`] is a handle to consumer lag.
pub struct Projector {
    pool: PgPool,
    client: async_nats::Client,
    config: Config,
    lag: Lag,
}

impl Projector {
    pub fn new(pool: PgPool, client: async_nats::Client, config: Config) -> Self {
        Self {
            pool,
            client,
            config,
            lag: Lag::default(),
        }
    }

    /// Consumer lag, updated after every batch (cheap to clone).
    pub fn lag(&self) -> Lag {
        self.lag.clone()
    }

    /// Runs until `cancel`; returns once every task has stopped.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let js = jetstream::new(self.client.clone());
        self.ensure_streams(&js, &cancel).await;
        let c = &self.config;
        let consumer =
            |name: &str, stream: &str| (format!("{}_{name}", c.consumer_prefix), stream.to_owned());
        let mut tasks = tokio::task::JoinSet::new();
        let (name, stream) = consumer("events", &c.events.name);
        tasks.spawn(
            self.consumer(&js, name, stream, EventsSink)
                .run(cancel.clone()),
        );
        let (name, stream) = consumer("metrics", &c.telemetry.metrics_stream);
        tasks.spawn(
            self.consumer(&js, name, stream, MetricsSink)
                .run(cancel.clone()),
        );
        let (name, stream) = consumer("logs", &c.telemetry.logs_stream);
        tasks.spawn(
            self.consumer(&js, name, stream, LogsSink)
                .run(cancel.clone()),
        );
        let maintenance = Maintenance {
            pool: self.pool.clone(),
            rollup_interval: c.rollup_interval,
            retention_interval: c.retention_interval,
            retention: c.retention.clone(),
        };
        tasks.spawn(maintenance.run(cancel.clone()));
        info!(events = %c.events.name, "projector running");
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(err)) => result = Err(err),
                Err(err) => result = Err(Error::Corrupt(format!("projector task panicked: {err}"))),
            }
        }
        result
    }

    fn consumer<S: crate::consumer::Sink>(
        &self,
        js: &jetstream::Context,
        name: String,
        stream: String,
        sink: S,
    ) -> Consumer<S> {
        Consumer {
            pool: self.pool.clone(),
            js: js.clone(),
            name,
            stream,
            batch: self.config.batch,
            ack_wait: self.config.ack_wait,
            retry_delay: self.config.retry_delay,
            lag: self.lag.clone(),
            sink,
        }
    }

    /// Creates the streams if missing (same settings as the relay and the
    /// supervisors), retrying while NATS is down.
    async fn ensure_streams(&self, js: &jetstream::Context, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            let events = self.config.events.ensure(js).await.map(|_| ());
            match events.and(self.config.telemetry.ensure(js).await) {
                Ok(()) => return,
                Err(err) => warn!(error = %err, "cannot create streams; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(self.config.retry_delay) => {}
            }
        }
    }
}
