//! `bench`: prints the performance figures recorded in docs/benchmarks.md.
//!
//! `cargo run --release --bin bench -- spine` measures, in one run and side by
//! side: (a) raw single-row insert transactions from 32 tasks, (b) our
//! commands/s from 32 tasks over 1,000 agents, (c) commands/s on one agent at
//! its 1st and 100,000th event, (d) commit → visible on JetStream latency at
//! 1,000 commands/s, (e) relay backlog drain rate after NATS returns.
//! It uses a fresh database on the Postgres at `OPMAS_BENCH_DATABASE_URL` and
//! its own stream on the nats-server at `OPMAS_BENCH_NATS_URL`.
//!
//! `cargo run --release --bin bench -- projections` measures event committed
//! → visible in `agent_status`, the replay rate and metrics ingestion.
//!
//! `cargo run --release --bin bench -- supervisor` measures restart latency
//! (with the floor, supervisord and PM2), bulk start/stop and idle overhead.
//!
//! `cargo run --release --bin bench -- api` measures status throughput and
//! the latency of listing 1,000 agents.
//!
//! `cargo run --release --bin bench -- packages` measures a package dropped
//! into a watched root until its agent is registered.

use clap::{Parser, Subcommand};

mod api;
mod common;
mod packages;
mod projections;
mod spine;
mod supervisor;

/// Benchmarks of OPMAS.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Event store, commands and relay (issue: the spine).
    Spine(spine::Args),
    /// Commit -> visible in agent_status, replay rate, metrics ingestion (issue: projections).
    Projections(projections::Args),
    /// Restart latency, bulk start/stop, idle overhead; supervisord and PM2 alongside (issue: the supervisor).
    Supervisor(supervisor::Args),
    /// Status throughput and list latency with 1,000 agents (issue: the API).
    Api(api::Args),
    /// A package dropped into a watched root -> its agent registered (issue: packages).
    Packages(packages::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,sqlx=error"))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().which {
        Which::Spine(args) => spine::run(args).await,
        Which::Projections(args) => projections::run(args).await,
        Which::Supervisor(args) => supervisor::run(args).await,
        Which::Api(args) => api::run(args).await,
        Which::Packages(args) => packages::run(args).await,
    }
}
