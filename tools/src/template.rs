//! One typed model of `infra/template.yaml`, read once: the deployment rules check it ([`crate::infra`]) and
//! the local stack is provisioned from it ([`crate::local::template`]).
//!
//! Reading is lenient about what the rules judge (a redrive policy without a target, an event source without
//! a queue are facts to report, not parse errors) and strict about shapes nothing could use (a queue name
//! that is not a string).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_norway::Value;

use crate::cfn::{get_att_target, global_function_timeout, list, number, scalar, tagged};

/// A queue as the template declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDefinition {
    pub logical_id: String,
    /// `QueueName` with `${AWS::StackName}` still in it.
    pub name_template: String,
    /// SQS attributes (`VisibilityTimeout`, `MessageRetentionPeriod`, ...), as strings.
    pub attributes: BTreeMap<String, String>,
    /// `RedrivePolicy`, when there is one.
    pub redrive: Option<Redrive>,
    /// `SqsManagedSseEnabled: true` or a `KmsMasterKeyId`.
    pub encrypted: bool,
}

/// A queue's `RedrivePolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redrive {
    /// The dead-letter queue's logical id, when `deadLetterTargetArn` is `!GetAtt <Queue>.Arn`.
    pub target: Option<String>,
    /// `maxReceiveCount` (0 when missing).
    pub max_receive_count: u32,
}

impl QueueDefinition {
    pub fn name(&self, stack: &str) -> String {
        self.name_template.replace("${AWS::StackName}", stack)
    }

    /// `VisibilityTimeout` in seconds (SQS's default of 30 when unset).
    pub fn visibility_timeout(&self) -> f64 {
        self.attributes
            .get("VisibilityTimeout")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30.0)
    }
}

/// A DynamoDB table as the template declares it (string hash key, optional TTL attribute).
#[derive(Debug, Clone, PartialEq)]
pub struct TableDefinition {
    pub logical_id: String,
    pub name_template: String,
    pub hash_key: String,
    pub ttl_attribute: Option<String>,
    /// `SSESpecification.SSEEnabled: true`.
    pub encrypted: bool,
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

/// An `AWS::Serverless::Function`.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDefinition {
    pub logical_id: String,
    /// `FunctionName` as written (`${AWS::StackName}-ingestion`), when the template names the function.
    pub name_template: Option<String>,
    /// `Metadata.BuildProperties.Binary`: the cargo binary it is built from.
    pub binary: Option<String>,
    /// Its own `Timeout`, else the globals' (Lambda's 3 s when neither says).
    pub timeout_secs: u64,
    /// Literal environment values of the function itself (not the `!Ref`s of the globals).
    pub environment: BTreeMap<String, String>,
    pub sqs_events: Vec<SqsEventSource>,
    /// The `Allow` and `Deny` statements of its inline policies.
    pub statements: Vec<Statement>,
}

impl FunctionDefinition {
    /// The first SQS event source's records per invocation (SAM's default of 10).
    pub fn batch_size(&self) -> usize {
        self.sqs_events.first().map_or(10, |e| e.batch_size)
    }

    /// The first SQS event source's batching window in seconds.
    pub fn batching_window_secs(&self) -> u64 {
        self.sqs_events
            .first()
            .map_or(0, |e| e.batching_window_secs)
    }
}

/// An SQS event source of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsEventSource {
    /// The queue's logical id, when `Queue` is `!GetAtt <Queue>.Arn`.
    pub queue: Option<String>,
    pub batch_size: usize,
    pub batching_window_secs: u64,
    /// `FunctionResponseTypes` holds `ReportBatchItemFailures`.
    pub reports_batch_item_failures: bool,
    /// `ScalingConfig.MaximumConcurrency`.
    pub maximum_concurrency: Option<f64>,
}

/// One IAM policy statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub allow: bool,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

/// An `AWS::CloudWatch::Alarm`: its metric, the queues its dimensions name, and whom it notifies.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmDefinition {
    pub logical_id: String,
    pub namespace: Option<String>,
    pub metric: Option<String>,
    /// `QueueName` dimensions given as `!GetAtt <Queue>.QueueName`.
    pub queues: Vec<String>,
    /// Every dimension: a literal or `!Sub` value as written (`${AWS::StackName}-ingestion`), a `!GetAtt`
    /// as its target.
    pub dimensions: BTreeMap<String, String>,
    /// Whether `AlarmActions` notifies the `AlarmTopicArn` parameter.
    pub notifies_alarm_topic: bool,
    pub treat_missing_data: Option<String>,
}

/// A security-scan finding skipped on a resource (`Metadata.checkov.skip`).
#[derive(Debug, Clone, PartialEq)]
pub struct SecuritySkip {
    pub resource: String,
    pub check: String,
    pub reason: String,
}

