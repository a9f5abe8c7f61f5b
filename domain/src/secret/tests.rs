#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::*;
use crate::spec::AgentSpec;
use crate::{Agent, AgentCommand, AgentEvent, AgentId};

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes([byte; KEY_BYTES])
}

/// A spec with a secret env value, a secret string, a secret object and a
/// secret number in its config, and one plain field of each kind.
fn spec() -> AgentSpec {
    AgentSpec {
        agent_type: "db".into(),
        command: "sleep".into(),
        env: BTreeMap::from([
            ("DB_PASSWORD".into(), "env-s3cret".into()),
            ("MODE".into(), "fast".into()),
        ]),
        secret_env: BTreeSet::from(["DB_PASSWORD".into()]),
        config_schema: Some(json!({"type": "object", "properties": {
            "password": {"type": "string", "minLength": 4, "x-secret": true},
            "db": {"type": "object", "properties": {
                "token": {"type": "object", "x-secret": true},
                "pin": {"type": "integer", "x-secret": true},
                "host": {"type": "string"}}},
            "level": {"type": "string"}}})),
        config: json!({"password": "cfg-s3cret", "level": "info",
            "db": {"token": {"id": 7, "t": "tok-s3cret"}, "pin": 1234, "host": "h"}}),
        ..AgentSpec::default()
    }
}

fn sealed(key: &SecretKey) -> AgentSpec {
    let mut spec = spec();
    seal_spec(Some(key), &mut spec).unwrap();
    spec
}

#[test]
fn sealing_hides_every_secret_and_opening_gives_them_back() {
    let k = key(1);
    let s = sealed(&k);
    let text = serde_json::to_string(&s).unwrap();
    for secret in ["env-s3cret", "cfg-s3cret", "tok-s3cret", "1234"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(is_sealed(&s.env["DB_PASSWORD"]));
    assert!(is_sealed(s.config["db"]["pin"].as_str().unwrap()));
    assert_eq!(s.env["MODE"], "fast", "plain values stay clear");
    assert_eq!(s.config["db"]["host"], "h");
    assert_eq!(s.config["level"], "info");
    assert_eq!(open_spec(Some(&k), &s).unwrap(), spec(), "round trip");
    assert_eq!(
        open_config(Some(&k), &s.config).unwrap()["db"]["token"],
        json!({"id": 7, "t": "tok-s3cret"}),
        "a non-string secret keeps its JSON type"
    );
}

#[test]
fn sealing_is_deterministic_and_idempotent() {
    let k = key(1);
    let once = sealed(&k);
    assert_eq!(sealed(&k), once, "same secret, same key: same text");
    let mut twice = once.clone();
    seal_spec(Some(&k), &mut twice).unwrap();
    assert_eq!(twice, once, "sealing a sealed spec changes nothing");
    let mut other = spec();
    "env-s3cret2".clone_into(other.env.get_mut("DB_PASSWORD").unwrap());
    seal_spec(Some(&k), &mut other).unwrap();
    assert_ne!(other.env["DB_PASSWORD"], once.env["DB_PASSWORD"]);
    assert_eq!(
        other.config, once.config,
        "unchanged config, unchanged text"
    );
}

#[test]
fn a_sealed_value_opens_only_at_its_own_field_with_its_own_key() {
    let k = key(1);
    let s = sealed(&k);
    let mut moved = s.clone();
    let value = moved.env["DB_PASSWORD"].clone();
    moved.env.insert("OTHER".into(), value);
    assert_eq!(
        open_spec(Some(&k), &moved),
        Err(SealError::Unauthentic {
            field: "env.OTHER".into()
        })
    );
    let mut moved = s.clone();
    moved.config["level"] = moved.config["password"].clone();
    let err = open_spec(Some(&k), &moved).unwrap_err();
    assert_eq!(err.field(), "config.level");
    let err = open_spec(Some(&key(2)), &s).unwrap_err();
    assert!(
        matches!(err, SealError::Unauthentic { .. }),
        "wrong key: {err}"
    );
    let mut altered = s.clone();
    altered.config["password"] = json!(format!("{SEALED_PREFIX}AAAA"));
    assert_eq!(
        open_spec(Some(&k), &altered).unwrap_err().field(),
        "config.password"
    );
}

#[test]
fn clear_values_pass_through_and_no_key_is_needed_without_secrets() {
    let clear = spec();
    assert_eq!(open_spec(Some(&key(1)), &clear).unwrap(), clear);
    assert_eq!(open_spec(None, &clear).unwrap(), clear, "old clear events");
    let mut plain = spec();
    plain.secret_env.clear();
    plain.config_schema = None;
    let before = plain.clone();
    seal_spec(None, &mut plain).unwrap();
    assert_eq!(plain, before, "no secrets: nothing to seal, no key needed");

    let mut secret = spec();
    assert_eq!(
        seal_spec(None, &mut secret),
        Err(SealError::NoKeyToSeal {
            field: "env.DB_PASSWORD".into()
        })
    );
    let err = open_spec(None, &sealed(&key(1))).unwrap_err();
    assert!(matches!(err, SealError::NoKeyToOpen { .. }), "{err}");
    assert!(err.to_string().contains("--secret-key-file"), "{err}");
}

#[test]
fn key_files_are_private_and_reload_to_the_same_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/secret.key");
    let (created, new) = SecretKey::load_or_create(&path).unwrap();
    assert!(new);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (loaded, new) = SecretKey::load_or_create(&path).unwrap();
    assert!(!new);
    assert_eq!(loaded.fingerprint(), created.fingerprint());
    let value = json!("x");
    assert_eq!(loaded.seal("p", &value), created.seal("p", &value));
    assert!(SecretKey::create(&path).is_err(), "never overwritten");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !format!("{loaded:?}").contains(text.trim()),
        "Debug hides it"
    );
    assert_ne!(key(1).fingerprint(), key(2).fingerprint());

    std::fs::write(dir.path().join("bad"), "not hex").unwrap();
    let err = SecretKey::load(&dir.path().join("bad")).unwrap_err();
    assert!(matches!(err, KeyError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("openssl rand -hex 64"), "{err}");
}

