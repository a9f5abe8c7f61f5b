//! Checking a config against its JSON Schema in words that never show a
//! secret: [`config_violation`] (the edges, in clear) and [`check_config`]
//! (the aggregate, which also accepts sealed values).
//!
//! A violation at a field marked `"x-secret": true`, or inside one, says
//! what is wrong without the value (`the value is shorter than 8
//! characters (value hidden: secret)`) and names only the fields the schema
//! declares: keys only the config knows (an `additionalProperties` map) are
//! part of the secret. A violation of an object that holds a secret value
//! does not show that object either. Every other value is shown: it helps.
//! The text comes from the validator's own masked rendering
//! ([`jsonschema::ValidationError::masked_with`]), not from editing the
//! rendered message.

use jsonschema::ValidationError;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::{SpecError, secret_pointers};

/// What a hidden value is called in a message.
const PLACEHOLDER: &str = "the value";

/// The first place a config breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigViolation {
    /// Keys (and array indices) of the failing value in the config, to find
    /// where it was set. Not for display: it may run into a secret.
    pub path: Vec<String>,
    /// Dotted name to show (`config.db.port`); inside a secret, it stops
    /// after the last key the schema declares.
    pub field: String,
    /// What is wrong, without the value when it is or holds a secret.
    pub message: String,
}

/// The first violation of `schema` by `config`; `Err` says why the schema
/// does not compile.
pub fn config_violation(schema: &Value, config: &Value) -> Result<Option<ConfigViolation>, String> {
    first_violation(schema, schema, config, false)
}

/// Checks `config` against the JSON Schema `schema`: the first violation,
/// named by its path (`config.db.port`), or a schema that does not compile
/// (`config_schema`). Secrets are named, never shown (see the module).
///
/// A config holding sealed values (see [`crate::secret`]) is checked
/// against a copy of `schema` in which each `x-secret` property also
/// accepts a sealed string: the aggregate cannot open it, and the edge that
/// sealed it checked the clear value against the full schema.
pub fn check_config(schema: &Value, config: &Value) -> Result<(), SpecError> {
    let relaxed = crate::secret::contains_sealed(config).then(|| accepting_sealed(schema));
    let checked = relaxed.as_ref().unwrap_or(schema);
    match first_violation(checked, schema, config, relaxed.is_some()) {
        Ok(None) => Ok(()),
        Ok(Some(violation)) => Err(SpecError::new(violation.field, violation.message)),
        Err(e) => Err(SpecError::new(
            "config_schema",
            format!("is not a valid JSON Schema: {e}"),
        )),
    }
}

/// The first violation of `checked` (`schema`, or its copy accepting
/// sealed values when `relaxed`) by `config`, told as `schema` (whose
/// `x-secret` marks say what to hide) allows.
fn first_violation(
    checked: &Value,
    schema: &Value,
    config: &Value,
    relaxed: bool,
) -> Result<Option<ConfigViolation>, String> {
    let validator = jsonschema::validator_for(checked).map_err(|e| e.to_string())?;
    let Some(error) = validator.iter_errors(config).next() else {
        return Ok(None);
    };
    let path: Vec<String> = error
        .instance_path()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let secrecy = secrecy(schema, config, &path);
    let shown = match secrecy {
        Secrecy::Is { shown } => &path[..shown],
        Secrecy::Holds | Secrecy::None => &path[..],
    };
    let field = std::iter::once("config")
        .chain(shown.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".");
    let message = match original_violation(&error, &path).filter(|_| relaxed) {
        Some(original) => describe(original, secrecy),
        None => describe(&error, secrecy),
    };
    Ok(Some(ConfigViolation {
        path,
        field,
        message,
    }))
}

