//! The SQLite store against bare rusqlite transactions on the same kind of
//! file (WAL, synchronous=NORMAL), in the same run.
//!
//! `cargo bench --bench sqlite`

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use credpool::store::sqlite::ceiling::Ceiling;
use credpool::store::sqlite::SqliteStore;
use credpool::{NewCredential, Pool};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rusqlite::{params, Connection};

use common::{tasks_doing_pairs, Holding};

const PAIRS_PER_TASK: usize = 200;

/// The least a persistent pool can do per pair: one transaction that picks
/// the least recently used free row and marks it, one that unmarks it.
fn bare_connection(path: &Path, credentials: usize) -> Connection {
    let connection = Connection::open(path).unwrap();
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE creds (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                 leased INTEGER NOT NULL DEFAULT 0, last_used_at INTEGER);
             CREATE INDEX creds_free ON creds (last_used_at, id) WHERE leased = 0;",
        )
        .unwrap();
    for i in 0..credentials {
        connection
            .execute(
                "INSERT INTO creds (name) VALUES (?1)",
                [format!("account-{i}")],
            )
            .unwrap();
    }
    connection
}

fn bare_pair(connection: &Connection, now: i64) {
    connection.execute_batch("BEGIN IMMEDIATE").unwrap();
    let id: i64 = connection
        .prepare_cached(
            "UPDATE creds SET leased = 1, last_used_at = ?1 WHERE id =
               (SELECT id FROM creds WHERE leased = 0 ORDER BY last_used_at, id LIMIT 1)
             RETURNING id",
        )
        .unwrap()
        .query_row([now], |row| row.get(0))
        .unwrap();
    connection.execute_batch("COMMIT").unwrap();
    connection.execute_batch("BEGIN IMMEDIATE").unwrap();
    connection
        .prepare_cached("UPDATE creds SET leased = 0 WHERE id = ?1")
        .unwrap()
        .execute(params![id])
        .unwrap();
    connection.execute_batch("COMMIT").unwrap();
}

async fn credpool_pool(path: &Path, credentials: usize) -> Pool<SqliteStore> {
    let pool = Pool::new(SqliteStore::open(path).await.unwrap());
    pool.add_many((0..credentials).map(|i| NewCredential::new(format!("account-{i}"), "secret")))
        .await
        .unwrap();
    pool
}

fn one_task(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("sqlite/one_task_pair");
    group.throughput(Throughput::Elements(1));

    let bare = bare_connection(&dir.path().join("bare.db"), 8);
    let mut now = 0;
    group.bench_function("bare_rusqlite", |b| {
        b.iter(|| {
            now += 1;
            bare_pair(&bare, now)
        })
    });

    let pool = runtime.block_on(credpool_pool(&dir.path().join("credpool.db"), 8));
    group.bench_function("credpool", |b| {
        b.to_async(&runtime).iter(|| async {
            let lease = pool.acquire().await.unwrap();
            lease.release().await.unwrap();
        })
    });
    group.finish();
}

