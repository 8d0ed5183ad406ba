//! `dualcaster bench-leases`: lease acquire, renew and release latency, DynamoDB (LocalStack) beside the
//! in-memory store.

use anyhow::{anyhow, bail, Result};
use chrono::Utc;

use crate::stats::percentile;
use dualcaster::lease::dynamo::DynamoLeaseStore;
use dualcaster_tools::local::local_dynamodb;

/// Median and 95th percentile of each operation over `rounds` rounds, in microseconds.
pub async fn bench_leases(rounds: usize) -> Result<()> {
    use dualcaster::lease::memory::MemoryLeaseStore;
    use dualcaster::lease::{Lease, LeaseKind, LeaseStore};
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let table = std::env::var("DD_LEASE_TABLE")
        .map_err(|_| anyhow!("missing DD_LEASE_TABLE (run `make provision`)"))?;
    let dynamo = DynamoLeaseStore::new(local_dynamodb().await, table.clone());
    let memory = MemoryLeaseStore::new();
    let stores: [(&str, &dyn LeaseStore); 2] = [("dynamodb", &dynamo), ("in-memory", &memory)];
    println!(
        "lease operations, {rounds} rounds each; dynamodb = LocalStack -> moto, table {table}"
    );
    println!(
        "{:<38} {:>12} {:>12}",
        "store: operation", "median (us)", "p95 (us)"
    );
    for (name, store) in stores {
        let (mut acquire, mut held, mut renew, mut release) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let run = uuid::Uuid::new_v4().simple().to_string();
        for i in 0..rounds {
            let now = Utc::now();
            let key = format!("run:bench-{run}-{i}");
            let lease = Lease::new(
                &key,
                LeaseKind::Run,
                "bench",
                "bench",
                now,
                now + chrono::Duration::seconds(60),
            );
            let t = std::time::Instant::now();
            store.acquire(&lease, now).await?;
            acquire.push(t.elapsed());
            let mut rival = lease.clone();
            rival.owner = "rival".into();
            let t = std::time::Instant::now();
            store.acquire(&rival, now).await?;
            held.push(t.elapsed());
            let t = std::time::Instant::now();
            store
                .renew(&key, "bench", now + chrono::Duration::seconds(120), now)
                .await?;
            renew.push(t.elapsed());
            let t = std::time::Instant::now();
            store.release(&key, "bench").await?;
            release.push(t.elapsed());
        }
        for (op, samples) in [
            ("acquire, key free", acquire),
            ("acquire, key held (put + get)", held),
            ("renew", renew),
            ("release", release),
        ] {
            let mut micros: Vec<f64> = samples
                .iter()
                .map(|d| d.as_nanos() as f64 / 1000.0)
                .collect();
            let (p50, p95) = (percentile(&mut micros, 0.5), percentile(&mut micros, 0.95));
            println!(
                "{:<38} {:>12.1} {:>12.1}",
                format!("{name}: {op}"),
                p50,
                p95
            );
        }
    }
    Ok(())
}
