//! A local implementation of the Lambda Runtime API (the interface a function binary polls for work), so
//! the real function binaries run on this machine exactly as in Lambda, and an `invoke` call plays the
//! part of the Lambda Invoke API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Mutex};

/// What an invocation returned.
#[derive(Debug, Clone, PartialEq)]
pub enum InvokeOutcome {
    /// The handler's response.
    Response(Value),
    /// The handler's error (`errorType`, `errorMessage`).
    Error {
        error_type: String,
        error_message: String,
    },
}

struct Pending {
    request_id: String,
    payload: Value,
    deadline_ms: i64,
}

struct Shared {
    function_arn: String,
    queue: Mutex<mpsc::Receiver<Pending>>,
    waiting: std::sync::Mutex<HashMap<String, oneshot::Sender<InvokeOutcome>>>,
    init_error: std::sync::Mutex<Option<String>>,
    /// Signalled on every poll for the next invocation (a start-up measurement waits for the first).
    polled: tokio::sync::Notify,
}

/// A running Runtime API server for one function.
#[derive(Clone)]
pub struct RuntimeApi {
    addr: SocketAddr,
    sender: mpsc::Sender<Pending>,
    shared: Arc<Shared>,
}

const PREFIX: &str = "/2018-06-01/runtime";

impl RuntimeApi {
    /// Serves the API on an ephemeral port of 127.0.0.1.
    pub async fn start(function_name: &str) -> Result<RuntimeApi> {
        let (sender, receiver) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            function_arn: format!("arn:aws:lambda:us-east-1:000000000000:function:{function_name}"),
            queue: Mutex::new(receiver),
            waiting: std::sync::Mutex::new(HashMap::new()),
            init_error: std::sync::Mutex::new(None),
            polled: tokio::sync::Notify::new(),
        });
        let app = Router::new()
            .route(&format!("{PREFIX}/invocation/next"), get(next))
            .route(
                &format!("{PREFIX}/invocation/{{id}}/response"),
                post(respond),
            )
            .route(&format!("{PREFIX}/invocation/{{id}}/error"), post(fail))
            .route(&format!("{PREFIX}/init/error"), post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Runtime API")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(RuntimeApi {
            addr,
            sender,
            shared,
        })
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API` for the function process.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Resolves once the function has asked for its next invocation (at once if it already has and
    /// nobody waited for that poll yet).
    pub async fn polled(&self) {
        self.shared.polled.notified().await;
    }

    /// The error the function reported during initialisation, if any.
    pub fn init_error(&self) -> Option<String> {
        self.shared.init_error.lock().ok().and_then(|e| e.clone())
    }

    /// Queues an invocation and waits for its outcome. The function sees a deadline `timeout` from now;
    /// `None` is returned when no outcome arrives within `timeout` plus a grace second.
    pub async fn invoke(&self, payload: Value, timeout: Duration) -> Result<Option<InvokeOutcome>> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiting) = self.shared.waiting.lock() {
            waiting.insert(request_id.clone(), tx);
        }
        let deadline_ms = chrono::Utc::now().timestamp_millis() + timeout.as_millis() as i64;
        self.sender
            .send(Pending {
                request_id: request_id.clone(),
                payload,
                deadline_ms,
            })
            .await
            .context("the Runtime API has stopped")?;
        // If this future is dropped (the caller gave up, the process died), the invocation is withdrawn:
        // a later process must not pick it up.
        let _withdraw = Withdraw {
            shared: &self.shared,
            request_id,
        };
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(1), rx).await;
        Ok(outcome.ok().and_then(Result::ok))
    }
}

struct Withdraw<'a> {
    shared: &'a Shared,
    request_id: String,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.shared.waiting.lock() {
            waiting.remove(&self.request_id);
        }
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.polled.notify_one();
    let p = {
        let mut queue = shared.queue.lock().await;
        loop {
            match queue.recv().await {
                // The harness has let the function go and is killing the process. The real Runtime API
                // holds a poll open until there is work and never answers one without an invocation
                // (`lambda_runtime` panics on a reply without a request id), so the poll stays open.
                None => std::future::pending::<()>().await,
                // Skip invocations whose caller is no longer waiting.
                Some(p)
                    if shared
                        .waiting
                        .lock()
                        .is_ok_and(|w| w.contains_key(&p.request_id)) =>
                {
                    break p
                }
                Some(_) => continue,
            }
        }
    };
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("lambda-runtime-aws-request-id", p.request_id);
    put("lambda-runtime-deadline-ms", p.deadline_ms.to_string());
    put(
        "lambda-runtime-invoked-function-arn",
        shared.function_arn.clone(),
    );
    put(
        "lambda-runtime-trace-id",
        format!("Root=1-{}", uuid::Uuid::new_v4().simple()),
    );
    put("content-type", "application/json".into());
    (StatusCode::OK, headers, Bytes::from(p.payload.to_string()))
}

fn complete(shared: &Shared, id: &str, outcome: InvokeOutcome) -> StatusCode {
    let sender = shared.waiting.lock().ok().and_then(|mut w| w.remove(id));
    match sender {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    complete(&shared, &id, InvokeOutcome::Response(value))
}

async fn fail(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    complete(
        &shared,
        &id,
        InvokeOutcome::Error {
            error_type: text("errorType"),
            error_message: text("errorMessage"),
        },
    )
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    if let Ok(mut e) = shared.init_error.lock() {
        *e = Some(String::from_utf8_lossy(&body).into_owned());
    }
    StatusCode::ACCEPTED
}