fn contended(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = common::two_workers();
    for (tasks, credentials) in [(64usize, 64usize), (64, 8)] {
        let mut group =
            c.benchmark_group(format!("sqlite/{tasks}_tasks_{credentials}_credentials"));
        group.throughput(Throughput::Elements((tasks * PAIRS_PER_TASK) as u64));
        group.sample_size(10);

        let bare_path = dir.path().join(format!("bare-{tasks}-{credentials}.db"));
        drop(bare_connection(&bare_path, credentials));
        // The baseline: the same pairs, one transaction each, from one thread
        // (SQLite serialises writers anyway; more threads only add lock waits).
        let bare = Connection::open(&bare_path).unwrap();
        bare.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
        let mut now = 0;
        group.bench_function("bare_rusqlite_one_transaction_each", |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                for _ in 0..iterations * (tasks * PAIRS_PER_TASK) as u64 {
                    now += 1;
                    bare_pair(&bare, now);
                }
                started.elapsed()
            })
        });

        if credentials == tasks {
            // The ceiling: the store's own statements for the same pairs,
            // `tasks` pairs per transaction as a full batch runs them, on
            // this thread, with no store thread and no tasks.
            let path = dir.path().join(format!("ceiling-{tasks}-{credentials}.db"));
            drop(runtime.block_on(credpool_pool(&path, credentials)));
            let ceiling = Ceiling::open(&path).unwrap();
            group.bench_function(
                "ceiling_store_statements_one_transaction_per_64_pairs",
                |b| {
                    b.iter_custom(|iterations| {
                        let started = Instant::now();
                        for _ in 0..iterations * PAIRS_PER_TASK as u64 {
                            ceiling.pairs(tasks).unwrap();
                        }
                        started.elapsed()
                    })
                },
            );
        }

        let pool = runtime.block_on(credpool_pool(
            &dir.path()
                .join(format!("credpool-{tasks}-{credentials}.db")),
            credentials,
        ));
        group.bench_function("credpool", |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(tasks_doing_pairs(
                    &pool,
                    tasks,
                    PAIRS_PER_TASK,
                    Holding::Briefly,
                    iterations,
                ))
            })
        });
        group.finish();
    }
}

/// 64 tasks doing `PAIRS_PER_TASK` pairs each, `iterations` times.
async fn sixty_four_tasks(pool: &Pool<SqliteStore>, iterations: u64) -> Duration {
    tasks_doing_pairs(pool, 64, PAIRS_PER_TASK, Holding::Briefly, iterations).await
}

/// The same pair and the same 64 tasks at 1,000, 100,000 and 1,000,000
/// credentials (seeded in one transaction); and, at a million, opening the
/// file and granting the first lease.
fn scale(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = common::two_workers();
    let mut largest = None;
    for count in [1_000usize, 100_000, 1_000_000] {
        let path = dir.path().join(format!("scale-{count}.db"));
        let seeded = Instant::now();
        let pool = runtime.block_on(credpool_pool(&path, count));
        eprintln!(
            "sqlite: {count} credentials added in {:.1?}",
            seeded.elapsed()
        );

        let mut group = c.benchmark_group("sqlite/scale_one_task_pair");
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{count}_credentials"), |b| {
            b.to_async(&runtime).iter(|| async {
                let lease = pool.acquire().await.unwrap();
                lease.release().await.unwrap();
            })
        });
        group.finish();

        let mut group = c.benchmark_group("sqlite/scale_64_tasks");
        group.throughput(Throughput::Elements((64 * PAIRS_PER_TASK) as u64));
        group.sample_size(10);
        group.bench_function(format!("{count}_credentials"), |b| {
            b.iter_custom(|iterations| runtime.block_on(sixty_four_tasks(&pool, iterations)))
        });
        group.finish();
        largest = Some(path);
    }

    // Many waiters: 10,000 tasks on 10 credentials against 64 tasks, the
    // same 20,000 pairs in all.
    let path = dir.path().join("waiters.db");
    let pool = runtime.block_on(credpool_pool(&path, 10));
    let mut group = c.benchmark_group("sqlite/10_credentials");
    group.throughput(Throughput::Elements(20_000));
    group.sample_size(10);
    for tasks in [64usize, 10_000] {
        group.bench_function(format!("{tasks}_tasks"), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(tasks_doing_pairs(
                    &pool,
                    tasks,
                    20_000 / tasks,
                    Holding::Briefly,
                    iterations,
                ))
            })
        });
    }
    group.finish();

    let path = largest.unwrap();
    let mut group = c.benchmark_group("sqlite/open_and_first_grant");
    group.sample_size(10);
    group.bench_function("1000000_credentials", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
                    let lease = pool.acquire().await.unwrap();
                    spent += started.elapsed();
                    lease.release().await.unwrap();
                }
                spent
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = one_task, contended, scale
}
criterion_main!(benches);
