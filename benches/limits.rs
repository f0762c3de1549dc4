//! What quotas cost: acquire+release pairs by one task on a pool whose
//! credentials have no limits (plain `acquire`) against one whose every
//! credential has quotas in three scopes (`acquire_for` one of them), in
//! the same run, at 1,000 credentials and at a larger pool (1,000,000 in
//! memory, 100,000 on SQLite, whose seeding writes each quota's row).
//!
//! `cargo bench --bench limits`; with
//! `scripts/with-postgres.sh cargo bench --features postgres --bench limits`
//! the Postgres store too (1,000 and 100,000 credentials).

mod common;

use std::time::{Duration, Instant};

use credpool::store::sqlite::SqliteStore;
use credpool::{NewCredential, Pool, Rate, Store};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SCOPES: [&str; 3] = ["search", "timeline", "user"];

/// `count` credentials, each with a quota in every scope of [`SCOPES`]
/// when `limited`: generous enough (100,000 in any 100 ms) that no grant
/// waits, so the figures are the cost of checking and counting.
fn credentials(count: usize, limited: bool) -> impl Iterator<Item = NewCredential> {
    let rate: Rate = "100000/100ms".parse().unwrap();
    (0..count).map(move |i| {
        let credential = NewCredential::new(format!("account-{i:07}"), "0123456789abcdef");
        if limited {
            SCOPES.iter().fold(credential, |credential, scope| {
                credential.rate_for(*scope, rate)
            })
        } else {
            credential
        }
    })
}

/// Times `iterations` pairs on `pool`: scoped (`search`) when `scoped`.
async fn pairs<S: Store>(pool: &Pool<S>, iterations: u64, scoped: bool) -> Duration {
    let started = Instant::now();
    for _ in 0..iterations {
        let lease = if scoped {
            pool.acquire_for("search").await.unwrap()
        } else {
            pool.acquire().await.unwrap()
        };
        lease.release().await.unwrap();
    }
    started.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn memory(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("limits/memory");
    group.throughput(Throughput::Elements(1));
    for size in [1_000, 1_000_000] {
        for (label, limited) in [("plain", false), ("quota_3_scopes", true)] {
            let pool = Pool::in_memory();
            runtime
                .block_on(pool.add_many(credentials(size, limited)))
                .unwrap();
            group.bench_function(format!("{label}/{size}"), |b| {
                b.iter_custom(|iterations| runtime.block_on(pairs(&pool, iterations, limited)))
            });
        }
    }
    group.finish();
}

fn sqlite(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("limits/sqlite");
    group.throughput(Throughput::Elements(1));
    for size in [1_000, 100_000] {
        for (label, limited) in [("plain", false), ("quota_3_scopes", true)] {
            let path = dir.path().join(format!("{label}-{size}.db"));
            let pool = runtime.block_on(async {
                let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
                pool.add_many(credentials(size, limited)).await.unwrap();
                pool
            });
            group.bench_function(format!("{label}/{size}"), |b| {
                b.iter_custom(|iterations| runtime.block_on(pairs(&pool, iterations, limited)))
            });
        }
    }
    group.finish();
}

#[cfg(feature = "postgres")]
fn postgres(c: &mut Criterion) {
    use credpool::store::postgres::PostgresStore;
    let Ok(url) = std::env::var("CREDPOOL_TEST_POSTGRES_URL") else {
        eprintln!("limits/postgres: CREDPOOL_TEST_POSTGRES_URL is not set; skipped");
        return;
    };
    let runtime = common::two_workers();
    let mut group = c.benchmark_group("limits/postgres");
    group.throughput(Throughput::Elements(1));
    for size in [1_000, 100_000] {
        for (label, limited) in [("plain", false), ("quota_3_scopes", true)] {
            let schema = format!("bench_limits_{label}_{size}_{}", std::process::id());
            let pool = runtime.block_on(async {
                let store = PostgresStore::options_url(&url)
                    .unwrap()
                    .schema(schema.as_str())
                    .open()
                    .await
                    .unwrap();
                let pool = Pool::new(store);
                pool.add_many(credentials(size, limited)).await.unwrap();
                pool
            });
            group.bench_function(format!("{label}/{size}"), |b| {
                b.iter_custom(|iterations| runtime.block_on(pairs(&pool, iterations, limited)))
            });
        }
    }
    group.finish();
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: &mut Criterion) {}

criterion_group!(benches, memory, sqlite, postgres);
criterion_main!(benches);
