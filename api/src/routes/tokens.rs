//! API tokens (admin only): create (the token is shown once), list, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Body;
use crate::AppState;
use crate::auth::tokens::{self, CreatedToken, TokenInfo};
use crate::auth::{ADMIN, Authorized, Role};
use crate::error::{ApiError, ApiResult, ErrorBody};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A name to recognise the token by (1-100 characters).
    pub name: String,
    pub role: Role,
    /// Lifetime in seconds (default: no expiry).
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// Create an API token. The token is in the answer and never shown again.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = CreateToken,
    security(("bearer" = ["admin"])),
    responses((status = 201, body = CreatedToken), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ ADMIN }>,
    Body(req): Body<CreateToken>,
) -> ApiResult<Response> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation("name", "use 1 to 100 characters"));
    }
    let expires_at = match req.expires_in_seconds {
        None => None,
        Some(0) => {
            return Err(ApiError::validation(
                "expires_in_seconds",
                "must be at least 1",
            ));
        }
        Some(s) => {
            let secs = i64::try_from(s)
                .ok()
                .filter(|s| *s <= 10 * 365 * 24 * 3600)
                .ok_or_else(|| {
                    ApiError::validation("expires_in_seconds", "at most ten years (315360000)")
                })?;
            Some(Utc::now() + Duration::seconds(secs))
        }
    };
    let created =
        tokens::create(state.pool(), name, req.role, &principal.actor(), expires_at).await?;
    tracing::info!(token = %created.info.id, name, role = %req.role, by = %principal.actor(), "API token created");
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// List API tokens (never their secrets).
#[utoipa::path(get, path = "/tokens", tag = "tokens",
    security(("bearer" = ["admin"])),
    responses((status = 200, body = Vec<TokenInfo>)))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(_principal): Authorized<{ ADMIN }>,
) -> ApiResult<Response> {
    Ok(super::ok(tokens::list(state.pool()).await?))
}

/// Revoke an API token: it stops working at once.
#[utoipa::path(delete, path = "/tokens/{token_id}", tag = "tokens",
    params(("token_id" = Uuid, Path, description = "Token id")),
    security(("bearer" = ["admin"])),
    responses((status = 200, body = TokenInfo), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Authorized(principal): Authorized<{ ADMIN }>,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = path.map_err(|_| ApiError::validation("token_id", "not a token id (a UUID)"))?;
    let revoked = tokens::revoke(state.pool(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("TOKEN_NOT_FOUND", format!("no API token {id}")))?;
    state.token_cache().forget(id);
    tracing::info!(token = %id, by = %principal.actor(), "API token revoked");
    Ok(super::ok(revoked))
}
