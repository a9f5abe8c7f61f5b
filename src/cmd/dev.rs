//! `opmas dev`: everything on one machine. Starts a private PostgreSQL and
//! nats-server in the data directory when no URLs are configured, applies
//! migrations, runs the relay, the projector and this node's supervisor until Ctrl-C, then
//! stops what it started (agent processes keep running and are adopted by
//! the next start).

use std::process::ExitCode;

use anyhow::Context;
use opmas_store::{AgentStore, OutboxNotifier, Relay};

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
    let notifier = OutboxNotifier::spawn(pool.clone(), cancel.clone());
    let store = AgentStore::new(pool.clone())
        .with_notifier(notifier.clone())
        .with_group_commit(64);
    let projector = super::project::spawn(
        pool.clone(),
        client.clone(),
        super::project::config(global, &args.projector),
        cancel.clone(),
    );
    let relay = Relay::new(
        pool,
        client.clone(),
        super::relay::config(global, &args.relay),
    )
    .with_wake(notifier.subscribe());
    let relay = tokio::spawn(relay.run(cancel.clone()));
    let config = super::supervisor::config(global, &args.supervisor, &args.data_dir.join("logs"));
    let node = config.node.clone();
    let supervisor = super::supervisor::spawn(store, client, config, cancel.clone())?;
    crate::println_out(&format!(
        "opmas dev ready\n  database: {}\n  nats:     {}\n  events:   stream {} ({}.>)\n  node:     {node} (supervisor)\nPress Ctrl-C to stop.",
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
    supervisor.await.context("supervisor task")??;
    projector.await.context("projector task")??;
    Ok(ExitCode::SUCCESS)
}
