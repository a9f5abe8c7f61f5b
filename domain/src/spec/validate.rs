//! Value checks serde cannot express: [`AgentSpec::validate`] and the
//! `validate` of each policy. Each check names the offending field.

use crate::id::AgentId;

use super::{
    AgentSpec, HealthCheck, HealthCheckSpec, HeartbeatSpec, MAX_CPU_PERCENT, MIN_MEMORY_BYTES,
    RecoveryPolicy, ResourceLimits, RestartPolicy, STOP_SIGNALS, SpecError, check_config,
};

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
        })?;
        if let Some(schema) = &self.config_schema {
            check(schema.is_object(), "config_schema", || {
                "must be a JSON object (a JSON Schema)".to_owned()
            })?;
            check_config(schema, &self.config)?;
        }
        for required in &self.requires {
            AgentId::parse(required).map_err(|e| SpecError::new("requires", e.to_string()))?;
        }
        if let Some(dir) = &self.package_dir {
            check(
                dir.starts_with('/') && !dir.contains('\0'),
                "package_dir",
                || format!("must be an absolute path without NUL, got {dir:?}"),
            )?;
        }
        Ok(())
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
            HealthCheck::Http { url } => {
                check(url.starts_with("http://"), "health_check.check.url", || {
                    format!(
                        "must be an http:// url, got {url:?} (https is not probed: use an exec check with curl)"
                    )
                })
            }
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
