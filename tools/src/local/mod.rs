//! Local stand-ins for the AWS pieces that cannot run on a developer machine or in CI: the template's
//! resources created in LocalStack (through CloudFormation for the local stack, directly and per test for the
//! tests, which shorten timeouts), the Lambda Runtime API (to run the real function binaries), and the SQS event
//! source mapping (to feed them batches as AWS does).

pub mod cloudformation;
pub mod emulator;
pub mod event_source;
pub mod function;
pub mod runtime_api;
pub mod stub;
pub mod system;
pub mod template;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads `KEY=VALUE` lines (blank lines and `#` comments ignored) into the process environment, without
/// overriding variables that are already set.
pub fn load_env_file(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    for (key, value) in parse_env(&text) {
        if std::env::var_os(&key).is_none() {
            std::env::set_var(key, value);
        }
    }
    Ok(())
}

pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('\'').to_owned()))
        .collect()
}

/// The local stack's database (`scripts/stack.sh up` creates the role and the database).
pub const LOCAL_DATABASE_URL: &str = "postgresql://app:app@127.0.0.1:5432/app";

/// `DATABASE_URL`, or the local stack's database when it is unset: every local command and benchmark works
/// as the first command after `make setup`, with or without a `.local/stack.env`.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_DATABASE_URL.to_owned())
}

/// The AWS settings for the local stack, unless the environment already has its own: LocalStack on
/// 127.0.0.1:4566 with the test credentials it accepts.
pub fn local_aws_defaults() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (key, default) in [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        env.insert(
            key.to_owned(),
            std::env::var(key).unwrap_or_else(|_| default.to_owned()),
        );
    }
    env
}

/// AWS configuration for the local stack (see [`local_aws_defaults`]).
pub async fn local_aws() -> aws_config::SdkConfig {
    let env = local_aws_defaults();
    let creds = aws_sdk_sqs::config::Credentials::new(
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
        None,
        None,
        "local",
    );
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(env["AWS_REGION"].clone()))
        .endpoint_url(&env["AWS_ENDPOINT_URL"])
        .credentials_provider(creds)
        .load()
        .await
}

/// An SQS client for the local stack.
pub async fn local_sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&local_aws().await)
}

/// A DynamoDB client for the local stack (LocalStack, which forwards to moto).
pub async fn local_dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&local_aws().await)
}

/// An EventBridge client for the local stack.
pub async fn local_events() -> aws_sdk_eventbridge::Client {
    aws_sdk_eventbridge::Client::new(&local_aws().await)
}

/// A queue's messages by state, as SQS approximates them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl QueueDepths {
    /// Every message the queue holds, whatever its state.
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

/// The depths of the queue at `url`.
pub async fn queue_depths(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<QueueDepths> {
    use aws_sdk_sqs::types::QueueAttributeName as Name;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(Name::ApproximateNumberOfMessages)
        .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(Name::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| {
            let text = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string();
            let hint = if text.contains("QueueDoesNotExist") {
                " (the stack is not provisioned here: `make provision`)"
            } else {
                ""
            };
            anyhow::anyhow!("GetQueueAttributes {url}: {text}{hint}")
        })?;
    let get = |name: Name| {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(QueueDepths {
        visible: get(Name::ApproximateNumberOfMessages),
        in_flight: get(Name::ApproximateNumberOfMessagesNotVisible),
        delayed: get(Name::ApproximateNumberOfMessagesDelayed),
    })
}

/// Sends `body` to the queue at `url`; returns the message id.
pub async fn send_message(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    body: &str,
) -> anyhow::Result<String> {
    let out = sqs
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "SendMessage: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })?;
    Ok(out.message_id().unwrap_or_default().to_owned())
}

/// The function binary for `queue` next to the running executable (both live in `target/<profile>`).
/// Refused, with the command that fixes it, when it is missing or older than a source it is built from (the
/// files cargo lists for it in `<binary>.d`): a test or a demo on stale binaries would check yesterday's code.
pub fn function_binary(queue: dualcaster::queue::Queue) -> anyhow::Result<PathBuf> {
    binary_named(queue.as_str())
}

/// The ops function's binary, refused like [`function_binary`] when missing or stale.
pub fn ops_binary() -> anyhow::Result<PathBuf> {
    binary_named("ops")
}

fn binary_named(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test executables live one level down, in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join(name);
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let build = match profile {
        "debug" => "cargo build --workspace --bins (make build)".to_owned(),
        "release" => "cargo build --release --workspace --bins".to_owned(),
        other => format!("cargo build --profile {other} --workspace --bins"),
    };
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .map_err(|e| anyhow::anyhow!("{}: {e}; build it: {build}", binary.display()))?;
    let sources = std::fs::read_to_string(binary.with_extension("d")).unwrap_or_default();
    let newer = dep_info_sources(&sources)
        .into_iter()
        .filter_map(|source| Some((source.metadata().ok()?.modified().ok()?, source)))
        .filter(|(modified, _)| *modified > built)
        .max_by_key(|(modified, _)| *modified);
    if let Some((_, source)) = newer {
        anyhow::bail!(
            "{} is older than {}: rebuild the functions: {build}",
            binary.display(),
            source.display()
        );
    }
    Ok(binary)
}

/// The sources of a cargo dep-info file (`target: a.rs b.rs ...`, spaces in paths escaped).
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some(first) = text.lines().next() else {
        return Vec::new();
    };
    let Some((_, list)) = first.split_once(": ") else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    sources.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        sources.push(PathBuf::from(current));
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_lists_every_source_with_escaped_spaces() {
        let text = "/t/debug/ingestion: /r/functions/ingestion/src/main.rs /r/my\\ dir/a.rs /r/b.sql\n\n/r/b.sql:\n";
        assert_eq!(
            dep_info_sources(text),
            vec![
                PathBuf::from("/r/functions/ingestion/src/main.rs"),
                PathBuf::from("/r/my dir/a.rs"),
                PathBuf::from("/r/b.sql"),
            ]
        );
        assert!(dep_info_sources("").is_empty());
    }
}
