//! The ingestion queue's Lambda function. Wiring only: the task logic lives in `shared`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    dualcaster::function::serve(dualcaster::queue::Queue::Ingestion).await
}
