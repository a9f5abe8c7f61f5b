//! `opmas serve` (every role, or those named by `--roles`) and `opmas api`.
//! `opmas dev` runs the same roles after starting private servers.

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use opmas_api::{ApiConfig, AppState};
use opmas_domain::secret::SecretKey;
use opmas_store::{AgentStore, OutboxNotifier, Relay};
use tokio_util::sync::CancellationToken;

use crate::cli::{ApiArgs, ApiRoleArgs, Global, Role, ServeArgs};

/// The API configuration from the options.
pub fn api_config(global: &Global, args: &ApiArgs) -> anyhow::Result<ApiConfig> {
    let keys = opmas_api::auth::jwt::parse_keys(&args.jwt_keys).map_err(anyhow::Error::msg)?;
    let nz = |v: u32, name: &str| {
        NonZeroU32::new(v).with_context(|| format!("--{name} must be at least 1"))
    };
    Ok(ApiConfig {
        jwt: opmas_api::auth::jwt::JwtVerifier::new(keys, &args.jwt_issuer, &args.jwt_audience),
        rate_per_second: nz(args.rate_limit, "rate-limit")?,
        rate_burst: nz(args.rate_burst, "rate-burst")?,
        body_limit: args.body_limit,
        events: global.stream(),
        telemetry: global.telemetry(),
        ..ApiConfig::default()
    })
}

type Task = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Starts the chosen roles on `cancel`; returns their tasks and the API's
/// bound address (when the API role runs).
pub async fn start(
    global: &Global,
    args: &ServeArgs,
    key: Option<Arc<SecretKey>>,
    pool: sqlx::PgPool,
    client: async_nats::Client,
    cancel: &CancellationToken,
) -> anyhow::Result<(Vec<Task>, Option<std::net::SocketAddr>)> {
    let notifier = OutboxNotifier::spawn(pool.clone(), cancel.clone());
    let store = AgentStore::new(pool.clone())
        .with_notifier(notifier.clone())
        .with_group_commit(64);
    let mut tasks: Vec<Task> = Vec::new();
    let mut addr = None;
    if args.roles.contains(&Role::Relay) {
        let relay = Relay::new(
            pool.clone(),
            client.clone(),
            super::relay::config(global, &args.relay),
        )
        .with_wake(notifier.subscribe());
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move { Ok(relay.run(c).await?) }));
    }
    if args.roles.contains(&Role::Projector) {
        let p = super::project::spawn(
            pool.clone(),
            client.clone(),
            super::project::config(global, &args.projector),
            cancel.clone(),
        );
        tasks.push(tokio::spawn(async move { Ok(p.await??) }));
    }
    if args.roles.contains(&Role::Supervisor) {
        let mut config =
            super::supervisor::config(global, &args.supervisor, &args.data_dir.join("logs"));
        config.secret_key = key.clone();
        let s = super::supervisor::spawn(store.clone(), client.clone(), config, cancel.clone())?;
        tasks.push(tokio::spawn(async move { Ok(s.await??) }));
    }
    let events = opmas_packages::discovery::PackageEvents::new(
        async_nats::jetstream::new(client.clone()),
        global.packages(),
        super::supervisor::node_name(&args.supervisor),
    );
    let discovery = discovery(args, key.clone(), events, &store, cancel, &mut tasks)?;
    if args.roles.contains(&Role::Api) {
        let mut config = api_config(global, &args.api)?;
        config.secret_key = key;
        // Its own pool with a short acquire timeout: an unreachable database
        // answers 503 within a second instead of holding requests.
        let url = global.database_url.as_deref().unwrap_or_default();
        let pool = opmas_store::db::connect_lazy(
            url,
            global.db_max_connections,
            opmas_api::DB_ACQUIRE_TIMEOUT,
        )?;
        let store = AgentStore::new(pool.clone())
            .with_notifier(notifier.clone())
            .with_group_commit(64);
        let listener = tokio::net::TcpListener::bind(args.api.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (set --listen or OPMAS_LISTEN)",
                    args.api.listen
                )
            })?;
        addr = Some(listener.local_addr()?);
        let mut state = AppState::new(pool, store, client, config);
        if let Some(discovery) = discovery {
            state = state.with_discovery(discovery);
        }
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            opmas_api::serve(listener, state, c)
                .await
                .context("API server")
        }));
    }
    Ok((tasks, addr))
}

