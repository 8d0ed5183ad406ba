//! Operator actions, in one place for every way operators reach them: the `ops` Lambda function (direct
//! invokes), the `dualcaster ops` command and the MCP server. DLQ statistics, redrive and purge and the
//! lease actions run the operator tasks (`dlq_report`, `dlq_redrive`, `dlq_purge`, `leases`) through the
//! default queue's runtime, so they keep those tasks' validation, single-instance leases and run log;
//! schedules come from the registry; a trigger validates and enqueues an envelope on its task's queue.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::envelope::Envelope;
use crate::error::class;
use crate::lease::LeaseKind;
use crate::queue::Queue;
use crate::registry::Registry;
use crate::runtime::{Invocation, InvokeError, Runtime};
use crate::schedule::ScheduleExpression;

/// One operator action: the payload of a direct invoke of the `ops` function.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OpsRequest {
    DlqStats(DlqStats),
    Redrive(Redrive),
    Purge(Purge),
    Schedules(Schedules),
    Leases(ListLeases),
    ReleaseLease(ReleaseLease),
    Trigger(Trigger),
    Chain(Chain),
    Migrate(Migrate),
}

/// Dead letters per queue: depth, oldest age, counts by task and error class, and a peek at the most
/// recent ones (nothing is consumed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqStats {
    /// The queues whose DLQs are read (default: all three).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<Queue>>,
    /// How many of the most recent dead letters to show per queue (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peek: Option<u16>,
}

/// Replays dead letters into their source queue: all of them, or those matching a task, an error class
/// and a time window. A dry run (the default) only counts and lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redrive {
    /// The queue whose DLQ is replayed.
    pub queue: Queue,
    /// Only messages of this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Only messages that failed with this error class (e.g. `database_unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// Only messages that failed at or after this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_after: Option<DateTime<Utc>>,
    /// Only messages that failed before this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_before: Option<DateTime<Utc>>,
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

/// Deletes every message of a queue's DLQ.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    pub queue: Queue,
    /// Must read `purge <queue>-dlq`, e.g. `purge default-dlq`.
    pub confirm: String,
}

/// The schedules (EventBridge rules) with their next fire times.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedules {
    /// Fire times listed per schedule (default 3, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<usize>,
}

/// Live records of the lease table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListLeases {
    /// `run` (single-instance leases, the default) or `idempotency` (delivery records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<LeaseKind>,
}

/// Deletes one lease whoever holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseLease {
    /// The lease key, e.g. `run:compute_price_metrics`.
    pub key: String,
    /// Why: kept in the log with the removed holder (at least 3 characters).
    pub reason: String,
}

/// Validates a task's arguments and sends it to its queue (routing from the registry).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// A registered task, e.g. `compute_price_metrics`.
    pub task: String,
    /// The task's arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// The envelope id (idempotency key); a new UUID by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The runs of one chain in the order they started: a run that started it (an ingestion, a schedule's firing,
/// a trigger) and everything it caused, each with its outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// The chain id: the key of the run that started it (a run report's `chain_id`).
    pub id: String,
    /// Runs listed at most (default 200, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Applies the embedded database migrations the database lacks (safe under concurrent calls), or lists them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migrate {
    /// List what would be applied, apply nothing (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// Parses a direct invoke's payload: a precise `invalid_arguments` error for anything else.
pub fn parse(payload: Value) -> Result<OpsRequest, InvokeError> {
    serde_json::from_value(payload).map_err(|e| InvokeError {
        error_type: class::INVALID_KWARGS.into(),
        message: format!(
            "not an ops request ({e}); actions: dlq_stats, redrive, purge, schedules, leases, release_lease, trigger, chain, migrate"
        ),
    })
}

/// Runs operator actions with the default queue's runtime.
pub struct Ops {
    runtime: Runtime,
    sqs: crate::lazy_client::LazyClient<aws_sdk_sqs::Client>,
}

impl Ops {
    /// `runtime` must be the default queue's: the operator tasks run there.
    pub fn new(runtime: Runtime, sqs: crate::lazy_client::LazyClient<aws_sdk_sqs::Client>) -> Ops {
        Ops { runtime, sqs }
    }

    pub async fn execute(
        &self,
        request: OpsRequest,
        invocation: Invocation,
    ) -> Result<Value, InvokeError> {
        let (task, kwargs) = match request {
            OpsRequest::Schedules(s) => return schedules(self.runtime.registry(), s, Utc::now()),
            OpsRequest::Trigger(t) => return self.trigger(t).await,
            OpsRequest::Chain(c) => return self.chain(c).await,
            OpsRequest::Migrate(m) => {
                let report =
                    crate::migrations::migrate(self.runtime.db(), m.dry_run.unwrap_or(false))
                        .await?;
                return Ok(json!(report));
            }
            OpsRequest::DlqStats(s) => ("dlq_report", to_kwargs(&s)),
            OpsRequest::Redrive(r) => ("dlq_redrive", to_kwargs(&r)),
            OpsRequest::Purge(p) => ("dlq_purge", to_kwargs(&p)),
            OpsRequest::Leases(l) => {
                let mut kwargs = to_kwargs(&l);
                kwargs.insert("action".into(), json!("list"));
                ("leases", kwargs)
            }
            OpsRequest::ReleaseLease(r) => {
                let mut kwargs = to_kwargs(&r);
                kwargs.insert("action".into(), json!("release"));
                ("leases", kwargs)
            }
        };
        let envelope = Envelope::new(task, kwargs);
        self.runtime
            .handle(
                serde_json::to_value(&envelope).unwrap_or_default(),
                invocation,
            )
            .await
    }

