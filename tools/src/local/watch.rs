//! The function binaries under `cargo lambda watch`, which serves the Lambda Runtime API to them and the
//! Lambda Invoke API (`POST /2015-03-31/functions/<name>/invocations`) to callers: the local event source,
//! `aws lambda invoke --endpoint-url`, `cargo lambda invoke`. Each function is named after its binary
//! (`ingestion`, `analytics`, `default`, `ops`) and started by cargo on its first invocation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use tokio::process::{Child, Command};

/// Where `scripts/stack.sh tools` installs cargo-lambda, when it is not on the PATH.
const TOOLS_BIN: &str = ".local/venv-tools/bin";

/// The `cargo-lambda` executable: on the PATH, or in the tools venv of the workspace at `workspace`.
pub fn cargo_lambda(workspace: &Path) -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([workspace.join(TOOLS_BIN)])
        .map(|dir| dir.join("cargo-lambda"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("cargo-lambda not found on the PATH or in {TOOLS_BIN}: run `make tools`")
        })
}

/// A running `cargo lambda watch`.
pub struct Watch {
    child: Child,
    /// The Invoke API, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
}

impl Watch {
    /// Starts `cargo lambda watch` on 127.0.0.1:`port` in the workspace at `workspace`, with `env` added to
    /// the functions' environment, and waits until the Invoke API answers. Output goes to `log`. The
    /// functions are built with cargo's `profile` (default: dev).
    pub async fn start(
        workspace: &Path,
        port: u16,
        env: &BTreeMap<String, String>,
        log: &Path,
        profile: Option<&str>,
    ) -> Result<Watch> {
        let endpoint = format!("http://127.0.0.1:{port}");
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            bail!("port {port} is taken: is another `cargo lambda watch` running? (choose another with --port)");
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(cargo_lambda(workspace)?);
        // Variables cargo sets for the process that started this one (`cargo test`, `cargo run`) would
        // change the fingerprints of the `cargo run` that starts each function, and rebuild it.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_")
                && !matches!(key.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR")
                && !key.starts_with("CARGO_LAMBDA_")
            {
                command.env_remove(key.as_ref());
            }
        }
        let mut child = command
            .args(["lambda", "watch", "--ignore-changes", "--quiet"])
            .args(["--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string()])
            .args(profile.map(|p| ["--profile", p]).into_iter().flatten())
            .current_dir(workspace)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting cargo lambda watch")?;
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "cargo lambda watch exited at start ({status}); see {}",
                    log.display()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Watch { child, endpoint });
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.start_kill();
                bail!(
                    "cargo lambda watch did not listen on {port} within 60 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An Invoke API client for this server.
    pub fn invoker(&self, timeout: Duration) -> InvokeApi {
        InvokeApi::new(&self.endpoint, timeout)
    }

    /// Stops the server and, with it, the function processes it started.
    pub async fn stop(mut self) {
        self.terminate();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// SIGTERM: cargo-lambda then stops its function instances (SIGKILL would orphan them).
    fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a pid this process spawned and has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A client of the Lambda Invoke API (RequestResponse invocations), as the SQS event source mapping and
/// `aws lambda invoke` use it.
#[derive(Clone)]
pub struct InvokeApi {
    http: reqwest::Client,
    endpoint: String,
}

impl InvokeApi {
    pub fn new(endpoint: &str, timeout: Duration) -> InvokeApi {
        InvokeApi {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
        }
    }

    /// Invokes `function` with `payload`: the function's response, or a description of how the
    /// invocation failed (a function error as `errorType: errorMessage`, or the transport error).
    pub async fn invoke(&self, function: &str, payload: &Value) -> Result<Value, String> {
        let url = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.endpoint
        );
        let response = self
            .http
            .post(&url)
            .json(payload)
            .send()
            .await
            .map_err(|e| format!("invoking {function}: {e}"))?;
        let status = response.status();
        // AWS answers a function error with 200 and `X-Amz-Function-Error`; cargo lambda with a 5xx.
        let function_error = response.headers().contains_key("x-amz-function-error");
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading {function}'s response: {e}"))?;
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() && !function_error {
            return value.ok_or_else(|| {
                format!(
                    "{function} answered with a body that is not JSON: {}",
                    String::from_utf8_lossy(&body)
                )
            });
        }
        match value.as_ref().and_then(|v| v.get("errorType")) {
            Some(error_type) => Err(format!(
                "function error {}: {}",
                error_type.as_str().unwrap_or_default(),
                value
                    .as_ref()
                    .and_then(|v| v.get("errorMessage"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )),
            None => Err(format!(
                "invoking {function}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}
