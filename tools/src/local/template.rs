//! Reads the SQS queues of `infra/template.yaml` and creates them in SQS (LocalStack), so local queues and
//! deployed queues come from one definition.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_norway::Value;

use crate::cfn::{global_function_timeout, number, scalar, tagged};

/// A queue as the template declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDefinition {
    pub logical_id: String,
    /// `QueueName` with `${AWS::StackName}` still in it.
    pub name_template: String,
    /// SQS attributes (`VisibilityTimeout`, `MessageRetentionPeriod`, ...), as strings.
    pub attributes: BTreeMap<String, String>,
    /// `RedrivePolicy`: the dead-letter queue's logical id and `maxReceiveCount`.
    pub redrive: Option<(String, u32)>,
}

impl QueueDefinition {
    pub fn name(&self, stack: &str) -> String {
        self.name_template.replace("${AWS::StackName}", stack)
    }
}

/// A DynamoDB table as the template declares it (string hash key, optional TTL attribute).
#[derive(Debug, Clone, PartialEq)]
pub struct TableDefinition {
    pub logical_id: String,
    pub name_template: String,
    pub hash_key: String,
    pub ttl_attribute: Option<String>,
}

impl TableDefinition {
    pub fn name(&self, stack: &str) -> String {
        self.name_template.replace("${AWS::StackName}", stack)
    }
}

/// A scheduled `AWS::Events::Rule` with queue targets.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDefinition {
    pub logical_id: String,
    pub name_template: String,
    pub expression: String,
    pub enabled: bool,
    pub targets: Vec<RuleTarget>,
}

/// A rule target: a queue of the template and what the rule sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTarget {
    pub id: String,
    pub queue_logical_id: String,
    /// A constant `Input`.
    pub input: Option<String>,
    /// An `InputTransformer`: paths into the event, and the template they fill.
    pub input_paths: BTreeMap<String, String>,
    pub input_template: Option<String>,
}

impl RuleDefinition {
    pub fn name(&self, stack: &str) -> String {
        self.name_template.replace("${AWS::StackName}", stack)
    }
}

/// A queue's function as deployed: what the local stand-ins need to run it the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDefinition {
    pub binary: String,
    pub timeout_secs: u64,
    /// Literal environment values of the function itself (not the `!Ref`s of the globals).
    pub environment: BTreeMap<String, String>,
    /// Its SQS event source: records per invocation and batching window.
    pub batch_size: usize,
    pub batching_window_secs: u64,
}

