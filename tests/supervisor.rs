//! The supervisor with real processes, a real Postgres and nats-server.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use opmas_domain::telemetry::{LogLevel, LogLine};
use opmas_domain::{
    Agent, AgentCommand, AgentEvent, AgentId, AgentSpec, ProcessStatus, RestartDecision,
};
use opmas_store::{
    AgentStore, OutboxNotifier, Relay, RelayConfig, StreamSettings, TelemetrySettings,
};
use opmas_supervisor::{Config, Supervisor};
use tokio_util::sync::CancellationToken;

struct Harness {
    db: TestDb,
    client: async_nats::Client,
    settings: StreamSettings,
    telemetry: TelemetrySettings,
    heartbeat_prefix: String,
    control_prefix: String,
    store: AgentStore,
    cancel: CancellationToken,
    /// Kills what is left when the harness goes, even from a panicking test.
    _reaper: Reaper,
    logs: tempfile::TempDir,
}

/// Stops the supervisor and kills every process still writing into the
/// harness's logs when dropped.
struct Reaper(std::path::PathBuf, CancellationToken);

impl Drop for Reaper {
    fn drop(&mut self) {
        self.1.cancel();
        for pid in writing_into(&self.0) {
            let _ = opmas_supervisor::signal::group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Harness {
    async fn new() -> Self {
        let h = Self::without_supervisor().await;
        h.start_supervisor();
        h
    }

    async fn without_supervisor() -> Self {
        // OPMAS_TEST_LOG=opmas_supervisor=debug shows what the supervisor did.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("OPMAS_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let db = TestDb::new().await;
        let client = nats().await;
        let settings = stream();
        let cancel = CancellationToken::new();
        let notifier = OutboxNotifier::spawn(db.pool.clone(), cancel.clone());
        let store = AgentStore::new(db.pool.clone()).with_notifier(notifier.clone());
        let relay = Relay::new(
            db.pool.clone(),
            client.clone(),
            RelayConfig {
                stream: settings.clone(),
                ..RelayConfig::default()
            },
        )
        .with_wake(notifier.subscribe());
        tokio::spawn(relay.run(cancel.clone()));
        let logs = tempfile::tempdir().unwrap();
        let _reaper = Reaper(logs.path().to_path_buf(), cancel.clone());
        Self {
            db,
            client,
            settings,
            telemetry: TelemetrySettings::isolated(&tag()),
            heartbeat_prefix: format!("opmas_{}.heartbeat", tag()),
            control_prefix: format!("opmas_{}.control", tag()),
            store,
            cancel,
            _reaper,
            logs,
        }
    }

    /// `opmas supervisor` as its own OS process.
    fn spawn_supervisor_process(&self) -> tokio::process::Child {
        self.spawn_supervisor_process_with(&[])
    }

    /// The same, with more options.
    fn spawn_supervisor_process_with(&self, extra: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_opmas"))
            .args([
                "supervisor",
                "--node",
                "node-a",
                "--reconcile-interval",
                "500ms",
            ])
            .arg("--log-dir")
            .arg(self.logs.path())
            .args(extra)
            .env("OPMAS_DATABASE_URL", &self.db.url)
            .env("OPMAS_DB_MAX_CONNECTIONS", "8")
            .env("OPMAS_NATS_URL", nats_url())
            .env("OPMAS_EVENTS_STREAM", &self.settings.name)
            .env("OPMAS_EVENTS_SUBJECT_PREFIX", &self.settings.subject_prefix)
            .env("OPMAS_METRICS_STREAM", &self.telemetry.metrics_stream)
            .env(
                "OPMAS_METRICS_SUBJECT_PREFIX",
                &self.telemetry.metrics_prefix,
            )
            .env("OPMAS_LOGS_STREAM", &self.telemetry.logs_stream)
            .env("OPMAS_LOGS_SUBJECT_PREFIX", &self.telemetry.logs_prefix)
            .env("OPMAS_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    fn config(&self) -> Config {
        let mut config = Config::new("node-a", nats_url());
        config.log_dir = self.logs.path().to_path_buf();
        config.stream = self.settings.clone();
        config.reconcile_interval = Duration::from_millis(500);
        config.telemetry = self.telemetry.clone();
        config.heartbeat_prefix = self.heartbeat_prefix.clone();
        config.metrics.interval = Duration::from_millis(200);
        config.metrics.breach_samples = 3;
        config.control_prefix = self.control_prefix.clone();
        config
    }

    fn start_supervisor(&self) {
        let supervisor =
            Supervisor::new(self.store.clone(), self.client.clone(), self.config()).unwrap();
        tokio::spawn(supervisor.run(self.cancel.clone()));
    }

    async fn register(&self, id: &str, spec: AgentSpec) {
        let cmd = AgentCommand::Register {
            agent_id: AgentId::parse(id).unwrap(),
            spec,
        };
        self.store.execute(id, cmd, meta("test")).await.unwrap();
    }

    async fn command(&self, id: &str, cmd: AgentCommand) {
        self.store.execute(id, cmd, meta("operator")).await.unwrap();
    }

    /// Registers `id`, starts it and waits until it runs.
    async fn started(&self, id: &str, spec: AgentSpec) -> Agent {
        self.register(id, spec).await;
        self.command(id, AgentCommand::Start).await;
        self.wait_for(id, "running", |a| a.status == ProcessStatus::Running)
            .await
    }

    async fn agent(&self, id: &str) -> Agent {
        AgentStore::new(self.db.pool.clone())
            .load(id)
            .await
            .unwrap()
            .0
    }

    async fn wait_for(&self, id: &str, what: &str, check: impl Fn(&Agent) -> bool) -> Agent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let agent = self.agent(id).await;
            if check(&agent) {
                return agent;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id}: waited 60 s for {what}; state: {:?} desired {:?} pid {:?}",
                agent.status,
                agent.desired,
                agent.pid
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn events(&self, id: &str) -> Vec<AgentEvent> {
        self.store
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }

    /// Stops the supervisor and kills every agent process of this test
    /// (agents outlive their supervisor by design; tests must not leak them).
    async fn finish(self) {
        self.cancel.cancel();
        let store = AgentStore::new(self.db.pool.clone());
        for id in store.agent_ids().await.unwrap_or_default() {
            if let Ok((agent, _)) = store.load(&id).await
                && let Some(pid) = agent.pid
            {
                let _ = opmas_supervisor::signal::group(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        // And any process the recorded pids miss (one spawned while the
        // supervisor stopped): this harness's agents write into its logs.
        for pid in writing_into(self.logs.path()) {
            let _ = opmas_supervisor::signal::group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        delete_stream(&self.client, &self.settings).await;
        let js = async_nats::jetstream::new(self.client.clone());
        let _ = js.delete_stream(&self.telemetry.logs_stream).await;
        let _ = js.delete_stream(&self.telemetry.metrics_stream).await;
        self.db.cleanup().await;
    }
}

fn sh(script: &str) -> AgentSpec {
    let mut spec = spec();
    spec.command = "sh".into();
    spec.args = vec!["-c".into(), script.into()];
    spec.restart.initial_delay_ms = 20;
    spec.stop_grace_ms = 2_000;
    spec
}

/// Processes whose stdout is a file under `dir`.
fn writing_into(dir: &std::path::Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/fd/1"))
                .is_ok_and(|target| target.starts_with(dir))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Members of process group `pgid`, from /proc.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // fields[0] = state, fields[2] = pgrp
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Start, `kill -9` (restarted, facts in order), stop (process gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_crash_restart_and_stop() {
    let h = Harness::new().await;
    h.register("worker", sh("echo hello; exec sleep 1000"))
        .await;
    h.command("worker", AgentCommand::Start).await;
    let first = h
        .wait_for("worker", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let pid = first.pid.unwrap();
    assert!(alive(pid));
    assert_eq!(first.node.as_deref(), Some("node-a"));

    kill(pid, "-9");
    let second = h
        .wait_for("worker", "a new process", |a| {
            a.status == ProcessStatus::Running && a.pid.is_some_and(|p| p != pid)
        })
        .await;
    assert_eq!(second.restart_count, 1);
    let events = h.events("worker").await;
    let tail: Vec<&AgentEvent> = events.iter().rev().take(2).collect();
    assert!(
        matches!(tail[0], AgentEvent::ProcessStarted { .. }),
        "{tail:?}"
    );
    match tail[1] {
        AgentEvent::ProcessExited {
            pid: p,
            signal,
            decision,
            ..
        } => {
            assert_eq!((*p, *signal), (pid, Some(9)));
            assert!(
                matches!(decision, RestartDecision::Restart { attempt: 1, .. }),
                "{decision:?}"
            );
        }
        other => panic!("expected ProcessExited, got {other:?}"),
    }
    let out = std::fs::read_to_string(h.logs.path().join("worker/stdout.log")).unwrap();
    assert_eq!(out.matches("hello").count(), 2, "{out}");

    h.command("worker", AgentCommand::Stop).await;
    let stopped = h
        .wait_for("worker", "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    assert_eq!(stopped.pid, None);
    let new_pid = second.pid.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async move { !alive(new_pid) }).await,
        "process {new_pid} survived stop"
    );
    h.finish().await;
}

/// A Start right after a Stop starts at once: the stop's grace period (a
/// SIGKILL deadline for a process already gone) is not a restart backoff.
/// It was taken for one, and the start waited out the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_after_stop_does_not_wait_for_the_stop_grace() {
    let h = Harness::new().await;
    let mut spec = sh("exec sleep 1000");
    spec.stop_grace_ms = 600_000;
    let first = h.started("again", spec).await;
    h.command("again", AgentCommand::Stop).await;
    h.wait_for("again", "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    h.command("again", AgentCommand::Start).await;
    let second = h
        .wait_for("again", "running again, before the 10 min grace", |a| {
            a.status == ProcessStatus::Running && a.pid != first.pid
        })
        .await;
    assert!(alive(second.pid.unwrap()));
    h.finish().await;
}

/// Stop kills the whole process group: children the agent spawned too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_kills_grandchildren() {
    let h = Harness::new().await;
    h.register("parent", sh("sleep 1000 & sleep 1000 & wait"))
        .await;
    h.command("parent", AgentCommand::Start).await;
    let agent = h
        .wait_for("parent", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let pid = agent.pid.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async move {
            group_members(pid).len() == 3
        })
        .await,
        "expected sh and two sleeps in group {pid}: {:?}",
        group_members(pid)
    );
    h.command("parent", AgentCommand::Stop).await;
    h.wait_for("parent", "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async move {
            group_members(pid).is_empty()
        })
        .await,
        "left behind: {:?}",
        group_members(pid)
    );
    h.finish().await;
}

/// An agent that ignores SIGTERM is killed after its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stubborn_agent_is_killed_after_grace() {
    let h = Harness::new().await;
    let mut spec = sh("trap '' TERM; sleep 1000");
    spec.stop_grace_ms = 300;
    let agent = h.started("stubborn", spec).await;
    let pid = agent.pid.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // let sh install its trap
    h.command("stubborn", AgentCommand::Stop).await;
    h.wait_for("stubborn", "stopped", |a| {
        a.status == ProcessStatus::Stopped
    })
    .await;
    assert!(!alive(pid));
    let events = h.events("stubborn").await;
    let exit = events
        .iter()
        .rev()
        .find_map(|e| match e {
            AgentEvent::ProcessExited { signal, .. } => Some(*signal),
            _ => None,
        })
        .unwrap();
    assert_eq!(exit, Some(9), "SIGTERM was ignored, so SIGKILL ended it");
    h.finish().await;
}

/// A crash loop follows the restart policy: growing delays, then `failed`
/// once the intensity (3 restarts in 60 s) is exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_backs_off_then_fails() {
    let h = Harness::new().await;
    let mut spec = sh("exit 3");
    spec.restart.initial_delay_ms = 50;
    spec.restart.multiplier = 2.0;
    spec.restart.jitter = 0.0;
    spec.restart.intensity = 3;
    spec.restart.period_ms = 60_000;
    h.register("crashy", spec).await;
    h.command("crashy", AgentCommand::Start).await;
    let failed = h
        .wait_for("crashy", "failed", |a| a.status == ProcessStatus::Failed)
        .await;
    assert_eq!(failed.restart_count, 3);
    let events = h.events("crashy").await;
    let decisions: Vec<RestartDecision> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ProcessExited { code, decision, .. } => {
                assert_eq!(*code, Some(3));
                Some(*decision)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            RestartDecision::Restart {
                delay_ms: 50,
                attempt: 1
            },
            RestartDecision::Restart {
                delay_ms: 100,
                attempt: 2
            },
            RestartDecision::Restart {
                delay_ms: 200,
                attempt: 3
            },
            RestartDecision::GiveUp {
                restarts_in_period: 3
            },
        ]
    );
    assert!(
        matches!(events.last(), Some(AgentEvent::AgentFailed { .. })),
        "{:?}",
        events.last()
    );
    // The delays were honoured: each start is at least the delay after the exit.
    let times: Vec<(&str, chrono::DateTime<chrono::Utc>)> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ProcessStarted { at, .. } => Some(("start", *at)),
            AgentEvent::ProcessExited { at, .. } => Some(("exit", *at)),
            _ => None,
        })
        .collect();
    for (i, delay) in [(1usize, 50i64), (3, 100), (5, 200)] {
        assert_eq!((times[i].0, times[i + 1].0), ("exit", "start"));
        let gap = (times[i + 1].1 - times[i].1).num_milliseconds();
        assert!(
            gap >= delay,
            "restart {i}: started {gap} ms after exit, delay {delay} ms: {times:?}"
        );
    }
    h.finish().await;
}

/// A program that does not exist: the agent fails with the reason (it does
/// not wait in `starting`), and a Start once the program is there runs it.
/// A respawn after a crash that cannot find its program fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_that_cannot_start_fails_the_agent() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new().await;
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("agent.sh");
    let mut spec = spec();
    spec.command = program.display().to_string();
    spec.args = Vec::new();
    spec.restart.initial_delay_ms = 200;
    spec.restart.jitter = 0.0;
    h.register("ghost", spec).await;
    h.command("ghost", AgentCommand::Start).await;
    let agent = h
        .wait_for("ghost", "failed", |a| a.status == ProcessStatus::Failed)
        .await;
    let error = agent.last_error.unwrap();
    assert!(
        error.starts_with("cannot start the process: program"),
        "{error}"
    );
    assert!(error.contains(&program.display().to_string()), "{error}");
    assert_eq!(agent.desired, opmas_domain::DesiredState::Running);
    let events = h.events("ghost").await;
    let spawn_errors = count(
        &events,
        |e| matches!(e, AgentEvent::ErrorRecorded { error_type, .. } if error_type == "SpawnFailed"),
    );
    assert_eq!(spawn_errors, 1, "{events:?}");
    assert_eq!(
        count(&events, |e| matches!(e, AgentEvent::ProcessStarted { .. })),
        0
    );

