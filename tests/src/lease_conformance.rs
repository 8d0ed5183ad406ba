//! The behaviour every [`LeaseStore`] must have. Run against the in-memory store and
//! against DynamoDB (LocalStack + moto) by the integration tests, so both follow one set of rules.
//!
//! Time is passed in explicitly, so expiry is checked without sleeping. Each check uses its own keys under
//! `prefix`, so a shared table can host several runs at once.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};

use dualcaster::lease::{Acquire, Lease, LeaseError, LeaseKind, LeaseStore};

/// `Utc::now()` cut to whole milliseconds, the precision stores keep.
pub fn now_ms() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(Utc::now().timestamp_millis())
        .single()
        .unwrap_or_else(Utc::now)
}

fn lease(prefix: &str, key: &str, owner: &str, now: DateTime<Utc>, ttl_ms: i64) -> Lease {
    Lease::new(
        format!("{prefix}:{key}"),
        LeaseKind::Run,
        owner,
        "conformance",
        now,
        now + Duration::milliseconds(ttl_ms),
    )
}

/// Runs every check; panics on the first broken rule.
pub async fn run_all(store: &dyn LeaseStore, prefix: &str) {
    acquire_is_exclusive(store, prefix).await;
    expired_lease_is_taken_over(store, prefix).await;
    only_the_owner_renews(store, prefix).await;
    only_the_owner_releases(store, prefix).await;
    completed_results_are_kept_and_returned(store, prefix).await;
    list_shows_live_records_of_a_kind(store, prefix).await;
    force_release_frees_any_key(store, prefix).await;
}

pub async fn acquire_is_exclusive(store: &dyn LeaseStore, prefix: &str) {
    let now = now_ms();
    let a = lease(prefix, "exclusive", "owner-a", now, 10_000);
    assert_eq!(store.acquire(&a, now).await.unwrap(), Acquire::Acquired);
    let b = lease(prefix, "exclusive", "owner-b", now, 10_000);
    match store.acquire(&b, now).await.unwrap() {
        Acquire::Held(holder) => {
            assert_eq!(holder.owner, "owner-a");
            assert_eq!(holder.expires_at, a.expires_at);
            assert_eq!(holder.task, "conformance");
            assert_eq!(holder.kind, LeaseKind::Run);
        }
        other => panic!("second acquire must see the holder, got {other:?}"),
    }
    // Even the same owner cannot acquire twice: a second attempt is a second run.
    assert!(matches!(
        store.acquire(&a, now).await.unwrap(),
        Acquire::Held(_)
    ));
}

pub async fn expired_lease_is_taken_over(store: &dyn LeaseStore, prefix: &str) {
    let now = now_ms();
    let dead = lease(prefix, "expired", "crashed-holder", now, 500);
    assert_eq!(store.acquire(&dead, now).await.unwrap(), Acquire::Acquired);
    let next = lease(prefix, "expired", "next-run", now, 500);
    // Still live one millisecond before expiry...
    let before = dead.expires_at - Duration::milliseconds(1);
    assert!(matches!(
        store.acquire(&next, before).await.unwrap(),
        Acquire::Held(_)
    ));
    // ...and free from the instant it expires, whether or not the record is still there.
    let at = dead.expires_at;
    let next = lease(prefix, "expired", "next-run", at, 500);
    assert_eq!(store.acquire(&next, at).await.unwrap(), Acquire::Acquired);
    assert_eq!(
        store.get(&next.key).await.unwrap().unwrap().owner,
        "next-run"
    );
}

pub async fn only_the_owner_renews(store: &dyn LeaseStore, prefix: &str) {
    let now = now_ms();
    let l = lease(prefix, "renew", "owner", now, 1_000);
    assert_eq!(store.acquire(&l, now).await.unwrap(), Acquire::Acquired);
    let later = now + Duration::milliseconds(5_000);
    store.renew(&l.key, "owner", later, now).await.unwrap();
    assert_eq!(store.get(&l.key).await.unwrap().unwrap().expires_at, later);

    let err = store
        .renew(&l.key, "intruder", later + Duration::seconds(60), now)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::NotHolder { .. }), "{err:?}");
    assert_eq!(store.get(&l.key).await.unwrap().unwrap().expires_at, later);

    // A lease that has expired cannot be revived: its holder has lost it.
    let err = store
        .renew(&l.key, "owner", later + Duration::seconds(60), later)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::NotHolder { .. }), "{err:?}");
    let err = store
        .renew(&format!("{prefix}:missing"), "owner", later, now)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::NotHolder { .. }), "{err:?}");
}

