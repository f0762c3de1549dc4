//! The Postgres store against bare tokio-postgres statements on the same
//! server, in the same run.
//!
//! Needs a server: `scripts/with-postgres.sh cargo bench --features postgres --bench postgres`
//! (or set `CREDPOOL_TEST_POSTGRES_URL` to a database you can spare).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use credpool::store::postgres::PostgresStore;
use credpool::{NewCredential, Pool};
use criterion::{Criterion, Throughput};
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls, Statement};

use common::{tasks_doing_pairs, time_tasks, Holding};

const URL_VARIABLE: &str = "CREDPOOL_TEST_POSTGRES_URL";
const PAIRS_PER_TASK: usize = 50;
const CONNECTIONS: usize = 8;

fn url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        eprintln!(
            "{URL_VARIABLE} is not set. Run this bench with \
             `scripts/with-postgres.sh cargo bench --features postgres --bench postgres`, \
             which starts a throwaway server."
        );
        std::process::exit(2)
    })
}

async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The least a shared pool on Postgres can do per pair: one `UPDATE … SKIP
/// LOCKED … RETURNING` that takes the least recently used free row, and one
/// `UPDATE` that gives it back, on connections shared by all tasks.
struct Bare {
    connections: Vec<(Client, Statement, Statement)>,
}

impl Bare {
    async fn new(schema: &str, credentials: usize) -> Self {
        let setup = connect().await;
        setup
            .batch_execute(&format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.creds (id bigint PRIMARY KEY, name text NOT NULL,
                     leased boolean NOT NULL DEFAULT false, last_used_at bigint);
                 CREATE INDEX creds_free ON {schema}.creds (last_used_at NULLS FIRST, id)
                     WHERE NOT leased;
                 INSERT INTO {schema}.creds (id, name)
                     SELECT i, 'account-' || i FROM generate_series(1, {credentials}) AS i;"
            ))
            .await
            .unwrap();
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            let client = connect().await;
            let take = client
                .prepare(&format!(
                    "UPDATE {schema}.creds SET leased = true,
                         last_used_at = (extract(epoch FROM now()) * 1000)::bigint
                     WHERE id = (SELECT id FROM {schema}.creds WHERE NOT leased
                                 ORDER BY last_used_at NULLS FIRST, id
                                 LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING id"
                ))
                .await
                .unwrap();
            let give = client
                .prepare(&format!(
                    "UPDATE {schema}.creds SET leased = false WHERE id = $1"
                ))
                .await
                .unwrap();
            connections.push((client, take, give));
        }
        Self { connections }
    }

    async fn pair(&self, task: usize) {
        let (client, take, give) = &self.connections[task % self.connections.len()];
        loop {
            if let Some(row) = client.query_opt(take, &[]).await.unwrap() {
                let id: i64 = row.get(0);
                client.execute(give, &[&id]).await.unwrap();
                return;
            }
            // Every free row was locked by another task at that moment.
            tokio::task::yield_now().await;
        }
    }
}

async fn credpool_pool(schema: &str, credentials: usize) -> Pool<PostgresStore> {
    let store = PostgresStore::options_url(&url())
        .unwrap()
        .schema(schema)
        .connections(CONNECTIONS)
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    pool.add_many((0..credentials).map(|i| NewCredential::new(format!("account-{i}"), "secret")))
        .await
        .unwrap();
    pool
}

fn schema(label: &str) -> String {
    format!("bench_{label}_{}", std::process::id())
}

async fn drop_schemas(schemas: &[String]) {
    let client = connect().await;
    for schema in schemas {
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .unwrap();
    }
}

fn one_task(c: &mut Criterion, runtime: &Runtime, schemas: &mut Vec<String>) {
    let mut group = c.benchmark_group("postgres/one_task_pair");
    group.throughput(Throughput::Elements(1));

    schemas.push(schema("bare_one"));
    let bare = runtime.block_on(Bare::new(schemas.last().unwrap(), 8));
    group.bench_function("bare_tokio_postgres", |b| {
        b.to_async(runtime).iter(|| bare.pair(0))
    });

    schemas.push(schema("credpool_one"));
    let pool = runtime.block_on(credpool_pool(schemas.last().unwrap(), 8));
    group.bench_function("credpool", |b| {
        b.to_async(runtime).iter(|| async {
            let lease = pool.acquire().await.unwrap();
            lease.release().await.unwrap();
        })
    });
    group.finish();
}

