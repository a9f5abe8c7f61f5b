//! Each example package (`examples/agents/<name>`, loaded as discovery
//! loads it) under the real supervisor, with real processes, a real
//! Postgres and nats-server: the SDK agents get their configuration from
//! the package, send heartbeats the supervisor sees (their health turns
//! healthy), answer control requests and stop gracefully on SIGTERM; the
//! shell agent is healthy by its exec check and recovered when it hangs;
//! the flaky agent crashes or hangs and is brought back.
#![allow(clippy::unwrap_used)]

mod harness;

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;

use harness::*;
use opmas_domain::telemetry::{Heartbeat, LogLevel, LogLine};
use opmas_domain::{
    Agent, AgentCommand, AgentError, AgentEvent, Health, ProcessStatus, RecoveryStatus,
    RestartDecision,
};
use opmas_sdk::Metric;
use opmas_store::CommandError;
use serde_json::{Value, json};

const LOG_WATCHER: &str = env!("CARGO_BIN_EXE_opmas-log-watcher");
const HOST_HEALTH: &str = env!("CARGO_BIN_EXE_opmas-host-health");
const FLAKY: &str = env!("CARGO_BIN_EXE_opmas-flaky");

fn append(path: &std::path::Path, line: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(file, "{line}").unwrap();
}

/// Waits for `n` heartbeats of `id` and checks they are the SDK's.
async fn beats(sub: &mut async_nats::Subscriber, id: &str, n: usize) -> Vec<Heartbeat> {
    let mut out = Vec::new();
    for _ in 0..n {
        let beat: Heartbeat = next(sub, "heartbeat").await;
        assert_eq!(beat.agent_id, id);
        out.push(beat);
    }
    out
}

/// Running and healthy: the supervisor saw heartbeats (SDK agents) or a
/// passing health check (the shell agent).
fn healthy(a: &Agent) -> bool {
    a.status == ProcessStatus::Running && a.health == Health::Healthy
}

/// Stops `id` and checks that its process exited by itself with code 0
/// (it handled SIGTERM; a kill would show as a signal).
async fn stop_gracefully(h: &Harness, id: &str, pid: u32) {
    h.command(id, AgentCommand::Stop).await;
    h.wait_for(id, "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    assert_eq!(
        exit_of(&h.events(id).await, pid),
        Some((Some(0), None)),
        "{id} did not exit cleanly"
    );
    assert!(!alive(pid));
}

/// `id` was recovered from a hang: `cause` is among its events, a recovery
/// was triggered, and the hung process `pid` is gone.
async fn assert_recovered_from(
    h: &Harness,
    id: &str,
    pid: u32,
    cause: impl Fn(&AgentEvent) -> bool,
) {
    let events = h.events(id).await;
    assert!(events.iter().any(cause), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AgentEvent::RecoveryTriggered { .. })),
        "{events:?}"
    );
    assert!(!alive(pid), "the hung process was replaced");
}

