//! [`AgentSpec`]: everything a supervisor needs to run one agent.
//!
//! Specs arrive as JSON from operators, so every struct takes
//! `#[serde(default)]` (a partial spec fills in defaults) and
//! `deny_unknown_fields` (a typo such as `"restrat"` is an error, not a
//! silently ignored key). [`AgentSpec::validate`] then checks the values.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Signals an agent may be asked to stop with.
pub const STOP_SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL",
];

/// Upper bound of [`ResourceLimits::cpu_percent`]: 1024 cores.
pub const MAX_CPU_PERCENT: f64 = 100.0 * 1024.0;

/// Smallest accepted [`ResourceLimits::memory_bytes`].
pub const MIN_MEMORY_BYTES: u64 = 1024 * 1024;

/// What to run and how to keep it running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
            node: None,
            limits: ResourceLimits::default(),
            heartbeat: HeartbeatSpec::default(),
            restart: RestartPolicy::default(),
            health_check: HealthCheckSpec::default(),
            stop_signal: "SIGTERM".to_owned(),
            stop_grace_ms: 10_000,
            recovery: RecoveryPolicy::default(),
            config: Value::Object(serde_json::Map::new()),
        }
    }
}

/// OS resource limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// `Err(SpecError)` unless `ok`.
fn check(ok: bool, field: &str, message: impl FnOnce() -> String) -> Result<(), SpecError> {
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(field, message()))
    }
}

fn positive(value: u64, field: &str) -> Result<(), SpecError> {
    check(value > 0, field, || "must be greater than 0".to_owned())
}

impl AgentSpec {
    /// Checks the values serde cannot; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        check(!self.agent_type.trim().is_empty(), "agent_type", || {
            "must not be empty".to_owned()
        })?;
        self.validate_process()?;
        self.limits.validate()?;
        self.heartbeat.validate()?;
        self.restart.validate()?;
        self.health_check.validate()?;
        self.recovery.validate()?;
        check(
            STOP_SIGNALS.contains(&self.stop_signal.as_str()),
            "stop_signal",
            || {
                format!(
                    "unknown signal `{}`: use one of {}",
                    self.stop_signal,
                    STOP_SIGNALS.join(", ")
                )
            },
        )?;
        check(self.config.is_object(), "config", || {
            "must be a JSON object".to_owned()
        })
    }

    fn validate_process(&self) -> Result<(), SpecError> {
        let command = &self.command;
        check(!command.trim().is_empty(), "command", || {
            "must not be empty".to_owned()
        })?;
        check(!command.contains('\0'), "command", || {
            "contains a NUL byte".to_owned()
        })?;
        check(
            !command.contains(' ') || command.contains('/'),
            "command",
            || "command is a program, not a shell line: put arguments in `args`".to_owned(),
        )?;
        check(!self.args.iter().any(|a| a.contains('\0')), "args", || {
            "an argument contains a NUL byte".to_owned()
        })?;
        for (key, value) in &self.env {
            check(!key.is_empty(), "env", || "a key is empty".to_owned())?;
            check(!key.contains('=') && !key.contains('\0'), "env", || {
                format!("key {key:?} must not contain '=' or NUL")
            })?;
            check(!value.contains('\0'), "env", || {
                format!("value of `{key}` contains a NUL byte")
            })?;
        }
        for name in &self.secret_env {
            check(self.env.contains_key(name), "secret_env", || {
                format!("`{name}` is not a key of `env`")
            })?;
        }
        if let Some(dir) = &self.working_dir {
            check(
                !dir.is_empty() && !dir.contains('\0'),
                "working_dir",
                || "must be a non-empty path without NUL".to_owned(),
            )?;
        }
        Ok(())
    }

    /// A copy safe to log or show: secret env values become `***`.
    pub fn redacted(&self) -> AgentSpec {
        let mut spec = self.clone();
        for (key, value) in &mut spec.env {
            if self.secret_env.contains(key) {
                "***".clone_into(value);
            }
        }
        spec
    }
}

impl ResourceLimits {
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(cpu) = self.cpu_percent {
            check(
                cpu > 0.0 && cpu <= MAX_CPU_PERCENT,
                "limits.cpu_percent",
                || format!("must be in (0, {MAX_CPU_PERCENT}], got {cpu}"),
            )?;
        }
        if let Some(memory) = self.memory_bytes {
            check(memory >= MIN_MEMORY_BYTES, "limits.memory_bytes", || {
                format!("must be at least {MIN_MEMORY_BYTES} (1 MiB), got {memory}")
            })?;
        }
        let counts = [
            (self.cpu_seconds, "limits.cpu_seconds"),
            (self.open_files, "limits.open_files"),
            (self.processes, "limits.processes"),
        ];
        for (value, field) in counts {
            if let Some(value) = value {
                positive(value, field)?;
            }
        }
        Ok(())
    }
}

impl HeartbeatSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        positive(self.interval_ms, "heartbeat.interval_ms")?;
        check(
            self.timeout_ms >= self.interval_ms,
            "heartbeat.timeout_ms",
            || {
                format!(
                    "must be at least `heartbeat.interval_ms` ({}), got {}",
                    self.interval_ms, self.timeout_ms
                )
            },
        )
    }
}

impl RestartPolicy {
    pub fn validate(&self) -> Result<(), SpecError> {
        check(
            self.max_delay_ms >= self.initial_delay_ms,
            "restart.max_delay_ms",
            || {
                format!(
                    "must be at least `restart.initial_delay_ms` ({}), got {}",
                    self.initial_delay_ms, self.max_delay_ms
                )
            },
        )?;
        let multiplier = self.multiplier;
        check(
            multiplier.is_finite() && multiplier >= 1.0,
            "restart.multiplier",
            || format!("must be a number >= 1.0, got {multiplier}"),
        )?;
        check((0.0..=1.0).contains(&self.jitter), "restart.jitter", || {
            format!("must be a fraction in [0, 1], got {}", self.jitter)
        })?;
        check(self.intensity >= 1, "restart.intensity", || {
            "must be at least 1".to_owned()
        })?;
        positive(self.period_ms, "restart.period_ms")?;
        if let Some(cooldown) = self.failed_cooldown_ms {
            positive(cooldown, "restart.failed_cooldown_ms")?;
        }
        Ok(())
    }
}

impl HealthCheckSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        positive(self.interval_ms, "health_check.interval_ms")?;
        positive(self.timeout_ms, "health_check.timeout_ms")?;
        check(
            self.failure_threshold >= 1,
            "health_check.failure_threshold",
            || "must be at least 1".to_owned(),
        )?;
        match &self.check {
            HealthCheck::Heartbeat => Ok(()),
            HealthCheck::Exec { command, .. } => check(
                !command.trim().is_empty(),
                "health_check.check.command",
                || "must not be empty".to_owned(),
            ),
            HealthCheck::Http { url } => check(
                url.starts_with("http://") || url.starts_with("https://"),
                "health_check.check.url",
                || format!("must be an http:// or https:// url, got {url:?}"),
            ),
            HealthCheck::Tcp { host, port } => {
                check(!host.trim().is_empty(), "health_check.check.host", || {
                    "must not be empty".to_owned()
                })?;
                check(*port > 0, "health_check.check.port", || {
                    "must not be 0".to_owned()
                })
            }
        }
    }
}

impl RecoveryPolicy {
    pub fn validate(&self) -> Result<(), SpecError> {
        check(self.max_attempts >= 1, "recovery.max_attempts", || {
            "must be at least 1".to_owned()
        })
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
