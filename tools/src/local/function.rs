//! Runs a real function binary against a local [`RuntimeApi`], with the environment Lambda would give it,
//! and lets tests kill it (SIGKILL) and start it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

use super::runtime_api::{InvokeOutcome, RuntimeApi};

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Invoked {
    Outcome(InvokeOutcome),
    /// The process exited (or was killed) before answering.
    Crashed(String),
    /// No answer within the timeout.
    TimedOut,
}

struct Process {
    pid: u32,
    kill: Option<oneshot::Sender<()>>,
    exited: watch::Receiver<Option<String>>,
}

/// One function: its binary, environment, Runtime API and current process.
pub struct LocalFunction {
    pub name: String,
    binary: PathBuf,
    env: BTreeMap<String, String>,
    timeout: Duration,
    log: Option<PathBuf>,
    api: RuntimeApi,
    process: Option<Process>,
}

impl LocalFunction {
    /// Starts `binary` as function `name`. `env` is added to the Lambda variables; `timeout` is the function
    /// timeout (each invocation's deadline); output goes to `log` (appended) or is discarded.
    pub async fn start(
        name: &str,
        binary: &Path,
        env: BTreeMap<String, String>,
        timeout: Duration,
        log: Option<PathBuf>,
    ) -> Result<LocalFunction> {
        if !binary.is_file() {
            bail!(
                "function binary {} not found: build it first (`cargo build --bins`)",
                binary.display()
            );
        }
        let api = RuntimeApi::start(name).await?;
        let mut f = LocalFunction {
            name: name.to_owned(),
            binary: binary.to_owned(),
            env,
            timeout,
            log,
            api,
            process: None,
        };
        f.spawn()?;
        Ok(f)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.env("AWS_LAMBDA_RUNTIME_API", self.api.endpoint())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .envs(&self.env)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{} exited at once", self.name))?;
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let how = tokio::select! {
                status = child.wait() => format!("exited: {}", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())),
                _ = kill_rx => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    "killed (SIGKILL)".to_owned()
                }
            };
            let _ = exit_tx.send(Some(how));
        });
        self.process = Some(Process {
            pid,
            kill: Some(kill_tx),
            exited: exit_rx,
        });
        Ok(())
    }

    /// Resolves when the process has asked the Runtime API for its next invocation (its start-up is done).
    pub async fn polled(&self) {
        self.api.polled().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Kills the process with SIGKILL, mid-invocation or not, and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            if let Some(kill) = p.kill.take() {
                let _ = kill.send(());
            }
            let _ = p.exited.wait_for(Option::is_some).await;
        }
    }

    /// Starts a fresh process (a new container's cold start).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await;
        self.spawn()
    }

    /// Invokes the function with `payload`, as `aws lambda invoke` would.
    pub async fn invoke(&self, payload: Value) -> Result<Invoked> {
        let Some(process) = &self.process else {
            bail!("{} is not running", self.name);
        };
        let mut exited = process.exited.clone();
        if let Some(how) = exited.borrow().clone() {
            let init = self.api.init_error().unwrap_or_default();
            return Ok(Invoked::Crashed(format!("{how} {init}")));
        }
        tokio::select! {
            outcome = self.api.invoke(payload, self.timeout) => Ok(match outcome? {
                Some(o) => Invoked::Outcome(o),
                None => Invoked::TimedOut,
            }),
            how = exited.wait_for(Option::is_some) => {
                let how = how.map(|h| h.clone().unwrap_or_default()).unwrap_or_default();
                Ok(Invoked::Crashed(how))
            }
        }
    }
}
