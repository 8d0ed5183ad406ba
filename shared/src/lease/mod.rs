//! Leases: one primitive, a conditional write with an owner token and an expiry, used both for
//! single-instance runs and for recognising duplicate deliveries.
//!
//! A lease is held while `expires_at` is in the future. Acquiring succeeds when the key is free or its
//! lease has expired (the store compares expiry itself; DynamoDB's TTL deletion can lag by days). Only the
//! owner can renew, complete or release it. Nothing is held "forever": every lease ends at the latest at the
//! invocation's deadline plus a margin, so a crashed holder blocks the next run only until then.

pub mod dynamo;
pub mod memory;

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// What a record in the lease table is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    /// A single-instance run: held while the task runs.
    Run,
    /// A delivery being processed (in progress) or processed (completed, with its stored report).
    Idempotency,
}

impl LeaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Run => "run",
            LeaseKind::Idempotency => "idempotency",
        }
    }
}

/// One record of the lease table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub key: String,
    pub kind: LeaseKind,
    /// Token of the holder (one per run attempt).
    pub owner: String,
    pub task: String,
    pub acquired_at: DateTime<Utc>,
    /// The lease (or, once completed, the stored result) counts until this instant.
    pub expires_at: DateTime<Utc>,
    /// Idempotency records: hash of the arguments the key was first used with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hash: Option<String>,
    /// Idempotency records: the report of the completed run (JSON), absent while in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

impl Lease {
    pub fn new(
        key: impl Into<String>,
        kind: LeaseKind,
        owner: impl Into<String>,
        task: impl Into<String>,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Lease {
            key: key.into(),
            kind,
            owner: owner.into(),
            task: task.into(),
            acquired_at: now,
            expires_at,
            payload_hash: None,
            result: None,
        }
    }

    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at > now
    }

    pub fn is_completed(&self) -> bool {
        self.result.is_some()
    }
}

/// The outcome of an acquire.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquire {
    /// The caller now holds the key.
    Acquired,
    /// Someone else does (or a completed result is stored under it): here is the current record.
    Held(Lease),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LeaseError {
    /// Renew, complete or release by someone who does not hold the lease (or after it expired).
    #[error("lease {key} is not held by {owner}")]
    NotHolder { key: String, owner: String },
    /// The store could not be reached or refused the request; retrying may help.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// A request the store rejected for good (bad table, permissions, malformed record).
    #[error("lease store error: {0}")]
    Store(String),
}

impl From<LeaseError> for crate::error::TaskError {
    fn from(e: LeaseError) -> Self {
        use crate::error::{class, TaskError};
        match e {
            LeaseError::Unavailable(m) => TaskError::retryable(class::LEASE_STORE_UNAVAILABLE, m),
            LeaseError::NotHolder { .. } => TaskError::retryable(class::LEASE_LOST, e.to_string()),
            LeaseError::Store(m) => TaskError::permanent(class::LEASE_STORE, m),
        }
    }
}

/// Where leases live. Small on purpose: DynamoDB in production, memory in unit tests; both pass the same
/// behaviour suite (`tests/src/lease_conformance.rs`).
pub trait LeaseStore: Send + Sync {
    /// Writes `lease` if its key is free or the current record has expired at `now`.
    fn acquire<'a>(
        &'a self,
        lease: &'a Lease,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>>;

    /// Moves the expiry of a live lease held by `owner` to `expires_at`.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Stores the result under a live lease held by `owner` and keeps it until `keep_until`.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        result: &'a str,
        keep_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Deletes the record if `owner` holds it.
    fn release<'a>(&'a self, key: &'a str, owner: &'a str)
        -> BoxFuture<'a, Result<(), LeaseError>>;

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>>;

    /// Every record of `kind` still live at `now`.
    fn list<'a>(
        &'a self,
        kind: LeaseKind,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<Lease>, LeaseError>>;

    /// Deletes the record whoever holds it; returns what was deleted.
    fn force_release<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>>;
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) held by {} until {}",
            self.key,
            self.task,
            self.owner,
            self.expires_at.to_rfc3339()
        )
    }
}

/// Milliseconds since the epoch: how expiry is stored and compared.
pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}
