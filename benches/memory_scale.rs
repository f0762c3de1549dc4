//! The memory store at scale: acquire+release at 1,000, 100,000 and 1,000,000
//! credentials; 10,000 tasks waiting on 10 credentials against 64; and the
//! memory a credential and a waiting task cost (on the memory and the SQLite
//! store), counted by the allocator.
//!
//! `cargo bench --bench memory_scale`; with
//! `scripts/with-postgres.sh cargo bench --features postgres --bench memory_scale`
//! it also counts a waiting task's bytes on the Postgres store.
//!
//! Apart from `benches/memory.rs` because of its counting allocator, which
//! would tax the Semaphore comparison there.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use credpool::store::sqlite::SqliteStore;
use credpool::{NewCredential, Pool, Store};
use criterion::{Criterion, Throughput};

use common::{tasks_doing_pairs, Holding};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the one System::alloc needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn credentials(count: usize) -> impl Iterator<Item = NewCredential> {
    (0..count).map(|i| NewCredential::new(format!("account-{i:07}"), "0123456789abcdef"))
}

/// Acquire + release by one task, at three pool sizes.
fn pair_by_size(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("memory_scale/one_task_pair");
    group.throughput(Throughput::Elements(1));
    let mut pools = Vec::new();
    for count in [1_000, 100_000, 1_000_000] {
        let pool = Pool::in_memory();
        let before = live();
        runtime.block_on(pool.add_many(credentials(count))).unwrap();
        let bytes = live() - before;
        eprintln!(
            "memory store: {count} credentials take {bytes} bytes, {} bytes each \
             (name 15 bytes, secret 16 bytes)",
            bytes / count as isize
        );
        group.bench_function(format!("{count}_credentials"), |b| {
            b.to_async(runtime).iter(|| async {
                let lease = pool.acquire().await.unwrap();
                lease.release().await.unwrap();
            })
        });
        pools.push((count, pool));
    }
    group.finish();

    let mut group = c.benchmark_group("memory_scale/64_tasks");
    group.throughput(Throughput::Elements(64 * 1_000));
    group.sample_size(10);
    for (count, pool) in pools {
        group.bench_function(format!("{count}_credentials"), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(tasks_doing_pairs(
                    &pool,
                    64,
                    1_000,
                    Holding::AcrossAYield,
                    iterations,
                ))
            })
        });
    }
    group.finish();
}

/// Many tasks on 10 credentials: 64 tasks, then 10,000.
fn waiters(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    const PAIRS: usize = 200_000;
    let mut group = c.benchmark_group("memory_scale/10_credentials");
    group.throughput(Throughput::Elements(PAIRS as u64));
    group.sample_size(10);
    for tasks in [64usize, 10_000] {
        let pool = Pool::in_memory();
        runtime.block_on(pool.add_many(credentials(10))).unwrap();
        group.bench_function(format!("{tasks}_tasks"), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(tasks_doing_pairs(
                    &pool,
                    tasks,
                    PAIRS / tasks,
                    Holding::AcrossAYield,
                    iterations,
                ))
            })
        });
    }
    group.finish();
}

/// The bytes one waiting task costs: its task, its future and its place in
/// line, on a pool whose one credential is held. One task is in line before
/// counting starts, so the others join the line without trying the store
/// first (10,000 first tries at once would also grow the Postgres
/// connections' buffers, which they keep, but no waiting task holds).
fn bytes_per_waiter<S: Store>(runtime: &tokio::runtime::Runtime, pool: Pool<S>, store: &str) {
    const WAITERS: usize = 10_000;
    runtime.block_on(pool.add_many(credentials(1))).unwrap();
    let held = runtime.block_on(pool.acquire()).unwrap();
    let spawn_waiters = |count: usize| -> Vec<tokio::task::JoinHandle<()>> {
        (0..count)
            .map(|_| {
                let pool = pool.clone();
                runtime.spawn(async move {
                    let lease = pool.acquire().await.unwrap();
                    drop(lease);
                })
            })
            .collect()
    };
    let until_waiting = |count: usize| {
        runtime.block_on(async {
            while pool.stats().await.unwrap().waiters < count as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut handles = spawn_waiters(1);
    until_waiting(1);
    handles.reserve(WAITERS);
    let before = live();
    handles.extend(spawn_waiters(WAITERS));
    until_waiting(WAITERS + 1);
    let bytes = live() - before;
    eprintln!(
        "{store} store: {WAITERS} waiting tasks take {bytes} bytes, {} bytes each \
         (task, future and place in line; the handles' Vec included); \
         an acquire future is {} bytes",
        bytes / WAITERS as isize,
        std::mem::size_of_val(&pool.acquire())
    );
    drop(held);
    runtime.block_on(async {
        for handle in handles {
            handle.await.unwrap();
        }
    });
}

/// The bytes a waiting task costs on the Postgres store, when
/// `CREDPOOL_TEST_POSTGRES_URL` names a server.
#[cfg(feature = "postgres")]
fn postgres_waiters(runtime: &tokio::runtime::Runtime) {
    use credpool::store::postgres::PostgresStore;
    let Ok(url) = std::env::var("CREDPOOL_TEST_POSTGRES_URL") else {
        eprintln!(
            "postgres store: not measured; run \
             scripts/with-postgres.sh cargo bench --features postgres --bench memory_scale"
        );
        return;
    };
    let schema = format!("bench_waiters_{}", std::process::id());
    let store = runtime
        .block_on(
            PostgresStore::options_url(&url)
                .unwrap()
                .schema(&schema)
                .open(),
        )
        .unwrap();
    bytes_per_waiter(runtime, Pool::new(store), "postgres");
}

fn main() {
    let runtime = common::two_workers();
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bytes_per_waiter(&runtime, Pool::in_memory(), "memory");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = runtime
        .block_on(SqliteStore::open(dir.path().join("waiters.db")))
        .unwrap();
    bytes_per_waiter(&runtime, Pool::new(sqlite), "sqlite");
    #[cfg(feature = "postgres")]
    postgres_waiters(&runtime);
    pair_by_size(&mut criterion, &runtime);
    waiters(&mut criterion, &runtime);
    criterion.final_summary();
}
