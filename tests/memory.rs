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
