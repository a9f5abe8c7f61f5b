//! Upcasters that turn stored events of older versions into the current shape.
//!
//! - `ProcessExited` 1.0 → 2.0: `exit_code` becomes `code`, `signal` is
//!   `null` and `decision` is `DoNotRestart` (1.0 did not record one).
//!   cqrs-es stamps the result `"2.0.0"` (semver of `"2.0"`).

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::{Value, json};

use super::event::PROCESS_EXITED_VERSION;

/// All upcasters for [`AgentEvent`](super::AgentEvent), to hand to the event store.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "ProcessExited",
        PROCESS_EXITED_VERSION,
        Box::new(process_exited_v1_to_v2),
    ))]
}

/// `{"ProcessExited":{"pid","exit_code","at"}}` → the 2.0 fields. A payload
/// of another shape is returned unchanged (and will fail to deserialize
/// loudly rather than be guessed at).
fn process_exited_v1_to_v2(mut payload: Value) -> Value {
    if let Some(Value::Object(fields)) = payload.get_mut("ProcessExited") {
        let code = fields.remove("exit_code").unwrap_or(Value::Null);
        fields.insert("code".to_owned(), code);
        fields.entry("signal").or_insert(Value::Null);
        fields.entry("decision").or_insert(json!("DoNotRestart"));
    }
    payload
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use cqrs_es::persist::SerializedEvent;

    use super::*;
    use crate::agent::AgentEvent;
    use crate::backoff::RestartDecision;

    fn stored(version: &str, payload: Value) -> SerializedEvent {
        SerializedEvent::new(
            "web-1".into(),
            7,
            "Agent".into(),
            "ProcessExited".into(),
            version.into(),
            payload,
            json!({}),
        )
    }

    fn upcast(event: SerializedEvent) -> SerializedEvent {
        upcasters().iter().fold(event, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        })
    }

    #[test]
    fn process_exited_1_0_becomes_2_0() {
        let v1 = stored(
            "1.0",
            json!({"ProcessExited": {"pid": 42, "exit_code": 3, "at": "2024-05-01T10:00:00Z"}}),
        );
        let v2 = upcast(v1);
        // cqrs-es writes the upcaster's version in full semver form.
        assert_eq!(v2.event_version, "2.0.0");
        assert!(!upcasters()[0].can_upcast("ProcessExited", &v2.event_version));
        assert_eq!(v2.sequence, 7);
        let event: AgentEvent = serde_json::from_value(v2.payload).expect("2.0 shape");
        assert_eq!(
            event,
            AgentEvent::ProcessExited {
                pid: 42,
                code: Some(3),
                signal: None,
                at: Utc
                    .with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
                    .single()
                    .expect("valid"),
                decision: RestartDecision::DoNotRestart,
            }
        );

        let killed = upcast(stored(
            "1.0",
            json!({"ProcessExited": {"pid": 1, "exit_code": null, "at": "2024-05-01T10:00:00Z"}}),
        ));
        let event: AgentEvent = serde_json::from_value(killed.payload).expect("2.0 shape");
        assert!(matches!(
            event,
            AgentEvent::ProcessExited { code: None, .. }
        ));
    }

    #[test]
    fn current_versions_and_other_events_are_untouched() {
        let current = stored("2.0", json!({"ProcessExited": {"pid": 1}}));
        assert_eq!(upcast(current.clone()), current);
        let mut other = stored("1.0", json!("StartRequested"));
        other.event_type = "StartRequested".into();
        assert_eq!(upcast(other.clone()), other);
    }
}
