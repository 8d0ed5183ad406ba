//! Creates the template's queues, lease table and scheduled rules in LocalStack under a stack name, from the
//! one typed model of the template ([`crate::template`]), so local queues and deployed queues come from one
//! definition.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use aws_sdk_sqs::types::QueueAttributeName;

pub use crate::template::Template;
use crate::template::{QueueDefinition, Redrive, TableDefinition};

/// Queues created for one stack name.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    /// Queue URL by logical id.
    pub urls: BTreeMap<String, String>,
    /// Queue ARN by logical id.
    pub arns: BTreeMap<String, String>,
    /// Table name by logical id.
    pub tables: BTreeMap<String, String>,
    /// The functions' resource variables (`DD_QUEUE_URL_*`, `DD_DLQ_URL_*`, `DD_LEASE_TABLE`).
    pub env: BTreeMap<String, String>,
}

/// Creates (or updates) every queue of the template under `stack`, dead-letter queues first. `overrides`
/// replace template attributes, e.g. a short `VisibilityTimeout` for tests.
pub async fn provision(
    sqs: &aws_sdk_sqs::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    template: &Template,
    stack: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<Provisioned> {
    template.check_provisionable()?;
    let mut out = Provisioned::default();
    // Queues without a redrive policy first: the others need their DLQ's ARN.
    let mut ordered: Vec<&QueueDefinition> = template.queues.iter().collect();
    ordered.sort_by_key(|q| q.redrive.is_some());
    for q in ordered {
        let mut attrs: BTreeMap<String, String> = q.attributes.clone();
        for (k, v) in overrides {
            if attrs.contains_key(k) || k == "VisibilityTimeout" {
                attrs.insert(k.clone(), v.clone());
            }
        }
        if let Some(Redrive {
            target: Some(dlq),
            max_receive_count: max,
        }) = &q.redrive
        {
            let arn = out
                .arns
                .get(dlq)
                .ok_or_else(|| anyhow!("{} needs {dlq} first", q.logical_id))?;
            attrs.insert(
                "RedrivePolicy".into(),
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string(),
            );
        }
        let name = q.name(stack);
        let mut request = sqs.create_queue().queue_name(&name);
        for (k, v) in &attrs {
            request = request.attributes(QueueAttributeName::from(k.as_str()), v);
        }
        let created = request.send().await.map_err(|e| {
            anyhow!(
                "CreateQueue {name}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })?;
        let url = created
            .queue_url()
            .ok_or_else(|| anyhow!("CreateQueue {name} returned no URL"))?
            .to_owned();
        // CreateQueue leaves an existing queue's attributes alone: apply them so a rerun converges.
        let mut set = sqs.set_queue_attributes().queue_url(&url);
        for (k, v) in &attrs {
            set = set.attributes(QueueAttributeName::from(k.as_str()), v);
        }
        set.send().await.map_err(|e| {
            anyhow!(
                "SetQueueAttributes {name}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })?;
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "GetQueueAttributes {name}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| anyhow!("{name} has no QueueArn"))?;
        out.urls.insert(q.logical_id.clone(), url);
        out.arns.insert(q.logical_id.clone(), arn);
    }
    for table in &template.tables {
        let name = table.name(stack);
        create_table(dynamodb, table, &name).await?;
        out.tables.insert(table.logical_id.clone(), name);
    }
    for (var, id) in &template.queue_env {
        out.env.insert(var.clone(), out.urls[id].clone());
    }
    for (var, id) in &template.table_env {
        out.env.insert(var.clone(), out.tables[id].clone());
    }
    Ok(out)
}

/// Creates an on-demand table with the definition's hash key (if it does not exist) and enables its TTL.
async fn create_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &TableDefinition,
    name: &str,
) -> Result<()> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveSpecification,
    };
    if dynamodb
        .describe_table()
        .table_name(name)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(&table.hash_key)
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(&table.hash_key)
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "CreateTable {name}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        })?;
    if let Some(ttl) = &table.ttl_attribute {
        dynamodb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(ttl)
                    .enabled(true)
                    .build()?,
            )
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "UpdateTimeToLive {name}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                )
            })?;
    }
    Ok(())
}

/// Deletes every queue and table of a provisioned stack (tests clean up after themselves with this).
pub async fn delete(
    sqs: &aws_sdk_sqs::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    provisioned: &Provisioned,
) {
    for url in provisioned.urls.values() {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
    for name in provisioned.tables.values() {
        let _ = dynamodb.delete_table().table_name(name).send().await;
    }
}

/// Creates the template's scheduled rules in EventBridge (LocalStack) for a provisioned stack, targeting
/// its queues. `expressions` replaces a rule's schedule by logical id (tests fire every minute); rules not in
/// `only` (when given) are created disabled. Returns the rule names.
pub async fn provision_rules(
    events: &aws_sdk_eventbridge::Client,
    template: &Template,
    stack: &str,
    provisioned: &Provisioned,
    expressions: &BTreeMap<String, String>,
    only: Option<&[&str]>,
) -> Result<Vec<String>> {
    use aws_sdk_eventbridge::types::{InputTransformer, RuleState, Target};
    let mut names = Vec::new();
    for rule in &template.rules {
        let name = rule.name(stack);
        let expression = expressions
            .get(&rule.logical_id)
            .unwrap_or(&rule.expression);
        let wanted = only.is_none_or(|ids| ids.contains(&rule.logical_id.as_str()));
        let state = if rule.enabled && wanted {
            RuleState::Enabled
        } else {
            RuleState::Disabled
        };
        events
            .put_rule()
            .name(&name)
            .schedule_expression(expression)
            .state(state)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "PutRule {name}: {}",
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                )
            })?;
        let mut targets = Vec::new();
        for t in &rule.targets {
            let arn = provisioned.arns.get(&t.queue_logical_id).ok_or_else(|| {
                anyhow!(
                    "rule {name} targets {}, which was not provisioned",
                    t.queue_logical_id
                )
            })?;
            let mut target = Target::builder().id(&t.id).arn(arn);
            if let Some(input) = &t.input {
                target = target.input(input);
            }
            if let Some(template) = &t.input_template {
                let mut transformer = InputTransformer::builder().input_template(template);
                for (k, v) in &t.input_paths {
                    transformer = transformer.input_paths_map(k, v);
                }
                target = target.input_transformer(transformer.build()?);
            }
            targets.push(target.build()?);
        }
        events
            .put_targets()
            .rule(&name)
            .set_targets(Some(targets))
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "PutTargets {name}: {}",
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                )
            })?;
        names.push(name);
    }
    Ok(names)
}

/// Removes rules created by [`provision_rules`].
pub async fn delete_rules(
    events: &aws_sdk_eventbridge::Client,
    template: &Template,
    names: &[String],
) {
    for name in names {
        let ids: Vec<String> = template
            .rules
            .iter()
            .flat_map(|r| r.targets.iter().map(|t| t.id.clone()))
            .collect();
        let _ = events
            .remove_targets()
            .rule(name)
            .set_ids(Some(ids))
            .send()
            .await;
        let _ = events.delete_rule().name(name).send().await;
    }
}
