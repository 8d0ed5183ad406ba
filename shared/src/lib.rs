//! The Dualcaster Deals task platform: the task envelope, the registry of tasks, the SQS batch runtime that
//! every Lambda function runs, and the task logic itself (one file per task under [`tasks`]).
//!
//! The functions in `functions/*` only wire things together: they load [`config::Settings`], set up
//! [`telemetry`], build the clients and the Postgres pool once per container and hand every invocation to
//! [`runtime::Runtime::handle`].

pub mod analytics;
pub mod catalog;
pub mod config;
pub mod context;
pub mod db;
pub mod envelope;
pub mod error;
pub mod function;
pub mod json_stream;
pub mod lazy_client;
pub mod lease;
pub mod metrics;
pub mod migrations;
pub mod mtgjson;
pub mod ops;
pub mod pg_copy;
pub mod pg_numeric;
pub mod pg_text;
pub mod pg_tid;
pub mod queue;
pub mod registry;
pub mod report;
pub mod retry;
pub mod runtime;
pub mod schedule;
pub mod scryfall;
pub mod secrets;
pub mod series_metrics;
pub mod tasks;
pub mod telemetry;
pub mod upstream;

pub use error::{ErrorKind, TaskError};
