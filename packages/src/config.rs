//! The agent's layered configuration, lowest layer first:
//!
//! 1. `default`s of the package's JSON Schema;
//! 2. `config/base.toml`;
//! 3. `config/<environment>.toml`;
//! 4. environment variables `OPMAS_AGENT_<NAME>__<KEY>` (`NAME` is the
//!    package name upper-cased with `-` as `_`; nested keys are separated by
//!    `__` and lower-cased; a value that parses as JSON is that JSON, any
//!    other value a string).
//!
//! Objects merge key by key; anything else is replaced. The result must
//! satisfy the schema; an error names the failing path and the layer that
//! set it (file and line, or the variable), and shows the value unless it
//! is (or holds) a secret (`x-secret`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use opmas_domain::spec::ConfigViolation;
use serde_json::{Map, Value};

use crate::error::Invalid;
use crate::{paths, spans};

/// Where a layer came from.
#[derive(Debug, Clone)]
enum Source {
    Defaults,
    File { path: PathBuf, text: String },
    Var(String),
}

/// Everything the layers are built from.
pub struct Inputs<'a> {
    /// Package name (for the variable prefix).
    pub name: &'a str,
    /// Canonical package directory.
    pub dir: &'a Path,
    /// The manifest (named when the schema is at fault).
    pub manifest: &'a Path,
    pub environment: &'a str,
    pub schema: Option<&'a Value>,
    /// The process environment, as given by the caller.
    pub vars: &'a BTreeMap<String, String>,
}

/// Prefix of the variables that configure package `name`.
pub fn var_prefix(name: &str) -> String {
    format!("OPMAS_AGENT_{}__", name.to_uppercase().replace('-', "_"))
}

/// The merged, validated config.
pub fn layered(inputs: &Inputs<'_>) -> Result<Value, Invalid> {
    let mut layers = vec![(
        Source::Defaults,
        inputs
            .schema
            .and_then(defaults)
            .unwrap_or_else(|| Value::Object(Map::new())),
    )];
    for file in ["base".to_owned(), inputs.environment.to_owned()] {
        if let Some(layer) = file_layer(inputs.dir, &format!("config/{file}.toml"))? {
            layers.push(layer);
        }
    }
    let prefix = var_prefix(inputs.name);
    for (var, raw) in inputs.vars.range(prefix.clone()..) {
        let Some(key) = var.strip_prefix(&prefix) else {
            break;
        };
        layers.push((Source::Var(var.clone()), var_layer(var, key, raw)?));
    }
    let mut config = Value::Object(Map::new());
    for (_, layer) in &layers {
        merge(&mut config, layer.clone());
    }
    if let Some(schema) = inputs.schema {
        check(schema, &config, &layers, inputs.manifest)?;
    }
    Ok(config)
}

/// The config file at `relative`, if the package has one.
fn file_layer(dir: &Path, relative: &str) -> Result<Option<(Source, Value)>, Invalid> {
    let refused = |message: String| Invalid::new(dir.join(relative), None, "", message);
    let Some(path) = paths::confine_optional(dir, relative).map_err(refused)? else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| refused(format!("cannot be read: {e}")))?;
    let value: Value = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| spans::line_of(&text, s.start));
        Invalid::new(&path, line, "", e.message().trim().to_owned())
    })?;
    Ok(Some((Source::File { path, text }, value)))
}

/// `OPMAS_AGENT_WEB__DB__PORT=5432` as `{"db": {"port": 5432}}`.
fn var_layer(var: &str, key: &str, raw: &str) -> Result<Value, Invalid> {
    let segments: Vec<String> = key.split("__").map(str::to_lowercase).collect();
    if segments.iter().any(String::is_empty) {
        return Err(Invalid::new(
            format!("${var}"),
            None,
            "",
            "has an empty key segment: write OPMAS_AGENT_<NAME>__<KEY>[__<KEY>...]",
        ));
    }
    let mut value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    for segment in segments.into_iter().rev() {
        value = Value::Object(Map::from_iter([(segment, value)]));
    }
    Ok(value)
}

/// The `default`s a schema declares, nested like the properties.
pub fn defaults(schema: &Value) -> Option<Value> {
    if let Some(default) = schema.get("default") {
        return Some(default.clone());
    }
    let properties = schema.get("properties")?.as_object()?;
    let object: Map<String, Value> = properties
        .iter()
        .filter_map(|(key, property)| Some((key.clone(), defaults(property)?)))
        .collect();
    (!object.is_empty()).then_some(Value::Object(object))
}

/// Deep merge: objects key by key, anything else replaced.
pub fn merge(into: &mut Value, layer: Value) {
    match (into, layer) {
        (Value::Object(into), Value::Object(layer)) => {
            for (key, value) in layer {
                match into.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        into.insert(key, value);
                    }
                }
            }
        }
        (into, layer) => *into = layer,
    }
}

/// The first violation of `schema`, at the layer that set the value. A
/// secret is named, never shown ([`opmas_domain::spec::config_violation`]).
fn check(
    schema: &Value,
    config: &Value,
    layers: &[(Source, Value)],
    manifest: &Path,
) -> Result<(), Invalid> {
    let violation = opmas_domain::spec::config_violation(schema, config).map_err(|e| {
        Invalid::new(
            manifest,
            None,
            "config.schema",
            format!("is not a valid JSON Schema: {e}"),
        )
    })?;
    let Some(ConfigViolation {
        path: segments,
        field,
        message,
    }) = violation
    else {
        return Ok(());
    };
    let source = layers
        .iter()
        .rev()
        .find(|(_, layer)| !segments.is_empty() && lookup(layer, &segments).is_some())
        .map(|(source, _)| source);
    Err(match source {
        Some(Source::File { path, text }) => {
            let line = spans::line_of_field(text, &segments.join("."));
            Invalid::new(path, line, field, message)
        }
        Some(Source::Var(var)) => Invalid::new(format!("${var}"), None, field, message),
        Some(Source::Defaults) | None => Invalid::new(manifest, None, field, message),
    })
}

fn lookup<'v>(value: &'v Value, segments: &[String]) -> Option<&'v Value> {
    segments.iter().try_fold(value, |v, s| match v {
        Value::Object(o) => o.get(s),
        Value::Array(a) => a.get(s.parse::<usize>().ok()?),
        _ => None,
    })
}
