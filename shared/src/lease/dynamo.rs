//! [`LeaseStore`] on DynamoDB: conditional writes on one table keyed by `pk`.
//!
//! Item: `pk` (S), `kind`, `owner`, `task` (S), `acquired_at`, `expires_at` (N, epoch ms), `ttl` (N, epoch
//! seconds, for DynamoDB's TTL clean-up an hour after expiry), and for idempotency records `payload_hash`
//! and `result` (S). Expiry is always compared against `expires_at` in the condition itself.

use crate::lazy_client::LazyClient;
use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;

use super::{millis, Acquire, Lease, LeaseError, LeaseKind, LeaseStore};

/// Seconds after expiry when DynamoDB may delete a record (clean-up only; expiry never depends on it).
const TTL_GRACE_SECS: i64 = 3600;

#[derive(Debug, Clone)]
pub struct DynamoLeaseStore {
    client: LazyClient<Client>,
    table: String,
}

impl DynamoLeaseStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self::with_lazy_client(crate::lazy_client::ready(client), table)
    }

    /// A store whose client is built on first use.
    pub fn with_lazy_client(client: LazyClient<Client>, table: impl Into<String>) -> Self {
        DynamoLeaseStore {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ttl_of(expires_at: DateTime<Utc>) -> AttributeValue {
    n(expires_at.timestamp() + TTL_GRACE_SECS)
}

fn to_item(l: &Lease) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(&l.key)),
        ("kind".to_owned(), s(l.kind.as_str())),
        ("owner".to_owned(), s(&l.owner)),
        ("task".to_owned(), s(&l.task)),
        ("acquired_at".to_owned(), n(millis(l.acquired_at))),
        ("expires_at".to_owned(), n(millis(l.expires_at))),
        ("ttl".to_owned(), ttl_of(l.expires_at)),
    ]);
    if let Some(h) = &l.payload_hash {
        item.insert("payload_hash".into(), s(h));
    }
    if let Some(r) = &l.result {
        item.insert("result".into(), s(r));
    }
    item
}

fn from_item(item: &Item) -> Result<Lease, LeaseError> {
    let text = |name: &str| -> Result<String, LeaseError> {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or_else(|| LeaseError::Store(format!("lease record lacks `{name}`")))
    };
    let time = |name: &str| -> Result<DateTime<Utc>, LeaseError> {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .ok_or_else(|| LeaseError::Store(format!("lease record lacks a numeric `{name}`")))
    };
    let kind = match text("kind")?.as_str() {
        "run" => LeaseKind::Run,
        "idempotency" => LeaseKind::Idempotency,
        other => return Err(LeaseError::Store(format!("unknown lease kind `{other}`"))),
    };
    Ok(Lease {
        key: text("pk")?,
        kind,
        owner: text("owner")?,
        task: text("task")?,
        acquired_at: time("acquired_at")?,
        expires_at: time("expires_at")?,
        payload_hash: text("payload_hash").ok(),
        result: text("result").ok(),
    })
}

/// Timeouts, transport failures, throttling and 5xx are worth retrying; the rest is not.
fn classify<E, R>(what: &str, err: SdkError<E, R>) -> LeaseError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default().to_owned();
    let message = format!(
        "{what}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&err)
    );
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            LeaseError::Unavailable(message)
        }
        SdkError::ServiceError(_)
            if code.contains("Throttl")
                || code == "ProvisionedThroughputExceededException"
                || code == "RequestLimitExceeded"
                || code == "InternalServerError"
                || code == "ServiceUnavailable" =>
        {
            LeaseError::Unavailable(message)
        }
        _ => LeaseError::Store(message),
    }
}

fn not_holder(key: &str, owner: &str) -> LeaseError {
    LeaseError::NotHolder {
        key: key.to_owned(),
        owner: owner.to_owned(),
    }
}

impl DynamoLeaseStore {
    async fn get_item(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem", e))?;
        out.item().map(from_item).transpose()
    }

