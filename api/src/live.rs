//! The live stream: WebSocket `/api/v1/ws` and SSE `/api/v1/stream`.
//!
//! One hub per API process subscribes to the subjects of the JetStream
//! streams (`OPMAS_EVENTS`, `OPMAS_METRICS`, `OPMAS_LOGS`) and fans each
//! message out, serialized once, to every connected client through a
//! bounded broadcast channel. Clients filter by agent and kind:
//! `agent.status` (every domain event but errors), `agent.error`,
//! `agent.metrics`, `agent.log`. A client that falls more than
//! `live_buffer` messages behind, or whose socket does not accept a message
//! within [`SEND_TIMEOUT`], is disconnected (with a final `dropped` message
//! when possible); the hub and other clients never wait for it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Authorized, VIEWER};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::routes::Query;

/// A client whose socket takes longer than this to accept one message is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Kinds a client can subscribe to.
pub const KINDS: [&str; 4] = ["agent.status", "agent.error", "agent.metrics", "agent.log"];

/// One message of the live stream (the JSON clients receive).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveMessage {
    /// `agent.status`, `agent.error`, `agent.metrics` or `agent.log`.
    pub kind: &'static str,
    pub agent_id: String,
    /// `agent.status`/`agent.error`: `{sequence, event_type, event, actor, at}`;
    /// `agent.metrics`: a sample; `agent.log`: a log line.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// A message ready to send.
#[derive(Debug)]
pub struct Outgoing {
    pub kind: &'static str,
    pub agent_id: String,
    pub json: String,
}

/// Which messages a client wants.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Agent ids; empty or absent: every agent.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Kinds; empty or absent: every kind.
    #[serde(default)]
    pub kinds: Vec<String>,
}

