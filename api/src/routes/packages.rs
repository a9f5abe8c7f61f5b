//! Packages: trigger a discovery scan of the package roots and report what
//! it registered, updated, refused and found removed.

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
