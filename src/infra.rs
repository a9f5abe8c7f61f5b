//! Connecting to Postgres and NATS, or starting private ones for `opmas dev`;
//! loading (or creating) the secret key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opmas_domain::secret::SecretKey;
use opmas_embedded::{NatsServer, Postgres};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::cli::{Global, KeyArgs};

/// Name of the database `opmas dev` creates in its private cluster.
pub const DEV_DATABASE: &str = "opmas";

/// Connects to the configured event store.
pub async fn database(global: &Global) -> anyhow::Result<PgPool> {
    let url = global.database_url.as_deref().context(
        "no database configured: set OPMAS_DATABASE_URL or --database-url \
         (or use `opmas dev`, which starts its own PostgreSQL)",
    )?;
    connect_db(url, global.db_max_connections).await
}

/// Connects to a Postgres URL with an error that names it.
pub async fn connect_db(url: &str, max: u32) -> anyhow::Result<PgPool> {
    opmas_store::db::connect(url, max)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", crate::cli::mask(url)))
}

/// Connects to NATS. With `wait_for_server`, returns at once and connects in
/// the background (a relay must start even while NATS is down).
pub async fn nats(global: &Global, wait_for_server: bool) -> anyhow::Result<async_nats::Client> {
    let url = global.nats_url.as_deref().context(
        "no NATS configured: set OPMAS_NATS_URL or --nats-url \
         (or use `opmas dev`, which starts its own nats-server)",
    )?;
    connect_nats(url, wait_for_server).await
}

/// Connects to a NATS URL with an error that names it.
pub async fn connect_nats(url: &str, wait_for_server: bool) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("opmas")
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(None);
    if wait_for_server {
        options = options.retry_on_initial_connect();
    }
    // A cluster's servers separated by commas; credentials in the URL.
    opmas_sdk::nats::connect(url, options)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", crate::cli::mask(url)))
}

/// The key that seals and opens agents' secrets: `--secret-key-file`
/// (which must exist), else `default` — created when missing if `create`
/// (a role that seals runs), else used only when present — else none.
pub fn secret_key(
    args: &KeyArgs,
    default: Option<&Path>,
    create: bool,
) -> anyhow::Result<Option<Arc<SecretKey>>> {
    let (path, key, created) = match (&args.secret_key_file, default) {
        (Some(path), _) => {
            let key = SecretKey::load(path).with_context(|| {
                format!(
                    "--secret-key-file (OPMAS_SECRET_KEY_FILE) {}",
                    path.display()
                )
            })?;
            (path.as_path(), key, false)
        }
        (None, Some(path)) if create => {
            let (key, created) = SecretKey::load_or_create(path).context("the secret key")?;
            (path, key, created)
        }
        (None, Some(path)) if path.exists() => (
            path,
            SecretKey::load(path).context("the secret key")?,
            false,
        ),
        _ => {
            info!(
                "no secret key: specs with secrets are refused and agents with sealed secrets \
                 do not start (--secret-key-file)"
            );
            return Ok(None);
        }
    };
    let fingerprint = key.fingerprint();
    if created {
        warn!(path = %path.display(), %fingerprint,
            "created a secret key: back it up with the database, and give the same file to every supervisor (--secret-key-file)");
    } else {
        info!(path = %path.display(), %fingerprint, "secret key");
    }
    use std::os::unix::fs::PermissionsExt as _;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        warn!(path = %path.display(), "the secret key file is readable by others than its owner: chmod 600 it");
    }
    Ok(Some(Arc::new(key)))
}

/// Private infrastructure started by `opmas dev`; stopped on drop.
#[derive(Default)]
pub struct Private {
    /// The private Postgres, if one was started.
    pub postgres: Option<Postgres>,
    /// The private nats-server, if one was started.
    pub nats: Option<NatsServer>,
}

impl Private {
    /// Starts what `global` leaves unconfigured, and fills in its URLs.
    pub async fn start_missing(global: &mut Global, data_dir: &Path) -> anyhow::Result<Self> {
        let mut private = Self::default();
        if global.database_url.is_none() {
            let pg = Postgres::start(&data_dir.join("postgres"))
                .await
                .context("starting private PostgreSQL")?;
            create_database(&pg.url("postgres"), DEV_DATABASE).await?;
            global.database_url = Some(pg.url(DEV_DATABASE));
            info!(url = %pg.url(DEV_DATABASE), "private postgres started");
            private.postgres = Some(pg);
        }
        if global.nats_url.is_none() {
            let nats = NatsServer::start(&data_dir.join("nats"))
                .await
                .context("starting private nats-server")?;
            global.nats_url = Some(nats.url());
            info!(url = %nats.url(), "private nats-server started");
            private.nats = Some(nats);
        }
        Ok(private)
    }

    /// Stops what was started, in reverse order.
    pub async fn stop(mut self) {
        if let Some(mut nats) = self.nats.take() {
            nats.stop().await;
        }
        if let Some(mut pg) = self.postgres.take() {
            let _ = pg.stop().await;
        }
    }
}

/// Creates `name` in the cluster at `admin_url` if it does not exist.
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let pool = connect_db(admin_url, 1).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&pool)
            .await?;
    if !exists {
        sqlx::query(&format!("create database \"{name}\""))
            .execute(&pool)
            .await
            .with_context(|| format!("create database {name}"))?;
    }
    pool.close().await;
    Ok(())
}