/// The template.
#[derive(Debug, Clone)]
pub struct Template {
    pub queues: Vec<QueueDefinition>,
    pub tables: Vec<TableDefinition>,
    pub rules: Vec<RuleDefinition>,
    pub functions: Vec<FunctionDefinition>,
    pub alarms: Vec<AlarmDefinition>,
    pub security_skips: Vec<SecuritySkip>,
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
        let global_timeout = global_function_timeout(&doc) as u64;
        let mut t = Template {
            queues: Vec::new(),
            tables: Vec::new(),
            rules: Vec::new(),
            functions: Vec::new(),
            alarms: Vec::new(),
            security_skips: Vec::new(),
            queue_env: BTreeMap::new(),
            table_env: BTreeMap::new(),
        };
        for (id, resource) in resources {
            let id = id
                .as_str()
                .ok_or_else(|| anyhow!("non-string logical id"))?;
            let props = resource.get("Properties").unwrap_or(&Value::Null);
            match resource.get("Type").and_then(Value::as_str) {
                Some("AWS::SQS::Queue") => t
                    .queues
                    .push(parse_queue(id, props).with_context(|| format!("queue {id}"))?),
                Some("AWS::DynamoDB::Table") => t
                    .tables
                    .push(parse_table(id, props).with_context(|| format!("table {id}"))?),
                Some("AWS::Events::Rule") => t
                    .rules
                    .push(parse_rule(id, props).with_context(|| format!("rule {id}"))?),
                Some("AWS::Serverless::Function") => {
                    t.functions
                        .push(parse_function(id, resource, global_timeout))
                }
                Some("AWS::CloudWatch::Alarm") => t.alarms.push(parse_alarm(id, props)),
                _ => {}
            }
            t.security_skips.extend(parse_skips(id, resource));
        }
        (t.queue_env, t.table_env) = resource_env(&doc, &t);
        Ok(t)
    }

    pub fn queue(&self, logical_id: &str) -> Option<&QueueDefinition> {
        self.queues.iter().find(|q| q.logical_id == logical_id)
    }

    /// The function built from `binary`.
    pub fn function(&self, binary: &str) -> Option<&FunctionDefinition> {
        self.functions
            .iter()
            .find(|f| f.binary.as_deref() == Some(binary))
    }

    /// What provisioning cannot do without: every redrive policy names a queue of the template.
    pub fn check_provisionable(&self) -> Result<()> {
        for q in &self.queues {
            match q.redrive.as_ref().map(|r| &r.target) {
                None => {}
                Some(None) => bail!(
                    "queue {}: RedrivePolicy.deadLetterTargetArn must be !GetAtt <Queue>.Arn",
                    q.logical_id
                ),
                Some(Some(dlq)) if self.queue(dlq).is_none() => bail!(
                    "queue {} redrives to {dlq}, which is not a queue of the template",
                    q.logical_id
                ),
                Some(Some(_)) => {}
            }
        }
        Ok(())
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

fn strings(value: Option<&Value>) -> Vec<String> {
    list(value)
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn parse_queue(id: &str, props: &Value) -> Result<QueueDefinition> {
    let mut attributes = BTreeMap::new();
    for attr in PASSED_ATTRIBUTES {
        if let Some(v) = props.get(*attr) {
            let v = scalar(v).ok_or_else(|| anyhow!("{attr} must be a literal"))?;
            attributes.insert((*attr).to_owned(), v);
        }
    }
    let redrive = props.get("RedrivePolicy").map(|policy| Redrive {
        target: policy
            .get("deadLetterTargetArn")
            .and_then(|v| tagged(v, "GetAtt"))
            .and_then(Value::as_str)
            .and_then(|s| s.strip_suffix(".Arn"))
            .map(str::to_owned),
        max_receive_count: number(policy.get("maxReceiveCount")).map_or(0, |n| n as u32),
    });
    Ok(QueueDefinition {
        logical_id: id.to_owned(),
        name_template: name_template(props, "QueueName")?,
        attributes,
        redrive,
        encrypted: props.get("SqsManagedSseEnabled").and_then(Value::as_bool) == Some(true)
            || props.get("KmsMasterKeyId").is_some(),
    })
}

fn parse_table(id: &str, props: &Value) -> Result<TableDefinition> {
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
        encrypted: props
            .get("SSESpecification")
            .and_then(|s| s.get("SSEEnabled"))
            .and_then(Value::as_bool)
            == Some(true),
    })
}