/// The log watcher reads its configuration from the spec, reports findings
/// of the file's existing and new lines on NATS, as metrics and as warning
/// log lines shipped to OPMAS_LOGS; a reload over the control subject
/// changes where findings go without restarting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_watcher_reports_findings_and_reloads_without_restart() {
    let h = Harness::start().await;
    let id = format!("log-watcher-{}", h.tag);
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.log");
    std::fs::write(
        &auth,
        "Nov 29 00:00:01 host sshd[1]: Accepted publickey for alice from 10.0.0.2 port 1 ssh2\n\
         Nov 29 00:00:02 host sshd[2]: Failed password for root from 203.0.113.7 port 2 ssh2\n",
    )
    .unwrap();
    let findings = format!("{}.findings", h.tag);
    let mut found = h.subscribe(findings.clone()).await;
    let mut metrics = h.subscribe(format!("opmas.agent_metrics.{id}")).await;
    let mut warnings = h.subscribe(h.telemetry.logs_subject(&id, "warn")).await;
    let mut heartbeats = h.heartbeats(&id).await;
    let (_package, spec) = package(
        "log-watcher",
        Some(LOG_WATCHER),
        &[
            ("path", json!(auth.to_str().unwrap())),
            ("findings_subject", json!(findings)),
            ("from_start", json!(true)),
            ("poll_ms", json!(100)),
            ("brute_force_threshold", json!(2)),
        ],
    );
    h.start_agent(&id, spec).await;
    let pid = h.wait_for(&id, "healthy", healthy).await.pid.unwrap();
    beats(&mut heartbeats, &id, 2).await;

    let first: Value = next(&mut found, "finding").await;
    assert_eq!(first["rule"], "ssh_failed_password");
    assert_eq!(
        (first["user"].as_str(), first["source_ip"].as_str()),
        (Some("root"), Some("203.0.113.7"))
    );
    assert_eq!(first["agent_id"], id.as_str());
    let metric: Metric = next(&mut metrics, "metric").await;
    assert_eq!(
        (metric.name.as_str(), metric.value),
        ("findings_total", 1.0)
    );
    assert_eq!(metric.labels["rule"], "ssh_failed_password");
    let shipped: LogLine = next(&mut warnings, "shipped warning").await;
    assert_eq!(shipped.level, LogLevel::Warn);
    let line: Value = serde_json::from_str(&shipped.line).unwrap();
    assert_eq!(
        (line["msg"].as_str(), line["rule"].as_str()),
        (Some("finding"), Some("ssh_failed_password"))
    );

    // A second failure from the same address: a failed login and brute force.
    append(
        &auth,
        "Nov 29 00:00:03 host sshd[3]: Failed password for invalid user admin from 203.0.113.7 port 3 ssh2",
    );
    let second: Value = next(&mut found, "finding").await;
    let third: Value = next(&mut found, "finding").await;
    assert_eq!(
        (second["rule"].as_str(), second["user"].as_str()),
        (Some("ssh_failed_password"), Some("admin"))
    );
    assert_eq!(
        (third["rule"].as_str(), third["severity"].as_str()),
        (Some("ssh_brute_force"), Some("critical"))
    );

    // Reload: findings go to another subject; same process.
    let elsewhere = format!("{}.findings2", h.tag);
    let mut moved = h.subscribe(elsewhere.clone()).await;
    let mut new_config = h.agent(&id).await.spec.unwrap().config;
    new_config["findings_subject"] = json!(elsewhere);
    let reply = h
        .control(&id, json!({"action": "reload", "config": new_config}))
        .await;
    assert!(reply.ok, "{reply:?}");
    let refused = h
        .control(&id, json!({"action": "reload", "config": {"poll_ms": 0}}))
        .await;
    assert!(!refused.ok, "a bad config was accepted");
    append(
        &auth,
        "Nov 29 00:00:04 host sshd[4]: Invalid user oracle from 198.51.100.4 port 4",
    );
    let after: Value = next(&mut moved, "finding after reload").await;
    assert_eq!(
        (after["rule"].as_str(), after["user"].as_str()),
        (Some("ssh_invalid_user"), Some("oracle"))
    );
    assert_eq!(
        h.agent(&id).await.pid,
        Some(pid),
        "reload restarted the agent"
    );
    let pong = h.control(&id, json!({"action": "ping"})).await;
    assert!(pong.ok);

    // A config update through the event store reaches the running agent:
    // the supervisor sends it in a reload control request. Same process.
    let third_subject = format!("{}.findings3", h.tag);
    let mut third_sub = h.subscribe(third_subject.clone()).await;
    let current = h.agent(&id).await;
    let mut updated = current.spec.clone().unwrap().config;
    updated["findings_subject"] = json!(third_subject);
    h.command(
        &id,
        AgentCommand::UpdateConfig {
            expected_version: current.config_version,
            config: updated.clone(),
        },
    )
    .await;
    // Findings go to the new subject once the reload is through; keep
    // appending until one arrives there.
    let arrived = tokio::time::timeout(Duration::from_secs(15), async {
        let mut n = 10;
        loop {
            n += 1;
            append(
                &auth,
                &format!("Nov 29 00:00:{n} host sshd[{n}]: Invalid user u{n} from 198.51.100.{n} port {n}"),
            );
            if let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(500), third_sub.next()).await
            {
                break serde_json::from_slice::<Value>(&msg.payload).unwrap();
            }
        }
    })
    .await
    .expect("the updated config never reached the agent");
    assert_eq!(arrived["rule"], "ssh_invalid_user");
    assert_eq!(
        h.agent(&id).await.pid,
        Some(pid),
        "the config update restarted the agent"
    );
    // A config the package's schema refuses never reaches the agent.
    let current = h.agent(&id).await;
    let mut bad = updated.clone();
    bad["poll_ms"] = json!(0);
    let update = |config| AgentCommand::UpdateConfig {
        expected_version: current.config_version,
        config,
    };
    let refused = h.try_command(&id, update(bad)).await;
    assert!(
        matches!(&refused, Err(CommandError::Rejected(AgentError::Validation { field, .. })) if field == "config.poll_ms"),
        "{refused:?}"
    );
    // One the schema allows and the agent refuses is recorded as an
    // error; the process keeps running.
    let mut bad = updated;
    bad["findings_subject"] = json!("findings for everyone");
    h.command(&id, update(bad)).await;
    let refused = h
        .wait_for(&id, "reload refusal recorded", |a| {
            a.last_error
                .as_deref()
                .is_some_and(|e| e.contains("not applied") && e.contains("findings_subject"))
        })
        .await;
    assert_eq!(refused.pid, Some(pid));

    stop_gracefully(&h, &id, pid).await;
    h.finish().await;
}

