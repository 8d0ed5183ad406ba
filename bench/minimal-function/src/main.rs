//! The smallest function the Lambda runtime can serve: it answers each event with the event. Built with the
//! same release profile and timed by the same harness as the real functions, its start-up is the floor
//! `make bench-runtime` measures theirs against.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    }))
    .await
}
