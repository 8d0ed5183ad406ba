//! The dashboard and alarms of a deployment, generated from the registry like the schedule rules: one widget
//! row per queue, function and task, and an alarm on everything that needs a person (a backlog, dead letters,
//! a missing heartbeat, a schedule that failed to deliver, function errors and throttles, a lease held past
//! its task's limit). Every alarm's description points at its runbook entry in `docs/operating.md`.
//!
//! The task metrics named here are those the runtime writes in Embedded Metric Format
//! ([`dualcaster::metrics`]); an integration test runs tasks and checks each one against the emitted lines.

use std::fmt::Write as _;

use serde_json::{json, Value};

use dualcaster::metrics::{FAILURES, LEASES_HELD_PAST_LIMIT, NAMESPACE};
use dualcaster::queue::Queue;
use dualcaster::registry::Registry;
use dualcaster::schedule::ScheduleExpression;

use super::{camel, dlq_logical_id, quoted, rule_logical_id};

/// The functions of a deployment: one per queue, and the operators' function.
pub fn function_names() -> Vec<&'static str> {
    Queue::ALL
        .iter()
        .map(|q| q.as_str())
        .chain(["ops"])
        .collect()
}

/// The runbook page; each alarm names its section.
pub const RUNBOOK: &str = "docs/operating.md";

/// One alarm of the generated block.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub logical_id: String,
    /// What it means, for the notification; the runbook section follows it.
    pub description: String,
    /// The heading of its runbook entry in [`RUNBOOK`] (a GitHub anchor).
    pub runbook: &'static str,
    pub namespace: &'static str,
    pub metric: String,
    /// Dimension name and value; `${AWS::StackName}` in a value is substituted.
    pub dimensions: Vec<(&'static str, String)>,
    pub statistic: &'static str,
    pub period_secs: u32,
    pub evaluation_periods: u32,
    pub threshold: f64,
    pub comparison: &'static str,
    /// `breaching` for a metric whose absence is the problem (the heartbeat).
    pub missing_data: &'static str,
}

/// How old the oldest message of `queue` may get before someone should look: four runs' worth of its time
/// limit, and never under 15 minutes.
pub fn backlog_threshold_secs(queue: Queue) -> u64 {
    (queue.time_limit().as_secs() * 4).max(900)
}

