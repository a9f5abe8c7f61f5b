//! `opmas dev`: everything on one machine. Starts a private PostgreSQL and
//! nats-server in the data directory when no URLs are configured, applies
//! migrations and runs the relay until Ctrl-C, then stops what it started.

use std::process::ExitCode;

use anyhow::Context;
use opmas_store::Relay;

use crate::cli::{DevArgs, Global};
use crate::infra::Private;

/// Runs the development stack.
pub async fn run(global: &Global, args: &DevArgs) -> anyhow::Result<ExitCode> {
    let mut global = global.clone();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let private = Private::start_missing(&mut global, &args.data_dir).await?;
    let result = serve(&global, args).await;
    private.stop().await;
    result
}

async fn serve(global: &Global, args: &DevArgs) -> anyhow::Result<ExitCode> {
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    let client = crate::infra::nats(global, true).await?;
    let cancel = super::shutdown_token();
    let relay = Relay::new(pool, client, super::relay::config(global, &args.relay));
    let relay = tokio::spawn(relay.run(cancel.clone()));
    crate::println_out(&format!(
        "opmas dev ready\n  database: {}\n  nats:     {}\n  events:   stream {} ({}.>)\nPress Ctrl-C to stop.",
        global
            .database_url
            .as_deref()
            .map(crate::cli::mask)
            .unwrap_or_default(),
        global.nats_url.as_deref().unwrap_or_default(),
        global.events_stream,
        global.events_subject_prefix,
    ));
    cancel.cancelled().await;
    relay.await.context("relay task")??;
    Ok(ExitCode::SUCCESS)
}
