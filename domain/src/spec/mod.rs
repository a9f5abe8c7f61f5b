//! [`AgentSpec`]: everything a supervisor needs to run one agent.
//!
//! Specs arrive as JSON from operators, so every struct takes
//! `#[serde(default)]` (a partial spec fills in defaults) and
//! `deny_unknown_fields` (a typo such as `"restrat"` is an error, not a
//! silently ignored key). [`AgentSpec::validate`] (in `validate.rs`) then
//! checks the values; [`check_config`] (in `schema.rs`) checks a config
//! against its JSON Schema without showing a secret.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How an agent may be asked to stop: a signal to its process group, or
/// `control` (a `stop` control request; SIGTERM when it is not answered).
pub const STOP_SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "control",
];

/// Upper bound of [`ResourceLimits::cpu_percent`]: 1024 cores.
pub const MAX_CPU_PERCENT: f64 = 100.0 * 1024.0;

/// Smallest accepted [`ResourceLimits::memory_bytes`].
pub const MIN_MEMORY_BYTES: u64 = 1024 * 1024;

/// What to run and how to keep it running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct AgentSpec {
    /// Kind of agent (free text, e.g. `"collector"`).
    pub agent_type: String,
    /// Version of the package that provides `command` (free text, semver-ish).
    pub package_version: String,
    /// Program path or name. Never a shell line: arguments go in `args`.
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Names of `env` keys whose values are secret (see [`AgentSpec::redacted`]).
    pub secret_env: BTreeSet<String>,
    pub working_dir: Option<String>,
    /// Run as this user (name); `None`: as the supervisor's user.
    pub user: Option<String>,
    /// Run with this group (name); `None`: the user's primary group.
    pub group: Option<String>,
    /// Node to place the agent on; `None` means any node.
    pub node: Option<String>,
    pub limits: ResourceLimits,
    pub heartbeat: HeartbeatSpec,
    pub restart: RestartPolicy,
    pub health_check: HealthCheckSpec,
    /// One of [`STOP_SIGNALS`].
    pub stop_signal: String,
    /// How long to wait after `stop_signal` before `SIGKILL`.
    pub stop_grace_ms: u64,
    pub recovery: RecoveryPolicy,
    /// The agent's own configuration; must be a JSON object.
    pub config: Value,
    /// JSON Schema of `config` (an object); properties with `"x-secret": true`
    /// are redacted by [`AgentSpec::redacted`]. `None`: any object.
    pub config_schema: Option<Value>,
    /// How a running agent takes a new config.
    pub reload: ReloadMode,
    /// Ids of agents that must be healthy before this one starts.
    pub requires: BTreeSet<String>,
    /// Directory of the package this spec was read from (set by discovery).
    pub package_dir: Option<String>,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            agent_type: String::new(),
            package_version: String::new(),
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            secret_env: BTreeSet::new(),
            working_dir: None,
            user: None,
            group: None,
            node: None,
            limits: ResourceLimits::default(),
            heartbeat: HeartbeatSpec::default(),
            restart: RestartPolicy::default(),
            health_check: HealthCheckSpec::default(),
            stop_signal: "SIGTERM".to_owned(),
            stop_grace_ms: 10_000,
            recovery: RecoveryPolicy::default(),
            config: Value::Object(serde_json::Map::new()),
            config_schema: None,
            reload: ReloadMode::Control,
            requires: BTreeSet::new(),
            package_dir: None,
        }
    }
}

/// OS resource limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ResourceLimits {
    pub memory_bytes: Option<u64>,
    /// Share of one core, in percent: 150.0 is one and a half cores.
    pub cpu_percent: Option<f64>,
    pub cpu_seconds: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
}

/// Heartbeats the agent sends to prove it is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSpec {
    pub interval_ms: u64,
    /// No heartbeat for this long means the heartbeat is lost.
    pub timeout_ms: u64,
    /// Time after start before the first heartbeat is due.
    pub startup_grace_ms: u64,
    pub enabled: bool,
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            timeout_ms: 15_000,
            startup_grace_ms: 30_000,
            enabled: true,
        }
    }
}

labelled_enum! {
    /// When an exited process is restarted.
    #[derive(Default)]
    pub enum RestartMode {
        Always => "always",
        #[default]
        OnFailure => "on_failure",
        Never => "never",
    }
}

