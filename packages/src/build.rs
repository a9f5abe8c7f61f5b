//! Manifest → [`AgentSpec`]: defaults filled in, paths confined, and the
//! checks that are about how the manifest is written (durations, health
//! check kinds, instances). Value ranges the domain already checks are left
//! to [`AgentSpec::validate`], whose field names [`manifest_field`] maps
//! back to manifest keys.

use std::path::Path;

use opmas_domain::{
    AgentId, AgentSpec, HealthCheck, HealthCheckSpec, HeartbeatSpec, RecoveryPolicy,
    ResourceLimits, RestartPolicy,
};

use crate::manifest::{CheckKind, Dur, Manifest};
use crate::package::{Fault, MAX_INSTANCES, fault};
use crate::paths;

/// The agent ids of the package's instances: `name`, or `name-1..name-N`.
pub fn ids(m: &Manifest) -> Result<Vec<AgentId>, Fault> {
    AgentId::parse(&m.name).map_err(|e| fault("name", e.to_string()))?;
    let n = m.instances.unwrap_or(1);
    if !(1..=MAX_INSTANCES).contains(&n) {
        return Err(fault(
            "instances",
            format!("must be between 1 and {MAX_INSTANCES}, got {n}"),
        ));
    }
    if n == 1 {
        return Ok(vec![
            AgentId::parse(&m.name).map_err(|e| fault("name", e.to_string()))?,
        ]);
    }
    (1..=n)
        .map(|i| {
            AgentId::parse(&format!("{}-{i}", m.name)).map_err(|e| {
                fault(
                    "name",
                    format!("with {n} instances the ids are `{}-1`..: {e}", m.name),
                )
            })
        })
        .collect()
}

/// The spec every instance shares (config and schema are added after).
pub fn spec(m: &Manifest, dir: &Path, ids: &[AgentId]) -> Result<AgentSpec, Fault> {
    non_empty("type", &m.agent_type)?;
    non_empty("version", &m.version)?;
    if m.version.chars().any(char::is_whitespace) {
        return Err(fault(
            "version",
            format!("`{}` contains whitespace", m.version),
        ));
    }
    let command = paths::program(dir, &m.command).map_err(|e| fault("command", e))?;
    let working_dir = match &m.working_dir {
        None => dir.to_path_buf(),
        Some(relative) => {
            let resolved = paths::confine(dir, relative).map_err(|e| fault("working_dir", e))?;
            if !resolved.is_dir() {
                return Err(fault(
                    "working_dir",
                    format!("`{relative}` is not a directory"),
                ));
            }
            resolved
        }
    };
    for (i, required) in m.requires.iter().enumerate() {
        let field = format!("requires[{i}]");
        AgentId::parse(required).map_err(|e| fault(&field, e.to_string()))?;
        if ids.iter().any(|id| id.as_str() == required) {
            return Err(fault(
                &field,
                format!(
                    "`{required}` is an agent of this package: a package cannot require itself"
                ),
            ));
        }
    }
    let d = AgentSpec::default();
    Ok(AgentSpec {
        agent_type: m.agent_type.clone(),
        package_version: m.version.clone(),
        command,
        args: m.args.clone(),
        env: m.env.clone(),
        secret_env: m.secret_env.clone(),
        working_dir: Some(working_dir.to_string_lossy().into_owned()),
        user: m.user.clone(),
        group: m.group.clone(),
        node: m.node.clone(),
        limits: ResourceLimits {
            memory_bytes: m.limits.memory.map(|b| b.0),
            cpu_percent: m.limits.cpu_percent,
            cpu_seconds: m.limits.cpu_seconds,
            open_files: m.limits.open_files,
            processes: m.limits.processes,
        },
        heartbeat: heartbeat(m, &d.heartbeat)?,
        restart: restart(m, &d.restart)?,
        health_check: health_check(m, dir, &d.health_check)?,
        stop_signal: m.stop.signal.clone().unwrap_or(d.stop_signal),
        stop_grace_ms: m.stop.grace.map_or(d.stop_grace_ms, Dur::ms),
        recovery: RecoveryPolicy {
            strategy: m.recovery.strategy.unwrap_or(d.recovery.strategy),
            auto: m.recovery.auto.unwrap_or(d.recovery.auto),
            max_attempts: m.recovery.max_attempts.unwrap_or(d.recovery.max_attempts),
        },
        reload: m.config.reload.unwrap_or_default(),
        requires: m.requires.iter().cloned().collect(),
        package_dir: Some(dir.to_string_lossy().into_owned()),
        ..d
    })
}

fn non_empty(field: &str, value: &str) -> Result<(), Fault> {
    match value.trim().is_empty() {
        true => Err(fault(field, "must not be empty")),
        false => Ok(()),
    }
}

fn positive(field: &str, value: Option<Dur>) -> Result<(), Fault> {
    match value {
        Some(d) if d.0.is_zero() => Err(fault(field, "must be longer than 0s")),
        _ => Ok(()),
    }
}

