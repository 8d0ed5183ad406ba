//! The registry: every task's name, queue, retry policy and entry point, in one place.
//!
//! A task is a type implementing [`Task`] in its own file under `tasks/`; its `pub mod` line and its line in
//! the `tasks!` list of `tasks/mod.rs` register it (docs/writing-a-task.md). Routing (which queue a task goes to) comes from here, for the functions, the CLI and the
//! SAM template alike.

use std::collections::BTreeMap;
use std::future::Future;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::context::TaskContext;
use crate::envelope::Envelope;
use crate::error::{class, TaskError};
use crate::queue::Queue;
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

/// A unit of background work.
///
/// ```text
/// pub struct Ping;
/// impl Task for Ping {
///     const NAME: &'static str = "ping";
///     const QUEUE: Queue = Queue::Default;
///     const RETRY: RetryPolicy = RetryPolicy::STANDARD;
///     type Args = PingArgs;
///     type Report = PingReport;
///     async fn run(args: PingArgs, ctx: TaskContext) -> Result<PingReport, TaskError> { ... }
/// }
/// ```
pub trait Task: Send + Sync + 'static {
    /// The name in envelopes, schedules, metrics and history. Never rename a deployed task.
    const NAME: &'static str;
    /// The queue (and so the function) that runs it.
    const QUEUE: Queue;
    /// How retryable failures are retried.
    const RETRY: RetryPolicy = RetryPolicy::STANDARD;
    /// Only one run at a time (per the selected arguments), and what a second run does meanwhile.
    const SINGLE_INSTANCE: Option<SingleInstance> = None;
    /// Recognise duplicate deliveries and return the stored report instead of running again.
    const IDEMPOTENCY: Option<Idempotency> = None;
    /// EventBridge rules that enqueue this task (the SAM template's rules are generated from these).
    const SCHEDULES: &'static [Schedule] = &[];

    /// Typed arguments: unknown fields must be rejected (`#[serde(deny_unknown_fields)]`); bounds are
    /// declared with `garde`.
    type Args: DeserializeOwned + garde::Validate<Context = ()> + Send + 'static;
    type Report: TaskReport;

    fn run(
        args: Self::Args,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Self::Report, TaskError>> + Send;

    /// What the arguments must mean beyond their types and `garde` bounds: one argument against another, or
    /// against today's date. Called after the bounds, both before a message is sent (`check_kwargs`:
    /// `dualcaster enqueue`, the ops `trigger`, `Registry::envelope`) and when the task runs, so arguments
    /// refused here never reach a queue, and a message that gets past a producer anyway is dead-lettered as
    /// `invalid_kwargs` with this message. It sees no database: what needs one is checked in `run`.
    fn validate(args: &Self::Args) -> Result<(), String> {
        let _ = args;
        Ok(())
    }
}

/// What a second run does while a single-instance task is already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDuplicate {
    /// Acknowledge the message and report `skipped` with the holder and its expiry (scheduled runs).
    Skip,
    /// Hand the message back to come again after this delay.
    Defer(std::time::Duration),
    /// Fail permanently (`lease_held`): the message goes to the DLQ.
    Fail,
}

/// Single-instance runs: the lease key is the task name plus the values of `keys` in the kwargs (like
/// celery-once's `keys`); arguments not given count as `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SingleInstance {
    pub keys: &'static [&'static str],
    pub on_duplicate: OnDuplicate,
}

/// Idempotent deliveries: the key is the envelope's `idempotency_key`, else its `id`, else the SQS
/// message id. A completed key returns its stored report for `keep`; the same key with other arguments is
/// an `idempotency_conflict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Idempotency {
    pub keep: std::time::Duration,
}

/// A schedule: an EventBridge rule that sends the task's envelope to its queue, so scheduled runs get
/// retries and the DLQ like any other message. Each firing's envelope id is `schedule:<rule>:<event time>`, so a
/// duplicated firing is recognised by idempotent tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Schedule {
    /// Unique per task; the rule is `<task>-<name>`.
    pub name: &'static str,
    /// `cron(...)` (EventBridge's six fields, UTC) or `rate(...)`.
    pub expression: &'static str,
    /// The kwargs each firing sends, as a JSON object.
    pub kwargs: &'static str,
    pub enabled: bool,
    /// Why this cadence: kept next to it and in the rule's description.
    pub why: &'static str,
}

