//! The deployment rules every template must keep, one function each: a DLQ with an alarm behind every
//! queue, visibility timeouts that outlast the function, partial batch responses and bounded concurrency on
//! every event source, IAM statements that name their resources, encryption everywhere, and security-scan
//! skips that say why.

use std::collections::BTreeSet;

use serde_norway::{Mapping, Value};

use super::{dlq_logical_id, queue_logical_id};
use crate::cfn::{get_att_target, global_function_timeout, list, number};
use dualcaster::queue::Queue;

/// The template's resources, read once for every rule.
struct Resources<'a> {
    all: &'a Mapping,
    global_timeout: f64,
}

impl<'a> Resources<'a> {
    fn of_type(&self, kind: &str) -> Vec<(String, &'a Value)> {
        self.all
            .iter()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
            .filter_map(|(id, r)| Some((id.as_str()?.to_owned(), r)))
            .collect()
    }

    fn queues(&self) -> Vec<(String, &'a Value)> {
        self.of_type("AWS::SQS::Queue")
    }

    /// The queues some queue's RedrivePolicy targets.
    fn dead_letter_queues(&self) -> BTreeSet<String> {
        self.queues()
            .iter()
            .filter_map(|(_, q)| {
                props(q)
                    .get("RedrivePolicy")
                    .and_then(|p| p.get("deadLetterTargetArn"))
                    .and_then(get_att_target)
            })
            .collect()
    }

    /// Every SQS event source: (function id, its timeout, the event's properties).
    fn sqs_event_sources(&self) -> Vec<(String, f64, Value)> {
        let mut sources = Vec::new();
        for (id, f) in self.of_type("AWS::Serverless::Function") {
            let p = props(f);
            let timeout = number(p.get("Timeout")).unwrap_or(self.global_timeout);
            for event in p
                .get("Events")
                .and_then(Value::as_mapping)
                .into_iter()
                .flat_map(|m| m.values())
            {
                if event.get("Type").and_then(Value::as_str) == Some("SQS") {
                    let properties = event.get("Properties").cloned().unwrap_or(Value::Null);
                    sources.push((id.clone(), timeout, properties));
                }
            }
        }
        sources
    }
}

fn props(resource: &Value) -> Value {
    resource.get("Properties").cloned().unwrap_or(Value::Null)
}

type Rule = fn(&Resources) -> Vec<String>;

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
];

/// Every violation of the deployment rules, as readable sentences (empty when the template is sound).
pub fn check_invariants(template: &str) -> Result<Vec<String>, serde_norway::Error> {
    let doc: Value = serde_norway::from_str(template)?;
    let empty = Mapping::new();
    let resources = Resources {
        all: doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .unwrap_or(&empty),
        global_timeout: global_function_timeout(&doc),
    };
    Ok(RULES.iter().flat_map(|rule| rule(&resources)).collect())
}

fn queues_are_encrypted(r: &Resources) -> Vec<String> {
    r.queues()
        .iter()
        .filter(|(_, q)| {
            let p = props(q);
            p.get("SqsManagedSseEnabled").and_then(Value::as_bool) != Some(true)
                && p.get("KmsMasterKeyId").is_none()
        })
        .map(|(id, _)| {
            format!("{id}: queue is not encrypted (SqsManagedSseEnabled or KmsMasterKeyId)")
        })
        .collect()
}

fn work_queues_redrive_to_a_dead_letter_queue(r: &Resources) -> Vec<String> {
    let queues = r.queues();
    let ids: BTreeSet<&str> = queues.iter().map(|(id, _)| id.as_str()).collect();
    let dlqs = r.dead_letter_queues();
    let mut problems = Vec::new();
    for (id, q) in queues.iter().filter(|(id, _)| !dlqs.contains(id)) {
        let Some(policy) = props(q).get("RedrivePolicy").cloned() else {
            problems.push(format!(
                "{id}: queue has no RedrivePolicy (dead-letter queue)"
            ));
            continue;
        };
        let max = number(policy.get("maxReceiveCount")).unwrap_or(0.0);
        if max < 5.0 {
            problems.push(format!("{id}: maxReceiveCount {max} is below 5"));
        }
        let target = policy.get("deadLetterTargetArn").and_then(get_att_target);
        if !target.is_some_and(|t| ids.contains(t.as_str())) {
            problems.push(format!(
                "{id}: RedrivePolicy does not target a queue of this template"
            ));
        }
    }
    problems
}

fn dead_letter_queues_have_an_alarm(r: &Resources) -> Vec<String> {
    let alarmed: BTreeSet<String> = r
        .of_type("AWS::CloudWatch::Alarm")
        .iter()
        .filter(|(_, a)| {
            props(a).get("MetricName").and_then(Value::as_str)
                == Some("ApproximateNumberOfMessagesVisible")
        })
        .flat_map(|(_, a)| list(props(a).get("Dimensions")))
        .filter(|d| d.get("Name").and_then(Value::as_str) == Some("QueueName"))
        .filter_map(|d| d.get("Value").and_then(get_att_target))
        .collect();
    r.dead_letter_queues()
        .iter()
        .filter(|dlq| !alarmed.contains(*dlq))
        .map(|dlq| {
            format!("{dlq}: dead-letter queue has no alarm on ApproximateNumberOfMessagesVisible")
        })
        .collect()
}

