//! [`Supervisor`]: the node's reconciler. It follows `OPMAS_EVENTS` with a
//! durable consumer, hands each event's agent to that agent's worker, acks
//! once the worker has acted (and reported what it did), and reconciles
//! every agent on start and periodically, so a missed message heals itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use opmas_store::AgentStore;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::heartbeat::{Monitor, Transition};
use crate::logs::LogHub;
use crate::metrics::{Breach, Sampler};
use crate::worker::{Msg, Shared, Worker};
use crate::{Config, Error, identity};

/// One node's supervisor. Build with [`Supervisor::new`], run with
/// [`Supervisor::run`].
pub struct Supervisor {
    shared: Arc<Shared>,
    client: async_nats::Client,
    workers: HashMap<String, mpsc::Sender<Msg>>,
    transitions: mpsc::UnboundedReceiver<(String, Transition)>,
    breaches: mpsc::UnboundedReceiver<(String, Breach)>,
    monitor_cancel: CancellationToken,
}

impl Supervisor {
    /// A supervisor reporting facts through `store` and following events on `client`.
    pub fn new(
        store: AgentStore,
        client: async_nats::Client,
        config: Config,
    ) -> Result<Self, Error> {
        let boot_id = identity::boot_id().map_err(|e| Error::Host(format!("boot id: {e}")))?;
        let cgroups = crate::cgroup::Cgroups::detect(config.cgroups, config.cgroup_root.as_deref())
            .map_err(Error::Host)?;
        let logs = LogHub::new(
            &config.log_dir,
            &config.node,
            config.logs.clone(),
            config.telemetry.clone(),
            client.clone(),
        );
        let (out, transitions) = mpsc::unbounded_channel();
        let monitor_cancel = CancellationToken::new();
        let heartbeats = Monitor::spawn(
            client.clone(),
            config.heartbeat_prefix.clone(),
            out,
            monitor_cancel.clone(),
        );
        let (out, breaches) = mpsc::unbounded_channel();
        let metrics = Sampler::spawn(
            client.clone(),
            config.node.clone(),
            config.metrics.clone(),
            config.telemetry.clone(),
            out,
            monitor_cancel.clone(),
            heartbeats.last_seen(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                config,
                boot_id,
                logs,
                heartbeats,
                metrics,
                client: client.clone(),
                cgroups,
                spawns: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
            }),
            client,
            workers: HashMap::new(),
            transitions,
            breaches,
            monitor_cancel,
        })
    }

    /// Runs until `cancel`. Agent processes are left running when it stops:
    /// the next supervisor on this node adopts them.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), Error> {
        let workers_cancel = cancel.child_token();
        info!(node = %self.shared.config.node, "supervisor started");
        tokio::spawn(trim_heap(cancel.clone()));
        // Streams first: output shipped before the logs stream exists is lost.
        while let Err(err) = self.ensure_streams().await {
            warn!(error = %err, "cannot set up streams; retrying");
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        while !cancel.is_cancelled() {
            if let Err(err) = self.follow(&cancel, &workers_cancel).await {
                warn!(error = %err, "event consumer failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        workers_cancel.cancel();
        self.monitor_cancel.cancel();
        Ok(())
    }

    async fn ensure_streams(&self) -> Result<(), Error> {
        let mut js = jetstream::new(self.client.clone());
        // A fresh cluster sometimes leaves a stream request unanswered (several
        // processes creating the same streams at once): ask again sooner.
        js.set_timeout(Duration::from_secs(2));
        self.shared.config.stream.ensure(&js).await?;
        self.shared.config.telemetry.ensure(&js).await?;
        Ok(())
    }

    async fn follow(
        &mut self,
        cancel: &CancellationToken,
        workers_cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let js = jetstream::new(self.client.clone());
        let stream = self
            .shared
            .config
            .stream
            .ensure(&js)
            .await
            .map_err(Error::Store)?;
        let name = self.shared.config.consumer_name();
        let consumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{}.agent.>", self.shared.config.stream.subject_prefix),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::New,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::nats)?;
        let mut messages = consumer.messages().await.map_err(Error::nats)?;
        // Every agent once the consumer exists: a first consumer delivers only
        // new events, so an event published before it was created (a Start
        // during this supervisor's start) is seen here, not missed until the
        // periodic reconcile.
        self.reconcile_all(workers_cancel).await;
        let mut tick = tokio::time::interval(self.shared.config.reconcile_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => self.reconcile_all(workers_cancel).await,
                Some((agent, transition)) = self.transitions.recv() => {
                    if let Some(tx) = self.workers.get(&agent) {
                        let _ = tx.try_send(Msg::Heartbeat(transition));
                    }
                }
                Some((agent, breach)) = self.breaches.recv() => {
                    if let Some(tx) = self.workers.get(&agent) {
                        let _ = tx.try_send(Msg::Limit(breach));
                    }
                }
                next = messages.next() => {
                    let Some(message) = next else { return Err(Error::Nats("consumer ended".into())) };
                    let message = message.map_err(Error::nats)?;
                    let agent = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(opmas_store::stream::headers::AGENT_ID))
                        .map(|v| v.to_string());
                    let Some(agent) = agent else {
                        let _ = message.ack().await;
                        continue;
                    };
                    let seen = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(opmas_store::stream::headers::SEQUENCE))
                        .and_then(|v| v.as_str().parse::<usize>().ok());
                    let (done, acted) = oneshot::channel();
                    self.send(&agent, Some(done), seen, workers_cancel);
                    // Ack once the worker has acted on it (its reports are durable).
                    tokio::spawn(async move {
                        if acted.await.is_ok() {
                            let _ = message.ack().await;
                        }
                    });
                }
            }
        }
    }

    async fn reconcile_all(&mut self, workers_cancel: &CancellationToken) {
        match self.shared.store.agent_ids().await {
            Ok(ids) => {
                for id in ids {
                    self.send(&id, None, None, workers_cancel);
                }
            }
            Err(err) => warn!(error = %err, "cannot list agents"),
        }
    }

    fn send(
        &mut self,
        agent: &str,
        done: Option<oneshot::Sender<()>>,
        seen: Option<usize>,
        cancel: &CancellationToken,
    ) {
        let shared = &self.shared;
        let tx = self
            .workers
            .entry(agent.to_string())
            .or_insert_with(|| Worker::start(agent.to_string(), shared.clone(), cancel.clone()));
        match tx.try_send(Msg::Reconcile { done, seen }) {
            Ok(()) => {}
            // A full queue already holds a reconcile that will see this change.
            Err(mpsc::error::TrySendError::Full(Msg::Reconcile {
                done: Some(done),
                seen,
            })) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx
                        .send(Msg::Reconcile {
                            done: Some(done),
                            seen,
                        })
                        .await;
                });
            }
            Err(_) => {}
        }
    }
}

#[allow(unsafe_code)]
/// Hands memory freed by bursts (a bulk start, a log flood) back to the
/// system: glibc keeps free pages inside its arenas until `malloc_trim`
/// releases them, so an idle supervisor's RSS would stay at its peak.
async fn trim_heap(cancel: CancellationToken) {
    let mut every = tokio::time::interval(HEAP_TRIM_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks the allocator's own free lists; it
        // takes the arena locks itself and is safe to call from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// How often [`trim_heap`] runs.
const HEAP_TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// Caps glibc's malloc arenas at two (it makes up to eight per core, one
/// per thread that contends, and each keeps its free pages): most of an idle
/// supervisor's memory was arenas. Call it first in `main`, before threads.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
