//! The whole system on one machine: the function binaries (under `cargo lambda watch`, or under this
//! crate's own Runtime API when a test must kill them) fed from their LocalStack queues by one
//! [`EventSource`] per queue, with the settings the SAM template gives each event source mapping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::Value;

use tokio::task::JoinHandle;

use super::event_source::{invoke_function, Dispatch, EventSource};
use super::function::LocalFunction;
use super::function_binary;
use super::template::Template;
use super::watch::{InvokeApi, Watch};
use dualcaster::queue::Queue;

/// How the function binaries run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// Under `cargo lambda watch`, invoked through its Lambda Invoke API on this port.
    Watch { port: u16 },
    /// Under this crate's Runtime API, one process per function.
    Emulator,
}

/// Where an event source sends its batches.
#[derive(Clone)]
pub enum Target {
    Api { api: InvokeApi, function: String },
    Emulated(Arc<LocalFunction>),
}

impl Target {
    pub async fn invoke(&self, event: Value) -> std::result::Result<Value, String> {
        match self {
            Target::Api { api, function } => api.invoke(function, &event).await,
            Target::Emulated(f) => invoke_function(f, event).await,
        }
    }
}

/// Totals over every poll of every queue.
#[derive(Debug, Default)]
pub struct Totals {
    pub batches: AtomicU64,
    pub received: AtomicU64,
    pub deleted: AtomicU64,
    pub handed_back: AtomicU64,
    pub failed_invocations: AtomicU64,
}

/// Called after every poll that received something.
pub type OnDispatch = Arc<dyn Fn(Queue, &Dispatch) + Send + Sync>;

pub struct Options {
    pub runner: Runner,
    /// The functions' environment (queue URLs, database, AWS endpoint, ...).
    pub env: BTreeMap<String, String>,
    pub template: PathBuf,
    /// Function output goes to `<log_dir>/function-<queue>.log` (`watch.log` under cargo lambda).
    pub log_dir: PathBuf,
    /// The queues to feed (all three by default).
    pub queues: Vec<Queue>,
    /// Cargo profile of the functions under `cargo lambda watch` (default: dev).
    pub profile: Option<String>,
}

pub struct LocalSystem {
    watch: Option<Watch>,
    pub sources: Vec<(Queue, Target, EventSource)>,
    pollers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub totals: Arc<Totals>,
}