/// Every alarm, in the order of the template.
pub fn alarms(registry: &Registry) -> Vec<Alarm> {
    let mut out = Vec::new();
    for queue in Queue::ALL {
        let q = queue.as_str();
        out.push(Alarm {
            logical_id: format!("{}DeadLetterAlarm", camel(q)),
            description: format!("Messages are waiting in the {q} dead-letter queue."),
            runbook: "dead-letters",
            namespace: "AWS/SQS",
            metric: "ApproximateNumberOfMessagesVisible".into(),
            dimensions: vec![(
                "QueueName",
                format!("!GetAtt {}.QueueName", dlq_logical_id(queue)),
            )],
            statistic: "Maximum",
            period_secs: 300,
            evaluation_periods: 1,
            threshold: 0.0,
            comparison: "GreaterThanThreshold",
            missing_data: "notBreaching",
        });
        let limit = backlog_threshold_secs(queue);
        out.push(Alarm {
            logical_id: format!("{}BacklogAlarm", camel(q)),
            description: format!(
                "The oldest message of the {q} queue has waited more than {limit} s: its function is not keeping up or not consuming."
            ),
            runbook: "backlog",
            namespace: "AWS/SQS",
            metric: "ApproximateAgeOfOldestMessage".into(),
            dimensions: vec![("QueueName", format!("${{AWS::StackName}}-{q}"))],
            statistic: "Maximum",
            period_secs: 300,
            evaluation_periods: 1,
            threshold: limit as f64,
            comparison: "GreaterThanThreshold",
            missing_data: "notBreaching",
        });
    }
    if let Some((spec, schedule)) = registry
        .schedules()
        .find(|(spec, s)| spec.name == "ping" && s.enabled)
    {
        let period = fire_interval_secs(schedule.expression).unwrap_or(900);
        out.push(Alarm {
            logical_id: "HeartbeatMissingAlarm".into(),
            description: format!(
                "No successful heartbeat ({} every {} min) for two intervals: the default queue, its function or Postgres is down.",
                spec.name,
                period / 60
            ),
            runbook: "heartbeat-missing",
            namespace: NAMESPACE,
            metric: "processed".into(),
            dimensions: vec![
                ("queue", spec.queue.as_str().to_owned()),
                ("task", spec.name.to_owned()),
            ],
            statistic: "Sum",
            period_secs: period,
            evaluation_periods: 2,
            threshold: 1.0,
            comparison: "LessThanThreshold",
            missing_data: "breaching",
        });
    }
    for (spec, schedule) in registry.schedules().filter(|(_, s)| s.enabled) {
        let rule = schedule.rule_name(spec.name);
        out.push(Alarm {
            logical_id: format!("{}FailedAlarm", rule_logical_id(spec.name, schedule.name)),
            description: format!(
                "The schedule {rule} failed to deliver its message to the {} queue.",
                spec.queue
            ),
            runbook: "schedule-delivery-failed",
            namespace: "AWS/Events",
            metric: "FailedInvocations".into(),
            dimensions: vec![("RuleName", format!("${{AWS::StackName}}-{rule}"))],
            statistic: "Sum",
            period_secs: 300,
            evaluation_periods: 1,
            threshold: 0.0,
            comparison: "GreaterThanThreshold",
            missing_data: "notBreaching",
        });
    }
    for function in function_names() {
        for (metric, runbook, what) in [
            ("Errors", "function-errors", "invocations failed as a whole"),
            (
                "Throttles",
                "function-throttles",
                "invocations were throttled",
            ),
        ] {
            out.push(Alarm {
                logical_id: format!("{}Function{metric}Alarm", camel(function)),
                description: format!("The {function} function: {what}."),
                runbook,
                namespace: "AWS/Lambda",
                metric: metric.into(),
                dimensions: vec![("FunctionName", format!("${{AWS::StackName}}-{function}"))],
                statistic: "Sum",
                period_secs: 300,
                evaluation_periods: 1,
                threshold: 0.0,
                comparison: "GreaterThanThreshold",
                missing_data: "notBreaching",
            });
        }
    }
    out.push(Alarm {
        logical_id: "LeaseHeldPastLimitAlarm".into(),
        description: "A single-instance lease is held longer than its task can run: its holder is gone and the task cannot start again until the lease expires.".into(),
        runbook: "lease-held-past-its-limit",
        namespace: NAMESPACE,
        metric: LEASES_HELD_PAST_LIMIT.into(),
        dimensions: Vec::new(),
        statistic: "Maximum",
        period_secs: 900,
        evaluation_periods: 1,
        threshold: 0.0,
        comparison: "GreaterThanThreshold",
        missing_data: "notBreaching",
    });
    out
}

/// Seconds between two firings of a cron expression, as a CloudWatch period (a multiple of 60).
fn fire_interval_secs(expression: &str) -> Option<u32> {
    let expr: ScheduleExpression = expression.parse().ok()?;
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
        .ok()?
        .to_utc();
    let next = expr.upcoming(start, 3);
    let gap = (*next.get(2)? - *next.get(1)?).num_seconds();
    u32::try_from(gap.max(60) / 60 * 60).ok()
}

/// A CloudWatch dashboard metric line: `[namespace, name, dim, value, ..., {options}]`.
fn metric(namespace: &str, name: &str, dims: &[(&str, &str)], options: Value) -> Value {
    let mut line = vec![json!(namespace), json!(name)];
    for (k, v) in dims {
        line.push(json!(k));
        line.push(json!(v));
    }
    line.push(options);
    Value::Array(line)
}

fn widget(title: &str, width: u32, metrics: Vec<Value>, extra: Value) -> Value {
    let mut properties = json!({
        "title": title,
        "region": "${AWS::Region}",
        "view": "timeSeries",
        "stacked": false,
        "period": 300,
        "metrics": metrics,
    });
    if let (Some(p), Value::Object(more)) = (properties.as_object_mut(), extra) {
        p.extend(more);
    }
    json!({"type": "metric", "width": width, "height": 6, "properties": properties})
}

