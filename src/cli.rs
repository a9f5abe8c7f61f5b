//! Command line and configuration. Every option can also come from an
//! `OPMAS_*` environment variable; `--dump-config` prints the result.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use opmas_store::StreamSettings;
use serde_json::json;

/// OPMAS: runs and watches fleets of agents.
#[derive(Debug, Parser)]
#[command(name = "opmas", version, about)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: Global,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// PostgreSQL URL of the event store (unset: `opmas dev` starts its own).
    #[arg(long, global = true, env = "OPMAS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// NATS URL (unset: `opmas dev` starts its own nats-server).
    #[arg(long, global = true, env = "OPMAS_NATS_URL")]
    pub nats_url: Option<String>,
    /// Maximum Postgres connections of this process.
    #[arg(
        long,
        global = true,
        env = "OPMAS_DB_MAX_CONNECTIONS",
        default_value_t = 32
    )]
    pub db_max_connections: u32,
    /// Name of the JetStream stream holding domain events.
    #[arg(
        long,
        global = true,
        env = "OPMAS_EVENTS_STREAM",
        default_value = "OPMAS_EVENTS"
    )]
    pub events_stream: String,
    /// Subject prefix of domain events (`<prefix>.agent.<id>.<EventType>`).
    #[arg(
        long,
        global = true,
        env = "OPMAS_EVENTS_SUBJECT_PREFIX",
        default_value = "opmas.events"
    )]
    pub events_subject_prefix: String,
    /// Replicas of the events stream (3 in a NATS cluster).
    #[arg(
        long,
        global = true,
        env = "OPMAS_EVENTS_REPLICAS",
        default_value_t = 1
    )]
    pub events_replicas: usize,
    /// Max age of event messages, e.g. `30d`; `0s` keeps them forever.
    #[arg(long, global = true, env = "OPMAS_EVENTS_MAX_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub events_max_age: Duration,
    /// Duplicate window of the events stream (dedupe of re-publishes).
    #[arg(long, global = true, env = "OPMAS_EVENTS_DUPLICATE_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub events_duplicate_window: Duration,
    /// Stream of agents' metric samples.
    #[arg(
        long,
        global = true,
        env = "OPMAS_METRICS_STREAM",
        default_value = "OPMAS_METRICS"
    )]
    pub metrics_stream: String,
    /// Subject prefix of metric samples (`<prefix>.<agent_id>`).
    #[arg(
        long,
        global = true,
        env = "OPMAS_METRICS_SUBJECT_PREFIX",
        default_value = "opmas.metrics"
    )]
    pub metrics_subject_prefix: String,
    /// Stream of agents' log lines.
    #[arg(
        long,
        global = true,
        env = "OPMAS_LOGS_STREAM",
        default_value = "OPMAS_LOGS"
    )]
    pub logs_stream: String,
    /// Subject prefix of log lines (`<prefix>.<agent_id>.<level>`).
    #[arg(
        long,
        global = true,
        env = "OPMAS_LOGS_SUBJECT_PREFIX",
        default_value = "opmas.logs"
    )]
    pub logs_subject_prefix: String,
    /// Size limit of the logs stream in bytes (JetStream reserves it up front).
    #[arg(long, global = true, env = "OPMAS_LOGS_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub logs_max_bytes: i64,
    /// Max age of the metrics and logs streams.
    #[arg(long, global = true, env = "OPMAS_TELEMETRY_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub telemetry_max_age: Duration,
    /// Stream of package discovery's reports (`PackageInvalid`, `PackageValid`).
    #[arg(
        long,
        global = true,
        env = "OPMAS_PACKAGES_STREAM",
        default_value = "OPMAS_PACKAGES"
    )]
    pub packages_stream: String,
    /// Subject prefix of package reports (`<prefix>.invalid`, `<prefix>.valid`).
    #[arg(
        long,
        global = true,
        env = "OPMAS_PACKAGES_SUBJECT_PREFIX",
        default_value = "opmas.packages"
    )]
    pub packages_subject_prefix: String,
    /// Max age of the packages stream.
    #[arg(long, global = true, env = "OPMAS_PACKAGES_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub packages_max_age: Duration,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, global = true, env = "OPMAS_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(long, global = true, env = "OPMAS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print the effective configuration as JSON and exit.
    #[arg(long, global = true)]
    pub dump_config: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations (idempotent).
    Migrate,
    /// Run the outbox relay (event store → JetStream).
    Relay(RelayArgs),
    /// Inspect and repair the event log.
    Events {
        /// What to do.
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Run everything on this machine; starts private Postgres and NATS when
    /// no URLs are configured. Stops them on Ctrl-C.
    Dev(DevArgs),
    /// Run this node's supervisor: start, watch, restart and adopt agent processes.
    Supervisor(SupervisorRoleArgs),
    /// Run the projector: keep the read models current from the streams.
    Project(ProjectArgs),
    /// Rebuild read models from the event store and swap them in atomically.
    Replay(ReplayArgs),
    /// Print an agent's events with actor and reason.
    Audit(AuditArgs),
    /// Run the management API (REST, live stream, OpenAPI, /metrics).
    Api(ApiRoleArgs),
    /// Run every server role in one process: API, relay, projector and
    /// this node's supervisor (each can be switched off).
    Serve(ServeArgs),
    /// Create an API token directly in the database (the first admin token
    /// of a new installation; afterwards use the API). Prints the token once.
    BootstrapToken(BootstrapTokenArgs),
    /// Agents through the API: ls, show, register, start, stop, restart, recover, deregister, events.
    Agents(crate::client::commands::AgentsArgs),
    /// An agent's configuration through the API: get, set, history, rollback.
    Config(crate::client::commands::ConfigArgs),
    /// An agent's log lines through the API (search, or follow with -f).
    Logs(crate::client::commands::LogsArgs),
    /// API tokens through the API (admin): create, ls, revoke.
    Token(crate::client::commands::TokenArgs),
}

