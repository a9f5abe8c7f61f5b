//! `opmas-log-watcher`: follows a log file (by default `/var/log/auth.log`)
//! and reports security findings, as OPMAS's security agent did: failed
//! SSH logins, invalid users, sudo authentication failures, and a brute
//! force finding when one source address fails `brute_force_threshold`
//! times. Each finding is published as JSON on `findings_subject`, counted
//! in the custom metric `findings_total{rule}` and logged as a warning.
//!
//! Configuration (JSON object, reloadable without a restart):
//! `path`, `findings_subject` (default `opmas.findings.<agent_id>`),
//! `poll_ms` (500), `from_start` (false: only lines written after start),
//! `brute_force_threshold` (5).

use std::collections::HashMap;
use std::time::Duration;

use opmas_sdk::{Agent, Handle, Level};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    path: String,
    findings_subject: Option<String>,
    poll_ms: u64,
    from_start: bool,
    brute_force_threshold: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            path: "/var/log/auth.log".into(),
            findings_subject: None,
            poll_ms: 500,
            from_start: false,
            brute_force_threshold: 5,
        }
    }
}

fn parse_config(value: &serde_json::Value) -> Result<Config, String> {
    let config: Config = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if config.poll_ms == 0 || config.brute_force_threshold == 0 {
        return Err("poll_ms and brute_force_threshold must be at least 1".into());
    }
    if let Some(subject) = &config.findings_subject
        && !publishable(subject)
    {
        return Err(format!(
            "findings_subject `{subject}` is not a subject to publish on (dot-separated tokens, no spaces or wildcards)"
        ));
    }
    Ok(config)
}

/// A NATS subject a message can be published on.
fn publishable(subject: &str) -> bool {
    subject.split('.').all(|token| {
        !token.is_empty() && !token.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
    })
}

/// One thing worth a security person's attention.
#[derive(Debug, Clone, Serialize)]
struct Finding {
    agent_id: String,
    rule: &'static str,
    severity: &'static str,
    user: Option<String>,
    source_ip: Option<String>,
    line: String,
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            1
        }
    };
    std::process::exit(code);
}

async fn run() -> Result<i32, opmas_sdk::Error> {
    let agent = Agent::from_env()
        .await?
        .on_reload(|value| parse_config(value).map(|_| ()));
    let config = parse_config(&agent.handle().config()).map_err(opmas_sdk::Error::Config)?;
    let outcome = agent.run(|handle| watch(handle, config)).await?;
    Ok(outcome.exit_code())
}

/// Follows the file until the agent is stopped.
async fn watch(handle: Handle, mut config: Config) -> Result<(), opmas_sdk::Error> {
    let mut updates = handle.config_updates();
    let mut rules = Rules::default();
    let mut offset = None;
    let mut partial = Vec::new();
    let mut failing: Option<String> = None;
    handle.log(Level::Info, "watching", json!({"path": config.path}));
    loop {
        let found = match read_new(&config, &mut offset, &mut partial).await {
            Ok(lines) => {
                if failing.take().is_some() {
                    handle.set_status(None);
                    handle.log(Level::Info, "reading again", json!({"path": config.path}));
                }
                lines
                    .iter()
                    .flat_map(|l| rules.check(l, config.brute_force_threshold))
                    .collect()
            }
            Err(err) => {
                // Said once per distinct error, not at every poll.
                let error = err.to_string();
                if failing.as_ref() != Some(&error) {
                    handle.set_status(Some("cannot read log"));
                    handle.log(
                        Level::Warn,
                        "cannot read",
                        json!({"path": config.path, "error": error}),
                    );
                    failing = Some(error);
                }
                Vec::new()
            }
        };
        for finding in found {
            report(&handle, &config, finding).await?;
        }
        tokio::select! {
            () = handle.stopped() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(config.poll_ms)) => {}
            Ok(()) = updates.changed() => {
                let new = parse_config(&updates.borrow_and_update()).map_err(opmas_sdk::Error::Config)?;
                if new.path != config.path {
                    offset = None;
                    partial.clear();
                }
                handle.log(Level::Info, "configuration reloaded", json!({"path": new.path}));
                config = new;
            }
        }
    }
}

async fn report(
    handle: &Handle,
    config: &Config,
    mut finding: Finding,
) -> Result<(), opmas_sdk::Error> {
    finding.agent_id = handle.agent_id().to_string();
    let subject = config
        .findings_subject
        .clone()
        .unwrap_or_else(|| format!("opmas.findings.{}", handle.agent_id()));
    handle.publish_json(subject, &finding).await?;
    handle
        .metric("findings_total", 1.0, &[("rule", finding.rule)])
        .await?;
    handle.log(
        Level::Warn,
        "finding",
        json!({"rule": finding.rule, "user": finding.user, "source_ip": finding.source_ip}),
    );
    Ok(())
}

