//! `opmas dev`: everything on one machine. Starts a private PostgreSQL and
//! nats-server in the data directory when no URLs are configured, applies
//! migrations, runs the relay, the projector and this node's supervisor until Ctrl-C, then
//! stops what it started (agent processes keep running and are adopted by
//! the next start).

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{DevArgs, Global, Role, ServeArgs};
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
    let default_key = args.data_dir.join("secret.key");
    let key = crate::infra::secret_key(&args.key, Some(&default_key), true)?;
    let serve = ServeArgs {
        roles: vec![Role::Api, Role::Relay, Role::Projector, Role::Supervisor],
        data_dir: args.data_dir.clone(),
        api: args.api.clone(),
        relay: args.relay.clone(),
        supervisor: args.supervisor.clone(),
        projector: args.projector.clone(),
        // `opmas dev` starts what it discovers: the first run shows agents running.
        packages: crate::cli::PackageArgs {
            autostart: true,
            ..args.packages.clone()
        },
        key: args.key.clone(),
    };
    let (tasks, addr) =
        super::serve::start(global, &serve, key, pool.clone(), client, &cancel).await?;
    let token = opmas_api::auth::tokens::create(
        &pool,
        "opmas-dev",
        opmas_api::Role::Admin,
        "opmas dev",
        None,
    )
    .await
    .context("creating the development admin token")?;
    let token_file = args.data_dir.join("admin-token");
    std::fs::write(&token_file, format!("{}\n", token.token))
        .with_context(|| format!("writing {}", token_file.display()))?;
    let node = super::supervisor::node_name(&args.supervisor);
    let api = addr.map(|a| format!("http://{a}")).unwrap_or_default();
    crate::println_out(&format!(
        "opmas dev ready\n  api:      {api}/api/v1  (docs: {api}/api/v1/docs)\n  token:    {}  (admin; also in {})\n  database: {}\n  nats:     {}\n  events:   stream {} ({}.>)\n  node:     {node} (supervisor)\nTry: OPMAS_SERVER={api} OPMAS_TOKEN=$(cat {}) opmas agents ls\nPress Ctrl-C to stop.",
        token.token,
        token_file.display(),
        global
            .database_url
            .as_deref()
            .map(crate::cli::mask)
            .unwrap_or_default(),
        global.nats_url.as_deref().unwrap_or_default(),
        global.events_stream,
        global.events_subject_prefix,
        token_file.display(),
    ));
    super::serve::wait(tasks, &cancel).await?;
    Ok(ExitCode::SUCCESS)
}