    /// Sets `updates` on a live, not completed record held by `owner`.
    async fn update_held(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        result: Option<&str>,
    ) -> Result<(), LeaseError> {
        let mut update = "SET #e = :e, #ttl = :ttl".to_owned();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression("#o = :owner AND #e > :now AND attribute_not_exists(#r)")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#e", "expires_at")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_names("#r", "result")
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(millis(now)))
            .expression_attribute_values(":e", n(millis(expires_at)))
            .expression_attribute_values(":ttl", ttl_of(expires_at));
        if let Some(result) = result {
            update.push_str(", #r = :r");
            request = request.expression_attribute_values(":r", s(result));
        }
        match request.update_expression(update).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(not_holder(key, owner))
            }
            Err(e) => Err(classify("UpdateItem", e)),
        }
    }
}

impl LeaseStore for DynamoLeaseStore {
    fn acquire<'a>(
        &'a self,
        lease: &'a Lease,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>> {
        Box::pin(async move {
            // A record can vanish between a failed put and the read of the holder (released meanwhile):
            // then the put is simply tried again.
            for _ in 0..3 {
                let put = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(to_item(lease)))
                    .condition_expression("attribute_not_exists(pk) OR #e <= :now")
                    .expression_attribute_names("#e", "expires_at")
                    .expression_attribute_values(":now", n(millis(now)))
                    .send()
                    .await;
                match put {
                    Ok(_) => return Ok(Acquire::Acquired),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
                    {
                        if let Some(holder) = self.get_item(&lease.key).await? {
                            return Ok(Acquire::Held(holder));
                        }
                    }
                    Err(e) => return Err(classify("PutItem", e)),
                }
            }
            Err(LeaseError::Unavailable(format!(
                "lease {} kept changing hands",
                lease.key
            )))
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.update_held(key, owner, now, expires_at, None))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        result: &'a str,
        keep_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.update_held(key, owner, now, keep_until, Some(result)))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async move {
            let out = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(key))
                .condition_expression("#o = :owner")
                .expression_attribute_names("#o", "owner")
                .expression_attribute_values(":owner", s(owner))
                .send()
                .await;
            match out {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
                {
                    Err(not_holder(key, owner))
                }
                Err(e) => Err(classify("DeleteItem", e)),
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        Box::pin(self.get_item(key))
    }

    fn list<'a>(
        &'a self,
        kind: LeaseKind,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<Lease>, LeaseError>> {
        Box::pin(async move {
            let mut leases = Vec::new();
            let mut start: Option<Item> = None;
            loop {
                let out = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .filter_expression("#k = :kind AND #e > :now")
                    .expression_attribute_names("#k", "kind")
                    .expression_attribute_names("#e", "expires_at")
                    .expression_attribute_values(":kind", s(kind.as_str()))
                    .expression_attribute_values(":now", n(millis(now)))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| classify("Scan", e))?;
                for item in out.items() {
                    leases.push(from_item(item)?);
                }
                match out.last_evaluated_key() {
                    Some(k) if !k.is_empty() => start = Some(k.clone()),
                    _ => break,
                }
            }
            leases.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(leases)
        })
    }

    fn force_release<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        Box::pin(async move {
            let out = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(key))
                .return_values(ReturnValue::AllOld)
                .send()
                .await
                .map_err(|e| classify("DeleteItem", e))?;
            out.attributes().map(from_item).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip() {
        // Whole milliseconds: the precision the table keeps.
        let now = DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
        let mut l = Lease::new(
            "k",
            LeaseKind::Idempotency,
            "o",
            "ping",
            now,
            now + chrono::Duration::seconds(5),
        );
        l.payload_hash = Some("h".into());
        l.result = Some("{}".into());
        let item = to_item(&l);
        assert_eq!(item["ttl"], n(l.expires_at.timestamp() + TTL_GRACE_SECS));
        assert_eq!(from_item(&item).unwrap(), l);
    }

    #[test]
    fn incomplete_items_are_store_errors() {
        let mut item = to_item(&Lease::new(
            "k",
            LeaseKind::Run,
            "o",
            "t",
            Utc::now(),
            Utc::now(),
        ));
        item.remove("expires_at");
        assert!(matches!(from_item(&item), Err(LeaseError::Store(m)) if m.contains("expires_at")));
    }
}
