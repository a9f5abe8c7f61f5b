//! Who the caller is: the subject and role of the bearer token, so a
//! client (the dashboard, a script) can tell what it may do before trying.

use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Authorized, Credential, Role, VIEWER};
use crate::error::{ApiResult, ErrorBody};

/// The authenticated caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Whoami {
    /// `sub` of a JWT, or `token:<name>` for an API token; the actor
    /// recorded in the audit trail for this caller's commands.
    pub subject: String,
    /// `viewer`, `operator` or `admin`.
    pub role: Role,
    /// `jwt` or `api_token`.
    pub credential: String,
}

/// The caller's subject and role.
#[utoipa::path(get, path = "/whoami", tag = "auth",
    security(("bearer" = ["viewer"])),
    responses((status = 200, body = Whoami), (status = 401, body = ErrorBody)))]
pub async fn whoami(Authorized(principal): Authorized<{ VIEWER }>) -> ApiResult<Response> {
    let credential = match principal.credential {
        Credential::Jwt => "jwt",
        Credential::ApiToken(_) => "api_token",
    };
    Ok(super::ok(Whoami {
        subject: principal.subject,
        role: principal.role,
        credential: credential.to_owned(),
    }))
}
