//! Reads the SQS queues of `infra/template.yaml` and creates them in SQS (LocalStack), so local queues and
//! deployed queues come from one definition.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_norway::Value;

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

/// The parts of the template that local runs need.
#[derive(Debug, Clone)]
pub struct Template {
    pub queues: Vec<QueueDefinition>,
    pub tables: Vec<TableDefinition>,
    /// Function environment variables that name a queue (`DD_QUEUE_URL_DEFAULT: !Ref DefaultQueue`).
    pub queue_env: BTreeMap<String, String>,
    /// Function environment variables that name a table (`DD_LEASE_TABLE: !Ref LeaseTable`).
    pub table_env: BTreeMap<String, String>,
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
            queue_env,
            table_env,
        })
    }

    pub fn queue(&self, logical_id: &str) -> Option<&QueueDefinition> {
        self.queues.iter().find(|q| q.logical_id == logical_id)
    }
}

/// The value under a CloudFormation short-form tag (`!Ref X`, `!GetAtt X.Arn`, `!Sub "..."`).
fn tagged<'a>(value: &'a Value, tag: &str) -> Option<&'a Value> {
    match value {
        Value::Tagged(t) if t.tag == tag => Some(&t.value),
        _ => None,
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
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
        for q in crate::queue::Queue::ALL {
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
        for spec in crate::registry::Registry::builtin().iter() {
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
    fn reads_the_lease_table() {
        let t = repo_template();
        let table_id = &t.table_env["DD_LEASE_TABLE"];
        let table = t.tables.iter().find(|x| &x.logical_id == table_id).unwrap();
        assert_eq!(table.hash_key, "pk");
        assert_eq!(table.ttl_attribute.as_deref(), Some("ttl"));
        assert_eq!(table.name("s"), "s-leases");
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