    // The program appears (it runs 1 s, then exits 1); a Start runs it.
    std::fs::write(&program, "#!/bin/sh\nsleep 1\nexit 1\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.command("ghost", AgentCommand::Start).await;
    h.wait_for("ghost", "running", |a| a.status == ProcessStatus::Running)
        .await;
    // It goes away while the process runs: the respawn after the crash fails.
    std::fs::remove_file(&program).unwrap();
    let agent = h
        .wait_for("ghost", "failed again", |a| {
            a.status == ProcessStatus::Failed && a.pid.is_none()
        })
        .await;
    assert!(
        agent
            .last_error
            .unwrap()
            .starts_with("cannot start the process"),
        "the second failure is the spawn's, not the intensity limit's"
    );
    let events = h.events("ghost").await;
    let exited = events
        .iter()
        .position(|e| matches!(e, AgentEvent::ProcessExited { .. }))
        .expect("the crash is recorded");
    assert!(
        matches!(events.last(), Some(AgentEvent::AgentFailed { .. })),
        "{:?}",
        &events[exited..]
    );
    h.finish().await;
}

/// The supervisor, as its own OS process, is `kill -9`ed while 20 agents run
/// (and one crash-loops), then started again, ten times: running agents
/// are adopted (same pid, never started twice), the crash-looping one keeps
/// being restarted with counters that never go backwards, and a stop after
/// adoption still kills the adopted processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervisor_killed_and_restarted_adopts_its_agents() {
    let h = Harness::without_supervisor().await;
    let steady: Vec<String> = (0..20).map(|i| format!("steady-{i}")).collect();
    for id in &steady {
        h.register(id, sh("exec sleep 1000")).await;
        h.command(id, AgentCommand::Start).await;
    }
    let mut flaky = sh("sleep 0.3; exit 1");
    flaky.restart.intensity = 1_000;
    h.register("flaky", flaky).await;
    h.command("flaky", AgentCommand::Start).await;

