//! The conformance suite, and what is particular to it, for the in-memory store.

mod common;
mod conformance;

use std::time::Duration;

use credpool::{MemoryStore, NewCredential, Pool};

struct Memory;

impl conformance::Factory for Memory {
    type Store = MemoryStore;

    async fn pool(&self, ttl: Option<Duration>) -> Pool<MemoryStore> {
        let builder = Pool::builder(MemoryStore::new());
        match ttl {
            Some(ttl) => builder.lease_ttl(ttl).build(),
            None => builder.build(),
        }
    }
}

conformance_suite!(Memory);
limits_suite!(Memory);
weighted_suite!(Memory);
weighted_keeping_suite!(Memory);

/// The memory store hands out first in, first out by time of return.
#[tokio::test]
async fn hands_out_in_order_of_return() {
    let pool = Pool::in_memory();
    pool.add_many(["a", "b", "c"].map(|name| NewCredential::new(name, "s")))
        .await
        .unwrap();
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    assert_eq!((a.credential().name(), b.credential().name()), ("a", "b"));
    b.release().await.unwrap();
    a.release().await.unwrap();
    let mut names = Vec::new();
    let mut leases = Vec::new();
    for _ in 0..3 {
        let lease = pool.acquire().await.unwrap();
        names.push(lease.credential().name().to_string());
        leases.push(lease);
    }
    assert_eq!(
        names,
        ["c", "b", "a"],
        "c was never used; b came back before a"
    );
}

/// Item 7 of the defects issue, on this store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_a_credential_come_in_commit_order() {
    conformance::events_of_a_credential_come_in_commit_order(&Memory).await;
}

/// Item 6: a credential of the largest capacity costs constant memory: it is
/// added, leased, disabled and enabled, and ends a cool-down, without one
/// queue entry per unit (which would need tens of gigabytes).
#[tokio::test]
async fn the_largest_capacity_costs_constant_memory() {
    use credpool::{ReleaseOutcome, MAX_CAPACITY};
    let pool = Pool::in_memory();
    pool.add(NewCredential::new("wide", "s").capacity(MAX_CAPACITY))
        .await
        .unwrap();
    pool.add(NewCredential::new("narrow", "s")).await.unwrap();
    let leases: Vec<_> = futures_take(&pool, 5).await;
    assert_eq!(pool.stats().await.unwrap().leases, 5);
    pool.disable("wide", "resting").await.unwrap();
    pool.enable("wide").await.unwrap();
    let mut names = Vec::new();
    for lease in leases {
        names.push(lease.credential().name().to_string());
        lease
            .release_with(ReleaseOutcome::CoolDown(Duration::from_millis(20)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    let more = futures_take(&pool, 1000).await;
    assert_eq!(more.len(), 1000);
    let wide = more
        .iter()
        .filter(|lease| lease.credential().name() == "wide")
        .count();
    assert!(
        wide >= 999,
        "the wide credential serves many at once: {wide}"
    );
    drop(more);
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.leases, stats.available), (0, 2), "{names:?}");
}

async fn futures_take(pool: &Pool, count: usize) -> Vec<credpool::Lease<MemoryStore>> {
    let mut leases = Vec::new();
    for _ in 0..count {
        leases.push(pool.try_acquire().await.unwrap().expect("a free unit"));
    }
    leases
}