impl Command {
    /// Whether this is a client command (talks to the API, not a server role).
    pub fn is_client(&self) -> bool {
        matches!(
            self,
            Command::Agents(_)
                | Command::Config(_)
                | Command::Logs(_)
                | Command::Token(_)
                | Command::Events {
                    command: EventsCommand::Tail(_)
                }
        )
    }
}

/// `opmas bootstrap-token`
#[derive(Debug, Args, Clone)]
pub struct BootstrapTokenArgs {
    /// A name to recognise the token by.
    #[arg(long, default_value = "bootstrap")]
    pub name: String,
    /// viewer, operator or admin.
    #[arg(long, default_value = "admin")]
    pub role: String,
    /// Lifetime, e.g. `30d` (default: no expiry).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires: Option<Duration>,
}

/// The key that seals agents' secrets (docs/security.md, "Secrets in agent specs").
#[derive(Debug, Args, Clone, Default)]
pub struct KeyArgs {
    /// File holding the key that seals secret env values and `x-secret`
    /// config fields (128 hex digits). Every API, discovery and supervisor
    /// of an installation needs the same one. Default for `opmas serve` and
    /// `opmas dev`: `<data-dir>/secret.key`, created on first start.
    #[arg(long, env = "OPMAS_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

/// `opmas api`
#[derive(Debug, Args, Clone)]
pub struct ApiRoleArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `opmas supervisor`
#[derive(Debug, Args, Clone)]
pub struct SupervisorRoleArgs {
    #[command(flatten)]
    pub supervisor: SupervisorArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `opmas api` (and the API part of `opmas serve` / `opmas dev`)
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Address the API listens on.
    #[arg(long, env = "OPMAS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// JWT verification keys, `kid:alg:source` with source `secret=...`,
    /// `secret-file=PATH` (HS256/384/512) or `pem-file=PATH` (EdDSA,
    /// RS256, ES256); repeat or separate with commas to rotate keys.
    #[arg(long = "jwt-key", env = "OPMAS_JWT_KEYS", value_delimiter = ',')]
    pub jwt_keys: Vec<String>,
    /// Required `iss` of JWTs.
    #[arg(long, env = "OPMAS_JWT_ISSUER", default_value = "opmas")]
    pub jwt_issuer: String,
    /// Required `aud` of JWTs.
    #[arg(long, env = "OPMAS_JWT_AUDIENCE", default_value = "opmas-api")]
    pub jwt_audience: String,
    /// Sustained requests per second per token.
    #[arg(long, env = "OPMAS_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,
    /// Burst of requests per token above the sustained rate.
    #[arg(long, env = "OPMAS_RATE_BURST", default_value_t = 2000)]
    pub rate_burst: u32,
    /// Largest accepted request body, bytes.
    #[arg(long, env = "OPMAS_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
}

/// `opmas serve`
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Roles to run, comma-separated: api, relay, projector, supervisor.
    #[arg(
        long,
        env = "OPMAS_ROLES",
        value_delimiter = ',',
        default_value = "api,relay,projector,supervisor"
    )]
    pub roles: Vec<Role>,
    /// Directory for agents' output files when `--log-dir` is not set, and
    /// of `secret.key` when `--secret-key-file` is not set.
    #[arg(long, env = "OPMAS_DATA_DIR", default_value = ".opmas")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub supervisor: SupervisorArgs,
    #[command(flatten)]
    pub projector: ProjectArgs,
    #[command(flatten)]
    pub packages: PackageArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Package discovery (`opmas serve`, `opmas dev`); see docs/packages.md.
