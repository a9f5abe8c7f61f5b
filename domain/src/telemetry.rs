//! Telemetry messages: high-volume facts that are *not* events. Supervisors
//! publish them to their own JetStream streams (age-limited); projections
//! store them in read models. Only transitions (limit exceeded, heartbeat
//! lost, health changed) become events of the aggregate.
//!
//! | what | stream | subject |
//! |---|---|---|
//! | [`MetricSample`] | `OPMAS_METRICS` | `opmas.metrics.<agent_id>` |
//! | [`LogLine`] | `OPMAS_LOGS` | `opmas.logs.<agent_id>.<level>` |
//! | [`Heartbeat`] | core NATS (no stream) | `opmas.heartbeat.<agent_id>` |

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One resource sample of an agent's process (tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    /// The agent.
    pub agent_id: String,
    /// Node of the supervisor that sampled it.
    pub node: String,
    /// The agent's main process.
    pub pid: u32,
    /// When the sample was taken.
    pub at: DateTime<Utc>,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_percent: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Threads of the main process.
    pub threads: u64,
    /// Open file descriptors of the main process.
    pub open_fds: u64,
    /// The last heartbeat the supervisor received from the agent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
}

/// Severity of a log line, parsed from JSON lines or common prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation (also the default for unmarked stdout lines).
    Info,
    /// Something unexpected (also the default for unmarked stderr lines).
    Warn,
    /// A failure.
    Error,
}

impl LogLevel {
    /// The subject token and serialized name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    /// Parses common spellings (`WARNING`, `err`, `fatal`, ...).
    pub fn parse(word: &str) -> Option<Self> {
        match word.trim().to_ascii_lowercase().as_str() {
            "trace" | "trc" => Some(Self::Trace),
            "debug" | "dbg" => Some(Self::Debug),
            "info" | "inf" | "notice" => Some(Self::Info),
            "warn" | "warning" | "wrn" => Some(Self::Warn),
            "error" | "err" | "fatal" | "critical" | "crit" | "panic" => Some(Self::Error),
            _ => None,
        }
    }
}

/// Which output of the process a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line an agent wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// The agent.
    pub agent_id: String,
    /// Node of the supervisor that read it.
    pub node: String,
    /// The process that wrote it.
    pub pid: u32,
    /// When the supervisor read it.
    pub at: DateTime<Utc>,
    /// stdout or stderr.
    pub stream: LogStream,
    /// Parsed level.
    pub level: LogLevel,
    /// The line, without its newline (cut at 16 KiB).
    pub line: String,
    /// Lines dropped by the rate limit just before this one.
    #[serde(default)]
    pub dropped_before: u64,
}

/// What an agent sends on `opmas.heartbeat.<agent_id>` (any payload counts;
/// this is what the SDK sends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent.
    pub agent_id: String,
    /// When the agent sent it.
    pub at: DateTime<Utc>,
    /// Optional self-reported health.
    #[serde(default)]
    pub status: Option<String>,
}
