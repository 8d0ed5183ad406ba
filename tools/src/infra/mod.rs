//! The SAM template and the registry, kept in agreement.
//!
//! Two marked blocks of `infra/template.yaml` are generated from the registry (`dualcaster template sync`,
//! `make template`): the schedule rules with the queue policies that let EventBridge send to the queues, and
//! the dashboard with the alarms (`observability.rs`). A test fails when a block differs from what the
//! registry generates. [`check_invariants`] (`rules.rs`, one function
//! per rule) checks the rest of the template for what every deployment must have.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_norway::Value;

mod alarm_rules;
pub mod observability;
mod rules;
pub use rules::check_invariants;

use dualcaster::queue::Queue;
use dualcaster::registry::Registry;

/// A generated block of the template: its name in the markers and what generates it.
struct Block {
    name: &'static str,
    generate: fn(&Registry) -> String,
}

const BLOCKS: &[Block] = &[
    Block {
        name: "schedules",
        generate: schedules_block,
    },
    Block {
        name: "dashboard and alarms",
        generate: observability::observability_block,
    },
];

impl Block {
    fn begin(&self) -> String {
        format!(
            "  # BEGIN GENERATED: {} (from the task registry; `make template` rewrites this block)",
            self.name
        )
    }

    fn end(&self) -> String {
        format!("  # END GENERATED: {}", self.name)
    }
}

/// The template's logical id of a queue.
pub fn queue_logical_id(queue: Queue) -> String {
    format!("{}Queue", camel(queue.as_str()))
}

/// The template's logical id of a queue's dead-letter queue.
pub fn dlq_logical_id(queue: Queue) -> String {
    format!("{}DeadLetterQueue", camel(queue.as_str()))
}