/// Starts package discovery when package roots are configured (whatever
/// the roles); the API's `POST /agents/discover` shares it. It reports on
/// the packages stream through `events`.
fn discovery(
    args: &ServeArgs,
    key: Option<Arc<SecretKey>>,
    events: opmas_packages::discovery::PackageEvents,
    store: &AgentStore,
    cancel: &CancellationToken,
    tasks: &mut Vec<Task>,
) -> anyhow::Result<Option<opmas_packages::Discovery>> {
    if args.packages.package_roots.is_empty() {
        return Ok(None);
    }
    let mut config = args.packages.discovery();
    config.secret_key = key;
    config.events = Some(events);
    if !config
        .environment
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || config.environment.is_empty()
    {
        anyhow::bail!(
            "--environment `{}`: use letters, digits, '-' and '_' (it names config/<environment>.toml)",
            config.environment
        );
    }
    tracing::info!(roots = ?config.roots, environment = %config.environment, "package discovery");
    let discovery = opmas_packages::Discovery::new(store.clone(), config);
    let (d, c) = (discovery.clone(), cancel.clone());
    tasks.push(tokio::spawn(async move {
        d.run(c).await.context("package discovery")
    }));
    Ok(Some(discovery))
}

/// Waits for every task; the first error cancels the others.
pub async fn wait(tasks: Vec<Task>, cancel: &CancellationToken) -> anyhow::Result<()> {
    let mut first = Ok(());
    let mut pending: futures::stream::FuturesUnordered<Task> = tasks.into_iter().collect();
    use futures::StreamExt;
    while let Some(done) = pending.next().await {
        let result = done.context("task panicked").and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "a role stopped with an error; stopping the others");
            cancel.cancel();
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// Runs `opmas serve`. Its key is `<data-dir>/secret.key` unless
/// `--secret-key-file` names one; created when missing if a role that seals
/// runs here (the API, discovery).
pub async fn run(global: &Global, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let seals = args.roles.contains(&Role::Api) || !args.packages.package_roots.is_empty();
    let default_key = args.data_dir.join("secret.key");
    let key = crate::infra::secret_key(&args.key, Some(&default_key), seals)?;
    run_with(global, args, key).await
}

async fn run_with(
    global: &Global,
    args: &ServeArgs,
    key: Option<Arc<SecretKey>>,
) -> anyhow::Result<ExitCode> {
    if args.roles.is_empty() {
        anyhow::bail!("--roles is empty: name at least one of api, relay, projector, supervisor");
    }
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    let client = crate::infra::nats(global, true).await?;
    let cancel = super::shutdown_token();
    let (tasks, addr) = start(global, args, key, pool, client, &cancel).await?;
    if let Some(addr) = addr {
        tracing::info!(%addr, "API listening");
    }
    wait(tasks, &cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `opmas api`: the API role alone (no data directory: its key is
/// `--secret-key-file`, or none).
pub async fn run_api(global: &Global, args: &ApiRoleArgs) -> anyhow::Result<ExitCode> {
    let key = crate::infra::secret_key(&args.key, None, false)?;
    let serve = ServeArgs {
        roles: vec![Role::Api],
        data_dir: ".opmas".into(),
        api: args.api.clone(),
        key: args.key.clone(),
        relay: default_args::<crate::cli::RelayArgs>(),
        supervisor: default_args::<crate::cli::SupervisorArgs>(),
        projector: default_args::<crate::cli::ProjectArgs>(),
        packages: default_args::<crate::cli::PackageArgs>(),
    };
    run_with(global, &serve, key).await
}

/// Defaults of an `Args` group (as if no option were given).
fn default_args<T: clap::FromArgMatches + clap::Args>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults"));
    let matches = cmd.get_matches_from(["defaults"]);
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("defaults of an Args group: {e}"))
}

/// Runs `opmas bootstrap-token`: prints only the token on stdout.
pub async fn bootstrap_token(
    global: &Global,
    args: &crate::cli::BootstrapTokenArgs,
) -> anyhow::Result<ExitCode> {
    let role: opmas_api::Role = args.role.parse().map_err(anyhow::Error::msg)?;
    let expires_at = match args.expires {
        Some(d) => Some(
            chrono::Utc::now() + chrono::Duration::from_std(d).context("--expires is too long")?,
        ),
        None => None,
    };
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    let created = opmas_api::auth::tokens::create(
        &pool,
        &args.name,
        role,
        "opmas bootstrap-token",
        expires_at,
    )
    .await
    .context("creating the token")?;
    tracing::info!(id = %created.info.id, name = %args.name, %role, "API token created");
    crate::println_out(&created.token);
    Ok(ExitCode::SUCCESS)
}
