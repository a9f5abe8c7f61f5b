//! Supervisor settings.

use std::path::PathBuf;
use std::time::Duration;

use opmas_store::{StreamSettings, TelemetrySettings};

use crate::logs::LogSettings;
use crate::metrics::MetricsSettings;

/// Settings of one node's supervisor.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (placement, consumer name, event metadata).
    pub node: String,
    /// Also run agents whose spec names no node.
    pub claim_unplaced: bool,
    /// Agents' output files go to `<log_dir>/<agent_id>/{stdout,stderr}.log`.
    pub log_dir: PathBuf,
    /// Every agent is reconciled at least this often (heals missed messages).
    pub reconcile_interval: Duration,
    /// The events stream the supervisor consumes.
    pub stream: StreamSettings,
    /// Given to agents as `NATS_URL`.
    pub nats_url: String,
    /// Given to agents as `MANAGEMENT_API_URL`.
    pub management_api_url: String,
    /// Given to agents as `LOG_LEVEL`.
    pub agent_log_level: String,
    /// Given to agents as `METRICS_ENABLED`.
    pub metrics_enabled: bool,
    /// Log files, rotation and rate limit.
    pub logs: LogSettings,
    /// The metrics and logs streams.
    pub telemetry: TelemetrySettings,
    /// Agents send heartbeats on `<prefix>.<agent_id>` (core NATS).
    pub heartbeat_prefix: String,
    /// Resource sampling and limit windows.
    pub metrics: MetricsSettings,
    /// Control requests go to `<prefix>.<agent_id>`.
    pub control_prefix: String,
    /// When agents get a cgroup v2 group of their own (see [`crate::cgroup`]).
    pub cgroups: crate::cgroup::CgroupMode,
    /// Root of the agents' groups (default: `<own group>/agents`).
    pub cgroup_root: Option<PathBuf>,
    /// Opens the agents' sealed secrets when they are started or reloaded
    /// (see [`opmas_domain::secret`]); `None`: an agent with sealed secrets
    /// cannot be started (a recorded `SpawnFailed` says so).
    pub secret_key: Option<std::sync::Arc<opmas_domain::secret::SecretKey>>,
}

impl Config {
    /// Defaults for `node`, with the given NATS URL.
    pub fn new(node: impl Into<String>, nats_url: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            claim_unplaced: true,
            log_dir: PathBuf::from(".opmas/logs"),
            reconcile_interval: Duration::from_secs(60),
            stream: StreamSettings::default(),
            nats_url: nats_url.into(),
            management_api_url: "http://127.0.0.1:8080".into(),
            agent_log_level: "info".into(),
            metrics_enabled: true,
            logs: LogSettings::default(),
            telemetry: TelemetrySettings::default(),
            heartbeat_prefix: "opmas.heartbeat".into(),
            metrics: MetricsSettings::default(),
            control_prefix: "opmas.control".into(),
            cgroups: crate::cgroup::CgroupMode::Auto,
            cgroup_root: None,
            secret_key: None,
        }
    }

    /// The durable consumer's name for this node.
    pub fn consumer_name(&self) -> String {
        let node: String = self
            .node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("supervisor-{node}")
    }
}
