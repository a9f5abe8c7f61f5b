//! [`Proc`]: one running agent process, spawned here or adopted, and the
//! future that resolves when it exits (a child's `wait`, or a pidfd for an
//! adopted process; never polling).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use nix::sys::signal::Signal;
use opmas_domain::{AgentSpec, ProcessIdentity};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::warn;

use crate::spawn::{Launch, SpawnError};
use crate::{Config, identity, signal};

/// How a process ended. Both `None` when unknown (an adopted process: its
/// exit status went to its new parent, not to us).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if it was killed.
    pub signal: Option<i32>,
}

impl Exit {
    /// An exit whose status we cannot know.
    pub fn unknown() -> Self {
        Self {
            code: None,
            signal: None,
        }
    }
}

/// Writes the agent's config to `<dir>/config.json` (mode 0600: it may hold
/// secrets), atomically, and returns the path.
pub(crate) fn write_config_file(
    dir: &std::path::Path,
    config: &serde_json::Value,
) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("config.json");
    let text = config.to_string();
    match std::fs::read(&path) {
        // A restart loop gives the same config again: no write then.
        Ok(old) if old == text.as_bytes() => return Ok(path),
        Ok(_) => {}
        // A first start: no reader can have the file open, so it is
        // written in place (one file made, not a temporary and a rename;
        // a write cut short is replaced at the next start, as it differs).
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(text.as_bytes())?;
            return Ok(path);
        }
        Err(_) => {} // unreadable: replaced below
    }
    let tmp = dir.join(".config.json.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// `spec` with its sealed secrets opened with the supervisor's key.
pub(crate) fn open_spec(
    agent_id: &str,
    spec: &AgentSpec,
    config: &Config,
) -> Result<AgentSpec, SpawnError> {
    opmas_domain::secret::open_spec(config.secret_key.as_deref(), spec).map_err(|source| {
        SpawnError::Secrets {
            agent: agent_id.to_owned(),
            source,
        }
    })
}

/// A live agent process this supervisor is responsible for.
pub(crate) struct Proc {
    pub identity: ProcessIdentity,
    exit: oneshot::Receiver<Exit>,
    kill_at: Option<Instant>,
    killed: bool,
}

impl Proc {
    /// Spawns the agent's process (see [`crate::spawn`]) from its spec as
    /// stored: sealed secrets are opened here, for the process only.
    pub fn spawn(
        agent_id: &str,
        spec: &AgentSpec,
        config: &Config,
        cgroups: Option<&crate::cgroup::Cgroups>,
    ) -> Result<Self, SpawnError> {
        let spec = &open_spec(agent_id, spec, config)?;
        let dir = config.log_dir.join(agent_id);
        let open = |name: &str| {
            std::fs::create_dir_all(&dir)?;
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
        };
        let io_err = |source| SpawnError::Exec {
            program: spec.command.clone(),
            source,
        };
        let stdout = open("stdout.log").map_err(io_err)?;
        let stderr = open("stderr.log").map_err(io_err)?;
        let opmas_env = BTreeMap::from([
            ("NATS_URL".to_string(), config.nats_url.clone()),
            (
                "MANAGEMENT_API_URL".to_string(),
                config.management_api_url.clone(),
            ),
            (
                "HEARTBEAT_INTERVAL".to_string(),
                format!("{}", spec.heartbeat.interval_ms as f64 / 1000.0),
            ),
            ("LOG_LEVEL".to_string(), config.agent_log_level.clone()),
            (
                "METRICS_ENABLED".to_string(),
                config.metrics_enabled.to_string(),
            ),
            ("OPMAS_NODE".to_string(), config.node.clone()),
            (
                "OPMAS_CONTROL_SUBJECT".to_string(),
                format!("{}.{agent_id}", config.control_prefix),
            ),
            (
                "OPMAS_HEARTBEAT_SUBJECT".to_string(),
                format!("{}.{agent_id}", config.heartbeat_prefix),
            ),
            // The agent's own configuration as JSON (the SDK reads it), and
            // a file with it that is rewritten before each SIGHUP reload.
            ("OPMAS_AGENT_CONFIG".to_string(), spec.config.to_string()),
            (
                "OPMAS_AGENT_CONFIG_FILE".to_string(),
                write_config_file(&dir, &spec.config)
                    .map_err(io_err)?
                    .display()
                    .to_string(),
            ),
        ]);
        let cgroup = cgroups
            .map(|c| {
                c.prepare(agent_id, spec)
                    .map_err(|source| SpawnError::Cgroup {
                        path: c.path(agent_id).display().to_string(),
                        source,
                    })
            })
            .transpose()?;
        let mut child = crate::spawn::spawn(Launch {
            agent_id,
            spec,
            opmas_env,
            stdout,
            stderr,
            cgroup,
        })?;
        let pid = child.id().unwrap_or_default();
        let identity = identity::identify(pid).unwrap_or(ProcessIdentity {
            pid,
            boot_id: identity::boot_id().unwrap_or_default(),
            start_time_ticks: 0,
        });
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit {
                    code: status.code(),
                    signal: status.signal(),
                },
                Err(err) => {
                    warn!(pid, error = %err, "wait failed");
                    Exit::unknown()
                }
            };
            let _ = tx.send(exit);
        });
        Ok(Self {
            identity,
            exit: rx,
            kill_at: None,
            killed: false,
        })
    }

    /// Watches a process left running by an earlier supervisor.
    pub fn adopt(identity: ProcessIdentity) -> Self {
        let (tx, rx) = oneshot::channel();
        let pid = identity.pid;
        tokio::spawn(async move {
            if let Err(err) = signal::wait_exit(pid).await {
                warn!(pid, error = %err, "cannot watch adopted process");
            }
            let _ = tx.send(Exit::unknown());
        });
        Self {
            identity,
            exit: rx,
            kill_at: None,
            killed: false,
        }
    }

    /// Resolves when the process in `proc` exits; never, if there is none.
    pub async fn exited(proc: &mut Option<Proc>) -> Exit {
        match proc {
            Some(p) => (&mut p.exit).await.unwrap_or_else(|_| Exit::unknown()),
            None => std::future::pending().await,
        }
    }

    /// A stop has been asked.
    pub fn stopping(&self) -> bool {
        self.kill_at.is_some()
    }

    /// Sends `signal` to the process group; after `grace`,
    /// [`Proc::kill_if_overdue`] sends SIGKILL.
    pub fn begin_stop(&mut self, grace: Duration, signal: Signal) {
        if self.kill_at.is_none() {
            let _ = signal::group(self.identity.pid, signal);
            self.kill_at = Some(Instant::now() + grace);
        }
        self.kill_if_overdue();
    }

    /// Starts the grace period without a signal (the agent was asked to stop
    /// otherwise); SIGKILL follows as for [`Proc::begin_stop`].
    pub fn begin_quiet_stop(&mut self, grace: Duration) {
        if self.kill_at.is_none() {
            self.kill_at = Some(Instant::now() + grace);
        }
    }

    /// SIGKILL to the group once the grace period is over.
    pub fn kill_if_overdue(&mut self) {
        if !self.killed && self.kill_at.is_some_and(|at| at <= Instant::now()) {
            let _ = signal::group(self.identity.pid, Signal::SIGKILL);
            self.killed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::write_config_file;

    /// First write in place (mode 0600), the same config again leaves the
    /// file alone, a new one replaces it atomically (a new inode: a reader
    /// holding the old file keeps reading the old text whole).
    #[test]
    fn config_file_is_written_once_then_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        let path = write_config_file(&agent, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"a":1}"#);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        write_config_file(&agent, &serde_json::json!({"a": 1})).unwrap();
        let same = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (same.ino(), same.mtime_nsec()),
            (meta.ino(), meta.mtime_nsec())
        );

        let held = std::fs::File::open(&path).unwrap();
        write_config_file(&agent, &serde_json::json!({"a": 2})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"a":2}"#);
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), meta.ino());
        assert_eq!(std::io::read_to_string(held).unwrap(), r#"{"a":1}"#);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!agent.join(".config.json.tmp").exists());
    }
}