/// Times `iterations` rounds of `tasks` tasks that each run `pair(task)`
/// `PAIRS_PER_TASK` times (the bare baseline's pairs).
fn timed<F, Fut>(runtime: &Runtime, iterations: u64, tasks: usize, pair: F) -> Duration
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let pair = Arc::new(pair);
    runtime.block_on(time_tasks(iterations, tasks, |task| {
        let pair = pair.clone();
        async move {
            for _ in 0..PAIRS_PER_TASK {
                pair(task).await;
            }
        }
    }))
}

fn contended(c: &mut Criterion, runtime: &Runtime, schemas: &mut Vec<String>) {
    let (tasks, credentials) = (64usize, 64usize);
    let mut group = c.benchmark_group(format!("postgres/{tasks}_tasks_{credentials}_credentials"));
    group.throughput(Throughput::Elements((tasks * PAIRS_PER_TASK) as u64));
    group.sample_size(10);

    schemas.push(schema("bare_many"));
    let bare = Arc::new(runtime.block_on(Bare::new(schemas.last().unwrap(), credentials)));
    group.bench_function("bare_tokio_postgres_8_connections", |b| {
        b.iter_custom(|iterations| {
            let bare = bare.clone();
            timed(runtime, iterations, tasks, move |task| {
                let bare = bare.clone();
                async move { bare.pair(task).await }
            })
        })
    });

    schemas.push(schema("credpool_many"));
    let pool = runtime.block_on(credpool_pool(schemas.last().unwrap(), credentials));
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

/// The same pair and the same 64 tasks at 1,000, 100,000 and 1,000,000
/// credentials (added in one transaction, 5,000 rows a statement).
fn scale(c: &mut Criterion, runtime: &Runtime, schemas: &mut Vec<String>) {
    for count in [1_000usize, 100_000, 1_000_000] {
        schemas.push(schema(&format!("scale_{count}")));
        let seeded = Instant::now();
        let pool = runtime.block_on(credpool_pool(schemas.last().unwrap(), count));
        eprintln!(
            "postgres: {count} credentials added in {:.1?}",
            seeded.elapsed()
        );

        let mut group = c.benchmark_group("postgres/scale_one_task_pair");
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{count}_credentials"), |b| {
            b.to_async(runtime).iter(|| async {
                let lease = pool.acquire().await.unwrap();
                lease.release().await.unwrap();
            })
        });
        group.finish();

        let mut group = c.benchmark_group("postgres/scale_64_tasks");
        group.throughput(Throughput::Elements((64 * PAIRS_PER_TASK) as u64));
        group.sample_size(10);
        group.bench_function(format!("{count}_credentials"), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(tasks_doing_pairs(
                    &pool,
                    64,
                    PAIRS_PER_TASK,
                    Holding::Briefly,
                    iterations,
                ))
            })
        });
        group.finish();
    }

    // Many waiters: 10,000 tasks on 10 credentials against 64 tasks, the
    // same 10,000 pairs (about) in all.
    schemas.push(schema("waiters"));
    let pool = runtime.block_on(credpool_pool(schemas.last().unwrap(), 10));
    let mut group = c.benchmark_group("postgres/10_credentials");
    group.sample_size(10);
    for (tasks, pairs) in [(64usize, 156usize), (10_000, 1)] {
        group.throughput(Throughput::Elements((tasks * pairs) as u64));
        group.bench_function(format!("{tasks}_tasks"), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(tasks_doing_pairs(
                    &pool,
                    tasks,
                    pairs,
                    Holding::Briefly,
                    iterations,
                ))
            })
        });
    }
    group.finish();
}

fn main() {
    let runtime = common::two_workers();
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let mut schemas = Vec::new();
    one_task(&mut criterion, &runtime, &mut schemas);
    contended(&mut criterion, &runtime, &mut schemas);
    scale(&mut criterion, &runtime, &mut schemas);
    runtime.block_on(drop_schemas(&schemas));
    criterion.final_summary();
}
