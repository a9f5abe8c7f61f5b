//! [`Package::load`]: a package directory read, checked and turned into
//! one [`AgentSpec`] per instance. Every problem is an [`Invalid`] naming
//! the file, line and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use opmas_domain::{AgentId, AgentSpec};
use serde_json::Value;

use crate::error::Invalid;
use crate::manifest::Manifest;
use crate::{build, config, paths, spans};

/// File name of the manifest inside a package directory.
pub const MANIFEST: &str = "agent.toml";

/// Most instances one package may ask for.
pub const MAX_INSTANCES: u32 = 100;

/// A valid package: its identity and the agents it defines.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    /// Canonical package directory.
    pub dir: PathBuf,
    pub name: String,
    pub version: String,
    pub description: String,
    /// One entry per instance, in id order; `requires` and the layered
    /// config are in each spec.
    pub agents: Vec<(AgentId, AgentSpec)>,
}

/// What a package is read against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Selects `config/<environment>.toml`.
    pub environment: &'a str,
    /// The process environment (for `OPMAS_AGENT_<NAME>__<KEY>`).
    pub vars: &'a BTreeMap<String, String>,
}

/// A field and why it is wrong, before the file and line are added.
pub(crate) type Fault = (String, String);

pub(crate) fn fault(field: &str, message: impl Into<String>) -> Fault {
    (field.to_owned(), message.into())
}

impl Package {
    /// Reads the package in `dir`.
    pub fn load(dir: &Path, context: Context<'_>) -> Result<Package, Invalid> {
        let dir = dir
            .canonicalize()
            .map_err(|e| Invalid::new(dir, None, "", format!("cannot be opened: {e}")))?;
        let manifest_path = dir.join(MANIFEST);
        let at_manifest = |message: String| Invalid::new(&manifest_path, None, "", message);
        let path = paths::confine(&dir, MANIFEST).map_err(at_manifest)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| at_manifest(format!("cannot be read: {e}")))?;
        let manifest = parse(&manifest_path, &text)?;
        let located = |(field, message): Fault| {
            let line = spans::line_of_field(&text, &field);
            Invalid::new(&manifest_path, line, field, message)
        };
        let ids = build::ids(&manifest).map_err(located)?;
        let mut spec = build::spec(&manifest, &dir, &ids).map_err(located)?;
        spec.config_schema = schema(&manifest, &dir).map_err(|f| match f {
            SchemaFault::Manifest(f) => located(f),
            SchemaFault::File(invalid) => invalid,
        })?;
        spec.config = config::layered(&config::Inputs {
            name: &manifest.name,
            dir: &dir,
            manifest: &manifest_path,
            environment: context.environment,
            schema: spec.config_schema.as_ref(),
            vars: context.vars,
        })?;
        spec.validate()
            .map_err(|e| located((build::manifest_field(&e.field), e.message)))?;
        Ok(Package {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            agents: ids.into_iter().map(|id| (id, spec.clone())).collect(),
            dir,
        })
    }
}

/// Parses the manifest text; errors name the key path and line.
fn parse(file: &Path, text: &str) -> Result<Manifest, Invalid> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        let line = e.span().map(|s| spans::line_of(text, s.start));
        Invalid::new(file, line, "", e.message().trim().to_owned())
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim().to_owned();
        let mut field = if path == "." { String::new() } else { path };
        // For a missing or unknown key, name the key itself.
        for prefix in ["missing field `", "unknown field `"] {
            if let Some(key) = message
                .strip_prefix(prefix)
                .and_then(|r| r.split('`').next())
                && !field.ends_with(key)
            {
                field = if field.is_empty() {
                    key.to_owned()
                } else {
                    format!("{field}.{key}")
                };
            }
        }
        // A missing key has no place (its span is the whole table).
        let line = match message.starts_with("missing field") {
            true => None,
            false => inner.span().map(|s| spans::line_of(text, s.start)),
        };
        if opmas_domain::secret::is_env_value(&field) {
            let hidden = opmas_domain::secret::ENV_VALUE_REFUSED;
            return Invalid::new(file, line, field, hidden);
        }
        Invalid::new(file, line, field, message)
    })
}

enum SchemaFault {
    Manifest(Fault),
    File(Invalid),
}

/// The config schema: inline, or a JSON file in the package; it must
/// compile.
fn schema(manifest: &Manifest, dir: &Path) -> Result<Option<Value>, SchemaFault> {
    let field = "config.schema";
    let Some(source) = &manifest.config.schema else {
        return Ok(None);
    };
    let (schema, file) = match source {
        Value::String(relative) => {
            let path = paths::confine(dir, relative)
                .map_err(|m| SchemaFault::Manifest(fault(field, m)))?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                SchemaFault::Manifest(fault(field, format!("`{relative}` cannot be read: {e}")))
            })?;
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                SchemaFault::File(Invalid::new(
                    &path,
                    Some(e.line()),
                    "",
                    format!("is not JSON: {e}"),
                ))
            })?;
            (value, Some(path))
        }
        Value::Object(_) => (source.clone(), None),
        _ => {
            return Err(SchemaFault::Manifest(fault(
                field,
                "must be a path to a JSON Schema file in the package or an inline table",
            )));
        }
    };
    if !schema.is_object() {
        return Err(SchemaFault::Manifest(fault(
            field,
            "must be a JSON object (a JSON Schema)",
        )));
    }
    if let Err(e) = jsonschema::validator_for(&schema) {
        let message = format!("is not a valid JSON Schema: {e}");
        return Err(match file {
            Some(path) => SchemaFault::File(Invalid::new(path, None, "", message)),
            None => SchemaFault::Manifest(fault(field, message)),
        });
    }
    Ok(Some(schema))
}