    let mut supervisor = h.spawn_supervisor_process();
    let mut pids = Vec::new();
    for id in &steady {
        let a = h
            .wait_for(id, "running", |a| a.status == ProcessStatus::Running)
            .await;
        pids.push(a.pid.unwrap());
    }
    let mut last_restarts = 0;
    for round in 0..10 {
        supervisor.start_kill().unwrap();
        supervisor.wait().await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        for pid in &pids {
            assert!(
                alive(*pid),
                "round {round}: agent {pid} died with its supervisor"
            );
        }
        supervisor = h.spawn_supervisor_process();
        let flaky = h
            .wait_for("flaky", "more restarts", |a| {
                a.restart_count > last_restarts
            })
            .await;
        assert!(flaky.restart_count > last_restarts);
        last_restarts = flaky.restart_count;
        for (id, pid) in steady.iter().zip(&pids) {
            let a = h.agent(id).await;
            assert_eq!(
                (a.status, a.pid),
                (ProcessStatus::Running, Some(*pid)),
                "round {round}: {id}"
            );
            let starts = h
                .events(id)
                .await
                .iter()
                .filter(|e| matches!(e, AgentEvent::ProcessStarted { .. }))
                .count();
            assert_eq!(starts, 1, "round {round}: {id} was started again");
            assert_eq!(group_members(*pid).len(), 1, "round {round}: {id}");
        }
    }
    // Counters never went backwards over the whole history.
    let mut highest = 0;
    for event in h.events("flaky").await {
        if let AgentEvent::ProcessExited {
            decision: RestartDecision::Restart { attempt, .. },
            ..
        } = event
        {
            assert!(attempt >= 1);
            highest = highest.max(attempt);
        }
    }
    assert!(highest >= 1);
    // Adopted processes are still under control: stop them all.
    for id in &steady {
        h.command(id, AgentCommand::Stop).await;
    }
    for id in &steady {
        h.wait_for(id, "stopped", |a| a.status == ProcessStatus::Stopped)
            .await;
    }
    for pid in &pids {
        let pid = *pid;
        assert!(
            eventually(Duration::from_secs(5), || async move { !alive(pid) }).await,
            "{pid} survived"
        );
    }
    h.command("flaky", AgentCommand::Stop).await;
    h.wait_for("flaky", "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    supervisor.start_kill().unwrap();
    h.finish().await;
}

/// Reads every log line in the harness's logs stream.
async fn log_lines(h: &Harness) -> Vec<(String, LogLine)> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(h.client.clone());
    let Ok(stream) = js.get_stream(&h.telemetry.logs_stream).await else {
        return Vec::new();
    };
    let Ok(info) = stream.get_info().await else {
        return Vec::new();
    };
    if info.state.messages == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        out.push((
            m.subject.to_string(),
            serde_json::from_slice(&m.payload).unwrap(),
        ));
        if pending == 0 {
            break;
        }
    }
    out
}

