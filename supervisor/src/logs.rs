//! Agents' output: agents write straight into `<log_dir>/<agent>/stdout.log`
//! and `stderr.log` (files survive a supervisor restart, pipes would not:
//! an adopted agent writing into a pipe whose reader died gets SIGPIPE).
//! A [`LogHub`] watches the directory (one inotify watch for all agents) and
//! wakes each agent's shipper, which reads new lines, parses their level,
//! rate-limits them, publishes them to `OPMAS_LOGS` and rotates the files.
//!
//! Rotation is copy-then-truncate (the agent keeps its descriptor, opened
//! with `O_APPEND`, so it goes on writing at the new end): `stdout.log` →
//! `stdout.log.1` → ... → `stdout.log.<count>`. Bytes written between the
//! shipper's last read and the truncation are lost from the files (they are
//! not lost from `OPMAS_LOGS` unless the window is hit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use notify::{RecursiveMode, Watcher};
use opmas_domain::telemetry::{LogLevel, LogLine, LogStream};
use opmas_store::TelemetrySettings;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Settings of log shipping.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Rotate a file once it is larger than this.
    pub max_file_bytes: u64,
    /// Rotated files kept per stream.
    pub max_files: u32,
    /// Lines per second an agent may publish (token bucket refill).
    pub rate_per_sec: u32,
    /// Burst above the rate.
    pub burst: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 5,
            rate_per_sec: 1_000,
            burst: 5_000,
        }
    }
}

/// How often a shipper looks at its files without being woken.
const SAFETY_POLL: Duration = Duration::from_secs(60);

/// Longest line published; longer lines are cut.
pub const MAX_LINE: usize = 16 * 1024;

type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<()>>>>;

/// Watches the log directory and wakes shippers.
#[derive(Clone)]
pub struct LogHub {
    dir: PathBuf,
    node: String,
    settings: LogSettings,
    telemetry: TelemetrySettings,
    client: async_nats::Client,
    routes: Routes,
    _watcher: Arc<Mutex<Option<notify::RecommendedWatcher>>>,
}

impl LogHub {
    /// Starts watching `dir` (created if missing). Without inotify the
    /// shippers still run on their periodic check.
    pub fn new(
        dir: &Path,
        node: &str,
        settings: LogSettings,
        telemetry: TelemetrySettings,
        client: async_nats::Client,
    ) -> Self {
        let routes: Routes = Arc::default();
        let _ = std::fs::create_dir_all(dir);
        let watcher = {
            let routes = routes.clone();
            let base = dir.to_path_buf();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                // Only writes matter: reacting to the shipper's own reads
                // (access events) made each read wake the next, forever.
                if !matches!(
                    event.kind,
                    notify::EventKind::Modify(_) | notify::EventKind::Create(_)
                ) {
                    return;
                }
                for path in event.paths {
                    let agent = path
                        .strip_prefix(&base)
                        .ok()
                        .and_then(|p| p.components().next())
                        .map(|c| c.as_os_str().to_string_lossy().to_string());
                    if let Some(agent) = agent
                        && let Ok(routes) = routes.lock()
                        && let Some(tx) = routes.get(&agent)
                    {
                        let _ = tx.try_send(());
                    }
                }
            })
            .and_then(|mut w| w.watch(dir, RecursiveMode::Recursive).map(|()| w))
        };
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(err) => {
                warn!(error = %err, "no inotify watch on the log directory; checking periodically");
                None
            }
        };
        Self {
            dir: dir.to_path_buf(),
            node: node.to_string(),
            settings,
            telemetry,
            client,
            routes,
            _watcher: Arc::new(Mutex::new(watcher)),
        }
    }

    /// Starts the shipper of `agent_id` unless it runs already; `pid` is the
    /// agent's current process (the worker updates it). `from` are the byte
    /// offsets to start at in stdout and stderr (the sizes before a spawn;
    /// `None`: the current ends, for an adopted process).
    pub fn ship(
        &self,
        agent_id: &str,
        pid: Arc<AtomicU32>,
        from: Option<[u64; 2]>,
        cancel: CancellationToken,
    ) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        if routes.contains_key(agent_id) {
            return;
        }
        let (tx, rx) = mpsc::channel(1);
        routes.insert(agent_id.to_string(), tx);
        let shipper = Shipper {
            agent_id: agent_id.to_string(),
            hub: self.clone(),
            bucket: Bucket::new(self.settings.rate_per_sec, self.settings.burst),
            pid,
        };
        tokio::spawn(shipper.run(rx, from, cancel));
    }

    /// Current sizes of an agent's stdout and stderr files.
    pub fn sizes(&self, agent_id: &str) -> [u64; 2] {
        [LogStream::Stdout, LogStream::Stderr].map(|stream| {
            std::fs::metadata(self.file(agent_id, stream))
                .map(|m| m.len())
                .unwrap_or(0)
        })
    }

    /// The file an agent's stream is written to.
    pub fn file(&self, agent_id: &str, stream: LogStream) -> PathBuf {
        let name = match stream {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        };
        self.dir.join(agent_id).join(name)
    }
}

