//! Layered config: schema defaults < config/base.toml <
//! config/<environment>.toml < OPMAS_AGENT_<NAME>__<KEY>; the result is
//! checked against the schema and a failure names the path and the layer.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{BASE, load_with};
use opmas_packages::Invalid;
use serde_json::json;

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["db"],
  "properties": {
    "level": {"type": "string", "enum": ["debug", "info", "warn"], "default": "info"},
    "batch": {"type": "integer", "minimum": 1, "default": 10},
    "tags": {"type": "array", "items": {"type": "string"}, "default": []},
    "db": {
      "type": "object",
      "properties": {
        "host": {"type": "string", "default": "localhost"},
        "port": {"type": "integer", "default": 5432},
        "password": {"type": "string", "minLength": 8, "x-secret": true}
      }
    }
  }
}"#;

fn manifest() -> String {
    format!("{BASE}[config]\nschema = \"config/schema.json\"\n")
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn each_layer_overrides_the_one_below() {
    let files = [
        ("config/schema.json", SCHEMA),
        (
            "config/base.toml",
            "level = \"warn\"\nbatch = 20\n[db]\nhost = \"db.internal\"\npassword = \"base-secret\"\n",
        ),
        ("config/production.toml", "batch = 50\n[db]\nport = 6432\n"),
        ("config/development.toml", "batch = 1\n"),
    ];
    let env = vars(&[
        ("OPMAS_AGENT_WEB__DB__PORT", "7000"),
        ("OPMAS_AGENT_WEB__TAGS", "[\"a\", \"b\"]"),
        ("OPMAS_AGENT_WEB__LEVEL", "debug"),
        ("OPMAS_AGENT_OTHER__BATCH", "999"),
        ("UNRELATED", "x"),
    ]);
    let (_tmp, package) = load_with(&manifest(), &files, "production", &env);
    let spec = &package.unwrap().agents[0].1;
    assert_eq!(
        spec.config,
        json!({
            "level": "debug",          // env var over base.toml over default
            "batch": 50,               // production.toml over base.toml
            "tags": ["a", "b"],        // env var parsed as JSON
            "db": {"host": "db.internal", "port": 7000, "password": "base-secret"}
        })
    );
    assert_eq!(spec.redacted().config["db"]["password"], "***");

    // Another environment picks its own file; no variables: defaults show.
    let (_tmp, package) = load_with(&manifest(), &files, "development", &BTreeMap::new());
    let config = &package.unwrap().agents[0].1.config;
    assert_eq!(
        (config["batch"].clone(), config["level"].clone()),
        (json!(1), json!("warn"))
    );
    assert_eq!(
        config["db"]["port"], 5432,
        "schema default under a file's table"
    );

    // A value that is not JSON stays a string.
    let env = vars(&[("OPMAS_AGENT_WEB__DB__HOST", "db-2.internal")]);
    let (_tmp, package) = load_with(&manifest(), &files, "production", &env);
    assert_eq!(
        package.unwrap().agents[0].1.config["db"]["host"],
        "db-2.internal"
    );
}

/// The error of the package with the schema and this `config/base.toml`,
/// which the schema must refuse.
fn refused_base(base: &str) -> Invalid {
    let files = [("config/schema.json", SCHEMA), ("config/base.toml", base)];
    let (_tmp, result) = load_with(&manifest(), &files, "production", &BTreeMap::new());
    result.expect_err("the schema refuses this base.toml")
}

/// The error, as text, of the package with the schema and this variable,
/// which must be refused.
fn refused_var(name: &str, value: &str) -> String {
    let env = vars(&[(name, value)]);
    let files = [("config/schema.json", SCHEMA)];
    let (_tmp, result) = load_with(&manifest(), &files, "production", &env);
    result.expect_err("the variable is refused").to_string()
}

#[test]
fn a_value_the_schema_refuses_names_its_path_and_layer() {
    let err = refused_base("level = \"info\"\n\n[db]\nport = \"five\"\n");
    assert!(err.file.ends_with("web/config/base.toml"), "{err}");
    assert_eq!((err.field.as_str(), err.line), ("config.db.port", Some(4)));
    assert_eq!(err.message, "\"five\" is not of type \"integer\"");

    let prod = ("config/production.toml", "batch = 0\n");
    let (_tmp, err) = load_with(
        &manifest(),
        &[("config/schema.json", SCHEMA), prod],
        "production",
        &BTreeMap::new(),
    );
    let err = err.unwrap_err();
    assert!(err.file.ends_with("web/config/production.toml"), "{err}");
    assert_eq!((err.field.as_str(), err.line), ("config.batch", Some(1)));
    assert_eq!(err.message, "0 is less than the minimum of 1");

    let env = vars(&[("OPMAS_AGENT_WEB__LEVEL", "loud")]);
    let (_tmp, err) = load_with(
        &manifest(),
        &[("config/schema.json", SCHEMA)],
        "production",
        &env,
    );
    let err = err.unwrap_err();
    assert_eq!(err.file.to_string_lossy(), "$OPMAS_AGENT_WEB__LEVEL");
    assert_eq!(err.field, "config.level");
    assert_eq!(
        err.to_string(),
        "$OPMAS_AGENT_WEB__LEVEL: `config.level`: \"loud\" is not one of \"debug\", \"info\" or \"warn\""
    );

    // A required property nothing sets: the schema (in the manifest) is at fault.
    let schema = SCHEMA.replace(
        "\"required\": [\"db\"]",
        "\"required\": [\"db\", \"token\"]",
    );
    let (_tmp, err) = load_with(
        &manifest(),
        &[("config/schema.json", &schema)],
        "production",
        &BTreeMap::new(),
    );
    let err = err.unwrap_err();
    assert!(err.file.ends_with("web/agent.toml"), "{err}");
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        ("config", "\"token\" is a required property")
    );

    // A config file that is not TOML, with its line.
    let broken = ("config/base.toml", "level = \"info\"\nbatch = \n");
    let (_tmp, err) = load_with(
        &manifest(),
        &[("config/schema.json", SCHEMA), broken],
        "production",
        &BTreeMap::new(),
    );
    let err = err.unwrap_err();
    assert!(err.file.ends_with("web/config/base.toml"), "{err}");
    assert_eq!(err.line, Some(2));

    // A schema file that is not JSON.
    let (_tmp, err) = load_with(
        &manifest(),
        &[("config/schema.json", "{\n  \"type\": \n")],
        "production",
        &BTreeMap::new(),
    );
    let err = err.unwrap_err();
    assert!(err.file.ends_with("web/config/schema.json"), "{err}");
    assert_eq!(err.line, Some(3));
    assert!(err.message.starts_with("is not JSON: "), "{err}");

    // An empty key segment in a variable.
    assert_eq!(
        refused_var("OPMAS_AGENT_WEB__DB____PORT", "1"),
        "$OPMAS_AGENT_WEB__DB____PORT: has an empty key segment: write OPMAS_AGENT_<NAME>__<KEY>[__<KEY>...]"
    );
}

