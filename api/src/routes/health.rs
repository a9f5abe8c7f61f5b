//! Unauthenticated operator endpoints: `/healthz` (the process answers),
//! `/readyz` (Postgres and NATS reachable, migrations applied) and
//! `/metrics` (Prometheus text).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = async {
        let applied: i64 =
            sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
                .fetch_one(state.pool())
                .await
                .map_err(|e| {
                    if crate::error::db_unreachable(&e) {
                        "unreachable".to_owned()
                    } else {
                        "migrations table missing: run `opmas migrate`".to_owned()
                    }
                })?;
        let known = opmas_store::db::MIGRATOR.iter().count() as i64;
        if applied < known {
            return Err(format!(
                "{applied} of {known} migrations applied: run `opmas migrate`"
            ));
        }
        Ok(())
    };
    let db = tokio::time::timeout(crate::PROBE_TIMEOUT, db)
        .await
        .unwrap_or_else(|_| Err("unreachable".to_owned()));
    let nats = match state.nats().connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("{other:?}").to_lowercase()),
    };
    let ok = db.is_ok() && nats.is_ok();
    let status = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": { "postgres": status(&db), "nats": status(&nats) },
    });
    if ok {
        axum::Json(body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(body),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    match crate::metrics::render(&state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
