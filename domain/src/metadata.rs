//! [`EventMetadata`]: who caused an event, why, where and when.
//!
//! cqrs-es stores metadata as a `HashMap<String, String>` next to each event;
//! [`EventMetadata::to_map`] and [`EventMetadata::from_map`] convert. Keys:
//! `actor`, `correlation_id`, `causation_id` (optional), `node` (optional),
//! `time` (RFC 3339).

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Audit data attached to every committed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Who issued the command: a user, `supervisor@<node>`, `system`.
    pub actor: String,
    /// Shared by every event caused by one request.
    pub correlation_id: String,
    /// The event or command that caused this one, if any.
    pub causation_id: Option<String>,
    /// Node the command came from, if any.
    pub node: Option<String>,
    pub time: DateTime<Utc>,
}

/// Metadata map that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("event metadata has no `{0}`")]
    Missing(&'static str),
    #[error("event metadata `time` {value:?} is not RFC 3339: {reason}")]
    BadTime { value: String, reason: String },
}

impl EventMetadata {
    pub fn new(
        actor: impl Into<String>,
        correlation_id: impl Into<String>,
        time: DateTime<Utc>,
    ) -> Self {
        Self {
            actor: actor.into(),
            correlation_id: correlation_id.into(),
            causation_id: None,
            node: None,
            time,
        }
    }

    #[must_use]
    pub fn with_causation(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    #[must_use]
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The map cqrs-es stores; optional keys are left out when `None`.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("actor".to_owned(), self.actor.clone()),
            ("correlation_id".to_owned(), self.correlation_id.clone()),
            (
                "time".to_owned(),
                self.time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
        ]);
        if let Some(causation) = &self.causation_id {
            map.insert("causation_id".to_owned(), causation.clone());
        }
        if let Some(node) = &self.node {
            map.insert("node".to_owned(), node.clone());
        }
        map
    }

    /// Reads a map written by [`to_map`](Self::to_map); unknown keys are ignored.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, MetadataError> {
        let required = |key: &'static str| map.get(key).cloned().ok_or(MetadataError::Missing(key));
        let time = required("time")?;
        let time = DateTime::parse_from_rfc3339(&time)
            .map_err(|e| MetadataError::BadTime {
                value: time.clone(),
                reason: e.to_string(),
            })?
            .with_timezone(&Utc);
        Ok(Self {
            actor: required("actor")?,
            correlation_id: required("correlation_id")?,
            causation_id: map.get("causation_id").cloned(),
            node: map.get("node").cloned(),
            time,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn time() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 123_000_000)
            .single()
            .expect("valid")
    }

    #[test]
    fn round_trips_through_a_map() {
        let full = EventMetadata::new("alice", "req-1", time())
            .with_causation("evt-9")
            .with_node("node-a");
        let map = full.to_map();
        assert_eq!(map["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(map.len(), 5);
        assert_eq!(EventMetadata::from_map(&map), Ok(full));

        let bare = EventMetadata::new("system", "req-2", time());
        let map = bare.to_map();
        assert!(!map.contains_key("causation_id") && !map.contains_key("node"));
        assert_eq!(EventMetadata::from_map(&map), Ok(bare));
    }

    #[test]
    fn reports_missing_and_bad_keys() {
        let mut map = EventMetadata::new("a", "c", time()).to_map();
        map.remove("actor");
        assert_eq!(
            EventMetadata::from_map(&map),
            Err(MetadataError::Missing("actor"))
        );
        map.insert("actor".into(), "a".into());
        map.insert("time".into(), "yesterday".into());
        let err = EventMetadata::from_map(&map).expect_err("bad time");
        assert!(matches!(err, MetadataError::BadTime { .. }), "{err}");
        map.insert("time".into(), "2024-01-01T00:00:00+02:00".into());
        let offset = EventMetadata::from_map(&map).expect("offsets are accepted");
        assert_eq!(offset.time.to_rfc3339(), "2023-12-31T22:00:00+00:00");
    }
}
