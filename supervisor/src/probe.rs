//! Health probes for agents whose spec checks health by `exec`, `http` or
//! `tcp` (the `heartbeat` kind follows the heartbeats instead). One task per
//! running process: a probe every `interval`, each bounded by `timeout`;
//! `failure_threshold` failures in a row make the agent critical, one
//! success makes it healthy. Only changes are sent, so each becomes one
//! `HealthChanged` event.

use std::time::Duration;

use opmas_domain::{HealthCheck, HealthCheckSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A change of the probed health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeChange {
    /// A probe succeeded (after failures, or for the first time).
    Healthy(String),
    /// `failure_threshold` probes in a row failed; the last one's reason.
    Critical(String),
}

/// Starts probing; stops when `cancel` fires or the receiver is dropped.
pub fn spawn(
    spec: HealthCheckSpec,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    cancel: CancellationToken,
) -> mpsc::Receiver<ProbeChange> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let interval = Duration::from_millis(spec.interval_ms.max(10));
        let timeout = Duration::from_millis(spec.timeout_ms.max(10));
        let threshold = spec.failure_threshold.max(1);
        let mut failures = 0u32;
        let mut state: Option<bool> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let outcome = match tokio::time::timeout(
                timeout,
                probe(&spec.check, &env, working_dir.as_deref()),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            let change = match outcome {
                Ok(what) => {
                    failures = 0;
                    (state != Some(true)).then(|| {
                        state = Some(true);
                        ProbeChange::Healthy(what)
                    })
                }
                Err(why) => {
                    failures = failures.saturating_add(1);
                    (failures >= threshold && state != Some(false)).then(|| {
                        state = Some(false);
                        ProbeChange::Critical(format!(
                            "{failures} health checks failed in a row: {why}"
                        ))
                    })
                }
            };
            if let Some(change) = change
                && tx.send(change).await.is_err()
            {
                return;
            }
        }
    });
    rx
}

/// One probe: `Ok(what succeeded)` or `Err(why it failed)`.
async fn probe(
    check: &HealthCheck,
    env: &[(String, String)],
    working_dir: Option<&str>,
) -> Result<String, String> {
    match check {
        HealthCheck::Heartbeat => Ok("heartbeat".into()),
        HealthCheck::Exec { command, args } => {
            let mut cmd = tokio::process::Command::new(command);
            if let Some(dir) = working_dir {
                cmd.current_dir(dir);
            }
            let status = cmd
                .args(args)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("`{command}` could not run: {e}"))?;
            if status.success() {
                Ok(format!("`{command}` succeeded"))
            } else {
                Err(format!("`{command}` exited with {status}"))
            }
        }
        HealthCheck::Tcp { host, port } => tokio::net::TcpStream::connect((host.as_str(), *port))
            .await
            .map(|_| format!("{host}:{port} accepts connections"))
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}")),
        HealthCheck::Http { url } => http_get(url).await,
    }
}

/// GET over plain HTTP/1.0; a 2xx status is healthy.
async fn http_get(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}`: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: opmas-supervisor\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if n == 0 || head[..read + n].contains(&b'\n') {
            read += n;
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    if (200..300).contains(&status) {
        Ok(format!("{url} answered {status}"))
    } else {
        Err(format!("{url} answered {status}"))
    }
}