pub async fn only_the_owner_releases(store: &dyn LeaseStore, prefix: &str) {
    let now = now_ms();
    let l = lease(prefix, "release", "owner", now, 60_000);
    assert_eq!(store.acquire(&l, now).await.unwrap(), Acquire::Acquired);
    let err = store.release(&l.key, "intruder").await.unwrap_err();
    assert!(matches!(err, LeaseError::NotHolder { .. }), "{err:?}");
    assert!(
        store.get(&l.key).await.unwrap().is_some(),
        "a refused release deletes nothing"
    );

    store.release(&l.key, "owner").await.unwrap();
    assert_eq!(store.get(&l.key).await.unwrap(), None);
    let next = lease(prefix, "release", "next", now, 60_000);
    assert_eq!(store.acquire(&next, now).await.unwrap(), Acquire::Acquired);
    let err = store.release(&l.key, "owner").await.unwrap_err();
    assert!(
        matches!(err, LeaseError::NotHolder { .. }),
        "the old owner cannot release the new lease"
    );
}

pub async fn completed_results_are_kept_and_returned(store: &dyn LeaseStore, prefix: &str) {
    let now = now_ms();
    let mut l = lease(prefix, "idem", "first-delivery", now, 5_000);
    l.kind = LeaseKind::Idempotency;
    l.payload_hash = Some("hash-1".into());
    assert_eq!(store.acquire(&l, now).await.unwrap(), Acquire::Acquired);

    let err = store
        .complete(&l.key, "someone-else", "{}", now + Duration::hours(1), now)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::NotHolder { .. }), "{err:?}");

    let keep_until = now + Duration::hours(24);
    store
        .complete(
            &l.key,
            "first-delivery",
            r#"{"processed":3}"#,
            keep_until,
            now,
        )
        .await
        .unwrap();
    let stored = store.get(&l.key).await.unwrap().unwrap();
    assert_eq!(stored.result.as_deref(), Some(r#"{"processed":3}"#));
    assert_eq!(stored.expires_at, keep_until);
    assert_eq!(stored.payload_hash.as_deref(), Some("hash-1"));

    // A second delivery, long after the first run's lease would have ended, sees the stored result.
    let mut second = l.clone();
    second.owner = "second-delivery".into();
    let later = now + Duration::hours(2);
    match store.acquire(&second, later).await.unwrap() {
        Acquire::Held(held) => assert_eq!(held.result.as_deref(), Some(r#"{"processed":3}"#)),
        other => panic!("{other:?}"),
    }
    // A completed record is not a lease any more: it cannot be renewed or completed again.
    assert!(store
        .renew(&l.key, "first-delivery", keep_until, later)
        .await
        .is_err());
    // Once kept long enough it expires and the key can be used again.
    assert_eq!(
        store.acquire(&second, keep_until).await.unwrap(),
        Acquire::Acquired
    );
}

pub async fn list_shows_live_records_of_a_kind(store: &dyn LeaseStore, prefix: &str) {
    let now = now_ms();
    let live = lease(prefix, "list-live", "o", now, 60_000);
    let dead = lease(
        prefix,
        "list-dead",
        "o",
        now - Duration::seconds(120),
        60_000,
    );
    let mut other_kind = lease(prefix, "list-idem", "o", now, 60_000);
    other_kind.kind = LeaseKind::Idempotency;
    store.acquire(&live, now).await.unwrap();
    store
        .acquire(&dead, now - Duration::seconds(120))
        .await
        .unwrap();
    store.acquire(&other_kind, now).await.unwrap();
    let keys: Vec<String> = store
        .list(LeaseKind::Run, now)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .filter(|k| k.starts_with(&format!("{prefix}:list-")))
        .collect();
    assert_eq!(keys, vec![live.key.clone()]);
}

pub async fn force_release_frees_any_key(store: &dyn LeaseStore, prefix: &str) {
    let now = now_ms();
    let l = lease(prefix, "force", "stuck-owner", now, 3_600_000);
    store.acquire(&l, now).await.unwrap();
    let removed = store.force_release(&l.key).await.unwrap().unwrap();
    assert_eq!(removed.owner, "stuck-owner");
    assert_eq!(store.get(&l.key).await.unwrap(), None);
    assert_eq!(store.force_release(&l.key).await.unwrap(), None);
    let next = lease(prefix, "force", "next", now, 1_000);
    assert_eq!(store.acquire(&next, now).await.unwrap(), Acquire::Acquired);
}

/// `contenders` tasks race for one key, `rounds` times (each round a fresh key). Returns the winners per
/// round; the caller asserts they are all exactly one.
pub async fn contention(
    store: Arc<dyn LeaseStore>,
    prefix: &str,
    contenders: usize,
    rounds: usize,
) -> Vec<usize> {
    let mut winners = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let now = now_ms();
        let barrier = Arc::new(tokio::sync::Barrier::new(contenders));
        let mut handles = Vec::new();
        for c in 0..contenders {
            let store = store.clone();
            let barrier = barrier.clone();
            let l = lease(
                prefix,
                &format!("race-{round}"),
                &format!("contender-{c}"),
                now,
                60_000,
            );
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                store.acquire(&l, now).await
            }));
        }
        let mut won = 0;
        for h in handles {
            if let Ok(Ok(Acquire::Acquired)) = h.await {
                won += 1;
            }
        }
        winners.push(won);
    }
    winners
}
