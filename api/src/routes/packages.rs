//! Packages: trigger a discovery scan of the package roots and report what
//! it registered, updated, refused and found removed; the `requires` cycle
//! check of agents registered or updated through the API.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use opmas_packages::ScanReport;
use serde_json::json;

use crate::AppState;
use crate::auth::{ADMIN, Authorized};
use crate::error::{ApiError, ApiResult, ErrorBody};

/// Scan the package roots now and report what changed. Invalid packages
/// are in `invalid` (with file, line, field and reason) and register
/// nothing; removed packages are reported, not deregistered.
#[utoipa::path(post, path = "/agents/discover", tag = "agents",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, body = ScanReport, description = "The scan's report"),
        (status = 409, body = ErrorBody, description = "No package roots are configured (DISCOVERY_NOT_CONFIGURED)"),
        (status = 503, body = ErrorBody, description = "The event store is unreachable: retry after `Retry-After` seconds"),
    ))]
pub async fn discover(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ ADMIN }>,
) -> ApiResult<Response> {
    let Some(discovery) = state.discovery() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "DISCOVERY_NOT_CONFIGURED",
            "no package roots are configured on this server: start it with --package-root DIR \
             (or OPMAS_PACKAGE_ROOTS)",
        )
        .with_details(json!({ "roots": [] })));
    };
    tracing::info!(actor = %principal.actor(), "package scan requested");
    match discovery.scan().await {
        Ok(report) => Ok(super::ok(report)),
        // The only way a scan fails: the event store is unreachable.
        Err(e @ opmas_packages::Error::Unavailable(_)) => {
            tracing::warn!(error = %e, "package scan failed");
            Err(ApiError::unavailable("the event store"))
        }
    }
}

/// Refuses a spec whose `requires` would close a cycle with the agents
/// registered so far (read from the `agent_status` read model), naming it:
/// `spec.requires`: `requires` forms a cycle: a -> b -> a.
pub(crate) async fn check_requires(
    state: &AppState,
    agent_id: &str,
    requires: &BTreeSet<String>,
) -> ApiResult<()> {
    if requires.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, Option<serde_json::Value>)> = sqlx::query_as(
        "select agent_id, state->'spec'->'requires' from agent_status \
         where registered and not deregistered and agent_id <> $1",
    )
    .bind(agent_id)
    .fetch_all(state.pool())
    .await?;
    let mut graph: BTreeMap<String, BTreeSet<String>> = rows
        .into_iter()
        .map(|(id, r)| {
            (
                id,
                r.and_then(|r| serde_json::from_value(r).ok())
                    .unwrap_or_default(),
            )
        })
        .collect();
    graph.insert(agent_id.to_owned(), requires.clone());
    opmas_packages::start_order(&graph)
        .map(|_| ())
        .map_err(|cycle| ApiError::validation("spec.requires", cycle.to_string()))
}
