//! Who is calling: bearer tokens (JWT or API token) → [`Principal`] with a
//! [`Role`]. Every route but `/healthz`, `/readyz` and `/metrics` goes
//! through [`authenticate`]; handlers then call [`Principal::require`].
//!
//! Roles are ordered: `viewer` (read) < `operator` (lifecycle and config) <
//! `admin` (register, update, deregister, tokens).

pub mod jwt;
pub mod tokens;

use std::fmt;
use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ApiError;

/// What a caller may do; each role includes the ones below it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: use viewer, operator or admin"
            )),
        }
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Jwt,
    /// An API token, by id.
    ApiToken(uuid::Uuid),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub` of a JWT, or `token:<name>` for an API token.
    pub subject: String,
    pub role: Role,
    pub credential: Credential,
}

impl Principal {
    /// `FORBIDDEN` unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {role} role; your token has {}",
                self.role
            ))
            .with_details(serde_json::json!({ "required": role, "actual": self.role })))
        }
    }

    /// The actor written into event metadata.
    pub fn actor(&self) -> String {
        self.subject.clone()
    }

    /// Key of the per-caller rate limit.
    pub fn rate_key(&self) -> String {
        match &self.credential {
            Credential::Jwt => format!("jwt:{}", self.subject),
            Credential::ApiToken(id) => format!("token:{id}"),
        }
    }
}

/// Reads the bearer token (header, or `access_token` query parameter for
/// WebSocket/SSE clients that cannot set headers), checks it, applies the
/// rate limit, and stores the [`Principal`] in the request extensions.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&request)?;
    let principal = if tokens::looks_like_api_token(&token) {
        tokens::verify(&state, &token).await?
    } else {
        state.jwt().verify(&token)?
    };
    state.check_rate(&principal)?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

fn bearer(request: &Request) -> Result<String, ApiError> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("use `Authorization: Bearer <token>`"))?;
        return Ok(token.trim().to_owned());
    }
    let from_query = request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_owned())
    });
    from_query.ok_or_else(|| {
        ApiError::unauthorized(
            "missing bearer token: send `Authorization: Bearer <token>` \
             (create one with `opmas token create`)",
        )
    })
}

/// Role levels for [`Authorized`] (const generics cannot take enums yet).
pub const VIEWER: u8 = 0;
pub const OPERATOR: u8 = 1;
pub const ADMIN: u8 = 2;

/// The authenticated caller, checked to have at least role `ROLE`
/// ([`VIEWER`], [`OPERATOR`] or [`ADMIN`]). Put it before the body and
/// query extractors: a caller without the role gets `FORBIDDEN` before
/// anything about the request is validated.
#[derive(Debug, Clone)]
pub struct Authorized<const ROLE: u8>(pub Principal);

impl<const ROLE: u8, S: Send + Sync> axum::extract::FromRequestParts<S> for Authorized<ROLE> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let role = match ROLE {
            VIEWER => Role::Viewer,
            OPERATOR => Role::Operator,
            _ => Role::Admin,
        };
        principal.require(role)?;
        Ok(Authorized(principal))
    }
}

/// Extractor for the authenticated caller.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))
    }
}
