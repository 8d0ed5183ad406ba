//! An in-memory [`LeaseStore`] with the same rules as the DynamoDB one, for unit tests.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::{Acquire, Lease, LeaseError, LeaseKind, LeaseStore};

#[derive(Debug, Default)]
pub struct MemoryLeaseStore {
    records: Mutex<HashMap<String, Lease>>,
}

impl MemoryLeaseStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Lease>) -> T) -> T {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut records)
    }
}

fn not_holder(key: &str, owner: &str) -> LeaseError {
    LeaseError::NotHolder {
        key: key.to_owned(),
        owner: owner.to_owned(),
    }
}

impl LeaseStore for MemoryLeaseStore {
    fn acquire<'a>(
        &'a self,
        lease: &'a Lease,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>> {
        let result = self.with(|records| match records.get(&lease.key) {
            Some(current) if current.is_live(now) => Acquire::Held(current.clone()),
            _ => {
                records.insert(lease.key.clone(), lease.clone());
                Acquire::Acquired
            }
        });
        Box::pin(async move { Ok(result) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        let result = self.with(|records| match records.get_mut(key) {
            Some(l) if l.owner == owner && l.is_live(now) && !l.is_completed() => {
                l.expires_at = expires_at;
                Ok(())
            }
            _ => Err(not_holder(key, owner)),
        });
        Box::pin(async move { result })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        result: &'a str,
        keep_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        let outcome = self.with(|records| match records.get_mut(key) {
            Some(l) if l.owner == owner && l.is_live(now) && !l.is_completed() => {
                l.result = Some(result.to_owned());
                l.expires_at = keep_until;
                Ok(())
            }
            _ => Err(not_holder(key, owner)),
        });
        Box::pin(async move { outcome })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        let result = self.with(|records| match records.get(key) {
            Some(l) if l.owner == owner => {
                records.remove(key);
                Ok(())
            }
            _ => Err(not_holder(key, owner)),
        });
        Box::pin(async move { result })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        let result = self.with(|records| records.get(key).cloned());
        Box::pin(async move { Ok(result) })
    }

    fn list<'a>(
        &'a self,
        kind: LeaseKind,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<Lease>, LeaseError>> {
        let mut result: Vec<Lease> = self.with(|records| {
            records
                .values()
                .filter(|l| l.kind == kind && l.is_live(now))
                .cloned()
                .collect()
        });
        result.sort_by(|a, b| a.key.cmp(&b.key));
        Box::pin(async move { Ok(result) })
    }

    fn force_release<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        let result = self.with(|records| records.remove(key));
        Box::pin(async move { Ok(result) })
    }
}
