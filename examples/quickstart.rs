//! The pool in a dozen lines: in memory, then in one SQLite file.
//!
//! `cargo run --example quickstart`

use credpool::store::sqlite::SqliteStore;
use credpool::{NewCredential, Pool};

#[tokio::main]
async fn main() -> Result<(), credpool::Error> {
    // In memory: zero set-up, one process.
    let pool = Pool::in_memory();
    pool.add(NewCredential::new("alice", "hunter2")).await?;
    let lease = pool.acquire().await?;
    println!("memory: working as {}", lease.credential().name());
    lease.release().await?;

    // In one file: shared by every process that opens it, and it survives them.
    let dir = std::env::temp_dir().join("credpool-quickstart");
    std::fs::create_dir_all(&dir).map_err(|source| credpool::Error::Io {
        path: dir.clone(),
        source,
    })?;
    let pool = Pool::new(SqliteStore::open(dir.join("credpool.db")).await?);
    pool.add_many_skip_existing([NewCredential::new("bob", "correct horse")])
        .await?;
    let lease = pool.acquire().await?;
    println!(
        "sqlite: working as {} (lease {})",
        lease.credential().name(),
        lease.id()
    );
    Ok(()) // the lease is released when dropped
}