/// A clear secret refused by the `anyOf` [`accepting_sealed`] put at its
/// property: the violation of the property as written (its first branch).
fn original_violation<'e>(
    error: &'e ValidationError<'_>,
    path: &[String],
) -> Option<&'e ValidationError<'static>> {
    let ValidationErrorKind::AnyOf { context } = error.kind() else {
        return None;
    };
    let injected: String = path
        .iter()
        .map(|key| format!("/properties/{}", token(key)))
        .chain(["/anyOf".to_owned()])
        .collect();
    if error.schema_path().as_str() != injected {
        return None;
    }
    context.first()?.first()
}

/// One JSON pointer token (`/` and `~` escaped).
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// How secret the value at a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrecy {
    /// Neither secret nor holding one.
    None,
    /// An object or array that holds a secret value.
    Holds,
    /// A secret, or inside one; `shown`: how many keys of the path may be
    /// shown (up to the last one the schema declares).
    Is { shown: usize },
}

fn is_secret(property: &Value) -> bool {
    property.get("x-secret").and_then(Value::as_bool) == Some(true)
}

/// `schema`'s property `key`, when it declares one.
fn property<'s>(schema: &'s Value, key: &str) -> Option<&'s Value> {
    schema.get("properties")?.get(key)
}

/// Walks `schema`'s `properties` along `path` (where the `x-secret` marks
/// are, as [`secret_pointers`] finds them).
fn secrecy(schema: &Value, config: &Value, path: &[String]) -> Secrecy {
    let mut node = schema;
    for (depth, key) in path.iter().enumerate() {
        let Some(next) = property(node, key) else {
            return Secrecy::None;
        };
        node = next;
        if is_secret(node) {
            let mut shown = depth + 1;
            for key in &path[depth + 1..] {
                let Some(next) = property(node, key) else {
                    break;
                };
                node = next;
                shown += 1;
            }
            return Secrecy::Is { shown };
        }
    }
    let here: String = path.iter().map(|key| format!("/{}", token(key))).collect();
    let holds = secret_pointers(node)
        .iter()
        .any(|pointer| config.pointer(&format!("{here}{pointer}")).is_some());
    if holds { Secrecy::Holds } else { Secrecy::None }
}

/// The validator's message, with the value hidden as `secrecy` requires
/// (and a word saying so when that changed anything).
fn describe(error: &ValidationError<'_>, secrecy: Secrecy) -> String {
    let plain = error.to_string();
    let (hidden, why) = match secrecy {
        Secrecy::None => return plain,
        Secrecy::Holds => (
            error.masked_with(PLACEHOLDER).to_string(),
            "it holds a secret",
        ),
        Secrecy::Is { .. } => (inside_secret(error), "secret"),
    };
    if hidden == plain {
        plain
    } else {
        format!("{hidden} (value hidden: {why})")
    }
}

/// The masked message of a violation inside a secret, where the config's
/// own keys are hidden too (the masked rendering lists them).
fn inside_secret(error: &ValidationError<'_>) -> String {
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => format!(
            "Additional properties are not allowed ({} unexpected)",
            unexpected.len()
        ),
        ValidationErrorKind::UnevaluatedProperties { unexpected } => format!(
            "Unevaluated properties are not allowed ({} unexpected)",
            unexpected.len()
        ),
        ValidationErrorKind::PropertyNames { error } => format!(
            "a property name is invalid: {}",
            error.masked_with("the name")
        ),
        _ => error.masked_with(PLACEHOLDER).to_string(),
    }
}

/// `schema` with each `x-secret` property `P` (found as
/// [`secret_pointers`] finds them) replaced by
/// `{"anyOf": [P, <a sealed string>]}`.
fn accepting_sealed(schema: &Value) -> Value {
    fn relax(schema: &mut Value) {
        let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            return;
        };
        for property in properties.values_mut() {
            if is_secret(property) {
                let original = property.take();
                *property = serde_json::json!({"anyOf": [original, {
                    "type": "string",
                    "pattern": format!("^{}", crate::secret::SEALED_PREFIX),
                }]});
            } else {
                relax(property);
            }
        }
    }
    let mut relaxed = schema.clone();
    relax(&mut relaxed);
    relaxed
}