/// A secret (`x-secret`) the schema refuses: the error names the field, the
/// file and line or the variable, and what is wrong; never the value.
#[test]
fn a_secret_the_schema_refuses_is_named_not_shown() {
    let err = refused_base("level = \"info\"\n[db]\npassword = \"hunt3r7\"\n");
    assert!(err.file.ends_with("web/config/base.toml"), "{err}");
    assert_eq!(
        (err.field.as_str(), err.line),
        ("config.db.password", Some(3))
    );
    assert_eq!(
        err.message,
        "the value is shorter than 8 characters (value hidden: secret)"
    );
    assert!(!err.to_string().contains("hunt3r7"), "{err}");

    assert_eq!(
        refused_var("OPMAS_AGENT_WEB__DB__PASSWORD", "hunt3r7"),
        "$OPMAS_AGENT_WEB__DB__PASSWORD: `config.db.password`: the value is shorter than 8 characters (value hidden: secret)"
    );
}

#[test]
fn without_a_schema_any_object_goes_and_dashes_become_underscores() {
    let manifest = BASE.replace("name = \"web\"", "name = \"log-watcher\"");
    let env = vars(&[("OPMAS_AGENT_LOG_WATCHER__RETRIES", "3")]);
    let (_tmp, package) = load_with(
        &manifest,
        &[("config/base.toml", "anything = [1, \"two\"]\n")],
        "development",
        &env,
    );
    assert_eq!(
        package.unwrap().agents[0].1.config,
        json!({"anything": [1, "two"], "retries": 3})
    );
}
