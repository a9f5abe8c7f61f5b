//! API tokens for automation: `opm_` + 32 random bytes (hex). Only the
//! SHA-256 is stored; the token is shown once at creation. Tokens can
//! expire and be revoked; a revoked token stops working at once.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Credential, Principal, Role};
use crate::AppState;
use crate::error::ApiError;

const PREFIX: &str = "opm_";

pub fn looks_like_api_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    /// First characters of the token, to recognise it.
    pub prefix: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token just created: the only time `token` is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token. Store it now: it cannot be shown again.
    pub token: String,
}

/// Creates a token (used by the API and by `opmas dev` / `opmas token create --local`).
pub async fn create(
    pool: &PgPool,
    name: &str,
    role: Role,
    created_by: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<CreatedToken, sqlx::Error> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{PREFIX}{}", hex::encode(secret));
    let info: TokenInfo = sqlx::query_as(
        "insert into api_tokens (id, name, role, hash, prefix, created_by, expires_at) \
         values ($1, $2, $3, $4, $5, $6, $7) \
         returning id, name, role, prefix, created_by, created_at, expires_at, revoked_at, last_used_at",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(role.as_str())
    .bind(hash(&token))
    .bind(&token[..PREFIX.len() + 8])
    .bind(created_by)
    .bind(expires_at)
    .fetch_one(pool)
    .await?;
    Ok(CreatedToken { info, token })
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, role, prefix, created_by, created_at, expires_at, revoked_at, last_used_at \
         from api_tokens order by created_at, id",
    )
    .fetch_all(pool)
    .await
}

/// Revokes a token; `None` if there is no such token.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<Option<TokenInfo>, sqlx::Error> {
    sqlx::query_as(
        "update api_tokens set revoked_at = coalesce(revoked_at, now()) where id = $1 \
         returning id, name, role, prefix, created_by, created_at, expires_at, revoked_at, last_used_at",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

type TokenCheck = (
    Uuid,
    String,
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Checks a presented token. `last_used_at` is updated at most once a minute.
pub async fn verify(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let row: Option<TokenCheck> =
        sqlx::query_as(
            "update api_tokens set last_used_at = now() \
             where hash = $1 and (last_used_at is null or last_used_at < now() - interval '1 minute') \
             returning id, name, role, expires_at, revoked_at",
        )
        .bind(hash(token))
        .fetch_optional(state.pool())
        .await?;
    let row = match row {
        Some(row) => Some(row),
        None => {
            sqlx::query_as(
                "select id, name, role, expires_at, revoked_at from api_tokens where hash = $1",
            )
            .bind(hash(token))
            .fetch_optional(state.pool())
            .await?
        }
    };
    let (id, name, role, expires_at, revoked_at) =
        row.ok_or_else(|| ApiError::unauthorized("unknown API token"))?;
    if revoked_at.is_some() {
        return Err(ApiError::unauthorized(format!(
            "API token `{name}` has been revoked"
        )));
    }
    if expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(ApiError::unauthorized(format!(
            "API token `{name}` has expired"
        )));
    }
    let role = role.parse().map_err(ApiError::internal)?;
    Ok(Principal {
        subject: format!("token:{name}"),
        role,
        credential: Credential::ApiToken(id),
    })
}