/// Output lines reach OPMAS_LOGS with their level (JSON, prefix, stream
/// default) and the files keep them; a flood is rate-limited with the drops
/// counted, and does not hold up another agent's restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_are_shipped_with_levels_and_floods_are_limited() {
    let h = Harness::without_supervisor().await;
    let mut config = h.config();
    config.logs.rate_per_sec = 50;
    config.logs.burst = 100;
    let supervisor = Supervisor::new(h.store.clone(), h.client.clone(), config).unwrap();
    tokio::spawn(supervisor.run(h.cancel.clone()));

    let script = r#"echo "INFO hello"; echo "ERROR boom" >&2; echo '{"level":"warn","msg":"json"}'; echo plain; exec sleep 1000"#;
    h.register("talker", sh(script)).await;
    h.command("talker", AgentCommand::Start).await;
    let talker = h
        .wait_for("talker", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = log_lines(&h).await;
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lines.len() >= 4, "got {lines:?}");
    let by_text = |text: &str| {
        lines
            .iter()
            .find(|(_, l)| l.line.contains(text))
            .unwrap()
            .clone()
    };
    let (subject, hello) = by_text("hello");
    assert_eq!(hello.level, LogLevel::Info);
    assert_eq!(subject, h.telemetry.logs_subject("talker", "info"));
    assert_eq!(hello.pid, talker.pid.unwrap());
    assert_eq!(by_text("boom").1.level, LogLevel::Error);
    assert_eq!(by_text("json").1.level, LogLevel::Warn);
    assert_eq!(by_text("plain").1.level, LogLevel::Info);
    let file = std::fs::read_to_string(h.logs.path().join("talker/stderr.log")).unwrap();
    assert_eq!(file, "ERROR boom\n");

    // A flood next to a crash-looping agent.
    h.register(
        "flood",
        sh("i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); done; exec sleep 1000"),
    )
    .await;
    let mut crashy = sh("exit 1");
    crashy.restart.initial_delay_ms = 10;
    crashy.restart.jitter = 0.0;
    crashy.restart.multiplier = 1.0;
    crashy.restart.intensity = 10_000;
    h.register("crashy", crashy).await;
    h.command("flood", AgentCommand::Start).await;
    h.command("crashy", AgentCommand::Start).await;
    h.wait_for("crashy", "20 restarts", |a| a.restart_count >= 20)
        .await;
    let events = h.events("crashy").await;
    let mut last_exit = None;
    let mut worst = 0;
    for e in &events {
        match e {
            AgentEvent::ProcessExited { at, .. } => last_exit = Some(*at),
            AgentEvent::ProcessStarted { at, .. } => {
                if let Some(exit) = last_exit.take() {
                    worst = worst.max((*at - exit).num_milliseconds());
                }
            }
            _ => {}
        }
    }
    // 10 ms policy delay; a blocked supervisor would show seconds here.
    assert!(
        worst < 2_000,
        "a restart waited {worst} ms during the flood"
    );
    h.wait_for("flood", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let flood_file = h.logs.path().join("flood/stdout.log");
    assert!(
        eventually(Duration::from_secs(20), || {
            let f = flood_file.clone();
            async move {
                std::fs::read_to_string(f)
                    .map(|s| s.contains("line 19999"))
                    .unwrap_or(false)
            }
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shipped: Vec<LogLine> = log_lines(&h)
        .await
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.agent_id == "flood")
        .collect();
    assert!(
        shipped.len() < 1_000,
        "rate limit let {} lines through",
        shipped.len()
    );
    assert!(
        shipped.len() >= 100,
        "the burst should pass: {}",
        shipped.len()
    );
    let dropped: u64 = shipped.iter().map(|l| l.dropped_before).sum();
    assert!(dropped > 10_000, "drops are counted: {dropped}");
    h.finish().await;
}

fn beating(script: &str, timeout_ms: u64, auto_recover: bool) -> AgentSpec {
    let mut spec = sh(script);
    spec.heartbeat.enabled = true;
    spec.heartbeat.interval_ms = 200;
    spec.heartbeat.timeout_ms = timeout_ms;
    spec.heartbeat.startup_grace_ms = 3_000;
    spec.recovery.auto = auto_recover;
    spec
}

/// Publishes heartbeats for `agent` every 100 ms until the token is cancelled.
fn heartbeats(h: &Harness, agent: &str) -> CancellationToken {
    let stop = CancellationToken::new();
    let (client, subject, token) = (
        h.client.clone(),
        format!("{}.{agent}", h.heartbeat_prefix),
        stop.clone(),
    );
    tokio::spawn(async move {
        while !token.is_cancelled() {
            let _ = client.publish(subject.clone(), "{}".into()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    stop
}

fn count(events: &[AgentEvent], pred: impl Fn(&AgentEvent) -> bool) -> usize {
    events.iter().filter(|e| pred(e)).count()
}

/// Silence within the startup grace is not a loss; a stall after heartbeats
/// is, once; health recovers when heartbeats resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeat_grace_loss_once_and_recovery_of_health() {
    let h = Harness::new().await;
    h.register("beater", beating("exec sleep 1000", 2_000, false))
        .await;
    h.command("beater", AgentCommand::Start).await;
    h.wait_for("beater", "running", |a| a.status == ProcessStatus::Running)
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // inside the 3 s grace
    let lost = |e: &AgentEvent| matches!(e, AgentEvent::HeartbeatLost { .. });
    assert_eq!(
        count(&h.events("beater").await, lost),
        0,
        "no heartbeat yet, but still in grace"
    );

    let beats = heartbeats(&h, "beater");
    tokio::time::sleep(Duration::from_millis(3_000)).await; // past the grace, beating
    assert_eq!(
        count(&h.events("beater").await, lost),
        0,
        "beating agent reported lost"
    );
    beats.cancel();
    let degraded = h
        .wait_for("beater", "heartbeat lost", |a| {
            a.heartbeat_lost && a.status == ProcessStatus::Degraded
        })
        .await;
    assert_eq!(degraded.health, opmas_domain::Health::Critical);
    tokio::time::sleep(Duration::from_millis(4_500)).await; // still silent
    assert_eq!(
        count(&h.events("beater").await, lost),
        1,
        "a loss is reported once"
    );

    let beats = heartbeats(&h, "beater");
    let healthy = h
        .wait_for("beater", "healthy again", |a| {
            a.health == opmas_domain::Health::Healthy
        })
        .await;
    assert_eq!(healthy.status, ProcessStatus::Running);
    assert!(!healthy.heartbeat_lost);
    beats.cancel();
    h.finish().await;
}

/// With automatic recovery by restart, a lost heartbeat restarts the
/// process and the recovery is recorded as succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_heartbeat_triggers_restart_recovery() {
    let h = Harness::new().await;
    h.register("silent", beating("exec sleep 1000", 500, true))
        .await;
    h.command("silent", AgentCommand::Start).await;
    let first = h
        .wait_for("silent", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let old = first.pid.unwrap();
    let recovered = h
        .wait_for("silent", "recovered", |a| {
            a.recovery == opmas_domain::RecoveryStatus::Succeeded && a.pid.is_some_and(|p| p != old)
        })
        .await;
    assert_eq!(recovered.status, ProcessStatus::Running);
    assert!(!alive(old), "the silent process was replaced");
    let events = h.events("silent").await;
    let triggered = events
        .iter()
        .position(|e| matches!(e, AgentEvent::RecoveryTriggered { .. }))
        .unwrap();
    let completed = events
        .iter()
        .position(|e| {
            matches!(
                e,
                AgentEvent::RecoveryCompleted {
                    succeeded: true,
                    ..
                }
            )
        })
        .unwrap();
    assert!(triggered < completed);
    assert!(
        events[triggered..completed]
            .iter()
            .any(|e| matches!(e, AgentEvent::ProcessStarted { .. }))
    );
    h.command("silent", AgentCommand::Stop).await;
    h.finish().await;
}

/// Samples of a running agent reach OPMAS_METRICS with real values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_samples_are_published() {
    use futures::StreamExt;
    let h = Harness::new().await;
    h.register("sampled", beating("exec sleep 1000", 60_000, false))
        .await;
    h.command("sampled", AgentCommand::Start).await;
    let agent = h
        .wait_for("sampled", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let js = async_nats::jetstream::new(h.client.clone());
    let stream = js.get_stream(&h.telemetry.metrics_stream).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: h.telemetry.metrics_subject("sampled"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("no sample within 10 s")
        .unwrap()
        .unwrap();
    let sample: opmas_domain::telemetry::MetricSample =
        serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(sample.agent_id, "sampled");
    assert_eq!(sample.node, "node-a");
    assert_eq!(sample.pid, agent.pid.unwrap());
    assert!(sample.rss_bytes > 100_000, "{sample:?}");
    assert!(sample.threads >= 1 && sample.open_fds >= 3, "{sample:?}");
    // Once the agent beats, samples carry its last heartbeat (the live
    // heartbeat read model is fed from them).
    let beat = heartbeats(&h, "sampled");
    let carried = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = messages.next().await {
            let s: opmas_domain::telemetry::MetricSample =
                serde_json::from_slice(&message.payload).unwrap();
            if let Some(at) = s.last_heartbeat_at {
                return Some(at);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    beat.cancel();
    let at = carried.expect("no sample carried a heartbeat within 10 s");
    assert!((chrono::Utc::now() - at).num_seconds() < 10, "{at}");
    h.command("sampled", AgentCommand::Stop).await;
    h.finish().await;
}

/// Over its memory limit for the whole window, an agent is restarted when
/// its recovery policy restarts automatically, and stopped otherwise; the
/// breach is one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_limit_breach_restarts_or_stops_as_the_policy_says() {
    let h = Harness::new().await;
    // `tail` buffers a line until its end: 40 MB without a newline, held.
    let hog = "(head -c 40000000 /dev/zero; sleep 1000) | tail > /dev/null";
    for (id, auto) in [("hog-restart", true), ("hog-stop", false)] {
        let mut spec = sh(hog);
        spec.limits.memory_bytes = Some(25 * 1024 * 1024);
        spec.recovery.auto = auto;
        spec.heartbeat.enabled = false;
        h.register(id, spec).await;
        h.command(id, AgentCommand::Start).await;
    }
    let first = h
        .wait_for("hog-restart", "running", |a| {
            a.status == ProcessStatus::Running
        })
        .await;
    let restarted = h
        .wait_for("hog-restart", "a restart", |a| {
            a.pid.is_some_and(|p| Some(p) != first.pid)
        })
        .await;
    assert!(restarted.restart_count >= 1 || restarted.recovery_attempts >= 1);
    let events = h.events("hog-restart").await;
    let breach = events
        .iter()
        .find_map(|e| match e {
            AgentEvent::ResourceLimitExceeded {
                resource,
                limit,
                observed,
                window_ms,
            } => Some((resource.clone(), *limit, *observed, *window_ms)),
            _ => None,
        })
        .expect("a ResourceLimitExceeded event");
    assert_eq!(breach.0, "memory");
    assert!(breach.2 > breach.1, "{breach:?}");
    assert!(breach.3 >= 600, "{breach:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AgentEvent::RecoveryTriggered { .. }))
    );

    let stopped = h
        .wait_for("hog-stop", "stopped", |a| {
            a.status == ProcessStatus::Stopped
        })
        .await;
    assert_eq!(stopped.desired, opmas_domain::DesiredState::Stopped);
    let events = h.events("hog-stop").await;
    let breaches = count(&events, |e| {
        matches!(e, AgentEvent::ResourceLimitExceeded { .. })
    });
    assert_eq!(breaches, 1);
    h.command("hog-restart", AgentCommand::Stop).await;
    h.wait_for("hog-restart", "stopped", |a| {
        a.status == ProcessStatus::Stopped
    })
    .await;
    h.finish().await;
}

/// Recovery by reload: an agent answering control requests is asked over
/// NATS; one that does not gets SIGHUP. Neither is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_recovery_uses_control_then_sighup() {
    use futures::StreamExt;
    use opmas_domain::control::{ControlAction, ControlReply, ControlRequest};
    let h = Harness::new().await;
    let reloading = |script: &str| {
        let mut spec = beating(script, 400, true);
        spec.heartbeat.startup_grace_ms = 400;
        spec.recovery.strategy = opmas_domain::RecoveryStrategy::Reload;
        spec
    };
    // "speaker" answers control requests (the test answers for it).
    let mut control = h
        .client
        .subscribe(format!("{}.speaker", h.control_prefix))
        .await
        .unwrap();
    h.client.flush().await.unwrap();
    let answered = tokio::spawn({
        let client = h.client.clone();
        async move {
            let request = control.next().await.unwrap();
            let body: ControlRequest = serde_json::from_slice(&request.payload).unwrap();
            let reply = ControlReply {
                ok: true,
                message: None,
            };
            client
                .publish(
                    request.reply.unwrap(),
                    serde_json::to_vec(&reply).unwrap().into(),
                )
                .await
                .unwrap();
            body.action
        }
    });
    h.register("speaker", reloading("exec sleep 1000")).await;
    h.register(
        "hupper",
        reloading("trap 'echo reloaded' HUP; while true; do sleep 0.1; done"),
    )
    .await;
    h.command("speaker", AgentCommand::Start).await;
    h.command("hupper", AgentCommand::Start).await;
    for id in ["speaker", "hupper"] {
        let before = h.wait_for(id, "a process", |a| a.pid.is_some()).await;
        let after = h
            .wait_for(id, "recovered", |a| {
                a.recovery == opmas_domain::RecoveryStatus::Succeeded
            })
            .await;
        assert_eq!(after.pid, before.pid, "{id} was reloaded, not restarted");
        assert_eq!(after.restart_count, 0);
    }
    assert_eq!(answered.await.unwrap(), ControlAction::Reload);
    let out = h.logs.path().join("hupper/stdout.log");
    assert!(
        eventually(Duration::from_secs(5), || {
            let out = out.clone();
            async move {
                std::fs::read_to_string(out)
                    .map(|s| s.contains("reloaded"))
                    .unwrap_or(false)
            }
        })
        .await,
        "SIGHUP did not reach the agent"
    );
    h.finish().await;
}

/// An agent runs as the user its spec names; an unknown user fails the
/// agent with the reason, not the supervisor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_run_as_their_user() {
    let h = Harness::new().await;
    let mut spec = sh("exec sleep 1000");
    spec.user = Some("nobody".into());
    h.register("unprivileged", spec).await;
    h.command("unprivileged", AgentCommand::Start).await;
    let am_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if am_root {
        let agent = h
            .wait_for("unprivileged", "running", |a| {
                a.status == ProcessStatus::Running
            })
            .await;
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", agent.pid.unwrap())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(uid.split_whitespace().nth(1), Some("65534"), "{uid}");
    } else {
        // Without root, switching users fails, and says so.
        let agent = h
            .wait_for("unprivileged", "an error", |a| a.last_error.is_some())
            .await;
        assert!(agent.last_error.unwrap().contains("sh"));
    }
    let mut ghost = sh("exec sleep 1000");
    ghost.user = Some("no-such-user-here".into());
    h.register("ghost-user", ghost).await;
    h.command("ghost-user", AgentCommand::Start).await;
    let agent = h
        .wait_for("ghost-user", "an error", |a| a.last_error.is_some())
        .await;
    assert_eq!(
        agent.last_error.as_deref(),
        Some("cannot start the process: user `no-such-user-here` does not exist on this node")
    );
    assert_eq!(agent.status, ProcessStatus::Failed);
    h.finish().await;
}

/// A failed agent whose policy has a cooldown is started again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_agent_retries_after_cooldown() {
    let h = Harness::new().await;
    let mut spec = sh("exit 3");
    spec.restart.initial_delay_ms = 10;
    spec.restart.jitter = 0.0;
    spec.restart.intensity = 1;
    spec.restart.failed_cooldown_ms = Some(300);
    h.register("phoenix", spec).await;
    h.command("phoenix", AgentCommand::Start).await;
    h.wait_for("phoenix", "failed twice", |_| true).await;
    let events = loop {
        let events = h.events("phoenix").await;
        if count(&events, |e| matches!(e, AgentEvent::AgentFailed { .. })) >= 2 {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failed_at: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, AgentEvent::AgentFailed { .. }))
        .map(|(i, _)| i)
        .collect();
    assert!(
        matches!(events[failed_at[0] + 1], AgentEvent::StartRequested),
        "after the cooldown the supervisor starts it: {:?}",
        &events[failed_at[0]..]
    );
    h.command("phoenix", AgentCommand::Stop).await;
    h.finish().await;
}

/// The cgroup v2 mount point of this host, from /proc/self/mountinfo.
fn cgroup2_mount() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))
                .flatten()
        })
        .expect("this test needs a cgroup v2 hierarchy (mounted on every systemd host)")
}

