//! The local stack as CloudFormation creates it: the template without its functions
//! ([`crate::infra::without_functions`]) deployed to LocalStack under a stack name, as the deploy rehearsal
//! does, and the functions' environment read back from the stack's resources. Queues, DLQs, their policies,
//! the lease table, the alarms, the dashboard and the schedule rules are what a deployment would create, with
//! nothing written by hand (`emulator.rs` stages the template in S3 and creates the dashboard, as AWS would).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_sdk_cloudformation::error::DisplayErrorContext;
use aws_sdk_cloudformation::types::{Parameter, StackStatus};

use super::emulator;
use super::template::Provisioned;
use crate::infra::without_functions;
use crate::template::Template;

/// The secret the template asks for. Locally the functions get `DATABASE_URL`, which wins over it.
const LOCAL_SECRET_ARN: &str =
    "arn:aws:secretsmanager:us-east-1:000000000000:secret:dualcaster-local-db";

/// Creates the stack `stack` from `template_path`, or updates it when it exists, and waits until it is
/// complete. Returns the queue URLs and table names by logical id and the functions' resource variables.
pub async fn deploy(
    aws: &aws_config::SdkConfig,
    template_path: &Path,
    stack: &str,
) -> Result<Provisioned> {
    let text = std::fs::read_to_string(template_path)
        .with_context(|| format!("reading {}", template_path.display()))?;
    let model = Template::parse(&text)?;
    let (plain, _) = without_functions(&text)?;
    let endpoint = aws
        .endpoint_url()
        .ok_or_else(|| anyhow!("the local AWS configuration has no endpoint"))?;
    let region = aws.region().map_or("us-east-1", |r| r.as_ref());
    let url = emulator::stage_template(endpoint, stack, &plain).await?;
    let cfn = aws_sdk_cloudformation::Client::new(aws);
    let parameter = Parameter::builder()
        .parameter_key("DatabaseSecretArn")
        .parameter_value(LOCAL_SECRET_ARN)
        .build();
    match status(&cfn, stack).await? {
        None => create(&cfn, stack, &url, parameter).await?,
        Some(s) if s.as_str().ends_with("_COMPLETE") && !s.as_str().contains("ROLLBACK") => {
            let updated = cfn
                .update_stack()
                .stack_name(stack)
                .template_url(&url)
                .parameters(parameter)
                .send()
                .await;
            if let Err(e) = updated {
                let text = DisplayErrorContext(&e).to_string();
                if !text.contains("No updates are to be performed") {
                    bail!("UpdateStack {stack}: {text}");
                }
            }
        }
        Some(_) => {
            // A failed or rolled-back stack cannot be updated: start again.
            cfn.delete_stack()
                .stack_name(stack)
                .send()
                .await
                .map_err(|e| anyhow!("DeleteStack {stack}: {}", DisplayErrorContext(&e)))?;
            wait(&cfn, stack).await?;
            create(&cfn, stack, &url, parameter).await?;
        }
    }
    match wait(&cfn, stack).await? {
        Some(StackStatus::CreateComplete | StackStatus::UpdateComplete) => {}
        other => bail!(
            "stack {stack} ended {other:?}: {} (resources of the same names created outside CloudFormation, \
             by an older `dualcaster provision`, are in the way: `make stack-down` then `make stack-up` \
             starts LocalStack empty)",
            failure_reasons(&cfn, stack).await
        ),
    }
    emulator::put_dashboards(endpoint, &plain, stack, region).await?;
    provisioned(&cfn, &model, stack).await
}

async fn create(
    cfn: &aws_sdk_cloudformation::Client,
    stack: &str,
    template_url: &str,
    parameter: Parameter,
) -> Result<()> {
    cfn.create_stack()
        .stack_name(stack)
        .template_url(template_url)
        .parameters(parameter)
        .send()
        .await
        .map_err(|e| anyhow!("CreateStack {stack}: {}", DisplayErrorContext(&e)))?;
    Ok(())
}

/// The stack's status; `None` when there is no such stack (or it was deleted).
async fn status(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Result<Option<StackStatus>> {
    match cfn.describe_stacks().stack_name(stack).send().await {
        Ok(out) => Ok(out
            .stacks()
            .first()
            .and_then(|s| s.stack_status().cloned())
            .filter(|s| *s != StackStatus::DeleteComplete)),
        Err(e)
            if DisplayErrorContext(&e)
                .to_string()
                .contains("does not exist") =>
        {
            Ok(None)
        }
        Err(e) => bail!("DescribeStacks {stack}: {}", DisplayErrorContext(&e)),
    }
}

/// Waits (two minutes at most) until the stack is no longer in progress; returns where it ended.
async fn wait(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Result<Option<StackStatus>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let current = status(cfn, stack).await?;
        let busy = current
            .as_ref()
            .is_some_and(|s| s.as_str().ends_with("_IN_PROGRESS"));
        if !busy {
            return Ok(current);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("stack {stack} still {current:?} after two minutes");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn failure_reasons(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> String {
    match cfn.describe_stack_events().stack_name(stack).send().await {
        Ok(out) => out
            .stack_events()
            .iter()
            .filter_map(|e| {
                Some(format!(
                    "{}: {}",
                    e.logical_resource_id()?,
                    e.resource_status_reason()?
                ))
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("(events unavailable: {})", DisplayErrorContext(&e)),
    }
}

/// The stack's queues (physical id: the URL) and tables (physical id: the name), and the functions'
/// variables that name them.
async fn provisioned(
    cfn: &aws_sdk_cloudformation::Client,
    model: &Template,
    stack: &str,
) -> Result<Provisioned> {
    let resources = cfn
        .describe_stack_resources()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "DescribeStackResources {stack}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    let physical: BTreeMap<&str, &str> = resources
        .stack_resources()
        .iter()
        .filter_map(|r| Some((r.logical_resource_id()?, r.physical_resource_id()?)))
        .collect();
    let mut out = Provisioned::default();
    for q in &model.queues {
        let url = physical
            .get(q.logical_id.as_str())
            .ok_or_else(|| anyhow!("stack {stack} has no queue {}", q.logical_id))?;
        out.urls.insert(q.logical_id.clone(), (*url).to_owned());
    }
    for t in &model.tables {
        let name = physical
            .get(t.logical_id.as_str())
            .ok_or_else(|| anyhow!("stack {stack} has no table {}", t.logical_id))?;
        out.tables.insert(t.logical_id.clone(), (*name).to_owned());
    }
    for (var, id) in &model.queue_env {
        if let Some(url) = out.urls.get(id) {
            out.env.insert(var.clone(), url.clone());
        }
    }
    for (var, id) in &model.table_env {
        if let Some(name) = out.tables.get(id) {
            out.env.insert(var.clone(), name.clone());
        }
    }
    Ok(out)
}
