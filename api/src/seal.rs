//! Secrets sealed before a request becomes a command (ADR 0004): what a
//! client sends is opened (a value it read back, or copied, must open with
//! this server's key), checked in clear, then its secrets are sealed. The
//! aggregate, the events and the stream only ever hold the sealed text.

use opmas_domain::secret::{self, SealError};
use opmas_domain::{AgentError, AgentSpec};
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// 422 at `field` (prefixed with `prefix`, e.g. `spec.`), saying what to do.
fn refused(prefix: &str, err: &SealError) -> ApiError {
    ApiError::validation(&format!("{prefix}{}", err.field()), err.reason())
}

/// `spec` with its secrets sealed, its config checked in clear against its
/// schema first (the aggregate checks the rest, and cannot check a sealed
/// value); `prefix` names where it is in the request (`spec.`).
pub(crate) fn spec(state: &AppState, spec: &AgentSpec, prefix: &str) -> ApiResult<AgentSpec> {
    let key = state.config().secret_key.as_deref();
    let mut spec = secret::open_spec(key, spec).map_err(|e| refused(prefix, &e))?;
    if let Some(schema) = spec.config_schema.as_ref().filter(|s| s.is_object())
        && spec.config.is_object()
    {
        opmas_domain::spec::check_config(schema, &spec.config)
            .map_err(|e| ApiError::from(AgentError::InvalidSpec(e)))?;
    }
    secret::seal_spec(key, &mut spec).map_err(|e| refused(prefix, &e))?;
    Ok(spec)
}

/// `config` checked in clear against `schema` and with the fields it marks
/// `x-secret` sealed.
pub(crate) fn config(state: &AppState, schema: Option<&Value>, config: &Value) -> ApiResult<Value> {
    let key = state.config().secret_key.as_deref();
    let mut config = secret::open_config(key, config).map_err(|e| refused("", &e))?;
    if let Some(schema) = schema
        && config.is_object()
    {
        opmas_domain::spec::check_config(schema, &config)
            .map_err(|e| ApiError::validation(&e.field, e.message))?;
        secret::seal_config(key, schema, &mut config).map_err(|e| refused("", &e))?;
    }
    Ok(config)
}