/// The dashboard's widgets, top to bottom: queues, functions, ingestion rate, failures by class, lease
/// contention, then two per task (runs by outcome, duration p50/p99).
pub fn dashboard_widgets(registry: &Registry) -> Vec<Value> {
    let mut widgets = Vec::new();
    for queue in Queue::ALL {
        let q = queue.as_str();
        let name = format!("${{AWS::StackName}}-{q}");
        let dlq = format!("${{AWS::StackName}}-{q}-dlq");
        widgets.push(widget(
            &format!("{q} queue: backlog and dead letters"),
            8,
            vec![
                metric(
                    "AWS/SQS",
                    "ApproximateNumberOfMessagesVisible",
                    &[("QueueName", &name)],
                    json!({"stat": "Maximum", "label": "waiting"}),
                ),
                metric(
                    "AWS/SQS",
                    "ApproximateAgeOfOldestMessage",
                    &[("QueueName", &name)],
                    json!({"stat": "Maximum", "label": "oldest message (s)", "yAxis": "right"}),
                ),
                metric(
                    "AWS/SQS",
                    "ApproximateNumberOfMessagesVisible",
                    &[("QueueName", &dlq)],
                    json!({"stat": "Maximum", "label": "dead letters"}),
                ),
            ],
            json!({}),
        ));
    }
    for function in function_names() {
        let name = format!("${{AWS::StackName}}-{function}");
        let dims = [("FunctionName", name.as_str())];
        widgets.push(widget(
            &format!("{function} function"),
            6,
            vec![
                metric("AWS/Lambda", "Invocations", &dims, json!({"stat": "Sum"})),
                metric("AWS/Lambda", "Errors", &dims, json!({"stat": "Sum"})),
                metric("AWS/Lambda", "Throttles", &dims, json!({"stat": "Sum"})),
                metric(
                    "AWS/Lambda",
                    "ConcurrentExecutions",
                    &dims,
                    json!({"stat": "Maximum", "yAxis": "right"}),
                ),
            ],
            json!({}),
        ));
    }
    let mut rate = Vec::new();
    for (i, spec) in registry
        .iter()
        .filter(|s| s.queue == Queue::Ingestion)
        .enumerate()
    {
        rate.push(metric(
            NAMESPACE,
            "processed",
            &[("queue", spec.queue.as_str()), ("task", spec.name)],
            json!({"stat": "Sum", "id": format!("m{i}"), "visible": false}),
        ));
        rate.push(json!([{"expression": format!("m{i} / PERIOD(m{i})"), "label": format!("{}: items per second", spec.name), "id": format!("rate{i}")}]));
    }
    widgets.push(widget("ingestion: items per second", 12, rate, json!({})));
    widgets.push(widget(
        "failures by task and error class",
        12,
        vec![json!([{
            "expression": format!("SEARCH('{{{NAMESPACE},error_class,queue,task}} MetricName=\"{FAILURES}\"', 'Sum', 300)"),
            "label": "",
            "id": "failures",
        }])],
        json!({}),
    ));
    let mut contention = Vec::new();
    for spec in registry.iter().filter(|s| s.single_instance.is_some()) {
        let dims = [("queue", spec.queue.as_str()), ("task", spec.name)];
        contention.push(metric(
            NAMESPACE,
            "deferred",
            &dims,
            json!({"stat": "Sum", "label": format!("{}: deferred", spec.name)}),
        ));
        contention.push(metric(
            NAMESPACE,
            "skipped",
            &dims,
            json!({"stat": "Sum", "label": format!("{}: skipped", spec.name)}),
        ));
    }
    contention.push(metric(
        NAMESPACE,
        LEASES_HELD_PAST_LIMIT,
        &[],
        json!({"stat": "Maximum", "label": "leases held past their limit", "yAxis": "right"}),
    ));
    widgets.push(widget(
        "lease contention: deferred and skipped runs",
        12,
        contention,
        json!({}),
    ));
    for spec in registry.iter() {
        let dims = [("queue", spec.queue.as_str()), ("task", spec.name)];
        widgets.push(widget(
            &format!("{}: runs by outcome", spec.name),
            12,
            vec![
                metric(
                    NAMESPACE,
                    "duration",
                    &dims,
                    json!({"stat": "SampleCount", "label": "runs"}),
                ),
                metric(
                    NAMESPACE,
                    "errors",
                    &dims,
                    json!({"stat": "Sum", "label": "failed"}),
                ),
                metric(
                    NAMESPACE,
                    "retries",
                    &dims,
                    json!({"stat": "Sum", "label": "retried"}),
                ),
                metric(
                    NAMESPACE,
                    "dead_lettered",
                    &dims,
                    json!({"stat": "Sum", "label": "dead-lettered"}),
                ),
                metric(
                    NAMESPACE,
                    "skipped",
                    &dims,
                    json!({"stat": "Sum", "label": "skipped"}),
                ),
                metric(
                    NAMESPACE,
                    "processed",
                    &dims,
                    json!({"stat": "Sum", "label": "items processed", "yAxis": "right"}),
                ),
            ],
            json!({}),
        ));
        widgets.push(widget(
            &format!("{}: duration (ms)", spec.name),
            12,
            vec![
                metric(
                    NAMESPACE,
                    "duration",
                    &dims,
                    json!({"stat": "p50", "label": "p50"}),
                ),
                metric(
                    NAMESPACE,
                    "duration",
                    &dims,
                    json!({"stat": "p99", "label": "p99"}),
                ),
            ],
            json!({}),
        ));
    }
    widgets
}

