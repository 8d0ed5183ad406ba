//! `dualcaster bench-ingest`: ingestion rate and peak memory of the real ingestion function on large
//! bulk-format files built from the bundled real cards, side by side with raw `COPY` of the same rows into
//! the same tables (the physical limit), in one run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::NaiveDate;
use serde_json::{json, Value};
use sqlx::PgPool;

use dualcaster::db::MIGRATOR;
use dualcaster::queue::Queue;
use dualcaster::scryfall::Card;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use dualcaster_tools::local::stub::{Content, StubUpstream};
use dualcaster_tools::local::{function_binary, local_aws_defaults};

const VERSION: &str = "2025-11-01T09:05:00Z";

/// Writes `count` card objects, cycling through the real sample with fresh ids, as one JSON array.
fn build_file(sample: &[Value], count: usize, path: &Path) -> Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(b"[")?;
    for i in 0..count {
        let mut card = sample[i % sample.len()].clone();
        card["id"] = json!(uuid::Uuid::from_u128(
            0x5eed_0000_0000_0000_0000_0000_0000_0000 + i as u128
        )
        .to_string());
        card["collector_number"] = json!(format!(
            "{}-{}",
            card["collector_number"].as_str().unwrap_or("0"),
            i / sample.len()
        ));
        if i > 0 {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut out, &card)?;
    }
    out.write_all(b"]\n")?;
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Peak resident set of a process (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM for {pid}"))?;
    Ok(kb / 1024.0)
}

/// The cargo profile this command was built with (`debug`, `profiling`, ...): its target directory's name.
pub(crate) fn build_profile() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.file_name()?.to_string_lossy().into_owned())
}

