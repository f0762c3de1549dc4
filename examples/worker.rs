//! aio-credentials-pool's worker loop on the library API: N workers acquire a
//! credential, work a random while, and release it; Ctrl-C, SIGTERM or SIGHUP
//! stop them gracefully with every credential returned.
//!
//! `cargo run --example worker -- [DB] [WORKERS]`

use std::time::Duration;

use credpool::store::sqlite::SqliteStore;
use credpool::{Error, NewCredential, Pool, ReleaseOutcome};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let db = args.next().unwrap_or_else(|| "worker-example.db".into());
    let workers: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);

    let pool = Pool::new(SqliteStore::open(&db).await?);
    pool.add_many_skip_existing(
        (1..=5).map(|i| NewCredential::new(format!("account-{i}"), "secret")),
    )
    .await?;

    let (stop, stopped) = watch::channel(false);
    let handles: Vec<_> = (0..workers)
        .map(|id| tokio::spawn(worker(id, pool.clone(), stopped.clone())))
        .collect();

    shutdown_signal().await;
    println!("stopping: no new work, every worker returns its credential");
    let _ = stop.send(true);
    pool.close();
    for handle in handles {
        let _ = handle.await;
    }
    pool.wait_for_leases(Duration::from_secs(10)).await?;
    println!("{} leases out", pool.stats().await?.leases);
    Ok(())
}

async fn worker(id: usize, pool: Pool<SqliteStore>, mut stopped: watch::Receiver<bool>) {
    let mut rng = fastrand::Rng::new();
    loop {
        let lease = tokio::select! {
            lease = pool.acquire() => lease,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(Error::Closed) => return,
            Err(error) => {
                eprintln!("worker {id}: {error}");
                return;
            }
        };
        println!("worker {id}: working as {}", lease.credential().name());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(rng.u64(100..1000))) => {}
            _ = stopped.wait_for(|stop| *stop) => {}
        }
        // One time in ten the site says "slow down": rest the account a while.
        let outcome = if rng.u8(0..10) == 0 {
            ReleaseOutcome::CoolDown(Duration::from_secs(2))
        } else {
            ReleaseOutcome::Success
        };
        if let Err(error) = lease.release_with(outcome).await {
            eprintln!("worker {id}: {error}");
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hangup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hangup.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
