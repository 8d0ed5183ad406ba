//! The task envelope: the JSON that travels as an SQS body, an EventBridge rule's `Input` or a direct-invoke
//! payload.
//!
//! ```json
//! {"v": 1, "task": "ping", "kwargs": {"note": "hello"}, "id": "a1b2", "expires_at": "2026-11-26T10:00:00Z"}
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{class, TaskError};

/// The envelope schema version this build reads and writes.
pub const CURRENT_VERSION: u32 = 1;

/// Longest accepted task name, id or idempotency key.
const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Schema version; absent means the current one.
    #[serde(default = "current_version")]
    pub v: u32,
    /// Registered task name.
    pub task: String,
    /// Arguments, validated against the task's typed arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// Caller's id for this run; the SQS message id is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// After this instant the run is skipped (and reported as skipped), not executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Key under which duplicate deliveries are recognised; defaults to the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The chain this run belongs to: the key of the run that started it (an ingestion, a schedule's firing,
    /// a trigger). Absent on a chain's first message, whose own key becomes the chain id; the runtime puts it
    /// on every follow-up, so one ingestion and everything it caused share it in `task_runs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
}

fn current_version() -> u32 {
    CURRENT_VERSION
}

impl Envelope {
    /// A current-version envelope for `task` with the given arguments.
    pub fn new(task: impl Into<String>, kwargs: Map<String, Value>) -> Self {
        Envelope {
            v: CURRENT_VERSION,
            task: task.into(),
            kwargs,
            id: None,
            expires_at: None,
            idempotency_key: None,
            chain_id: None,
        }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn expiring_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Parses and checks an envelope. Every failure is permanent: the same bytes will never parse.
    pub fn parse(body: &str) -> Result<Envelope, TaskError> {
        let value: Value = serde_json::from_str(body).map_err(|e| {
            TaskError::permanent(class::MALFORMED_MESSAGE, format!("body is not JSON: {e}"))
        })?;
        Self::from_value(value)
    }

    /// Like [`Envelope::parse`], for a payload that is already JSON (a direct invoke).
    pub fn from_value(value: Value) -> Result<Envelope, TaskError> {
        let Value::Object(map) = value else {
            return Err(TaskError::permanent(
                class::MALFORMED_MESSAGE,
                format!("envelope must be a JSON object, got {}", json_type(&value)),
            ));
        };
        // Check the version before the shape, so a future envelope gets a version error rather than a
        // confusing unknown-field error.
        if let Some(v) = map.get("v") {
            match v.as_u64() {
                Some(v) if v == u64::from(CURRENT_VERSION) => {}
                Some(v) => {
                    return Err(TaskError::permanent(
                        class::UNSUPPORTED_VERSION,
                        format!("envelope version {v} is not supported (this build reads v{CURRENT_VERSION})"),
                    ))
                }
                None => {
                    return Err(TaskError::permanent(
                        class::MALFORMED_MESSAGE,
                        format!("envelope field `v` must be a positive integer, got {v}"),
                    ))
                }
            }
        }
        let envelope: Envelope =
            serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
                TaskError::permanent(
                    class::MALFORMED_MESSAGE,
                    format!("invalid envelope: {}", crate::error::path_error(&e)),
                )
            })?;
        envelope.check()?;
        Ok(envelope)
    }

    fn check(&self) -> Result<(), TaskError> {
        let bad = |m: String| Err(TaskError::permanent(class::MALFORMED_MESSAGE, m));
        if self.task.is_empty() {
            return bad("envelope field `task` is empty".into());
        }
        for (field, value) in [
            ("task", Some(&self.task)),
            ("id", self.id.as_ref()),
            ("idempotency_key", self.idempotency_key.as_ref()),
            ("chain_id", self.chain_id.as_ref()),
        ] {
            if let Some(value) = value {
                if value.len() > MAX_NAME_LEN {
                    return bad(format!(
                        "envelope field `{field}` is {} bytes long (at most {MAX_NAME_LEN})",
                        value.len()
                    ));
                }
                if value.chars().any(char::is_control) {
                    return bad(format!(
                        "envelope field `{field}` contains control characters"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the envelope's expiry is at or before `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, maps of JSON values and timestamps cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|_| unreachable!("envelope serialization is infallible"))
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn arguments_survive_being_sent_again_digit_for_digit() {
        // Found by the envelope fuzz target: without exact float parsing, re-serialising an envelope (a
        // follow-up, a continuation) changed the last digit of this number.
        let body = r#"{"task":"p","kwargs":{"x":-1.3333333333333333e+175,"y":0.1,"z":-0.0}}"#;
        let once = Envelope::parse(body).unwrap().to_json();
        let twice = Envelope::parse(&once).unwrap().to_json();
        assert_eq!(once, twice);
        assert!(once.contains("-1.3333333333333333e+175"), "{once}");
    }

    fn class_of(body: &str) -> String {
        let err = Envelope::parse(body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{body}: {err}");
        err.class().to_owned()
    }

    #[test]
    fn minimal_envelope_gets_defaults() {
        let e = Envelope::parse(r#"{"task":"ping"}"#).unwrap();
        assert_eq!(e.v, 1);
        assert_eq!(e.task, "ping");
        assert!(e.kwargs.is_empty());
        assert_eq!(e.id, None);
        assert_eq!(e.expires_at, None);
    }

    #[test]
    fn full_envelope_round_trips() {
        let body = r#"{"v":1,"task":"ping","kwargs":{"note":"x"},"id":"r-1","expires_at":"2030-01-01T00:00:00Z","idempotency_key":"k","chain_id":"c-1"}"#;
        let e = Envelope::parse(body).unwrap();
        assert_eq!(e.chain_id.as_deref(), Some("c-1"));
        assert_eq!(e.kwargs.get("note"), Some(&json!("x")));
        assert_eq!(e.id.as_deref(), Some("r-1"));
        assert_eq!(e.idempotency_key.as_deref(), Some("k"));
        assert_eq!(Envelope::parse(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn rejects_what_is_not_an_envelope() {
        assert_eq!(class_of("not json"), "malformed_message");
        assert_eq!(class_of(""), "malformed_message");
        assert_eq!(class_of("[1,2]"), "malformed_message");
        assert_eq!(class_of(r#""ping""#), "malformed_message");
        assert_eq!(class_of(r#"{"kwargs":{}}"#), "malformed_message");
        assert_eq!(class_of(r#"{"task":""}"#), "malformed_message");
        assert_eq!(class_of(r#"{"task":7}"#), "malformed_message");
        assert_eq!(
            class_of(r#"{"task":"ping","kwargs":[1]}"#),
            "malformed_message"
        );
        assert_eq!(
            class_of(r#"{"task":"ping","extra":true}"#),
            "malformed_message"
        );
        assert_eq!(
            class_of(r#"{"task":"ping","expires_at":"tomorrow"}"#),
            "malformed_message"
        );
        assert_eq!(class_of(r#"{"task":"ping","v":"1"}"#), "malformed_message");
        assert_eq!(
            class_of(&format!(r#"{{"task":"{}"}}"#, "x".repeat(200))),
            "malformed_message"
        );
        assert_eq!(class_of(r#"{"task":"pi\u0000ng"}"#), "malformed_message");
        assert_eq!(
            class_of(&format!(
                r#"{{"task":"ping","chain_id":"{}"}}"#,
                "c".repeat(129)
            )),
            "malformed_message"
        );
    }

    #[test]
    fn rejects_other_versions_with_their_own_class() {
        assert_eq!(class_of(r#"{"v":2,"task":"ping"}"#), "unsupported_version");
        assert_eq!(
            class_of(r#"{"v":0,"task":"ping","anything":1}"#),
            "unsupported_version"
        );
        let err = Envelope::parse(r#"{"v":9,"task":"ping"}"#).unwrap_err();
        assert!(err.message().contains("version 9"), "{}", err.message());
    }

    #[test]
    fn expiry() {
        let now = Utc::now();
        let e = Envelope::new("ping", Map::new());
        assert!(!e.is_expired(now));
        let e = e.expiring_at(now - chrono::Duration::seconds(1));
        assert!(e.is_expired(now));
        let e = Envelope::new("ping", Map::new()).expiring_at(now + chrono::Duration::seconds(60));
        assert!(!e.is_expired(now));
    }
}
