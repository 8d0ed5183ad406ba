//! The deployment rules about being told when something is wrong: a backlog alarm on every work queue, a
//! delivery alarm on every schedule, error and throttle alarms on every function, a missing-data alarm on
//! the heartbeat, every alarm sent to the alarm topic, and every function's timeout equal to the time limit
//! its queue's tasks are held to (the heartbeat's lease check counts on it).

use super::queue_logical_id;
use crate::template::{AlarmDefinition, Template};
use dualcaster::metrics::NAMESPACE;
use dualcaster::queue::Queue;

fn alarm_on<'a>(
    t: &'a Template,
    namespace: &str,
    metric: &str,
) -> impl Iterator<Item = &'a AlarmDefinition> {
    let (namespace, metric) = (namespace.to_owned(), metric.to_owned());
    t.alarms.iter().filter(move |a| {
        a.namespace.as_deref() == Some(namespace.as_str())
            && a.metric.as_deref() == Some(metric.as_str())
    })
}

pub(super) fn work_queues_have_a_backlog_alarm(t: &Template) -> Vec<String> {
    let alarmed: Vec<&str> = alarm_on(t, "AWS/SQS", "ApproximateAgeOfOldestMessage")
        .filter_map(|a| a.dimensions.get("QueueName").map(String::as_str))
        .collect();
    Queue::ALL
        .iter()
        .filter_map(|q| t.queue(&queue_logical_id(*q)))
        .filter(|q| !alarmed.contains(&q.name_template.as_str()))
        .map(|q| {
            format!(
                "{}: work queue has no alarm on ApproximateAgeOfOldestMessage (QueueName {})",
                q.logical_id, q.name_template
            )
        })
        .collect()
}

pub(super) fn schedules_have_a_delivery_alarm(t: &Template) -> Vec<String> {
    let alarmed: Vec<&str> = alarm_on(t, "AWS/Events", "FailedInvocations")
        .filter_map(|a| a.dimensions.get("RuleName").map(String::as_str))
        .collect();
    t.rules
        .iter()
        .filter(|r| r.enabled && !alarmed.contains(&r.name_template.as_str()))
        .map(|r| {
            format!(
                "{}: schedule has no alarm on AWS/Events FailedInvocations (RuleName {})",
                r.logical_id, r.name_template
            )
        })
        .collect()
}

pub(super) fn functions_have_error_and_throttle_alarms(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &t.functions {
        let Some(name) = &f.name_template else {
            problems.push(format!(
                "{}: function needs a FunctionName, for its alarms and the dashboard to name it",
                f.logical_id
            ));
            continue;
        };
        for metric in ["Errors", "Throttles"] {
            let covered = alarm_on(t, "AWS/Lambda", metric)
                .any(|a| a.dimensions.get("FunctionName") == Some(name));
            if !covered {
                problems.push(format!(
                    "{}: function has no alarm on AWS/Lambda {metric} (FunctionName {name})",
                    f.logical_id
                ));
            }
        }
    }
    problems
}

/// The rule whose firing sends the heartbeat (`ping`) must have an alarm that fires when its runs stop:
/// missing data is the outage.
pub(super) fn the_heartbeat_has_a_missing_data_alarm(t: &Template) -> Vec<String> {
    let sends_ping = t.rules.iter().any(|r| {
        r.enabled
            && r.targets.iter().any(|target| {
                target
                    .input_template
                    .as_deref()
                    .or(target.input.as_deref())
                    .is_some_and(|input| input.contains(r#""task":"ping""#))
            })
    });
    let alarmed = t.alarms.iter().any(|a| {
        a.namespace.as_deref() == Some(NAMESPACE)
            && a.dimensions.get("task").map(String::as_str) == Some("ping")
            && a.treat_missing_data.as_deref() == Some("breaching")
    });
    if sends_ping && !alarmed {
        vec!["the heartbeat (ping) has no alarm that treats missing data as breaching".into()]
    } else {
        Vec::new()
    }
}

pub(super) fn alarms_notify_the_alarm_topic(t: &Template) -> Vec<String> {
    t.alarms
        .iter()
        .filter(|a| !a.notifies_alarm_topic)
        .map(|a| format!("{}: alarm does not notify AlarmTopicArn", a.logical_id))
        .collect()
}

pub(super) fn functions_time_out_at_their_queues_limit(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    for queue in Queue::ALL {
        let qid = queue_logical_id(queue);
        for f in t.functions.iter().filter(|f| {
            f.sqs_events
                .iter()
                .any(|e| e.queue.as_deref() == Some(qid.as_str()))
        }) {
            let limit = queue.time_limit().as_secs();
            if f.timeout_secs != limit {
                problems.push(format!(
                    "{}: Timeout {} differs from the {queue} queue's time limit {limit} s (Queue::time_limit)",
                    f.logical_id, f.timeout_secs
                ));
            }
        }
    }
    problems
}
