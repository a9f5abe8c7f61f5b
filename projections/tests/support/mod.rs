//! Test support of the projections: the workspace's `opmas-testkit` (a
//! database per test) plus streams of a test's own, a relay and a projector
//! on them.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use opmas_domain::AgentCommand;
use opmas_projections::{Config, Projector};
use opmas_store::{Relay, RelayConfig, StreamSettings, TelemetrySettings};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use opmas_testkit::{TestDb, eventually, meta, nats_url, record_error, register, spec, tag};

/// Streams of a test's own: events and telemetry.
pub struct Streams {
    pub client: async_nats::Client,
    pub events: StreamSettings,
    pub telemetry: TelemetrySettings,
}

impl Streams {
    pub async fn new() -> Self {
        // OPMAS_TEST_LOG=opmas_projections=debug shows what the projector did.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("OPMAS_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let t = tag();
        let client = async_nats::connect(nats_url()).await.unwrap();
        // JetStream reserves max_bytes per stream: keep test streams small.
        let telemetry = TelemetrySettings {
            logs_max_bytes: 64 << 20,
            ..TelemetrySettings::isolated(&t)
        };
        let s = Self {
            client,
            events: StreamSettings::isolated(&t),
            telemetry,
        };
        let js = s.js();
        s.events.ensure(&js).await.unwrap();
        s.telemetry.ensure(&js).await.unwrap();
        s
    }

    pub fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    pub async fn cleanup(self) {
        let js = self.js();
        for name in [
            &self.events.name,
            &self.telemetry.metrics_stream,
            &self.telemetry.logs_stream,
        ] {
            if let Err(err) = js.delete_stream(name).await {
                eprintln!("cannot delete stream {name}: {err}");
            }
        }
    }

    /// Projector settings on these streams, with short timers for tests.
    pub fn config(&self) -> Config {
        Config {
            events: self.events.clone(),
            telemetry: self.telemetry.clone(),
            batch: 100,
            ack_wait: Duration::from_secs(2),
            retry_delay: Duration::from_millis(100),
            rollup_interval: Duration::from_secs(3600),
            retention_interval: Duration::from_secs(3600),
            ..Config::default()
        }
    }

    pub fn relay(&self, db: &TestDb, cancel: &CancellationToken) -> JoinHandle<()> {
        let config = RelayConfig {
            stream: self.events.clone(),
            sweep_interval: Duration::from_millis(100),
            retry_delay: Duration::from_millis(100),
            ..RelayConfig::default()
        };
        let relay = Relay::new(db.pool.clone(), self.client.clone(), config);
        let cancel = cancel.clone();
        tokio::spawn(async move { relay.run(cancel).await.unwrap() })
    }

    pub fn projector(
        &self,
        db: &TestDb,
        config: Config,
        cancel: &CancellationToken,
    ) -> JoinHandle<()> {
        let projector = Projector::new(db.pool.clone(), self.client.clone(), config);
        let cancel = cancel.clone();
        tokio::spawn(async move { projector.run(cancel).await.unwrap() })
    }
}

/// A projector in a runtime of its own, with its own pool and NATS
/// connection: [`Elsewhere::kill`] ends it as a killed process ends, every
/// socket closed, its transactions rolled back by the server. (Aborting a
/// task instead leaves its pooled connections to the shared pool, one maybe
/// cut in the middle of a query and holding row locks.)
pub struct Elsewhere(tokio::runtime::Runtime);

impl Streams {
    pub fn projector_elsewhere(&self, db: &TestDb, config: Config) -> Elsewhere {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let url = db.url.clone();
        rt.spawn(async move {
            let pool = opmas_store::db::connect(&url, 8).await.unwrap();
            let client = async_nats::connect(opmas_testkit::nats_url())
                .await
                .unwrap();
            let _ = Projector::new(pool, client, config)
                .run(CancellationToken::new())
                .await;
        });
        Elsewhere(rt)
    }
}

impl Elsewhere {
    /// Drops everything the projector had, at once.
    pub fn kill(self) {
        self.0.shutdown_background();
    }
}

pub fn meta_reason(actor: &str, reason: &str) -> HashMap<String, String> {
    let mut m = meta(actor);
    m.insert("reason".into(), reason.into());
    m
}

pub fn update_config(expected_version: u32, n: usize) -> AgentCommand {
    AgentCommand::UpdateConfig {
        expected_version,
        config: serde_json::json!({ "n": n }),
    }
}

/// Every agent's checkpoint equals its last stored event.
pub async fn caught_up(pool: &PgPool) -> bool {
    let behind: i64 = sqlx::query_scalar(
        "select count(*) from (select aggregate_id, max(sequence) m from events group by 1) e \
         left join agent_status s on s.agent_id = e.aggregate_id \
         where coalesce(s.last_sequence, 0) <> e.m",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    behind == 0
}

pub async fn wait_caught_up(pool: &PgPool) {
    assert!(
        eventually(Duration::from_secs(60), || caught_up(pool)).await,
        "projector did not catch up"
    );
}

/// Rebuilt-from-the-store equals live, table by table.
pub async fn assert_rebuild_equals_live(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let comparisons = opmas_projections::checksum::check(&mut conn).await.unwrap();
    assert_eq!(comparisons.len(), 6);
    for c in &comparisons {
        assert!(c.equal(), "{} differs: {c:?}", c.live.table);
    }
}

/// Checksums of the live tables.
pub async fn live_checksums(pool: &PgPool) -> Vec<opmas_projections::checksum::Checksum> {
    let mut conn = pool.acquire().await.unwrap();
    opmas_projections::checksum::checksums(&mut conn, &opmas_projections::write::Tables::live())
        .await
        .unwrap()
}