/// With `--cgroups on`, an agent's descendants that leave its process
/// group (here with setsid) are still inside its cgroup, and die when it
/// is stopped: the process-group kill alone would miss them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn descendants_that_leave_the_group_die_with_the_agent_cgroup() {
    let h = Harness::without_supervisor().await;
    let root = cgroup2_mount().join(format!("opmas-test-{}", tag()));
    let mut config = h.config();
    config.cgroups = opmas_supervisor::cgroup::CgroupMode::On;
    config.cgroup_root = Some(root.clone());
    let supervisor = Supervisor::new(h.store.clone(), h.client.clone(), config).unwrap();
    tokio::spawn(supervisor.run(h.cancel.clone()));

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("escaped");
    h.register(
        "esc",
        sh(&format!(
            "setsid sleep 1000 & echo $! > {}; sleep 1000",
            marker.display()
        )),
    )
    .await;
    h.command("esc", AgentCommand::Start).await;
    let agent = h
        .wait_for("esc", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let pid = agent.pid.unwrap();
    let marker2 = marker.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let m = marker2.clone();
            async move {
                std::fs::read_to_string(&m).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
            }
        })
        .await
    );
    let escaped: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(escaped));
    assert!(
        !group_members(pid).contains(&escaped),
        "the descendant left the agent's process group"
    );
    let procs = std::fs::read_to_string(root.join("esc/cgroup.procs")).unwrap();
    let members: Vec<u32> = procs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        members.contains(&pid) && members.contains(&escaped),
        "agent {pid} and descendant {escaped} in its cgroup: {members:?}"
    );

    h.command("esc", AgentCommand::Stop).await;
    h.wait_for("esc", "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    let gone = eventually(Duration::from_secs(5), || async move { !alive(escaped) }).await;
    if !gone {
        kill(escaped, "-KILL");
    }
    assert!(gone, "descendant {escaped} outlived the agent");
    h.finish().await;
    let _ = std::fs::remove_dir(root.join("esc"));
    std::fs::remove_dir(&root).unwrap();
}

