//! The deployment rules every template must keep, one function each over the typed template: a DLQ with an
//! alarm behind every queue, visibility timeouts that outlast the function, partial batch responses and
//! bounded concurrency on every event source, IAM statements that name their resources, encryption
//! everywhere, and security-scan skips that say why. The alarm rules are in `alarm_rules.rs`.

use std::collections::BTreeSet;

use super::{alarm_rules, dlq_logical_id, queue_logical_id};
use crate::template::{SqsEventSource, Template};
use dualcaster::queue::Queue;

type Rule = fn(&Template) -> Vec<String>;

const RULES: &[Rule] = &[
    queues_are_encrypted,
    work_queues_redrive_to_a_dead_letter_queue,
    dead_letter_queues_have_an_alarm,
    tables_are_encrypted,
    event_sources_report_batch_item_failures,
    event_sources_bound_their_concurrency,
    visibility_outlasts_the_function,
    every_queue_has_its_function_and_dead_letter_queue,
    iam_names_its_resources,
    security_skips_give_their_reason,
    alarm_rules::work_queues_have_a_backlog_alarm,
    alarm_rules::schedules_have_a_delivery_alarm,
    alarm_rules::functions_have_error_and_throttle_alarms,
    alarm_rules::the_heartbeat_has_a_missing_data_alarm,
    alarm_rules::alarms_notify_the_alarm_topic,
    alarm_rules::functions_time_out_at_their_queues_limit,
];

/// Every violation of the deployment rules, as readable sentences (empty when the template is sound).
pub fn check_invariants(template: &str) -> anyhow::Result<Vec<String>> {
    let template = Template::parse(template)?;
    Ok(RULES.iter().flat_map(|rule| rule(&template)).collect())
}

/// The queues some queue's redrive policy targets.
fn dead_letter_queues(t: &Template) -> BTreeSet<&str> {
    t.queues
        .iter()
        .filter_map(|q| q.redrive.as_ref()?.target.as_deref())
        .collect()
}

/// Every SQS event source, with its function's id and timeout.
fn event_sources(t: &Template) -> impl Iterator<Item = (&str, u64, &SqsEventSource)> {
    t.functions.iter().flat_map(|f| {
        f.sqs_events
            .iter()
            .map(move |e| (f.logical_id.as_str(), f.timeout_secs, e))
    })
}

fn queues_are_encrypted(t: &Template) -> Vec<String> {
    t.queues
        .iter()
        .filter(|q| !q.encrypted)
        .map(|q| {
            format!(
                "{}: queue is not encrypted (SqsManagedSseEnabled or KmsMasterKeyId)",
                q.logical_id
            )
        })
        .collect()
}

fn work_queues_redrive_to_a_dead_letter_queue(t: &Template) -> Vec<String> {
    let dlqs = dead_letter_queues(t);
    let mut problems = Vec::new();
    for q in t
        .queues
        .iter()
        .filter(|q| !dlqs.contains(q.logical_id.as_str()))
    {
        let id = &q.logical_id;
        let Some(redrive) = &q.redrive else {
            problems.push(format!(
                "{id}: queue has no RedrivePolicy (dead-letter queue)"
            ));
            continue;
        };
        if redrive.max_receive_count < 5 {
            problems.push(format!(
                "{id}: maxReceiveCount {} is below 5",
                redrive.max_receive_count
            ));
        }
        if redrive.target.as_deref().and_then(|d| t.queue(d)).is_none() {
            problems.push(format!(
                "{id}: RedrivePolicy does not target a queue of this template"
            ));
        }
    }
    problems
}

fn dead_letter_queues_have_an_alarm(t: &Template) -> Vec<String> {
    let alarmed: BTreeSet<&str> = t
        .alarms
        .iter()
        .filter(|a| a.metric.as_deref() == Some("ApproximateNumberOfMessagesVisible"))
        .flat_map(|a| a.queues.iter().map(String::as_str))
        .collect();
    dead_letter_queues(t)
        .into_iter()
        .filter(|dlq| !alarmed.contains(dlq))
        .map(|dlq| {
            format!("{dlq}: dead-letter queue has no alarm on ApproximateNumberOfMessagesVisible")
        })
        .collect()
}