fn parse_rule(id: &str, props: &Value) -> Result<RuleDefinition> {
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

fn parse_function(id: &str, resource: &Value, global_timeout: u64) -> FunctionDefinition {
    let props = resource.get("Properties").unwrap_or(&Value::Null);
    let environment = props
        .get("Environment")
        .and_then(|e| e.get("Variables"))
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v)?)))
                .collect()
        })
        .unwrap_or_default();
    let sqs_events = props
        .get("Events")
        .and_then(Value::as_mapping)
        .into_iter()
        .flat_map(|events| events.values())
        .filter(|e| e.get("Type").and_then(Value::as_str) == Some("SQS"))
        .map(|e| {
            let p = e.get("Properties").unwrap_or(&Value::Null);
            SqsEventSource {
                queue: p.get("Queue").and_then(get_att_target),
                batch_size: number(p.get("BatchSize")).map_or(10, |n| n as usize),
                batching_window_secs: number(p.get("MaximumBatchingWindowInSeconds"))
                    .map_or(0, |n| n as u64),
                reports_batch_item_failures: strings(p.get("FunctionResponseTypes"))
                    .iter()
                    .any(|t| t == "ReportBatchItemFailures"),
                maximum_concurrency: number(
                    p.get("ScalingConfig")
                        .and_then(|s| s.get("MaximumConcurrency")),
                ),
            }
        })
        .collect();
    let statements = list(props.get("Policies"))
        .iter()
        .flat_map(|policy| list(policy.get("Statement")))
        .map(|s| Statement {
            allow: s.get("Effect").and_then(Value::as_str) == Some("Allow"),
            actions: strings(s.get("Action")),
            resources: strings(s.get("Resource")),
        })
        .collect();
    FunctionDefinition {
        logical_id: id.to_owned(),
        name_template: name_template(props, "FunctionName").ok(),
        binary: resource
            .get("Metadata")
            .and_then(|m| m.get("BuildProperties"))
            .and_then(|b| b.get("Binary"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        timeout_secs: number(props.get("Timeout")).map_or(global_timeout, |t| t as u64),
        environment,
        sqs_events,
        statements,
    }
}

fn parse_alarm(id: &str, props: &Value) -> AlarmDefinition {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    AlarmDefinition {
        logical_id: id.to_owned(),
        namespace: text(props.get("Namespace")),
        dimensions: list(props.get("Dimensions"))
            .iter()
            .filter_map(|d| {
                let name = d.get("Name")?.as_str()?.to_owned();
                let value = d.get("Value")?;
                let value = get_att_target(value)
                    .or_else(|| {
                        tagged(value, "Sub")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .or_else(|| value.as_str().map(str::to_owned))?;
                Some((name, value))
            })
            .collect(),
        notifies_alarm_topic: serde_norway::to_string(
            props.get("AlarmActions").unwrap_or(&Value::Null),
        )
        .is_ok_and(|actions| actions.contains("AlarmTopicArn")),
        treat_missing_data: text(props.get("TreatMissingData")),
        metric: props
            .get("MetricName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        queues: list(props.get("Dimensions"))
            .iter()
            .filter(|d| d.get("Name").and_then(Value::as_str) == Some("QueueName"))
            .filter_map(|d| d.get("Value").and_then(get_att_target))
            .collect(),
    }
}

fn parse_skips(id: &str, resource: &Value) -> Vec<SecuritySkip> {
    let skips = resource
        .get("Metadata")
        .and_then(|m| m.get("checkov"))
        .and_then(|c| c.get("skip"));
    list(skips)
        .iter()
        .map(|skip| SecuritySkip {
            resource: id.to_owned(),
            check: skip
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("(no id)")
                .to_owned(),
            reason: skip
                .get("comment")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_owned(),
        })
        .collect()
}

/// The globals' environment variables that name a queue or a table of the template.
fn resource_env(doc: &Value, t: &Template) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut queue_env, mut table_env) = (BTreeMap::new(), BTreeMap::new());
    let vars = doc
        .get("Globals")
        .and_then(|g| g.get("Function"))
        .and_then(|f| f.get("Environment"))
        .and_then(|e| e.get("Variables"))
        .and_then(Value::as_mapping);
    for (name, value) in vars.into_iter().flatten() {
        let (Some(name), Some(target)) =
            (name.as_str(), tagged(value, "Ref").and_then(Value::as_str))
        else {
            continue;
        };
        if t.queue(target).is_some() {
            queue_env.insert(name.to_owned(), target.to_owned());
        } else if t.tables.iter().any(|x| x.logical_id == target) {
            table_env.insert(name.to_owned(), target.to_owned());
        }
    }
    (queue_env, table_env)
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
            let redrive = queue.redrive.clone().unwrap();
            assert_eq!(
                redrive.target.as_ref(),
                Some(dlq_id),
                "{queue_id} must redrive to its own DLQ"
            );
            assert!(redrive.max_receive_count >= 5);
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
            let max_receive = t
                .queue(queue_id)
                .unwrap()
                .redrive
                .clone()
                .unwrap()
                .max_receive_count;
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
        let ingestion = t.function("ingestion").unwrap();
        assert_eq!((ingestion.timeout_secs, ingestion.batch_size()), (900, 1));
        assert_eq!(
            ingestion
                .environment
                .get("DD_CONCURRENCY")
                .map(String::as_str),
            Some("1")
        );
        let default = t.function("default").unwrap();
        assert_eq!(
            (
                default.timeout_secs,
                default.batch_size(),
                default.batching_window_secs()
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
        let err = Template::parse(text)
            .unwrap()
            .check_provisionable()
            .unwrap_err();
        assert!(err.to_string().contains("Missing"), "{err}");
    }
}
