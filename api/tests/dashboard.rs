//! What the web dashboard needs from the server: the embedded pages served
//! without a token and outside the OpenAPI document, `GET /whoami`, the
//! fleet's latest samples in one request (`GET /metrics/latest`), and
//! threads / open files in metric series.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use opmas_api::Role;
use opmas_testkit::api::ApiStack;
use opmas_testkit::eventually;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn get(http: &Client, url: String, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn pages_are_public_embedded_and_outside_the_document() {
    let stack = ApiStack::start().await;
    let http = Client::new();
    let index = http.get(stack.url("/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    let h = index.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let body = index.text().await.unwrap();
    assert!(
        body.contains(r#"<script type="module" src="/ui/app.js">"#),
        "{body}"
    );
    for (path, mime, needle) in [
        ("/ui/app.js", "text/javascript; charset=utf-8", "/whoami"),
        ("/ui/style.css", "text/css; charset=utf-8", "@media"),
        (
            "/ui/vendor/uplot/uPlot.esm.js",
            "text/javascript; charset=utf-8",
            "export",
        ),
        (
            "/ui/vendor/uplot/LICENSE",
            "text/plain; charset=utf-8",
            "MIT",
        ),
    ] {
        let r = http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], mime, "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    let (status, body) = get(&http, stack.url("/ui/../Cargo.toml"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body2) = get(&http, stack.url("/ui/missing.js"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body2["error"]["code"], "NOT_FOUND", "{body}");
    let (_, doc) = get(&http, stack.url("/api/v1/openapi.json"), None).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/api/v1/whoami"));
    assert!(paths.contains_key("/api/v1/metrics/latest"));
    assert!(
        paths.keys().all(|p| p.starts_with("/api/v1/")),
        "{:?}",
        paths.keys()
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn whoami_names_the_subject_and_role_of_the_token() {
    let stack = ApiStack::start().await;
    let http = Client::new();
    let url = stack.url("/api/v1/whoami");
    let operator = stack.token(Role::Operator).await;
    let (status, me) = get(&http, url.clone(), Some(&operator)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({"subject": "token:test-operator", "role": "operator", "credential": "api_token"})
    );
    let jwt = stack.jwt("alice@example.org", Role::Viewer, 60);
    let (status, me) = get(&http, url.clone(), Some(&jwt)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({"subject": "alice@example.org", "role": "viewer", "credential": "jwt"})
    );
    let (status, body) = get(&http, url.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    let expired = stack.jwt("alice@example.org", Role::Admin, -120);
    let (status, _) = get(&http, url, Some(&expired)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    stack.cleanup().await;
}

async fn register(stack: &ApiStack, http: &Client, id: &str) {
    let r = http
        .post(stack.url("/api/v1/agents"))
        .bearer_auth(&stack.admin_token)
        .json(&json!({"agent_id": id, "spec": {"agent_type": "t", "command": "sleep", "args": ["1"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = stack.url(&format!("/api/v1/agents/{id}/status"));
    let token = stack.admin_token.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move { get(&http, url, Some(&token)).await.0 == StatusCode::OK }
        })
        .await
    );
}

async fn sample(stack: &ApiStack, agent: &str, at: DateTime<Utc>, cpu: f64, threads: i64) {
    sqlx::query(
        "insert into agent_metric_samples (agent_id, at, node, pid, cpu_percent, rss_bytes, threads, open_fds) \
         values ($1, $2, 'n1', 42, $3, 1048576, $4, $4 * 2)",
    )
    .bind(agent)
    .bind(at)
    .bind(cpu)
    .bind(threads)
    .execute(&stack.db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn latest_samples_of_the_fleet_in_one_request() {
    let stack = ApiStack::start().await;
    let http = Client::new();
    let token = stack.token(Role::Viewer).await;
    let latest = stack.url("/api/v1/metrics/latest");
    let (status, empty) = get(&http, latest.clone(), Some(&token)).await;
    assert_eq!((status, empty), (StatusCode::OK, json!([])));
    for id in ["alpha", "beta", "stale", "gone"] {
        register(&stack, &http, id).await;
    }
    let now = Utc::now();
    sample(
        &stack,
        "alpha",
        now - chrono::Duration::seconds(20),
        10.0,
        3,
    )
    .await;
    sample(&stack, "alpha", now - chrono::Duration::seconds(5), 12.5, 4).await;
    sample(&stack, "beta", now - chrono::Duration::seconds(9), 1.0, 1).await;
    sample(
        &stack,
        "stale",
        now - chrono::Duration::minutes(30),
        99.0,
        9,
    )
    .await;
    sample(&stack, "gone", now - chrono::Duration::seconds(5), 50.0, 5).await;
    sample(&stack, "unregistered", now, 1.0, 1).await;
    let r = http
        .delete(stack.url("/api/v1/agents/gone"))
        .bearer_auth(&stack.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (http2, latest2, token2) = (http.clone(), latest.clone(), token.clone());
    let settled = eventually(Duration::from_secs(10), move || {
        let (http, latest, token) = (http2.clone(), latest2.clone(), token2.clone());
        async move {
            let (_, v) = get(&http, latest, Some(&token)).await;
            v.as_array().is_some_and(|a| a.len() == 2)
        }
    })
    .await;
    let (status, rows) = get(&http, latest, Some(&token)).await;
    assert!(settled, "{rows}");
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["alpha", "beta"],
        "the newest sample per live agent, fresh ones only"
    );
    assert_eq!(rows[0]["cpu_percent"], 12.5);
    assert_eq!(rows[0]["threads"], 4);
    assert_eq!(rows[0]["open_fds"], 8);
    assert_eq!(rows[0]["rss_bytes"], 1_048_576);
    assert_eq!(rows[0]["node"], "n1");

    // Metric series carry threads and open files too.
    let series = stack.url("/api/v1/agents/alpha/metrics?resolution=raw");
    let (status, page) = get(&http, series, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let points = page["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[1]["threads_last"], 4.0);
    assert_eq!(points[1]["fds_max"], 8.0);
    assert_eq!(points[0]["cpu_avg"], 10.0);
    stack.cleanup().await;
}
