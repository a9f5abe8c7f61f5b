//! The live stream: WebSocket and SSE clients get what they subscribed
//! to and nothing else; a stalled client is dropped without stalling others.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use opmas_testkit::api::{ApiStack, StackOptions};
use opmas_testkit::eventually;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(stack: &ApiStack, query: &str) -> Ws {
    let url = format!("ws://{}/api/v1/ws?{query}", stack.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", stack.admin_token).parse().unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(t) = msg {
            return Some(serde_json::from_str(&t).unwrap());
        }
    }
}

async fn command(stack: &ApiStack, path: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(stack.url(path))
        .bearer_auth(&stack.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

async fn register(stack: &ApiStack, id: &str) {
    command(
        stack,
        "/api/v1/agents",
        json!({"agent_id": id, "spec": {"agent_type": "t", "command": "sleep"}}),
    )
    .await;
}

#[tokio::test]
async fn websocket_client_gets_only_its_agents_status_changes() {
    let stack = ApiStack::start().await;
    register(&stack, "watched").await;
    register(&stack, "other").await;
    let mut ws = connect(&stack, "agents=watched&kinds=agent.status").await;
    // Give the hub's subscriptions a moment to be registered with the server.
    stack.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    command(&stack, "/api/v1/agents/other/start", json!({})).await;
    command(
        &stack,
        "/api/v1/agents/watched/start",
        json!({"reason": "go"}),
    )
    .await;
    command(&stack, "/api/v1/agents/other/stop", json!({})).await;
    command(&stack, "/api/v1/agents/watched/stop", json!({})).await;
    let mut first = next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("no message");
    // Under load the relay may publish the registration after the client
    // connected: it is a status event of `watched` too, and comes first.
    if first["data"]["event_type"] == "AgentRegistered" {
        assert_eq!(first["agent_id"], "watched");
        first = next_json(&mut ws, Duration::from_secs(10))
            .await
            .expect("no message after the registration");
    }
    assert_eq!(first["kind"], "agent.status");
    assert_eq!(first["agent_id"], "watched");
    assert_eq!(first["data"]["event_type"], "StartRequested");
    assert_eq!(first["data"]["actor"], "token:test-admin");
    let second = next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("no second message");
    assert_eq!(second["agent_id"], "watched");
    assert_eq!(second["data"]["event_type"], "StopRequested");
    // nothing about `other`, and no error-kind messages
    assert!(
        next_json(&mut ws, Duration::from_millis(500))
            .await
            .is_none()
    );

    // changing the filter over the socket
    ws.send(Message::Text(
        json!({"agents": ["other"], "kinds": ["agent.status"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let ack = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["kind"], "subscribed");
    for id in ["watched", "other"] {
        let r = reqwest::Client::new()
            .put(stack.url(&format!("/api/v1/agents/{id}/recovery-policy")))
            .bearer_auth(&stack.admin_token)
            .json(&json!({"auto": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let m = next_json(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(m["agent_id"], "other");
    assert_eq!(m["data"]["event_type"], "RecoveryPolicySet");
    // a bad filter is answered, the connection stays
    ws.send(Message::Text(
        json!({"kinds": ["agent.gossip"]}).to_string().into(),
    ))
    .await
    .unwrap();
    let err = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["kind"], "error");
    assert_eq!(err["error"]["code"], "VALIDATION_FAILED");
    stack.cleanup().await;
}

#[tokio::test]
async fn bad_filters_and_missing_auth_are_refused_before_upgrading() {
    let stack = ApiStack::start().await;
    let url = format!("ws://{}/api/v1/ws?kinds=agent.nope", stack.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", stack.admin_token).parse().unwrap(),
    );
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("422"), "{err}");
    let url = format!("ws://{}/api/v1/ws", stack.addr);
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    // the token may come as a query parameter (browsers cannot set headers)
    let url = format!(
        "ws://{}/api/v1/ws?access_token={}",
        stack.addr, stack.admin_token
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_ok());
    // a plain GET is told to use a WebSocket
    let r = reqwest::Client::new()
        .get(stack.url("/api/v1/ws"))
        .bearer_auth(&stack.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    stack.cleanup().await;
}

// Multi-threaded, so that the healthy client's reader is not starved by the
// publishing loop on a loaded machine (it was dropped in CI once, 470
// messages in, with a 64-message buffer on one thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_and_does_not_stall_others() {
    // 256 lines of 8 KiB buffered per client: 2 MiB, far below the ~12 MB
    // the stalled client is sent.
    let stack = ApiStack::start_with(StackOptions {
        live_buffer: 256,
        ..StackOptions::default()
    })
    .await;
    register(&stack, "noisy").await;
    let stalled = connect(&stack, "kinds=agent.log").await; // never read
    let mut healthy = connect(&stack, "kinds=agent.log").await;
    let mut sse = reqwest::Client::new()
        .get(stack.url("/api/v1/stream?kinds=agent.log&agents=noisy"))
        .bearer_auth(&stack.admin_token)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ~12 MB of log lines: far more than socket buffers hold.
    let filler = "x".repeat(8 * 1024);
    let subject = stack.telemetry.logs_subject("noisy", "info");
    let total = 1500;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        let mut dropped = false;
        while let Some(v) = next_json(&mut healthy, Duration::from_secs(20)).await {
            if v["kind"] == "dropped" {
                dropped = true;
                break;
            }
            got += 1;
            if v["data"]["line"] == "the end" {
                break;
            }
        }
        (got, dropped)
    });
    for i in 0..total {
        let line = json!({"agent_id": "noisy", "node": "n", "pid": 1, "at": chrono::Utc::now(), "stream": "stdout", "level": "info", "line": format!("{i} {filler}")});
        stack
            .client
            .publish(subject.clone(), line.to_string().into())
            .await
            .unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let end = json!({"agent_id": "noisy", "node": "n", "pid": 1, "at": chrono::Utc::now(), "stream": "stdout", "level": "info", "line": "the end"});
    stack
        .client
        .publish(subject.clone(), end.to_string().into())
        .await
        .unwrap();
    let (got, dropped) = reader.await.unwrap();
    assert!(
        !dropped,
        "the healthy client was dropped after {got} messages"
    );
    assert_eq!(got, total + 1, "the healthy client missed messages");
    // the SSE client got lines too
    let first = tokio::time::timeout(Duration::from_secs(5), sse.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: agent.log"));
    // the stalled one was dropped by the server
    let http = reqwest::Client::new();
    let ok = eventually(Duration::from_secs(30), || async {
        let text = http
            .get(stack.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("opmas_live_clients_dropped_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(ok, "the stalled client was never dropped");
    drop(stalled);
    stack.cleanup().await;
}