pub(crate) fn camel(s: &str) -> String {
    s.split(['_', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The rule's logical id: `Schedule<Task><Name>`.
pub fn rule_logical_id(task: &str, schedule: &str) -> String {
    format!("Schedule{}{}", camel(task), camel(schedule))
}

/// YAML single-quoted scalar.
pub(crate) fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The generated block: one `AWS::Events::Rule` per schedule, targeting the task's queue with an input
/// transformer that gives each firing its own envelope id, and per queue a policy letting those rules send.
pub fn schedules_block(registry: &Registry) -> String {
    let mut out = String::new();
    let mut rules_by_queue: BTreeMap<Queue, Vec<String>> = BTreeMap::new();
    for (spec, schedule) in registry.schedules() {
        let id = rule_logical_id(spec.name, schedule.name);
        let rule = schedule.rule_name(spec.name);
        let kwargs: serde_json::Value = serde_json::from_str(schedule.kwargs).unwrap_or_default();
        // `<time>` is replaced by EventBridge with the scheduled time of the firing.
        let template = format!(
            r#"{{"v":1,"task":"{}","id":"schedule:{rule}:<time>","kwargs":{}}}"#,
            spec.name, kwargs
        );
        let why = schedule
            .why
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let description = format!("{}: {}", spec.name, why);
        let _ = writeln!(out, "  {id}:");
        let _ = writeln!(out, "    Type: AWS::Events::Rule");
        let _ = writeln!(out, "    Properties:");
        let _ = writeln!(out, "      Name: !Sub \"${{AWS::StackName}}-{rule}\"");
        let _ = writeln!(
            out,
            "      Description: {}",
            quoted(&dualcaster::queue::truncate(&description, 512))
        );
        let _ = writeln!(
            out,
            "      ScheduleExpression: {}",
            quoted(schedule.expression)
        );
        let _ = writeln!(
            out,
            "      State: {}",
            if schedule.enabled {
                "ENABLED"
            } else {
                "DISABLED"
            }
        );
        let _ = writeln!(out, "      Targets:");
        let _ = writeln!(out, "        - Id: {rule}");
        let _ = writeln!(
            out,
            "          Arn: !GetAtt {}.Arn",
            queue_logical_id(spec.queue)
        );
        let _ = writeln!(out, "          InputTransformer:");
        let _ = writeln!(out, "            InputPathsMap:");
        let _ = writeln!(out, "              time: $.time");
        let _ = writeln!(out, "            InputTemplate: {}", quoted(&template));
        let _ = writeln!(out);
        rules_by_queue.entry(spec.queue).or_default().push(id);
    }
    for (queue, rules) in &rules_by_queue {
        let qid = queue_logical_id(*queue);
        let _ = writeln!(out, "  {qid}SchedulePolicy:");
        let _ = writeln!(out, "    Type: AWS::SQS::QueuePolicy");
        let _ = writeln!(out, "    Properties:");
        let _ = writeln!(out, "      Queues: [!Ref {qid}]");
        let _ = writeln!(out, "      PolicyDocument:");
        let _ = writeln!(out, "        Version: \"2012-10-17\"");
        let _ = writeln!(out, "        Statement:");
        let _ = writeln!(out, "          - Sid: ScheduledTasks");
        let _ = writeln!(out, "            Effect: Allow");
        let _ = writeln!(out, "            Principal:");
        let _ = writeln!(out, "              Service: events.amazonaws.com");
        let _ = writeln!(out, "            Action: sqs:SendMessage");
        let _ = writeln!(out, "            Resource: !GetAtt {qid}.Arn");
        let _ = writeln!(out, "            Condition:");
        let _ = writeln!(out, "              ArnEquals:");
        let _ = writeln!(out, "                aws:SourceArn:");
        for rule in rules {
            let _ = writeln!(out, "                  - !GetAtt {rule}.Arn");
        }
        let _ = writeln!(out);
    }
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriftError {
    #[error("the template has no `{0}` line")]
    MissingMarker(String),
    #[error("the {block} block of infra/template.yaml differs from the registry: run `make template` (first difference at generated line {line}: template has {found:?}, registry gives {expected:?})")]
    Drift {
        block: &'static str,
        line: usize,
        found: String,
        expected: String,
    },
}

fn block_bounds(template: &str, block: &Block) -> Result<(usize, usize), DriftError> {
    crate::marked_block::bounds(template, &block.begin(), &block.end())
        .map_err(DriftError::MissingMarker)
}

/// The template with its generated blocks rewritten from the registry.
pub fn sync(template: &str, registry: &Registry) -> Result<String, DriftError> {
    let mut text = template.to_owned();
    for block in BLOCKS {
        text = crate::marked_block::rewrite(
            &text,
            &block.begin(),
            &block.end(),
            &(block.generate)(registry),
        )
        .map_err(DriftError::MissingMarker)?;
    }
    Ok(text)
}

/// Fails when a generated block is not exactly what the registry generates.
pub fn check_drift(template: &str, registry: &Registry) -> Result<(), DriftError> {
    for block in BLOCKS {
        check_block(template, registry, block)?;
    }
    Ok(())
}

fn check_block(template: &str, registry: &Registry, block: &Block) -> Result<(), DriftError> {
    let (body, end) = block_bounds(template, block)?;
    match crate::marked_block::first_difference(&template[body..end], &(block.generate)(registry)) {
        None => Ok(()),
        Some((line, found, expected)) => Err(DriftError::Drift {
            block: block.name,
            line,
            found,
            expected,
        }),
    }
}

/// The template without its functions, as plain CloudFormation: what a deploy rehearsal can create where
/// Lambda functions cannot run (LocalStack without Docker). Drops the SAM transform and globals, every
/// `AWS::Serverless::*` resource, and every resource, condition or output that refers to a dropped resource
/// (the functions' log groups, their outputs). Returns the template and the dropped ids.
pub fn without_functions(template: &str) -> Result<(String, Vec<String>), serde_norway::Error> {
    let mut doc: Value = serde_norway::from_str(template)?;
    let Some(map) = doc.as_mapping_mut() else {
        return Ok((template.to_owned(), Vec::new()));
    };
    map.shift_remove("Transform");
    map.shift_remove("Globals");
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    if let Some(resources) = map.get("Resources").and_then(Value::as_mapping) {
        for (id, r) in resources {
            let serverless = r
                .get("Type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with("AWS::Serverless::"));
            if serverless {
                dropped.extend(id.as_str().map(str::to_owned));
            }
        }
    }
    // Anything that mentions a dropped id goes too, until nothing more does.
    let mentions = |value: &Value, dropped: &BTreeSet<String>| -> bool {
        let text = serde_norway::to_string(value).unwrap_or_default();
        dropped.iter().any(|id| {
            text.match_indices(id.as_str()).any(|(at, _)| {
                let before = text[..at].chars().next_back();
                let after = text[at + id.len()..].chars().next();
                !before.is_some_and(|c| c.is_ascii_alphanumeric())
                    && !after.is_some_and(|c| c.is_ascii_alphanumeric())
            })
        })
    };
    while let Some(resources) = map.get("Resources").and_then(Value::as_mapping) {
        let more: Vec<String> = resources
            .iter()
            .filter_map(|(id, r)| id.as_str().map(|id| (id, r)))
            .filter(|(id, r)| !dropped.contains(*id) && mentions(r, &dropped))
            .map(|(id, _)| id.to_owned())
            .collect();
        if more.is_empty() {
            break;
        }
        dropped.extend(more);
    }
    for section in ["Resources", "Outputs"] {
        if let Some(entries) = map.get_mut(section).and_then(Value::as_mapping_mut) {
            entries.retain(|id, v| {
                !id.as_str().is_some_and(|id| dropped.contains(id)) && !mentions(v, &dropped)
            });
        }
    }
    // A bare 2010-09-09 reads as a date to YAML 1.1 parsers (CloudFormation's among them).
    let text = serde_norway::to_string(&doc)?.replacen(
        "AWSTemplateFormatVersion: 2010-09-09",
        "AWSTemplateFormatVersion: '2010-09-09'",
        1,
    );
    Ok((text, dropped.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_template_schedules_follow_the_registry() {
        check_drift(&template(), &dualcaster::tasks::registry()).unwrap();
    }

    #[test]
    fn the_template_keeps_every_invariant() {
        assert_eq!(check_invariants(&template()).unwrap(), Vec::<String>::new());
    }

    /// Applies `from` -> `to` once to a copy of the template and returns the violations.
    fn broken(from: &str, to: &str) -> Vec<String> {
        let t = template();
        assert!(t.contains(from), "the template no longer contains {from:?}");
        check_invariants(&t.replacen(from, to, 1)).unwrap()
    }

    fn assert_reports(problems: Vec<String>, needle: &str) {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected {needle:?} in {problems:#?}"
        );
    }

    #[test]
    fn the_infrastructure_template_keeps_everything_but_the_functions() {
        let (plain, dropped) = without_functions(&template()).unwrap();
        assert_eq!(
            dropped,
            vec![
                "AnalyticsFunction",
                "AnalyticsFunctionLogs",
                "DefaultFunction",
                "DefaultFunctionLogs",
                "IngestionFunction",
                "IngestionFunctionLogs",
                "OpsFunction",
                "OpsFunctionLogs"
            ]
        );
        let doc: Value = serde_norway::from_str(&plain).unwrap();
        assert!(doc.get("Transform").is_none() && doc.get("Globals").is_none());
        let resources = doc["Resources"].as_mapping().unwrap();
        for kept in [
            "LeaseTable",
            "IngestionQueue",
            "DefaultDeadLetterQueue",
            "AnalyticsDeadLetterAlarm",
        ] {
            assert!(resources.contains_key(kept), "{kept}");
        }
        assert_eq!(
            resources
                .values()
                .filter(|r| r["Type"].as_str() == Some("AWS::Events::Rule"))
                .count(),
            dualcaster::tasks::registry().schedules().count()
        );
        let outputs: Vec<_> = doc["Outputs"]
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            outputs,
            vec!["IngestionQueueUrl", "AnalyticsQueueUrl", "DefaultQueueUrl"]
        );
        // Tags survive the round trip.
        assert!(
            plain.contains("!GetAtt IngestionDeadLetterQueue.Arn")
                || plain.contains("!GetAtt 'IngestionDeadLetterQueue.Arn'"),
            "{plain}"
        );
    }

    #[test]
    fn a_security_skip_without_a_reason_is_caught() {
        let t = template();
        let from = "          - id: CKV_AWS_119\n            comment: >-";
        assert!(t.contains(from));
        let problems = check_invariants(&t.replacen(
            from,
            "          - id: CKV_AWS_119\n            note: >-",
            1,
        ))
        .unwrap();
        assert_eq!(
            problems,
            vec!["LeaseTable: checkov skip CKV_AWS_119 needs a comment giving the reason"]
        );
    }

    #[test]
    fn a_short_visibility_timeout_is_caught() {
        assert_reports(
            broken("VisibilityTimeout: 725", "VisibilityTimeout: 700"),
            "DefaultQueue: VisibilityTimeout 700 is below 6 x DefaultFunction's timeout 120 + batching window 5",
        );
    }

    #[test]
    fn a_low_max_receive_count_is_caught() {
        assert_reports(
            broken("maxReceiveCount: 10", "maxReceiveCount: 3"),
            "IngestionQueue: maxReceiveCount 3 is below 5",
        );
    }

    #[test]
    fn a_missing_redrive_policy_is_caught() {
        let t = template();
        let start = t.find("      RedrivePolicy:\n        deadLetterTargetArn: !GetAtt DefaultDeadLetterQueue.Arn").unwrap();
        let end = start
            + t[start..].find("maxReceiveCount: 10\n").unwrap()
            + "maxReceiveCount: 10\n".len();
        let problems = check_invariants(&format!("{}{}", &t[..start], &t[end..])).unwrap();
        assert_reports(problems.clone(), "DefaultQueue: queue has no RedrivePolicy");
        assert_reports(
            problems,
            "DefaultQueue: its dead-letter queue DefaultDeadLetterQueue is missing",
        );
    }

    #[test]
    fn a_missing_dlq_alarm_is_caught() {
        assert_reports(
            broken(
                "Value: !GetAtt AnalyticsDeadLetterQueue.QueueName",
                "Value: !GetAtt AnalyticsQueue.QueueName",
            ),
            "AnalyticsDeadLetterQueue: dead-letter queue has no alarm",
        );
    }

    #[test]
    fn alarms_missing_for_a_queue_a_schedule_a_function_or_the_heartbeat_are_caught() {
        assert_reports(
            broken(
                "MetricName: ApproximateAgeOfOldestMessage",
                "MetricName: NumberOfMessagesSent",
            ),
            "IngestionQueue: work queue has no alarm on ApproximateAgeOfOldestMessage",
        );
        assert_reports(
            broken(
                "Value: !Sub \"${AWS::StackName}-ping-heartbeat\"",
                "Value: !Sub \"${AWS::StackName}-ping\"",
            ),
            "SchedulePingHeartbeat: schedule has no alarm on AWS/Events FailedInvocations",
        );
        assert_reports(
            broken("      FunctionName: !Sub \"${AWS::StackName}-ops\"\n", ""),
            "OpsFunction: function needs a FunctionName",
        );
        assert_reports(
            broken(
                "Value: !Sub \"${AWS::StackName}-analytics\"\n      Statistic: Sum\n      Period: 300\n      EvaluationPeriods: 1\n      Threshold: 0\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: notBreaching\n      AlarmActions: !If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref \"AWS::NoValue\"]\n\n  AnalyticsFunctionThrottlesAlarm",
                "Value: other\n      Statistic: Sum\n      Period: 300\n      EvaluationPeriods: 1\n      Threshold: 0\n      ComparisonOperator: GreaterThanThreshold\n      TreatMissingData: notBreaching\n      AlarmActions: !If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref \"AWS::NoValue\"]\n\n  AnalyticsFunctionThrottlesAlarm",
            ),
            "AnalyticsFunction: function has no alarm on AWS/Lambda Errors",
        );
        assert_reports(
            broken(
                "TreatMissingData: breaching",
                "TreatMissingData: notBreaching",
            ),
            "the heartbeat (ping) has no alarm that treats missing data as breaching",
        );
    }

    #[test]
    fn an_alarm_nobody_hears_and_a_timeout_off_its_queues_limit_are_caught() {
        assert_reports(
            broken(
                "AlarmActions: !If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref \"AWS::NoValue\"]",
                "AlarmActions: []",
            ),
            "IngestionDeadLetterAlarm: alarm does not notify AlarmTopicArn",
        );
        assert_reports(
            broken("Timeout: 120", "Timeout: 100"),
            "DefaultFunction: Timeout 100 differs from the default queue's time limit 120 s",
        );
    }

    #[test]
    fn a_missing_partial_batch_response_is_caught() {
        assert_reports(
            broken(
                "FunctionResponseTypes: [ReportBatchItemFailures]",
                "FunctionResponseTypes: []",
            ),
            "IngestionFunction: SQS event source lacks FunctionResponseTypes",
        );
    }

    #[test]
    fn a_missing_maximum_concurrency_is_caught() {
        assert_reports(
            broken("MaximumConcurrency: 2", "MaximumConcurrency: 1"),
            "SQS event source lacks ScalingConfig.MaximumConcurrency",
        );
    }

    #[test]
    fn unencrypted_queues_and_tables_are_caught() {
        assert_reports(
            broken("SqsManagedSseEnabled: true", "SqsManagedSseEnabled: false"),
            "queue is not encrypted",
        );
        assert_reports(
            broken("SSEEnabled: true", "SSEEnabled: false"),
            "LeaseTable: table is not encrypted",
        );
    }

    #[test]
    fn wildcard_iam_on_data_actions_is_caught() {
        assert_reports(
            broken("Resource: !GetAtt LeaseTable.Arn", "Resource: \"*\""),
            "IngestionFunction: IAM statement allowing `dynamodb:GetItem` must name its resources",
        );
        assert_reports(
            broken("Action: [sqs:SendMessage]", "Action: [\"sqs:*\"]"),
            "allowing `sqs:*`",
        );
    }

    #[test]
    fn schedule_drift_is_caught() {
        let t = template();
        let drifted = t.replacen(
            "ScheduleExpression: 'cron(0/15 * * * ? *)'",
            "ScheduleExpression: 'cron(0/5 * * * ? *)'",
            1,
        );
        assert_ne!(drifted, t, "the template no longer has the ping schedule");
        match check_drift(&drifted, &dualcaster::tasks::registry()) {
            Err(DriftError::Drift {
                found, expected, ..
            }) => {
                assert!(found.contains("0/5"), "{found}");
                assert!(expected.contains("0/15"), "{expected}");
            }
            other => panic!("{other:?}"),
        }
        // A block emptied by hand is drift too; syncing restores it exactly.
        for block in BLOCKS {
            let (body, end) = block_bounds(&t, block).unwrap();
            let emptied = format!("{}{}", &t[..body], &t[end..]);
            match check_drift(&emptied, &dualcaster::tasks::registry()) {
                Err(DriftError::Drift { block: named, .. }) => assert_eq!(named, block.name),
                other => panic!("{other:?}"),
            }
            assert_eq!(sync(&emptied, &dualcaster::tasks::registry()).unwrap(), t);
        }
        assert_eq!(
            check_drift("Resources: {}", &dualcaster::tasks::registry()),
            Err(DriftError::MissingMarker(
                "# BEGIN GENERATED: schedules (from the task registry; `make template` rewrites this block)"
                    .into()
            ))
        );
    }

    #[test]
    fn generated_rules_send_an_envelope_with_a_per_firing_id() {
        let block = schedules_block(&dualcaster::tasks::registry());
        assert!(
            block.contains("  SchedulePingHeartbeat:\n    Type: AWS::Events::Rule\n"),
            "{block}"
        );
        assert!(
            block.contains(r#"InputTemplate: '{"v":1,"task":"ping","id":"schedule:ping-heartbeat:<time>","kwargs":{"note":"scheduled heartbeat"}}'"#),
            "{block}"
        );
        assert!(block.contains("Arn: !GetAtt DefaultQueue.Arn"));
        assert!(block.contains("  DefaultQueueSchedulePolicy:\n"));
        assert!(block.contains("- !GetAtt ScheduleDlqReportHourly.Arn"));
        // The block is valid YAML on its own.
        let doc: Value = serde_norway::from_str(&block).unwrap();
        assert!(doc.get("SchedulePingHeartbeat").is_some());
    }
}