/// The host-health agent publishes CPU, memory and disk metrics and
/// heartbeats with a status, and survives SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_health_publishes_host_metrics() {
    let h = Harness::start().await;
    let id = format!("host-health-{}", h.tag);
    let mut metrics = h.subscribe(format!("opmas.agent_metrics.{id}")).await;
    let mut heartbeats = h.heartbeats(&id).await;
    // Thresholds no host passes, so the status is "ok".
    let (_package, spec) = package(
        "host-health",
        Some(HOST_HEALTH),
        &[
            ("interval_secs", json!(0.5)),
            ("cpu_warn_percent", json!(1e9)),
            ("memory_warn_percent", json!(100)),
            ("disk_warn_percent", json!(100)),
        ],
    );
    h.start_agent(&id, spec).await;
    let pid = h.wait_for(&id, "healthy", healthy).await.pid.unwrap();

    let mut names = std::collections::BTreeSet::new();
    while !(names.contains("host_cpu_percent")
        && names.contains("host_memory_used_percent")
        && names.contains("host_disk_used_percent"))
    {
        let m: Metric = next(&mut metrics, "host metric").await;
        assert_eq!(m.agent_id, id);
        assert!(m.value.is_finite() && m.value >= 0.0, "{m:?}");
        if m.name == "host_memory_used_percent" {
            assert!(m.value > 0.0 && m.value <= 100.0, "{m:?}");
        }
        if m.name == "host_disk_used_percent" {
            assert!(m.labels.contains_key("mount"), "{m:?}");
        }
        names.insert(m.name);
    }
    // After the first round of samples the heartbeats carry the status.
    let mut status = None;
    while status.is_none() {
        status = beats(&mut heartbeats, &id, 1).await.remove(0).status;
    }
    assert_eq!(status.as_deref(), Some("ok"));

    // SIGHUP (the supervisor's reload for agents that do not answer) is a
    // reload for an SDK agent, not the default death.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let pong = h.control(&id, json!({"action": "ping"})).await;
    assert!(pong.ok);
    assert!(alive(pid), "SIGHUP killed the agent");
    assert_eq!(h.agent(&id).await.pid, Some(pid));

    stop_gracefully(&h, &id, pid).await;
    h.finish().await;
}

