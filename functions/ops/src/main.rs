//! The operators' Lambda function, for direct invokes (`aws lambda invoke`): DLQ statistics, redrive,
//! purge, schedules, leases and triggers. Wiring only: the actions live in `shared` (`ops`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    dualcaster::function::serve_ops().await
}