    async fn trigger(&self, t: Trigger) -> Result<Value, InvokeError> {
        let (queue, mut envelope) = self.runtime.registry().envelope(&t.task, t.kwargs)?;
        envelope.id = Some(t.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()));
        let url = self.runtime.settings().urls(queue).queue.clone();
        let out = self
            .sqs
            .send_message()
            .queue_url(&url)
            .message_body(envelope.to_json())
            .send()
            .await
            .map_err(|e| InvokeError::from(crate::error::from_sdk_error("SendMessage", e)))?;
        Ok(json!({
            "queue": queue,
            "message_id": out.message_id(),
            "envelope": envelope,
        }))
    }
}

impl Ops {
    async fn chain(&self, c: Chain) -> Result<Value, InvokeError> {
        let limit = c.limit.unwrap_or(200);
        if !(1..=1000).contains(&limit) || c.id.is_empty() {
            return Err(InvokeError {
                error_type: class::INVALID_KWARGS.into(),
                message: format!(
                    "chain needs an id and a limit between 1 and 1000, got id `{}`, limit {limit}",
                    c.id
                ),
            });
        }
        let runs = crate::db::chain_runs(self.runtime.db(), &c.id, i64::from(limit)).await?;
        Ok(json!({ "chain_id": c.id, "runs": runs }))
    }
}

fn to_kwargs<T: Serialize>(args: &T) -> Map<String, Value> {
    match serde_json::to_value(args) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Every schedule with its next `next` fire times after `now`.
pub fn schedules(
    registry: &Registry,
    request: Schedules,
    now: DateTime<Utc>,
) -> Result<Value, InvokeError> {
    let next = request.next.unwrap_or(3);
    if !(1..=50).contains(&next) {
        return Err(InvokeError {
            error_type: class::INVALID_KWARGS.into(),
            message: format!("next must be between 1 and 50, got {next}"),
        });
    }
    let mut out = Vec::new();
    for (spec, schedule) in registry.schedules() {
        let expr: ScheduleExpression = schedule.expression.parse().map_err(|e| InvokeError {
            error_type: "invalid_schedule".into(),
            message: format!("task `{}`, schedule `{}`: {e}", spec.name, schedule.name),
        })?;
        out.push(json!({
            "rule": schedule.rule_name(spec.name),
            "task": spec.name,
            "queue": spec.queue,
            "expression": schedule.expression,
            "kwargs": serde_json::from_str::<Value>(schedule.kwargs)
                .unwrap_or_else(|_| Value::String(schedule.kwargs.to_string())),
            "enabled": schedule.enabled,
            "why": schedule.why.split_whitespace().collect::<Vec<_>>().join(" "),
            "next": expr.upcoming(now, next),
        }));
    }
    Ok(json!({ "schedules": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_action_and_reject_unknown_fields() {
        let r = parse(
            json!({"action": "redrive", "queue": "default", "task": "ping", "dry_run": false}),
        )
        .unwrap();
        match r {
            OpsRequest::Redrive(r) => {
                assert_eq!(r.queue, Queue::Default);
                assert_eq!(
                    Value::Object(to_kwargs(&r)),
                    json!({"queue": "default", "task": "ping", "dry_run": false})
                );
            }
            other => panic!("{other:?}"),
        }
        let e =
            parse(json!({"action": "redrive", "queue": "default", "tsak": "ping"})).unwrap_err();
        assert_eq!(e.error_type, "invalid_kwargs");
        assert!(e.message.contains("tsak"), "{}", e.message);
        let e = parse(json!({"action": "explode"})).unwrap_err();
        assert!(e.message.contains("explode"), "{}", e.message);
        assert!(parse(json!({"queues": ["default"]})).is_err());
    }

    #[test]
    fn schedules_list_every_rule_with_its_next_fire_times() {
        let registry = crate::tasks::registry();
        let now = DateTime::parse_from_rfc3339("2026-11-26T15:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let listed = schedules(&registry, Schedules { next: Some(2) }, now).unwrap();
        let rules = listed["schedules"].as_array().unwrap();
        assert_eq!(rules.len(), registry.schedules().count());
        for rule in rules {
            let next = rule["next"].as_array().unwrap();
            assert_eq!(next.len(), 2, "{rule}");
            let first: DateTime<Utc> = serde_json::from_value(next[0].clone()).unwrap();
            let second: DateTime<Utc> = serde_json::from_value(next[1].clone()).unwrap();
            assert!(now < first && first < second, "{rule}");
        }
        assert!(schedules(&registry, Schedules { next: Some(0) }, now).is_err());
    }
}
