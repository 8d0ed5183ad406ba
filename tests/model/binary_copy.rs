//! Binary `COPY` ([`dualcaster::pg_copy::BinaryRows`], how the metrics rows are written) against Postgres
//! itself: generated rows of every type the metrics carry (`uuid`, `text`, `date`, `numeric` at any scale,
//! `float8`, `int4`, `bytea`, each possibly NULL) are copied into a table, and Postgres must read back each value
//! as the test states it: the `uuid` and `date` in their standard text, the `numeric` with exactly the decimal's
//! digits and places (`0.00` stays `0.00`), the `float8` bit for bit.

use chrono::NaiveDate;
use dualcaster::pg_copy::BinaryRows;
use integration_tests::check_generated;
use proptest::prelude::*;
use rust_decimal::Decimal;
use sqlx::PgPool;

#[derive(Debug, Clone)]
struct Row {
    id: Option<uuid::Uuid>,
    name: Option<String>,
    day: Option<NaiveDate>,
    price: Option<Decimal>,
    ratio: Option<f64>,
    count: Option<i32>,
    bytes: Option<Vec<u8>>,
}

fn row() -> impl Strategy<Value = Row> {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date");
    (
        prop::option::of(any::<u128>().prop_map(uuid::Uuid::from_u128)),
        // Any text but NUL, which `text` cannot hold.
        prop::option::of("[^\u{0}]{0,12}"),
        prop::option::of((-40_000i64..40_000).prop_map(move |d| epoch + chrono::Duration::days(d))),
        prop::option::of(
            (-(1i128 << 96) + 1..(1i128 << 96), 0u32..=28)
                .prop_map(|(m, s)| Decimal::from_i128_with_scale(m, s)),
        ),
        prop::option::of(any::<f64>().prop_filter("a number", |f| f.is_finite())),
        prop::option::of(any::<i32>()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
    )
        .prop_map(|(id, name, day, price, ratio, count, bytes)| Row {
            id,
            name,
            day,
            price,
            ratio,
            count,
            bytes,
        })
}

type ReadBack = (
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<i32>,
    Option<Vec<u8>>,
);

async fn check(pool: &PgPool, rows: Vec<Row>) -> Result<(), TestCaseError> {
    let mut conn = pool.acquire().await.expect("a connection");
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS copied (i int4, id uuid, name text, day date, price numeric, \
         ratio float8, count int4, bytes bytea)",
    )
    .execute(&mut *conn)
    .await
    .expect("the table");
    sqlx::query("TRUNCATE copied")
        .execute(&mut *conn)
        .await
        .expect("empty");
    let mut out = BinaryRows::default();
    for (i, r) in rows.iter().enumerate() {
        out.field(i as i32)
            .optional(r.id)
            .optional(r.name.as_deref())
            .optional(r.day)
            .optional(r.price)
            .optional(r.ratio)
            .optional(r.count)
            .optional(r.bytes.as_deref())
            .end_row();
    }
    let copied = out
        .send(
            &mut conn,
            "COPY copied (i, id, name, day, price, ratio, count, bytes) FROM STDIN (FORMAT binary)",
        )
        .await
        .expect("the copy");
    prop_assert_eq!(copied, rows.len() as u64);
    let back: Vec<ReadBack> = sqlx::query_as(
        "SELECT i, id::text, name, day::text, price::text, ratio, count, bytes FROM copied ORDER BY i",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("the rows");
    prop_assert_eq!(back.len(), rows.len());
    for (r, b) in rows.iter().zip(back) {
        prop_assert_eq!(b.1, r.id.map(|u| u.hyphenated().to_string()));
        prop_assert_eq!(&b.2, &r.name);
        prop_assert_eq!(b.3, r.day.map(|d| d.format("%Y-%m-%d").to_string()));
        prop_assert_eq!(b.4, r.price.map(|p| p.to_string()), "row {}", b.0);
        prop_assert_eq!(b.5.map(f64::to_bits), r.ratio.map(f64::to_bits));
        prop_assert_eq!(b.6, r.count);
        prop_assert_eq!(&b.7, &r.bytes);
    }
    Ok(())
}

#[test]
fn binary_copy_writes_every_value_as_postgres_reads_it() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let url = std::env::var("DD_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://app:app@127.0.0.1:5432/app".into());
    let pool = rt
        .block_on(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url),
        )
        .expect("Postgres: is the local stack up? (`make stack-up`)");
    check_generated(
        (48, 800, 200),
        &prop::collection::vec(row(), 0..30),
        |rows| rt.block_on(check(&pool, rows)),
    );
}
