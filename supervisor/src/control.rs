//! Control requests to agents on `<prefix>.<agent_id>` (request/reply).

use std::time::Duration;

use opmas_domain::control::{ControlAction, ControlReply, ControlRequest};

/// Why a control request got no usable answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// Nobody listens: the agent does not speak the control protocol.
    #[error("the agent does not answer control requests")]
    NoResponder,
    /// Someone listens but did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not a control reply, or NATS failed.
    #[error("bad control exchange: {0}")]
    Failed(String),
}

/// Sends `action` to `agent` and waits up to `timeout` for its reply.
pub async fn request(
    client: &async_nats::Client,
    prefix: &str,
    agent: &str,
    action: ControlAction,
    timeout: Duration,
) -> Result<ControlReply, ControlError> {
    request_with(client, prefix, agent, action, None, timeout).await
}

/// [`request`] carrying a config (for `reload`).
pub async fn request_with(
    client: &async_nats::Client,
    prefix: &str,
    agent: &str,
    action: ControlAction,
    config: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<ControlReply, ControlError> {
    let body = serde_json::to_vec(&ControlRequest { action, config })
        .map_err(|e| ControlError::Failed(e.to_string()))?;
    let subject = format!("{prefix}.{agent}");
    let reply = tokio::time::timeout(timeout, client.request(subject, body.into()))
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => ControlError::NoResponder,
            async_nats::RequestErrorKind::TimedOut => ControlError::Timeout(timeout),
            _ => ControlError::Failed(e.to_string()),
        })?;
    serde_json::from_slice(&reply.payload).map_err(|e| ControlError::Failed(e.to_string()))
}
