//! Where a field is in a TOML text: byte spans from the parser turned into
//! 1-based line numbers, so errors can say `agent.toml:12`.

use toml::de::{DeTable, DeValue};

/// 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Line of the value at dotted `path` (`heartbeat.timeout`, `args[1]`); for a path
/// that is not in the text, the line of its deepest present parent table's
/// first key, or `None` when not even the first segment is there.
pub fn line_of_field(text: &str, path: &str) -> Option<usize> {
    let root = DeValue::Table(DeTable::parse(text).ok()?.into_inner());
    let mut current = &root;
    let mut found = None;
    let path = path.replace('[', ".").replace(']', "");
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let next = match segment.parse::<usize>() {
            Ok(index) if current.is_array() => current.get(index),
            _ => current.get(segment),
        };
        let Some(next) = next else { break };
        found = Some(next.span().start);
        current = next.get_ref();
    }
    found.map(|offset| line_of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_fields() {
        let text = "name = \"a\"\n\n[heartbeat]\ninterval = \"5s\"\ntimeout = \"1s\"\n[env]\nA = \"1\"\nargs = [1, 2]\n";
        assert_eq!(line_of_field(text, "name"), Some(1));
        assert_eq!(line_of_field(text, "heartbeat.timeout"), Some(5));
        assert_eq!(line_of_field(text, "env.A"), Some(7));
        assert_eq!(line_of_field(text, "env.args[1]"), Some(8));
        assert_eq!(
            line_of_field(text, "heartbeat.missing"),
            line_of_field(text, "heartbeat")
        );
        assert_eq!(line_of_field(text, "nothing"), None);
        assert_eq!(line_of(text, 0), 1);
    }
}