fn parse_function(resource: &Value, global_timeout: u64) -> Option<FunctionDefinition> {
    let binary = resource
        .get("Metadata")?
        .get("BuildProperties")?
        .get("Binary")?
        .as_str()?;
    let props = resource.get("Properties");
    let timeout_secs =
        number(props.and_then(|p| p.get("Timeout"))).map_or(global_timeout, |t| t as u64);
    let environment = props
        .and_then(|p| p.get("Environment"))
        .and_then(|e| e.get("Variables"))
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v)?)))
                .collect()
        })
        .unwrap_or_default();
    let sqs = props
        .and_then(|p| p.get("Events"))
        .and_then(Value::as_mapping)
        .and_then(|events| {
            events
                .values()
                .find(|e| e.get("Type").and_then(Value::as_str) == Some("SQS"))
        })
        .and_then(|e| e.get("Properties"));
    Some(FunctionDefinition {
        binary: binary.to_owned(),
        timeout_secs,
        environment,
        batch_size: sqs
            .and_then(|p| p.get("BatchSize"))
            .and_then(Value::as_u64)
            .unwrap_or(10) as usize,
        batching_window_secs: sqs
            .and_then(|p| p.get("MaximumBatchingWindowInSeconds"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// The parts of the template that local runs need.
#[derive(Debug, Clone)]
pub struct Template {
    pub queues: Vec<QueueDefinition>,
    pub tables: Vec<TableDefinition>,
    pub rules: Vec<RuleDefinition>,
    /// Function environment variables that name a queue (`DD_QUEUE_URL_DEFAULT: !Ref DefaultQueue`).
    pub queue_env: BTreeMap<String, String>,
    /// Function environment variables that name a table (`DD_LEASE_TABLE: !Ref LeaseTable`).
    pub table_env: BTreeMap<String, String>,
    /// The functions, by binary name (`Metadata.BuildProperties.Binary`).
    pub functions: BTreeMap<String, FunctionDefinition>,
}

/// SQS attributes copied from a queue's properties. Encryption settings are accepted by the emulator too.
const PASSED_ATTRIBUTES: &[&str] = &[
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
];

impl Template {
    pub fn load(path: &Path) -> Result<Template> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Template::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Template> {
        let doc: Value = serde_norway::from_str(text)?;
        let resources = doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| anyhow!("template has no Resources"))?;
        let mut queues = Vec::new();
        let mut tables = Vec::new();
        let mut rules = Vec::new();
        let mut functions = BTreeMap::new();
        let global_timeout = global_function_timeout(&doc) as u64;
        for (id, resource) in resources {
            let id = id
                .as_str()
                .ok_or_else(|| anyhow!("non-string logical id"))?;
            match resource.get("Type").and_then(Value::as_str) {
                Some("AWS::SQS::Queue") => {
                    queues.push(parse_queue(id, resource).with_context(|| format!("queue {id}"))?)
                }
                Some("AWS::DynamoDB::Table") => {
                    tables.push(parse_table(id, resource).with_context(|| format!("table {id}"))?)
                }
                Some("AWS::Events::Rule") => {
                    rules.push(parse_rule(id, resource).with_context(|| format!("rule {id}"))?)
                }
                Some("AWS::Serverless::Function") => {
                    if let Some(f) = parse_function(resource, global_timeout) {
                        functions.insert(f.binary.clone(), f);
                    }
                }
                _ => {}
            }
        }
        let table_ids: Vec<&str> = tables.iter().map(|t| t.logical_id.as_str()).collect();
        let queue_ids: Vec<&str> = queues.iter().map(|q| q.logical_id.as_str()).collect();
        for q in &queues {
            if let Some((dlq, _)) = &q.redrive {
                if !queue_ids.contains(&dlq.as_str()) {
                    bail!(
                        "queue {} redrives to {dlq}, which is not a queue of the template",
                        q.logical_id
                    );
                }
            }
        }
        let mut queue_env = BTreeMap::new();
        let mut table_env = BTreeMap::new();
        if let Some(vars) = doc
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .and_then(|f| f.get("Environment"))
            .and_then(|e| e.get("Variables"))
            .and_then(Value::as_mapping)
        {
            for (name, value) in vars {
                if let (Some(name), Some(target)) = (name.as_str(), tagged(value, "Ref")) {
                    match target.as_str() {
                        Some(t) if queue_ids.contains(&t) => {
                            queue_env.insert(name.to_owned(), t.to_owned());
                        }
                        Some(t) if table_ids.contains(&t) => {
                            table_env.insert(name.to_owned(), t.to_owned());
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Template {
            queues,
            tables,
            rules,
            queue_env,
            table_env,
            functions,
        })
    }

    pub fn queue(&self, logical_id: &str) -> Option<&QueueDefinition> {
        self.queues.iter().find(|q| q.logical_id == logical_id)
    }
}

fn name_template(props: &Value, field: &str) -> Result<String> {
    let name = props.get(field).ok_or_else(|| anyhow!("no {field}"))?;
    Ok(tagged(name, "Sub")
        .and_then(Value::as_str)
        .or_else(|| name.as_str())
        .ok_or_else(|| anyhow!("{field} must be a string or !Sub string"))?
        .to_owned())
}

fn parse_rule(id: &str, resource: &Value) -> Result<RuleDefinition> {
    let props = resource
        .get("Properties")
        .ok_or_else(|| anyhow!("no Properties"))?;
    let expression = props
        .get("ScheduleExpression")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("only scheduled rules (ScheduleExpression) are supported"))?
        .to_owned();
    let enabled = props
        .get("State")
        .and_then(Value::as_str)
        .unwrap_or("ENABLED")
        == "ENABLED";
    let mut targets = Vec::new();
    for t in props
        .get("Targets")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let target_id = t
            .get("Id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("target without Id"))?;
        let queue = t
            .get("Arn")
            .and_then(|a| tagged(a, "GetAtt"))
            .and_then(Value::as_str)
            .and_then(|s| s.strip_suffix(".Arn"))
            .ok_or_else(|| anyhow!("target {target_id}: Arn must be !GetAtt <Queue>.Arn"))?;
        let transformer = t.get("InputTransformer");
        let input_paths = transformer
            .and_then(|x| x.get("InputPathsMap"))
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        targets.push(RuleTarget {
            id: target_id.to_owned(),
            queue_logical_id: queue.to_owned(),
            input: t.get("Input").and_then(Value::as_str).map(str::to_owned),
            input_paths,
            input_template: transformer
                .and_then(|x| x.get("InputTemplate"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    Ok(RuleDefinition {
        logical_id: id.to_owned(),
        name_template: name_template(props, "Name")?,
        expression,
        enabled,
        targets,
    })
}

fn parse_table(id: &str, resource: &Value) -> Result<TableDefinition> {
    let props = resource
        .get("Properties")
        .ok_or_else(|| anyhow!("no Properties"))?;
    let hash_key = props
        .get("KeySchema")
        .and_then(Value::as_sequence)
        .and_then(|keys| {
            keys.iter()
                .find(|k| k.get("KeyType").and_then(Value::as_str) == Some("HASH"))
        })
        .and_then(|k| k.get("AttributeName"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("KeySchema has no HASH key"))?
        .to_owned();
    let ttl_attribute = props
        .get("TimeToLiveSpecification")
        .filter(|t| t.get("Enabled").and_then(Value::as_bool) == Some(true))
        .and_then(|t| t.get("AttributeName"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(TableDefinition {
        logical_id: id.to_owned(),
        name_template: name_template(props, "TableName")?,
        hash_key,
        ttl_attribute,
    })
}

fn parse_queue(id: &str, resource: &Value) -> Result<QueueDefinition> {
    let props = resource
        .get("Properties")
        .ok_or_else(|| anyhow!("no Properties"))?;
    let name_template = name_template(props, "QueueName")?;
    let mut attributes = BTreeMap::new();
    for attr in PASSED_ATTRIBUTES {
        if let Some(v) = props.get(*attr) {
            let v = scalar(v).ok_or_else(|| anyhow!("{attr} must be a literal"))?;
            attributes.insert((*attr).to_owned(), v);
        }
    }
    let redrive = match props.get("RedrivePolicy") {
        None => None,
        Some(policy) => {
            let target = policy
                .get("deadLetterTargetArn")
                .and_then(|v| tagged(v, "GetAtt"))
                .and_then(Value::as_str)
                .and_then(|s| s.strip_suffix(".Arn"))
                .ok_or_else(|| {
                    anyhow!("RedrivePolicy.deadLetterTargetArn must be !GetAtt <Queue>.Arn")
                })?;
            let max = policy
                .get("maxReceiveCount")
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow!("RedrivePolicy.maxReceiveCount must be a number"))?;
            Some((target.to_owned(), u32::try_from(max)?))
        }
    };
    Ok(QueueDefinition {
        logical_id: id.to_owned(),
        name_template,
        attributes,
        redrive,
    })
}

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
        if let Some((dlq, max)) = &q.redrive {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_template() -> Template {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        Template::load(&path).unwrap()
    }

    #[test]
    fn reads_every_queue_and_its_dead_letter_queue() {
        let t = repo_template();
        let ids: Vec<&str> = t.queues.iter().map(|q| q.logical_id.as_str()).collect();
        for q in dualcaster::queue::Queue::ALL {
            let suffix = q.env_suffix();
            let queue_id = &t.queue_env[&format!("DD_QUEUE_URL_{suffix}")];
            let dlq_id = &t.queue_env[&format!("DD_DLQ_URL_{suffix}")];
            assert!(ids.contains(&queue_id.as_str()));
            let queue = t.queue(queue_id).unwrap();
            let (target, max) = queue.redrive.clone().unwrap();
            assert_eq!(&target, dlq_id, "{queue_id} must redrive to its own DLQ");
            assert!(max >= 5);
            assert!(t.queue(dlq_id).unwrap().redrive.is_none());
            assert_eq!(queue.name("s"), format!("s-{q}"));
        }
    }

    #[test]
    fn every_task_is_dead_lettered_by_the_runtime_before_the_redrive_backstop() {
        // The runtime forwards a message to the DLQ (with its error context) after the task's last retry;
        // the queue's maxReceiveCount must leave room for that plus a couple of crash redeliveries, or the
        // redrive policy would move the message first, without context.
        let t = repo_template();
        for spec in dualcaster::tasks::registry().iter() {
            let queue_id = &t.queue_env[&format!("DD_QUEUE_URL_{}", spec.queue.env_suffix())];
            let (_, max_receive) = t.queue(queue_id).unwrap().redrive.clone().unwrap();
            assert!(
                spec.retry.max_retries + 1 + 2 <= max_receive,
                "{}: {} attempts do not fit under maxReceiveCount {max_receive} of {queue_id}",
                spec.name,
                spec.retry.max_retries + 1
            );
        }
    }

    #[test]
    fn reads_the_generated_rules() {
        let t = repo_template();
        let ping = t
            .rules
            .iter()
            .find(|r| r.logical_id == "SchedulePingHeartbeat")
            .unwrap();
        assert_eq!(ping.expression, "cron(0/15 * * * ? *)");
        assert_eq!(ping.name("s"), "s-ping-heartbeat");
        assert!(ping.enabled);
        assert_eq!(ping.targets.len(), 1);
        assert_eq!(ping.targets[0].queue_logical_id, "DefaultQueue");
        assert_eq!(
            ping.targets[0].input_paths.get("time").map(String::as_str),
            Some("$.time")
        );
        assert!(ping.targets[0]
            .input_template
            .as_deref()
            .unwrap()
            .contains("schedule:ping-heartbeat:<time>"));
    }

    #[test]
    fn reads_the_lease_table() {
        let t = repo_template();
        let table_id = &t.table_env["DD_LEASE_TABLE"];
        let table = t.tables.iter().find(|x| &x.logical_id == table_id).unwrap();
        assert_eq!(table.hash_key, "pk");
        assert_eq!(table.ttl_attribute.as_deref(), Some("ttl"));
        assert_eq!(table.name("s"), "s-leases");
        let ingestion = &t.functions["ingestion"];
        assert_eq!((ingestion.timeout_secs, ingestion.batch_size), (900, 1));
        assert_eq!(
            ingestion
                .environment
                .get("DD_CONCURRENCY")
                .map(String::as_str),
            Some("1")
        );
        let default = &t.functions["default"];
        assert_eq!(
            (
                default.timeout_secs,
                default.batch_size,
                default.batching_window_secs
            ),
            (120, 10, 5)
        );
    }

    #[test]
    fn rejects_a_redrive_to_nowhere() {
        let text = r#"
Resources:
  Q:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: q
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt Missing.Arn
        maxReceiveCount: 5
"#;
        let err = Template::parse(text).unwrap_err();
        assert!(err.to_string().contains("Missing"), "{err}");
    }
}
