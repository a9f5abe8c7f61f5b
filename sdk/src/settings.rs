//! [`Settings`]: what the supervisor tells an agent through its environment.
//! This is the only module that reads environment variables.

use std::time::Duration;

use opmas_domain::telemetry::LogLevel;
use serde_json::Value;

use crate::Error;

/// The agent's view of its environment, as the supervisor sets it.
///
/// | variable | field | default |
/// |---|---|---|
/// | `AGENT_ID` | [`agent_id`](Self::agent_id) | required |
/// | `NATS_URL` | [`nats_url`](Self::nats_url) | `nats://127.0.0.1:4222` |
/// | `MANAGEMENT_API_URL` | [`management_api_url`](Self::management_api_url) | none |
/// | `HEARTBEAT_INTERVAL` (seconds, may be fractional) | [`heartbeat_interval`](Self::heartbeat_interval) | `5` |
/// | `LOG_LEVEL` | [`log_level`](Self::log_level) | `info` |
/// | `METRICS_ENABLED` | [`metrics_enabled`](Self::metrics_enabled) | `true` |
/// | `OPMAS_NODE` | [`node`](Self::node) | none |
/// | `OPMAS_HEARTBEAT_SUBJECT` | [`heartbeat_subject`](Self::heartbeat_subject) | `opmas.heartbeat.<agent_id>` |
/// | `OPMAS_CONTROL_SUBJECT` | [`control_subject`](Self::control_subject) | `opmas.control.<agent_id>` |
/// | `OPMAS_AGENT_METRICS_SUBJECT` | [`metrics_subject`](Self::metrics_subject) | `opmas.agent_metrics.<agent_id>` |
/// | `OPMAS_AGENT_CONFIG` (a JSON object) | [`config`](Self::config) | `{}` |
/// | `OPMAS_AGENT_CONFIG_FILE` (a JSON file, read when `OPMAS_AGENT_CONFIG` is unset) | [`config_file`](Self::config_file) | none |
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The agent's id.
    pub agent_id: String,
    /// Where NATS is.
    pub nats_url: String,
    /// The OPMAS REST API, if the supervisor named one.
    pub management_api_url: Option<String>,
    /// How often to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// Structured log lines below this level are not written.
    pub log_level: LogLevel,
    /// Whether [`Handle::metric`](crate::Handle::metric) publishes anything.
    pub metrics_enabled: bool,
    /// The node the supervisor runs on.
    pub node: Option<String>,
    /// Heartbeats go here (core NATS).
    pub heartbeat_subject: String,
    /// Control requests arrive here (request/reply).
    pub control_subject: String,
    /// Custom metrics go here (core NATS).
    pub metrics_subject: String,
    /// The agent's configuration at start (a JSON object).
    pub config: Value,
    /// A JSON file the configuration is read from, and re-read on a reload
    /// that carries no configuration (and on `SIGHUP`).
    pub config_file: Option<String>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `var` (for tests and embedding).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let bad = |name: &str, message: String| Error::Env {
            var: name.to_string(),
            message,
        };
        let agent_id = var("AGENT_ID")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| bad("AGENT_ID", "not set".into()))?;
        let heartbeat_interval = match var("HEARTBEAT_INTERVAL") {
            None => Duration::from_secs(5),
            Some(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|secs| secs.is_finite() && *secs > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad("HEARTBEAT_INTERVAL", format!("`{s}` is not seconds > 0")))?,
        };
        let log_level = match var("LOG_LEVEL") {
            None => LogLevel::Info,
            Some(s) => LogLevel::parse(&s)
                .ok_or_else(|| bad("LOG_LEVEL", format!("`{s}` is not a log level")))?,
        };
        let metrics_enabled = match var("METRICS_ENABLED").as_deref().map(str::trim) {
            None | Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(other) => {
                return Err(bad(
                    "METRICS_ENABLED",
                    format!("`{other}` is not a boolean"),
                ));
            }
        };
        let config_file = var("OPMAS_AGENT_CONFIG_FILE");
        let config = match (var("OPMAS_AGENT_CONFIG"), &config_file) {
            (Some(json), _) => parse_config(&json).map_err(|m| bad("OPMAS_AGENT_CONFIG", m))?,
            (None, Some(path)) => read_config_file(path)?,
            (None, None) => Value::Object(serde_json::Map::new()),
        };
        let subject =
            |name: &str, prefix: &str| var(name).unwrap_or_else(|| format!("{prefix}.{agent_id}"));
        Ok(Self {
            nats_url: var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            management_api_url: var("MANAGEMENT_API_URL"),
            heartbeat_interval,
            log_level,
            metrics_enabled,
            node: var("OPMAS_NODE"),
            heartbeat_subject: subject("OPMAS_HEARTBEAT_SUBJECT", "opmas.heartbeat"),
            control_subject: subject("OPMAS_CONTROL_SUBJECT", "opmas.control"),
            metrics_subject: subject("OPMAS_AGENT_METRICS_SUBJECT", "opmas.agent_metrics"),
            config,
            config_file,
            agent_id,
        })
    }
}

/// Reads a configuration file (a JSON object).
pub(crate) fn read_config_file(path: &str) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {path}: {e}")))?;
    parse_config(&text).map_err(|m| Error::Config(format!("{path}: {m}")))
}

fn parse_config(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("the configuration must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_overrides_and_errors() {
        let s = Settings::from_lookup(lookup(&[("AGENT_ID", "a1")])).expect("defaults");
        assert_eq!(s.heartbeat_subject, "opmas.heartbeat.a1");
        assert_eq!(s.control_subject, "opmas.control.a1");
        assert_eq!(s.metrics_subject, "opmas.agent_metrics.a1");
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.log_level, LogLevel::Info);
        assert!(s.metrics_enabled);
        assert_eq!(s.config, serde_json::json!({}));

        let s = Settings::from_lookup(lookup(&[
            ("AGENT_ID", "a1"),
            ("HEARTBEAT_INTERVAL", "0.2"),
            ("LOG_LEVEL", "WARNING"),
            ("METRICS_ENABLED", "false"),
            ("OPMAS_HEARTBEAT_SUBJECT", "t1.heartbeat.a1"),
            ("OPMAS_AGENT_CONFIG", r#"{"k": 1}"#),
        ]))
        .expect("overrides");
        assert_eq!(s.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(s.log_level, LogLevel::Warn);
        assert!(!s.metrics_enabled);
        assert_eq!(s.heartbeat_subject, "t1.heartbeat.a1");
        assert_eq!(s.config, serde_json::json!({"k": 1}));

        for (vars, var) in [
            (vec![], "AGENT_ID"),
            (vec![("HEARTBEAT_INTERVAL", "0")], "HEARTBEAT_INTERVAL"),
            (vec![("LOG_LEVEL", "loud")], "LOG_LEVEL"),
            (vec![("METRICS_ENABLED", "maybe")], "METRICS_ENABLED"),
            (vec![("OPMAS_AGENT_CONFIG", "[1]")], "OPMAS_AGENT_CONFIG"),
        ] {
            let mut vars = vars;
            if var != "AGENT_ID" {
                vars.push(("AGENT_ID", "a1"));
            }
            match Settings::from_lookup(lookup(&vars)) {
                Err(Error::Env { var: got, .. }) => assert_eq!(got, var),
                other => panic!("{var}: {other:?}"),
            }
        }
    }
}