/// `Err` unless `small <= large` (both given or defaulted).
fn ordered(
    field: &str,
    other: &str,
    small: (Option<Dur>, u64),
    large: (Option<Dur>, u64),
) -> Result<(), Fault> {
    let (s, l) = (
        small.0.map_or(small.1, Dur::ms),
        large.0.map_or(large.1, Dur::ms),
    );
    if l >= s {
        return Ok(());
    }
    let show =
        |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
    Err(fault(
        field,
        format!("must be at least `{other}` ({}), got {}", show(s), show(l)),
    ))
}

fn heartbeat(m: &Manifest, d: &HeartbeatSpec) -> Result<HeartbeatSpec, Fault> {
    let h = &m.heartbeat;
    positive("heartbeat.interval", h.interval)?;
    ordered(
        "heartbeat.timeout",
        "heartbeat.interval",
        (h.interval, d.interval_ms),
        (h.timeout, d.timeout_ms),
    )?;
    Ok(HeartbeatSpec {
        enabled: h.enabled.unwrap_or(d.enabled),
        interval_ms: h.interval.map_or(d.interval_ms, Dur::ms),
        timeout_ms: h.timeout.map_or(d.timeout_ms, Dur::ms),
        startup_grace_ms: h.startup_grace.map_or(d.startup_grace_ms, Dur::ms),
    })
}

fn restart(m: &Manifest, d: &RestartPolicy) -> Result<RestartPolicy, Fault> {
    let r = &m.restart;
    ordered(
        "restart.max_delay",
        "restart.initial_delay",
        (r.initial_delay, d.initial_delay_ms),
        (r.max_delay, d.max_delay_ms),
    )?;
    positive("restart.period", r.period)?;
    positive("restart.failed_cooldown", r.failed_cooldown)?;
    Ok(RestartPolicy {
        mode: r.mode.unwrap_or(d.mode),
        initial_delay_ms: r.initial_delay.map_or(d.initial_delay_ms, Dur::ms),
        max_delay_ms: r.max_delay.map_or(d.max_delay_ms, Dur::ms),
        multiplier: r.multiplier.unwrap_or(d.multiplier),
        jitter: r.jitter.unwrap_or(d.jitter),
        reset_after_ms: r.reset_after.map_or(d.reset_after_ms, Dur::ms),
        intensity: r.intensity.unwrap_or(d.intensity),
        period_ms: r.period.map_or(d.period_ms, Dur::ms),
        failed_cooldown_ms: r.failed_cooldown.map(Dur::ms).or(d.failed_cooldown_ms),
    })
}

fn health_check(m: &Manifest, dir: &Path, d: &HealthCheckSpec) -> Result<HealthCheckSpec, Fault> {
    let h = &m.health_check;
    let kind = h.kind;
    let given = [
        ("command", h.command.is_some(), CheckKind::Exec),
        ("args", h.args.is_some(), CheckKind::Exec),
        ("url", h.url.is_some(), CheckKind::Http),
        ("host", h.host.is_some(), CheckKind::Tcp),
        ("port", h.port.is_some(), CheckKind::Tcp),
    ];
    for (key, present, owner) in given {
        if present && owner != kind {
            return Err(fault(
                &format!("health_check.{key}"),
                format!("only applies to kind = \"{}\"", kind_name(owner)),
            ));
        }
    }
    let missing = |key: &str| {
        fault(
            &format!("health_check.{key}"),
            format!("is required for kind = \"{}\"", kind_name(kind)),
        )
    };
    let check = match kind {
        CheckKind::Heartbeat => HealthCheck::Heartbeat,
        CheckKind::Exec => {
            let command = h.command.as_deref().ok_or_else(|| missing("command"))?;
            HealthCheck::Exec {
                command: paths::program(dir, command)
                    .map_err(|e| fault("health_check.command", e))?,
                args: h.args.clone().unwrap_or_default(),
            }
        }
        CheckKind::Http => HealthCheck::Http {
            url: h.url.clone().ok_or_else(|| missing("url"))?,
        },
        CheckKind::Tcp => HealthCheck::Tcp {
            host: h.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: h.port.ok_or_else(|| missing("port"))?,
        },
    };
    positive("health_check.interval", h.interval)?;
    positive("health_check.timeout", h.timeout)?;
    Ok(HealthCheckSpec {
        check,
        interval_ms: h.interval.map_or(d.interval_ms, Dur::ms),
        timeout_ms: h.timeout.map_or(d.timeout_ms, Dur::ms),
        failure_threshold: h.failure_threshold.unwrap_or(d.failure_threshold),
    })
}

fn kind_name(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::Heartbeat => "heartbeat",
        CheckKind::Exec => "exec",
        CheckKind::Http => "http",
        CheckKind::Tcp => "tcp",
    }
}

/// The manifest key of a field named by [`AgentSpec::validate`].
pub fn manifest_field(spec_field: &str) -> String {
    let renamed = [
        ("agent_type", "type"),
        ("limits.memory_bytes", "limits.memory"),
        ("stop_signal", "stop.signal"),
        ("config_schema", "config.schema"),
    ];
    if let Some((_, to)) = renamed.iter().find(|(from, _)| *from == spec_field) {
        return (*to).to_owned();
    }
    if let Some(rest) = spec_field.strip_prefix("health_check.check.") {
        return format!("health_check.{rest}");
    }
    spec_field.to_owned()
}
