//! Heartbeat deadlines for all agents of a node in one timer structure (a
//! `DelayQueue`), fed by one core-NATS subscription on
//! `opmas.heartbeat.*`. A deadline starts after the agent's startup grace;
//! each heartbeat moves it by the timeout. Only transitions are reported to
//! the agent's worker: lost (once), and resumed.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::warn;

/// What the monitor tells a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No heartbeat within the timeout (after the startup grace).
    Lost {
        /// The last heartbeat, if any arrived.
        last_seen: Option<DateTime<Utc>>,
    },
    /// The first heartbeat of a watched process, or heartbeats arrive
    /// again after a loss (either way the agent is healthy).
    Resumed,
}

enum Request {
    Watch {
        agent: String,
        timeout: Duration,
        grace: Duration,
    },
    Unwatch(String),
}

struct Entry {
    key: Option<delay_queue::Key>,
    timeout: Duration,
    lost: bool,
    last_seen: Option<DateTime<Utc>>,
}

/// Handle to the monitor task.
#[derive(Clone)]
pub struct Monitor {
    tx: mpsc::UnboundedSender<Request>,
    last_seen: LastSeen,
}

/// When each watched agent's last heartbeat arrived.
pub type LastSeen = std::sync::Arc<std::sync::Mutex<HashMap<String, DateTime<Utc>>>>;

impl Monitor {
    /// Starts the monitor; transitions go to `out` as `(agent_id, transition)`.
    pub fn spawn(
        client: async_nats::Client,
        prefix: String,
        out: mpsc::UnboundedSender<(String, Transition)>,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let last_seen = LastSeen::default();
        tokio::spawn(run(client, prefix, rx, out, cancel, last_seen.clone()));
        Self { tx, last_seen }
    }

    /// The shared table of last heartbeats (read by the sampler).
    pub fn last_seen(&self) -> LastSeen {
        self.last_seen.clone()
    }

    /// Watches `agent` from now: its first heartbeat is due within `grace`
    /// (or `timeout` if longer), then every `timeout`.
    pub fn watch(&self, agent: &str, timeout: Duration, grace: Duration) {
        let _ = self.tx.send(Request::Watch {
            agent: agent.to_string(),
            timeout,
            grace,
        });
    }

    /// Stops watching `agent` (its process is gone).
    pub fn unwatch(&self, agent: &str) {
        let _ = self.tx.send(Request::Unwatch(agent.to_string()));
    }
}

async fn run(
    client: async_nats::Client,
    prefix: String,
    mut requests: mpsc::UnboundedReceiver<Request>,
    out: mpsc::UnboundedSender<(String, Transition)>,
    cancel: CancellationToken,
    last_seen: LastSeen,
) {
    let mut subscription = match client.subscribe(format!("{prefix}.*")).await {
        Ok(s) => s,
        Err(err) => {
            warn!(error = %err, "cannot subscribe to heartbeats");
            return;
        }
    };
    let mut queue: DelayQueue<String> = DelayQueue::new();
    let mut entries: HashMap<String, Entry> = HashMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            request = requests.recv() => match request {
                None => return,
                Some(Request::Watch { agent, timeout, grace }) => {
                    if let Some(old) = entries.remove(&agent).and_then(|e| e.key) {
                        queue.remove(&old);
                    }
                    let key = queue.insert(agent.clone(), grace.max(timeout));
                    entries.insert(agent, Entry { key: Some(key), timeout, lost: false, last_seen: None });
                }
                Some(Request::Unwatch(agent)) => {
                    if let Ok(mut seen) = last_seen.lock() {
                        seen.remove(&agent);
                    }
                    if let Some(key) = entries.remove(&agent).and_then(|e| e.key) {
                        queue.remove(&key);
                    }
                }
            },
            message = subscription.next() => {
                let Some(message) = message else { return };
                let Some(agent) = message.subject.as_str().rsplit('.').next() else { continue };
                let Some(entry) = entries.get_mut(agent) else { continue };
                let now = Utc::now();
                let first = entry.last_seen.replace(now).is_none();
                if let Ok(mut seen) = last_seen.lock() {
                    seen.insert(agent.to_string(), now);
                }
                match entry.key {
                    Some(key) => queue.reset(&key, entry.timeout),
                    None => entry.key = Some(queue.insert(agent.to_string(), entry.timeout)),
                }
                if std::mem::take(&mut entry.lost) || first {
                    let _ = out.send((agent.to_string(), Transition::Resumed));
                }
            }
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let agent = expired.into_inner();
                if let Some(entry) = entries.get_mut(&agent) {
                    entry.key = None;
                    entry.lost = true;
                    let _ = out.send((agent, Transition::Lost { last_seen: entry.last_seen }));
                }
            }
        }
    }
}
