//! `dualcaster mcp`: a stdio MCP server for operators' assistants. Its tools are the operator actions of
//! the `ops` function ([`dualcaster::ops`]), run by the same code in this process: analyze the DLQs,
//! redrive them (a dry run unless told otherwise), trigger a task, follow a chain of runs, list schedules, list
//! and release leases.
//! Purging is left to people (`make purge-dlq`).

use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};

use dualcaster::ops::Ops;
use dualcaster::runtime::Invocation;
use serde::Serialize;

use crate::mcp_args::{
    request, ChainArgs, DlqStatsArgs, ListLeasesArgs, RedriveArgs, ReleaseLeaseArgs, SchedulesArgs,
    TriggerArgs,
};

pub struct OpsServer {
    ops: Ops,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl OpsServer {
    pub fn new(ops: Ops) -> Self {
        OpsServer {
            ops,
            tool_router: Self::tool_router(),
        }
    }

    /// Runs an action: its report as JSON, or a tool error naming the error class.
    async fn run(&self, action: &str, args: &impl Serialize) -> Result<CallToolResult, ErrorData> {
        let request = request(action, args)?;
        let invocation = Invocation::with_timeout(
            format!("mcp-{}", uuid::Uuid::new_v4()),
            Duration::from_secs(600),
        );
        Ok(match self.ops.execute(request, invocation).await {
            Ok(report) => CallToolResult::success(vec![ContentBlock::json(report)?]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                "{}: {}",
                e.error_type, e.message
            ))]),
        })
    }

    #[tool(
        description = "Analyze the dead-letter queues: depth, age of the oldest message, counts by task and error class, and the most recent dead letters with their reasons. Reads without consuming."
    )]
    async fn analyze_dead_letter_queue(
        &self,
        Parameters(args): Parameters<DlqStatsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run("dlq_stats", &args).await
    }

    #[tool(
        description = "Replay dead letters into their source queue, all or filtered by task, error class and failure time. A dry run unless dry_run is false; rate-limited."
    )]
    async fn redrive_dead_letters(
        &self,
        Parameters(args): Parameters<RedriveArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run("redrive", &args).await
    }

    #[tool(
        description = "Trigger a task now: validate its arguments and enqueue it on its queue (the registry routes it)."
    )]
    async fn trigger_task(
        &self,
        Parameters(args): Parameters<TriggerArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run("trigger", &args).await
    }

    #[tool(
        description = "Follow a chain: every run caused by one ingestion, schedule firing or trigger (metrics, signals, recommendations, continuations, retries), in the order they started, with status, disposition and error class. Answers why a recommendation changed."
    )]
    async fn follow_chain(
        &self,
        Parameters(args): Parameters<ChainArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run("chain", &args).await
    }

    #[tool(
        description = "List the schedules (EventBridge rules) with their next fire times in UTC."
    )]
    async fn list_schedules(
        &self,
        Parameters(args): Parameters<SchedulesArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run("schedules", &args).await
    }

    #[tool(
        description = "List live leases: single-instance run leases (kind run, the default) or delivery records (kind idempotency), with holders and expiry."
    )]
    async fn list_leases(
        &self,
        Parameters(args): Parameters<ListLeasesArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run("leases", &args).await
    }

    #[tool(
        description = "Force-release one lease whoever holds it (e.g. run:compute_price_metrics), with a reason that is logged."
    )]
    async fn release_lease(
        &self,
        Parameters(args): Parameters<ReleaseLeaseArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run("release_lease", &args).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for OpsServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "dualcaster-ops",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Operate the Dualcaster Deals task platform: find why messages were dead-lettered, replay them, trigger tasks, inspect schedules and leases.",
            )
    }
}

/// Serves MCP on stdin/stdout until the client closes the connection.
pub async fn serve(ops: Ops) -> anyhow::Result<()> {
    let service = OpsServer::new(ops).serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
