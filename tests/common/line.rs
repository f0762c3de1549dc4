//! The waiting line kept in a shared store, tested across processes: the
//! parent's side of each test, and the roles its child processes play.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use credpool::{NewCredential, Pool, Store};

use super::processes::wait_all;

/// How long each process of the fairness test works.
pub const SHARE_SECONDS: u64 = 10;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().unwrap();
}

/// Reads the child's output until a line starts with `prefix` (after any
/// text libtest printed first); returns the child and the rest of the line.
pub async fn read_value(mut child: Child, prefix: &'static str) -> (Child, String) {
    tokio::task::spawn_blocking(move || {
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(at) = line.find(prefix) {
                let value = line[at + prefix.len()..].trim().to_string();
                // Keep draining, so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return (child, value);
            }
        }
        panic!("child ended before printing {prefix}");
    })
    .await
    .unwrap()
}

async fn waiters_reach<S: Store>(pool: &Pool<S>, count: u64) {
    super::until(
        &format!("{count} waiters in the store"),
        Duration::from_secs(20),
        || async { pool.stats().await.unwrap().waiters >= count },
    )
    .await;
}

// ---- the children's roles -------------------------------------------------

/// Waits for one credential, says `GOT LEASE_ID`, holds it a moment, gives
/// it back. Gives up after half a minute, so a failed test leaves no process.
pub async fn queue_once<S: Store>(pool: Pool<S>) {
    let lease = pool.acquire_timeout(Duration::from_secs(30)).await.unwrap();
    say(&format!("GOT {}", lease.id()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    lease.release().await.unwrap();
}

/// From `start_ns` on, 16 workers take turns on the pool for
/// [`SHARE_SECONDS`]; then says `SHARE GRANTS P99_WAIT_US`.
pub async fn take_a_share<S: Store>(pool: Pool<S>, start_ns: u128) {
    // Every process counts over the same window of the clock, so that one
    // that started late (a busy machine) is not alone at the end of its own.
    let end_ns = start_ns + u128::from(SHARE_SECONDS) * 1_000_000_000;
    let now = now_ns();
    if start_ns > now {
        tokio::time::sleep(Duration::from_nanos((start_ns - now) as u64)).await;
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_nanos(end_ns.saturating_sub(now_ns()) as u64);
    let waits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..16u64)
        .map(|seed| {
            let (pool, waits) = (pool.clone(), waits.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ u64::from(std::process::id()));
                while tokio::time::Instant::now() < deadline {
                    let asked = Instant::now();
                    let lease = pool.acquire().await.unwrap();
                    waits.lock().unwrap().push(asked.elapsed());
                    tokio::time::sleep(Duration::from_micros(rng.u64(1000..4000))).await;
                    lease.release().await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let mut waits = waits.lock().unwrap().clone();
    waits.sort();
    let p99 = waits[(waits.len() * 99 / 100).min(waits.len() - 1)];
    say(&format!("SHARE {} {}", waits.len(), p99.as_micros()));
}

/// Queues `count` waiters and hangs until killed.
pub async fn queue_and_hang<S: Store>(pool: Pool<S>, count: usize) {
    let waiting: Vec<_> = (0..count)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await.map(|lease| lease.into_token()) })
        })
        .collect();
    say("QUEUEING");
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(waiting);
}

/// 16 tasks for two seconds: each acquires, but gives up after a random
/// short while (cancelled, or timed out), holds what it gets for a moment
/// and logs the hold to `log` as `NAME LEASE_ID START_NS END_NS`.
pub async fn cancel_at_random<S: Store>(pool: Pool<S>, log: &Path) {
    super::processes::hammer_giving_up(pool, log, true).await;
}

// ---- the parent's side ----------------------------------------------------

/// Four processes queue for the one credential, each joining only once the
/// store counts the ticket of the one before; they are served in that order.
pub async fn waiters_are_served_in_ticket_order<S: Store>(
    pool: &Pool<S>,
    spawn: impl Fn(&str) -> Child,
) {
    pool.add(NewCredential::new("only", "s")).await.unwrap();
    let held = pool.acquire().await.unwrap();
    let mut children = Vec::new();
    for joined in 1..=4u64 {
        children.push(spawn("queue-once"));
        waiters_reach(pool, joined).await;
    }
    held.release().await.unwrap();
    let mut served = Vec::new();
    for child in children {
        let (child, lease_id) = read_value(child, "GOT").await;
        served.push(lease_id.parse::<u64>().unwrap());
        assert!(wait_all(vec![child]).await[0].success());
    }
    let mut in_order = served.clone();
    in_order.sort_unstable();
    assert_eq!(
        served, in_order,
        "the processes, in the order they queued, got these lease ids"
    );
}

/// `processes` processes with equal workers share 8 credentials for
/// [`SHARE_SECONDS`]: each gets its share of the grants within ±15% of the
/// mean, and their 99th-percentile waits are within 2× of each other.
pub async fn processes_get_equal_shares<S: Store>(
    pool: &Pool<S>,
    processes: usize,
    spawn: impl Fn(&str, u128) -> Child,
) {
    pool.add_many((0..8).map(|i| NewCredential::new(format!("share-{i}"), "s")))
        .await
        .unwrap();
    // Time for every process to start and open its store, even on a busy
    // machine.
    let start = now_ns() + 2_000_000_000;
    let children: Vec<Child> = (0..processes).map(|_| spawn("share", start)).collect();
    let mut shares = Vec::new();
    for child in children {
        let (child, share) = read_value(child, "SHARE").await;
        let (grants, p99) = share.split_once(' ').unwrap();
        shares.push((grants.parse::<f64>().unwrap(), p99.parse::<f64>().unwrap()));
        assert!(wait_all(vec![child]).await[0].success());
    }
    let mean = shares.iter().map(|(grants, _)| grants).sum::<f64>() / processes as f64;
    for (grants, _) in &shares {
        assert!(
            (grants - mean).abs() <= 0.15 * mean,
            "grants per process {shares:?}: each within ±15% of the mean {mean}"
        );
    }
    let p99s: Vec<f64> = shares.iter().map(|(_, p99)| *p99).collect();
    let (low, high) = p99s.iter().fold((f64::MAX, 0f64), |(low, high), p| {
        (low.min(*p), high.max(*p))
    });
    // 10 ms of slack for the scheduler of a shared two-core machine.
    assert!(
        high <= 2.0 * low + 10_000.0,
        "p99 waits in µs {p99s:?}: within 2× of each other"
    );
}

/// A process queues three waiters and is killed with SIGKILL; the
/// credential is then freed and handed to its first ticket. A waiter here
/// that queued after it is served once that no-show's claim deadline and
/// tickets have run out (`ticket_ttl`), long before the lease TTL, and not
/// before: the newcomer never overtook the dead tickets.
pub async fn a_killed_waiter_delays_the_others_by_at_most_the_ticket_ttl<S: Store>(
    pool: &Pool<S>,
    ticket_ttl: Duration,
    spawn: impl Fn(&str) -> Child,
) {
    pool.add(NewCredential::new("only", "s")).await.unwrap();
    let held = pool.acquire().await.unwrap();
    let child = spawn("queue-and-hang");
    waiters_reach(pool, 3).await;
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|lease| (lease, Instant::now())) })
    };
    waiters_reach(pool, 4).await;
    let freed = Instant::now();
    held.release().await.unwrap();
    let (lease, served) = tokio::time::timeout(ticket_ttl * 2 + Duration::from_secs(3), waiter)
        .await
        .expect("the waiter behind the killed process is served within the ticket TTL")
        .unwrap()
        .unwrap();
    let waited = served - freed;
    assert!(
        waited >= ticket_ttl / 2,
        "served after {waited:?}: the credential went to the killed process's ticket first"
    );
    lease.release().await.unwrap();
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.leases, stats.waiters), (0, 0), "{stats:?}");
}