impl Filter {
    fn validate(self) -> Result<Compiled, ApiError> {
        for kind in &self.kinds {
            if !KINDS.contains(&kind.as_str()) {
                return Err(ApiError::validation(
                    "kinds",
                    format!("unknown kind `{kind}`: use {}", KINDS.join(", ")),
                ));
            }
        }
        Ok(Compiled {
            agents: self.agents.into_iter().collect(),
            kinds: self.kinds.into_iter().collect(),
        })
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    agents: HashSet<String>,
    kinds: HashSet<String>,
}

impl Compiled {
    fn matches(&self, m: &Outgoing) -> bool {
        (self.agents.is_empty() || self.agents.contains(&m.agent_id))
            && (self.kinds.is_empty() || self.kinds.contains(m.kind))
    }
}

/// Starts (once) the hub and returns a receiver.
async fn subscribe(state: &AppState) -> Result<broadcast::Receiver<Arc<Outgoing>>, ApiError> {
    let sender = state
        .live_hub()
        .get_or_try_init(|| start_hub(state.clone()))
        .await?;
    Ok(sender.subscribe())
}

async fn start_hub(state: AppState) -> Result<broadcast::Sender<Arc<Outgoing>>, ApiError> {
    let client = state.nats().clone();
    let cfg = state.config().clone();
    let events = format!("{}.agent.>", cfg.events.subject_prefix);
    let metrics = format!("{}.>", cfg.telemetry.metrics_prefix);
    let logs = format!("{}.>", cfg.telemetry.logs_prefix);
    let mut subs = Vec::new();
    for subject in [events, metrics, logs] {
        let sub = tokio::time::timeout(crate::PROBE_TIMEOUT, client.subscribe(subject))
            .await
            .map_err(|_| ApiError::unavailable("NATS"))?
            .map_err(|_| ApiError::unavailable("NATS"))?;
        subs.push(sub);
    }
    let (tx, _) = broadcast::channel(cfg.live_buffer.max(16));
    let sender = tx.clone();
    let mut merged = futures::stream::select_all(subs);
    let events_prefix = format!("{}.agent.", cfg.events.subject_prefix);
    let metrics_prefix = format!("{}.", cfg.telemetry.metrics_prefix);
    let logs_prefix = format!("{}.", cfg.telemetry.logs_prefix);
    let store = state.store().clone();
    tokio::spawn(async move {
        while let Some(msg) = merged.next().await {
            let subject = msg.subject.as_str();
            let out = if let Some(rest) = subject.strip_prefix(&events_prefix) {
                event_message(rest, &msg.payload, &store)
            } else if let Some(agent) = subject.strip_prefix(&metrics_prefix) {
                telemetry_message("agent.metrics", agent, &msg.payload)
            } else if let Some(rest) = subject.strip_prefix(&logs_prefix) {
                let agent = rest.split('.').next().unwrap_or(rest);
                telemetry_message("agent.log", agent, &msg.payload)
            } else {
                None
            };
            if let Some(out) = out {
                // No receivers is fine: nobody is watching.
                let _ = tx.send(Arc::new(out));
            }
        }
    });
    Ok(sender)
}

fn event_message(rest: &str, payload: &[u8], store: &opmas_store::AgentStore) -> Option<Outgoing> {
    let (agent_id, event_type) = rest.split_once('.')?;
    let env = opmas_projections::Envelope::from_message(payload).ok()?;
    let kind = if event_type == "ErrorRecorded" {
        "agent.error"
    } else {
        "agent.status"
    };
    let mut event = serde_json::to_value(&env.event).ok()?;
    if let Value::Object(map) = &event
        && map.len() == 1
        && let Some(inner) = map.values().next()
    {
        event = inner.clone();
    }
    // The config of a config event: secrets by the agent's schema, or, when
    // the schema is not at hand, every value hidden.
    let schema = if event.get("config").is_some() && event.get("config_schema").is_none() {
        match store.cached(agent_id) {
            Some((agent, _)) => agent.spec.and_then(|s| s.config_schema),
            None => {
                event["config"] = Value::String("***".into());
                None
            }
        }
    } else {
        None
    };
    crate::routes::audit::redact_event(&mut event, schema.as_ref());
    let data = json!({
        "sequence": env.sequence,
        "event_type": event_type,
        "event": event,
        "actor": env.actor(),
        "at": env.recorded_at,
    });
    Some(render(kind, agent_id, data))
}

fn telemetry_message(kind: &'static str, agent_id: &str, payload: &[u8]) -> Option<Outgoing> {
    let data: Value = serde_json::from_slice(payload).ok()?;
    Some(render(kind, agent_id, data))
}

fn render(kind: &'static str, agent_id: &str, data: Value) -> Outgoing {
    let json = json!({ "kind": kind, "agent_id": agent_id, "data": data }).to_string();
    Outgoing {
        kind,
        agent_id: agent_id.to_owned(),
        json,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// Comma-separated agent ids (default: all).
    pub agents: Option<String>,
    /// Comma-separated kinds: agent.status, agent.error, agent.metrics, agent.log (default: all).
    pub kinds: Option<String>,
    /// Bearer token, for clients that cannot set headers (browsers' WebSocket, EventSource).
    pub access_token: Option<String>,
}

impl LiveParams {
    fn filter(&self) -> Result<Compiled, ApiError> {
        let split = |s: &Option<String>| {
            s.as_deref()
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Filter {
            agents: split(&self.agents),
            kinds: split(&self.kinds),
        }
        .validate()
    }
}

/// Live stream over WebSocket. After connecting, a client may send
/// `{"agents": [...], "kinds": [...]}` at any time to replace its filter.
#[utoipa::path(get, path = "/ws", tag = "live", params(LiveParams),
    security(("bearer" = ["viewer"])),
    responses((status = 101, description = "Switching to the WebSocket protocol; messages are LiveMessage JSON", body = LiveMessage),
              (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn ws(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    Query(params): Query<LiveParams>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let filter = params.filter()?;
    let upgrade = upgrade.map_err(|_| {
        ApiError::bad_request("this is a WebSocket endpoint: connect with a WebSocket client")
    })?;
    let rx = subscribe(&state).await?;
    Ok(upgrade
        .on_upgrade(move |socket| run_ws(state, socket, filter, rx))
        .into_response())
}

async fn run_ws(
    state: AppState,
    mut socket: WebSocket,
    mut filter: Compiled,
    mut rx: broadcast::Receiver<Arc<Outgoing>>,
) {
    let gauge = state.metrics().live_clients().clone();
    gauge.inc();
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let parsed = serde_json::from_str::<Filter>(&text)
                        .map_err(|e| ApiError::validation("filter", e.to_string()))
                        .and_then(Filter::validate);
                    let reply = match parsed {
                        Ok(f) => { filter = f; json!({"kind": "subscribed"}) }
                        Err(e) => json!({"kind": "error", "error": {"code": e.code, "message": e.message}}),
                    };
                    if send(&mut socket, reply.to_string()).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            msg = rx.recv() => match msg {
                Ok(m) => {
                    if filter.matches(&m) && send(&mut socket, m.json.clone()).await.is_err() {
                        state.metrics().live_dropped().inc();
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    state.metrics().live_dropped().inc();
                    let bye = json!({"kind": "dropped", "reason": format!("client fell {n} messages behind; reconnect")});
                    let _ = tokio::time::timeout(Duration::from_millis(100), socket.send(Message::Text(bye.to_string().into()))).await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    gauge.dec();
}

async fn send(socket: &mut WebSocket, text: String) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Live stream as Server-Sent Events (`event:` is the kind).
#[utoipa::path(get, path = "/stream", tag = "live", params(LiveParams),
    security(("bearer" = ["viewer"])),
    responses((status = 200, description = "text/event-stream of LiveMessage JSON", content_type = "text/event-stream", body = String),
              (status = 422, body = ErrorBody)))]
pub async fn sse(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
    Query(params): Query<LiveParams>,
) -> ApiResult<Response> {
    let filter = params.filter()?;
    let rx = subscribe(&state).await?;
    Ok(Sse::new(sse_stream(state, rx, filter))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn sse_stream(
    state: AppState,
    rx: broadcast::Receiver<Arc<Outgoing>>,
    filter: Compiled,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let gauge = state.metrics().live_clients().clone();
    gauge.inc();
    let guard = GaugeGuard(gauge);
    futures::stream::unfold(
        (rx, filter, guard, state, false),
        |(mut rx, filter, guard, state, done)| async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok(m) if filter.matches(&m) => {
                        let ev = Event::default().event(m.kind).data(m.json.clone());
                        return Some((Ok(ev), (rx, filter, guard, state, false)));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        state.metrics().live_dropped().inc();
                        let ev = Event::default()
                            .event("dropped")
                            .data(json!({"kind": "dropped", "reason": format!("client fell {n} messages behind; reconnect")}).to_string());
                        return Some((Ok(ev), (rx, filter, guard, state, true)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
}

struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
