//! One pool shared by every process that opens the same Postgres database:
//! run this on several machines (or in several terminals) at once, and no
//! credential is ever held by two of them.
//!
//! `cargo run --features postgres --example postgres -- postgres://USER@HOST/DB [WORKERS] [SECONDS]`
//!
//! Try it on a throwaway server:
//! `scripts/with-postgres.sh sh -c 'cargo run --features postgres --example postgres -- "$CREDPOOL_TEST_POSTGRES_URL"'`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credpool::store::postgres::PostgresStore;
use credpool::{Error, NewCredential, Pool, ReleaseOutcome};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next().or_else(|| std::env::var("CREDPOOL_URL").ok()) else {
        eprintln!("usage: postgres URL [WORKERS] [SECONDS]   (or set CREDPOOL_URL)");
        std::process::exit(2);
    };
    let workers: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    let seconds: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);

    let store = PostgresStore::options_url(&url)?
        .pool("example")
        .lease_ttl(Duration::from_secs(30))
        .open()
        .await?;
    println!("{}", store.location());
    let pool = Pool::new(store);
    // Every process adds the same five; the ones that exist are kept.
    pool.add_many_skip_existing(
        (1..=5).map(|i| NewCredential::new(format!("account-{i}"), "secret")),
    )
    .await?;

    let grants = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (pool, grants) = (pool.clone(), grants.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                while let Ok(lease) = pool.acquire().await {
                    grants.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(rng.u64(5..50))).await;
                    // Now and then the remote service says "slow down".
                    let outcome = if rng.u8(..100) < 5 {
                        ReleaseOutcome::CoolDown(Duration::from_millis(200))
                    } else {
                        ReleaseOutcome::Success
                    };
                    if let Err(error) = lease.release_with(outcome).await {
                        eprintln!("release failed: {error}");
                    }
                }
            })
        })
        .collect();

    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    pool.close();
    for handle in handles {
        let _ = handle.await;
    }
    pool.wait_for_leases(Duration::from_secs(10)).await?;
    let stats = pool.stats().await?;
    println!(
        "{} grants in this process; {} credentials, {} leases out across all processes",
        grants.load(Ordering::Relaxed),
        stats.total,
        stats.leases
    );
    Ok(())
}
