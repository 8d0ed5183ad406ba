//! `noop`: does nothing and succeeds. It measures and smoke-tests the delivery path itself (queue, event
//! source, runtime, run log) without touching any data: the load test and the event source benchmark
//! send it, and operators can use it to check a queue end to end without writing a heartbeat.

use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::error::TaskError;
use crate::queue::Queue;
use crate::registry::Task;
use crate::report::{Counts, TaskReport};

pub struct Noop;

#[derive(Debug, Clone, Default, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct NoopArgs {
    /// Any label, returned in the report (a sequence number, a load-test run id).
    #[serde(default)]
    #[garde(length(chars, max = 200))]
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoopReport {
    pub label: Option<String>,
}

impl TaskReport for NoopReport {
    fn counts(&self) -> Counts {
        Counts::new(1, 0)
    }
}

impl Task for Noop {
    const NAME: &'static str = "noop";
    const QUEUE: Queue = Queue::Default;
    type Args = NoopArgs;
    type Report = NoopReport;

    async fn run(args: NoopArgs, _ctx: TaskContext) -> Result<NoopReport, TaskError> {
        Ok(NoopReport { label: args.label })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;
    use serde_json::json;

    #[test]
    fn arguments() {
        let check =
            |v: serde_json::Value| TaskSpec::of::<Noop>().check_kwargs(v.as_object().unwrap());
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"label": "run-1/42"})).is_ok());
        assert!(check(json!({"label": "x".repeat(201)})).is_err());
        assert!(check(json!({"work": 1})).is_err());
    }
}
