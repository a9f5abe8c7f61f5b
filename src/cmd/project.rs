//! `opmas project`: the projector as its own process (read models kept
//! current from `OPMAS_EVENTS`, `OPMAS_METRICS` and `OPMAS_LOGS`).

use std::process::ExitCode;

use opmas_projections::{Config, Projector, Retention};

use crate::cli::{Global, ProjectArgs};

/// The projector configuration from the options.
pub fn config(global: &Global, args: &ProjectArgs) -> Config {
    Config {
        events: global.stream(),
        telemetry: global.telemetry(),
        consumer_prefix: args.projector_name.clone(),
        batch: args.projector_batch.max(1),
        retention: Retention {
            raw_metrics: args.retain_metrics,
            rollups: args.retain_rollups,
            logs: args.retain_logs,
            ..Retention::default()
        },
        ..Config::default()
    }
}

/// Spawns the projector on `cancel` (used by `opmas dev` too).
pub fn spawn(
    pool: sqlx::PgPool,
    client: async_nats::Client,
    config: Config,
    cancel: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), opmas_projections::Error>> {
    tokio::spawn(Projector::new(pool, client, config).run(cancel))
}

/// Runs the projector until Ctrl-C or SIGTERM.
pub async fn run(global: &Global, args: &ProjectArgs) -> anyhow::Result<ExitCode> {
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool).await?;
    let client = crate::infra::nats(global, true).await?;
    let cancel = super::shutdown_token();
    spawn(pool, client, config(global, args), cancel).await??;
    Ok(ExitCode::SUCCESS)
}
