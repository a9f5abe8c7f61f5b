//! `opmas supervisor`: this node's supervisor as its own process.

use std::path::Path;
use std::process::ExitCode;

use opmas_store::{AgentStore, OutboxNotifier};
use opmas_supervisor::{Config, Supervisor};
use tokio_util::sync::CancellationToken;

use crate::cli::{Global, SupervisorArgs, SupervisorRoleArgs};

/// The node name: `--node`, else the host name.
pub fn node_name(args: &SupervisorArgs) -> String {
    args.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into())
    })
}

/// The supervisor configuration from the options.
pub fn config(global: &Global, args: &SupervisorArgs, default_logs: &Path) -> Config {
    let mut config = Config::new(node_name(args), global.nats_url.clone().unwrap_or_default());
    config.claim_unplaced = !args.only_placed;
    config.log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| default_logs.to_path_buf());
    config.reconcile_interval = args.reconcile_interval;
    config.stream = global.stream();
    config.telemetry = global.telemetry();
    config.metrics.interval = args.sample_interval;
    config.metrics.breach_samples = args.breach_samples.max(1);
    config.logs.max_file_bytes = args.log_max_bytes;
    config.logs.max_files = args.log_max_files;
    config.logs.rate_per_sec = args.log_rate;
    config.logs.burst = args.log_rate.saturating_mul(5);
    config.cgroups = args.cgroups;
    if let Some(url) = &args.agent_nats_url {
        config.nats_url = url.clone();
    }
    config.cgroup_root = args.cgroup_root.clone();
    config.management_api_url = args.management_api_url.clone();
    config
}

/// Starts the supervisor task; commands it reports go through `store`.
pub fn spawn(
    store: AgentStore,
    client: async_nats::Client,
    config: Config,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), opmas_supervisor::Error>>> {
    let supervisor = Supervisor::new(store, client, config)?;
    Ok(tokio::spawn(supervisor.run(cancel)))
}

/// Runs the supervisor until Ctrl-C or SIGTERM (agents keep running).
pub async fn run(global: &Global, role: &SupervisorRoleArgs) -> anyhow::Result<ExitCode> {
    let args = &role.supervisor;
    let secret_key = crate::infra::secret_key(&role.key, None, false)?;
    let pool = crate::infra::database(global).await?;
    opmas_store::db::migrate(&pool).await?;
    let client = crate::infra::nats(global, true).await?;
    let cancel = super::shutdown_token();
    let notifier = OutboxNotifier::spawn(pool.clone(), cancel.clone());
    let store = AgentStore::new(pool)
        .with_notifier(notifier)
        .with_group_commit(64);
    let mut config = config(global, args, Path::new(".opmas/logs"));
    config.secret_key = secret_key;
    spawn(store, client, config, cancel)?.await??;
    Ok(ExitCode::SUCCESS)
}