/// The generated block: the dashboard, then every alarm.
pub fn observability_block(registry: &Registry) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  TasksDashboard:");
    let _ = writeln!(out, "    Type: AWS::CloudWatch::Dashboard");
    let _ = writeln!(out, "    Properties:");
    let _ = writeln!(
        out,
        "      DashboardName: !Sub \"${{AWS::StackName}}-tasks\""
    );
    let _ = writeln!(out, "      DashboardBody: !Sub |");
    let _ = writeln!(out, "        {{\"widgets\": [");
    let widgets = dashboard_widgets(registry);
    for (i, w) in widgets.iter().enumerate() {
        let comma = if i + 1 < widgets.len() { "," } else { "" };
        let _ = writeln!(out, "          {w}{comma}");
    }
    let _ = writeln!(out, "        ]}}");
    let _ = writeln!(out);
    for alarm in alarms(registry) {
        let _ = writeln!(out, "  {}:", alarm.logical_id);
        let _ = writeln!(out, "    Type: AWS::CloudWatch::Alarm");
        let _ = writeln!(out, "    Properties:");
        // Named, so a notification or the console says which stack and what, in full.
        let _ = writeln!(
            out,
            "      AlarmName: !Sub \"${{AWS::StackName}}-{}\"",
            alarm.logical_id
        );
        let _ = writeln!(
            out,
            "      AlarmDescription: {}",
            quoted(&format!(
                "{} Runbook: {RUNBOOK}#{}",
                alarm.description, alarm.runbook
            ))
        );
        let _ = writeln!(out, "      Namespace: {}", alarm.namespace);
        let _ = writeln!(out, "      MetricName: {}", alarm.metric);
        if !alarm.dimensions.is_empty() {
            let _ = writeln!(out, "      Dimensions:");
            for (name, value) in &alarm.dimensions {
                let _ = writeln!(out, "        - Name: {name}");
                let value = if value.starts_with('!') {
                    value.clone()
                } else if value.contains("${") {
                    format!("!Sub \"{value}\"")
                } else {
                    value.clone()
                };
                let _ = writeln!(out, "          Value: {value}");
            }
        }
        let _ = writeln!(out, "      Statistic: {}", alarm.statistic);
        let _ = writeln!(out, "      Period: {}", alarm.period_secs);
        let _ = writeln!(out, "      EvaluationPeriods: {}", alarm.evaluation_periods);
        let _ = writeln!(out, "      Threshold: {}", alarm.threshold);
        let _ = writeln!(out, "      ComparisonOperator: {}", alarm.comparison);
        let _ = writeln!(out, "      TreatMissingData: {}", alarm.missing_data);
        let _ = writeln!(
            out,
            "      AlarmActions: !If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref \"AWS::NoValue\"]"
        );
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's anchor of a heading: lower case, punctuation other than `-` dropped, spaces to `-`.
    fn anchor(heading: &str) -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }

    #[test]
    fn every_alarm_points_at_a_runbook_entry_that_exists() {
        let page = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(RUNBOOK),
        )
        .unwrap();
        let anchors: Vec<String> = page
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|h| anchor(h.trim_start_matches('#')))
            .collect();
        let alarms = alarms(&dualcaster::tasks::registry());
        for alarm in &alarms {
            assert!(
                anchors.contains(&alarm.runbook.to_owned()),
                "{}: no heading for #{} in {RUNBOOK}",
                alarm.logical_id,
                alarm.runbook
            );
        }
        // Seven kinds of alarm, each with its entry.
        let mut kinds: Vec<&str> = alarms.iter().map(|a| a.runbook).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
    }

    #[test]
    fn backlog_thresholds_and_heartbeat_period_by_hand() {
        assert_eq!(backlog_threshold_secs(Queue::Ingestion), 3600);
        assert_eq!(backlog_threshold_secs(Queue::Analytics), 3600);
        assert_eq!(backlog_threshold_secs(Queue::Default), 900);
        assert_eq!(fire_interval_secs("cron(0/15 * * * ? *)"), Some(900));
        assert_eq!(fire_interval_secs("cron(5 * * * ? *)"), Some(3600));
        assert_eq!(fire_interval_secs("rate(10 minutes)"), Some(600));
    }
}