impl Schedule {
    /// The rule's name suffix, `<task>-<name>`.
    pub fn rule_name(&self, task: &str) -> String {
        format!("{task}-{}", self.name)
    }
}

/// A finished run's report with the task type erased.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskOutput {
    pub counts: Counts,
    pub skipped: Option<String>,
    pub detail: Value,
}

type RunFn =
    fn(Map<String, Value>, TaskContext) -> BoxFuture<'static, Result<TaskOutput, TaskError>>;
type CheckFn = fn(&Map<String, Value>) -> Result<(), TaskError>;

/// A registered task, type-erased so tasks of every type fit in one registry.
#[derive(Clone, Copy)]
pub struct TaskSpec {
    pub name: &'static str,
    pub queue: Queue,
    pub retry: RetryPolicy,
    pub single_instance: Option<SingleInstance>,
    pub idempotency: Option<Idempotency>,
    pub schedules: &'static [Schedule],
    run: RunFn,
    check: CheckFn,
}

impl std::fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSpec")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("retry", &self.retry)
            .field("single_instance", &self.single_instance)
            .field("idempotency", &self.idempotency)
            .field("schedules", &self.schedules)
            .finish_non_exhaustive()
    }
}

impl TaskSpec {
    pub fn of<T: Task>() -> TaskSpec {
        TaskSpec {
            name: T::NAME,
            queue: T::QUEUE,
            retry: T::RETRY,
            single_instance: T::SINGLE_INSTANCE,
            idempotency: T::IDEMPOTENCY,
            schedules: T::SCHEDULES,
            run: run_erased::<T>,
            check: |kwargs| parse_args::<T>(kwargs.clone()).map(drop),
        }
    }

    /// Validates arguments without running: used before enqueueing, so bad kwargs fail at the caller.
    pub fn check_kwargs(&self, kwargs: &Map<String, Value>) -> Result<(), TaskError> {
        (self.check)(kwargs)
    }

    /// Parses the arguments and runs the task. Invalid arguments are a permanent `invalid_kwargs` error.
    pub fn run(
        &self,
        kwargs: Map<String, Value>,
        ctx: TaskContext,
    ) -> BoxFuture<'static, Result<TaskOutput, TaskError>> {
        (self.run)(kwargs, ctx)
    }
}

