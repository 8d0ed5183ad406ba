//! `dlq_purge`: deletes every message of one dead-letter queue, only with an explicit confirmation that
//! names the queue (`"confirm": "purge default-dlq"`), and logs how many were dropped.

use aws_sdk_sqs::types::QueueAttributeName;
use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::error::{class, from_sdk_error, TaskError};
use crate::queue::Queue;
use crate::registry::Task;
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct DlqPurge;

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct DlqPurgeArgs {
    #[garde(skip)]
    pub queue: Queue,
    /// Must read `purge <queue>-dlq`.
    #[garde(length(max = 64))]
    pub confirm: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqPurgeReport {
    pub queue: Queue,
    /// Messages in the DLQ when it was purged.
    pub purged: u64,
}

impl TaskReport for DlqPurgeReport {
    fn counts(&self) -> Counts {
        Counts::new(self.purged, 0)
    }
}

impl Task for DlqPurge {
    const NAME: &'static str = "dlq_purge";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy = RetryPolicy::NONE;
    type Args = DlqPurgeArgs;
    type Report = DlqPurgeReport;

    async fn run(args: DlqPurgeArgs, ctx: TaskContext) -> Result<DlqPurgeReport, TaskError> {
        let expected = format!("purge {}-dlq", args.queue);
        if args.confirm != expected {
            return Err(TaskError::permanent(
                class::INVALID_KWARGS,
                format!("task `dlq_purge`: to purge, set confirm to `{expected}`"),
            ));
        }
        let url = ctx.settings().urls(args.queue).dlq.clone();
        let depth = ctx
            .sqs()
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| from_sdk_error("GetQueueAttributes", e))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        ctx.sqs()
            .purge_queue()
            .queue_url(&url)
            .send()
            .await
            .map_err(|e| from_sdk_error("PurgeQueue", e))?;
        tracing::warn!(queue = %args.queue, purged = depth, "dead-letter queue purged by an operator");
        Ok(DlqPurgeReport {
            queue: args.queue,
            purged: depth,
        })
    }
}