fn tables_are_encrypted(r: &Resources) -> Vec<String> {
    r.of_type("AWS::DynamoDB::Table")
        .iter()
        .filter(|(_, t)| {
            props(t)
                .get("SSESpecification")
                .and_then(|s| s.get("SSEEnabled"))
                .and_then(Value::as_bool)
                != Some(true)
        })
        .map(|(id, _)| format!("{id}: table is not encrypted (SSESpecification.SSEEnabled)"))
        .collect()
}

fn event_sources_report_batch_item_failures(r: &Resources) -> Vec<String> {
    r.sqs_event_sources()
        .iter()
        .filter(|(_, _, ep)| {
            !list(ep.get("FunctionResponseTypes"))
                .iter()
                .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
        })
        .map(|(id, _, _)| {
            format!("{id}: SQS event source lacks FunctionResponseTypes: [ReportBatchItemFailures]")
        })
        .collect()
}

fn event_sources_bound_their_concurrency(r: &Resources) -> Vec<String> {
    r.sqs_event_sources()
        .iter()
        .filter(|(_, _, ep)| {
            let max = number(
                ep.get("ScalingConfig")
                    .and_then(|s| s.get("MaximumConcurrency")),
            );
            !max.is_some_and(|m| (2.0..=1000.0).contains(&m))
        })
        .map(|(id, _, _)| {
            format!("{id}: SQS event source lacks ScalingConfig.MaximumConcurrency (2-1000)")
        })
        .collect()
}

/// AWS's advice for SQS event sources: a visibility timeout of at least six times the function's timeout
/// plus the batching window, so a message is not delivered again while a retried invocation still runs.
fn visibility_outlasts_the_function(r: &Resources) -> Vec<String> {
    let queues = r.queues();
    let mut problems = Vec::new();
    for (id, timeout, ep) in r.sqs_event_sources() {
        let Some(queue) = ep.get("Queue").and_then(get_att_target) else {
            problems.push(format!(
                "{id}: SQS event source Queue must be !GetAtt <Queue>.Arn"
            ));
            continue;
        };
        let window = number(ep.get("MaximumBatchingWindowInSeconds")).unwrap_or(0.0);
        let visibility = queues
            .iter()
            .find(|(qid, _)| *qid == queue)
            .and_then(|(_, q)| number(props(q).get("VisibilityTimeout")))
            .unwrap_or(30.0);
        if visibility < 6.0 * timeout + window {
            problems.push(format!(
                "{queue}: VisibilityTimeout {visibility} is below 6 x {id}'s timeout {timeout} + batching window {window}"
            ));
        }
    }
    problems
}

fn every_queue_has_its_function_and_dead_letter_queue(r: &Resources) -> Vec<String> {
    let consumed: BTreeSet<String> = r
        .sqs_event_sources()
        .iter()
        .filter_map(|(_, _, ep)| ep.get("Queue").and_then(get_att_target))
        .collect();
    let dlqs = r.dead_letter_queues();
    let mut problems = Vec::new();
    for queue in Queue::ALL {
        let qid = queue_logical_id(queue);
        if !consumed.contains(&qid) {
            problems.push(format!("{qid}: no function consumes the {queue} queue"));
        }
        if !dlqs.contains(&dlq_logical_id(queue)) {
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

fn iam_names_its_resources(r: &Resources) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, f) in r.of_type("AWS::Serverless::Function") {
        let statements = list(props(f).get("Policies"))
            .iter()
            .flat_map(|policy| list(policy.get("Statement")))
            .filter(|s| s.get("Effect").and_then(Value::as_str) == Some("Allow"))
            .collect::<Vec<_>>();
        for statement in statements {
            let wildcard = list(statement.get("Resource"))
                .iter()
                .any(|r| r.as_str().is_some_and(|s| s.contains('*')));
            let actions = list(statement.get("Action"));
            let broad = actions
                .iter()
                .filter_map(Value::as_str)
                .find(|a| is_data_action(a) && (wildcard || a.ends_with('*')));
            if let Some(action) = broad {
                problems.push(format!(
                    "{id}: IAM statement allowing `{action}` must name its resources and actions (no `*`)"
                ));
            }
        }
    }
    problems
}

/// A security-scan finding may only be skipped with its reason written next to it.
fn security_skips_give_their_reason(r: &Resources) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, resource) in r.all {
        let skips = resource
            .get("Metadata")
            .and_then(|m| m.get("checkov"))
            .and_then(|c| c.get("skip"));
        for skip in list(skips) {
            let check = skip.get("id").and_then(Value::as_str).unwrap_or("(no id)");
            let reason = skip
                .get("comment")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim();
            if reason.len() < 20 {
                problems.push(format!(
                    "{}: checkov skip {check} needs a comment giving the reason",
                    id.as_str().unwrap_or("?")
                ));
            }
        }
    }
    problems
}
