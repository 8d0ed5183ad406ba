//! Model-based and generated tests: each compares the product with an oracle that does not come from its
//! code (a naive reference model written from the AWS documentation or the product's contracts), on inputs
//! generated from a fixed seed. `make test` runs a bounded number of cases; `make test-deep` many more.

mod batch;
mod binary_copy;
mod cron;
mod dlq;
mod incremental_metrics;
mod ingestion;
mod mtgjson;
mod price_series;

#[test]
fn every_test_file_is_compiled() {
    integration_tests::assert_every_file_is_a_module("model");
}