/// Complete lines written since the last read. The first read starts at the
/// end of the file unless `from_start`; a file that shrank (rotated or
/// truncated) is read again from its start.
async fn read_new(
    config: &Config,
    offset: &mut Option<u64>,
    partial: &mut Vec<u8>,
) -> std::io::Result<Vec<String>> {
    let mut file = tokio::fs::File::open(&config.path).await?;
    let len = file.metadata().await?.len();
    let start = match *offset {
        None if !config.from_start => len,
        Some(at) if at <= len => at,
        _ => {
            partial.clear();
            0
        }
    };
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes).await?;
    *offset = Some(start + bytes.len() as u64);
    partial.extend_from_slice(&bytes);
    let Some(last) = partial.iter().rposition(|b| *b == b'\n') else {
        return Ok(Vec::new());
    };
    let rest = partial.split_off(last + 1);
    let lines = String::from_utf8_lossy(partial)
        .lines()
        .map(str::to_string)
        .collect();
    *partial = rest;
    Ok(lines)
}

/// The detection rules, with the failure counts per source address.
#[derive(Default)]
struct Rules {
    failures: HashMap<String, u32>,
}

impl Rules {
    fn check(&mut self, line: &str, threshold: u32) -> Vec<Finding> {
        let finding = |rule, severity, user, source_ip| Finding {
            agent_id: String::new(),
            rule,
            severity,
            user,
            source_ip,
            line: line.to_string(),
        };
        let mut out = Vec::new();
        if let Some(rest) = after(line, "Failed password for ") {
            let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
            let (user, ip) = (word(rest), after(rest, " from ").and_then(word));
            out.push(finding("ssh_failed_password", "warning", user, ip.clone()));
            if let Some(ip) = ip {
                let count = self.failures.entry(ip.clone()).or_default();
                *count += 1;
                if *count == threshold {
                    out.push(finding("ssh_brute_force", "critical", None, Some(ip)));
                }
            }
        } else if let Some(rest) = after(line, "Invalid user ") {
            let ip = after(rest, " from ").and_then(word);
            out.push(finding("ssh_invalid_user", "warning", word(rest), ip));
        } else if line.contains("sudo") && line.contains("authentication failure") {
            let user = after(line, " user=").and_then(word);
            out.push(finding("sudo_auth_failure", "warning", user, None));
        }
        out
    }
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

fn word(s: &str) -> Option<String> {
    s.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_find_ssh_failures_invalid_users_sudo_and_brute_force() {
        let mut rules = Rules::default();
        let failed = "Nov 29 00:01:02 host sshd[42]: Failed password for invalid user admin from 203.0.113.9 port 4242 ssh2";
        let first = rules.check(failed, 2);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].rule, "ssh_failed_password");
        assert_eq!(first[0].user.as_deref(), Some("admin"));
        assert_eq!(first[0].source_ip.as_deref(), Some("203.0.113.9"));
        let second = rules.check(failed, 2);
        assert_eq!(
            second.iter().map(|f| f.rule).collect::<Vec<_>>(),
            ["ssh_failed_password", "ssh_brute_force"]
        );
        assert_eq!(
            rules.check(failed, 2).len(),
            1,
            "brute force is reported once"
        );

        let invalid = rules.check("sshd[7]: Invalid user oracle from 198.51.100.4 port 22", 5);
        assert_eq!(invalid[0].rule, "ssh_invalid_user");
        assert_eq!(invalid[0].user.as_deref(), Some("oracle"));
        let sudo = rules.check(
            "sudo: pam_unix(sudo:auth): authentication failure; logname= uid=1000 euid=0 tty=/dev/pts/0 ruser=bob rhost=  user=bob",
            5,
        );
        assert_eq!(sudo[0].rule, "sudo_auth_failure");
        assert_eq!(sudo[0].user.as_deref(), Some("bob"));
        assert!(
            rules
                .check("sshd[7]: Accepted publickey for bob", 5)
                .is_empty()
        );
    }

    #[test]
    fn config_defaults_and_rejections() {
        assert_eq!(parse_config(&json!({})), Ok(Config::default()));
        assert!(parse_config(&json!({"poll_ms": 0})).is_err());
        assert!(parse_config(&json!({"pth": "/x"})).is_err());
    }
}
