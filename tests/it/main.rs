//! Integration tests: real function binaries, real LocalStack SQS, real Postgres.
//! Start the stack first: `make stack-up` (the `make test` target does it).

mod analytics;
mod bad_input;
mod batches;
mod database_errors;
mod direct_invoke;
mod disruptive;
mod docs;
mod extending;
mod faults;
mod harness;
mod infra;
mod ingestion;
mod leases;
mod local_system;
mod metrics_reference;
mod mtgjson;
mod observability;
mod operations;
mod prune_task_runs;
mod secrets;
mod source_tree;
mod upstream_hosts;

#[test]
fn every_test_file_is_compiled() {
    integration_tests::assert_every_file_is_a_module("it");
}
