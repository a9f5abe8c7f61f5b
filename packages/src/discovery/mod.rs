//! [`Discovery`]: keeps the registered agents in step with the package
//! roots. It scans at start, watches the roots (`notify`) so a new or
//! changed package is acted on within a second, and rescans periodically as
//! a safety net. A scan registers new packages, updates agents whose package
//! version changed, gives agents a new config version when their package's
//! config layers (files, `OPMAS_AGENT_*` variables) changed (runtime values
//! set through the API stay on top), reports invalid packages (log,
//! `ErrorRecorded` on agents already registered from them, a message on the
//! `OPMAS_PACKAGES` stream, and the report) and reports removed packages
//! without deregistering anything. See `plan.rs` (what to do per agent),
//! `scan.rs` (doing it) and `events.rs` (the stream's messages).

mod events;
mod find;
mod notice;
mod plan;
mod scan;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use opmas_store::AgentStore;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;
use crate::report::ScanReport;

pub use events::{PackageEvent, PackageEvents};

/// Settings of [`Discovery`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Directories whose subdirectories are packages.
    pub roots: Vec<PathBuf>,
    /// Selects `config/<environment>.toml` in each package.
    pub environment: String,
    /// The process environment (`OPMAS_AGENT_<NAME>__<KEY>` overrides).
    pub vars: BTreeMap<String, String>,
    /// Full rescan at least this often.
    pub rescan_interval: Duration,
    /// Quiet time after a file change before scanning (editors write in bursts).
    pub debounce: Duration,
    /// Actor recorded in the events discovery causes.
    pub actor: String,
    /// Start the agents a scan registers (`opmas dev` does).
    pub autostart: bool,
    /// Seals the packages' secrets before they are registered (ADR 0004);
    /// `None`: a package with secrets is reported invalid.
    pub secret_key: Option<Arc<opmas_domain::secret::SecretKey>>,
    /// Publishes `PackageInvalid` / `PackageValid` (ADR 0006); `None`: off.
    pub events: Option<PackageEvents>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            environment: "development".to_owned(),
            vars: BTreeMap::new(),
            rescan_interval: Duration::from_secs(60),
            debounce: Duration::from_millis(150),
            actor: "discovery".to_owned(),
            autostart: false,
            secret_key: None,
            events: None,
        }
    }
}

/// What earlier scans already told (so logs and events are not repeated).
#[derive(Default)]
struct Memo {
    /// Last error reported per package directory.
    errors: BTreeMap<PathBuf, String>,
    /// Agents already reported removed.
    removed: BTreeSet<String>,
    scans: u64,
    /// Package messages the stream has not acknowledged yet (the latest per
    /// package directory).
    unsent: BTreeMap<PathBuf, events::Outgoing>,
    /// The packages stream was created.
    stream_ready: bool,
}

struct Inner {
    store: AgentStore,
    config: Config,
    memo: Mutex<Memo>,
}

/// Package discovery; cheap to clone (clones share state). Scans never run
/// concurrently.
#[derive(Clone)]
pub struct Discovery(Arc<Inner>);

impl Discovery {
    pub fn new(store: AgentStore, config: Config) -> Self {
        Self(Arc::new(Inner {
            store,
            config,
            memo: Mutex::new(Memo::default()),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Scans at once, then on every change under the roots and every
    /// `rescan_interval`, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let (tx, mut changes) = mpsc::unbounded_channel();
        let roots = watch::forms(&self.0.config.roots);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // A failed event (queue overflow...) may hide anything: scan.
                let wanted = event.map_or(true, |e| {
                    !e.kind.is_access() && e.paths.iter().any(|p| watch::relevant(&roots, p))
                });
                if wanted {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| Error::Unavailable(format!("file watcher: {e}")))?;
        let mut watched = BTreeSet::new();
        let mut tick = tokio::time::interval(self.0.config.rescan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.watch_new_roots(&mut watcher, &mut watched);
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                Some(()) = changes.recv() => {
                    tokio::time::sleep(self.0.config.debounce).await;
                    while changes.try_recv().is_ok() {}
                }
            }
            match self.scan().await {
                Ok(report) if report.changed() => info!(
                    registered = report.registered.len(),
                    updated = report.updated.len(),
                    invalid = report.invalid.len(),
                    "packages scanned"
                ),
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "package scan failed; retrying at the next change or rescan")
                }
            }
        }
    }

    /// Starts watching roots that exist and are not watched yet (a root
    /// created after start is picked up at the next wake-up).
    fn watch_new_roots(&self, watcher: &mut impl Watcher, watched: &mut BTreeSet<PathBuf>) {
        for root in &self.0.config.roots {
            if watched.contains(root) || !root.is_dir() {
                continue;
            }
            match watcher.watch(root, RecursiveMode::Recursive) {
                Ok(()) => {
                    info!(root = %root.display(), "watching package root");
                    watched.insert(root.clone());
                }
                Err(e) => warn!(root = %root.display(), error = %e, "cannot watch package root"),
            }
        }
    }

    /// One scan of every root; see the module docs.
    pub async fn scan(&self) -> Result<ScanReport, Error> {
        let mut memo = self.0.memo.lock().await;
        memo.scans += 1;
        let config = self.0.config.clone();
        let found = tokio::task::spawn_blocking(move || find::find(&config))
            .await
            .map_err(|e| Error::Unavailable(format!("scan task: {e}")))?;
        scan::apply(&self.0.store, &self.0.config, &mut memo, found).await
    }
}
