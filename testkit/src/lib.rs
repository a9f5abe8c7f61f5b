//! Test support shared by the workspace's tests (dev-dependency only): one
//! fresh database per test on the shared Postgres (`OPMAS_TEST_DATABASE_URL`),
//! stream names per test on the shared nats-server (`OPMAS_TEST_NATS_URL`),
//! agent specs, commands and metadata.
//!
//! # Layout
//! Everything is in this file: [`TestDb`], [`stream`], [`meta`], [`spec`],
//! [`register`], [`record_error`], [`eventually`], [`store_events`];
//! [`api::ApiStack`] (a control plane behind a real HTTP server) in `api.rs`.
#![allow(clippy::unwrap_used)]

pub mod api;

use std::collections::HashMap;
use std::time::Duration;

use opmas_domain::{AgentCommand, AgentId, AgentSpec, EventMetadata};
use opmas_store::StreamSettings;
use sqlx::PgPool;

/// The shared Postgres (a database per test is created in it).
pub fn admin_url() -> String {
    std::env::var("OPMAS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// The shared nats-server with JetStream.
pub fn nats_url() -> String {
    std::env::var("OPMAS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A short random tag for names.
pub fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A database of its own, migrated; dropped by [`TestDb::cleanup`].
pub struct TestDb {
    /// Pool on the test's database.
    pub pool: PgPool,
    /// The database's name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// A fresh, migrated database with a pool of 16 connections.
    pub async fn new() -> Self {
        Self::with_pool(16).await
    }

    /// A fresh, migrated database with a pool of `connections`.
    pub async fn with_pool(connections: u32) -> Self {
        let name = format!("opmas_test_{}", tag());
        let admin = opmas_store::db::connect(&admin_url(), 1).await.unwrap();
        sqlx::query(&format!("create database {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let base = admin_url();
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => panic!("bad OPMAS_TEST_DATABASE_URL"),
        };
        let pool = opmas_store::db::connect(&url, connections).await.unwrap();
        opmas_store::db::migrate(&pool).await.unwrap();
        Self { pool, name, url }
    }

    /// Closes the pool and drops the database.
    pub async fn cleanup(self) {
        self.pool.close().await;
        let admin = opmas_store::db::connect(&admin_url(), 1).await.unwrap();
        let _ = sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// Stream settings of a test's own (removed by [`delete_stream`]).
pub fn stream() -> StreamSettings {
    StreamSettings::isolated(&tag())
}

/// A client of the shared nats-server.
pub async fn nats() -> async_nats::Client {
    async_nats::connect(nats_url()).await.unwrap()
}

/// Deletes a test's stream (best effort).
pub async fn delete_stream(client: &async_nats::Client, settings: &StreamSettings) {
    let js = async_nats::jetstream::new(client.clone());
    let _ = js.delete_stream(&settings.name).await;
}

/// Event metadata with a fresh correlation id.
pub fn meta(actor: &str) -> HashMap<String, String> {
    EventMetadata::new(actor, uuid::Uuid::new_v4().to_string(), chrono::Utc::now()).to_map()
}

/// A valid spec running `sleep 1000`.
pub fn spec() -> AgentSpec {
    AgentSpec {
        agent_type: "test".into(),
        command: "sleep".into(),
        args: vec!["1000".into()],
        ..AgentSpec::default()
    }
}

/// `Register` of `id` with [`spec`].
pub fn register(id: &str) -> AgentCommand {
    AgentCommand::Register {
        agent_id: AgentId::parse(id).unwrap(),
        spec: spec(),
    }
}

/// A command that is always accepted on a registered agent and adds one event.
pub fn record_error(n: usize) -> AgentCommand {
    AgentCommand::RecordError {
        severity: opmas_domain::Severity::Warning,
        category: "test".into(),
        error_type: "Synthetic".into(),
        message: format!("error {n}"),
        context: serde_json::json!({ "n": n }),
    }
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every `(agent, sequence)` in the store, in order.
pub async fn store_events(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("select aggregate_id, sequence from events order by aggregate_id, sequence")
        .fetch_all(pool)
        .await
        .unwrap()
}