/// Four processes whose tasks give up at random while they wait: the
/// merged hold log (at least `min_holds` holds, to show the processes
/// worked) passes the checker, and the store ends with every credential
/// back and nobody in line.
pub async fn random_cancellation_leaves_nothing<S: Store>(
    pool: &Pool<S>,
    min_holds: usize,
    spawn: impl Fn(usize) -> Child,
    log_of: impl Fn(usize) -> std::path::PathBuf,
) {
    pool.add_many((0..6).map(|i| NewCredential::new(format!("account-{i}"), "s")))
        .await
        .unwrap();
    let children = (0..4).map(&spawn).collect();
    let statuses = wait_all(children).await;
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );
    let logs: Vec<_> = (0..4).map(log_of).collect();
    let holds = super::processes::check_hammer_logs(&logs);
    assert!(
        holds.len() >= min_holds,
        "the processes really worked: {} holds",
        holds.len()
    );
    // What was handed to a ticket of a process that ended first comes back
    // at the claim deadline.
    let mut stats = pool.stats().await.unwrap();
    let started = Instant::now();
    while (stats.available, stats.waiters) != (6, 0) && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = pool.stats().await.unwrap();
    }
    assert_eq!(
        (stats.total, stats.available, stats.leases, stats.waiters),
        (6, 6, 0, 0),
        "{stats:?}"
    );
}