/// When `id` turned healthy (metadata time of its HealthChanged to healthy).
async fn healthy_at(h: &Harness, id: &str) -> chrono::DateTime<chrono::Utc> {
    let envelopes = h.store.events(id).await.unwrap();
    let e = envelopes
        .iter()
        .find(|e| {
            matches!(
                e.payload,
                AgentEvent::HealthChanged {
                    to: opmas_domain::Health::Healthy,
                    ..
                }
            )
        })
        .unwrap_or_else(|| panic!("{id} never turned healthy"));
    opmas_domain::EventMetadata::from_map(&e.metadata)
        .unwrap()
        .time
}

/// When `id`'s first process started.
async fn started_at(h: &Harness, id: &str) -> chrono::DateTime<chrono::Utc> {
    h.events(id)
        .await
        .into_iter()
        .find_map(|e| match e {
            AgentEvent::ProcessStarted { at, .. } => Some(at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{id} never started"))
}

/// A chain of three `requires` (api -> cache -> db), started in the wrong
/// order: each agent waits, saying what for, until the one it requires is
/// healthy (heartbeats), then starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requires_chain_starts_each_agent_after_its_requirement_is_healthy() {
    let h = Harness::new().await;
    for (id, requires) in [("api", Some("cache")), ("cache", Some("db")), ("db", None)] {
        let mut spec = beating("exec sleep 1000", 5_000, false);
        spec.requires.extend(requires.map(str::to_owned));
        h.register(id, spec).await;
        h.command(id, AgentCommand::Start).await;
    }
    let waits = |on: &'static str| {
        move |a: &Agent| {
            a.last_error.as_deref() == Some(&format!("waiting for {on} to be healthy"))
                && a.pid.is_none()
        }
    };
    h.wait_for("db", "running", |a| a.status == ProcessStatus::Running)
        .await;
    h.wait_for("cache", "waiting for db", waits("db")).await;
    h.wait_for("api", "waiting for cache", waits("cache")).await;

    let db_beats = heartbeats(&h, "db");
    h.wait_for("cache", "running", |a| a.status == ProcessStatus::Running)
        .await;
    assert!(
        h.agent("api").await.pid.is_none(),
        "api must wait for cache"
    );
    let cache_beats = heartbeats(&h, "cache");
    h.wait_for("api", "running", |a| a.status == ProcessStatus::Running)
        .await;

    assert!(started_at(&h, "cache").await >= healthy_at(&h, "db").await);
    assert!(started_at(&h, "api").await >= healthy_at(&h, "cache").await);
    db_beats.cancel();
    cache_beats.cancel();
    h.finish().await;
}

/// A config change reaches a running agent as its spec's `reload` says:
/// SIGHUP, after which it re-reads `OPMAS_AGENT_CONFIG_FILE` (same
/// process), or a restart (a new process started with the new config).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_changes_reach_running_agents_by_sighup_or_restart() {
    let h = Harness::new().await;
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let mut spec = sh(&format!(
        "trap 'cat \"$OPMAS_AGENT_CONFIG_FILE\" > {}' HUP; while true; do sleep 0.1; done",
        seen.display()
    ));
    spec.reload = opmas_domain::ReloadMode::Sighup;
    h.register("hup", spec).await;
    h.command("hup", AgentCommand::Start).await;
    let agent = h
        .wait_for("hup", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let pid = agent.pid.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // let sh install its trap
    h.command(
        "hup",
        AgentCommand::UpdateConfig {
            expected_version: agent.config_version,
            config: serde_json::json!({"level": "debug"}),
        },
    )
    .await;
    let seen2 = seen.clone();
    let reloaded = eventually(Duration::from_secs(10), || {
        let seen = seen2.clone();
        async move { std::fs::read_to_string(&seen).is_ok_and(|s| s.contains("\"debug\"")) }
    })
    .await;
    assert!(reloaded, "the agent never read the new config after SIGHUP");
    assert_eq!(
        h.agent("hup").await.pid,
        Some(pid),
        "SIGHUP reload restarted it"
    );

    let mut spec = sh("exec sleep 1000");
    spec.reload = opmas_domain::ReloadMode::Restart;
    h.register("rst", spec).await;
    h.command("rst", AgentCommand::Start).await;
    let agent = h
        .wait_for("rst", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let old = agent.pid.unwrap();
    h.command(
        "rst",
        AgentCommand::UpdateConfig {
            expected_version: agent.config_version,
            config: serde_json::json!({"level": "debug"}),
        },
    )
    .await;
    let restarted = h
        .wait_for("rst", "restarted with the new config", |a| {
            a.status == ProcessStatus::Running && a.pid.is_some_and(|p| p != old)
        })
        .await;
    assert!(!alive(old));
    let env = std::fs::read(format!("/proc/{}/environ", restarted.pid.unwrap())).unwrap();
    assert!(
        String::from_utf8_lossy(&env).contains(r#"OPMAS_AGENT_CONFIG={"level":"debug"}"#),
        "the new process has the new config"
    );
    h.finish().await;
}

fn probed(check: opmas_domain::HealthCheck, auto_recover: bool) -> AgentSpec {
    let mut spec = sh("exec sleep 1000");
    spec.heartbeat.enabled = false;
    spec.health_check = opmas_domain::HealthCheckSpec {
        check,
        interval_ms: 100,
        timeout_ms: 1_000,
        failure_threshold: 2,
    };
    spec.recovery.auto = auto_recover;
    spec
}

/// exec, tcp and http health checks: a passing probe makes the agent
/// healthy, `failure_threshold` failures critical (one event per change),
/// and a critical agent is restarted when its recovery policy says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_tcp_and_http_health_checks_drive_health() {
    use opmas_domain::{Health, HealthCheck};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    use tokio::io::AsyncWriteExt;
    let h = Harness::new().await;
    let dir = tempfile::tempdir().unwrap();

    // exec: `test -f marker`, run with the agent's id and pid
    let marker = dir.path().join("ok");
    std::fs::write(&marker, "").unwrap();
    let exec = HealthCheck::Exec {
        command: "sh".into(),
        args: vec![
            "-c".into(),
            r#"test -f "$0" && test "$AGENT_ID" = by-exec && kill -0 "$AGENT_PID""#.into(),
            marker.display().to_string(),
        ],
    };
    h.register("by-exec", probed(exec, false)).await;
    // tcp: a listener the test opens and closes
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tcp = HealthCheck::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    h.register("by-tcp", probed(tcp, false)).await;
    // http: a server whose answer the test sets
    let answer = Arc::new(AtomicU16::new(200));
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", server.local_addr().unwrap());
    let served = answer.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = server.accept().await {
            let code = served.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
                let _ = conn
                    .write_all(format!("HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    h.register("by-http", probed(HealthCheck::Http { url }, true))
        .await;

    for id in ["by-exec", "by-tcp", "by-http"] {
        h.command(id, AgentCommand::Start).await;
        h.wait_for(id, "healthy", |a| {
            a.status == ProcessStatus::Running && a.health == Health::Healthy
        })
        .await;
    }
    let http_pid = h.agent("by-http").await.pid.unwrap();

    std::fs::remove_file(&marker).unwrap();
    drop(listener);
    answer.store(503, Ordering::Relaxed);
    h.wait_for("by-exec", "critical", |a| a.health == Health::Critical)
        .await;
    h.wait_for("by-tcp", "critical", |a| a.health == Health::Critical)
        .await;
    // by-http recovers by restart: a new process, healthy once the server is.
    h.wait_for("by-http", "restarted", |a| {
        a.pid.is_some_and(|p| p != http_pid) && a.status == ProcessStatus::Running
    })
    .await;
    answer.store(200, Ordering::Relaxed);
    h.wait_for("by-http", "healthy again", |a| a.health == Health::Healthy)
        .await;

    std::fs::write(&marker, "").unwrap();
    h.wait_for("by-exec", "healthy again", |a| a.health == Health::Healthy)
        .await;
    let events = h.events("by-exec").await;
    let changes: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::HealthChanged { to, reason, .. } => Some(format!("{to:?}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 3, "one event per change: {changes:?}");
    assert!(
        changes[1].contains("2 health checks failed in a row")
            && changes[1].contains("`sh` exited"),
        "{changes:?}"
    );
    let tcp_events = h.events("by-tcp").await;
    assert!(
        tcp_events.iter().any(|e| matches!(e, AgentEvent::HealthChanged { reason, .. } if reason.contains("cannot connect"))),
        "tcp failure reason recorded"
    );
    assert_eq!(
        h.agent("by-exec").await.status,
        ProcessStatus::Running,
        "no auto recovery: still running"
    );
    h.finish().await;
}

/// The signal that ended the last process of `id`.
async fn last_exit_signal(h: &Harness, id: &str) -> Option<i32> {
    h.events(id)
        .await
        .iter()
        .rev()
        .find_map(|e| match e {
            AgentEvent::ProcessExited { signal, .. } => Some(*signal),
            _ => None,
        })
        .flatten()
}

/// `stop_signal = "control"`: a stop is asked with a `stop` control request
/// (the agent ends itself); an agent that does not answer gets SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_by_control_request_or_sigterm_when_unanswered() {
    use futures::StreamExt;
    let h = Harness::new().await;
    let mut spec = sh("exec sleep 1000");
    spec.stop_signal = "control".into();
    spec.stop_grace_ms = 5_000;
    h.register("silent", spec.clone()).await;
    h.register("talker", spec).await;
    for id in ["silent", "talker"] {
        h.command(id, AgentCommand::Start).await;
        h.wait_for(id, "running", |a| a.status == ProcessStatus::Running)
            .await;
    }
    // "talker" answers control requests: on stop it ends its process with SIGINT.
    let pid = h.agent("talker").await.pid.unwrap();
    let mut requests = h
        .client
        .subscribe(format!("{}.talker", h.control_prefix))
        .await
        .unwrap();
    let client = h.client.clone();
    let responder = tokio::spawn(async move {
        let msg = requests.next().await.unwrap();
        let request: opmas_domain::control::ControlRequest =
            serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(request.action, opmas_domain::control::ControlAction::Stop);
        let reply = serde_json::json!({"ok": true, "message": "stopping"});
        client
            .publish(msg.reply.unwrap(), reply.to_string().into())
            .await
            .unwrap();
        kill(pid, "-INT");
    });
    h.client.flush().await.unwrap();
    h.command("talker", AgentCommand::Stop).await;
    h.wait_for("talker", "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    responder.await.unwrap();
    assert_eq!(
        last_exit_signal(&h, "talker").await,
        Some(2),
        "ended by the agent (SIGINT), not SIGTERM"
    );

    h.command("silent", AgentCommand::Stop).await;
    h.wait_for("silent", "stopped", |a| a.status == ProcessStatus::Stopped)
        .await;
    assert_eq!(
        last_exit_signal(&h, "silent").await,
        Some(15),
        "no answer: SIGTERM"
    );
    h.finish().await;
}

/// `--agent-nats-url` is what agents get as NATS_URL (not the control
/// plane's own URL and rights).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_get_the_agent_nats_url() {
    let h = Harness::without_supervisor().await;
    let mut supervisor =
        h.spawn_supervisor_process_with(&["--agent-nats-url", "nats://agents:pw@127.0.0.1:4999"]);
    h.register("env-check", sh("exec sleep 1000")).await;
    h.command("env-check", AgentCommand::Start).await;
    let agent = h
        .wait_for("env-check", "running", |a| {
            a.status == ProcessStatus::Running
        })
        .await;
    let env = std::fs::read(format!("/proc/{}/environ", agent.pid.unwrap())).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(
        env.contains("NATS_URL=nats://agents:pw@127.0.0.1:4999\0"),
        "{env}"
    );
    supervisor.kill().await.unwrap();
    h.finish().await;
}

/// A recovery an operator triggers (`POST .../recover`) is carried out by
/// the supervisor, once: `restart` restarts the process, `reload` sends the
/// reload (SIGHUP here: the agent does not answer control requests); each
/// completes the recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_recoveries_are_carried_out() {
    use opmas_domain::RecoveryStrategy;
    let h = Harness::new().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("reloaded");
    let mut spec = sh(&format!(
        "trap 'echo hup >> {}' HUP; while true; do sleep 0.1; done",
        marker.display()
    ));
    spec.recovery.auto = false;
    h.register("rec", spec).await;
    h.command("rec", AgentCommand::Start).await;
    let agent = h
        .wait_for("rec", "running", |a| a.status == ProcessStatus::Running)
        .await;
    let pid = agent.pid.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // let sh install its trap

    h.command(
        "rec",
        AgentCommand::TriggerRecovery {
            strategy: RecoveryStrategy::Reload,
            reason: "operator: reload".into(),
        },
    )
    .await;
    h.wait_for("rec", "reload recovery done", |a| {
        a.recovery == opmas_domain::RecoveryStatus::Succeeded
    })
    .await;
    let marker2 = marker.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let m = marker2.clone();
            async move { std::fs::read_to_string(&m).is_ok_and(|s| s.lines().count() == 1) }
        })
        .await,
        "exactly one SIGHUP"
    );
    assert_eq!(
        h.agent("rec").await.pid,
        Some(pid),
        "a reload does not restart"
    );

    h.command(
        "rec",
        AgentCommand::TriggerRecovery {
            strategy: RecoveryStrategy::Restart,
            reason: "operator: restart".into(),
        },
    )
    .await;
    let restarted = h
        .wait_for("rec", "restart recovery done", |a| {
            a.status == ProcessStatus::Running
                && a.pid.is_some_and(|p| p != pid)
                && a.recovery == opmas_domain::RecoveryStatus::Succeeded
        })
        .await;
    let events = h.events("rec").await;
    let completed = count(&events, |e| {
        matches!(
            e,
            AgentEvent::RecoveryCompleted {
                succeeded: true,
                ..
            }
        )
    });
    assert_eq!(completed, 2, "each recovery completed once");
    let started = count(&events, |e| matches!(e, AgentEvent::ProcessStarted { .. }));
    assert_eq!(started, 2, "one restart: {events:?}");
    assert_eq!(h.agent("rec").await.pid, restarted.pid);
    h.finish().await;
}