/// One queue's poller, until `stop`. Like the pollers of an AWS event source mapping it receives the next
/// batch while the function runs the current one, and deletes a batch's records while the function runs the
/// next, so a batch costs the longest of receive, invoke and delete rather than their sum. Invocations stay
/// one at a time, in the order received.
async fn feed(
    queue: Queue,
    target: Target,
    source: EventSource,
    stop: Arc<AtomicBool>,
    totals: Arc<Totals>,
    on_dispatch: OnDispatch,
) {
    let receive = |source: &EventSource| {
        let source = source.clone();
        tokio::spawn(async move { source.receive(Duration::from_secs(1)).await })
    };
    let mut next: Option<JoinHandle<Result<Vec<aws_sdk_sqs::types::Message>>>> = None;
    let mut deleting: Option<JoinHandle<()>> = None;
    loop {
        // A receive is never abandoned half-way: a dropped long poll can still be handed messages, which
        // would then sit invisible for the whole visibility timeout. A batch received before `stop` is run.
        let received = match next.take() {
            Some(handle) => handle
                .await
                .unwrap_or_else(|e| Err(anyhow!("receive task: {e}"))),
            None if stop.load(Ordering::Acquire) => break,
            None => source.receive(Duration::from_secs(1)).await,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(%queue, error = format!("{e:#}"), "poll failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !stop.load(Ordering::Acquire) {
            next = Some(receive(&source));
        }
        if messages.is_empty() {
            continue;
        }
        let (mut dispatch, done) = source.invoke(messages, |event| target.invoke(event)).await;
        if let Some(previous) = deleting.take() {
            let _ = previous.await;
        }
        let (source, totals, on_dispatch) = (source.clone(), totals.clone(), on_dispatch.clone());
        deleting = Some(tokio::spawn(async move {
            match source.delete(&done).await {
                Ok(deleted) => dispatch.deleted = deleted,
                // The records come back after their visibility timeout, as after a failed delete in AWS.
                Err(e) => tracing::warn!(%queue, error = format!("{e:#}"), "delete failed"),
            }
            totals.batches.fetch_add(1, Ordering::Relaxed);
            totals
                .received
                .fetch_add(dispatch.received as u64, Ordering::Relaxed);
            totals
                .deleted
                .fetch_add(dispatch.deleted as u64, Ordering::Relaxed);
            totals
                .handed_back
                .fetch_add(dispatch.failed.len() as u64, Ordering::Relaxed);
            if dispatch.invoke_error.is_some() {
                totals.failed_invocations.fetch_add(1, Ordering::Relaxed);
            }
            on_dispatch(queue, &dispatch);
        }));
    }
    if let Some(last) = deleting {
        let _ = last.await;
    }
}

impl LocalSystem {
    /// Starts the functions and one event source per queue, polling until [`LocalSystem::stop`].
    pub async fn start(
        sqs: aws_sdk_sqs::Client,
        options: Options,
        on_dispatch: OnDispatch,
    ) -> Result<LocalSystem> {
        let template = Template::load(&options.template)?;
        std::fs::create_dir_all(&options.log_dir)?;
        let watch = match options.runner {
            Runner::Watch { port } => {
                let workspace = options
                    .template
                    .canonicalize()?
                    .parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
                    .ok_or_else(|| anyhow!("the template is not in <workspace>/infra"))?;
                Some(
                    Watch::start(
                        &workspace,
                        port,
                        &options.env,
                        &options.log_dir.join("watch.log"),
                        options.profile.as_deref(),
                    )
                    .await?,
                )
            }
            Runner::Emulator => None,
        };
        let mut sources = Vec::new();
        for &queue in &options.queues {
            let definition = template.function(queue.as_str()).ok_or_else(|| {
                anyhow!(
                    "{} defines no `{queue}` function",
                    options.template.display()
                )
            })?;
            let timeout = Duration::from_secs(definition.timeout_secs);
            let target = match &watch {
                Some(w) => Target::Api {
                    // The Invoke API waits for the whole invocation, plus cargo's start of the binary.
                    api: w.invoker(timeout + Duration::from_secs(60)),
                    function: queue.as_str().to_owned(),
                },
                None => {
                    let mut env = options.env.clone();
                    env.extend(definition.environment.clone());
                    Target::Emulated(Arc::new(
                        LocalFunction::start(
                            queue.as_str(),
                            &function_binary(queue)?,
                            env,
                            timeout,
                            Some(options.log_dir.join(format!("function-{queue}.log"))),
                        )
                        .await?,
                    ))
                }
            };
            let url = options
                .env
                .get(&format!("DD_QUEUE_URL_{}", queue.as_str().to_uppercase()))
                .ok_or_else(|| anyhow!("the environment has no URL for the {queue} queue"))?;
            let source = EventSource::new(
                sqs.clone(),
                url,
                definition.batch_size(),
                Duration::from_secs(definition.batching_window_secs()),
            )
            .await?;
            sources.push((queue, target, source));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let totals = Arc::new(Totals::default());
        let pollers = sources
            .iter()
            .map(|(queue, target, source)| {
                let (queue, target, source) = (*queue, target.clone(), source.clone());
                let (stop, totals, on_dispatch) =
                    (stop.clone(), totals.clone(), on_dispatch.clone());
                tokio::spawn(feed(queue, target, source, stop, totals, on_dispatch))
            })
            .collect();
        Ok(LocalSystem {
            watch,
            sources,
            pollers,
            stop,
            totals,
        })
    }

    /// The function consuming `queue`, for direct invokes.
    pub fn target(&self, queue: Queue) -> Option<&Target> {
        self.sources
            .iter()
            .find(|(q, _, _)| *q == queue)
            .map(|(_, t, _)| t)
    }

    /// The Invoke API endpoint, when the functions run under `cargo lambda watch`.
    pub fn invoke_endpoint(&self) -> Option<&str> {
        self.watch.as_ref().map(|w| w.endpoint.as_str())
    }

    /// Messages left in the fed queues (visible, in flight and delayed).
    pub async fn backlog(&self) -> Result<u64> {
        let mut total = 0;
        for (_, _, source) in &self.sources {
            total += source.backlog().await?;
        }
        Ok(total)
    }

    /// Waits until every fed queue is empty, or fails after `timeout`.
    pub async fn drain(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let backlog = self.backlog().await?;
            if backlog == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow!(
                    "queues still hold {backlog} messages after {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops polling once each poller's current poll is done (its batch dispatched), then the functions.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for p in self.pollers {
            let _ = p.await;
        }
        if let Some(w) = self.watch {
            w.stop().await;
        }
    }
}