fn tables_are_encrypted(t: &Template) -> Vec<String> {
    t.tables
        .iter()
        .filter(|x| !x.encrypted)
        .map(|x| {
            format!(
                "{}: table is not encrypted (SSESpecification.SSEEnabled)",
                x.logical_id
            )
        })
        .collect()
}

fn event_sources_report_batch_item_failures(t: &Template) -> Vec<String> {
    event_sources(t)
        .filter(|(_, _, e)| !e.reports_batch_item_failures)
        .map(|(id, _, _)| {
            format!("{id}: SQS event source lacks FunctionResponseTypes: [ReportBatchItemFailures]")
        })
        .collect()
}

fn event_sources_bound_their_concurrency(t: &Template) -> Vec<String> {
    event_sources(t)
        .filter(|(_, _, e)| {
            !e.maximum_concurrency
                .is_some_and(|m| (2.0..=1000.0).contains(&m))
        })
        .map(|(id, _, _)| {
            format!("{id}: SQS event source lacks ScalingConfig.MaximumConcurrency (2-1000)")
        })
        .collect()
}

/// AWS's advice for SQS event sources: a visibility timeout of at least six times the function's timeout
/// plus the batching window, so a message is not delivered again while a retried invocation still runs.
fn visibility_outlasts_the_function(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, timeout, e) in event_sources(t) {
        let Some(queue) = &e.queue else {
            problems.push(format!(
                "{id}: SQS event source Queue must be !GetAtt <Queue>.Arn"
            ));
            continue;
        };
        let visibility = t.queue(queue).map_or(30.0, |q| q.visibility_timeout());
        let (timeout, window) = (timeout as f64, e.batching_window_secs as f64);
        if visibility < 6.0 * timeout + window {
            problems.push(format!(
                "{queue}: VisibilityTimeout {visibility} is below 6 x {id}'s timeout {timeout} + batching window {window}"
            ));
        }
    }
    problems
}

fn every_queue_has_its_function_and_dead_letter_queue(t: &Template) -> Vec<String> {
    let consumed: BTreeSet<&str> = event_sources(t)
        .filter_map(|(_, _, e)| e.queue.as_deref())
        .collect();
    let dlqs = dead_letter_queues(t);
    let mut problems = Vec::new();
    for queue in Queue::ALL {
        let qid = queue_logical_id(queue);
        if !consumed.contains(qid.as_str()) {
            problems.push(format!("{qid}: no function consumes the {queue} queue"));
        }
        if !dlqs.contains(dlq_logical_id(queue).as_str()) {
            problems.push(format!(
                "{qid}: its dead-letter queue {} is missing",
                dlq_logical_id(queue)
            ));
        }
    }
    problems
}

/// Actions that read or change data: a statement allowing them must name its resources.
fn is_data_action(action: &str) -> bool {
    let action = action.to_ascii_lowercase();
    [
        "sqs:",
        "dynamodb:",
        "s3:",
        "secretsmanager:",
        "kms:",
        "sns:",
        "rds-db:",
        "ssm:",
    ]
    .iter()
    .any(|p| action.starts_with(p))
        || action == "*"
}

fn iam_names_its_resources(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &t.functions {
        for s in f.statements.iter().filter(|s| s.allow) {
            let wildcard = s.resources.iter().any(|r| r.contains('*'));
            let broad = s
                .actions
                .iter()
                .find(|a| is_data_action(a) && (wildcard || a.ends_with('*')));
            if let Some(action) = broad {
                problems.push(format!(
                    "{}: IAM statement allowing `{action}` must name its resources and actions (no `*`)",
                    f.logical_id
                ));
            }
        }
    }
    problems
}

/// A security-scan finding may only be skipped with its reason written next to it.
fn security_skips_give_their_reason(t: &Template) -> Vec<String> {
    t.security_skips
        .iter()
        .filter(|s| s.reason.len() < 20)
        .map(|s| {
            format!(
                "{}: checkov skip {} needs a comment giving the reason",
                s.resource, s.check
            )
        })
        .collect()
}
