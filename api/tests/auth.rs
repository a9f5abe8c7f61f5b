//! Authentication and authorization over HTTP: the full role x route
//! matrix read from the OpenAPI document, JWT failures, rate limiting,
//! body limits, and a database outage answered with 503 + Retry-After.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use opmas_api::Role;
use opmas_testkit::api::{ApiStack, StackOptions};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

async fn spec_doc(stack: &ApiStack) -> Value {
    Client::new()
        .get(stack.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every operation of the document: (method, path template, least role).
fn operations(doc: &Value) -> Vec<(Method, String, Role)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let scopes = &op["security"][0]["bearer"];
            let role = match scopes[0].as_str() {
                Some("viewer") => Role::Viewer,
                Some("operator") => Role::Operator,
                Some("admin") => Role::Admin,
                other => panic!("{method} {path} has no role scope: {other:?}"),
            };
            ops.push((method, path.clone(), role));
        }
    }
    ops
}

#[tokio::test]
async fn role_route_matrix_follows_the_document() {
    let stack = ApiStack::start().await;
    let http = Client::new();
    let doc = spec_doc(&stack).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 25, "only {} operations documented", ops.len());
    // A registered agent for the {id} routes.
    let r = http
        .post(stack.url("/api/v1/agents"))
        .bearer_auth(&stack.admin_token)
        .json(&json!({"agent_id": "matrix", "spec": {"agent_type": "t", "command": "sleep", "args": ["1"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tokens = [
        (Role::Viewer, stack.token(Role::Viewer).await),
        (Role::Operator, stack.token(Role::Operator).await),
        (Role::Admin, stack.token(Role::Admin).await),
    ];
    // Destructive operations last, so earlier checks see the agent.
    let mut ops = ops;
    ops.sort_by_key(|(m, p, _)| (*m == Method::DELETE, p.clone()));
    let mut checked = 0;
    for (method, template, least) in &ops {
        let path = template
            .replace("{id}", "matrix")
            .replace("{token_id}", "00000000-0000-0000-0000-000000000000");
        let send = |token: Option<&str>| {
            let mut req = http.request(method.clone(), stack.url(&path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if *method == Method::POST || *method == Method::PUT {
                req = req.json(&json!({}));
            }
            async move {
                req.timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(
            send(None).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert_eq!(
            send(Some("garbage")).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a garbage token"
        );
        for (role, token) in &tokens {
            let status = send(Some(token)).await;
            if role < least {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {role} (needs {least})"
                );
            } else {
                assert!(
                    status != StatusCode::FORBIDDEN
                        && status != StatusCode::UNAUTHORIZED
                        && !status.is_server_error(),
                    "{method} {path} as {role}: {status}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 75);
    // Everything but health, readiness, metrics and the docs is behind auth,
    // and everything behind auth is in the document.
    for open in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(
            http.get(stack.url(open)).send().await.unwrap().status(),
            StatusCode::OK,
            "{open}"
        );
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn jwt_roles_expiry_tampering_and_alg_none() {
    let stack = ApiStack::start().await;
    let http = Client::new();
    let get = |token: String| {
        let req = http.get(stack.url("/api/v1/agents")).bearer_auth(token);
        async move {
            let r = req.send().await.unwrap();
            let s = r.status();
            let v: Value = r.json().await.unwrap();
            (s, v)
        }
    };
    let good = stack.jwt("alice", Role::Viewer, 300);
    assert_eq!(get(good.clone()).await.0, StatusCode::OK);
    // the JWT subject is the actor of commands
    let op = stack.jwt("bob", Role::Operator, 300);
    http.post(stack.url("/api/v1/agents"))
        .bearer_auth(stack.jwt("carol", Role::Admin, 300))
        .json(&json!({"agent_id": "jw", "spec": {"agent_type": "t", "command": "sleep"}}))
        .send()
        .await
        .unwrap();
    let r: Value = http
        .post(stack.url("/api/v1/agents/jw/start"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["agent"]["desired_state"], "running", "{r}");
    let actors: Vec<String> = sqlx::query_scalar(
        "select metadata->>'actor' from events where aggregate_id = 'jw' order by sequence",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(actors, ["carol", "bob"]);
    // a viewer JWT cannot start
    let r = http
        .post(stack.url("/api/v1/agents/jw/stop"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // expired (beyond the leeway)
    let (s, v) = get(stack.jwt("alice", Role::Viewer, -3600)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Expired"),
        "{v}"
    );
    // tampered payload (role raised), signature kept
    let parts: Vec<&str> = good.split('.').collect();
    let admin = stack.jwt("alice", Role::Admin, 300);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        admin.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(get(forged).await.0, StatusCode::UNAUTHORIZED);
    // alg=none
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoidGVzdCJ9.{}.",
        parts[1]
    );
    assert_eq!(get(none).await.0, StatusCode::UNAUTHORIZED);
    // HS256 token signed with a different secret
    let other = opmas_api::auth::jwt::sign_hs256(
        Some("test"),
        b"a-completely-different-secret-32b!",
        &opmas_api::auth::jwt::Claims {
            sub: "mallory".into(),
            role: Role::Admin,
            exp: u64::try_from(chrono::Utc::now().timestamp() + 300).unwrap(),
            nbf: None,
            iss: opmas_testkit::api::ISSUER.into(),
            aud: opmas_testkit::api::AUDIENCE.into(),
        },
    )
    .unwrap();
    assert_eq!(get(other).await.0, StatusCode::UNAUTHORIZED);
    // missing scheme
    let r = http
        .get(stack.url("/api/v1/agents"))
        .header("authorization", good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    stack.cleanup().await;
}

#[tokio::test]
async fn rate_limit_per_token_answers_429_with_retry_after() {
    let stack = ApiStack::start_with(StackOptions {
        rate_per_second: 1,
        rate_burst: 3,
        ..StackOptions::default()
    })
    .await;
    let http = Client::new();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = http
            .get(stack.url("/api/v1/agents"))
            .bearer_auth(&stack.admin_token)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "RATE_LIMITED");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    // another token has its own budget
    let other = stack.token(Role::Viewer).await;
    let r = http
        .get(stack.url("/api/v1/agents"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // health is not rate limited
    for _ in 0..5 {
        assert_eq!(
            http.get(stack.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_in_the_error_format() {
    let stack = ApiStack::start_with(StackOptions {
        body_limit: 2048,
        ..StackOptions::default()
    })
    .await;
    let big = "x".repeat(10_000);
    let r = Client::new()
        .post(stack.url("/api/v1/agents"))
        .bearer_auth(&stack.admin_token)
        .json(&json!({"agent_id": "big", "spec": {"agent_type": "t", "command": "sleep", "args": [big]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "PAYLOAD_TOO_LARGE");
    stack.cleanup().await;
}

#[tokio::test]
async fn database_outage_is_a_quick_503_with_retry_after() {
    // An API whose database is unreachable (nothing listens on the port).
    let pool = opmas_store::db::connect_lazy(
        "postgres://postgres@127.0.0.1:9/none",
        4,
        opmas_api::DB_ACQUIRE_TIMEOUT,
    )
    .unwrap();
    let client = opmas_testkit::nats().await;
    let store = opmas_store::AgentStore::new(pool.clone());
    let config = opmas_api::ApiConfig {
        jwt: opmas_api::auth::jwt::JwtVerifier::new(
            vec![opmas_api::auth::jwt::JwtKey::hs256(
                Some("test"),
                opmas_testkit::api::JWT_SECRET,
            )],
            opmas_testkit::api::ISSUER,
            opmas_testkit::api::AUDIENCE,
        ),
        ..opmas_api::ApiConfig::default()
    };
    let state = opmas_api::AppState::new(pool, store, client, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(opmas_api::serve(listener, state, cancel.clone()));
    let http = Client::new();
    let jwt = opmas_api::auth::jwt::sign_hs256(
        Some("test"),
        opmas_testkit::api::JWT_SECRET,
        &opmas_api::auth::jwt::Claims {
            sub: "ops".into(),
            role: Role::Admin,
            exp: u64::try_from(chrono::Utc::now().timestamp() + 300).unwrap(),
            nbf: None,
            iss: opmas_testkit::api::ISSUER.into(),
            aud: opmas_testkit::api::AUDIENCE.into(),
        },
    )
    .unwrap();
    // Reads, commands and API-token checks all need the database.
    let requests: Vec<(Method, &str, Option<Value>, String)> = vec![
        (Method::GET, "/api/v1/agents", None, jwt.clone()),
        (Method::GET, "/api/v1/agents/a1/status", None, jwt.clone()),
        (Method::POST, "/api/v1/agents/a1/start", None, jwt.clone()),
        (
            Method::POST,
            "/api/v1/agents",
            Some(json!({"agent_id": "a1", "spec": {"agent_type": "t", "command": "sleep"}})),
            jwt.clone(),
        ),
        (
            Method::GET,
            "/api/v1/agents",
            None,
            "opm_0123456789".to_owned(),
        ),
    ];
    for (method, path, body, token) in requests {
        let started = Instant::now();
        let mut req = http
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        // The client-side timeout only turns a hang into a failure.
        let r = req.timeout(Duration::from_secs(30)).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(r.headers()["retry-after"], "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "UNAVAILABLE");
        assert!(
            !v.to_string().contains("127.0.0.1:9"),
            "internals leaked: {v}"
        );
        eprintln!("{method} {path}: 503 after {took:?}");
    }
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["nats"], "ok");
    assert_ne!(v["checks"]["postgres"], "ok");
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    cancel.cancel();
}

/// Verified API tokens are cached for `tokens::CACHE_TTL`: a revocation
/// made elsewhere (another API process, straight in the database) takes
/// effect once that time has passed, and one through this API at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_api_tokens_honour_revocations() {
    let stack = ApiStack::start().await;
    let http = Client::new();
    let get = |token: String| {
        let http = http.clone();
        let url = stack.url("/api/v1/agents");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let elsewhere = stack.token(Role::Viewer).await;
    // The cache entry is made after this instant, so it lasts at least
    // until `first + CACHE_TTL`.
    let first = Instant::now();
    assert_eq!(get(elsewhere.clone()).await, StatusCode::OK);
    sqlx::query("update api_tokens set revoked_at = now() where name = 'test-viewer'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let refused = opmas_testkit::eventually(Duration::from_secs(15), || {
        let token = elsewhere.clone();
        async move { get(token).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    assert!(refused, "a token revoked in the database stays accepted");
    assert!(
        first.elapsed() >= opmas_api::auth::tokens::CACHE_TTL,
        "refused before the cached verification expired: no cache"
    );

    // Through this API: refused on the very next request.
    let here = stack.token(Role::Operator).await;
    assert_eq!(get(here.clone()).await, StatusCode::OK);
    let list: Value = http
        .get(stack.url("/api/v1/tokens"))
        .bearer_auth(&stack.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test-operator")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = http
        .delete(stack.url(&format!("/api/v1/tokens/{id}")))
        .bearer_auth(&stack.admin_token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(here).await, StatusCode::UNAUTHORIZED);
    stack.cleanup().await;
}
