//! The functions under `cargo lambda watch`, fed by the local event source through the Lambda Invoke API;
//! the AWS CLI forms the README gives operators; the `ops` function and the MCP server.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use chrono::Utc;
use dualcaster::queue::{DeadLetter, Queue};
use dualcaster_tools::local::event_source::EventSource;
use dualcaster_tools::local::watch::{InvokeApi, Watch};
use integration_tests::{ping, TestStack};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn watch(stack: &TestStack) -> Watch {
    let log_dir = repo().join("target/it-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    Watch::start(
        &repo(),
        free_port(),
        &stack.function_env(),
        &log_dir.join(format!("{}-watch.log", stack.name)),
        None,
    )
    .await
    .unwrap()
}

/// Puts `body` in `queue`'s DLQ as the runtime would have after a failure of `class`.
async fn dead_letter(stack: &TestStack, queue: Queue, task: &str, body: &str, class: &str) {
    let record = DeadLetter {
        task: Some(task.into()),
        error_kind: "permanent".into(),
        error_class: class.into(),
        error_message: format!("{class} while running {task}"),
        attempts: 1,
        failed_at: Utc::now(),
        source_queue: queue.as_str().into(),
        source_message_id: uuid::Uuid::new_v4().to_string(),
        carried: Default::default(),
        trace_header: None,
    };
    stack
        .sqs
        .send_message()
        .queue_url(stack.dlq_url(queue))
        .message_body(body)
        .set_message_attributes(Some(record.to_attributes(&Default::default())))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn under_cargo_lambda_watch_the_event_source_deletes_successes_and_leaves_failures() {
    let stack = TestStack::start().await.unwrap();
    let watch = watch(&stack).await;
    let api = watch.invoker(Duration::from_secs(120));
    let source = EventSource::new(
        stack.sqs.clone(),
        stack.queue_url(Queue::Default),
        10,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    stack
        .send(Queue::Default, &ping("watch-ok-1", json!({})))
        .await
        .unwrap();
    stack
        .send(Queue::Default, &ping("watch-ok-2", json!({})))
        .await
        .unwrap();
    let failing = stack
        .send(
            Queue::Default,
            &ping("watch-retry", json!({"drill": "retryable"})),
        )
        .await
        .unwrap();
    // A permanent failure: dead-lettered by the function, so deleted from the queue.
    stack
        .send(
            Queue::Default,
            &ping("watch-doomed", json!({"drill": "permanent"})),
        )
        .await
        .unwrap();

    let mut received = 0;
    let mut deleted = 0;
    let mut failed = Vec::new();
    while received < 4 {
        let d = source
            .poll_once(Duration::from_secs(5), |event| {
                let api = api.clone();
                async move { api.invoke("default", &event).await }
            })
            .await
            .unwrap();
        assert_eq!(d.invoke_error, None);
        received += d.received;
        deleted += d.deleted;
        failed.extend(d.failed);
    }
    assert_eq!((received, deleted), (4, 3));
    assert_eq!(failed, vec![failing.clone()]);
    assert_eq!(
        stack.heartbeats().await.unwrap(),
        ["watch-ok-1", "watch-ok-2"]
    );
    // The ops function finds it in the DLQ with its task and error class.
    let stats = api
        .invoke(
            "ops",
            &json!({"action": "dlq_stats", "queues": ["default"], "peek": 1}),
        )
        .await
        .unwrap();
    let q = &stats["detail"]["queues"][0];
    assert_eq!(q["depth"], 1, "{stats}");
    assert_eq!(q["by_task"], json!({"ping": 1}));
    assert_eq!(q["by_error_class"], json!({"task_failed": 1}));
    assert_eq!(
        q["recent"][0]["dead_letter"]["error_message"],
        "drill: permanent failure"
    );

    // The failure was left on the queue: it comes back after its backoff, received a second time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let again = loop {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(stack.queue_url(Queue::Default))
            .wait_time_seconds(2)
            .visibility_timeout(30)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages.unwrap_or_default().into_iter().next() {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed message never came back"
        );
    };
    assert_eq!(again.message_id(), Some(failing.as_str()));
    assert_eq!(
        again
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .map(String::as_str),
        Some("2")
    );
    watch.stop().await;
    stack.cleanup().await;
}

/// Runs the AWS CLI (v1) against the local stack, as an operator would type it; returns stdout.
fn aws(args: &[&str]) -> std::process::Output {
    std::process::Command::new("aws")
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("the AWS CLI (`aws`) is not installed")
}

#[tokio::test]
async fn the_aws_cli_forms_in_the_readme_work_against_the_local_stack() {
    let stack = TestStack::start().await.unwrap();
    let watch = watch(&stack).await;
    let out_dir = std::env::temp_dir().join(&stack.name);
    std::fs::create_dir_all(&out_dir).unwrap();

    // `aws sqs send-message`: v1 ignores AWS_ENDPOINT_URL for SQS, so --endpoint-url is needed.
    let body = ping("cli-queued", json!({"note": "from aws sqs send-message"}));
    let sent = aws(&[
        "sqs",
        "send-message",
        "--endpoint-url",
        "http://127.0.0.1:4566",
        "--queue-url",
        stack.queue_url(Queue::Default),
        "--message-body",
        &body,
    ]);
    assert!(sent.status.success(), "{sent:?}");
    let sent: Value = serde_json::from_slice(&sent.stdout).unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let api = watch.invoker(Duration::from_secs(120));
    let d = source
        .poll_once(Duration::from_secs(5), |event| async move {
            api.invoke("default", &event).await
        })
        .await
        .unwrap();
    assert_eq!((d.received, d.deleted), (1, 1), "{d:?} {sent}");
    assert_eq!(stack.heartbeats().await.unwrap(), ["cli-queued"]);

    // `aws lambda invoke` of a queue's function with an envelope: the task's report.
    let report = out_dir.join("report.json");
    let invoked = aws(&[
        "lambda",
        "invoke",
        "--endpoint-url",
        &watch.endpoint,
        "--function-name",
        "default",
        "--payload",
        r#"{"task": "ping", "id": "cli-direct", "kwargs": {}}"#,
        report.to_str().unwrap(),
    ]);
    assert!(invoked.status.success(), "{invoked:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        stack.heartbeats().await.unwrap(),
        ["cli-direct", "cli-queued"]
    );

    // `aws lambda invoke` of the ops function: DLQ statistics.
    dead_letter(
        &stack,
        Queue::Default,
        "ping",
        &ping("cli-dead", json!({})),
        "task_failed",
    )
    .await;
    let stats = out_dir.join("stats.json");
    let invoked = aws(&[
        "lambda",
        "invoke",
        "--endpoint-url",
        &watch.endpoint,
        "--function-name",
        "ops",
        "--payload",
        r#"{"action": "dlq_stats", "queues": ["default"], "peek": 1}"#,
        stats.to_str().unwrap(),
    ]);
    assert!(invoked.status.success(), "{invoked:?}");
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let q = &stats["detail"]["queues"][0];
    assert_eq!(q["depth"], 1, "{stats}");
    assert_eq!(q["by_error_class"], json!({"task_failed": 1}));
    assert_eq!(q["by_task"], json!({"ping": 1}));

    // A function error: AWS answers 200 with `FunctionError` in the CLI's output and the error in the
    // outfile; cargo lambda answers 500, which aws-cli v1 retries (AWS_MAX_ATTEMPTS=1 stops that) and
    // reports without the body. `dualcaster ops --endpoint` prints the error class and message instead.
    let failed = std::process::Command::new("aws")
        .args([
            "lambda",
            "invoke",
            "--endpoint-url",
            &watch.endpoint,
            "--function-name",
            "ops",
            "--payload",
            r#"{"action": "explode"}"#,
            out_dir.join("error.json").to_str().unwrap(),
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{failed:?}");
    assert!(
        stderr.contains("(500)") && stderr.contains("Invoke"),
        "{stderr}"
    );
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let cli = std::process::Command::new(dir.join("dualcaster"))
        .args([
            "--env-file",
            "/nonexistent",
            "ops",
            "--endpoint",
            &watch.endpoint,
            r#"{"action": "explode"}"#,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success(), "{cli:?}");
    assert!(
        stderr.contains("function error invalid_kwargs") && stderr.contains("explode"),
        "{stderr}"
    );

    let _ = std::fs::remove_dir_all(&out_dir);
    watch.stop().await;
    stack.cleanup().await;
}

#[tokio::test]
async fn the_ops_function_redrives_through_the_invoke_api_dry_run_first() {
    let stack = TestStack::start().await.unwrap();
    let watch = watch(&stack).await;
    let api: InvokeApi = watch.invoker(Duration::from_secs(120));
    dead_letter(
        &stack,
        Queue::Default,
        "ping",
        &ping("ops-outage", json!({})),
        "database_unavailable",
    )
    .await;
    dead_letter(
        &stack,
        Queue::Default,
        "ping",
        &ping("ops-bad", json!({})),
        "task_failed",
    )
    .await;
    let redrive =
        json!({"action": "redrive", "queue": "default", "error_class": "database_unavailable"});
    let dry = api.invoke("ops", &redrive).await.unwrap();
    assert_eq!(dry["detail"]["dry_run"], true, "{dry}");
    assert_eq!(dry["detail"]["matched"], 1, "{dry}");
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        0
    );
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 2);

    let mut moving = redrive.clone();
    moving["dry_run"] = json!(false);
    let moved = api.invoke("ops", &moving).await.unwrap();
    assert_eq!(moved["detail"]["moved"], 1, "{moved}");
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        1
    );
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 1);
    // ... and the replayed message runs.
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let d = source
        .poll_once(Duration::from_secs(5), |event| {
            let api = api.clone();
            async move { api.invoke("default", &event).await }
        })
        .await
        .unwrap();
    assert_eq!((d.received, d.deleted), (1, 1), "{d:?}");
    assert_eq!(stack.heartbeats().await.unwrap(), ["ops-outage"]);

    let e = api
        .invoke(
            "ops",
            &json!({"action": "purge", "queue": "default", "confirm": "yes"}),
        )
        .await
        .unwrap_err();
    assert!(e.contains("purge default-dlq"), "{e}");
    watch.stop().await;
    stack.cleanup().await;
}

/// A minimal MCP client over the server's stdio.
struct McpClient {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
}

impl McpClient {
    async fn start(stack: &TestStack) -> McpClient {
        let mut dir = std::env::current_exe().unwrap();
        dir.pop();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let mut child = tokio::process::Command::new(dir.join("dualcaster"))
            .args(["--env-file", "/nonexistent", "mcp"])
            .envs(stack.function_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("target/<profile>/dualcaster: build the CLI first (`make build`)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut client = McpClient {
            child,
            stdin,
            lines,
            next_id: 0,
        };
        let init = client
            .request(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "integration-test", "version": "1"}}),
            )
            .await;
        assert_eq!(init["serverInfo"]["name"], "dualcaster-ops", "{init}");
        client
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        client
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .expect("no answer from the MCP server within 60 s")
                .unwrap()
                .expect("the MCP server closed its stdout");
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{message}");
                return message["result"].clone();
            }
        }
    }

    /// Calls a tool: (is_error, the text of its content).
    async fn call(&mut self, tool: &str, arguments: Value) -> (bool, String) {
        let result = self
            .request("tools/call", json!({"name": tool, "arguments": arguments}))
            .await;
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (result["isError"] == true, text)
    }
}