struct Shipper {
    agent_id: String,
    hub: LogHub,
    bucket: Bucket,
    pid: Arc<AtomicU32>,
}

struct Tail {
    stream: LogStream,
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Shipper {
    async fn run(
        mut self,
        mut wake: mpsc::Receiver<()>,
        from: Option<[u64; 2]>,
        cancel: CancellationToken,
    ) {
        // For an adopted process, lines written while no supervisor watched
        // were shipped (or not) by the one before: start at the current end.
        let from = from.unwrap_or_else(|| self.hub.sizes(&self.agent_id));
        let mut tails =
            [(LogStream::Stdout, from[0]), (LogStream::Stderr, from[1])].map(|(stream, offset)| {
                Tail {
                    stream,
                    path: self.hub.file(&self.agent_id, stream),
                    offset,
                    partial: Vec::new(),
                }
            });
        loop {
            for tail in &mut tails {
                if let Err(err) = self.read(tail).await {
                    debug!(agent_id = %self.agent_id, error = %err, "log read failed");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                w = wake.recv() => if w.is_none() { return },
                // Safety net only: inotify wakes the shipper on every write.
                () = tokio::time::sleep(SAFETY_POLL) => {}
            }
        }
    }

    async fn read(&mut self, tail: &mut Tail) -> std::io::Result<()> {
        // One blocking-pool hop for the whole read (tokio::fs would take four).
        let (path, offset) = (tail.path.clone(), tail.offset);
        let read = tokio::task::spawn_blocking(move || read_from(&path, offset))
            .await
            .map_err(std::io::Error::other)??;
        let Some((start_offset, buf)) = read else {
            return Ok(());
        };
        tail.offset = start_offset;
        tail.offset += buf.len() as u64;
        let mut start = 0;
        for i in 0..buf.len() {
            if buf[i] == b'\n' {
                tail.partial.extend_from_slice(&buf[start..i]);
                let line = std::mem::take(&mut tail.partial);
                self.publish(tail.stream, &line).await;
                start = i + 1;
            }
        }
        tail.partial.extend_from_slice(&buf[start..]);
        if tail.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut tail.partial);
            self.publish(tail.stream, &line).await;
        }
        if tail.offset > self.hub.settings.max_file_bytes {
            rotate(&tail.path, self.hub.settings.max_files)?;
            tail.offset = 0;
        }
        Ok(())
    }

    async fn publish(&mut self, stream: LogStream, raw: &[u8]) {
        let Some(dropped_before) = self.bucket.take() else {
            return;
        };
        let mut line = String::from_utf8_lossy(&raw[..raw.len().min(MAX_LINE)]).to_string();
        if line.ends_with('\r') {
            line.pop();
        }
        let level = parse_level(&line).unwrap_or(match stream {
            LogStream::Stdout => LogLevel::Info,
            LogStream::Stderr => LogLevel::Warn,
        });
        let msg = LogLine {
            agent_id: self.agent_id.clone(),
            node: self.hub.node.clone(),
            pid: self.pid.load(Ordering::Relaxed),
            at: Utc::now(),
            stream,
            level,
            line,
            dropped_before,
        };
        let subject = self
            .hub
            .telemetry
            .logs_subject(&self.agent_id, level.as_str());
        if let Ok(body) = serde_json::to_vec(&msg) {
            // Core publish: the stream captures it; logs are telemetry, the
            // files keep the durable copy.
            let _ = self.hub.client.publish(subject, body.into()).await;
        }
    }
}

