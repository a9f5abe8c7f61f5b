//! [`Agent`]: connect, then [`Agent::run`] the agent's work beside one loop
//! that sends heartbeats, answers control requests and turns signals into a
//! stop or a reload.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use opmas_domain::control::{ControlAction, ControlReply, ControlRequest};
use opmas_domain::telemetry::Heartbeat;
use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::MissedTickBehavior;

use crate::settings::read_config_file;
use crate::{Error, Handle, Settings};

/// Checks a new configuration and applies it; an `Err` refuses it (the
/// reload is answered `ok: false` with the message, the old configuration
/// stays).
type ReloadFn = Box<dyn FnMut(&Value) -> Result<(), String> + Send>;

/// Why [`Agent::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop (control `stop`, `SIGTERM`, `SIGINT`, [`Handle::stop`]).
    Stopped,
    /// Asked to restart: exit with [`Outcome::exit_code`] and the
    /// supervisor starts the agent again.
    Restart,
    /// The work returned on its own.
    Finished,
}

impl Outcome {
    /// The process exit code to use: 0, except 75 (`EX_TEMPFAIL`) for
    /// [`Outcome::Restart`], so a restart policy of `on_failure` restarts it.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Restart => 75,
            Self::Stopped | Self::Finished => 0,
        }
    }
}

/// An agent connected to NATS, not yet running.
pub struct Agent {
    handle: Handle,
    control: async_nats::Subscriber,
    on_reload: Option<ReloadFn>,
}

impl Agent {
    /// Reads [`Settings::from_env`] and [connects](Agent::connect).
    pub async fn from_env() -> Result<Self, Error> {
        Self::connect(Settings::from_env()?).await
    }

    /// Connects to NATS and subscribes to the control subject (so a control
    /// request is answered as soon as [`Agent::run`] starts).
    pub async fn connect(settings: Settings) -> Result<Self, Error> {
        let client = crate::nats::connect(
            &settings.nats_url,
            async_nats::ConnectOptions::new().name(format!("opmas-agent {}", settings.agent_id)),
        )
        .await
        .map_err(Error::nats)?;
        let control = client
            .subscribe(settings.control_subject.clone())
            .await
            .map_err(Error::nats)?;
        round_trip(&client).await?;
        Ok(Self {
            handle: Handle::new(settings, client),
            control,
            on_reload: None,
        })
    }

    /// A handle on the agent (the same one [`Agent::run`] gives the work).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Sets the callback a reload calls with the new configuration before it
    /// becomes current. Without one, every reload is accepted.
    pub fn on_reload(
        mut self,
        callback: impl FnMut(&Value) -> Result<(), String> + Send + 'static,
    ) -> Self {
        self.on_reload = Some(Box::new(callback));
        self
    }

    /// Runs `work` until it returns, sending heartbeats and answering
    /// control requests meanwhile. When the agent is asked to stop,
    /// [`Handle::stopped`] resolves and `work` should return soon: `run`
    /// waits for it (the supervisor kills the agent after its grace period).
    pub async fn run<F, Fut, E>(self, work: F) -> Result<Outcome, Error>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let handle = self.handle.clone();
        let signals = Signals::install()?;
        let service = tokio::spawn(serve(self.handle, self.control, self.on_reload, signals));
        let result = work(handle.clone()).await;
        handle.stop_with(Outcome::Finished);
        let served = service.await;
        // What was published should leave before the process exits; not
        // waiting for a server that is gone (a flush waits for a reconnection).
        let _ = tokio::time::timeout(LAST_WORDS, handle.client().flush()).await;
        served.map_err(|e| Error::Work(format!("service loop: {e}")))?;
        result.map_err(|e| Error::Work(e.to_string()))?;
        Ok(handle.outcome().unwrap_or(Outcome::Finished))
    }
}

/// How long a stopping agent, or a control reply, waits for what it sent
/// to leave (longer only when the server is unreachable).
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Returns once the server has processed everything this connection sent
/// before (a flush only empties the local buffer): the server handles one
/// connection's messages in order, so when our own message comes back, the
/// subscriptions made before it are in place.
async fn round_trip(client: &async_nats::Client) -> Result<(), Error> {
    let probe = client.new_inbox();
    let mut echo = client.subscribe(probe.clone()).await.map_err(Error::nats)?;
    client
        .publish(probe, "".into())
        .await
        .map_err(Error::nats)?;
    match tokio::time::timeout(Duration::from_secs(30), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => Err(Error::Nats("no round trip through the server".into())),
    }
}

