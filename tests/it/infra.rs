use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dualcaster::queue::Queue;
use dualcaster_tools::local::event_source::invoke_function;
use dualcaster_tools::local::local_events;
use dualcaster_tools::local::template::{delete_rules, provision_rules, Template};
use integration_tests::TestStack;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool from the pinned venvs that `scripts/stack.sh tools` (part of `make setup`) installs.
fn tool(name: &str) -> PathBuf {
    let venv = if name == "checkov" {
        "venv-checkov"
    } else {
        "venv-tools"
    };
    let path = repo().join(".local").join(venv).join("bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make tools` (or `make setup`)",
        path.display()
    );
    path
}

/// `cargo test -p integration-tests` alone must fail on a stale template too, not only `make test`.
#[test]
fn the_template_schedules_are_those_the_registry_generates() {
    let template = std::fs::read_to_string(repo().join("infra/template.yaml")).unwrap();
    if let Err(e) = dualcaster_tools::infra::check_drift(&template, &dualcaster::tasks::registry())
    {
        panic!("{e}");
    }
}

fn run_ok(mut cmd: Command) {
    let out = cmd
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("SAM_CLI_TELEMETRY", "0")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cfn_lint_passes_on_the_template() {
    let mut cmd = Command::new(tool("cfn-lint"));
    cmd.arg("infra/template.yaml");
    run_ok(cmd);
}

/// Every finding is fixed or skipped in the template with a written reason (the invariant checks require
/// the reason).
#[test]
fn checkov_passes_on_the_template() {
    let mut cmd = Command::new(tool("checkov"));
    cmd.args([
        "--file",
        "infra/template.yaml",
        "--framework",
        "cloudformation",
        "--skip-download",
        "--compact",
        "--quiet",
    ]);
    run_ok(cmd);
}

#[test]
fn sam_validate_lint_passes_on_the_template() {
    let mut cmd = Command::new(tool("sam"));
    cmd.args(["validate", "--lint", "--template", "infra/template.yaml"]);
    run_ok(cmd);
}

#[tokio::test]
#[ignore = "slow: waits for EventBridge's next minute (up to ~70 s); `make test-slow` runs it"]
async fn a_scheduled_rule_fires_into_its_queue_and_the_task_runs() {
    let stack = TestStack::start().await.unwrap();
    let template = Template::load(&repo().join("infra/template.yaml")).unwrap();
    let events = local_events().await;
    // The template's ping heartbeat, made to fire every minute; every other rule created disabled.
    let every_minute = BTreeMap::from([(
        "SchedulePingHeartbeat".to_owned(),
        "cron(* * * * ? *)".to_owned(),
    )]);
    let rules = provision_rules(
        &events,
        &template,
        &stack.name,
        &stack.provisioned,
        &every_minute,
        Some(&["SchedulePingHeartbeat"]),
    )
    .await
    .unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(80);
    let mut dispatched = None;
    while tokio::time::Instant::now() < deadline {
        let d = source
            .poll_once(Duration::from_secs(2), |event| {
                invoke_function(&function, event)
            })
            .await
            .unwrap();
        if d.received > 0 {
            dispatched = Some(d);
            break;
        }
    }
    delete_rules(&events, &template, &rules).await;
    let d = dispatched.expect("no scheduled message within 80 s");
    assert_eq!(d.deleted, d.received, "{d:?}");

    let (key, note): (String, Option<String>) =
        sqlx::query_as("SELECT check_key, note FROM health_checks WHERE check_key LIKE 'schedule:ping-heartbeat:%'")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(note.as_deref(), Some("scheduled heartbeat"));
    // The envelope id carries the event's time (the same for a duplicated delivery of one firing).
    let fired_at = key.trim_start_matches("schedule:ping-heartbeat:");
    let fired_at =
        chrono::DateTime::parse_from_rfc3339(fired_at).unwrap_or_else(|e| panic!("{key}: {e}"));
    let age = chrono::Utc::now() - fired_at.to_utc();
    assert!(
        (0..120).contains(&age.num_seconds()),
        "{key} fired {age} ago"
    );
    stack.cleanup().await;
}

/// The template's non-function resources, deployed into LocalStack through CloudFormation, exist with the
/// attributes the template states.
#[tokio::test]
async fn the_infrastructure_deploys_through_cloudformation_as_the_template_states() {
    use aws_sdk_cloudformation::types::StackStatus;
    use aws_sdk_sqs::types::QueueAttributeName;
    use dualcaster_tools::local::{local_aws, local_dynamodb, local_sqs};

    let text = std::fs::read_to_string(repo().join("infra/template.yaml")).unwrap();
    let (plain, _) = dualcaster_tools::infra::without_functions(&text).unwrap();
    let aws = local_aws().await;
    let cfn = aws_sdk_cloudformation::Client::new(&aws);
    let stack = format!(
        "rehearsal-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // As `dualcaster provision` does it: the template staged in S3 (it is over CloudFormation's 51,200-byte
    // inline limit, as `sam deploy --resolve-s3` knows), created, and the dashboard put where LocalStack's
    // CloudFormation only records it.
    dualcaster_tools::local::cloudformation::deploy(
        &aws,
        &repo().join("infra/template.yaml"),
        &stack,
    )
    .await
    .unwrap();
    let status = cfn
        .describe_stacks()
        .stack_name(&stack)
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .stack_status()
        .cloned()
        .unwrap();
    assert_eq!(status, StackStatus::CreateComplete);

    // Every resource of the plain template was created.
    let doc: serde_norway::Value = serde_norway::from_str(&plain).unwrap();
    let mut expected: Vec<String> = doc["Resources"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    expected.sort();
    let resources = cfn
        .describe_stack_resources()
        .stack_name(&stack)
        .send()
        .await
        .unwrap();
    let mut created: Vec<String> = resources
        .stack_resources()
        .iter()
        .filter(|r| r.resource_status().map(|s| s.as_str()) == Some("CREATE_COMPLETE"))
        .filter_map(|r| r.logical_resource_id().map(str::to_owned))
        .collect();
    created.sort();
    assert_eq!(created, expected);

    // The queues as the template states them.
    let template = Template::load(&repo().join("infra/template.yaml")).unwrap();
    let sqs = local_sqs().await;
    assert_eq!(template.queues.len(), 6);
    for queue in &template.queues {
        let name = queue.name(&stack);
        let url = sqs
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attrs = attributes.attributes().unwrap();
        for key in ["VisibilityTimeout", "MessageRetentionPeriod"] {
            if let Some(stated) = queue.attributes.get(key) {
                assert_eq!(
                    &attrs[&QueueAttributeName::from(key)],
                    stated,
                    "{name} {key}"
                );
            }
        }
        assert_eq!(
            attrs[&QueueAttributeName::SqsManagedSseEnabled],
            "true",
            "{name}"
        );
        let redrive = queue.redrive.as_ref();
        match redrive.map(|r| (r.target.as_deref().unwrap_or("(none)"), r.max_receive_count)) {
            Some((dlq, max)) => {
                let redrive: serde_json::Value =
                    serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
                assert_eq!(
                    redrive["maxReceiveCount"].to_string().trim_matches('"'),
                    max.to_string(),
                    "{name}"
                );
                let dlq_name = template
                    .queues
                    .iter()
                    .find(|q| q.logical_id == dlq)
                    .unwrap()
                    .name(&stack);
                assert!(
                    redrive["deadLetterTargetArn"]
                        .as_str()
                        .unwrap()
                        .ends_with(&format!(":{dlq_name}")),
                    "{redrive}"
                );
            }
            None => assert!(
                !attrs.contains_key(&QueueAttributeName::RedrivePolicy),
                "{name} is a dead-letter queue"
            ),
        }
    }

    // The lease table keeps items until `ttl`.
    let dynamodb = local_dynamodb().await;
    let ttl = dynamodb
        .describe_time_to_live()
        .table_name(format!("{stack}-leases"))
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("ttl"));
    assert_eq!(
        ttl.time_to_live_status().map(|s| s.as_str()),
        Some("ENABLED")
    );

    // One rule per registry schedule, with its expression.
    let events = local_events().await;
    let rules = events
        .list_rules()
        .name_prefix(&stack)
        .send()
        .await
        .unwrap();
    let mut deployed: Vec<(String, String)> = rules
        .rules()
        .iter()
        .map(|r| {
            (
                r.name()
                    .unwrap()
                    .trim_start_matches(&format!("{stack}-"))
                    .to_owned(),
                r.schedule_expression().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    deployed.sort();
    let mut declared: Vec<(String, String)> = template
        .rules
        .iter()
        .map(|r| {
            (
                r.name(&stack)
                    .trim_start_matches(&format!("{stack}-"))
                    .to_owned(),
                r.expression.clone(),
            )
        })
        .collect();
    assert_eq!(
        declared.len(),
        dualcaster::tasks::registry().schedules().count()
    );
    declared.sort();
    assert_eq!(deployed, declared);

    // The dashboard, with the stack's own queue names in it and nothing left unsubstituted.
    use dualcaster_tools::local::emulator;
    let endpoint = aws.endpoint_url().unwrap();
    let body = emulator::get_dashboard(endpoint, &format!("{stack}-tasks"))
        .await
        .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        dashboard["widgets"].as_array().unwrap().len() > 10,
        "{body}"
    );
    assert!(body.contains(&format!("\"{stack}-ingestion\"")), "{body}");
    assert!(!body.contains("${"), "{body}");

    // Every alarm of the template, named `<stack>-<LogicalId>`.
    let mut alarms: Vec<String> = emulator::alarm_names(endpoint, &format!("{stack}-"))
        .await
        .unwrap()
        .iter()
        .map(|name| name[stack.len() + 1..].to_owned())
        .collect();
    alarms.sort();
    let mut expected: Vec<String> = template
        .alarms
        .iter()
        .map(|a| a.logical_id.clone())
        .collect();
    expected.sort();
    assert_eq!(alarms, expected);
    assert!(expected.len() >= 25, "{expected:?}");

    cfn.delete_stack().stack_name(&stack).send().await.unwrap();
}

/// `sam build` builds every function through cargo-lambda (`BuildMethod: rust-cargolambda`). The template
/// deploys arm64, whose Rust target needs a download; this builds the same template for x86_64. Slow when
/// nothing is built yet (a release build), so it runs with `make test-slow`, after `make package`.
#[test]
#[ignore]
fn sam_build_builds_every_function() {
    let text = std::fs::read_to_string(repo().join("infra/template.yaml")).unwrap();
    assert!(text.contains("Architectures: [arm64]"));
    // Beside the original, so its CodeUri (the repository root) still resolves.
    let template = repo().join("infra/.sam-build-x86_64.yaml");
    std::fs::write(
        &template,
        text.replace("Architectures: [arm64]", "Architectures: [x86_64]"),
    )
    .unwrap();
    let build_dir = repo().join("target/sam-build");
    let _ = std::fs::remove_dir_all(&build_dir);
    let mut cmd = Command::new(tool("sam"));
    let path = format!(
        "{}:{}",
        repo().join(".local/venv-tools/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Without the variables `cargo test` sets for its tests, which would change the fingerprints of
    // cargo-lambda's release build and rebuild it from scratch.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && !matches!(key.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PATH", path).args([
        "build",
        "--template",
        template.to_str().unwrap(),
        "--build-dir",
        build_dir.to_str().unwrap(),
    ]);
    let out = cmd
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("SAM_CLI_TELEMETRY", "0")
        .current_dir(repo())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&template);
    assert!(
        out.status.success(),
        "sam build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for function in [
        "IngestionFunction",
        "AnalyticsFunction",
        "DefaultFunction",
        "OpsFunction",
    ] {
        let bootstrap = build_dir.join(function).join("bootstrap");
        let meta = std::fs::metadata(&bootstrap)
            .unwrap_or_else(|e| panic!("{}: {e}", bootstrap.display()));
        use std::os::unix::fs::PermissionsExt;
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{function} is not executable"
        );
        assert!(meta.len() > 1_000_000, "{function}: {} bytes", meta.len());
    }
}

/// `dualcaster provision` (and so `make run` and the demo) creates the local stack through CloudFormation: the
/// functions get every queue, DLQ and the lease table from the stack's resources, the schedules exist as
/// rules, and provisioning again changes nothing.
#[tokio::test]
async fn the_local_stack_is_created_through_cloudformation_and_provisioning_again_changes_nothing()
{
    use dualcaster_tools::local::cloudformation;
    use dualcaster_tools::local::{local_aws, local_sqs};

    let aws = local_aws().await;
    let stack = format!("local-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let path = repo().join("infra/template.yaml");
    let first = cloudformation::deploy(&aws, &path, &stack).await.unwrap();
    let template = Template::load(&path).unwrap();
    let sqs = local_sqs().await;
    for queue in Queue::ALL {
        for var in [
            format!("DD_QUEUE_URL_{}", queue.env_suffix()),
            format!("DD_DLQ_URL_{}", queue.env_suffix()),
        ] {
            let url = &first.env[&var];
            let name = template
                .queue(&template.queue_env[&var])
                .unwrap()
                .name(&stack);
            assert!(url.ends_with(&format!("/{name}")), "{var}: {url}");
            sqs.get_queue_attributes()
                .queue_url(url)
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(first.env["DD_LEASE_TABLE"], format!("{stack}-leases"));
    let events = local_events().await;
    let rules = events
        .list_rules()
        .name_prefix(&stack)
        .send()
        .await
        .unwrap();
    let mut names: Vec<String> = rules
        .rules()
        .iter()
        .filter_map(|r| r.name().map(str::to_owned))
        .collect();
    names.sort();
    let mut expected: Vec<String> = template.rules.iter().map(|r| r.name(&stack)).collect();
    expected.sort();
    assert_eq!(names, expected);

    let again = cloudformation::deploy(&aws, &path, &stack).await.unwrap();
    assert_eq!(again.env, first.env);

    let cfn = aws_sdk_cloudformation::Client::new(&aws);
    cfn.delete_stack().stack_name(&stack).send().await.unwrap();
}
