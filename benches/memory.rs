//! The in-memory pool against tokio's `Semaphore`, in the same run.
//!
//! `cargo bench --bench memory`

mod common;

use std::sync::Arc;
use std::time::Duration;

use credpool::{NewCredential, Pool};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::Semaphore;

use common::{tasks_doing_pairs, time_tasks, Holding};

const TASKS: usize = 64;
const CREDENTIALS: usize = 8;
const PAIRS_PER_TASK: usize = 1_000;

fn one_task(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("memory/one_task_pair");
    group.throughput(Throughput::Elements(1));

    let semaphore = Semaphore::new(1);
    group.bench_function("tokio_semaphore", |b| {
        b.to_async(&runtime).iter(|| async {
            let permit = semaphore.acquire().await.unwrap();
            drop(permit);
        })
    });

    let pool = Pool::in_memory();
    runtime
        .block_on(pool.add(NewCredential::new("only", "secret")))
        .unwrap();
    group.bench_function("credpool_release", |b| {
        b.to_async(&runtime).iter(|| async {
            let lease = pool.acquire().await.unwrap();
            lease.release().await.unwrap();
        })
    });
    group.bench_function("credpool_drop", |b| {
        b.to_async(&runtime).iter(|| async {
            let lease = pool.acquire().await.unwrap();
            drop(lease);
        })
    });
    group.finish();
}

/// Runs `TASKS` tasks doing `PAIRS_PER_TASK` acquire+release pairs each.
fn contended(c: &mut Criterion) {
    let runtime = common::two_workers();
    let mut group = c.benchmark_group("memory/64_tasks_8_credentials");
    group.throughput(Throughput::Elements((TASKS * PAIRS_PER_TASK) as u64));
    group.sample_size(20);

    let semaphore = Arc::new(Semaphore::new(CREDENTIALS));
    group.bench_function("tokio_semaphore", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(time_tasks(iterations, TASKS, |_| {
                let semaphore = semaphore.clone();
                async move {
                    for _ in 0..PAIRS_PER_TASK {
                        let permit = semaphore.acquire().await.unwrap();
                        tokio::task::yield_now().await;
                        drop(permit);
                    }
                }
            }))
        })
    });

    let pool = Pool::in_memory();
    runtime
        .block_on(pool.add_many(
            (0..CREDENTIALS).map(|i| NewCredential::new(format!("account-{i}"), "secret")),
        ))
        .unwrap();
    group.bench_function("credpool", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(tasks_doing_pairs(
                &pool,
                TASKS,
                PAIRS_PER_TASK,
                Holding::AcrossAYield,
                iterations,
            ))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = one_task, contended
}
criterion_main!(benches);
