//! Nodes: where agents run, and whether each node's supervisor is alive.
//!
//! Supervisors announce themselves in the JetStream key-value bucket
//! `OPMAS_NODES` (key: node name, value: JSON, entries expire when a
//! supervisor stops announcing); agents' nodes come from `agent_status`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authorized, VIEWER};
use crate::error::{ApiResult, ErrorBody};

/// One node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub node: String,
    /// A supervisor announced itself recently.
    pub supervisor_alive: bool,
    /// When it last announced itself.
    pub last_seen: Option<DateTime<Utc>>,
    /// What the supervisor announced (pid, version, agents it runs...).
    #[schema(value_type = Object)]
    pub supervisor: Option<Value>,
    /// Agents placed on this node (not deregistered).
    pub agents: i64,
    pub running: i64,
}

/// Nodes with their agents and their supervisors' liveness.
#[utoipa::path(get, path = "/nodes", tag = "nodes",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = Vec<NodeView>), (status = 503, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ VIEWER }>,
) -> ApiResult<Response> {
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "select node, count(*), count(*) filter (where status = 'running') from agent_status \
         where node is not null and not deregistered group by node",
    )
    .fetch_all(state.pool())
    .await?;
    let mut nodes: BTreeMap<String, NodeView> = counts
        .into_iter()
        .map(|(node, agents, running)| {
            (
                node.clone(),
                NodeView {
                    node,
                    supervisor_alive: false,
                    last_seen: None,
                    supervisor: None,
                    agents,
                    running,
                },
            )
        })
        .collect();
    for (node, last_seen, value) in announced(&state).await {
        let entry = nodes.entry(node.clone()).or_insert(NodeView {
            node,
            supervisor_alive: false,
            last_seen: None,
            supervisor: None,
            agents: 0,
            running: 0,
        });
        entry.supervisor_alive = true;
        entry.last_seen = Some(last_seen);
        entry.supervisor = Some(value);
    }
    Ok(super::ok(nodes.into_values().collect::<Vec<_>>()))
}

/// Live supervisors from the nodes bucket (empty if NATS or the bucket is missing).
async fn announced(state: &AppState) -> Vec<(String, DateTime<Utc>, Value)> {
    let js = async_nats::jetstream::new(state.nats().clone());
    let read = async {
        let kv = js.get_key_value(&state.config().nodes_bucket).await.ok()?;
        let mut keys = kv.keys().await.ok()?;
        let mut out = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(entry)) = kv.entry(&key).await {
                let value: Value = serde_json::from_slice(&entry.value).unwrap_or(Value::Null);
                let seen = DateTime::<Utc>::from_timestamp(
                    entry.created.unix_timestamp(),
                    entry.created.nanosecond(),
                )
                .unwrap_or_else(Utc::now);
                out.push((key, seen, value));
            }
        }
        Some(out)
    };
    tokio::time::timeout(crate::PROBE_TIMEOUT, read)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}
