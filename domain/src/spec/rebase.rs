//! [`rebase_config`]: an agent's runtime config changes carried over to new
//! package layers.
//!
//! An agent's config starts as what its package's layers give (schema
//! defaults, `base.toml`, `<environment>.toml`, `OPMAS_AGENT_*` variables);
//! operators then change it through the config API, the highest layer. When
//! the package layers change, the runtime changes are what the current
//! config changed from the layers last applied, leaf by leaf: a key set or
//! changed (its value wins), or removed (it stays removed). Objects are
//! walked key by key; anything else (arrays included) is one leaf.

use serde_json::{Map, Value};

/// `current`'s changes since `from` (the layers it started from) applied
/// onto `onto` (the new layers).
///
/// A runtime value whose key the new layers dropped is kept; a key the new
/// layers dropped and nobody changed at runtime goes. Values are compared
/// as stored: sealed secrets compare equal when their clear values are
/// (sealing is deterministic).
pub fn rebase_config(current: &Value, from: &Value, onto: &Value) -> Value {
    if current == from {
        return onto.clone();
    }
    let (Value::Object(current), Value::Object(from)) = (current, from) else {
        return current.clone();
    };
    let mut out = match onto {
        Value::Object(onto) => onto.clone(),
        _ => Map::new(),
    };
    for key in from.keys() {
        if !current.contains_key(key) {
            out.remove(key);
        }
    }
    for (key, value) in current {
        let rebased = match (from.get(key), out.get(key)) {
            (None, _) => value.clone(),
            (Some(old), Some(new)) => rebase_config(value, old, new),
            (Some(old), None) if old == value => continue,
            (Some(old), None) => rebase_config(value, old, &Value::Null),
        };
        out.insert(key.clone(), rebased);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::rebase_config;

    #[test]
    fn runtime_changes_stay_over_new_layers_leaf_by_leaf() {
        let from =
            json!({"level": "info", "db": {"host": "a", "port": 1}, "tags": ["x"], "old": 1});
        // Runtime: db.port changed, `extra` added, `old` removed.
        let current =
            json!({"level": "info", "db": {"host": "a", "port": 2}, "tags": ["x"], "extra": true});
        // New layers: level, db.host, tags changed; db.timeout added.
        let onto = json!({"level": "debug", "db": {"host": "b", "port": 1, "timeout": 5}, "tags": ["y"], "old": 3});
        assert_eq!(
            rebase_config(&current, &from, &onto),
            json!({"level": "debug", "db": {"host": "b", "port": 2, "timeout": 5}, "tags": ["y"], "extra": true})
        );
        // No runtime change: the new layers as they are.
        assert_eq!(rebase_config(&from, &from, &onto), onto);
        // Layers unchanged: the current config as it is.
        assert_eq!(rebase_config(&current, &from, &from), current);
    }

    #[test]
    fn keys_the_new_layers_dropped_go_unless_changed_at_runtime() {
        let from = json!({"a": 1, "db": {"host": "a", "port": 1}, "list": [1]});
        let current = json!({"a": 1, "db": {"host": "a", "port": 2}, "list": [1, 2]});
        // Only the runtime leaves of `db` survive; a changed array is one leaf.
        assert_eq!(
            rebase_config(&current, &from, &json!({})),
            json!({"db": {"port": 2}, "list": [1, 2]})
        );
        // A leaf turned into an object (or back) at runtime is one change.
        let current = json!({"a": {"b": 1}, "db": "off", "list": [1]});
        assert_eq!(
            rebase_config(&current, &from, &json!({"a": 5, "db": {"host": "c"}})),
            json!({"a": {"b": 1}, "db": "off"})
        );
    }
}