#[derive(Debug, Args, Clone)]
pub struct PackageArgs {
    /// Directory whose subdirectories are agent packages (repeat, or
    /// separate with commas); none: no discovery.
    #[arg(
        long = "package-root",
        env = "OPMAS_PACKAGE_ROOTS",
        value_delimiter = ','
    )]
    pub package_roots: Vec<PathBuf>,
    /// Environment name: selects each package's `config/<environment>.toml`.
    #[arg(long, env = "OPMAS_ENVIRONMENT", default_value = "development")]
    pub environment: String,
    /// Full rescan of the package roots at least this often (changes are
    /// also picked up at once by watching the roots).
    #[arg(long, env = "OPMAS_PACKAGE_RESCAN", default_value = "60s", value_parser = humantime::parse_duration)]
    pub package_rescan: Duration,
    /// Start the agents discovery registers (default in `opmas dev`).
    #[arg(long, env = "OPMAS_AUTOSTART")]
    pub autostart: bool,
}

impl PackageArgs {
    /// The discovery settings, with the `OPMAS_AGENT_*` variables of this
    /// process (agent config overrides).
    pub fn discovery(&self) -> opmas_packages::discovery::Config {
        opmas_packages::discovery::Config {
            roots: self.package_roots.clone(),
            environment: self.environment.clone(),
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("OPMAS_AGENT_"))
                .collect(),
            rescan_interval: self.package_rescan,
            autostart: self.autostart,
            ..opmas_packages::discovery::Config::default()
        }
    }
}

/// A server role of `opmas serve`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Role {
    Api,
    Relay,
    Projector,
    Supervisor,
}

/// `opmas project`
#[derive(Debug, Args, Clone)]
pub struct ProjectArgs {
    /// Prefix of the projector's durable consumer names.
    #[arg(
        long,
        env = "OPMAS_PROJECTOR_NAME",
        default_value = "opmas_projections"
    )]
    pub projector_name: String,
    /// Most messages written per transaction.
    #[arg(long, env = "OPMAS_PROJECTOR_BATCH", default_value_t = 1000)]
    pub projector_batch: usize,
    /// Keep raw metric samples this long.
    #[arg(long, env = "OPMAS_RETAIN_METRICS", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retain_metrics: Duration,
    /// Keep metric rollups (1 min, 1 h) this long.
    #[arg(long, env = "OPMAS_RETAIN_ROLLUPS", default_value = "90d", value_parser = humantime::parse_duration)]
    pub retain_rollups: Duration,
    /// Keep log lines this long.
    #[arg(long, env = "OPMAS_RETAIN_LOGS", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retain_logs: Duration,
}

/// `opmas replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Which projection to rebuild (`agents`: every event-sourced model).
    #[arg(long, default_value = "agents")]
    pub projection: String,
    /// Only prove that a rebuild equals the live models (checksums); exit 1 if not.
    #[arg(long)]
    pub check: bool,
    /// Output format of `--check`.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `opmas audit`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The agent.
    pub agent: String,
    /// Events committed at or after this instant (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Events committed before this instant (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Also print the agent's state as of this instant (RFC 3339).
    #[arg(long)]
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `opmas supervisor`
#[derive(Debug, Args, Clone)]
pub struct SupervisorArgs {
    /// This node's name (agents are placed on nodes by name).
    #[arg(long, env = "OPMAS_NODE")]
    pub node: Option<String>,
    /// Directory of agents' output files (`<dir>/<agent>/{stdout,stderr}.log`).
    #[arg(long, env = "OPMAS_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Run only agents whose spec names this node (not the unplaced ones).
    #[arg(long, env = "OPMAS_ONLY_PLACED")]
    pub only_placed: bool,
    /// Every agent is reconciled at least this often.
    #[arg(long, env = "OPMAS_RECONCILE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,
    /// Time between resource samples of each agent.
    #[arg(long, env = "OPMAS_SAMPLE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,
    /// Consecutive samples over a limit that make a breach.
    #[arg(long, env = "OPMAS_BREACH_SAMPLES", default_value_t = 3)]
    pub breach_samples: u32,
    /// Rotate an agent's output file past this many bytes.
    #[arg(long, env = "OPMAS_LOG_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub log_max_bytes: u64,
    /// Rotated output files kept per stream.
    #[arg(long, env = "OPMAS_LOG_MAX_FILES", default_value_t = 5)]
    pub log_max_files: u32,
    /// Log lines per second one agent may publish (drops are counted).
    #[arg(long, env = "OPMAS_LOG_RATE", default_value_t = 1000)]
    pub log_rate: u32,
    /// Agents in cgroups of their own: `auto` (when a writable cgroup v2
    /// hierarchy with the memory and pids controllers exists), `on`
    /// (whenever the hierarchy is writable; fail otherwise) or `off`.
    #[arg(long, env = "OPMAS_CGROUPS", default_value = "auto")]
    pub cgroups: opmas_supervisor::cgroup::CgroupMode,
    /// Root of the agents' cgroups (default: `<own cgroup>/agents`).
    #[arg(long, env = "OPMAS_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Given to agents as NATS_URL (default: this process's NATS URL). Set it
    /// to a URL with an agent account's credentials so agents do not get the
    /// control plane's rights.
    #[arg(long, env = "OPMAS_AGENT_NATS_URL", hide_env_values = true)]
    pub agent_nats_url: Option<String>,
    /// Given to agents as MANAGEMENT_API_URL.
    #[arg(
        long,
        env = "OPMAS_MANAGEMENT_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub management_api_url: String,
}