#[tokio::test]
async fn the_mcp_server_exposes_the_operator_actions_as_typed_tools() {
    let stack = TestStack::start().await.unwrap();
    let mut mcp = McpClient::start(&stack).await;

    let tools = mcp.request("tools/list", json!({})).await;
    let mut names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "analyze_dead_letter_queue",
            "follow_chain",
            "list_leases",
            "list_schedules",
            "redrive_dead_letters",
            "release_lease",
            "trigger_task"
        ]
    );
    let redrive = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "redrive_dead_letters")
        .unwrap();
    assert_eq!(
        redrive["inputSchema"]["required"],
        json!(["queue"]),
        "{redrive}"
    );

    dead_letter(
        &stack,
        Queue::Analytics,
        "compute_price_metrics",
        r#"{"task": "compute_price_metrics", "kwargs": {}}"#,
        "database_unavailable",
    )
    .await;
    let (error, text) = mcp
        .call(
            "analyze_dead_letter_queue",
            json!({"queues": ["analytics"]}),
        )
        .await;
    assert!(!error, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    let q = &report["detail"]["queues"][0];
    assert_eq!(q["depth"], 1, "{report}");
    assert_eq!(q["by_error_class"], json!({"database_unavailable": 1}));
    assert_eq!(q["by_task"], json!({"compute_price_metrics": 1}));

    let (error, text) = mcp
        .call(
            "trigger_task",
            json!({"task": "ping", "kwargs": {"note": "from an assistant"}, "id": "mcp-1"}),
        )
        .await;
    assert!(!error, "{text}");
    let triggered: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(triggered["queue"], "default");
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        1
    );

    // Bad input is a tool error naming its class, and nothing is sent.
    let (error, text) = mcp.call("trigger_task", json!({"task": "pong"})).await;
    assert!(error && text.starts_with("unknown_task:"), "{text}");
    let (error, text) = mcp
        .call(
            "trigger_task",
            json!({"task": "ping", "kwargs": {"bogus": 1}}),
        )
        .await;
    assert!(error && text.starts_with("invalid_kwargs:"), "{text}");
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        1
    );

    let (error, text) = mcp.call("list_schedules", json!({"next": 2})).await;
    assert!(!error, "{text}");
    let schedules: Value = serde_json::from_str(&text).unwrap();
    assert!(schedules["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["task"] == "ingest_scryfall_bulk" && s["next"].as_array().unwrap().len() == 2));

    let (error, text) = mcp.call("list_leases", json!({})).await;
    assert!(!error, "{text}");
    let (error, text) = mcp
        .call(
            "release_lease",
            json!({"key": "run:nothing", "reason": "x"}),
        )
        .await;
    assert!(error && text.starts_with("invalid_kwargs:"), "{text}");

    drop(mcp.stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), mcp.child.wait()).await;
    stack.cleanup().await;
}