pub(crate) async fn fresh_database(admin_url: &str, name: &str) -> Result<(PgPool, String)> {
    let admin = PgPool::connect(admin_url)
        .await
        .context("connecting to the admin database")?;
    // FORCE ends our own sessions but not an autovacuum worker still busy with the previous run's rows,
    // which the app role may not terminate: wait for it.
    let mut attempts = 0;
    while let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    {
        attempts += 1;
        if attempts == 60 {
            return Err(e).context(format!("dropping {name}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => bail!("cannot derive a database URL from {admin_url}"),
    };
    let pool = dualcaster::db::pool_options()
        .max_connections(2)
        .connect(&url)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok((pool, url))
}

/// The rows the ingestion writes for `path`, rendered for `COPY ... FROM STDIN` (text format).
fn copy_payload(path: &Path, day: NaiveDate) -> Result<(Vec<u8>, Vec<u8>, u64)> {
    let cards: Vec<Card> =
        serde_json::from_reader(std::io::BufReader::new(std::fs::File::open(path)?))?;
    let (mut printings, mut prices, mut n) = (Vec::new(), Vec::new(), 0u64);
    let text = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "\\N".to_owned());
    for card in &cards {
        let p = card.printing();
        writeln!(
            printings,
            "{}\t{}\t{}\t{}\t{}\t{}\t{{{}}}\t{}\t{}\t{}\t{}\t{}",
            p.scryfall_id,
            opt(p.oracle_id.map(|u| u.to_string())),
            text(&p.name),
            text(&p.set_code),
            text(&p.collector_number),
            text(&p.rarity),
            p.finishes.join(","),
            opt(p.released_at.map(|d| d.to_string())),
            opt(p.tcgplayer_id.map(|v| v.to_string())),
            opt(p.cardmarket_id.map(|v| v.to_string())),
            opt(p.mtgo_id.map(|v| v.to_string())),
            opt(p.image_uri.as_deref().map(text)),
        )?;
        let mut rows = Vec::new();
        card.price_rows(day, &mut rows);
        for r in rows {
            writeln!(
                prices,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                r.scryfall_id, r.source, r.price_type, r.finish, r.currency, r.day, r.price
            )?;
            n += 1;
        }
    }
    Ok((printings, prices, n))
}

async fn copy_in(pool: &PgPool, statement: &str, payload: &[u8]) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(statement).await?;
    for chunk in payload.chunks(1 << 20) {
        copy.send(chunk.to_vec()).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// One ingestion of `file` by the real function, in its own process, into an empty catalog: its time, the price
/// points it wrote, its peak RSS in MB and the seconds it spent in Postgres (summed over its connections).
async fn ingest_once(
    admin_url: &str,
    stub: &StubUpstream,
    dir: &Path,
    batch_size: u32,
) -> Result<(f64, i64, f64, f64)> {
    let (pool, url) = fresh_database(admin_url, "dd_bench_ingest").await?;
    let mut env = local_aws_defaults();
    env.insert("DATABASE_URL".into(), url.clone());
    env.insert("DD_SCRYFALL_BASE_URL".into(), stub.base_url.clone());
    env.insert("DD_TASK_RESERVE_MS".into(), "0".into());
    env.insert("DD_METRICS_DISABLED".into(), "1".into());
    env.insert("RUST_LOG".into(), "warn".into());
    for (k, v) in std::env::vars().filter(|(k, _)| {
        k.starts_with("DD_QUEUE_URL_") || k.starts_with("DD_DLQ_URL_") || k == "DD_LEASE_TABLE"
    }) {
        env.insert(k, v);
    }
    let function = LocalFunction::start(
        "bench-ingestion",
        &function_binary(Queue::Ingestion)?,
        env,
        Duration::from_secs(900),
        Some(dir.join("function.log")),
    )
    .await?;
    let pid = function
        .pid()
        .ok_or_else(|| anyhow!("function not running"))?;
    let started = Instant::now();
    let out = function
        .invoke(json!({"task": "ingest_scryfall_bulk", "kwargs": {"force": true, "batch_size": batch_size}}))
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let rss = peak_rss_mb(pid)?;
    let db_secs = match out {
        Invoked::Outcome(InvokeOutcome::Response(r)) if r["detail"]["outcome"] == "completed" => {
            r["detail"]["db_ms"].as_f64().unwrap_or(0.0) / 1000.0
        }
        other => bail!("ingestion failed: {other:?}"),
    };
    let points: i64 = sqlx::query_scalar("SELECT count(*) FROM price_points")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok((secs, points, rss, db_secs))
}

/// Raw `COPY` of the rows into the same, emptied tables: the floor.
async fn copy_once(pool: &PgPool, printing_rows: &[u8], price_rows: &[u8]) -> Result<f64> {
    sqlx::query("TRUNCATE printings CASCADE")
        .execute(pool)
        .await?;
    let started = Instant::now();
    copy_in(
        pool,
        "COPY printings (scryfall_id, oracle_id, name, set_code, collector_number, rarity, finishes, released_at, \
         tcgplayer_id, cardmarket_id, mtgo_id, image_uri) FROM STDIN",
        printing_rows,
    )
    .await?;
    copy_in(
        pool,
        "COPY price_points (scryfall_id, source, price_type, finish, currency, day, price) FROM STDIN",
        price_rows,
    )
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

pub async fn bench_ingest(
    sizes: &[usize],
    sample: &Path,
    batch_size: u32,
    rounds: u32,
) -> Result<()> {
    let admin_url = std::env::var("DD_BENCH_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| dualcaster_tools::local::LOCAL_DATABASE_URL.to_owned());
    let cards: Vec<Value> = serde_json::from_reader(
        std::fs::File::open(sample).with_context(|| format!("reading {}", sample.display()))?,
    )?;
    let dir = PathBuf::from(".local/bench");
    std::fs::create_dir_all(&dir)?;
    let stub = StubUpstream::start().await?;
    let day = chrono::DateTime::parse_from_rfc3339(VERSION)?.date_naive();
    let mut rows = Vec::new();
    for &size in sizes {
        let file = dir.join(format!("cards-{size}.json"));
        let bytes = build_file(&cards, size, &file)?;
        stub.publish_bulk("default_cards", VERSION, Content::File(file.clone()));
        let (printing_rows, price_rows, expected) = copy_payload(&file, day)?;
        // Rounds alternate the two sides, so a slow spell of this shared machine is less likely to fall on
        // one side only; the best time of each side is its figure.
        let (mut ingest, mut copy, mut rss) = (f64::INFINITY, f64::INFINITY, 0f64);
        for round in 1..=rounds {
            let (secs, points, peak, db_secs) =
                ingest_once(&admin_url, &stub, &dir, batch_size).await?;
            if expected != points as u64 {
                bail!("COPY would write {expected} price points, the ingestion wrote {points}");
            }
            let (pool, _) = fresh_database(&admin_url, "dd_bench_ingest").await?;
            let copy_secs = copy_once(&pool, &printing_rows, &price_rows).await?;
            pool.close().await;
            eprintln!(
                "{size} cards, round {round}: ingestion {secs:.2} s ({db_secs:.2} s in Postgres over its \
                 connections), {peak:.1} MB; COPY {copy_secs:.2} s"
            );
            ingest = ingest.min(secs);
            copy = copy.min(copy_secs);
            rss = rss.max(peak);
        }
        let _ = std::fs::remove_file(&file);
        rows.push((size, bytes, expected as i64, ingest, copy, rss));
    }
    println!(
        "ingest_scryfall_bulk vs raw COPY of the same rows (same tables, empty catalog; best of {rounds} rounds each)"
    );
    println!(
        "{:>8} {:>9} {:>12} {:>10} {:>14} {:>9} {:>14} {:>7} {:>13}",
        "cards",
        "file MB",
        "price points",
        "ingest s",
        "points/s",
        "COPY s",
        "COPY points/s",
        "ratio",
        "peak RSS MB"
    );
    for (size, bytes, points, ingest, copy, rss) in rows {
        let rate = points as f64 / ingest;
        let copy_rate = points as f64 / copy;
        println!(
            "{:>8} {:>9.1} {:>12} {:>10.2} {:>14.0} {:>9.2} {:>14.0} {:>7.2} {:>13.1}",
            size,
            bytes as f64 / 1e6,
            points,
            ingest,
            rate,
            copy,
            copy_rate,
            rate / copy_rate,
            rss
        );
    }
    Ok(())
}