/// The path of the first string (value or key) holding a NUL character, which Postgres can store in
/// neither `text` nor `jsonb`: refused with the arguments rather than failing later as a database error.
fn nul_path(value: &Value, path: &mut Vec<String>) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().enumerate().any(|(i, v)| {
            path.push(format!("[{i}]"));
            let found = nul_path(v, path);
            if !found {
                path.pop();
            }
            found
        }),
        Value::Object(map) => map.iter().any(|(k, v)| {
            path.push(k.escape_debug().to_string());
            let found = k.contains('\0') || nul_path(v, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    }
}

fn parse_args<T: Task>(kwargs: Map<String, Value>) -> Result<T::Args, TaskError> {
    let kwargs = Value::Object(kwargs);
    let mut path = Vec::new();
    if nul_path(&kwargs, &mut path) {
        let path = path.join(".").replace(".[", "[");
        return Err(TaskError::permanent(
            class::INVALID_KWARGS,
            format!(
                "task `{}`: {path}: a NUL character (\\u0000) cannot be stored",
                T::NAME
            ),
        ));
    }
    // The path names the argument at fault (`work_ms: invalid value: integer -1, expected u32`).
    let args: T::Args = serde_path_to_error::deserialize(kwargs).map_err(|e| {
        TaskError::permanent(
            class::INVALID_KWARGS,
            format!("task `{}`: {}", T::NAME, crate::error::path_error(&e)),
        )
    })?;
    garde::Validate::validate(&args).map_err(|report| {
        let problems: Vec<String> = report
            .iter()
            .map(|(path, error)| format!("{path}: {error}"))
            .collect();
        TaskError::permanent(
            class::INVALID_KWARGS,
            format!("task `{}`: {}", T::NAME, problems.join("; ")),
        )
    })?;
    T::validate(&args).map_err(|problem| {
        TaskError::permanent(
            class::INVALID_KWARGS,
            format!("task `{}`: {problem}", T::NAME),
        )
    })?;
    Ok(args)
}

fn run_erased<T: Task>(
    kwargs: Map<String, Value>,
    ctx: TaskContext,
) -> BoxFuture<'static, Result<TaskOutput, TaskError>> {
    Box::pin(async move {
        let args = parse_args::<T>(kwargs)?;
        let report = T::run(args, ctx).await?;
        let detail = serde_json::to_value(&report).map_err(|e| {
            TaskError::permanent(
                class::TASK_FAILED,
                format!("task `{}`: report is not serializable: {e}", T::NAME),
            )
        })?;
        Ok(TaskOutput {
            counts: report.counts(),
            skipped: report.skipped(),
            detail,
        })
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("task `{0}` is registered twice")]
    Duplicate(&'static str),
    #[error("task name `{0}` must be lower snake_case ASCII")]
    BadName(&'static str),
}

/// Every task this build knows, by name.
#[derive(Debug, Clone)]
pub struct Registry {
    tasks: BTreeMap<&'static str, TaskSpec>,
}

impl Registry {
    pub fn from_specs(
        specs: impl IntoIterator<Item = TaskSpec>,
    ) -> Result<Registry, RegistryError> {
        let mut registry = Registry {
            tasks: BTreeMap::new(),
        };
        for spec in specs {
            registry = registry.with(spec)?;
        }
        Ok(registry)
    }

    /// Adds a task (tests register their own this way).
    pub fn with(mut self, spec: TaskSpec) -> Result<Registry, RegistryError> {
        let valid = !spec.name.is_empty()
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && spec.name.as_bytes()[0].is_ascii_lowercase();
        if !valid {
            return Err(RegistryError::BadName(spec.name));
        }
        if self.tasks.insert(spec.name, spec).is_some() {
            return Err(RegistryError::Duplicate(spec.name));
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.get(name)
    }

    /// Looks a task up, or explains which tasks exist.
    pub fn lookup(&self, name: &str) -> Result<&TaskSpec, TaskError> {
        self.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.tasks.keys().copied().collect();
            TaskError::permanent(
                class::UNKNOWN_TASK,
                format!("unknown task `{name}` (registered: {})", known.join(", ")),
            )
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &TaskSpec> {
        self.tasks.values()
    }

    /// The queue a task is routed to.
    pub fn route(&self, name: &str) -> Result<Queue, TaskError> {
        Ok(self.lookup(name)?.queue)
    }

    /// Every schedule with its task, in task order.
    pub fn schedules(&self) -> impl Iterator<Item = (&TaskSpec, &Schedule)> {
        self.tasks
            .values()
            .flat_map(|spec| spec.schedules.iter().map(move |s| (spec, s)))
    }

    /// Checks every schedule: a valid expression that fires at least once, kwargs the task accepts, and a
    /// rule name EventBridge accepts, unique per task. Errors name the task, the schedule and the field.
    pub fn validate_schedules(&self) -> Result<(), Vec<String>> {
        use crate::schedule::ScheduleExpression;
        let mut problems = Vec::new();
        let mut rules = std::collections::HashSet::new();
        for (spec, schedule) in self.schedules() {
            let at = format!("task `{}`, schedule `{}`", spec.name, schedule.name);
            let rule = schedule.rule_name(spec.name);
            if !rules.insert(rule.clone()) {
                problems.push(format!("{at}: the rule name `{rule}` is used twice"));
            }
            if rule.len() > 40
                || !rule
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                problems.push(format!("{at}: rule name `{rule}` must be at most 40 of [A-Za-z0-9_-] (the stack name is prefixed)"));
            }
            match schedule.expression.parse::<ScheduleExpression>() {
                Err(e) => problems.push(format!("{at}: `{}`: {e}", schedule.expression)),
                Ok(expr) => {
                    if expr.upcoming(chrono::Utc::now(), 1).is_empty() {
                        problems.push(format!("{at}: `{}` never fires again", schedule.expression));
                    }
                }
            }
            match serde_json::from_str::<Value>(schedule.kwargs) {
                Ok(Value::Object(kwargs)) => {
                    if let Err(e) = spec.check_kwargs(&kwargs) {
                        problems.push(format!("{at}: kwargs: {}", e.message()));
                    }
                }
                _ => problems.push(format!(
                    "{at}: kwargs must be a JSON object, got `{}`",
                    schedule.kwargs
                )),
            }
            if schedule.why.trim().is_empty() {
                problems.push(format!("{at}: say why this cadence"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Builds a checked envelope for `task`: the task exists and the arguments are valid.
    pub fn envelope(
        &self,
        task: &str,
        kwargs: Map<String, Value>,
    ) -> Result<(Queue, Envelope), TaskError> {
        let spec = self.lookup(task)?;
        spec.check_kwargs(&kwargs)?;
        Ok((spec.queue, Envelope::new(task, kwargs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    fn kwargs(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn bad_schedules_are_reported_with_task_schedule_and_field() {
        let mut ping = *crate::tasks::registry().get("ping").unwrap();
        ping.schedules = &[
            Schedule {
                name: "bad-cron",
                expression: "cron(61 * * * ? *)",
                kwargs: "{}",
                enabled: true,
                why: "x",
            },
            Schedule {
                name: "bad-kwargs",
                expression: "rate(5 minutes)",
                kwargs: r#"{"work_ms": -1}"#,
                enabled: true,
                why: "x",
            },
            Schedule {
                name: "never",
                expression: "cron(0 0 30 2 ? *)",
                kwargs: "{}",
                enabled: true,
                why: "x",
            },
            Schedule {
                name: "never",
                expression: "rate(1 day)",
                kwargs: "[]",
                enabled: false,
                why: " ",
            },
        ];
        let problems = Registry::from_specs([ping])
            .unwrap()
            .validate_schedules()
            .unwrap_err();
        assert!(problems.contains(&"task `ping`, schedule `bad-cron`: `cron(61 * * * ? *)`: minutes: 61 is outside 0-59".to_owned()), "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("task `ping`, schedule `bad-kwargs`: kwargs: task `ping`:")),
            "{problems:#?}"
        );
        assert!(
            problems.contains(
                &"task `ping`, schedule `never`: `cron(0 0 30 2 ? *)` never fires again".to_owned()
            ),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("is used twice")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("kwargs must be a JSON object")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("say why")),
            "{problems:#?}"
        );
    }

    #[test]
    fn unknown_task_names_the_registered_ones() {
        let builtin = crate::tasks::registry();
        let two =
            Registry::from_specs([*builtin.get("ping").unwrap(), *builtin.get("noop").unwrap()]);
        let err = two.unwrap().lookup("pong").unwrap_err();
        assert_eq!(err.class(), "unknown_task");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(
            err.message().ends_with("(registered: noop, ping)"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn duplicates_and_bad_names_are_refused() {
        let ping = *crate::tasks::registry().get("ping").unwrap();
        let err = Registry::from_specs([ping, ping]).unwrap_err();
        assert_eq!(err, RegistryError::Duplicate("ping"));
        let mut bad = ping;
        bad.name = "Ping-Task";
        assert_eq!(
            Registry::from_specs([bad]).unwrap_err(),
            RegistryError::BadName("Ping-Task")
        );
    }

    #[test]
    fn envelope_checks_kwargs_before_anything_is_sent() {
        let r = crate::tasks::registry();
        let (queue, env) = r.envelope("ping", kwargs(json!({"note": "hi"}))).unwrap();
        assert_eq!(queue, Queue::Default);
        assert_eq!(env.task, "ping");

        let err = r.envelope("ping", kwargs(json!({"nope": 1}))).unwrap_err();
        assert_eq!(err.class(), "invalid_kwargs");
        assert!(
            err.message().contains("unknown field `nope`"),
            "{}",
            err.message()
        );

        let err = r
            .envelope("ping", kwargs(json!({"work_ms": "slow"})))
            .unwrap_err();
        assert_eq!(err.class(), "invalid_kwargs");

        let err = r
            .envelope("ping", kwargs(json!({"work_ms": 10_000_000})))
            .unwrap_err();
        assert_eq!(err.class(), "invalid_kwargs");
        assert!(err.message().contains("work_ms"), "{}", err.message());
    }
}
