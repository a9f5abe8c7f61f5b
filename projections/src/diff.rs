//! Pure helpers: the diff between two configs and the fingerprint that groups
//! repeats of an error.

use serde_json::{Map, Value, json};

/// The changes from `old` to `new` as `[{"path", "from", "to"}]`, one entry
/// per changed leaf (objects are walked, arrays and scalars compared whole).
/// `path` is a JSON pointer; a missing side is left out of its entry.
pub fn config_diff(old: Option<&Value>, new: &Value) -> Value {
    let empty = Value::Object(Map::new());
    let old = old.or(new.is_object().then_some(&empty));
    let mut changes = Vec::new();
    walk("", old, Some(new), &mut changes);
    Value::Array(changes)
}

fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<Value>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                walk(&child, a.get(key), b.get(key), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => {
            let mut entry = Map::new();
            entry.insert("path".into(), json!(path));
            if let Some(a) = a {
                entry.insert("from".into(), a.clone());
            }
            if let Some(b) = b {
                entry.insert("to".into(), b.clone());
            }
            out.push(Value::Object(entry));
        }
    }
}

/// Groups repeats of an error: category, type and the message with digits
/// and hex runs (pids, ports, ids, addresses) masked, hashed with FNV-1a 64
/// (stable across builds, unlike `std`'s hasher). Independent of the agent,
/// so the same failure on many agents shares a fingerprint (correlation).
pub fn fingerprint(category: &str, error_type: &str, message: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(category.as_bytes());
    feed(&[0]);
    feed(error_type.as_bytes());
    feed(&[0]);
    feed(mask(message).as_bytes());
    format!("{hash:016x}")
}

/// Replaces each word that contains a digit by `#`, keeping separators.
fn mask(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, word) in message.split(|c: char| !c.is_alphanumeric()).enumerate() {
        if i > 0 {
            out.push('.');
        }
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lists_changed_leaves_only() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": true});
        let new = json!({"a": 1, "b": {"c": 5, "d": 3}, "new/key": [1]});
        assert_eq!(
            config_diff(Some(&old), &new),
            json!([
                {"path": "/b/c", "from": 2, "to": 5},
                {"path": "/gone", "from": true},
                {"path": "/new~1key", "to": [1]},
            ])
        );
        assert_eq!(
            config_diff(None, &json!({"x": 1})),
            json!([{"path": "/x", "to": 1}])
        );
        assert_eq!(config_diff(Some(&new), &new), json!([]));
    }

    #[test]
    fn fingerprint_groups_messages_that_differ_by_numbers() {
        let a = fingerprint(
            "io",
            "Timeout",
            "connect to 10.0.0.1:5432 timed out after 30s",
        );
        let b = fingerprint(
            "io",
            "Timeout",
            "connect to 10.0.0.7:6543 timed out after 5s",
        );
        let c = fingerprint("io", "Timeout", "read timed out");
        let d = fingerprint(
            "net",
            "Timeout",
            "connect to 10.0.0.1:5432 timed out after 30s",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.len(), 16);
    }
}