/// The shell agent has no SDK and no NATS client, yet sends heartbeats (bash's
/// /dev/tcp); its exec check (`check.sh`: did it tick lately?) makes it
/// healthy, its lines reach OPMAS_LOGS; stopped with SIGSTOP (its process
/// alive, its ticks gone) it turns critical and is restarted; it stops on
/// SIGTERM by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shell_agent_is_healthy_by_its_check_and_restarted_when_it_hangs() {
    let h = Harness::start().await;
    let id = format!("shell-ticker-{}", h.tag);
    let mut lines = h.subscribe(h.telemetry.logs_subject(&id, "info")).await;
    let mut heartbeats = h.heartbeats(&id).await;
    let (_package, mut spec) = package("shell-ticker", None, &[]);
    // A tick every half second instead of every 5 s; the rest as shipped.
    spec.env.insert("TICK_INTERVAL".into(), "0.5".into());
    h.start_agent(&id, spec).await;
    let pid = h
        .wait_for(&id, "healthy by its check", healthy)
        .await
        .pid
        .unwrap();

    let sent = beats(&mut heartbeats, &id, 2).await;
    assert!(
        sent.iter()
            .all(|b| b.status.as_deref().is_some_and(|s| s.starts_with("tick "))),
        "{sent:?}"
    );
    let mut ticks = 0;
    while ticks < 3 {
        let line: LogLine = next(&mut lines, "tick line").await;
        assert_eq!(line.pid, pid);
        if line.line.starts_with("INFO tick ") {
            ticks += 1;
        }
    }
    // Healthy by whichever came first, its heartbeats or its check (the
    // check's part shows when the agent hangs, below).
    let events = h.events(&id).await;
    assert!(
        events.iter().any(|e| matches!(e,
            AgentEvent::HealthChanged { to: Health::Healthy, reason, .. }
                if reason == "heartbeats resumed" || reason.ends_with("check.sh` succeeded"))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            AgentEvent::ProcessExited { .. } | AgentEvent::HeartbeatLost { .. }
        )),
        "the shell agent should just keep running: {events:?}"
    );

    // Hung: the process is there, its ticks are not.
    let signal = nix::sys::signal::Signal::SIGSTOP;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        signal,
    )
    .unwrap();
    let again = h
        .wait_for(&id, "restarted and healthy", |a| {
            a.pid.is_some_and(|p| p != pid) && healthy(a)
        })
        .await;
    assert_recovered_from(&h, &id, pid, |e| {
        matches!(e, AgentEvent::HealthChanged { to: Health::Critical, reason, .. }
            if reason.contains("2 health checks failed in a row"))
    })
    .await;

    stop_gracefully(&h, &id, again.pid.unwrap()).await;
    let out = std::fs::read_to_string(h.logs.path().join(&id).join("stdout.log")).unwrap();
    assert!(out.contains("stopping after"), "{out}");
    h.finish().await;
}

/// The flaky agent crashes (exit 3) and is restarted by policy; a flaky
/// agent that hangs loses its heartbeat and is recovered by a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flaky_agent_crashes_or_hangs_and_is_recovered() {
    let h = Harness::start().await;
    let crasher = format!("flaky-crash-{}", h.tag);
    let hanger = format!("flaky-hang-{}", h.tag);
    let mut crash_beats = h.heartbeats(&crasher).await;
    let mut hang_beats = h.heartbeats(&hanger).await;
    let flaky = |hang_chance: f64| {
        package(
            "flaky",
            Some(FLAKY),
            &[
                ("min_secs", json!(0.5)),
                ("max_secs", json!(1.0)),
                ("hang_chance", json!(hang_chance)),
            ],
        )
    };
    let (_crash_package, spec) = flaky(0.0);
    h.start_agent(&crasher, spec).await;
    let (_hang_package, spec) = flaky(1.0);
    h.start_agent(&hanger, spec).await;

    let first = h
        .wait_for(&crasher, "running", |a| a.status == ProcessStatus::Running)
        .await;
    let old = first.pid.unwrap();
    beats(&mut crash_beats, &crasher, 1).await;
    let again = h
        .wait_for(&crasher, "restarted after its crash", |a| {
            a.status == ProcessStatus::Running && a.pid.is_some_and(|p| p != old)
        })
        .await;
    let events = h.events(&crasher).await;
    assert_eq!(exit_of(&events, old), Some((Some(3), None)));
    assert!(
        events.iter().any(|e| matches!(e, AgentEvent::ProcessExited { pid, decision: RestartDecision::Restart { .. }, .. } if *pid == old)),
        "{events:?}"
    );
    assert!(again.restart_count >= 1);

    let first = h
        .wait_for(&hanger, "running", |a| a.status == ProcessStatus::Running)
        .await;
    let hung = first.pid.unwrap();
    beats(&mut hang_beats, &hanger, 1).await;
    h.wait_for(&hanger, "recovered from the hang", |a| {
        a.recovery == RecoveryStatus::Succeeded && a.pid.is_some_and(|p| p != hung)
    })
    .await;
    assert_recovered_from(&h, &hanger, hung, |e| {
        matches!(e, AgentEvent::HeartbeatLost { .. })
    })
    .await;

    h.finish().await;
}
