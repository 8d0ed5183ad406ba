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
}

/// Builds the EMF document for a run of `task` on `queue`.
pub fn emf_document(
    queue: &str,
    task: &str,
    m: &RunMetrics,
    timestamp_ms: i64,
) -> serde_json::Value {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["queue", "task"], ["queue"]],
                "Metrics": [
                    {"Name": "duration", "Unit": "Milliseconds"},
                    {"Name": "processed", "Unit": "Count"},
                    {"Name": "errors", "Unit": "Count"},
                    {"Name": "retries", "Unit": "Count"},
                    {"Name": "dead_lettered", "Unit": "Count"},
                    {"Name": "skipped", "Unit": "Count"},
                ],
            }],
        },
        "queue": queue,
        "task": task,
        "duration": m.duration_ms,
        "processed": m.processed,
        "errors": m.errors,
        "retries": m.retries,
        "dead_lettered": m.dead_lettered,
        "skipped": m.skipped,
    })
}

/// Writes one EMF line to stdout. Metrics are best effort: a closed stdout is not a task failure.
pub fn emit(queue: &str, task: &str, m: &RunMetrics) {
    let doc = emf_document(queue, task, m, chrono::Utc::now().timestamp_millis());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{doc}");
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
        };
        let doc = emf_document("default", "ping", &m, 1_700_000_000_000);
        let declared = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        assert_eq!(declared.len(), 6);
        for metric in declared {
            let name = metric["Name"].as_str().unwrap();
            assert!(
                doc.get(name).is_some_and(|v| v.is_number()),
                "{name} has no value"
            );
        }
        for dims in doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
            .as_array()
            .unwrap()
        {
            for dim in dims.as_array().unwrap() {
                assert!(doc
                    .get(dim.as_str().unwrap())
                    .is_some_and(|v| v.is_string()));
            }
        }
        assert_eq!(doc["processed"], 3);
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
    }
}