/// Bytes of `path` from `offset` (from 0 if the file shrank: rotated), at
/// most 4 MiB; `None` if the file does not exist. Returns the offset read
/// from and the bytes.
fn read_from(path: &Path, offset: u64) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    use std::io::{Read, Seek};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let len = file.metadata()?.len();
    let offset = if len < offset { 0 } else { offset };
    if len == offset {
        return Ok(Some((offset, Vec::new())));
    }
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity((len - offset).min(1 << 20) as usize);
    file.take(4 << 20).read_to_end(&mut buf)?;
    Ok(Some((offset, buf)))
}

/// `path` → `path.1` → ... → `path.<count>` (copy, then truncate `path`).
pub fn rotate(path: &Path, count: u32) -> std::io::Result<()> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if count == 0 {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(0);
    }
    let _ = std::fs::remove_file(numbered(count));
    for n in (1..count).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    std::fs::copy(path, numbered(1))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)
}

/// Level of a line: a JSON object's `level`/`severity`/`lvl`, a logfmt
/// `level=`, or a level word among the first tokens (`ERROR`, `[warn]`,
/// `INFO:`).
pub fn parse_level(line: &str) -> Option<LogLevel> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{')
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(trimmed)
    {
        for key in ["level", "severity", "lvl", "log.level"] {
            if let Some(level) = map
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(LogLevel::parse)
            {
                return Some(level);
            }
        }
        return None;
    }
    for token in trimmed.split_whitespace().take(4) {
        let token = token.strip_prefix("level=").unwrap_or(token);
        let word = token.trim_matches(|c: char| !c.is_ascii_alphabetic());
        if let Some(level) = LogLevel::parse(word) {
            return Some(level);
        }
    }
    None
}

/// Token bucket: `take` answers how many lines were dropped before this one,
/// or `None` if this one is dropped too.
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Takes one token.
    pub fn take(&mut self) -> Option<u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn levels_from_json_logfmt_and_prefixes() {
        assert_eq!(
            parse_level(r#"{"level":"WARN","msg":"x"}"#),
            Some(LogLevel::Warn)
        );
        assert_eq!(
            parse_level(r#"{"severity":"error"}"#),
            Some(LogLevel::Error)
        );
        assert_eq!(parse_level(r#"{"msg":"no level"}"#), None);
        assert_eq!(
            parse_level("ts=1 level=debug msg=hi"),
            Some(LogLevel::Debug)
        );
        assert_eq!(parse_level("ERROR: disk full"), Some(LogLevel::Error));
        assert_eq!(parse_level("[warning] slow"), Some(LogLevel::Warn));
        assert_eq!(
            parse_level("2026-11-24T06:00:00Z INFO started"),
            Some(LogLevel::Info)
        );
        assert_eq!(parse_level("just text"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_counts_drops_and_refills() {
        let mut b = Bucket::new(10, 2);
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.take(), Some(2), "the next line reports the two dropped");
        assert_eq!(b.take(), None);
    }

    #[test]
    fn rotation_keeps_count_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        for n in 1..=4 {
            std::fs::write(&path, format!("generation {n}\n")).unwrap();
            rotate(&path, 2).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        }
        let one = std::fs::read_to_string(dir.path().join("stdout.log.1")).unwrap();
        let two = std::fs::read_to_string(dir.path().join("stdout.log.2")).unwrap();
        assert_eq!(
            (one.as_str(), two.as_str()),
            ("generation 4\n", "generation 3\n")
        );
        assert!(!dir.path().join("stdout.log.3").exists());
    }
}
