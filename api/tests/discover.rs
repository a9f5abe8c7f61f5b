//! `POST /api/v1/agents/discover` against a real API, Postgres and
//! nats-server: it scans the package roots and reports; without roots it
//! answers 409; only admins may call it; the document lists every answer.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use opmas_api::Role;
use opmas_testkit::api::{ApiStack, StackOptions};
use opmas_testkit::eventually;
use reqwest::{Client, StatusCode};
use serde_json::Value;

async fn discover(stack: &ApiStack, token: &str) -> (StatusCode, Value) {
    let resp = Client::new()
        .post(stack.url("/api/v1/agents/discover"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

fn write_package(root: &std::path::Path, name: &str, manifest: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("agent.toml"), manifest).unwrap();
    std::fs::write(dir.join("bin/run"), "#!/bin/sh\nsleep 1000\n").unwrap();
    std::fs::set_permissions(dir.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

const SCHEMA: &str = "[config]\nschema = { type = \"object\", properties = { port = { type = \"integer\", default = 80 }, password = { type = \"string\", \"x-secret\" = true } } }\n";

const WEB: &str = "name = \"web\"\ntype = \"http\"\nversion = \"1.0.0\"\ncommand = \"./bin/run\"\n";

#[tokio::test]
async fn discover_scans_the_roots_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    write_package(tmp.path(), "web", &format!("{WEB}{SCHEMA}"));
    std::fs::create_dir_all(tmp.path().join("web/config")).unwrap();
    std::fs::write(
        tmp.path().join("web/config/base.toml"),
        "password = \"hunter2\"\n",
    )
    .unwrap();
    write_package(
        tmp.path(),
        "broken",
        &WEB.replace("\"web\"", "\"broken\"").replace("1.0.0", ""),
    );
    let stack = ApiStack::start_with(StackOptions {
        package_roots: vec![tmp.path().to_path_buf()],
        ..StackOptions::default()
    })
    .await;

    for role in [Role::Viewer, Role::Operator] {
        let (status, body) = discover(&stack, &stack.token(role).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role}: {body}");
    }
    let (status, report) = discover(&stack, &stack.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["registered"][0]["agent_id"], "web");
    assert_eq!(report["registered"][0]["version"], "1.0.0");
    assert_eq!(report["registered"].as_array().unwrap().len(), 1);
    let invalid = &report["invalid"][0];
    assert_eq!(invalid["field"], "version");
    assert_eq!(invalid["line"], 3);
    assert_eq!(invalid["message"], "must not be empty");
    assert!(
        invalid["file"]
            .as_str()
            .unwrap()
            .ends_with("broken/agent.toml")
    );

    // The agent is there for the rest of the API, with its package version.
    let http = Client::new();
    let seen = eventually(Duration::from_secs(10), || async {
        let r = http
            .get(stack.url("/api/v1/agents/web"))
            .bearer_auth(&stack.admin_token)
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            return false;
        }
        let spec = &r.json::<Value>().await.unwrap()["spec"];
        spec["package_version"] == "1.0.0"
            && spec["config"] == serde_json::json!({"port": 80, "password": "***"})
    })
    .await;
    assert!(
        seen,
        "the discovered agent never showed in GET /agents/web (secret redacted)"
    );

    // A config update the package's schema refuses names the path.
    let r = http
        .put(stack.url("/api/v1/agents/web/config"))
        .bearer_auth(&stack.admin_token)
        .header("If-Match", "\"1\"")
        .json(&serde_json::json!({"config": {"port": "eighty"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["field"], "config.port", "{body}");
    assert_eq!(
        body["error"]["details"]["reason"],
        "\"eighty\" is not of type \"integer\""
    );

    let (status, again) = discover(&stack, &stack.admin_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["unchanged"][0]["agent_id"], "web");
    assert!(again["registered"].as_array().unwrap().is_empty());
    stack.cleanup().await;
}

#[tokio::test]
async fn without_roots_discover_is_a_conflict_and_the_document_says_so() {
    let stack = ApiStack::start().await;
    let (status, body) = discover(&stack, &stack.admin_token).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "DISCOVERY_NOT_CONFIGURED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--package-root")
    );

    let doc: Value = Client::new()
        .get(stack.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/api/v1/agents/discover"]["post"];
    assert_eq!(op["security"][0]["bearer"][0], "admin");
    for code in ["200", "401", "403", "409", "429", "503"] {
        assert!(
            op["responses"][code].is_object(),
            "{code} undocumented: {op}"
        );
    }
    assert!(doc["components"]["schemas"]["ScanReport"].is_object());
    assert!(doc["components"]["schemas"]["InvalidPackage"].is_object());
    stack.cleanup().await;
}

/// With the event store unreachable a scan is a 503 with `Retry-After`.
#[tokio::test]
async fn discover_without_a_database_is_unavailable() {
    let pool = opmas_store::db::connect_lazy(
        "postgres://postgres@127.0.0.1:9/none",
        4,
        opmas_api::DB_ACQUIRE_TIMEOUT,
    )
    .unwrap();
    let store = opmas_store::AgentStore::new(pool.clone());
    let tmp = tempfile::tempdir().unwrap();
    write_package(tmp.path(), "web", WEB);
    let discovery = opmas_packages::Discovery::new(
        store.clone(),
        opmas_packages::discovery::Config {
            roots: vec![tmp.path().to_path_buf()],
            ..Default::default()
        },
    );
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
    let state = opmas_api::AppState::new(pool, store, opmas_testkit::nats().await, config)
        .with_discovery(discovery);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(opmas_api::serve(listener, state, cancel.clone()));
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
    let resp = Client::new()
        .post(format!("{base}/api/v1/agents/discover"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    cancel.cancel();
}

/// Registering or updating through the API refuses a `requires` cycle with
/// the registered agents, naming it.
#[tokio::test]
async fn api_registration_refuses_a_requires_cycle() {
    let stack = ApiStack::start().await;
    let http = Client::new();
    let register = |id: &'static str, requires: &'static [&'static str]| {
        let body = serde_json::json!({"agent_id": id, "spec": {"agent_type": "t", "command": "sleep", "requires": requires}});
        let req = http
            .post(stack.url("/api/v1/agents"))
            .bearer_auth(&stack.admin_token)
            .json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(register("a", &["b"]).await.0, StatusCode::CREATED);
    assert_eq!(register("b", &["c"]).await.0, StatusCode::CREATED);
    // The read model must show a's and b's requires before the check can see them.
    let projected = eventually(Duration::from_secs(10), || async {
        let mut ok = true;
        for id in ["a", "b"] {
            let r = http
                // the status endpoint reads the read model only
                .get(stack.url(&format!("/api/v1/agents/{id}/status")))
                .bearer_auth(&stack.admin_token)
                .send()
                .await
                .unwrap();
            ok &= r.status() == StatusCode::OK;
        }
        ok
    })
    .await;
    assert!(projected);
    let (status, body) = register("c", &["a"]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"]["field"], "spec.requires");
    assert_eq!(
        body["error"]["details"]["reason"],
        "`requires` forms a cycle: a -> b -> c -> a"
    );
    assert_eq!(
        register("c", &[]).await.0,
        StatusCode::CREATED,
        "c without the back edge"
    );
    let resp = http
        .put(stack.url("/api/v1/agents/c"))
        .bearer_auth(&stack.admin_token)
        .json(&serde_json::json!({"spec": {"agent_type": "t", "command": "sleep", "requires": ["a"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    stack.cleanup().await;
}
