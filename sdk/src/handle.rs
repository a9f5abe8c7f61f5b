//! [`Handle`]: what the agent's work uses while it runs (configuration,
//! stop, metrics, logs, NATS). Cloning it is cheap.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::agent::Outcome;
use crate::{Error, Level, Settings};

/// One custom metric sample, published on
/// [`Settings::metrics_subject`] (`opmas.agent_metrics.<agent_id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The agent.
    pub agent_id: String,
    /// When it was measured.
    pub at: DateTime<Utc>,
    /// Metric name, e.g. `ssh_failed_logins_total`.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Dimensions, e.g. `{"user": "root"}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The running agent, as its work sees it.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    client: async_nats::Client,
    config: watch::Sender<Value>,
    status: Mutex<Option<String>>,
    stop: CancellationToken,
    outcome: Mutex<Option<Outcome>>,
}

impl Handle {
    pub(crate) fn new(settings: Settings, client: async_nats::Client) -> Self {
        let (config, _) = watch::channel(settings.config.clone());
        Self {
            inner: Arc::new(Inner {
                settings,
                client,
                config,
                status: Mutex::new(None),
                stop: CancellationToken::new(),
                outcome: Mutex::new(None),
            }),
        }
    }

    /// The agent's id.
    pub fn agent_id(&self) -> &str {
        &self.inner.settings.agent_id
    }

    /// What the supervisor set in the environment.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The NATS connection, for the agent's own subjects.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The current configuration (a JSON object).
    pub fn config(&self) -> Value {
        self.inner.config.borrow().clone()
    }

    /// A receiver that sees every configuration applied by a reload
    /// (`changed().await` wakes on each).
    pub fn config_updates(&self) -> watch::Receiver<Value> {
        self.inner.config.subscribe()
    }

    pub(crate) fn set_config(&self, config: Value) {
        self.inner.config.send_replace(config);
    }

    /// Sets the `status` sent with every heartbeat (e.g. `"degraded"`);
    /// `None` sends none.
    pub fn set_status(&self, status: Option<&str>) {
        if let Ok(mut s) = self.inner.status.lock() {
            *s = status.map(str::to_string);
        }
    }

    pub(crate) fn status(&self) -> Option<String> {
        self.inner.status.lock().ok().and_then(|s| s.clone())
    }

    /// Resolves when the agent is asked to stop (control `stop` or
    /// `restart`, `SIGTERM`, `SIGINT`, or [`Handle::stop`]).
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.inner.stop.cancelled()
    }

    /// Whether the agent has been asked to stop.
    pub fn is_stopped(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// Asks the agent to stop, as a control `stop` would.
    pub fn stop(&self) {
        self.stop_with(Outcome::Stopped);
    }

    /// Records why the agent stops (the first reason wins) and stops it.
    pub(crate) fn stop_with(&self, outcome: Outcome) {
        if let Ok(mut o) = self.inner.outcome.lock() {
            o.get_or_insert(outcome);
        }
        self.inner.stop.cancel();
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.inner.outcome.lock().ok().and_then(|o| *o)
    }

    /// Publishes a custom metric sample (nothing when `METRICS_ENABLED` is
    /// false).
    pub async fn metric(
        &self,
        name: &str,
        value: f64,
        labels: &[(&str, &str)],
    ) -> Result<(), Error> {
        if !self.inner.settings.metrics_enabled {
            return Ok(());
        }
        let sample = Metric {
            agent_id: self.agent_id().to_string(),
            at: Utc::now(),
            name: name.to_string(),
            value,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.publish_json(self.inner.settings.metrics_subject.clone(), &sample)
            .await
    }

    /// Publishes `body` as JSON on `subject` (core NATS).
    pub async fn publish_json<T: Serialize>(&self, subject: String, body: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Nats(e.to_string()))?;
        self.inner
            .client
            .publish(subject, bytes.into())
            .await
            .map_err(Error::nats)
    }

    /// Writes one structured log line on stdout, as JSON: `ts`, `level`,
    /// `agent_id`, `msg` and the members of `fields` (when it is an object).
    /// Lines below `LOG_LEVEL` are skipped. The supervisor ships stdout to
    /// `OPMAS_LOGS` and reads the level from the `level` member.
    pub fn log(&self, level: Level, msg: &str, fields: Value) {
        if level < self.inner.settings.log_level {
            return;
        }
        let line = log_line(Utc::now(), level, self.agent_id(), msg, fields);
        let mut out = std::io::stdout().lock();
        // A closed stdout has nowhere to report to.
        let _ = writeln!(out, "{line}");
    }
}

fn log_line(at: DateTime<Utc>, level: Level, agent_id: &str, msg: &str, fields: Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("ts".into(), Value::String(at.to_rfc3339()));
    map.insert("level".into(), Value::String(level.as_str().into()));
    map.insert("agent_id".into(), Value::String(agent_id.into()));
    map.insert("msg".into(), Value::String(msg.into()));
    match fields {
        Value::Object(extra) => {
            for (k, v) in extra {
                map.entry(k).or_insert(v);
            }
        }
        Value::Null => {}
        other => {
            map.insert("fields".into(), other);
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn log_lines_are_json_with_level_first_fields_kept() {
        let at = DateTime::parse_from_rfc3339("2026-11-29T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let line = log_line(
            at,
            Level::Warn,
            "a1",
            "disk low",
            json!({"free": 3, "msg": "x"}),
        );
        assert_eq!(
            line,
            json!({"ts": "2026-11-29T00:00:00+00:00", "level": "warn", "agent_id": "a1",
                   "msg": "disk low", "free": 3})
        );
        let line = log_line(at, Level::Error, "a1", "m", json!([1]));
        assert_eq!(line["fields"], json!([1]));
    }
}
