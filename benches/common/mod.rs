//! What the benches share: the runtime, timing rounds of tasks, and tasks
//! doing acquire + release pairs on a pool. Each bench uses part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use credpool::{Pool, Store};

/// A runtime of two workers, as many as the machines of BENCHMARKS.md have
/// cores.
pub fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Times `iterations` rounds of `tasks` tasks, each running `task(index)` to
/// its end.
pub async fn time_tasks<F, Fut>(iterations: u64, tasks: usize, task: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    for _ in 0..iterations {
        let handles: Vec<_> = (0..tasks).map(|index| tokio::spawn(task(index))).collect();
        for handle in handles {
            handle.await.unwrap();
        }
    }
    started.elapsed()
}

/// What a task does between acquire and release.
#[derive(Clone, Copy)]
pub enum Holding {
    /// Releases at once.
    Briefly,
    /// Yields once first, so that other tasks run while it holds.
    AcrossAYield,
}

/// Times `iterations` rounds of `tasks` tasks doing `pairs` acquire +
/// release pairs each on `pool`.
pub async fn tasks_doing_pairs<S: Store>(
    pool: &Pool<S>,
    tasks: usize,
    pairs: usize,
    holding: Holding,
    iterations: u64,
) -> Duration {
    time_tasks(iterations, tasks, |_| {
        let pool = pool.clone();
        async move {
            for _ in 0..pairs {
                let lease = pool.acquire().await.unwrap();
                if let Holding::AcrossAYield = holding {
                    tokio::task::yield_now().await;
                }
                lease.release().await.unwrap();
            }
        }
    })
    .await
}
