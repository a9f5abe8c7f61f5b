//! API tokens for automation: `opm_` + 32 random bytes (hex). Only the
//! SHA-256 is stored; the token is shown once at creation. Tokens can
//! expire and be revoked; a revoked token stops working at once.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::HashMap;
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

/// How long a verified API token is trusted without asking the database
/// again. A revocation through this API process takes effect at once; one
/// through another API process within this time.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Entries kept before the cache is emptied (unknown tokens are never cached).
const CACHE_MAX: usize = 10_000;

/// Recently verified API tokens by hash (see [`CACHE_TTL`]).
#[derive(Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<HashMap<String, (std::time::Instant, TokenCheck)>>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> Option<TokenCheck> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, row)| row.clone())
    }

    fn put(&self, hash: String, row: TokenCheck) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (std::time::Instant::now(), row));
    }

    /// Forgets token `id` (after a revocation).
    pub fn forget(&self, id: Uuid) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (_, row)| row.0 != id);
    }
}

/// Checks a presented token. `last_used_at` is updated at most once a
/// minute; a token verified in the last [`CACHE_TTL`] is not looked up again.
pub async fn verify(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let hashed = hash(token);
    let row = match state.token_cache().get(&hashed) {
        Some(row) => row,
        None => {
            let row = lookup(state, &hashed).await?;
            state.token_cache().put(hashed, row.clone());
            row
        }
    };
    check(row)
}

async fn lookup(state: &AppState, hashed: &str) -> Result<TokenCheck, ApiError> {
    let row: Option<TokenCheck> =
        sqlx::query_as(
            "update api_tokens set last_used_at = now() \
             where hash = $1 and (last_used_at is null or last_used_at < now() - interval '1 minute') \
             returning id, name, role, expires_at, revoked_at",
        )
        .bind(hashed)
        .fetch_optional(state.pool())
        .await?;
    let row = match row {
        Some(row) => Some(row),
        None => {
            sqlx::query_as(
                "select id, name, role, expires_at, revoked_at from api_tokens where hash = $1",
            )
            .bind(hashed)
            .fetch_optional(state.pool())
            .await?
        }
    };
    row.ok_or_else(|| ApiError::unauthorized("unknown API token"))
}

fn check(row: TokenCheck) -> Result<Principal, ApiError> {
    let (id, name, role, expires_at, revoked_at) = row;
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