/// Restart backoff and intensity; see [`crate::backoff`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    /// Fraction in `0..=1`: the delay is spread over `delay * (1 ± jitter)`.
    pub jitter: f64,
    /// A run at least this long resets the backoff exponent.
    pub reset_after_ms: u64,
    /// At most this many restarts ...
    pub intensity: u32,
    /// ... within this window; one more and the agent is failed.
    pub period_ms: u64,
    /// Retry a failed agent after this long; `None` leaves it failed.
    pub failed_cooldown_ms: Option<u64>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            initial_delay_ms: 100,
            max_delay_ms: 30_000,
            multiplier: 2.0,
            jitter: 0.1,
            reset_after_ms: 60_000,
            intensity: 5,
            period_ms: 60_000,
            failed_cooldown_ms: None,
        }
    }
}

/// How the supervisor probes the agent's health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    /// Health follows the heartbeats.
    #[default]
    Heartbeat,
    /// Run a program; exit code 0 is healthy.
    Exec { command: String, args: Vec<String> },
    /// GET the url; a 2xx answer is healthy.
    Http { url: String },
    /// Connecting succeeds.
    Tcp { host: String, port: u16 },
}

/// A [`HealthCheck`] and its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckSpec {
    pub check: HealthCheck,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failed probes before the agent is critical.
    pub failure_threshold: u32,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            check: HealthCheck::Heartbeat,
            interval_ms: 10_000,
            timeout_ms: 5_000,
            failure_threshold: 3,
        }
    }
}

labelled_enum! {
    /// How a running agent is given a new config.
    #[derive(Default)]
    pub enum ReloadMode {
        /// A `reload` control request (SIGHUP when the agent does not answer).
        #[default]
        Control => "control",
        /// SIGHUP to the process group.
        Sighup => "sighup",
        /// A restart (the agent reads its config only at start).
        Restart => "restart",
    }
}

labelled_enum! {
    /// What recovery does.
    #[derive(Default)]
    pub enum RecoveryStrategy {
        #[default]
        Restart => "restart",
        Reload => "reload",
        None => "none",
    }
}

/// Recovery of an unhealthy agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryPolicy {
    pub strategy: RecoveryStrategy,
    /// Trigger recovery automatically when the agent turns critical.
    pub auto: bool,
    /// Attempts allowed until one succeeds.
    pub max_attempts: u32,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        Self {
            strategy: RecoveryStrategy::Restart,
            auto: true,
            max_attempts: 3,
        }
    }
}

/// A spec value that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct SpecError {
    /// Dotted path of the offending field, e.g. `restart.multiplier`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl AgentSpec {
    /// A copy safe to log or show: secret env values, config values whose
    /// schema property says `"x-secret": true`, and any sealed value
    /// (see [`crate::secret`]) become `***`.
    pub fn redacted(&self) -> AgentSpec {
        let mut spec = self.clone();
        for (key, value) in &mut spec.env {
            if self.secret_env.contains(key) || crate::secret::is_sealed(value) {
                "***".clone_into(value);
            }
        }
        if let Some(schema) = &self.config_schema {
            redact_secrets(schema, &mut spec.config);
        }
        crate::secret::mask_sealed(&mut spec.config);
        spec
    }
}

/// Replaces the values of `config` whose property in `schema` is marked
/// `"x-secret": true` with `"***"`, through nested objects; sealed values
/// anywhere too.
pub fn redact_secrets(schema: &Value, config: &mut Value) {
    redact_marked(schema, config);
    crate::secret::mask_sealed(config);
}

fn redact_marked(schema: &Value, config: &mut Value) {
    let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        config.as_object_mut(),
    ) else {
        return;
    };
    for (key, value) in object.iter_mut() {
        let Some(property) = properties.get(key) else {
            continue;
        };
        if property.get("x-secret").and_then(Value::as_bool) == Some(true) {
            *value = Value::String("***".to_owned());
        } else {
            redact_marked(property, value);
        }
    }
}

/// JSON pointers (`/db/password`) of the config fields `schema` marks
/// `"x-secret": true`.
pub fn secret_pointers(schema: &Value) -> Vec<String> {
    fn walk(schema: &Value, at: &str, out: &mut Vec<String>) {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, property) in properties {
            let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
            if property.get("x-secret").and_then(Value::as_bool) == Some(true) {
                out.push(here);
            } else {
                walk(property, &here, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

/// In a new `config`, a secret field sent as `"***"` (what reads show) keeps
/// its value in `current`: a client can send back what it read.
pub fn keep_unchanged_secrets(schema: &Value, config: &mut Value, current: &Value) {
    for pointer in secret_pointers(schema) {
        let masked = config.pointer(&pointer).and_then(Value::as_str) == Some("***");
        if masked
            && let Some(value) = current.pointer(&pointer).cloned()
            && let Some(slot) = config.pointer_mut(&pointer)
        {
            *slot = value;
        }
    }
}

mod rebase;
mod schema;
mod validate;

pub use rebase::rebase_config;
pub use schema::{ConfigViolation, check_config, config_violation};

#[cfg(test)]
mod tests;
