//! `opmas relay`: the outbox relay as its own process.

use std::process::ExitCode;

use opmas_store::{Relay, RelayConfig};

use crate::cli::{Global, RelayArgs};

/// The relay configuration from the options.
pub fn config(global: &Global, args: &RelayArgs) -> RelayConfig {
    RelayConfig {
        name: args.relay_name.clone(),
        batch_size: args.relay_batch,
        sweep_interval: args.relay_sweep,
        stream: global.stream(),
        ..RelayConfig::default()
    }
}

/// Runs the relay until Ctrl-C or SIGTERM.
pub async fn run(global: &Global, args: &RelayArgs) -> anyhow::Result<ExitCode> {
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool).await?;
    let client = crate::infra::nats(global, true).await?;
    let cancel = super::shutdown_token();
    Relay::new(pool, client, config(global, args))
        .run(cancel)
        .await?;
    Ok(ExitCode::SUCCESS)
}
