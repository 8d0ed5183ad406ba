//! The MCP tools' arguments, described for the assistant (JSON Schema) and turned into the ops function's
//! own request ([`dualcaster::ops::parse`]), so an MCP call is validated exactly like a direct invoke.
//!
//! The schemas live here rather than on [`dualcaster::ops`] so that the functions do not link a schema
//! generator. A test keeps each struct's fields, and each enum's values, the same as the ops request's.

use rmcp::ErrorData;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use dualcaster::ops::OpsRequest;

/// A task queue.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    /// Pulling card and price data from upstream (Scryfall, MTGJSON).
    Ingestion,
    /// Price metrics, signals and recommendations.
    Analytics,
    /// Health checks, housekeeping and operator tasks.
    Default,
}

/// What a record of the lease table is for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKindName {
    /// A single-instance run: held while the task runs.
    Run,
    /// A delivery being processed (in progress) or processed (completed, with its stored report).
    Idempotency,
}

/// Dead letters per queue: depth, oldest age, counts by task and error class, and a peek at the most
/// recent ones (nothing is consumed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqStatsArgs {
    /// The queues whose DLQs are read (default: all three).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<QueueName>>,
    /// How many of the most recent dead letters to show per queue (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peek: Option<u16>,
}

/// Replays dead letters into their source queue: all of them, or those matching a task, an error class
/// and a time window. A dry run (the default) only counts and lists.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveArgs {
    /// The queue whose DLQ is replayed.
    pub queue: QueueName,
    /// Only messages of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Only messages that failed with this error class (e.g. `database_unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// Only messages that failed at or after this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only messages that failed before this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Move nothing, report what would move (default true: say false to move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Messages moved at most (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u32>,
    /// Messages moved per second at most (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
}

/// The schedules (EventBridge rules) with their next fire times.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulesArgs {
    /// Fire times listed per schedule (default 3, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<usize>,
}

/// Live records of the lease table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListLeasesArgs {
    /// `run` (single-instance leases, the default) or `idempotency` (delivery records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<LeaseKindName>,
}

/// Deletes one lease whoever holds it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseLeaseArgs {
    /// The lease key, e.g. `run:compute_price_metrics`.
    pub key: String,
    /// Why: kept in the log with the removed holder (at least 3 characters).
    pub reason: String,
}

/// Validates a task's arguments and sends it to its queue (routing from the registry).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerArgs {
    /// A registered task, e.g. `compute_price_metrics`.
    pub task: String,
    /// The task's arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// The envelope id (idempotency key); a new UUID by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The runs of one chain in the order they started, with their outcomes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainArgs {
    /// The chain id: the key of the run that started it (a run report's `chain_id`).
    pub id: String,
    /// Runs listed at most (default 200, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The ops request for `action` with these arguments, parsed by the ops function's own parser.
pub fn request(action: &str, args: &impl Serialize) -> Result<OpsRequest, ErrorData> {
    let mut payload = match serde_json::to_value(args) {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => {
            return Err(ErrorData::invalid_params(
                format!("not an object: {other}"),
                None,
            ))
        }
        Err(e) => return Err(ErrorData::invalid_params(e.to_string(), None)),
    };
    payload.insert("action".into(), Value::String(action.into()));
    dualcaster::ops::parse(Value::Object(payload))
        .map_err(|e| ErrorData::invalid_params(e.message, None))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde::de::{self, DeserializeOwned, Visitor};

    use super::*;
    use dualcaster::lease::LeaseKind;
    use dualcaster::ops::{Chain, DlqStats, ListLeases, Redrive, ReleaseLease, Schedules, Trigger};
    use dualcaster::queue::Queue;

    /// The field names (of a struct) or variant names (of an enum) `T`'s `Deserialize` asks for: serde
    /// hands them to the deserializer, which records them and stops.
    fn names<T: DeserializeOwned>() -> Vec<&'static str> {
        thread_local!(static SEEN: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) });
        struct Recorder;
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("recorded")
            }
        }
        impl std::error::Error for Stop {}
        impl de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> de::Deserializer<'de> for Recorder {
            type Error = Stop;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                SEEN.with(|s| *s.borrow_mut() = fields.to_vec());
                Err(Stop)
            }
            fn deserialize_enum<V: Visitor<'de>>(
                self,
                _: &'static str,
                variants: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                SEEN.with(|s| *s.borrow_mut() = variants.to_vec());
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit
                unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
            }
        }
        SEEN.with(|s| s.borrow_mut().clear());
        let _ = T::deserialize(Recorder);
        let mut seen = SEEN.with(|s| s.borrow().clone());
        seen.sort_unstable();
        assert!(
            !seen.is_empty(),
            "{} named nothing",
            std::any::type_name::<T>()
        );
        seen
    }

    fn same<Mirror: DeserializeOwned, Own: DeserializeOwned>() {
        assert_eq!(
            names::<Mirror>(),
            names::<Own>(),
            "{} and {}",
            std::any::type_name::<Mirror>(),
            std::any::type_name::<Own>()
        );
    }

    #[test]
    fn every_argument_type_names_what_the_ops_request_accepts() {
        same::<QueueName, Queue>();
        same::<LeaseKindName, LeaseKind>();
        same::<DlqStatsArgs, DlqStats>();
        same::<RedriveArgs, Redrive>();
        same::<SchedulesArgs, Schedules>();
        same::<ListLeasesArgs, ListLeases>();
        same::<ReleaseLeaseArgs, ReleaseLease>();
        same::<TriggerArgs, Trigger>();
        same::<ChainArgs, Chain>();
    }

    #[test]
    fn the_schema_lists_every_field_and_the_queue_values() {
        let schema = serde_json::to_value(schemars::schema_for!(RedriveArgs)).unwrap();
        let mut properties: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        properties.sort_unstable();
        assert_eq!(properties, names::<Redrive>());
        assert_eq!(schema["required"], serde_json::json!(["queue"]));
        let text = schema.to_string();
        for queue in ["ingestion", "analytics", "default"] {
            assert!(text.contains(&format!("\"{queue}\"")), "{text}");
        }
    }

    #[test]
    fn arguments_become_the_ops_request_a_direct_invoke_would_make() {
        let args = RedriveArgs {
            queue: QueueName::Analytics,
            task: Some("compute_price_metrics".into()),
            error_class: None,
            failed_after: Some("2026-11-26T00:00:00Z".parse().unwrap()),
            failed_before: None,
            dry_run: Some(false),
            max_messages: Some(7),
            rate_per_second: None,
        };
        match request("redrive", &args).unwrap() {
            OpsRequest::Redrive(r) => {
                assert_eq!(r.queue, Queue::Analytics);
                assert_eq!(r.task.as_deref(), Some("compute_price_metrics"));
                assert_eq!(
                    r.failed_after.unwrap().to_rfc3339(),
                    "2026-11-26T00:00:00+00:00"
                );
                assert_eq!((r.dry_run, r.max_messages), (Some(false), Some(7)));
            }
            other => panic!("{other:?}"),
        }
        let short = ReleaseLeaseArgs {
            key: "run:ping".into(),
            reason: "x".into(),
        };
        assert!(matches!(
            request("release_lease", &short),
            Ok(OpsRequest::ReleaseLease(_))
        ));
    }
}
