//! `bench packages`: a package dropped into a watched root, until its agent
//! is registered in the event store (the issue: "a new package registers
//! within a second").
//!
//! Discovery runs as `opmas serve` runs it (watcher on, the default
//! debounce, a full rescan only every hour, so the watcher is what is
//! measured). Each package is written in a staging directory on the same
//! file system and renamed into the root, as a deployment tool would drop
//! it; the clock starts at the rename and stops when the agent loads as
//! registered from the store (polled every millisecond).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opmas_packages::Discovery;
use opmas_packages::discovery::Config;
use opmas_store::AgentStore;
use tokio_util::sync::CancellationToken;

use crate::common::{Servers, drop_db};

/// Options of `bench packages`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    servers: Servers,
    /// Packages dropped, one at a time.
    #[arg(long, default_value_t = 50)]
    packages: usize,
    /// Pause between two drops, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pause_ms: u64,
    /// Packages in the root (registered) before the drops: each scan reads
    /// them all.
    #[arg(long, default_value_t = 500)]
    existing: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let admin = opmas_store::db::connect(&args.servers.database_url, 2).await?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let db = format!("opmas_bench_{tag}_packages");
    let pool = args.servers.fresh_db(&admin, &db, 8).await?;
    let result = measure(&args, AgentStore::new(pool.clone())).await;
    pool.close().await;
    if let Err(err) = drop_db(&admin, &db).await {
        eprintln!("cannot drop database {db}: {err}");
    }
    result
}

async fn measure(args: &Args, store: AgentStore) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("opmas-bench-packages-")
        .tempdir()?;
    let root = tmp.path().join("agents");
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&root)?;
    let config = Config {
        roots: vec![root.clone()],
        environment: "bench".into(),
        rescan_interval: Duration::from_secs(3600),
        ..Config::default()
    };
    let debounce = config.debounce;
    for i in 0..args.existing {
        write_package(&root, &format!("e{i}"))?;
    }
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Discovery::new(store.clone(), config).run(cancel.clone()));
    let result = async {
        // The first drop waits for the start scan (which registers the
        // existing packages) and the watch: not counted.
        let t = Instant::now();
        drop_and_wait(&store, &staging, &root, "warm-up").await?;
        println!(
            "packages: start scan of {} packages and the first drop: {:.2} s",
            args.existing + 1,
            t.elapsed().as_secs_f64()
        );
        let mut took = Vec::with_capacity(args.packages);
        for i in 0..args.packages {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
            took.push(drop_and_wait(&store, &staging, &root, &format!("p{i}")).await?);
        }
        took.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| ms(&took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1]);
        println!(
            "packages: dropped into a watched root -> agent registered: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} packages, {} ms apart, beside {} registered ones; debounce {} ms, rescan every hour)",
            at(0.5),
            at(0.99),
            ms(took.last().context("no package dropped")?),
            took.len(),
            args.pause_ms,
            args.existing,
            debounce.as_millis()
        );
        anyhow::Ok(())
    }
    .await;
    cancel.cancel();
    let _ = task.await;
    result
}

/// Writes package `name` beside the root, renames it in, and waits until
/// its agent is registered.
async fn drop_and_wait(
    store: &AgentStore,
    staging: &Path,
    root: &Path,
    name: &str,
) -> anyhow::Result<Duration> {
    let dir = write_package(staging, name)?;
    let t = Instant::now();
    std::fs::rename(&dir, root.join(name))?;
    loop {
        if store.load(name).await.is_ok_and(|(a, _)| a.registered) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("package {name} not registered 60 s after it was dropped");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A valid package `<parent>/<name>` of one agent, `name`.
fn write_package(parent: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "name = \"{name}\"\ntype = \"bench\"\nversion = \"1.0.0\"\ncommand = \"./bin/agent\"\n"
        ),
    )?;
    let program = dir.join("bin/agent");
    std::fs::write(&program, "#!/bin/sh\nexec sleep 1000\n")?;
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}
