//! Per-task metrics in CloudWatch Embedded Metric Format: one JSON line on stdout per run, which
//! CloudWatch Logs turns into metrics without any API call from the function.

use std::io::Write;

use serde::Serialize;
use serde_json::json;

pub const NAMESPACE: &str = "DualcasterDeals/Tasks";

/// The numbers recorded for one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunMetrics {
    pub duration_ms: f64,
    pub processed: u64,
    pub errors: u64,
    pub retries: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    /// Handed back because a single-instance lease was held (lease contention).
    pub deferred: u64,
    /// The failure's class, for a failed run: counted as `failures` by queue, task and class.
    pub error_class: Option<String>,
}

/// Every metric a run's document carries, with its unit: what the dashboard and alarms may name.
pub const RUN_METRICS: &[(&str, &str)] = &[
    ("duration", "Milliseconds"),
    ("processed", "Count"),
    ("errors", "Count"),
    ("retries", "Count"),
    ("dead_lettered", "Count"),
    ("skipped", "Count"),
    ("deferred", "Count"),
];

/// The metric of a failed run, by queue, task and error class.
pub const FAILURES: &str = "failures";

/// The heartbeat's count of single-instance leases held longer than their task can run (no dimensions).
pub const LEASES_HELD_PAST_LIMIT: &str = "leases_held_past_limit";

/// Builds the EMF document for a run of `task` on `queue`.
pub fn emf_document(
    queue: &str,
    task: &str,
    m: &RunMetrics,
    timestamp_ms: i64,
) -> serde_json::Value {
    let declared: Vec<serde_json::Value> = RUN_METRICS
        .iter()
        .map(|(name, unit)| json!({"Name": name, "Unit": unit}))
        .collect();
    let mut directives = vec![json!({
        "Namespace": NAMESPACE,
        "Dimensions": [["queue", "task"], ["queue"]],
        "Metrics": declared,
    })];
    let mut doc = json!({
        "queue": queue,
        "task": task,
        "duration": m.duration_ms,
        "processed": m.processed,
        "errors": m.errors,
        "retries": m.retries,
        "dead_lettered": m.dead_lettered,
        "skipped": m.skipped,
        "deferred": m.deferred,
    });
    if let Some(error_class) = &m.error_class {
        // A second directive over the same document: the failure counted under its class.
        directives.push(json!({
            "Namespace": NAMESPACE,
            "Dimensions": [["queue", "task", "error_class"]],
            "Metrics": [{"Name": FAILURES, "Unit": "Count"}],
        }));
        doc["error_class"] = json!(error_class);
        doc[FAILURES] = json!(1);
    }
    doc["_aws"] = json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives});
    doc
}

/// The document of one dimensionless count, e.g. [`LEASES_HELD_PAST_LIMIT`].
pub fn count_document(name: &str, value: u64, timestamp_ms: i64) -> serde_json::Value {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[]],
                "Metrics": [{"Name": name, "Unit": "Count"}],
            }],
        },
        name: value,
    })
}

/// Writes one dimensionless count as an EMF line.
pub fn emit_count(name: &str, value: u64) {
    write_line(&count_document(
        name,
        value,
        chrono::Utc::now().timestamp_millis(),
    ));
}

fn write_line(doc: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{doc}");
}

/// Writes one EMF line to stdout. Metrics are best effort: a closed stdout is not a task failure.
pub fn emit(queue: &str, task: &str, m: &RunMetrics) {
    write_line(&emf_document(
        queue,
        task,
        m,
        chrono::Utc::now().timestamp_millis(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_declares_every_metric_it_carries() {
        let m = RunMetrics {
            duration_ms: 12.5,
            processed: 3,
            errors: 1,
            retries: 1,
            dead_lettered: 0,
            skipped: 0,
            deferred: 0,
            error_class: Some("database_unavailable".into()),
        };
        let doc = emf_document("default", "ping", &m, 1_700_000_000_000);
        let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 2);
        let mut names = Vec::new();
        for directive in directives {
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap();
                assert!(
                    doc.get(name).is_some_and(|v| v.is_number()),
                    "{name} has no value"
                );
                names.push(name);
            }
            for dims in directive["Dimensions"].as_array().unwrap() {
                for dim in dims.as_array().unwrap() {
                    assert!(doc
                        .get(dim.as_str().unwrap())
                        .is_some_and(|v| v.is_string()));
                }
            }
        }
        assert_eq!(
            names,
            [
                "duration",
                "processed",
                "errors",
                "retries",
                "dead_lettered",
                "skipped",
                "deferred",
                "failures"
            ]
        );
        assert_eq!(doc["processed"], 3);
        assert_eq!(doc["error_class"], "database_unavailable");
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);

        let ok = emf_document("default", "ping", &RunMetrics::default(), 1);
        assert_eq!(ok["_aws"]["CloudWatchMetrics"].as_array().unwrap().len(), 1);
        assert!(ok.get("error_class").is_none() && ok.get("failures").is_none());
    }
}
