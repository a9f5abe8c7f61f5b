//! What the benchmarks share: where the servers are, fresh databases, the
//! write path (store + notifier + relay), and the commands they issue.

use std::collections::HashMap;

use anyhow::Context;
use opmas_domain::{AgentCommand, AgentId, AgentSpec, EventMetadata, Severity};
use opmas_store::{AgentStore, OutboxNotifier, Relay, RelayConfig, StreamSettings};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Where the benchmarks find PostgreSQL and NATS.
#[derive(clap::Args, Clone)]
pub struct Servers {
    /// Postgres server (fresh databases are created in it).
    #[arg(
        long,
        env = "OPMAS_BENCH_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// nats-server with JetStream (streams of the bench's own are created).
    #[arg(
        long,
        env = "OPMAS_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
}

impl Servers {
    /// URL of database `name` on the same server.
    pub fn url_of(&self, name: &str) -> anyhow::Result<String> {
        let base = self
            .database_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .context("bad database url")?;
        Ok(format!("{base}/{name}"))
    }

    /// Creates database `name`, migrates it and returns a pool of `size`.
    pub async fn fresh_db(&self, admin: &PgPool, name: &str, size: u32) -> anyhow::Result<PgPool> {
        sqlx::query(&format!("create database {name}"))
            .execute(admin)
            .await?;
        let pool = opmas_store::db::connect(&self.url_of(name)?, size).await?;
        opmas_store::db::migrate(&pool).await?;
        Ok(pool)
    }
}

/// Drops database `name` (connections are forced out).
pub async fn drop_db(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(admin)
        .await?;
    Ok(())
}

/// The write path as `opmas dev` runs it: an `AgentStore` with group commit
/// and a notifier, and a relay to `stream` woken by that notifier.
pub fn write_path(
    pool: &PgPool,
    client: &async_nats::Client,
    stream: &StreamSettings,
    cancel: &CancellationToken,
) -> AgentStore {
    let notifier = OutboxNotifier::spawn(pool.clone(), cancel.clone());
    let relay = Relay::new(
        pool.clone(),
        client.clone(),
        RelayConfig {
            stream: stream.clone(),
            ..RelayConfig::default()
        },
    )
    .with_wake(notifier.subscribe());
    tokio::spawn(relay.run(cancel.clone()));
    AgentStore::new(pool.clone())
        .with_notifier(notifier)
        .with_group_commit(64)
}

/// Event metadata of a benchmark command.
pub fn meta() -> HashMap<String, String> {
    EventMetadata::new(
        "bench",
        uuid::Uuid::new_v4().to_string(),
        chrono::Utc::now(),
    )
    .to_map()
}

/// A command that adds one event of ~300 bytes to a registered agent.
pub fn error_cmd(n: u64) -> AgentCommand {
    AgentCommand::RecordError {
        severity: Severity::Warning,
        category: "bench".into(),
        error_type: "Synthetic".into(),
        message: format!("synthetic error number {n} with a few words of text"),
        context: serde_json::json!({ "n": n, "source": "bench" }),
    }
}

/// Registers `id` with a `sleep` spec (never started by these benchmarks).
pub fn register(id: &str) -> anyhow::Result<AgentCommand> {
    Ok(AgentCommand::Register {
        agent_id: AgentId::parse(id)?,
        spec: AgentSpec {
            agent_type: "bench".into(),
            command: "sleep".into(),
            args: vec!["1000".into()],
            ..AgentSpec::default()
        },
    })
}

/// A fresh database and streams of a benchmark's own, removed by [`Scratch::finish`].
pub struct Scratch {
    pub tag: String,
    pub db_name: String,
    pub admin: PgPool,
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub events: StreamSettings,
    pub telemetry: opmas_store::TelemetrySettings,
}

impl Scratch {
    /// Creates the database (pool of `size`) and the stream settings.
    pub async fn new(servers: &Servers, size: u32) -> anyhow::Result<Self> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let db_name = format!("opmas_bench_{tag}");
        let admin = opmas_store::db::connect(&servers.database_url, 1).await?;
        let pool = servers.fresh_db(&admin, &db_name, size).await?;
        let client = async_nats::connect(&servers.nats_url).await?;
        let events = StreamSettings::isolated(&format!("bench_{tag}"));
        let telemetry = opmas_store::TelemetrySettings::isolated(&format!("bench_{tag}"));
        Ok(Self {
            tag,
            db_name,
            admin,
            pool,
            client,
            events,
            telemetry,
        })
    }

    /// Deletes the streams and drops the database.
    pub async fn finish(self) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.client.clone());
        for name in [
            &self.events.name,
            &self.telemetry.metrics_stream,
            &self.telemetry.logs_stream,
        ] {
            let _ = js.delete_stream(name).await;
        }
        self.pool.close().await;
        drop_db(&self.admin, &self.db_name).await
    }
}

/// `bench NAME: postgres VERSION, N cores`.
pub async fn header(name: &str, pool: &PgPool) -> anyhow::Result<String> {
    Ok(format!(
        "bench {name}: postgres {}, {} cores",
        sqlx::query_scalar::<_, String>("show server_version")
            .fetch_one(pool)
            .await?,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    ))
}