/// The signals the agent handles (installed before the work starts).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self, Error> {
        let on = |kind| signal(kind).map_err(Error::Signals);
        Ok(Self {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }
}

/// The agent's service loop: heartbeats, control requests, signals.
async fn serve(
    handle: Handle,
    mut control: async_nats::Subscriber,
    mut on_reload: Option<ReloadFn>,
    signals: Signals,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    let mut beat = tokio::time::interval(handle.settings().heartbeat_interval);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut listening = true;
    loop {
        tokio::select! {
            () = handle.stopped() => break,
            _ = beat.tick() => heartbeat(&handle).await,
            _ = term.recv() => handle.stop_with(Outcome::Stopped),
            _ = int.recv() => handle.stop_with(Outcome::Stopped),
            _ = hup.recv() => {
                let _ = reload(&handle, &mut on_reload, None);
            }
            message = control.next(), if listening => match message {
                Some(message) => answer(&handle, &mut on_reload, message).await,
                // Only when the connection is closed for good; keep beating.
                None => listening = false,
            },
        }
    }
    let _ = tokio::time::timeout(LAST_WORDS, control.unsubscribe()).await;
}

async fn heartbeat(handle: &Handle) {
    let beat = Heartbeat {
        agent_id: handle.agent_id().to_string(),
        at: Utc::now(),
        status: handle.status(),
    };
    // A heartbeat that cannot be sent is a missed heartbeat: the supervisor
    // notices, nothing to do here.
    // Nor one that would hold the loop (and a stop) while the connection
    // is down and its buffer full.
    let publish = handle.publish_json(handle.settings().heartbeat_subject.clone(), &beat);
    let _ = tokio::time::timeout(handle.settings().heartbeat_interval, publish).await;
}

/// Handles one control request and replies (when the request has a reply
/// subject).
async fn answer(handle: &Handle, on_reload: &mut Option<ReloadFn>, message: async_nats::Message) {
    let (reply, stop_after) = match serde_json::from_slice::<ControlRequest>(&message.payload) {
        Err(e) => (refused(format!("not a control request: {e}")), None),
        Ok(request) => match request.action {
            ControlAction::Ping => (ok("pong"), None),
            ControlAction::Stop => (ok("stopping"), Some(Outcome::Stopped)),
            ControlAction::Restart => (ok("restarting"), Some(Outcome::Restart)),
            ControlAction::Reload => match reload(handle, on_reload, request.config) {
                Ok(()) => (ok("reloaded"), None),
                Err(e) => (refused(e), None),
            },
        },
    };
    if let Some(subject) = message.reply {
        let _ = tokio::time::timeout(LAST_WORDS, async {
            let _ = handle.publish_json(subject.to_string(), &reply).await;
            let _ = handle.client().flush().await;
        })
        .await;
    }
    if let Some(outcome) = stop_after {
        handle.stop_with(outcome);
    }
}

/// Applies `config` (or, without one, the configuration file again, or the
/// current configuration) through the callback.
fn reload(
    handle: &Handle,
    on_reload: &mut Option<ReloadFn>,
    config: Option<Value>,
) -> Result<(), String> {
    let config = match (config, &handle.settings().config_file) {
        (Some(config), _) => config,
        (None, Some(path)) => read_config_file(path).map_err(|e| e.to_string())?,
        (None, None) => handle.config(),
    };
    if !config.is_object() {
        return Err("the configuration must be a JSON object".into());
    }
    if let Some(callback) = on_reload {
        callback(&config)?;
    }
    handle.set_config(config);
    Ok(())
}

fn ok(message: &str) -> ControlReply {
    ControlReply {
        ok: true,
        message: Some(message.into()),
    }
}

fn refused(message: String) -> ControlReply {
    ControlReply {
        ok: false,
        message: Some(message),
    }
}
