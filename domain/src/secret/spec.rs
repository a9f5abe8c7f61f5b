//! Sealing and opening the secrets of an [`AgentSpec`] and of a config.
//!
//! Sealing is driven by what is declared secret (`secret_env`, the schema's
//! `x-secret` properties) and is idempotent. Opening is driven by what is
//! sealed, wherever it is: a field that stopped being secret in a newer
//! schema still opens, and a value that was never sealed (events written
//! before sealing existed) passes through unchanged.

use serde_json::Value;

use super::{SealError, SecretKey, is_sealed};
use crate::spec::{AgentSpec, secret_pointers};

/// One JSON pointer token (`/` and `~` escaped).
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn env_path(name: &str) -> String {
    format!("env/{}", token(name))
}

fn env_field(name: &str) -> String {
    format!("env.{name}")
}

/// `config/db/password` for the pointer `/db/password`.
fn config_path(pointer: &str) -> String {
    format!("config{pointer}")
}

/// `config.db.password` for the pointer `/db/password`.
fn config_field(pointer: &str) -> String {
    let mut field = "config".to_owned();
    for part in pointer.split('/').skip(1) {
        field.push('.');
        field.push_str(&part.replace("~1", "/").replace("~0", "~"));
    }
    field
}

/// Seals the values of `spec.secret_env` keys and the config fields its
/// schema marks `x-secret`. Without a key, a spec with a secret is refused
/// ([`SealError::NoKeyToSeal`]); one without secrets needs no key.
pub fn seal_spec(key: Option<&SecretKey>, spec: &mut AgentSpec) -> Result<(), SealError> {
    for name in &spec.secret_env {
        let Some(value) = spec.env.get_mut(name) else {
            continue;
        };
        let key = key.ok_or_else(|| SealError::NoKeyToSeal {
            field: env_field(name),
        })?;
        let sealed = key.seal(&env_path(name), &Value::String(std::mem::take(value)));
        *value = sealed.as_str().unwrap_or_default().to_owned();
    }
    if let Some(schema) = &spec.config_schema {
        seal_config(key, schema, &mut spec.config)?;
    }
    Ok(())
}

/// Seals the fields of `config` that `schema` marks `x-secret` (a `null`
/// is left as it is: there is nothing to hide).
pub fn seal_config(
    key: Option<&SecretKey>,
    schema: &Value,
    config: &mut Value,
) -> Result<(), SealError> {
    for pointer in secret_pointers(schema) {
        let Some(slot) = config.pointer_mut(&pointer).filter(|v| !v.is_null()) else {
            continue;
        };
        let key = key.ok_or_else(|| SealError::NoKeyToSeal {
            field: config_field(&pointer),
        })?;
        *slot = key.seal(&config_path(&pointer), slot);
    }
    Ok(())
}

/// `spec` with every sealed env value and config field opened.
pub fn open_spec(key: Option<&SecretKey>, spec: &AgentSpec) -> Result<AgentSpec, SealError> {
    let mut clear = spec.clone();
    for (name, value) in &mut clear.env {
        if !is_sealed(value) {
            continue;
        }
        let field = env_field(name);
        let key = key.ok_or_else(|| SealError::NoKeyToOpen {
            field: field.clone(),
        })?;
        *value = match key.open(&env_path(name), &field, &Value::String(value.clone()))? {
            Value::String(text) => text,
            other => other.to_string(),
        };
    }
    clear.config = open_config(key, &spec.config)?;
    Ok(clear)
}

/// `config` with every sealed string in it opened.
pub fn open_config(key: Option<&SecretKey>, config: &Value) -> Result<Value, SealError> {
    let mut clear = config.clone();
    open_at(key, &mut clear, &mut String::new())?;
    Ok(clear)
}

fn open_at(
    key: Option<&SecretKey>,
    value: &mut Value,
    pointer: &mut String,
) -> Result<(), SealError> {
    let len = pointer.len();
    match value {
        Value::String(text) if is_sealed(text) => {
            let field = config_field(pointer);
            let key = key.ok_or_else(|| SealError::NoKeyToOpen {
                field: field.clone(),
            })?;
            *value = key.open(&config_path(pointer), &field, value)?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                pointer.push_str(&format!("/{i}"));
                open_at(key, item, pointer)?;
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (name, item) in map.iter_mut() {
                pointer.push('/');
                pointer.push_str(&token(name));
                open_at(key, item, pointer)?;
                pointer.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}
