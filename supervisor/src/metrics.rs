//! Resource sampling: every interval, one `sysinfo` refresh of the process
//! table gives CPU and RSS of each agent's process tree (the main process and
//! its descendants); threads and open descriptors come from `/proc` for the
//! main process. Samples go to `OPMAS_METRICS`. A limit exceeded for a number
//! of consecutive samples (the window) is reported once per episode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use opmas_domain::ResourceLimits;
use opmas_domain::telemetry::MetricSample;
use opmas_store::TelemetrySettings;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Sampling settings.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// Time between samples.
    pub interval: Duration,
    /// Consecutive samples over a limit that make a breach.
    pub breach_samples: u32,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            breach_samples: 3,
        }
    }
}

/// A sustained breach, for the agent's worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    /// `memory` or `cpu`.
    pub resource: &'static str,
    /// The limit.
    pub limit: f64,
    /// The last observed value.
    pub observed: f64,
    /// How long it has been over.
    pub window_ms: u64,
}

struct Watched {
    pid: u32,
    limits: ResourceLimits,
    over: [u32; 2],
    reported: [bool; 2],
}

type Registry = Arc<Mutex<HashMap<String, Watched>>>;

/// Handle to the sampler task.
#[derive(Clone, Default)]
pub struct Sampler {
    registry: Registry,
}

impl Sampler {
    /// Starts sampling; breaches go to `out` as `(agent_id, breach)`.
    pub fn spawn(
        client: async_nats::Client,
        node: String,
        settings: MetricsSettings,
        telemetry: TelemetrySettings,
        out: mpsc::UnboundedSender<(String, Breach)>,
        cancel: CancellationToken,
        heartbeats: crate::heartbeat::LastSeen,
    ) -> Self {
        let sampler = Self::default();
        let registry = sampler.registry.clone();
        tokio::spawn(async move {
            let mut sys = match System::new() {
                Ok(sys) => sys,
                Err(err) => {
                    tracing::warn!(error = %err, "no process sampling on this host");
                    return;
                }
            };
            let mut tick = tokio::time::interval(settings.interval);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let mut samples = sample(&mut sys, &registry, &node, &settings, &out);
                if let Ok(seen) = heartbeats.lock() {
                    for s in &mut samples {
                        s.last_heartbeat_at = seen.get(&s.agent_id).copied();
                    }
                }
                for s in samples {
                    if let Ok(body) = serde_json::to_vec(&s) {
                        let subject = telemetry.metrics_subject(&s.agent_id);
                        let _ = client.publish(subject, body.into()).await;
                    }
                }
            }
        });
        sampler
    }

    /// Samples `agent`'s process `pid` from now on, checking `limits`.
    pub fn watch(&self, agent: &str, pid: u32, limits: ResourceLimits) {
        if let Ok(mut r) = self.registry.lock() {
            r.insert(
                agent.to_string(),
                Watched {
                    pid,
                    limits,
                    over: [0; 2],
                    reported: [false; 2],
                },
            );
        }
    }

    /// Stops sampling `agent`.
    pub fn unwatch(&self, agent: &str) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(agent);
        }
    }
}

fn sample(
    sys: &mut System,
    registry: &Registry,
    node: &str,
    settings: &MetricsSettings,
    out: &mpsc::UnboundedSender<(String, Breach)>,
) -> Vec<MetricSample> {
    let Ok(mut watched) = registry.lock() else {
        return Vec::new();
    };
    if watched.is_empty() {
        return Vec::new();
    }
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for (pid, process) in sys.processes() {
        if let Some(parent) = process.parent() {
            children.entry(parent).or_default().push(*pid);
        }
    }
    let now = Utc::now();
    let mut samples = Vec::with_capacity(watched.len());
    for (agent, w) in watched.iter_mut() {
        let root = Pid::from_u32(w.pid);
        if sys.process(root).is_none() {
            continue;
        }
        let (mut cpu, mut rss) = (0.0f64, 0u64);
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if let Some(p) = sys.process(pid) {
                cpu += f64::from(p.cpu_usage());
                rss += p.memory();
            }
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids);
            }
        }
        let sample = MetricSample {
            agent_id: agent.clone(),
            node: node.to_string(),
            pid: w.pid,
            at: now,
            cpu_percent: cpu,
            rss_bytes: rss,
            threads: threads(w.pid),
            open_fds: open_fds(w.pid),
            last_heartbeat_at: None,
        };
        let checks = [
            (
                "memory",
                w.limits.memory_bytes.map(|l| l as f64),
                rss as f64,
            ),
            ("cpu", w.limits.cpu_percent, cpu),
        ];
        for (i, (resource, limit, observed)) in checks.into_iter().enumerate() {
            let Some(limit) = limit else { continue };
            if observed > limit {
                w.over[i] += 1;
                if w.over[i] >= settings.breach_samples && !w.reported[i] {
                    w.reported[i] = true;
                    let window_ms = settings.interval.as_millis() as u64 * u64::from(w.over[i]);
                    let breach = Breach {
                        resource,
                        limit,
                        observed,
                        window_ms,
                    };
                    let _ = out.send((agent.clone(), breach));
                }
            } else {
                w.over[i] = 0;
                w.reported[i] = false;
            }
        }
        samples.push(sample);
    }
    samples
}

/// Threads of `pid` (`/proc/<pid>/stat` field 20).
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after.split_whitespace().nth(17)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Open descriptors of `pid` (entries of `/proc/<pid>/fd`).
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_threads_and_fds() {
        let me = std::process::id();
        assert!(threads(me) >= 1);
        assert!(open_fds(me) >= 3);
        assert_eq!(threads(u32::MAX), 0);
    }
}
