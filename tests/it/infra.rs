use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dualcaster::local::event_source::invoke_function;
use dualcaster::local::local_events;
use dualcaster::local::template::{delete_rules, provision_rules, Template};
use dualcaster::queue::Queue;
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