/// `opmas events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Compare the Postgres event store with the events stream.
    Verify(VerifyArgs),
    /// Print lifecycle events (and errors) of agents as they happen, through the API.
    Tail(crate::client::commands::TailArgs),
}

/// `opmas relay`
#[derive(Debug, Args, Clone)]
pub struct RelayArgs {
    /// Relay name (one active relay per name and database).
    #[arg(long, env = "OPMAS_RELAY_NAME", default_value = "default")]
    pub relay_name: String,
    /// Outbox rows per published batch.
    #[arg(long, env = "OPMAS_RELAY_BATCH", default_value_t = 2000)]
    pub relay_batch: i64,
    /// Safety-net sweep interval.
    #[arg(long, env = "OPMAS_RELAY_SWEEP", default_value = "1s", value_parser = humantime::parse_duration)]
    pub relay_sweep: Duration,
}

/// `opmas events verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Queue what is missing or misordered for re-publication and wait for it.
    #[arg(long)]
    pub repair: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output format of reports.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Human-readable text.
    Table,
    /// JSON for scripts.
    Json,
}

/// `opmas dev`
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where private Postgres and NATS keep their data.
    #[arg(long, env = "OPMAS_DATA_DIR", default_value = ".opmas")]
    pub data_dir: PathBuf,
    /// Relay settings.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Supervisor settings (its log directory defaults to `<data-dir>/logs`).
    #[command(flatten)]
    pub supervisor: SupervisorArgs,
    /// Projector settings.
    #[command(flatten)]
    pub projector: ProjectArgs,
    /// API settings.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Package discovery settings.
    #[command(flatten)]
    pub packages: PackageArgs,
    /// The secret key (default `<data-dir>/secret.key`, created when missing).
    #[command(flatten)]
    pub key: KeyArgs,
}

impl Global {
    /// The events stream settings from the options.
    pub fn stream(&self) -> StreamSettings {
        StreamSettings {
            name: self.events_stream.clone(),
            subject_prefix: self.events_subject_prefix.clone(),
            replicas: self.events_replicas,
            max_age: self.events_max_age,
            duplicate_window: self.events_duplicate_window,
        }
    }
}

impl Global {
    /// The metrics and logs stream settings from the options.
    pub fn telemetry(&self) -> opmas_store::TelemetrySettings {
        opmas_store::TelemetrySettings {
            metrics_stream: self.metrics_stream.clone(),
            metrics_prefix: self.metrics_subject_prefix.clone(),
            logs_stream: self.logs_stream.clone(),
            logs_prefix: self.logs_subject_prefix.clone(),
            max_age: self.telemetry_max_age,
            logs_max_bytes: self.logs_max_bytes,
            replicas: self.events_replicas,
        }
    }
}

impl Global {
    /// The packages stream settings from the options.
    pub fn packages(&self) -> opmas_store::PackageEventSettings {
        opmas_store::PackageEventSettings {
            name: self.packages_stream.clone(),
            subject_prefix: self.packages_subject_prefix.clone(),
            max_age: self.packages_max_age,
            duplicate_window: self.events_duplicate_window,
            replicas: self.events_replicas,
        }
    }
}

impl Cli {
    /// The effective configuration, secrets in URLs masked.
    pub fn dump(&self) -> serde_json::Value {
        let g = &self.global;
        json!({
            "database_url": g.database_url.as_deref().map(mask),
            "nats_url": g.nats_url.as_deref().map(mask),
            "db_max_connections": g.db_max_connections,
            "events_stream": g.events_stream,
            "events_subject_prefix": g.events_subject_prefix,
            "events_replicas": g.events_replicas,
            "events_max_age": humantime::format_duration(g.events_max_age).to_string(),
            "events_duplicate_window": humantime::format_duration(g.events_duplicate_window).to_string(),
            "log": g.log,
            "log_format": format!("{:?}", g.log_format).to_lowercase(),
            "command": format!("{:?}", self.command),
        })
    }
}

/// Hides a password in a URL (`postgres://u:secret@h` → `postgres://u:***@h`).
pub fn mask(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
