//! Start-up of a queue's Lambda function: telemetry, settings, clients and the pool are built once per
//! container, then every invocation goes to the shared [`Runtime`].

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use crate::config::DatabaseSource;
use crate::config::Settings;
use crate::context::{Services, Upstreams};
use crate::db::{self, RunLog};
use crate::lazy_client::lazy;
use crate::lease::dynamo::DynamoLeaseStore;
use crate::queue::{Queue, SqsQueueOps};
use crate::registry::Registry;
use crate::runtime::{Invocation, Runtime};
use crate::secrets::{DatabaseSecret, Endpoint};
use crate::telemetry;

/// Builds the runtime for `queue` from the environment (fails fast, naming a missing variable).
pub async fn build(queue: Queue) -> Result<Runtime, lambda_runtime::Error> {
    let settings = Settings::from_env()?;
    let aws = aws_from_env().await;
    let function_name =
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| format!("dualcaster-{queue}"));
    build_with(queue, settings, &aws, function_name)
}

/// The AWS configuration from the environment. Lambda puts the function's credentials there, and resolving
/// the whole default chain instead would build an STS client for web identity at once, which loads the
/// system's CA certificates before the first poll; without them in the environment, the default chain.
async fn aws_from_env() -> aws_config::SdkConfig {
    let loader = aws_config::from_env();
    let loader = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        )
    } else {
        loader
    };
    loader.load().await
}

/// Builds the runtime for `queue` from settings and an AWS configuration: the clients, the lazy pool, the
/// lease store and the upstreams, once. The CLI uses it to run tasks in-process as the function would.
pub fn build_with(
    queue: Queue,
    settings: Settings,
    aws: &aws_config::SdkConfig,
    function_name: String,
) -> Result<Runtime, lambda_runtime::Error> {
    build_with_registry(
        queue,
        settings,
        aws,
        function_name,
        crate::tasks::registry(),
    )
}

/// [`build_with`] for another task list: the built-in one with tasks added (`tasks::all()` plus one
/// `TaskSpec::of::<T>()`), for a crate that defines its own.
pub fn build_with_registry(
    queue: Queue,
    settings: Settings,
    aws: &aws_config::SdkConfig,
    function_name: String,
    registry: Registry,
) -> Result<Runtime, lambda_runtime::Error> {
    // Every AWS client is built on first use: building one loads the system's CA certificates, which a cold
    // start before its first poll does not need.
    let sqs = {
        let aws = aws.clone();
        lazy(move || aws_sdk_sqs::Client::new(&aws))
    };
    let leases = Arc::new(DynamoLeaseStore::with_lazy_client(
        {
            let aws = aws.clone();
            lazy(move || aws_sdk_dynamodb::Client::new(&aws))
        },
        settings.lease_table.clone(),
    ));
    let pool = db::lazy_pool(&settings)?;
    let db_secret = match &settings.database {
        DatabaseSource::Url(_) => None,
        DatabaseSource::Secret {
            arn,
            host,
            port,
            name,
        } => Some(DatabaseSecret::new(
            {
                let aws = aws.clone();
                lazy(move || aws_sdk_secretsmanager::Client::new(&aws))
            },
            arn.clone(),
            Endpoint {
                host: host.clone(),
                port: *port,
                name: name.clone(),
            },
            db::APPLICATION_NAME,
        )),
    };
    let upstreams = Upstreams::from_settings(&settings)?;
    let services = Arc::new(Services {
        settings,
        db: pool.clone(),
        db_secret,
        sqs: sqs.clone(),
        leases,
        upstreams,
    });
    Ok(Runtime::new(
        queue,
        registry,
        services,
        Arc::new(SqsQueueOps::with_lazy_client(sqs)),
        RunLog::Postgres(pool),
        function_name,
    ))
}

/// Runs the Lambda function of `queue` until the runtime API goes away.
pub async fn serve(queue: Queue) -> Result<(), lambda_runtime::Error> {
    telemetry::init();
    let runtime = match build(queue).await {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, queue = %queue, "cold start failed");
            return Err(e);
        }
    };
    tracing::info!(queue = %queue, tasks = runtime.registry().iter().count(), "function ready");
    let runtime = &runtime;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let invocation = Invocation::from_lambda(&event.context);
        runtime.handle(event.payload, invocation).await
    }))
    .await
}

/// Runs the `ops` Lambda function: direct invokes only, each payload an [`OpsRequest`](crate::ops::OpsRequest)
/// run with the default queue's runtime (the operator tasks live there).
pub async fn serve_ops() -> Result<(), lambda_runtime::Error> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let aws = aws_from_env().await;
    let function_name =
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "dualcaster-ops".into());
    let ops = match build_with(Queue::Default, settings, &aws, function_name) {
        Ok(runtime) => crate::ops::Ops::new(runtime, {
            let aws = aws.clone();
            lazy(move || aws_sdk_sqs::Client::new(&aws))
        }),
        Err(e) => {
            tracing::error!(error = %e, "cold start failed");
            return Err(e);
        }
    };
    tracing::info!("ops function ready");
    let ops = &ops;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let invocation = Invocation::from_lambda(&event.context);
        let request = crate::ops::parse(event.payload)?;
        ops.execute(request, invocation).await
    }))
    .await
}