#[test]
fn the_aggregate_accepts_sealed_secrets_and_still_checks_clear_ones() {
    let k = key(1);
    let s = sealed(&k);
    assert_eq!(
        s.validate(),
        Ok(()),
        "a sealed integer where an integer goes"
    );
    let schema = s.config_schema.clone().unwrap();
    let mut short = s.config.clone();
    short["password"] = json!("abc");
    let err = crate::spec::check_config(&schema, &short).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        (
            "config.password",
            "the value is shorter than 4 characters (value hidden: secret)"
        ),
        "a clear secret is checked (against its own schema, not the sealed alternative), never shown"
    );
    let mut misplaced = s.config.clone();
    misplaced["db"] = misplaced["password"].clone();
    let err = crate::spec::check_config(&schema, &misplaced).unwrap_err();
    assert_eq!(err.field, "config.db", "sealed text where no secret goes");

    let events = Agent::default()
        .events_for(AgentCommand::Register {
            agent_id: AgentId::parse("db").unwrap(),
            spec: s.clone(),
        })
        .unwrap();
    assert!(matches!(&events[..], [AgentEvent::AgentRegistered { .. }]));
}

#[test]
fn answers_show_sealed_values_as_stars() {
    let mut s = sealed(&key(1));
    let value = s.env["DB_PASSWORD"].clone();
    s.env.insert("FORMER_SECRET".into(), value);
    s.config_schema = None;
    let shown = s.redacted();
    assert_eq!(shown.env["DB_PASSWORD"], "***");
    assert_eq!(shown.env["FORMER_SECRET"], "***");
    assert_eq!(
        shown.config["password"], "***",
        "sealed, even without schema"
    );
    assert_eq!(shown.config["db"]["host"], "h");
}
