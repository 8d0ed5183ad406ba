//! A local stand-in for Scryfall's API (and static files such as MTGJSON's): serves a bulk-data index and
//! files whose content the caller sets, from memory or streamed from disk, and counts the requests. Tests,
//! the local demo and the benchmarks point `DD_SCRYFALL_BASE_URL` / `DD_MTGJSON_BASE_URL` at it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

/// What a file serves.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Bytes),
    /// Streamed from disk on each request (large benchmark files).
    File(PathBuf),
    /// A `302 Found` to this location.
    Redirect(String),
    /// These bytes at about `bytes_per_sec`, in 16 KiB chunks (a slow link).
    Throttled {
        bytes: Bytes,
        bytes_per_sec: u64,
    },
    /// The first `after` bytes of these, then nothing more while the connection stays open (a hung upstream).
    Stalls {
        bytes: Bytes,
        after: usize,
    },
    /// Bytes already gzip-compressed, sent with `Content-Encoding: gzip` (as Scryfall serves its bulk files).
    Gzip(Bytes),
}

impl From<Vec<u8>> for Content {
    fn from(v: Vec<u8>) -> Self {
        Content::Bytes(v.into())
    }
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            Content::Redirect(_) => 0,
            Content::Throttled { bytes, .. } | Content::Stalls { bytes, .. } => bytes.len() as u64,
            Content::Gzip(bytes) => bytes.len() as u64,
        }
    }
}

#[derive(Default)]
struct StubState {
    /// bulk type -> (updated_at, file name, or the absolute URL the index links to)
    bulk: BTreeMap<String, (String, String)>,
    files: HashMap<String, Content>,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<StubState>>;

/// A running stub on an ephemeral port of 127.0.0.1.
#[derive(Clone)]
pub struct StubUpstream {
    pub base_url: String,
    state: Shared,
}

impl StubUpstream {
    pub async fn start() -> Result<StubUpstream> {
        let state: Shared = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let index_base = base_url.clone();
        let app = axum::Router::new()
            .route(
                "/bulk-data",
                get(move |s: State<Shared>| bulk_index(s, index_base.clone())),
            )
            .route("/files/{name}", get(file))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(StubUpstream { base_url, state })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `content` as the `kind` bulk file at version `updated_at` (RFC 3339).
    pub fn publish_bulk(&self, kind: &str, updated_at: &str, content: impl Into<Content>) {
        let file = format!("{kind}-{}.json", updated_at.replace([':', '.', '+'], "-"));
        let mut s = self.lock();
        s.files.insert(file.clone(), content.into());
        s.bulk
            .insert(kind.to_owned(), (updated_at.to_owned(), file));
    }

    /// Lists the `kind` bulk file at version `updated_at` with `download_uri` as its link, wherever it points.
    pub fn publish_bulk_link(&self, kind: &str, updated_at: &str, download_uri: &str) {
        self.lock().bulk.insert(
            kind.to_owned(),
            (updated_at.to_owned(), download_uri.to_owned()),
        );
    }

    /// Serves `content` at `/files/<name>`.
    pub fn publish_file(&self, name: &str, content: impl Into<Content>) {
        self.lock().files.insert(name.to_owned(), content.into());
    }

    /// Paths requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

async fn bulk_index(State(state): State<Shared>, base: String) -> Response {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.requests.push("/bulk-data".into());
    let data: Vec<serde_json::Value> = s
        .bulk
        .iter()
        .map(|(kind, (updated_at, file))| {
            serde_json::json!({
                "object": "bulk_data", "type": kind, "updated_at": updated_at,
                "download_uri": if file.contains("://") { file.clone() } else { format!("{base}/files/{file}") },
                "size": s.files.get(file).map(Content::len).unwrap_or(0),
                "content_type": "application/json", "content_encoding": "gzip"
            })
        })
        .collect();
    axum::Json(serde_json::json!({"object": "list", "has_more": false, "data": data}))
        .into_response()
}

async fn file(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    let content = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests.push(format!("/files/{name}"));
        s.files.get(&name).cloned()
    };
    match content {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(Content::Bytes(b)) => (StatusCode::OK, b).into_response(),
        Some(Content::Redirect(location)) => (
            StatusCode::FOUND,
            [(axum::http::header::LOCATION, location)],
        )
            .into_response(),
        Some(Content::Throttled {
            bytes,
            bytes_per_sec,
        }) => {
            const CHUNK: usize = 16 * 1024;
            let pause = Duration::from_secs_f64(CHUNK as f64 / bytes_per_sec.max(1) as f64);
            let len = bytes.len();
            let chunks = (0..len.div_ceil(CHUNK))
                .map(move |i| bytes.slice(i * CHUNK..((i + 1) * CHUNK).min(len)));
            let body = futures::stream::iter(chunks).then(move |chunk| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(chunk)
            });
            sized(len, Body::from_stream(body))
        }
        Some(Content::Gzip(bytes)) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_ENCODING, "gzip")],
            bytes,
        )
            .into_response(),
        Some(Content::Stalls { bytes, after }) => {
            let len = bytes.len();
            let head = bytes.slice(..after.min(len));
            let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
                .chain(futures::stream::pending());
            sized(len, Body::from_stream(body))
        }
        Some(Content::File(path)) => match tokio::fs::File::open(&path).await {
            // Large reads: 4 KiB ones (the default) cost the stub more CPU than the client spends parsing.
            Ok(f) => Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024))
                .into_response(),
            Err(_) => StatusCode::NOT_FOUND.into_response(),
        },
    }
}

/// A streamed body with its length announced, as a real file server sends it.
fn sized(len: usize, body: Body) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response()
}
