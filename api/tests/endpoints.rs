//! Every endpoint's happy path and its errors, against a real API on a
//! real Postgres and nats-server (see `opmas_testkit::api::ApiStack`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use opmas_api::Role;
use opmas_testkit::api::ApiStack;
use opmas_testkit::eventually;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

struct T {
    stack: ApiStack,
    http: Client,
}

impl T {
    async fn new() -> Self {
        Self {
            stack: ApiStack::start().await,
            http: Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method, self.stack.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, headers)
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(method, path, &self.stack.admin_token.clone(), body)
            .await;
        (s, v)
    }

    async fn register(&self, id: &str) -> Value {
        let (s, v) = self
            .admin(
                Method::POST,
                "/api/v1/agents",
                Some(json!({"agent_id": id, "spec": {"agent_type": "worker", "command": "sleep", "args": ["1000"],
                    "env": {"API_KEY": "hunter2", "MODE": "fast"}, "secret_env": ["API_KEY"],
                    "config": {"threshold": 1}}, "reason": "test setup"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// The `/metrics` text.
    async fn metrics(&self) -> String {
        self.http
            .get(self.stack.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the read model reflects `sequence` for `id`.
    async fn projected(&self, id: &str, sequence: i64) {
        let ok = eventually(Duration::from_secs(10), || async {
            let (s, v) = self
                .admin(Method::GET, &format!("/api/v1/agents/{id}/status"), None)
                .await;
            s == StatusCode::OK && v["sequence"].as_i64().unwrap_or(0) >= sequence
        })
        .await;
        assert!(ok, "read model of {id} never reached sequence {sequence}");
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn register_list_get_and_errors() {
    let t = T::new().await;
    let created = t.register("alpha").await;
    assert_eq!(created["command"], "register");
    assert_eq!(created["events"], json!(["AgentRegistered"]));
    let seq = created["sequence"].as_i64().unwrap();
    t.register("beta").await;
    t.projected("alpha", seq).await;
    t.projected("beta", 1).await;

    // list, filters, sort, pagination
    let (s, v) = t.admin(Method::GET, "/api/v1/agents", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["total"], 2);
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents?sort=-agent_id&limit=1", None)
        .await;
    assert_eq!(v["items"][0]["agent_id"], "beta");
    assert_eq!(v["total"], 2);
    assert_eq!(v["limit"], 1);
    let (_, v) = t
        .admin(
            Method::GET,
            "/api/v1/agents?sort=agent_id&limit=1&offset=1",
            None,
        )
        .await;
    assert_eq!(v["items"][0]["agent_id"], "beta");
    let (_, v) = t
        .admin(
            Method::GET,
            "/api/v1/agents?type=worker&status=registered&q=alp",
            None,
        )
        .await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["items"][0]["agent_id"], "alpha");
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents?node=elsewhere", None)
        .await;
    assert_eq!(v["total"], 0);

    // bad query values name the parameter
    let (s, v) = t
        .admin(Method::GET, "/api/v1/agents?sort=color", None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "VALIDATION_FAILED");
    assert_eq!(v["error"]["details"]["field"], "sort");
    let (s, v) = t.admin(Method::GET, "/api/v1/agents?limit=0", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "limit");
    let (s, v) = t.admin(Method::GET, "/api/v1/agents?limit=abc", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, _) = t.admin(Method::GET, "/api/v1/agents?bogus=1", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // get one: spec with secrets redacted
    let (s, v) = t.admin(Method::GET, "/api/v1/agents/alpha", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["agent_id"], "alpha");
    assert_eq!(v["status"], "registered");
    assert_eq!(v["spec"]["env"]["API_KEY"], "***");
    assert_eq!(v["spec"]["env"]["MODE"], "fast");
    assert!(!v.to_string().contains("hunter2"));

    // unknown and invalid ids
    let (s, v) = t.admin(Method::GET, "/api/v1/agents/nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(code(&v), "AGENT_NOT_FOUND");
    let (s, v) = t.admin(Method::GET, "/api/v1/agents/Bad_Id", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "id");

    // duplicate, invalid spec (field named), unknown field, malformed JSON, no content type
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents",
            Some(json!({"agent_id": "alpha", "spec": {"command": "sleep"}})),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "AGENT_EXISTS"));
    let (s, v) = t.admin(Method::POST, "/api/v1/agents", Some(json!({"agent_id": "gamma", "spec": {"agent_type": "w", "command": "sleep", "restart": {"multiplier": 0.5}}}))).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED"),
        "{v}"
    );
    assert_eq!(
        v["error"]["details"]["field"], "spec.restart.multiplier",
        "{v}"
    );
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents",
            Some(json!({"agent_id": "gamma", "spec": {"command": "sleep", "restrat": {}}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("restrat"),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["field"], "spec.restrat", "{v}");
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents",
            Some(json!({"agent_id": "Gamma", "spec": {"command": "sleep"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "agent_id");
    let resp = t
        .http
        .post(t.stack.url("/api/v1/agents"))
        .bearer_auth(&t.stack.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = t
        .http
        .post(t.stack.url("/api/v1/agents"))
        .bearer_auth(&t.stack.admin_token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // unknown route, request ids on every response (set or echoed)
    let (s, v, h) = t
        .call(
            Method::GET,
            "/api/v1/nothing-here",
            &t.stack.admin_token,
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    assert!(h.contains_key("x-request-id"));
    let resp = t
        .http
        .get(t.stack.url("/api/v1/agents"))
        .header("x-request-id", "my-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["x-request-id"], "my-req-1");
    t.stack.cleanup().await;
}

#[tokio::test]
async fn lifecycle_recovery_history_and_audit_trail() {
    let t = T::new().await;
    t.register("worker-1").await;
    let (s, v) = t
        .admin(Method::POST, "/api/v1/agents/worker-1/start", None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["agent"]["desired_state"], "running");
    assert_eq!(v["events"], json!(["StartRequested"]));
    // starting twice is harmless (no new events)
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents/worker-1/start",
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(v["events"], json!([]));
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents/worker-1/stop",
            Some(json!({"reason": "maintenance window"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["agent"]["desired_state"], "stopped");
    let (s, v) = t
        .admin(Method::POST, "/api/v1/agents/worker-1/restart", None)
        .await;
    assert!(
        s == StatusCode::ACCEPTED || s == StatusCode::CONFLICT,
        "{s} {v}"
    );
    if s == StatusCode::CONFLICT {
        assert_eq!(code(&v), "INVALID_TRANSITION");
        assert!(v["error"]["details"]["status"].is_string());
    }
    // recovery with a bad strategy names the field
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents/worker-1/recover",
            Some(json!({"strategy": "pray"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "strategy", "{v}");
    // recovery policy switch
    let (s, v) = t
        .admin(
            Method::PUT,
            "/api/v1/agents/worker-1/recovery-policy",
            Some(json!({"strategy": "restart", "auto": false, "max_attempts": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let last = v["sequence"].as_i64().unwrap();
    // commands on unknown agents
    let (s, v) = t
        .admin(Method::POST, "/api/v1/agents/ghost/start", None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "AGENT_NOT_FOUND"));

    t.projected("worker-1", last).await;
    let (s, v) = t
        .admin(Method::GET, "/api/v1/agents/worker-1/history", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let history = v.as_array().unwrap();
    assert!(history.len() >= 3, "{v}");
    let stop = history
        .iter()
        .find(|h| h["event_type"] == "StopRequested")
        .unwrap();
    assert_eq!(stop["reason"], "maintenance window");
    assert_eq!(stop["actor"], "token:test-admin");
    assert_eq!(stop["to_desired"], "stopped");
    // paging
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/worker-1/history?limit=1", None)
        .await;
    let first = v[0]["sequence"].as_i64().unwrap();
    let (_, v2) = t
        .admin(
            Method::GET,
            &format!("/api/v1/agents/worker-1/history?limit=1&before={first}"),
            None,
        )
        .await;
    assert!(v2[0]["sequence"].as_i64().unwrap() < first);

    // audit trail: every event with actor and reason, paged, secrets redacted
    let (s, v) = t
        .admin(Method::GET, "/api/v1/agents/worker-1/events?limit=2", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"][0]["event_type"], "AgentRegistered");
    assert_eq!(v["items"][0]["reason"], "test setup");
    assert_eq!(v["items"][0]["payload"]["spec"]["env"]["API_KEY"], "***");
    assert!(!v.to_string().contains("hunter2"));
    let next = v["next_after"].as_i64().unwrap();
    let (_, v) = t
        .admin(
            Method::GET,
            &format!("/api/v1/agents/worker-1/events?after={next}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(v["items"][0]["sequence"].as_i64().unwrap(), next + 1);
    assert!(v["next_after"].is_null());
    let (_, v) = t
        .admin(
            Method::GET,
            "/api/v1/agents/worker-1/events?type=StopRequested",
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (s, _) = t
        .admin(Method::GET, "/api/v1/agents/ghost/events", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // state as of an instant: before registration 404, after the start running-desired
    let registered_at = {
        let (_, v) = t
            .admin(Method::GET, "/api/v1/agents/worker-1/events?limit=2", None)
            .await;
        v["items"][1]["recorded_at"].as_str().unwrap().to_owned()
    };
    let (s, v) = t
        .admin(
            Method::GET,
            &format!("/api/v1/agents/worker-1?at={}", urlenc(&registered_at)),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["desired_state"], "running");
    assert_eq!(v["sequence"], 2);
    assert!(v["as_of"].as_str().is_some());
    let (s, v) = t
        .admin(
            Method::GET,
            "/api/v1/agents/worker-1?at=2001-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "AGENT_NOT_FOUND"));
    let (s, v) = t
        .admin(Method::GET, "/api/v1/agents/worker-1?at=yesterday", None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "at");

    // recovery attempts
    let (s, v) = t
        .admin(Method::GET, "/api/v1/agents/worker-1/recovery", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // no supervisor runs here, so the stop never completes: deregister must wait
    let (s, v) = t
        .admin(
            Method::DELETE,
            "/api/v1/agents/worker-1?reason=retired",
            None,
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "INVALID_TRANSITION"),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["status"], "stopping");
    // an agent that never ran is deregistered at once; then commands are refused
    t.register("worker-2").await;
    let (s, v) = t
        .admin(
            Method::DELETE,
            "/api/v1/agents/worker-2?reason=retired",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["agent"]["deregistered"], true);
    let (s, v) = t
        .admin(Method::POST, "/api/v1/agents/worker-2/start", None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "AGENT_DEREGISTERED"));
    t.stack.cleanup().await;
}

fn urlenc(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test]
async fn config_versions_if_match_and_rollback() {
    let t = T::new().await;
    t.register("cfg").await;
    let (s, v, h) = t
        .call(
            Method::GET,
            "/api/v1/agents/cfg/config",
            &t.stack.admin_token,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], 1);
    assert_eq!(v["config"], json!({"threshold": 1}));
    assert_eq!(h["etag"], "\"1\"");
    let put = |if_match: Option<&'static str>, body: Value| {
        let mut req = t
            .http
            .put(t.stack.url("/api/v1/agents/cfg/config"))
            .bearer_auth(&t.stack.admin_token)
            .json(&body);
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        req.send()
    };
    // missing If-Match
    let resp = put(None, json!({"config": {"threshold": 2}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_REQUIRED);
    // good update
    let resp = put(
        Some("\"1\""),
        json!({"config": {"threshold": 2, "mode": "x"}, "reason": "tune"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], "\"2\"");
    // stale version
    let resp = put(Some("\"1\""), json!({"config": {"threshold": 3}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(code(&v), "VERSION_CONFLICT");
    assert_eq!(v["error"]["details"]["current"], 2);
    // garbage If-Match and non-object config
    let resp = put(Some("abc"), json!({"config": {}})).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let resp = put(Some("\"2\""), json!({"config": [1, 2]})).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // rollback to 1 makes version 3 with the old content
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents/cfg/config/rollback",
            Some(json!({"to_version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["agent"]["config_version"], 3);
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents/cfg/config/rollback",
            Some(json!({"to_version": 42})),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED")
    );
    // The read model may not have the agent yet right after the commands.
    let mut seq = None;
    for _ in 0..100 {
        let (_, v) = t.admin(Method::GET, "/api/v1/agents/cfg", None).await;
        seq = v["sequence"].as_i64();
        if seq.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.projected("cfg", seq.expect("agent never in the read model"))
        .await;
    let ok = eventually(Duration::from_secs(10), || async {
        let (_, v) = t
            .admin(Method::GET, "/api/v1/agents/cfg/config/versions", None)
            .await;
        v.as_array().is_some_and(|a| a.len() == 3)
    })
    .await;
    assert!(ok);
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/cfg/config/versions", None)
        .await;
    assert_eq!(v[0]["version"], 3);
    assert_eq!(v[0]["rolled_back_to"], 1);
    assert_eq!(v[0]["config"], json!({"threshold": 1}));
    assert_eq!(v[1]["actor"], "token:test-admin");
    assert!(
        v[1]["diff"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "/threshold"),
        "{v}"
    );
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/cfg/config", None)
        .await;
    assert_eq!(v["version"], 3);
    t.stack.cleanup().await;
}

#[tokio::test]
async fn errors_metrics_logs_and_nodes() {
    let t = T::new().await;
    t.register("obs").await;
    // two errors with the same fingerprint, one different
    for (i, msg) in [
        "disk full on /dev/sda1 after 10 tries",
        "disk full on /dev/sda1 after 12 tries",
        "boom",
    ]
    .iter()
    .enumerate()
    {
        t.stack
            .store
            .execute(
                "obs",
                opmas_domain::AgentCommand::RecordError {
                    severity: if i == 2 {
                        opmas_domain::Severity::Critical
                    } else {
                        opmas_domain::Severity::Error
                    },
                    category: "io".into(),
                    error_type: "DiskFull".into(),
                    message: (*msg).into(),
                    context: json!({"i": i}),
                },
                opmas_testkit::meta("supervisor@test"),
            )
            .await
            .unwrap();
    }
    t.projected("obs", 4).await;
    let (s, v) = t
        .admin(Method::GET, "/api/v1/agents/obs/errors", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 3);
    let (_, v) = t
        .admin(
            Method::GET,
            "/api/v1/agents/obs/errors?severity=critical",
            None,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["message"], "boom");
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/obs/errors?grouped=true", None)
        .await;
    let groups = v.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    assert!(groups.iter().any(|g| g["count"] == 2));
    let (s, _) = t
        .admin(Method::GET, "/api/v1/agents/obs/errors?since=nope", None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // metrics and logs through the telemetry streams
    let now = chrono::Utc::now();
    let sample = opmas_domain::telemetry::MetricSample {
        agent_id: "obs".into(),
        node: "n1".into(),
        pid: 42,
        at: now,
        cpu_percent: 12.5,
        rss_bytes: 1_000_000,
        threads: 3,
        open_fds: 7,
        last_heartbeat_at: Some(now),
    };
    let js = async_nats::jetstream::new(t.stack.client.clone());
    js.publish(
        t.stack.telemetry.metrics_subject("obs"),
        serde_json::to_vec(&sample).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    for (level, line) in [
        ("info", "service ready on port 8080"),
        ("error", "connection refused by upstream"),
    ] {
        let l = json!({"agent_id": "obs", "node": "n1", "pid": 42, "at": now, "stream": "stdout", "level": level, "line": line});
        js.publish(
            t.stack.telemetry.logs_subject("obs", level),
            l.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let ok = eventually(Duration::from_secs(10), || async {
        let (_, v) = t
            .admin(
                Method::GET,
                "/api/v1/agents/obs/metrics?resolution=raw",
                None,
            )
            .await;
        v["points"].as_array().is_some_and(|p| p.len() == 1)
    })
    .await;
    assert!(ok, "metric sample never visible");
    // The heartbeat the supervisor saw, carried by the sample, is the
    // agent's last heartbeat in the list, the agent and its status.
    for path in ["/api/v1/agents/obs", "/api/v1/agents/obs/status"] {
        let (_, v) = t.admin(Method::GET, path, None).await;
        let seen: chrono::DateTime<chrono::Utc> = v["last_heartbeat_at"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no last_heartbeat_at in {v}"))
            .parse()
            .unwrap();
        assert!(
            (seen - now).num_milliseconds().abs() < 1,
            "{path}: {seen} vs {now}"
        );
    }
    let (_, v) = t.admin(Method::GET, "/api/v1/agents?q=obs", None).await;
    assert!(v["items"][0]["last_heartbeat_at"].is_string(), "{v}");
    let (_, v) = t
        .admin(
            Method::GET,
            "/api/v1/agents/obs/metrics?resolution=raw",
            None,
        )
        .await;
    assert_eq!(v["points"][0]["cpu_avg"], 12.5);
    let (s, v) = t
        .admin(
            Method::GET,
            "/api/v1/agents/obs/metrics?resolution=5s",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "resolution");
    let (s, _) = t
        .admin(
            Method::GET,
            "/api/v1/agents/obs/metrics?since=2030-01-01T00:00:00Z&until=2029-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let ok = eventually(Duration::from_secs(10), || async {
        let (_, v) = t.admin(Method::GET, "/api/v1/agents/obs/logs", None).await;
        v.as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    assert!(ok, "log lines never visible");
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/obs/logs?q=REFUSED", None)
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["level"], "error");
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/obs/logs?level=info", None)
        .await;
    assert_eq!(v[0]["line"], "service ready on port 8080");
    let (s, v) = t
        .admin(Method::GET, "/api/v1/agents/obs/logs?level=loud", None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "level");
    let (s, _) = t
        .admin(Method::GET, "/api/v1/agents/ghost/logs", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // follow: a line published after connecting arrives as an SSE event
    let resp = t
        .http
        .get(t.stack.url("/api/v1/agents/obs/logs?follow=true&q=later"))
        .bearer_auth(&t.stack.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.bytes_stream();
    let publisher = {
        let client = t.stack.client.clone();
        let subject = t.stack.telemetry.logs_subject("obs", "info");
        tokio::spawn(async move {
            for i in 0..50 {
                let l = json!({"agent_id": "obs", "node": "n1", "pid": 42, "at": chrono::Utc::now(), "stream": "stdout", "level": "info", "line": format!("a later line {i}")});
                client
                    .publish(subject.clone(), l.to_string().into())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        use futures::StreamExt;
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("a later line") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    publisher.abort();
    assert!(got, "no followed line: {seen}");
    assert!(seen.contains("event: log"));

    // nodes: the agent has no node yet; a supervisor announcement shows up as alive
    let (s, v) = t.admin(Method::GET, "/api/v1/nodes", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!([]));
    t.stack.cleanup().await;
}

#[tokio::test]
async fn tokens_create_list_revoke() {
    let t = T::new().await;
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "ci", "role": "operator", "expires_in_seconds": 3600})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("opm_"));
    assert_eq!(v["role"], "operator");
    // works, with the operator role
    let (s, _, _) = t.call(Method::GET, "/api/v1/agents", &token, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v, _) = t.call(Method::GET, "/api/v1/tokens", &token, None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    // listed without the secret
    let (_, v) = t.admin(Method::GET, "/api/v1/tokens", None).await;
    assert!(!v.to_string().contains(&token));
    assert!(v.as_array().unwrap().iter().any(|x| x["name"] == "ci"));
    // stored hashed
    let stored: Vec<String> = sqlx::query_scalar("select hash from api_tokens")
        .fetch_all(&t.stack.db.pool)
        .await
        .unwrap();
    assert!(stored.iter().all(|h| !h.contains(&token[4..])));
    // revoke: stops working at once
    let (s, v) = t
        .admin(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["revoked_at"].is_string());
    let (s, v, _) = t.call(Method::GET, "/api/v1/agents", &token, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));
    // errors
    let (s, v) = t
        .admin(Method::DELETE, "/api/v1/tokens/not-a-uuid", None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = t
        .admin(
            Method::DELETE,
            "/api/v1/tokens/00000000-0000-0000-0000-000000000000",
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "TOKEN_NOT_FOUND"));
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"]["field"], "role", "{v}");
    let (s, _) = t
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // an expired token
    let expired = opmas_api::auth::tokens::create(
        &t.stack.db.pool,
        "old",
        Role::Admin,
        "test",
        Some(chrono::Utc::now() - chrono::Duration::seconds(5)),
    )
    .await
    .unwrap();
    let (s, v, _) = t
        .call(Method::GET, "/api/v1/agents", &expired.token, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    let (s, _, _) = t
        .call(Method::GET, "/api/v1/agents", "opm_00000000", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    t.stack.cleanup().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let t = T::new().await;
    t.register("m1").await;
    t.projected("m1", 1).await;
    let r = t.http.get(t.stack.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = t.http.get(t.stack.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["postgres"], "ok");
    assert_eq!(v["checks"]["nats"], "ok");
    let text = t.metrics().await;
    assert!(
        text.contains("opmas_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("route=\"/api/v1/agents\""), "{text}");
    assert!(
        text.contains("opmas_commands_total{command=\"register\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("opmas_agents{status=\"registered\",health=\"unknown\"} 1"),
        "{text}"
    );
    assert!(text.contains("opmas_relay_backlog"), "{text}");
    assert!(text.contains("opmas_projection_consumer_pending"), "{text}");
    assert!(text.contains("opmas_events_stream_messages 1"), "{text}");
    assert!(text.contains("opmas_agents_heartbeat_lost 0"), "{text}");
    assert!(text.contains("opmas_agent_restarts 0"), "{text}");
    sqlx::query("update agent_status set heartbeat_lost = true, restart_count = 3")
        .execute(&t.stack.db.pool)
        .await
        .unwrap();
    let text = t.metrics().await;
    assert!(text.contains("opmas_agents_heartbeat_lost 1"), "{text}");
    assert!(text.contains("opmas_agent_restarts 3"), "{text}");
    // a refused command is counted by its code
    let _ = t
        .admin(Method::POST, "/api/v1/agents/nobody/start", None)
        .await;
    let text = t.metrics().await;
    assert!(
        text.contains("command=\"start\",outcome=\"agent_not_found\""),
        "{text}"
    );
    t.stack.cleanup().await;
}

/// The agent list is answered from its cache only while the read models
/// are unchanged: a change of a status row (which always raises its
/// sequence) or of a live heartbeat shows at once; a row changed without a
/// new sequence (which the projector never does) proves the cache is used.
#[tokio::test]
async fn cached_agent_list_is_never_stale() {
    let t = T::new().await;
    let v = t.register("cached").await;
    t.projected("cached", v["sequence"].as_i64().unwrap()).await;
    let status_of = |v: &Value| v["items"][0]["status"].as_str().unwrap_or("-").to_string();
    let pool = &t.stack.db.pool;

    let (_, v) = t.admin(Method::GET, "/api/v1/agents", None).await;
    assert_eq!(status_of(&v), "registered");
    sqlx::query("update agent_status set status = 'changed', last_sequence = last_sequence + 1 where agent_id = 'cached'")
        .execute(pool)
        .await
        .unwrap();
    let (_, v) = t.admin(Method::GET, "/api/v1/agents", None).await;
    assert_eq!(status_of(&v), "changed", "a new sequence is seen at once");

    sqlx::query("insert into agent_heartbeats (agent_id, last_seen) values ('cached', '2030-01-01T00:00:00Z')")
        .execute(pool)
        .await
        .unwrap();
    let (_, v) = t.admin(Method::GET, "/api/v1/agents", None).await;
    assert_eq!(
        v["items"][0]["last_heartbeat_at"], "2030-01-01T00:00:00Z",
        "a live heartbeat is seen at once"
    );

    // Within one second and without a new sequence, the cached answer stands.
    let mut proved = false;
    for round in 0..10 {
        let before = chrono::Utc::now().timestamp();
        let (_, v) = t.admin(Method::GET, "/api/v1/agents", None).await;
        let shown = status_of(&v);
        sqlx::query("update agent_status set status = $1 where agent_id = 'cached'")
            .bind(format!("quiet-{round}"))
            .execute(pool)
            .await
            .unwrap();
        let (_, v) = t.admin(Method::GET, "/api/v1/agents", None).await;
        if chrono::Utc::now().timestamp() == before {
            assert_eq!(status_of(&v), shown, "answered from the cache");
            proved = true;
            break;
        }
    }
    assert!(proved, "never two requests within one second");
    // Another query is another entry, built fresh.
    let (_, v) = t.admin(Method::GET, "/api/v1/agents?limit=5", None).await;
    assert!(status_of(&v).starts_with("quiet-"), "{v}");
    t.stack.cleanup().await;
}

/// NUL characters (which PostgreSQL cannot store) are refused as invalid
/// input naming the field, in bodies and query strings, never a 500.
#[tokio::test]
async fn nul_characters_are_refused_by_field() {
    let t = T::new().await;
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "a\u{0}b", "role": "viewer"})),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED"),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["field"], "name", "{v}");
    t.register("nul").await;
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents/nul/start",
            Some(json!({"reason": "x\u{0}"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["details"]["field"], "reason", "{v}");
    let (s, v) = t
        .admin(
            Method::PUT,
            "/api/v1/agents/nul",
            Some(json!({"spec": {"agent_type": "t", "command": "true", "env": {"A": ["x"]}, "args": ["ok", "b\u{0}"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["details"]["field"], "spec.args[1]", "{v}");
    let (s, v) = t.admin(Method::GET, "/api/v1/agents?q=a%00b", None).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED"),
        "{v}"
    );
    // Still fine without NUL.
    let (s, _) = t
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "ab", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    t.stack.cleanup().await;
}

/// Secrets (env values named in `secret_env`, config fields the schema
/// marks `x-secret`) never appear in a response: agent, config, versions
/// and their diffs, events, the live stream. A PUT of `***` (what reads
/// show) keeps the stored value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_in_every_response() {
    use futures::StreamExt;
    let t = T::new().await;
    let spec = json!({"agent_type": "db", "command": "sleep", "args": ["1000"],
        "env": {"DB_PASSWORD": "env-s3cret"}, "secret_env": ["DB_PASSWORD"],
        "config_schema": {"type": "object", "properties": {
            "password": {"type": "string", "x-secret": true}, "level": {"type": "string"}}},
        "config": {"password": "first-s3cret", "level": "info"}});
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents",
            Some(json!({"agent_id": "vault", "spec": spec})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secrets = ["env-s3cret", "first-s3cret", "second-s3cret"];
    let clean = |what: &str, v: &Value| {
        let text = v.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
    };
    clean("register answer", &v);
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/vault/config", None)
        .await;
    assert_eq!(v["config"], json!({"password": "***", "level": "info"}));

    // A live client sees config changes without their secrets.
    let resp = t
        .http
        .get(
            t.stack
                .url("/api/v1/stream?agents=vault&kinds=agent.status"),
        )
        .bearer_auth(&t.stack.admin_token)
        .send()
        .await
        .unwrap();
    let mut live = resp.bytes_stream();

    // Sent back as read: the password is kept.
    let (s, v, _) = t
        .call(
            Method::PUT,
            "/api/v1/agents/vault/config",
            &t.stack.admin_token,
            Some(json!({"config": {"password": "***", "level": "debug"}})),
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_REQUIRED, "{v}");
    let put = |config: Value, version: i64| {
        let http = t.http.clone();
        let url = t.stack.url("/api/v1/agents/vault/config");
        let token = t.stack.admin_token.clone();
        async move {
            let resp = http
                .put(url)
                .bearer_auth(token)
                .header("if-match", format!("\"{version}\""))
                .json(&json!({"config": config}))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = put(json!({"password": "***", "level": "debug"}), 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    clean("config answer", &v);
    let (agent, _) = t.stack.store.load("vault").await.unwrap();
    let stored = agent.config().unwrap();
    assert!(!stored.to_string().contains("first-s3cret"), "sealed");
    let key = t.stack.secret_key.as_deref();
    assert_eq!(
        opmas_domain::secret::open_config(key, stored).unwrap()["password"],
        "first-s3cret",
        "*** kept the stored value"
    );
    let (s, v) = put(json!({"password": "second-s3cret", "level": "debug"}), 2).await;
    assert_eq!(s, StatusCode::OK);
    clean("config answer", &v);
    t.projected("vault", v["sequence"].as_i64().unwrap()).await;

    let (_, v) = t.admin(Method::GET, "/api/v1/agents/vault", None).await;
    clean("agent", &v);
    assert_eq!(v["spec"]["config"]["password"], "***");
    assert_eq!(v["spec"]["env"]["DB_PASSWORD"], "***");
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/vault/config", None)
        .await;
    clean("config", &v);
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/vault/events", None)
        .await;
    clean("events", &v);
    assert_eq!(v["items"].as_array().unwrap().len(), 3, "{v}");
    let listed = eventually(Duration::from_secs(10), || async {
        let (_, v) = t
            .admin(Method::GET, "/api/v1/agents/vault/config/versions", None)
            .await;
        v.as_array().is_some_and(|a| a.len() == 3)
    })
    .await;
    assert!(listed, "three config versions");
    let (_, v) = t
        .admin(Method::GET, "/api/v1/agents/vault/config/versions", None)
        .await;
    clean("versions", &v);
    let diff = &v[0]["diff"];
    assert!(
        diff.as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "/password" && c["to"] == "***"),
        "the secret's change is shown, not its value: {diff}"
    );

    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(chunk)) = live.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.matches("ConfigUpdated").count() >= 2 {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(got, "live config events: {seen}");
    for secret in secrets {
        assert!(!seen.contains(secret), "live stream shows {secret}: {seen}");
    }
    t.stack.cleanup().await;
}

/// An agent registered a moment ago, not yet in the read model (here: no
/// projector at all), is answered from the event store: a client reads what
/// it just wrote. An unknown agent is still 404.
#[tokio::test]
async fn a_just_registered_agent_is_found_before_the_read_model_has_it() {
    let stack = opmas_testkit::api::ApiStack::start_with(opmas_testkit::api::StackOptions {
        projector: false,
        ..Default::default()
    })
    .await;
    let t = T {
        stack,
        http: Client::new(),
    };
    t.register("fresh").await;
    let (s, v) = t.admin(Method::GET, "/api/v1/agents/fresh", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "registered");
    assert_eq!(
        v["spec"]["env"]["API_KEY"], "***",
        "secrets redacted here too"
    );
    let (s, v) = t.admin(Method::GET, "/api/v1/agents/ghost", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "AGENT_NOT_FOUND"));
    t.stack.cleanup().await;
}

/// A spec read back (its secrets shown as `***`) and sent again with a change
/// keeps the stored secret values; a new value replaces one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spec_sent_back_as_read_keeps_its_secrets() {
    let t = T::new().await;
    let spec = json!({"agent_type": "db", "command": "sleep", "args": ["1000"],
        "env": {"DB_PASSWORD": "env-s3cret", "MODE": "a"}, "secret_env": ["DB_PASSWORD"],
        "config_schema": {"type": "object", "properties": {
            "password": {"type": "string", "x-secret": true}}},
        "config": {"password": "cfg-s3cret"}});
    let (s, v) = t
        .admin(
            Method::POST,
            "/api/v1/agents",
            Some(json!({"agent_id": "keeper", "spec": spec})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = t.admin(Method::GET, "/api/v1/agents/keeper", None).await;
    let mut read = v["spec"].clone();
    assert_eq!(read["env"]["DB_PASSWORD"], "***", "{v}");
    assert_eq!(read["config"]["password"], "***", "{v}");
    read["env"]["MODE"] = json!("b");
    let (s, v) = t
        .admin(
            Method::PUT,
            "/api/v1/agents/keeper",
            Some(json!({"spec": read, "reason": "mode b"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let key = t.stack.secret_key.as_deref();
    let stored = |agent: opmas_domain::Agent| {
        opmas_domain::secret::open_spec(key, &agent.spec.unwrap()).unwrap()
    };
    let (agent, _) = t.stack.store.load("keeper").await.unwrap();
    let spec = stored(agent);
    assert_eq!(spec.env["MODE"], "b");
    assert_eq!(
        spec.env["DB_PASSWORD"], "env-s3cret",
        "*** kept the stored value"
    );
    assert_eq!(
        spec.config["password"], "cfg-s3cret",
        "*** kept the stored value"
    );

    read["env"]["DB_PASSWORD"] = json!("new-s3cret");
    let (s, v) = t
        .admin(
            Method::PUT,
            "/api/v1/agents/keeper",
            Some(json!({"spec": read, "reason": "rotate"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (agent, _) = t.stack.store.load("keeper").await.unwrap();
    assert_eq!(stored(agent).env["DB_PASSWORD"], "new-s3cret");
}
