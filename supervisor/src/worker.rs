//! One task per agent: it owns the agent's process and reconciles desired
//! and observed state, one step at a time, so that operations on one agent
//! never interleave while different agents proceed in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use opmas_domain::control::ControlAction;
use opmas_domain::{
    Agent, AgentCommand, AgentError, AgentEvent, AgentSpec, DesiredState, EventMetadata, Health,
    ProcessStatus, RecoveryStatus, RecoveryStrategy, RestartDecision, Severity,
};
use opmas_store::{AgentStore, CommandError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::control::ControlError;
use crate::heartbeat::{Monitor, Transition};
use crate::logs::LogHub;
use crate::metrics::{Breach, Sampler};
use crate::process::{Exit, Proc};
use crate::{Config, identity};

/// What a worker is asked to do.
pub(crate) enum Msg {
    /// Compare desired and observed state and act; answer when done.
    /// `seen` is the sequence of the agent's event that asked for it (none
    /// for the periodic safety net, which always reads the event store).
    Reconcile {
        done: Option<oneshot::Sender<()>>,
        seen: Option<usize>,
    },
    /// The heartbeat monitor saw a transition.
    Heartbeat(Transition),
    /// The sampler saw a limit exceeded for its whole window.
    Limit(Breach),
}

/// State shared by all workers of a supervisor.
pub(crate) struct Shared {
    pub store: AgentStore,
    pub config: Config,
    pub boot_id: String,
    pub logs: LogHub,
    pub heartbeats: Monitor,
    pub metrics: Sampler,
    pub client: async_nats::Client,
    /// The agents' cgroups, when used on this node.
    pub cgroups: Option<crate::cgroup::Cgroups>,
    /// Spawns in progress at once (one per core): a bulk start queues here
    /// instead of filling the blocking pool with hundreds of threads.
    pub spawns: tokio::sync::Semaphore,
}

pub(crate) struct Worker {
    id: String,
    shared: Arc<Shared>,
    proc: Option<Proc>,
    wake_at: Option<Instant>,
    /// End of the restart backoff the last exit decided: no spawn before it.
    /// Kept apart from `wake_at`, which also holds stop deadlines and retries
    /// (a start right after a stop once waited out the stop's grace).
    backoff_until: Option<Instant>,
    pid: Arc<AtomicU32>,
    cancel: CancellationToken,
    recovering: bool,
    /// The recovery attempt this worker carried out or started last (an
    /// operator's recovery is carried out once).
    handled_recovery: Option<u32>,
    failed_retry_at: Option<Instant>,
    /// The highest sequence of this agent seen in an event or committed by
    /// this worker: the store's cached agent at or past it is fresh enough
    /// to decide on (anything later arrives as another event).
    known: usize,
    last_spawn_error: Option<String>,
    /// Required agents not yet healthy, as last reported.
    waiting: Vec<String>,
    /// The config the running process has (from its start or last reload).
    applied_config: Option<serde_json::Value>,
    /// Health probe of the running process (exec, http or tcp checks).
    probe: Option<(mpsc::Receiver<crate::probe::ProbeChange>, CancellationToken)>,
}

const RETRY: Duration = Duration::from_secs(1);

/// How often an agent waiting for its `requires` checks them again.
const REQUIRES_POLL: Duration = Duration::from_millis(500);

impl Worker {
    pub fn start(id: String, shared: Arc<Shared>, cancel: CancellationToken) -> mpsc::Sender<Msg> {
        let (tx, rx) = mpsc::channel(64);
        let worker = Self {
            id,
            shared,
            proc: None,
            wake_at: None,
            backoff_until: None,
            pid: Arc::default(),
            cancel: cancel.clone(),
            recovering: false,
            handled_recovery: None,
            failed_retry_at: None,
            known: 0,
            last_spawn_error: None,
            waiting: Vec::new(),
            applied_config: None,
            probe: None,
        };
        tokio::spawn(worker.run(rx, cancel));
        tx
    }

    /// The handlers are boxed: an idle worker's future then holds only the
    /// select's own futures (1 KB, not the 15 KB of the largest handler).
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, cancel: CancellationToken) {
        loop {
            let wake = self.wake_at;
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Reconcile { done, seen }) => {
                        match seen {
                            Some(seen) => {
                                self.known = self.known.max(seen);
                                Box::pin(self.reconcile()).await;
                            }
                            None => Box::pin(self.reconcile_from_store()).await,
                        }
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    Some(Msg::Heartbeat(transition)) => Box::pin(self.on_heartbeat(transition)).await,
                    Some(Msg::Limit(breach)) => Box::pin(self.on_breach(breach)).await,
                    None => break,
                },
                Some(change) = next_probe(&mut self.probe) => Box::pin(self.on_probe(change)).await,
                exit = Proc::exited(&mut self.proc) => {
                    Box::pin(self.on_exit(exit)).await;
                    Box::pin(self.reconcile()).await;
                }
                () = sleep_until(wake) => {
                    self.wake_at = None;
                    Box::pin(self.reconcile()).await;
                }
                () = cancel.cancelled() => break,
            }
        }
        // Processes keep running when the supervisor stops: the next one adopts them.
    }

    fn meta(&self) -> HashMap<String, String> {
        let node = &self.shared.config.node;
        EventMetadata::new(format!("supervisor:{node}"), new_id(), Utc::now())
            .with_node(node.clone())
            .to_map()
    }

    async fn report(&mut self, command: AgentCommand) -> Result<Vec<AgentEvent>, CommandError> {
        // Boxed, as every store call here: the store's futures are ~10 KB,
        // and inline they would make each handler's future as large.
        let events = Box::pin(self.shared.store.execute_with_retry(
            &self.id,
            command,
            self.meta(),
            20,
        ))
        .await?;
        if let Some(last) = events.last() {
            self.known = self.known.max(last.sequence);
        }
        Ok(events.into_iter().map(|e| e.payload).collect())
    }

    /// Schedules a reconcile after `delay` (the earliest pending wake wins;
    /// one already in the past is spent and replaced, or it would cut every
    /// later backoff short).
    fn wake_in(&mut self, delay: Duration) {
        let now = Instant::now();
        let at = now + delay;
        self.wake_at = Some(match self.wake_at {
            Some(pending) if pending > now => pending.min(at),
            _ => at,
        });
    }

    /// Reconciles on the agent as the store last saw it when that is at
    /// least as recent as every event this worker has seen (the usual case:
    /// the event was this process's own command, or this worker's fact);
    /// otherwise on the stored state.
    async fn reconcile(&mut self) {
        let cached = self
            .shared
            .store
            .cached(&self.id)
            .filter(|(_, sequence)| self.known > 0 && *sequence >= self.known);
        match cached {
            Some((agent, _)) => self.reconcile_on(agent).await,
            None => self.reconcile_from_store().await,
        }
    }

    async fn reconcile_from_store(&mut self) {
        let agent = match Box::pin(self.shared.store.load(&self.id)).await {
            Ok((agent, sequence)) => {
                self.known = self.known.max(sequence);
                agent
            }
            Err(err) => {
                warn!(agent_id = %self.id, error = %err, "cannot load agent; retrying");
                self.wake_in(RETRY);
                return;
            }
        };
        self.reconcile_on(agent).await;
    }

    async fn reconcile_on(&mut self, agent: Agent) {
        if !agent.registered || agent.deregistered || !self.placed_here(&agent) {
            self.stop_now();
            return;
        }
        self.kill_overdue();
        self.operator_recovery(&agent).await;
        match agent.status {
            ProcessStatus::Starting | ProcessStatus::Backoff => self.ensure_started(&agent).await,
            ProcessStatus::Running | ProcessStatus::Degraded => {
                self.ensure_watched(&agent).await;
                self.apply_config(&agent).await;
            }
            ProcessStatus::Stopping => self.ensure_stopping(&agent).await,
            ProcessStatus::Failed => {
                self.begin_stop(&agent);
                self.retry_failed(&agent).await;
            }
            ProcessStatus::Registered | ProcessStatus::Stopped => {
                // Stopped by the operator: the next start is theirs, at once.
                self.backoff_until = None;
                self.begin_stop(&agent);
            }
        }
    }

    /// A failed agent whose policy has a cooldown is started again after it.
    async fn retry_failed(&mut self, agent: &Agent) {
        let cooldown = agent
            .spec
            .as_ref()
            .and_then(|s| s.restart.failed_cooldown_ms);
        let (Some(cooldown), DesiredState::Running) = (cooldown, agent.desired) else {
            self.failed_retry_at = None;
            return;
        };
        let now = Instant::now();
        let at = *self
            .failed_retry_at
            .get_or_insert(now + Duration::from_millis(cooldown));
        if at > now {
            self.wake_in(at - now);
            return;
        }
        self.failed_retry_at = None;
        info!(agent_id = %self.id, "cooldown over: starting the failed agent again");
        if let Err(err) = self.report(AgentCommand::Start).await {
            warn!(agent_id = %self.id, error = %err, "cannot restart failed agent");
            self.wake_in(RETRY);
        }
    }

    fn placed_here(&self, agent: &Agent) -> bool {
        let node = &self.shared.config.node;
        match agent.spec.as_ref().and_then(|s| s.node.as_ref()) {
            Some(wanted) => wanted == node,
            None => match (&agent.node, agent.status.has_process()) {
                (Some(running_on), true) => running_on == node,
                _ => self.shared.config.claim_unplaced,
            },
        }
    }

    async fn ensure_started(&mut self, agent: &Agent) {
        if agent.desired != DesiredState::Running {
            return;
        }
        if let Some(proc) = &self.proc {
            if !proc.stopping() {
                // Spawned, but the report did not land: say it again (idempotent).
                self.report_started(proc.identity.clone()).await;
            }
            return;
        }
        if let Some(until) = self.backoff_until {
            let now = Instant::now();
            if until > now {
                self.wake_in(until - now); // backoff delay still running
                return;
            }
            self.backoff_until = None;
        }
        if self.wait_for_requirements(agent).await {
            return;
        }
        debug!(agent_id = %self.id, status = %agent.status, wake_at = ?self.wake_at, "spawning");
        self.spawn(agent).await;
    }

    /// True while an agent in `spec.requires` is not healthy: the start
    /// waits (checked again every [`REQUIRES_POLL`]). Each new set of
    /// agents waited for is logged and recorded (severity info) once.
    async fn wait_for_requirements(&mut self, agent: &Agent) -> bool {
        let Some(spec) = agent.spec.as_ref() else {
            return false;
        };
        let mut waiting = Vec::new();
        for required in &spec.requires {
            let ready = match Box::pin(self.shared.store.load(required)).await {
                Ok((other, _)) => requirement_met(&other),
                Err(_) => false,
            };
            if !ready {
                waiting.push(required.clone());
            }
        }
        if waiting != self.waiting && !waiting.is_empty() {
            let message = format!("waiting for {} to be healthy", waiting.join(", "));
            info!(agent_id = %self.id, waiting_for = ?waiting, "start waits for required agents");
            let _ = self
                .report(AgentCommand::RecordError {
                    severity: Severity::Info,
                    category: "start_order".into(),
                    error_type: "WaitingForRequirements".into(),
                    message,
                    context: serde_json::json!({ "waiting_for": waiting }),
                })
                .await;
        }
        let blocked = !waiting.is_empty();
        self.waiting = waiting;
        if blocked {
            self.wake_in(REQUIRES_POLL);
        }
        blocked
    }

    async fn spawn(&mut self, agent: &Agent) {
        let Some(spec) = agent.spec.as_ref() else {
            return;
        };
        match self.spawn_process(spec, false).await {
            Some(identity) => self.report_started(identity).await,
            None => self.report_spawn_failed(spec).await,
        }
    }

    /// Starts the process and takes charge of it; on failure, keeps the
    /// error for [`Self::report_spawn_failed`].
    ///
    /// The spawn (log files, config file, cgroup, `posix_spawn` or `fork`)
    /// is blocking file-system work: it runs on Tokio's blocking pool, so
    /// that hundreds of agents starting at once do not starve the commits
    /// and NATS traffic of the runtime's threads. A restart after a crash
    /// (`inline`) spawns on the worker's own thread: it is one process, and
    /// the hop to another thread would be on the restart's critical path.
    async fn spawn_process(
        &mut self,
        spec: &AgentSpec,
        inline: bool,
    ) -> Option<opmas_domain::ProcessIdentity> {
        let sizes = self.shared.logs.sizes(&self.id);
        let (shared, id, owned) = (self.shared.clone(), self.id.clone(), spec.clone());
        let spawned = if inline {
            Proc::spawn(&self.id, spec, &shared.config, shared.cgroups.as_ref())
        } else {
            async {
                let _permit = shared.spawns.acquire().await;
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || {
                    Proc::spawn(&id, &owned, &shared.config, shared.cgroups.as_ref())
                })
                .await
            }
            .await
            .unwrap_or_else(|join| {
                Err(crate::spawn::SpawnError::Exec {
                    program: spec.command.clone(),
                    source: std::io::Error::other(join.to_string()),
                })
            })
        };
        match spawned {
            Ok(proc) => {
                self.last_spawn_error = None;
                info!(agent_id = %self.id, pid = proc.identity.pid, "started");
                let identity = proc.identity.clone();
                self.watch(proc, spec, Some(sizes));
                Some(identity)
            }
            Err(err) => {
                warn!(agent_id = %self.id, error = %err, "spawn failed");
                self.last_spawn_error = Some(err.to_string());
                None
            }
        }
    }

    /// The process could not be started: the agent fails with the reason
    /// (the restart policy's cooldown, or an operator's Start, tries again).
    async fn report_spawn_failed(&mut self, spec: &AgentSpec) {
        let Some(message) = self.last_spawn_error.take() else {
            return;
        };
        let fact = AgentCommand::ReportSpawnFailed {
            message: message.clone(),
            context: serde_json::json!({ "command": spec.command, "args": spec.args }),
        };
        match self.report(fact).await {
            Ok(_) => {}
            Err(CommandError::Rejected(err)) => {
                debug!(agent_id = %self.id, error = %err, "spawn failure not recorded: the agent moved on");
            }
            Err(err) => {
                warn!(agent_id = %self.id, error = %err, "cannot report the spawn failure; retrying");
                self.last_spawn_error = Some(message);
                self.wake_in(RETRY);
            }
        }
    }

    fn started_fact(&self, identity: opmas_domain::ProcessIdentity) -> AgentCommand {
        AgentCommand::ReportProcessStarted {
            node: self.shared.config.node.clone(),
            identity,
            at: Utc::now(),
        }
    }

    async fn report_started(&mut self, identity: opmas_domain::ProcessIdentity) {
        let result = self.report(self.started_fact(identity)).await;
        self.on_started_reported(result).await;
    }

    async fn on_started_reported(&mut self, result: Result<Vec<AgentEvent>, CommandError>) {
        match result {
            Ok(_) => {
                if std::mem::take(&mut self.recovering) {
                    self.complete_recovery().await;
                }
            }
            Err(CommandError::Rejected(err)) => {
                // Desired state moved on (e.g. stopped meanwhile): the process must go.
                debug!(agent_id = %self.id, error = %err, "start refused; stopping the process");
                if let Some(proc) = &mut self.proc {
                    proc.begin_stop(Duration::from_secs(5), nix::sys::signal::Signal::SIGTERM);
                }
            }
            Err(err) => {
                warn!(agent_id = %self.id, error = %err, "cannot report start; retrying");
                self.wake_in(RETRY);
            }
        }
    }

    /// Takes charge of a process: its exit, its output.
    fn watch(&mut self, proc: Proc, spec: &AgentSpec, log_offsets: Option<[u64; 2]>) {
        self.pid.store(proc.identity.pid, Ordering::Relaxed);
        // A spawned process got this config; an adopted one is assumed to
        // have it (what it was given is not recorded).
        self.applied_config = Some(spec.config.clone());
        self.stop_probe();
        if spec.health_check.check != opmas_domain::HealthCheck::Heartbeat {
            let cancel = self.cancel.child_token();
            // Exec probes run with the agent's PATH, which may be sealed.
            let clear = crate::process::open_spec(&self.id, spec, &self.shared.config);
            let path_var = clear
                .as_ref()
                .unwrap_or(spec)
                .env
                .get("PATH")
                .cloned()
                .or_else(|| std::env::var("PATH").ok())
                .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
            // Exec checks also learn whose check they are: one script can
            // serve every instance of a package.
            let env = vec![
                ("PATH".to_owned(), path_var),
                ("AGENT_ID".to_owned(), self.id.clone()),
                ("AGENT_PID".to_owned(), proc.identity.pid.to_string()),
            ];
            let rx = crate::probe::spawn(
                spec.health_check.clone(),
                env,
                spec.working_dir.clone(),
                cancel.clone(),
            );
            self.probe = Some((rx, cancel));
        }
        self.shared
            .metrics
            .watch(&self.id, proc.identity.pid, spec.limits.clone());
        if spec.heartbeat.enabled {
            self.shared.heartbeats.watch(
                &self.id,
                Duration::from_millis(spec.heartbeat.timeout_ms),
                Duration::from_millis(spec.heartbeat.startup_grace_ms),
            );
        }
        self.shared
            .logs
            .ship(&self.id, self.pid.clone(), log_offsets, self.cancel.clone());
        self.proc = Some(proc);
    }

    async fn ensure_watched(&mut self, agent: &Agent) {
        if let Some(proc) = &self.proc {
            if agent.pid.is_some_and(|pid| pid != proc.identity.pid) {
                warn!(agent_id = %self.id, "a process the agent does not know about: stopping it");
                self.begin_stop(agent);
            }
            return;
        }
        if let Some(identity) = &agent.process
            && identity.boot_id == self.shared.boot_id
            && identity::is_alive(identity)
        {
            info!(agent_id = %self.id, pid = identity.pid, "adopted running process");
            if let Some(spec) = &agent.spec {
                self.watch(Proc::adopt(identity.clone()), spec, None);
            }
            return;
        }
        // Recorded as running, but gone (it died while no supervisor watched).
        let Some(pid) = agent.pid else { return };
        self.report_exit(exit_fact(pid, Exit::unknown())).await;
        self.wake_in(Duration::ZERO);
    }

    async fn ensure_stopping(&mut self, agent: &Agent) {
        if self.proc.is_none()
            && let Some(identity) = &agent.process
            && identity.boot_id == self.shared.boot_id
            && identity::is_alive(identity)
            && let Some(spec) = &agent.spec
        {
            self.watch(Proc::adopt(identity.clone()), spec, None);
        }
        if self.proc.is_some() {
            self.begin_stop(agent);
            return;
        }
        match self
            .report(AgentCommand::ReportStopped { at: Utc::now() })
            .await
        {
            Ok(_) | Err(CommandError::Rejected(_)) => self.wake_in(Duration::ZERO),
            Err(err) => {
                warn!(agent_id = %self.id, error = %err, "cannot report stop; retrying");
                self.wake_in(RETRY);
            }
        }
    }

    /// Signals the process group with the spec's stop signal; SIGKILL follows
    /// after the grace period (see [`Worker::kill_overdue`]).
    fn begin_stop(&mut self, agent: &Agent) {
        let Some(proc) = &mut self.proc else { return };
        if proc.stopping() {
            return;
        }
        if let Some(spec) = agent.spec.as_ref().filter(|s| s.stop_signal == "control") {
            // A `stop` control request; SIGTERM to the group when it is not
            // answered (or refused). SIGKILL after the grace period either way.
            let grace = Duration::from_millis(spec.stop_grace_ms);
            proc.begin_quiet_stop(grace);
            let (client, prefix, id, pid) = (
                self.shared.client.clone(),
                self.shared.config.control_prefix.clone(),
                self.id.clone(),
                proc.identity.pid,
            );
            tokio::spawn(async move {
                let answer = crate::control::request(
                    &client,
                    &prefix,
                    &id,
                    ControlAction::Stop,
                    Duration::from_secs(2),
                )
                .await;
                match answer {
                    Ok(reply) if reply.ok => {
                        debug!(agent_id = %id, "stop asked by control request")
                    }
                    other => {
                        debug!(agent_id = %id, answer = ?other, "no stop by control: SIGTERM");
                        let _ = crate::signal::group(pid, nix::sys::signal::Signal::SIGTERM);
                    }
                }
            });
            self.wake_in(grace);
            return;
        }
        let (grace, signal) = agent.spec.as_ref().map_or(
            (Duration::from_secs(10), nix::sys::signal::Signal::SIGTERM),
            |s| {
                (
                    Duration::from_millis(s.stop_grace_ms),
                    crate::signal::parse(&s.stop_signal)
                        .unwrap_or(nix::sys::signal::Signal::SIGTERM),
                )
            },
        );
        proc.begin_stop(grace, signal);
        self.wake_in(grace);
    }

    fn stop_now(&mut self) {
        if let Some(proc) = &mut self.proc {
            proc.begin_stop(Duration::ZERO, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn kill_overdue(&mut self) {
        if let Some(proc) = &mut self.proc {
            proc.kill_if_overdue();
        }
    }

    async fn on_exit(&mut self, exit: Exit) {
        let Some(proc) = self.proc.take() else { return };
        self.shared.heartbeats.unwatch(&self.id);
        self.shared.metrics.unwatch(&self.id);
        self.stop_probe();
        let pid = proc.identity.pid;
        // Nothing of the agent may outlive it: kill what is left of its
        // process group, and of its cgroup (descendants that left the group).
        let _ = crate::signal::group(pid, nix::sys::signal::Signal::SIGKILL);
        if let Some(cgroups) = &self.shared.cgroups {
            cgroups.kill(&self.id);
        }
        info!(agent_id = %self.id, pid, code = ?exit.code, signal = ?exit.signal, "exited");
        let fact = exit_fact(pid, exit);
        // Fast path: when the agent as last seen restarts at once on this
        // exit, start the replacement before the facts are committed. If the
        // view was stale (say, stopped meanwhile), the start is refused and
        // the new process stopped.
        let replacement = match self.immediate_restart(&fact) {
            Some(spec) => {
                debug!(agent_id = %self.id, "restarting before the exit is committed");
                self.spawn_process(&spec, true).await
            }
            None => None,
        };
        match replacement {
            Some(identity) => self.report_restarted(fact, identity).await,
            None => {
                self.report_exit(fact).await;
                if self.last_spawn_error.is_some()
                    && let Some(spec) = self.shared.store.cached(&self.id).and_then(|(a, _)| a.spec)
                {
                    self.report_spawn_failed(&spec).await;
                }
            }
        }
    }

    /// The exit and the replacement's start, committed together (one
    /// transaction: the restart's facts are durable one commit after the
    /// exit, not two). If the exit is refused, or the commit fails, each
    /// fact goes on its own as before.
    async fn report_restarted(
        &mut self,
        exit: AgentCommand,
        identity: opmas_domain::ProcessIdentity,
    ) {
        let facts = [exit.clone(), self.started_fact(identity.clone())];
        let store = self.shared.store.clone();
        match Box::pin(store.execute_all(&self.id, &facts, self.meta())).await {
            Ok((committed, refused)) if !committed.is_empty() => {
                if let Some(last) = committed.iter().flatten().last() {
                    self.known = self.known.max(last.sequence);
                }
                let mut committed = committed.into_iter();
                let exit_events = committed.next().unwrap_or_default();
                self.on_exit_reported(Ok(exit_events.into_iter().map(|e| e.payload).collect()));
                let started = match (committed.next(), refused) {
                    (Some(events), _) => Ok(events.into_iter().map(|e| e.payload).collect()),
                    (None, Some(err)) => Err(CommandError::Rejected(err)),
                    (None, None) => Ok(Vec::new()),
                };
                self.on_started_reported(started).await;
            }
            // The exit refused (an old process), or a conflict: one by one.
            Ok(_) | Err(CommandError::Conflict) => {
                self.report_exit(exit).await;
                self.report_started(identity).await;
            }
            Err(err) => {
                let message = err.to_string();
                self.on_exit_reported(Err(err));
                self.on_started_reported(Err(CommandError::Unavailable(message)))
                    .await;
            }
        }
    }

    fn immediate_restart(&self, fact: &AgentCommand) -> Option<AgentSpec> {
        let (agent, _) = self.shared.store.cached(&self.id)?;
        let events = agent.events_for(fact.clone()).ok()?;
        let now = events.iter().any(|e| {
            matches!(
                e,
                AgentEvent::ProcessExited {
                    decision: RestartDecision::Restart { delay_ms: 0, .. },
                    ..
                }
            )
        });
        if now { agent.spec } else { None }
    }

    async fn report_exit(&mut self, command: AgentCommand) {
        let result = self.report(command).await;
        self.on_exit_reported(result);
    }

    fn on_exit_reported(&mut self, result: Result<Vec<AgentEvent>, CommandError>) {
        match result {
            Ok(events) => {
                for event in events {
                    if let AgentEvent::ProcessExited {
                        decision: RestartDecision::Restart { delay_ms, .. },
                        ..
                    } = event
                    {
                        let delay = Duration::from_millis(delay_ms);
                        self.backoff_until = Some(Instant::now() + delay);
                        self.wake_in(delay);
                    }
                }
            }
            Err(CommandError::Rejected(AgentError::StaleFact { reason })) => {
                debug!(agent_id = %self.id, reason, "exit of an old process");
            }
            Err(err) => {
                warn!(agent_id = %self.id, error = %err, "cannot report exit; retrying");
                self.wake_in(RETRY);
            }
        }
    }
}

impl Worker {
    fn stop_probe(&mut self) {
        if let Some((_, cancel)) = self.probe.take() {
            cancel.cancel();
        }
    }

    /// A health probe changed its verdict: one `HealthChanged`; a critical
    /// agent is recovered as its policy says.
    async fn on_probe(&mut self, change: crate::probe::ProbeChange) {
        let (health, reason) = match change {
            crate::probe::ProbeChange::Healthy(r) => (Health::Healthy, r),
            crate::probe::ProbeChange::Critical(r) => (Health::Critical, r),
        };
        info!(agent_id = %self.id, ?health, %reason, "health check");
        let report = AgentCommand::ReportHealth {
            health,
            reason: reason.clone(),
        };
        match self.report(report).await {
            Ok(events) if !events.is_empty() && health == Health::Critical => {
                let _ = self.recover(&reason).await;
            }
            Ok(_) => {}
            Err(err) => debug!(agent_id = %self.id, error = %err, "health not recorded"),
        }
    }

    async fn on_heartbeat(&mut self, transition: Transition) {
        match transition {
            Transition::Lost { last_seen } => {
                match self
                    .report(AgentCommand::ReportHeartbeatLost { last_seen })
                    .await
                {
                    Ok(events) if !events.is_empty() => {
                        warn!(agent_id = %self.id, "heartbeat lost");
                        let _ = self.recover("heartbeat lost").await;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        debug!(agent_id = %self.id, error = %err, "heartbeat loss not recorded")
                    }
                }
            }
            Transition::Resumed => {
                let healthy = AgentCommand::ReportHealth {
                    health: Health::Healthy,
                    reason: "heartbeats resumed".into(),
                };
                if let Err(err) = self.report(healthy).await {
                    debug!(agent_id = %self.id, error = %err, "health not recorded");
                }
                if let Ok((agent, _)) = Box::pin(self.shared.store.load(&self.id)).await
                    && agent.recovery == RecoveryStatus::InProgress
                    && !self.recovering
                {
                    self.complete_recovery().await;
                }
            }
        }
    }

    /// A limit was exceeded for the whole window: record it once, then
    /// restart (automatic recovery by restart) or stop the agent.
    async fn on_breach(&mut self, breach: Breach) {
        let fact = AgentCommand::ReportLimitExceeded {
            resource: breach.resource.to_string(),
            limit: breach.limit,
            observed: breach.observed,
            window_ms: breach.window_ms,
        };
        match self.report(fact).await {
            Ok(events) if !events.is_empty() => {}
            Ok(_) => return,
            Err(err) => {
                debug!(agent_id = %self.id, error = %err, "limit breach not recorded");
                return;
            }
        }
        warn!(agent_id = %self.id, resource = breach.resource, observed = breach.observed, limit = breach.limit, "limit exceeded");
        let Ok((agent, _)) = Box::pin(self.shared.store.load(&self.id)).await else {
            return;
        };
        let restart = agent
            .spec
            .as_ref()
            .is_some_and(|s| s.recovery.auto && s.recovery.strategy == RecoveryStrategy::Restart);
        let recovering = restart
            && agent.recovery != RecoveryStatus::InProgress
            && self
                .recover(&format!("{} limit exceeded", breach.resource))
                .await;
        if !recovering && let Err(err) = self.report(AgentCommand::Stop).await {
            warn!(agent_id = %self.id, error = %err, "cannot stop agent over its limit");
        }
    }

    /// Carries out a recovery in progress that this worker did not start (an
    /// operator's `POST .../recover`, or one a previous supervisor started
    /// but did not finish), once per attempt.
    async fn operator_recovery(&mut self, agent: &Agent) {
        if agent.recovery != RecoveryStatus::InProgress {
            // Attempt numbers start again after a recovery ends.
            self.handled_recovery = None;
            return;
        }
        if self.recovering || self.handled_recovery == Some(agent.recovery_attempts) {
            return;
        }
        let Some(strategy) = agent.recovery_strategy else {
            return;
        };
        self.handled_recovery = Some(agent.recovery_attempts);
        info!(agent_id = %self.id, ?strategy, attempt = agent.recovery_attempts, "carrying out a recovery");
        match strategy {
            RecoveryStrategy::Restart => {
                if self.proc.is_none() {
                    // Nothing running to restart: starting it is the recovery.
                    if agent.desired == DesiredState::Running {
                        self.recovering = true;
                    } else {
                        self.fail_recovery("the agent is not running".into()).await;
                    }
                    return;
                }
                self.recovering = true;
                if let Err(err) = self.report(AgentCommand::Restart).await {
                    self.recovering = false;
                    self.fail_recovery(err.to_string()).await;
                }
            }
            RecoveryStrategy::Reload => match self.reload().await {
                Ok(()) => self.complete_recovery().await,
                Err(error) => self.fail_recovery(error).await,
            },
            RecoveryStrategy::None => self.complete_recovery().await,
        }
    }

    /// Applies the agent's recovery policy (if automatic): `restart` restarts
    /// the process (the recovery completes when the new one runs), `reload`
    /// sends SIGHUP to the process. Returns whether a recovery was started.
    async fn recover(&mut self, reason: &str) -> bool {
        let Ok((agent, _)) = Box::pin(self.shared.store.load(&self.id)).await else {
            return false;
        };
        let Some(policy) = agent.spec.as_ref().map(|s| s.recovery.clone()) else {
            return false;
        };
        if !policy.auto || policy.strategy == RecoveryStrategy::None {
            return false;
        }
        let trigger = AgentCommand::TriggerRecovery {
            strategy: policy.strategy,
            reason: reason.to_string(),
        };
        match self.report(trigger).await {
            Ok(events) => {
                for e in events {
                    if let AgentEvent::RecoveryTriggered { attempt, .. } = e {
                        self.handled_recovery = Some(attempt);
                    }
                }
            }
            Err(err) => {
                debug!(agent_id = %self.id, error = %err, "no recovery");
                return false;
            }
        }
        match policy.strategy {
            RecoveryStrategy::Restart => {
                self.recovering = true;
                if let Err(err) = self.report(AgentCommand::Restart).await {
                    self.recovering = false;
                    self.fail_recovery(err.to_string()).await;
                }
            }
            RecoveryStrategy::Reload => match self.reload().await {
                Ok(()) => self.complete_recovery().await,
                Err(error) => self.fail_recovery(error).await,
            },
            RecoveryStrategy::None => {}
        }
        true
    }

    /// Gives a running process the agent's current config when it changed
    /// (a config update or rollback, or a new package version), as its spec's
    /// `reload` says: a control request carrying the config (SIGHUP when the
    /// agent does not answer), SIGHUP (the agent re-reads
    /// `OPMAS_AGENT_CONFIG_FILE`), or a restart. A refusal is recorded as an
    /// error and not retried until the config changes again.
    async fn apply_config(&mut self, agent: &Agent) {
        let Some(spec) = &agent.spec else { return };
        let Some(proc) = &self.proc else { return };
        if proc.stopping() || self.applied_config.as_ref() == Some(&spec.config) {
            return;
        }
        // Compared sealed (sealing is deterministic); given to the process open.
        self.applied_config = Some(spec.config.clone());
        let outcome = match self.open_config(&spec.config) {
            Ok(config) => self.give_config(spec.reload, config).await,
            Err(message) => Err(message),
        };
        match outcome {
            Ok(()) => {
                info!(agent_id = %self.id, version = agent.config_version, "config applied")
            }
            Err(message) => {
                warn!(agent_id = %self.id, error = %message, "config not applied");
                let _ = self
                    .report(AgentCommand::RecordError {
                        severity: Severity::Error,
                        category: "config".into(),
                        error_type: "ReloadFailed".into(),
                        message: format!(
                            "config version {} not applied by the running process: {message}",
                            agent.config_version
                        ),
                        context: serde_json::json!({ "config_version": agent.config_version }),
                    })
                    .await;
            }
        }
    }

    /// `config` with its sealed secrets opened, or why not.
    fn open_config(&self, config: &serde_json::Value) -> Result<serde_json::Value, String> {
        let key = self.shared.config.secret_key.as_deref();
        opmas_domain::secret::open_config(key, config)
            .map_err(|e| format!("cannot open the secrets of agent `{}`: {e}", self.id))
    }

    /// Gives the running process its new (clear) config as `reload` says.
    async fn give_config(
        &mut self,
        reload: opmas_domain::ReloadMode,
        config: serde_json::Value,
    ) -> Result<(), String> {
        if let Err(err) =
            crate::process::write_config_file(&self.shared.config.log_dir.join(&self.id), &config)
        {
            warn!(agent_id = %self.id, error = %err, "cannot write the config file");
        }
        match reload {
            opmas_domain::ReloadMode::Control => self.reload_with(Some(config)).await,
            opmas_domain::ReloadMode::Sighup => self.sighup(),
            opmas_domain::ReloadMode::Restart => {
                info!(agent_id = %self.id, "config changed: restarting to apply it");
                match self.report(AgentCommand::Restart).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// SIGHUP to the agent's main process.
    fn sighup(&self) -> Result<(), String> {
        let pid = self.pid.load(Ordering::Relaxed);
        let pid = i32::try_from(pid).map_err(|e| e.to_string())?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| format!("SIGHUP to {pid}: {e}"))
    }

    /// Asks the agent to reload over the control subject; an agent that does
    /// not speak it gets SIGHUP.
    async fn reload(&mut self) -> Result<(), String> {
        self.reload_with(None).await
    }

    /// A reload control request, with `config` when there is a new one.
    async fn reload_with(&mut self, new_config: Option<serde_json::Value>) -> Result<(), String> {
        let config = &self.shared.config;
        let answer = crate::control::request_with(
            &self.shared.client,
            &config.control_prefix,
            &self.id,
            ControlAction::Reload,
            new_config,
            Duration::from_secs(2),
        )
        .await;
        match answer {
            Ok(reply) if reply.ok => Ok(()),
            Ok(reply) => Err(reply.message.unwrap_or_else(|| "reload refused".into())),
            Err(ControlError::NoResponder) => self.sighup(),
            Err(err) => Err(err.to_string()),
        }
    }

    async fn complete_recovery(&mut self) {
        self.handled_recovery = None;
        let done = AgentCommand::CompleteRecovery {
            succeeded: true,
            error: None,
        };
        if let Err(err) = self.report(done).await {
            debug!(agent_id = %self.id, error = %err, "recovery completion not recorded");
        }
    }

    async fn fail_recovery(&mut self, error: String) {
        self.handled_recovery = None;
        let done = AgentCommand::CompleteRecovery {
            succeeded: false,
            error: Some(error),
        };
        if let Err(err) = self.report(done).await {
            debug!(agent_id = %self.id, error = %err, "recovery failure not recorded");
        }
    }
}

/// A required agent is ready when it is healthy, or, if nothing can ever
/// report its health (heartbeats off, heartbeat check), when it runs.
fn requirement_met(agent: &Agent) -> bool {
    if !agent.registered || agent.deregistered {
        return false;
    }
    let silent = agent.spec.as_ref().is_some_and(|s| {
        !s.heartbeat.enabled && s.health_check.check == opmas_domain::HealthCheck::Heartbeat
    });
    match agent.status {
        ProcessStatus::Running if silent => true,
        ProcessStatus::Running | ProcessStatus::Degraded => agent.health == Health::Healthy,
        _ => false,
    }
}

fn exit_fact(pid: u32, exit: Exit) -> AgentCommand {
    AgentCommand::ReportProcessExited {
        pid,
        code: exit.code,
        signal: exit.signal,
        at: Utc::now(),
        jitter_sample: rand::random::<f64>(),
    }
}

/// The next verdict of the running process's probe; never, without one.
async fn next_probe(
    probe: &mut Option<(mpsc::Receiver<crate::probe::ProbeChange>, CancellationToken)>,
) -> Option<crate::probe::ProbeChange> {
    match probe {
        // A probe that ended (cancelled) says nothing more.
        Some((rx, _)) => match rx.recv().await {
            Some(change) => Some(change),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every agent has a worker task for as long as the supervisor runs, so
    /// its future's size is paid 500 times over on a busy node (it was 15 KB,
    /// half the supervisor's heap, before the handlers were boxed).
    fn method_size<'a, A, F: Future>(_: impl FnOnce(&'a mut Worker, A) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn on_agent<'a, 'b, F: Future>(_: impl FnOnce(&'a mut Worker, &'b Agent) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// 500 agents starting at once hold 500 of these while they wait to
    /// spawn: with the store's futures inline they were 10-15 KB each (the
    /// supervisor's peak RSS went past 32 MB).
    #[test]
    fn a_busy_worker_s_futures_are_small() {
        for (what, size, limit) in [
            ("report", method_size(Worker::report), 2048),
            ("reconcile_on", method_size(Worker::reconcile_on), 8192),
            ("on_exit", method_size(Worker::on_exit), 8192),
            ("ensure_started", on_agent(Worker::ensure_started), 4096),
        ] {
            assert!(
                size <= limit,
                "{what}'s future is {size} bytes (limit {limit}): box the store's futures (Box::pin)"
            );
        }
    }

    #[test]
    fn an_idle_worker_task_is_small() {
        let size = future_size(Worker::run);
        assert!(
            size <= 2048,
            "Worker::run's future is {size} bytes: box the large awaits in run() (Box::pin)"
        );
    }
}
