//! The behaviour every store must have, written once and run against each
//! store by `conformance_suite!` in that store's test file.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credpool::{
    CredentialChange, CredentialState, Error, Event, LeaseId, LeaseToken, NewCredential, Pool,
    ReleaseOutcome, Store,
};
use tokio::time::{sleep, timeout, Instant};

use crate::common::checker::HoldLog;

pub mod limits;
mod model;
pub mod weighted;

/// Makes fresh, empty pools of one kind of store.
pub trait Factory: Sync {
    type Store: Store;

    /// An empty pool; leases expire after `ttl`, or never with `None`.
    fn pool(&self, ttl: Option<Duration>) -> impl Future<Output = Pool<Self::Store>>;
}

/// Generates one `#[tokio::test]` per conformance test for a factory.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            ten_try_acquires_on_one_credential_grant_exactly_one,
            three_tasks_share_one_credential_by_waiting,
            seven_tasks_over_three_credentials_never_overlap,
            empty_pool_fails_at_once,
            all_disabled_fails_at_once,
            releasing_a_lease_never_granted_fails_and_changes_nothing,
            waiters_are_served_in_arrival_order,
            try_acquire_does_not_jump_the_queue,
            cancelled_acquires_never_leak,
            cancelled_waiter_passes_its_wake_up_on,
            calls_after_a_cancelled_grant_see_it_released,
            expired_lease_is_taken_over_and_stale_holder_is_fenced,
            renewed_lease_is_not_taken_over,
            cool_down_holds_back_then_hands_out,
            second_waiter_is_served_when_a_cool_down_ends,
            disable_and_enable,
            capacity_bounds_concurrent_holders,
            close_wakes_waiters_and_lets_leases_return,
            wait_for_leases_times_out_while_a_lease_is_out,
            acquire_timeout_fails_after_the_timeout,
            dropped_lease_returns_its_credential,
            lease_ids_are_unique_and_increasing,
            bad_input_is_refused_and_adds_nothing,
            duplicate_names_are_refused,
            add_many_skip_existing_merges,
            skipped_names_are_not_announced,
            remove_is_refused_while_leased_unless_forced,
            unknown_names_are_reported,
            a_disable_without_a_reason_is_refused,
            update_secret_reaches_the_next_lease,
            stats_count_by_state,
            events_report_what_happens,
            secrets_never_printed,
            random_operations_match_the_model,
            cancelled_releases_keep_the_books,
            disabling_the_last_credential_on_release_fails_every_waiter,
            arrival_order_holds_after_add_and_enable,
            a_lease_ttl_below_the_minimum_is_refused,
            the_longest_durations_saturate,
            revoke_frees_a_credential_at_once_and_fences_its_holders,
            update_changes_capacity_secret_and_extra_at_once,
            a_large_add_reports_its_progress,
            a_lower_capacity_does_not_count_expired_leases,
            stats_count_every_grant_in_uses,
            list_shows_who_holds_each_lease_and_until_when,
            a_large_add_keeps_every_field_and_is_all_or_nothing,
            list_pages_cover_the_list_in_order,
            info_reads_one_credential_as_list_shows_it,
            a_list_is_one_snapshot_while_leases_change,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::conformance::$name(&$factory).await;
            }
        )*
    };
}

/// Fails a test that hangs instead of hanging the suite.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

pub async fn pool_with<F: Factory>(
    factory: &F,
    ttl: Option<Duration>,
    names: &[&str],
) -> Pool<F::Store> {
    let pool = factory.pool(ttl).await;
    pool.add_many(
        names
            .iter()
            .map(|name| NewCredential::new(*name, format!("secret-of-{name}"))),
    )
    .await
    .expect("add credentials");
    pool
}

/// Waits (at most 5 s) until the store counts no lease out; returns the stats then.
pub async fn leases_back<S: Store>(pool: &Pool<S>) -> credpool::Stats {
    within(Duration::from_secs(5), "every lease to come back", async {
        loop {
            let stats = pool.stats().await.unwrap();
            if stats.leases == 0 {
                return stats;
            }
            sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

async fn wait_for_waiters<S: Store>(pool: &Pool<S>, count: u64) {
    within(Duration::from_secs(10), "waiters to queue", async {
        while pool.stats().await.unwrap().waiters < count {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// aio-credentials-pool: 10 concurrent try_acquire on one credential, exactly one wins.
pub async fn ten_try_acquires_on_one_credential_grant_exactly_one<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                pool.try_acquire().await.expect("try_acquire")
            })
        })
        .collect();
    let mut leases = Vec::new();
    for task in tasks {
        leases.push(task.await.unwrap());
    }
    let granted = leases.iter().filter(|lease| lease.is_some()).count();
    assert_eq!(granted, 1, "exactly one of 10 try_acquire must win");
    assert_eq!(leases.len() - granted, 9);
}

/// aio-credentials-pool: 3 tasks share one credential by waiting; all finish.
pub async fn three_tasks_share_one_credential_by_waiting<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (pool, done) = (pool.clone(), done.clone());
            tokio::spawn(async move {
                let lease = pool.acquire().await.expect("acquire");
                sleep(Duration::from_millis(20)).await;
                lease.release().await.expect("release");
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    within(
        Duration::from_secs(10),
        "3 tasks sharing one credential",
        async {
            for task in tasks {
                task.await.unwrap();
            }
        },
    )
    .await;
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

/// Runs `tasks` workers for `rounds` each, logging every hold.
async fn hammer<S: Store>(
    pool: &Pool<S>,
    log: &Arc<HoldLog>,
    tasks: usize,
    rounds: usize,
    hold: Duration,
) {
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (pool, log) = (pool.clone(), log.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let lease = pool.acquire().await.expect("acquire");
                    let credential = lease.credential().clone();
                    log.start(credential.name(), credential.capacity(), lease.id().get());
                    if hold.is_zero() {
                        tokio::task::yield_now().await;
                    } else {
                        sleep(hold).await;
                    }
                    log.end(lease.id().get());
                    lease.release().await.expect("release");
                }
            })
        })
        .collect();
    within(Duration::from_secs(60), "workers", async {
        for worker in workers {
            worker.await.unwrap();
        }
    })
    .await;
}

/// aio-credentials-pool: 7 tasks over 3 credentials; no credential held twice.
pub async fn seven_tasks_over_three_credentials_never_overlap<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b", "c"]).await;
    let log = Arc::new(HoldLog::new());
    hammer(&pool, &log, 7, 30, Duration::from_millis(1)).await;
    log.check(|_| 1).expect("no credential held twice");
    assert_eq!(log.grants(), 7 * 30);
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.available, stats.leases), (3, 0));
    let uses: u64 = pool.list().await.unwrap().iter().map(|c| c.use_count).sum();
    assert_eq!(uses, 7 * 30, "use counts add up to the grants");
}

/// aio-credentials-pool: an empty pool fails at once instead of waiting forever.
pub async fn empty_pool_fails_at_once<F: Factory>(factory: &F) {
    let pool = factory.pool(None).await;
    let result = within(
        Duration::from_secs(2),
        "acquire on empty pool",
        pool.acquire(),
    )
    .await;
    assert!(
        matches!(result, Err(Error::NoCredentials { .. })),
        "got {result:?}"
    );
    let result = pool.try_acquire().await;
    assert!(matches!(result, Err(Error::NoCredentials { .. })));
}

pub async fn all_disabled_fails_at_once<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b"]).await;
    pool.disable("a", "banned").await.unwrap();
    let lease = pool.acquire().await.unwrap();
    assert_eq!(lease.credential().name(), "b");
    // A waiter for the last enabled credential learns at once when it is disabled.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|lease| lease.id()) }
    });
    wait_for_waiters(&pool, 1).await;
    lease
        .release_with(ReleaseOutcome::Disable("banned too".into()))
        .await
        .unwrap();
    let result = within(Duration::from_secs(5), "waiter on disabled pool", waiter)
        .await
        .unwrap();
    assert!(
        matches!(result, Err(Error::NoCredentials { .. })),
        "got {result:?}"
    );
}

/// aio-credentials-pool: releasing what the store never granted fails; nothing changes.
pub async fn releasing_a_lease_never_granted_fails_and_changes_nothing<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b"]).await;
    let held = pool.acquire().await.unwrap();
    let before = pool.list().await.unwrap();
    let forged = [
        LeaseToken::new(held.credential().id(), LeaseId::new(held.id().get() + 1000)),
        LeaseToken::new(held.credential().id(), LeaseId::new(0)),
        LeaseToken::new(credpool::CredentialId::new(999_999), held.id()),
    ];
    for token in forged {
        let result = pool.release_token(token, ReleaseOutcome::Success).await;
        assert!(
            matches!(result, Err(Error::LeaseLost { .. })),
            "forged {token:?}: {result:?}"
        );
    }
    assert_eq!(pool.list().await.unwrap(), before, "nothing changed");
    let other = pool.try_acquire().await.unwrap().expect("b is free");
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "a is still held"
    );
    held.release().await.expect("the real holder releases");
    other.release().await.unwrap();
}

/// Waiters queued one after another, each recording its place in line when
/// it is served, then holding the lease for `hold` and releasing it.
struct RecordingWaiters {
    served: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RecordingWaiters {
    async fn queue<S: Store>(pool: &Pool<S>, count: u64, hold: Duration) -> Self {
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for index in 0..count {
            let (task_pool, served) = (pool.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let lease = task_pool.acquire().await.expect("acquire");
                served.lock().unwrap().push(index);
                if !hold.is_zero() {
                    sleep(hold).await;
                }
                lease.release().await.expect("release");
            }));
            wait_for_waiters(pool, index + 1).await;
        }
        Self { served, tasks }
    }

    /// Waits (at most 30 s) for every waiter; the order they were served in.
    async fn served_order(self) -> Vec<u64> {
        within(Duration::from_secs(30), "the waiters", async {
            for task in self.tasks {
                task.await.unwrap();
            }
        })
        .await;
        let served = self.served.lock().unwrap().clone();
        served
    }
}

/// 100 waiters queued in a known order are served in that order.
pub async fn waiters_are_served_in_arrival_order<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let first = pool.acquire().await.unwrap();
    let waiters = RecordingWaiters::queue(&pool, 100, Duration::ZERO).await;
    first.release().await.unwrap();
    let served = waiters.served_order().await;
    assert_eq!(
        served,
        (0..100).collect::<Vec<_>>(),
        "served in arrival order"
    );
}

/// A newcomer's try_acquire never takes a credential a queued waiter is owed.
pub async fn try_acquire_does_not_jump_the_queue<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    for _ in 0..20 {
        let held = pool.acquire().await.unwrap();
        let waiter_served = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn({
            let (pool, served) = (pool.clone(), waiter_served.clone());
            async move {
                let lease = pool.acquire().await.expect("waiter acquires");
                served.store(true, Ordering::SeqCst);
                sleep(Duration::from_millis(5)).await;
                lease.release().await.unwrap();
            }
        });
        wait_for_waiters(&pool, 1).await;
        let jumper = tokio::spawn({
            let (pool, served) = (pool.clone(), waiter_served.clone());
            async move {
                while !served.load(Ordering::SeqCst) {
                    if let Some(lease) = pool.try_acquire().await.unwrap() {
                        assert!(
                            served.load(Ordering::SeqCst),
                            "try_acquire took the credential before the queued waiter"
                        );
                        drop(lease);
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
        held.release().await.unwrap();
        within(Duration::from_secs(10), "waiter and jumper", async {
            waiter.await.unwrap();
            jumper.await.unwrap();
        })
        .await;
    }
}

/// Thousands of acquire futures dropped at random points leak nothing.
pub async fn cancelled_acquires_never_leak<F: Factory>(factory: &F) {
    let names = ["a", "b", "c", "d"];
    let pool = pool_with(factory, None, &names).await;
    let log = Arc::new(HoldLog::new());
    let cancelled = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..64u64)
        .map(|seed| {
            let (pool, log, cancelled) = (pool.clone(), log.clone(), cancelled.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed);
                for _ in 0..60 {
                    let patience = Duration::from_micros(rng.u64(0..3000));
                    let attempt = if rng.bool() {
                        timeout(patience, pool.acquire()).await.ok()
                    } else {
                        tokio::select! {
                            lease = pool.acquire() => Some(lease),
                            () = sleep(patience) => None,
                        }
                    };
                    let Some(lease) = attempt else {
                        cancelled.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    let lease = lease.expect("acquire");
                    log.start(lease.credential().name(), 1, lease.id().get());
                    tokio::time::sleep(Duration::from_micros(rng.u64(0..500))).await;
                    log.end(lease.id().get());
                    match rng.u8(0..3) {
                        0 => drop(lease),
                        1 => lease.release().await.unwrap(),
                        // Cancel the release itself at a random point.
                        _ => {
                            let _ = timeout(Duration::from_micros(rng.u64(0..50)), lease.release())
                                .await;
                        }
                    }
                }
            })
        })
        .collect();
    within(Duration::from_secs(60), "cancelling workers", async {
        for worker in workers {
            worker.await.unwrap();
        }
    })
    .await;
    log.check(|_| 1).expect("no credential held twice");
    assert!(
        cancelled.load(Ordering::SeqCst) > 100,
        "the test must really cancel acquires (cancelled {})",
        cancelled.load(Ordering::SeqCst)
    );
    let stats = leases_back(&pool).await;
    assert_eq!((stats.available, stats.waiters), (4, 0), "{stats:?}");
    let mut all = Vec::new();
    for _ in 0..4 {
        all.push(
            pool.try_acquire()
                .await
                .unwrap()
                .expect("every credential is free"),
        );
    }
    assert!(pool.try_acquire().await.unwrap().is_none());
}

/// A grant whose caller left while it was on its way is released, and calls
/// made after the caller left see it released: stats showing nothing leased
/// mean every credential is free. (CI once caught the Postgres store taking
/// stats while such a grant was still in flight.)
pub async fn calls_after_a_cancelled_grant_see_it_released<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    for round in 0..200 {
        // Polled once, so that the grant is on its way, then dropped.
        tokio::select! {
            biased;
            _ = pool.acquire() => {}
            () = std::future::ready(()) => {}
        }
        let stats = pool.stats().await.unwrap();
        assert_eq!(stats.leases, 0, "round {round}: {stats:?}");
        let lease = pool.try_acquire().await.unwrap();
        assert!(
            lease.is_some(),
            "round {round}: stats said nothing is leased"
        );
    }
}

/// A waiter woken for a release and then dropped before it runs hands the
/// release to the next waiter in line.
pub async fn cancelled_waiter_passes_its_wake_up_on<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let held = pool.acquire().await.unwrap();
    let mut first = Box::pin(pool.acquire());
    // Drive the first waiter until it is in line (a store may need a round trip).
    within(Duration::from_secs(10), "first waiter queued", async {
        loop {
            tokio::select! {
                biased;
                _ = &mut first => panic!("nothing is free"),
                () = sleep(Duration::from_millis(1)) => {}
            }
            if pool.stats().await.unwrap().waiters == 1 {
                break;
            }
        }
    })
    .await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|lease| lease.id()) }
    });
    wait_for_waiters(&pool, 2).await;
    held.release().await.unwrap();
    drop(first);
    within(
        Duration::from_secs(5),
        "second waiter after first was cancelled",
        second,
    )
    .await
    .unwrap()
    .expect("second waiter is served");
}

/// A lease past its TTL goes to another; the stale holder is fenced out.
pub async fn expired_lease_is_taken_over_and_stale_holder_is_fenced<F: Factory>(factory: &F) {
    // Long enough that the new holder's lease outlives the checks below on a
    // loaded machine.
    let pool = pool_with(factory, Some(Duration::from_millis(600)), &["only"]).await;
    let started = Instant::now();
    let mut stale = pool.acquire().await.unwrap();
    assert!(stale.expires_at().is_some());
    let current = within(
        Duration::from_secs(5),
        "take-over after expiry",
        pool.acquire_timeout(Duration::from_secs(4)),
    )
    .await
    .expect("granted after the TTL");
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "not before the TTL"
    );
    assert!(current.id() > stale.id(), "fencing token increases");
    assert!(matches!(stale.renew().await, Err(Error::LeaseLost { .. })));
    assert!(matches!(
        stale.release().await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "the new holder still holds it"
    );
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.leases, 1);
    current.release().await.expect("new holder releases");
}

pub async fn renewed_lease_is_not_taken_over<F: Factory>(factory: &F) {
    let pool = pool_with(factory, Some(Duration::from_millis(200)), &["only"]).await;
    let mut lease = pool.acquire().await.unwrap();
    let first_expiry = lease.expires_at().unwrap();
    for _ in 0..8 {
        sleep(Duration::from_millis(60)).await;
        lease.renew().await.expect("renew");
        assert!(pool.try_acquire().await.unwrap().is_none());
    }
    assert!(lease.expires_at().unwrap() > first_expiry);
    lease.release().await.expect("release after renewals");
}

pub async fn cool_down_holds_back_then_hands_out<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let lease = pool.acquire().await.unwrap();
    // Before the release: the store starts the cool-down as the release
    // runs, which may be well before it answers on a loaded machine.
    let started = Instant::now();
    lease
        .release_with(ReleaseOutcome::CoolDown(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(pool.try_acquire().await.unwrap().is_none());
    let info = &pool.list().await.unwrap()[0];
    assert!(
        matches!(info.state, CredentialState::CoolingDown { .. }),
        "{info:?}"
    );
    assert_eq!(pool.stats().await.unwrap().cooling_down, 1);
    let lease = within(Duration::from_secs(5), "cool-down end", pool.acquire())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "handed out after {:?}, before the cool-down ended",
        started.elapsed()
    );
    lease.release().await.unwrap();
}

/// The timer for a cool-down passes to the next waiter when the first one
/// is served by a release, so nobody waits for a release that never comes.
pub async fn second_waiter_is_served_when_a_cool_down_ends<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b"]).await;
    let held = pool.acquire().await.unwrap();
    pool.acquire()
        .await
        .unwrap()
        .release_with(ReleaseOutcome::CoolDown(Duration::from_millis(300)))
        .await
        .unwrap();
    let (served, mut names_served) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 {
        let (pool, served) = (pool.clone(), served.clone());
        tokio::spawn(async move {
            let lease = pool.acquire().await.expect("acquire");
            let _ = served.send(lease.credential().name().to_string());
            // Hold on: only the cool-down's end can serve the other waiter.
            sleep(Duration::from_secs(2)).await;
            drop(lease);
        });
    }
    wait_for_waiters(&pool, 2).await;
    held.release().await.unwrap();
    let mut names = Vec::new();
    for _ in 0..2 {
        let name = within(
            Duration::from_secs(1),
            "waiter after the cool-down",
            names_served.recv(),
        )
        .await;
        names.push(name.unwrap());
    }
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

pub async fn disable_and_enable<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b"]).await;
    let lease = pool.acquire().await.unwrap();
    let banned = lease.credential().name().to_string();
    lease
        .release_with(ReleaseOutcome::Disable("banned by the site".into()))
        .await
        .unwrap();
    let info = pool
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|info| info.name == banned)
        .unwrap();
    assert_eq!(
        info.state,
        CredentialState::Disabled {
            reason: "banned by the site".into()
        }
    );
    for _ in 0..3 {
        let lease = pool.acquire().await.unwrap();
        assert_ne!(lease.credential().name(), banned);
    }
    let other = if banned == "a" { "b" } else { "a" };
    pool.disable(other, "operator").await.unwrap();
    assert!(matches!(
        pool.acquire().await,
        Err(Error::NoCredentials { .. })
    ));
    assert_eq!(pool.stats().await.unwrap().disabled, 2);
    pool.enable(&banned).await.unwrap();
    let lease = pool.acquire().await.unwrap();
    assert_eq!(lease.credential().name(), banned);
    // A waiter wakes when a credential is enabled.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.acquire()
                .await
                .map(|l| l.credential().name().to_string())
        }
    });
    wait_for_waiters(&pool, 1).await;
    pool.enable(other).await.unwrap();
    let name = within(Duration::from_secs(5), "enable wakes", waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(name, other);
    drop(lease);
}

pub async fn capacity_bounds_concurrent_holders<F: Factory>(factory: &F) {
    let pool = factory.pool(None).await;
    pool.add(NewCredential::new("shared", "s").capacity(3))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.try_acquire().await.unwrap().expect("capacity 3"));
    }
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "a 4th is refused"
    );
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.leased, stats.leases), (1, 3));
    held.clear();
    let log = Arc::new(HoldLog::new());
    hammer(&pool, &log, 12, 20, Duration::from_millis(1)).await;
    log.check(|_| 3).expect("never more holders than capacity");
    assert!(
        log.peak("shared") >= 2,
        "capacity is used, not reduced to 1"
    );
}

pub async fn close_wakes_waiters_and_lets_leases_return<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let held = pool.acquire().await.unwrap();
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await.map(|lease| lease.id()) })
        })
        .collect();
    wait_for_waiters(&pool, 5).await;
    pool.close();
    assert!(pool.is_closed());
    for waiter in waiters {
        let result = within(Duration::from_secs(5), "waiter wakes on close", waiter)
            .await
            .unwrap();
        assert!(matches!(result, Err(Error::Closed)), "got {result:?}");
    }
    assert!(matches!(pool.acquire().await, Err(Error::Closed)));
    assert!(matches!(pool.try_acquire().await, Err(Error::Closed)));
    assert_eq!(pool.leases_out(), 1);
    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.wait_for_leases(Duration::from_secs(5)).await }
    });
    sleep(Duration::from_millis(20)).await;
    assert!(!shutdown.is_finished(), "waits while a lease is out");
    held.release()
        .await
        .expect("a lease out may still be released");
    within(Duration::from_secs(5), "wait_for_leases", shutdown)
        .await
        .unwrap()
        .expect("every lease came back");
    assert_eq!(pool.stats().await.unwrap().leases, 0);
}

pub async fn wait_for_leases_times_out_while_a_lease_is_out<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let held = pool.acquire().await.unwrap();
    let result = pool.wait_for_leases(Duration::from_millis(50)).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    drop(held);
    pool.wait_for_leases(Duration::from_millis(500))
        .await
        .expect("dropped lease came back");
}

pub async fn acquire_timeout_fails_after_the_timeout<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let held = pool.acquire().await.unwrap();
    let started = Instant::now();
    let result = pool.acquire_timeout(Duration::from_millis(100)).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        pool.stats().await.unwrap().waiters,
        0,
        "the waiter left the line"
    );
    drop(held);
    let lease = pool
        .acquire_timeout(Duration::from_millis(500))
        .await
        .expect("free now");
    lease.release().await.unwrap();
}

pub async fn dropped_lease_returns_its_credential<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let lease = pool.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|lease| lease.id()) }
    });
    wait_for_waiters(&pool, 1).await;
    drop(lease);
    within(Duration::from_secs(5), "drop wakes the waiter", waiter)
        .await
        .unwrap()
        .expect("acquire after drop");
    leases_back(&pool).await;
}

pub async fn lease_ids_are_unique_and_increasing<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b", "c"]).await;
    let mut last = 0;
    for _ in 0..20 {
        let lease = pool.acquire().await.unwrap();
        assert!(lease.id().get() > last, "lease ids increase");
        last = lease.id().get();
    }
    let log = Arc::new(HoldLog::new());
    hammer(&pool, &log, 8, 20, Duration::ZERO).await;
    log.check(|_| 1).expect("unique lease ids");
}

pub async fn bad_input_is_refused_and_adds_nothing<F: Factory>(factory: &F) {
    let pool = factory.pool(None).await;
    let long = "x".repeat(256);
    let cases = [
        (NewCredential::new("", "s"), "name"),
        (NewCredential::new("bad\u{7}name", "s"), "name"),
        (NewCredential::new("new\nline", "s"), "name"),
        (NewCredential::new(long.as_str(), "s"), "name"),
        (NewCredential::new(" lead", "s"), "name"),
        (NewCredential::new("trail ", "s"), "name"),
        (NewCredential::new("wide\u{3000}", "s"), "name"),
        (NewCredential::new("zero", "s").capacity(0), "capacity"),
        (
            NewCredential::new("huge", "s".repeat(credpool::MAX_SECRET_BYTES + 1)),
            "secret",
        ),
    ];
    for (credential, field) in cases {
        match pool.add(credential).await {
            Err(Error::InvalidInput(invalid)) => assert_eq!(invalid.field, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }
    assert!(pool.list().await.unwrap().is_empty());
    assert!(
        credpool::validate_name(&"é".repeat(127)).is_ok(),
        "254 bytes is fine"
    );
    let batch = vec![
        NewCredential::new("good1", "s"),
        NewCredential::new("good2", "s"),
        NewCredential::new("bad\tname", "s"),
        NewCredential::new("good3", "s"),
    ];
    match pool.add_many(batch).await {
        Err(Error::InvalidInput(invalid)) => {
            assert_eq!((invalid.field, invalid.entry), ("name", Some(2)));
            assert!(invalid.to_string().contains("entry 2"), "{invalid}");
        }
        other => panic!("expected invalid entry 2, got {other:?}"),
    }
    assert!(pool.list().await.unwrap().is_empty(), "nothing added");
    // A name exactly 255 bytes long is accepted.
    pool.add(NewCredential::new("y".repeat(255), "s"))
        .await
        .unwrap();
}

pub async fn duplicate_names_are_refused<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["alice"]).await;
    let result = pool.add(NewCredential::new("alice", "other")).await;
    assert!(matches!(result, Err(Error::DuplicateName { ref name, .. }) if name == "alice"));
    let batch = [
        NewCredential::new("bob", "s"),
        NewCredential::new("carol", "s"),
        NewCredential::new("bob", "s"),
    ];
    let result = pool.add_many(batch).await;
    assert!(
        matches!(result, Err(Error::DuplicateName { ref name, entry: Some(2), .. }) if name == "bob"),
        "{result:?}"
    );
    let batch = [
        NewCredential::new("dave", "s"),
        NewCredential::new("alice", "s"),
    ];
    assert!(matches!(
        pool.add_many(batch).await,
        Err(Error::DuplicateName { .. })
    ));
    let names: Vec<_> = pool
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["alice"], "a batch with a duplicate adds nothing");
}

pub async fn add_many_skip_existing_merges<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["alice"]).await;
    let added = pool
        .add_many_skip_existing([
            NewCredential::new("alice", "new"),
            NewCredential::new("bob", "s"),
            NewCredential::new("bob", "again"),
        ])
        .await
        .unwrap();
    assert_eq!(added, 1);
    let names: Vec<_> = pool
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let lease = pool.acquire().await.unwrap();
    if lease.credential().name() == "alice" {
        assert_eq!(
            lease.credential().secret().expose(),
            "secret-of-alice",
            "kept"
        );
    }
}

/// Merging announces only the credentials it added: a name it kept (it was
/// in the pool, or earlier in the input) gets no `Added` event.
pub async fn skipped_names_are_not_announced<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["alice"]).await;
    let mut events = pool.subscribe();
    let added = pool
        .add_many_skip_existing([
            NewCredential::new("alice", "new"),
            NewCredential::new("bob", "s"),
            NewCredential::new("bob", "again"),
            NewCredential::new("carol", "s"),
        ])
        .await
        .unwrap();
    assert_eq!(added, 2);
    let mut announced = Vec::new();
    while let Some(event) = events.try_recv() {
        if let Event::Added { name } = event {
            announced.push(name.to_string());
        }
    }
    assert_eq!(announced, ["bob", "carol"]);
}

pub async fn remove_is_refused_while_leased_unless_forced<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a"]).await;
    let lease = pool.acquire().await.unwrap();
    assert!(matches!(
        pool.remove("a").await,
        Err(Error::InUse { holders: 1, .. })
    ));
    assert_eq!(pool.list().await.unwrap().len(), 1);
    pool.remove_forced("a").await.unwrap();
    assert!(pool.list().await.unwrap().is_empty());
    assert!(matches!(
        lease.release().await,
        Err(Error::LeaseLost { .. })
    ));
    pool.add(NewCredential::new("a", "again")).await.unwrap();
    pool.remove("a").await.unwrap();
    assert!(matches!(
        pool.acquire().await,
        Err(Error::NoCredentials { .. })
    ));
}

pub async fn unknown_names_are_reported<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a"]).await;
    for result in [
        pool.remove("ghost").await,
        pool.disable("ghost", "x").await,
        pool.enable("ghost").await,
        pool.update_secret("ghost", "s").await,
    ] {
        match result {
            Err(error @ Error::UnknownCredential { .. }) => {
                assert!(error.to_string().contains("ghost"), "{error}")
            }
            other => panic!("expected unknown credential, got {other:?}"),
        }
    }
}

pub async fn update_secret_reaches_the_next_lease<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a"]).await;
    let lease = pool.acquire().await.unwrap();
    pool.update_secret("a", "rotated").await.unwrap();
    assert_eq!(lease.credential().secret().expose(), "secret-of-a");
    lease.release().await.unwrap();
    let lease = pool.acquire().await.unwrap();
    assert_eq!(lease.credential().secret().expose(), "rotated");
}

pub async fn stats_count_by_state<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b", "c", "d"]).await;
    let _held = pool.acquire().await.unwrap();
    pool.acquire()
        .await
        .unwrap()
        .release_with(ReleaseOutcome::CoolDown(Duration::from_secs(3600)))
        .await
        .unwrap();
    pool.acquire()
        .await
        .unwrap()
        .release_with(ReleaseOutcome::Disable("x".into()))
        .await
        .unwrap();
    let stats = pool.stats().await.unwrap();
    assert_eq!(
        (
            stats.total,
            stats.available,
            stats.leased,
            stats.cooling_down,
            stats.disabled,
            stats.leases
        ),
        (4, 1, 1, 1, 1, 1),
        "{stats:?}"
    );
    let list = pool.list().await.unwrap();
    let uses: u64 = list.iter().map(|c| c.use_count).sum();
    assert_eq!(uses, 3);
    assert!(list
        .iter()
        .filter(|c| c.use_count > 0)
        .all(|c| c.last_used_at.is_some()));
}

pub async fn events_report_what_happens<F: Factory>(factory: &F) {
    let pool = factory.pool(None).await;
    let mut events = pool.subscribe();
    pool.add(NewCredential::new("a", "s")).await.unwrap();
    let lease = pool.acquire().await.unwrap();
    let id = lease.id();
    lease
        .release_with(ReleaseOutcome::CoolDown(Duration::from_secs(60)))
        .await
        .unwrap();
    pool.disable("a", "banned").await.unwrap();
    pool.enable("a").await.unwrap();
    pool.remove("a").await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = events.try_recv() {
        seen.push(event);
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|event| match event {
            Event::Added { .. } => "added",
            Event::Acquired { .. } => "acquired",
            Event::CooledDown { .. } => "cooled",
            Event::Released { .. } => "released",
            Event::Disabled { .. } => "disabled",
            Event::Enabled { .. } => "enabled",
            Event::Removed { .. } => "removed",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["added", "acquired", "cooled", "released", "disabled", "enabled", "removed"]
    );
    assert!(matches!(&seen[1], Event::Acquired { lease_id, .. } if *lease_id == id));
}

pub async fn secrets_never_printed<F: Factory>(factory: &F) {
    let pool = factory.pool(None).await;
    let secret = "TOP-SECRET-VALUE-42";
    let cookie = "COOKIE-VALUE-42";
    let mut events = pool.subscribe();
    pool.add(NewCredential::new("alice", secret).extra(cookie))
        .await
        .unwrap();
    let lease = pool.acquire().await.unwrap();
    let mut printed = vec![
        format!("{lease:?}"),
        format!("{:?}", lease.credential()),
        format!("{}", lease.credential().secret()),
        format!("{:?}", lease.credential().secret()),
        format!("{:?}", NewCredential::new("alice", secret).extra(cookie)),
        format!("{:?}", pool.list().await.unwrap()),
        format!("{:?}", pool.stats().await.unwrap()),
    ];
    let duplicate = pool
        .add(NewCredential::new("alice", secret))
        .await
        .unwrap_err();
    printed.push(format!("{duplicate} {duplicate:?}"));
    let invalid = pool
        .add(NewCredential::new("bob", secret).capacity(0))
        .await
        .unwrap_err();
    printed.push(format!("{invalid} {invalid:?}"));
    let token = lease.token();
    lease
        .release_with(ReleaseOutcome::Disable("banned".into()))
        .await
        .unwrap();
    let lost = pool
        .release_token(token, ReleaseOutcome::Success)
        .await
        .unwrap_err();
    printed.push(format!("{lost} {lost:?}"));
    while let Some(event) = events.try_recv() {
        printed.push(format!("{event:?}"));
    }
    for text in printed {
        assert!(!text.contains(secret), "secret printed: {text}");
        assert!(!text.contains(cookie), "cookie printed: {text}");
    }
}

pub async fn random_operations_match_the_model<F: Factory>(factory: &F) {
    model::run(factory).await;
}

/// For the stores that hand out least recently used first (SQLite, Postgres).
pub async fn hands_out_least_recently_used_first<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b", "c"]).await;
    let a = pool.acquire().await.unwrap();
    assert_eq!(a.credential().name(), "a", "never used, lowest id first");
    a.release().await.unwrap();
    sleep(Duration::from_millis(3)).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let lease = pool.acquire().await.unwrap();
        order.push(lease.credential().name().to_string());
        lease.release().await.unwrap();
        sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(order, ["b", "c", "a"]);
}

/// For the stores that keep their state (SQLite, Postgres): `open` opens the
/// same empty store each time it is called.
pub async fn state_survives_reopening<S: Store, O: Future<Output = Pool<S>>>(open: impl Fn() -> O) {
    let token = {
        let pool = open().await;
        pool.add_many(["a", "b"].map(|name| NewCredential::new(name, "s")))
            .await
            .unwrap();
        pool.disable("b", "banned").await.unwrap();
        pool.acquire().await.unwrap().into_token()
    };
    let pool = open().await;
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.total, stats.leases, stats.disabled), (2, 1, 1));
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "a is still leased"
    );
    pool.release_token(token, ReleaseOutcome::Success)
        .await
        .expect("the lease outlives the store that granted it");
    let lease = pool.try_acquire().await.unwrap().expect("a is back");
    assert_eq!(lease.credential().name(), "a");
}

/// Polls a future once, then drops it: a `select!` that lost.
async fn poll_once_then_drop<F: Future>(future: F) {
    tokio::select! {
        biased;
        _ = future => {}
        () = std::future::ready(()) => {}
    }
}

/// Item 3 of the defects issue: a release future polled once and dropped
/// (a `select!` that lost) still ends the lease in the pool's books, and
/// wakes a waiter; so does a token's release.
pub async fn cancelled_releases_keep_the_books<F: Factory>(factory: &F) {
    let names: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pool = pool_with(factory, None, &refs).await;
    let mut leases = Vec::new();
    for _ in 0..50 {
        leases.push(pool.acquire().await.unwrap());
    }
    assert_eq!(pool.leases_out(), 50);
    for (index, lease) in leases.into_iter().enumerate() {
        if index % 2 == 0 {
            poll_once_then_drop(lease.release()).await;
        } else {
            poll_once_then_drop(lease.release_with(ReleaseOutcome::Success)).await;
        }
    }
    pool.close();
    within(Duration::from_secs(10), "the books", async {
        pool.wait_for_leases(Duration::from_secs(5))
            .await
            .expect("every cancelled release is counted back");
    })
    .await;
    assert_eq!(pool.leases_out(), 0);
    assert_eq!(leases_back(&pool).await.leases, 0);

    // A token's release, cancelled, still wakes the waiter it freed a credential for.
    let pool = pool_with(factory, None, &["only"]).await;
    let token = pool.acquire().await.unwrap().into_token();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|lease| lease.id()) })
    };
    wait_for_waiters(&pool, 1).await;
    poll_once_then_drop(pool.release_token(token, ReleaseOutcome::Success)).await;
    within(Duration::from_secs(5), "the waiter", waiter)
        .await
        .unwrap()
        .expect("the waiter is served");
}

/// Item 2: one credential, five waiters; its holder disables it on release.
/// Every waiter fails at once with `NoCredentials`, and so does a new caller.
pub async fn disabling_the_last_credential_on_release_fails_every_waiter<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["only"]).await;
    let held = pool.acquire().await.unwrap();
    let mut waiters = Vec::new();
    for count in 1..=5 {
        let task_pool = pool.clone();
        waiters.push(tokio::spawn(async move {
            task_pool
                .acquire_timeout(Duration::from_secs(20))
                .await
                .map(|_| ())
        }));
        wait_for_waiters(&pool, count).await;
    }
    held.release_with(ReleaseOutcome::Disable("banned".into()))
        .await
        .unwrap();
    let started = Instant::now();
    for waiter in waiters {
        let result = within(Duration::from_secs(10), "a waiter", waiter)
            .await
            .unwrap();
        assert!(
            matches!(result, Err(Error::NoCredentials { .. })),
            "{result:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waiters learned late: {:?}",
        started.elapsed()
    );
    let fresh = within(
        Duration::from_secs(5),
        "a new caller",
        pool.acquire_timeout(Duration::from_secs(20)),
    )
    .await;
    assert!(
        matches!(fresh, Err(Error::NoCredentials { .. })),
        "{fresh:?}"
    );
}

/// Item 4: eight waiters queued one after another are served in arrival
/// order when a credential is added, and when one is enabled.
pub async fn arrival_order_holds_after_add_and_enable<F: Factory>(factory: &F) {
    for how in ["add", "enable"] {
        for _trial in 0..5 {
            let pool = pool_with(factory, None, &["held"]).await;
            if how == "enable" {
                pool.add(NewCredential::new("spare", "s")).await.unwrap();
                pool.disable("spare", "resting").await.unwrap();
            }
            let held = pool.acquire().await.unwrap();
            let waiters = RecordingWaiters::queue(&pool, 8, Duration::from_millis(1)).await;
            if how == "add" {
                pool.add(NewCredential::new("spare", "s")).await.unwrap();
            } else {
                pool.enable("spare").await.unwrap();
            }
            let served = waiters.served_order().await;
            drop(held);
            assert_eq!(served, (0..8).collect::<Vec<_>>(), "after {how}");
        }
    }
}

/// Item 8: a TTL too short to protect anything is refused, not obeyed.
pub async fn a_lease_ttl_below_the_minimum_is_refused<F: Factory>(factory: &F) {
    let pool = factory.pool(Some(Duration::ZERO)).await;
    pool.add(NewCredential::new("a", "s")).await.unwrap();
    for attempt in [
        pool.try_acquire().await.map(|lease| lease.is_some()),
        pool.acquire().await.map(|_| true),
        pool.acquire_timeout(Duration::from_secs(1))
            .await
            .map(|_| true),
    ] {
        match attempt {
            Err(Error::InvalidInput(invalid)) => assert_eq!(invalid.field, "lease TTL"),
            other => panic!("a zero TTL was taken: {other:?}"),
        }
    }
    let pool = pool_with(factory, Some(Duration::from_secs(60)), &["b"]).await;
    let mut lease = pool.acquire().await.unwrap();
    assert!(matches!(
        lease.renew_for(Duration::ZERO).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "the refused renewal changed nothing: b is still held"
    );
    lease
        .renew_for(credpool::MIN_LEASE_TTL)
        .await
        .expect("the smallest TTL is taken");
    // One millisecond later the lease may rightly have expired.
    let released = lease.release().await;
    assert!(
        matches!(released, Ok(()) | Err(Error::LeaseLost { .. })),
        "{released:?}"
    );
}

/// Durations up to `Duration::MAX` saturate on every store: a cool-down,
/// a TTL and a renewal that long are accepted, and the books stay right.
pub async fn the_longest_durations_saturate<F: Factory>(factory: &F) {
    let pool = pool_with(factory, Some(Duration::MAX), &["a", "b"]).await;
    let mut lease = pool.acquire().await.expect("a TTL of Duration::MAX");
    lease
        .renew_for(Duration::MAX)
        .await
        .expect("renew for ever");
    lease
        .release_with(ReleaseOutcome::CoolDown(Duration::MAX))
        .await
        .expect("cool down for ever");
    assert_eq!(pool.leases_out(), 0);
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.leases, stats.cooling_down), (0, 1));
}

/// Item 7: the events of one credential come in the order the store made
/// the changes: a view that counts holders from them never sees more
/// holders than the capacity.
pub async fn events_of_a_credential_come_in_commit_order<F: Factory>(factory: &F) {
    // One credential, and callers that never queue (`try_acquire`): under
    // group commit a release and the next grant often share a transaction,
    // and both callers hear of them at the same moment.
    let pool = pool_with(factory, None, &["only"]).await;
    let mut events = pool.subscribe();
    // 16 tasks × 20 leases: fewer events than the channel holds, so all of
    // them are still there when the checker reads them at the end.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut leases = 0;
                while leases < 20 {
                    let Some(lease) = pool.try_acquire().await.unwrap() else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    leases += 1;
                    if fastrand::bool() {
                        lease.release().await.unwrap();
                    } else {
                        drop(lease);
                    }
                }
            })
        })
        .collect();
    within(Duration::from_secs(60), "the tasks", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    leases_back(&pool).await;
    let mut holders = 0i64;
    let (mut acquired, mut released) = (0, 0);
    while let Some(event) = events.try_recv() {
        match event {
            Event::Acquired { lease_id, .. } => {
                holders += 1;
                acquired += 1;
                assert!(
                    holders <= 1,
                    "lease {lease_id} was announced while the last one was not released"
                );
            }
            Event::Released { .. } => {
                holders -= 1;
                released += 1;
            }
            _ => {}
        }
    }
    assert_eq!((acquired, released), (16 * 20, 16 * 20));
}

/// A disable must say why: an empty or blank reason is refused, and the
/// credential stays enabled.
pub async fn a_disable_without_a_reason_is_refused<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["alice"]).await;
    for blank in ["", "   "] {
        match pool.disable("alice", blank).await {
            Err(Error::InvalidInput(invalid)) => assert_eq!(invalid.field, "reason"),
            other => panic!("a blank reason was taken: {other:?}"),
        }
    }
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.disabled, stats.available), (0, 1), "{stats:?}");
    pool.disable("alice", "banned").await.unwrap();
    assert_eq!(pool.stats().await.unwrap().disabled, 1);
}

/// `revoke` ends every lease of a credential at once: a waiter is served
/// with it, the old holders' releases and renewals are fenced, the books
/// balance, and an event says so.
pub async fn revoke_frees_a_credential_at_once_and_fences_its_holders<F: Factory>(factory: &F) {
    let pool = factory.pool(Some(Duration::from_secs(600))).await;
    pool.add(NewCredential::new("busy", "s").capacity(2))
        .await
        .unwrap();
    pool.add(NewCredential::new("idle", "s")).await.unwrap();
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(pool.acquire().await.unwrap());
    }
    let at = leases
        .iter()
        .position(|lease| lease.credential().name() == "idle")
        .expect("every unit of both credentials is out");
    let idle = leases.remove(at);
    let (first, mut second) = (leases.remove(0), leases.remove(0));
    let waiter = queued_waiter(&pool).await;
    let mut events = pool.subscribe();
    assert_eq!(pool.revoke("busy").await.unwrap(), 2);
    let served = within(Duration::from_secs(10), "the waiter is served", waiter)
        .await
        .unwrap()
        .expect("the revoked credential went to the waiter");
    assert_eq!(served.credential().name(), "busy");
    assert!(matches!(second.renew().await, Err(Error::LeaseLost { .. })));
    assert!(matches!(
        first.release().await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        second.release().await,
        Err(Error::LeaseLost { .. })
    ));
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.leases, 2, "idle's lease and the waiter's: {stats:?}");
    let busy = pool.list().await.unwrap();
    let busy = busy.iter().find(|info| info.name == "busy").unwrap();
    assert_eq!(busy.holders, 1, "{busy:?}");
    let mut revoked = Vec::new();
    while let Some(event) = events.try_recv() {
        if let Event::Revoked { name, leases } = event {
            revoked.push((name.to_string(), leases));
        }
    }
    assert_eq!(revoked, [("busy".to_string(), 2)]);
    // The other credential's lease was not touched; nothing out, nothing ended.
    idle.release().await.unwrap();
    served.release().await.unwrap();
    assert_eq!(pool.revoke("busy").await.unwrap(), 0);
    assert!(matches!(
        pool.revoke("nobody").await,
        Err(Error::UnknownCredential { .. })
    ));
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.available, stats.leases), (2, 0), "{stats:?}");
}

/// `update` changes a credential's capacity, secret and extra text at once:
/// a higher capacity serves a waiter, one below the leases out is refused
/// and changes nothing else, a lower one is obeyed by later grants, and the
/// next lease has the new secret and extra.
pub async fn update_changes_capacity_secret_and_extra_at_once<F: Factory>(factory: &F) {
    let pool = factory.pool(Some(Duration::from_secs(600))).await;
    pool.add(NewCredential::new("a", "s1").extra("e1"))
        .await
        .unwrap();
    let first = pool.acquire().await.unwrap();
    let waiter = queued_waiter(&pool).await;
    pool.update("a", CredentialChange::new().capacity(2))
        .await
        .unwrap();
    let second = within(
        Duration::from_secs(10),
        "the new unit serves the waiter",
        waiter,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(second.credential().name(), "a");
    match pool
        .update("a", CredentialChange::new().capacity(1).secret("s2"))
        .await
    {
        Err(Error::InvalidInput(invalid)) => {
            assert_eq!(invalid.field, "capacity");
            assert!(invalid.to_string().contains("2 leases out"), "{invalid}");
        }
        other => panic!("a capacity below the holders was taken: {other:?}"),
    }
    first.release().await.unwrap();
    second.release().await.unwrap();
    let lease = pool.acquire().await.unwrap();
    assert_eq!(
        lease.credential().secret().expose(),
        "s1",
        "the refused change changed the secret"
    );
    lease.release().await.unwrap();
    pool.update(
        "a",
        CredentialChange::new().capacity(1).secret("s2").no_extra(),
    )
    .await
    .unwrap();
    let only = pool.acquire().await.unwrap();
    assert_eq!(only.credential().secret().expose(), "s2");
    assert_eq!(only.credential().extra(), None);
    assert_eq!(only.credential().capacity(), 1);
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "capacity 1 is one holder"
    );
    only.release().await.unwrap();
    pool.update("a", CredentialChange::new().extra("e3"))
        .await
        .unwrap();
    let lease = pool.acquire().await.unwrap();
    assert_eq!(lease.credential().extra(), Some("e3"));
    assert_eq!(lease.credential().secret().expose(), "s2");
    lease.release().await.unwrap();
    assert!(matches!(
        pool.update("nobody", CredentialChange::new().capacity(2))
            .await,
        Err(Error::UnknownCredential { .. })
    ));
    assert!(matches!(
        pool.update("a", CredentialChange::new().capacity(0)).await,
        Err(Error::InvalidInput(_))
    ));
    let info = &pool.list().await.unwrap()[0];
    assert_eq!((info.capacity, info.holders), (1, 0), "{info:?}");
}

/// `add_many_with_progress` tells how many entries are written as it goes:
/// never fewer than before, and all of them at the end.
pub async fn a_large_add_reports_its_progress<F: Factory>(factory: &F) {
    let pool = factory.pool(None).await;
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reports.clone();
    let added = pool
        .add_many_with_progress(
            (0..25_000).map(|i| NewCredential::new(format!("bulk-{i}"), "s")),
            false,
            move |written| seen.lock().unwrap().push(written),
        )
        .await
        .unwrap();
    assert_eq!(added, 25_000);
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.last(), Some(&25_000), "{reports:?}");
    assert!(
        reports.windows(2).all(|pair| pair[0] <= pair[1]),
        "{reports:?}"
    );
    assert_eq!(pool.stats().await.unwrap().total, 25_000);
}

/// Leases past their expiry do not hold up a lower capacity: a killed
/// worker's leases do not keep an operator from shrinking the credential.
pub async fn a_lower_capacity_does_not_count_expired_leases<F: Factory>(factory: &F) {
    let pool = factory.pool(Some(Duration::from_secs(600))).await;
    pool.add(NewCredential::new("a", "s").capacity(2))
        .await
        .unwrap();
    let mut leases = vec![pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];
    for lease in &mut leases {
        lease.renew_for(Duration::from_millis(20)).await.unwrap();
    }
    sleep(Duration::from_millis(80)).await;
    pool.update("a", CredentialChange::new().capacity(1))
        .await
        .expect("expired leases hold nothing");
    let info = &pool.list().await.unwrap()[0];
    assert_eq!((info.capacity, info.holders), (1, 0), "{info:?}");
    for lease in leases {
        assert!(matches!(
            lease.release().await,
            Err(Error::LeaseLost { .. })
        ));
    }
}

/// `Stats::uses` sums the use counts: every grant adds one, whichever
/// credential it was, so two readings give the grants in between (what
/// `watch` shows as grants per second, without reading every row).
pub async fn stats_count_every_grant_in_uses<F: Factory>(factory: &F) {
    let pool = pool_with(factory, None, &["a", "b", "c"]).await;
    assert_eq!(pool.stats().await.unwrap().uses, 0);
    for _ in 0..7 {
        pool.acquire().await.unwrap().release().await.unwrap();
    }
    let held = pool.acquire().await.unwrap();
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.uses, 8, "{stats:?}");
    let listed: u64 = pool.list().await.unwrap().iter().map(|c| c.use_count).sum();
    assert_eq!(stats.uses, listed);
    held.release().await.unwrap();
}

pub async fn list_shows_who_holds_each_lease_and_until_when<F: Factory>(factory: &F) {
    let ttl = Duration::from_secs(60);
    let pool = factory.pool(Some(ttl)).await;
    pool.add(NewCredential::new("a", "s").capacity(3))
        .await
        .unwrap();
    let leases_of_a = |pool: Pool<F::Store>| async move {
        let listed = pool.list().await.unwrap();
        listed[0].leases.clone()
    };
    assert!(leases_of_a(pool.clone()).await.is_empty());
    let before = std::time::SystemTime::now() - Duration::from_millis(5);
    let one = pool.acquire().await.unwrap();
    let two = pool.acquire_units(2).await.unwrap();
    let after = std::time::SystemTime::now() + Duration::from_millis(5);
    let this_process = format!("{}@", std::process::id());
    let leases = leases_of_a(pool.clone()).await;
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_eq!(
        leases.iter().map(|lease| lease.units).collect::<Vec<_>>(),
        [1, 2],
        "oldest first, with their units: {leases:?}"
    );
    for lease in &leases {
        let holder = lease.holder.as_deref().unwrap_or_default();
        assert!(holder.starts_with(&this_process), "{lease:?}");
        assert!(holder.len() > this_process.len(), "a host name: {lease:?}");
        assert!(
            lease.acquired_at >= before && lease.acquired_at <= after,
            "{lease:?}"
        );
        let lives = lease
            .expires_at
            .expect("a lease with a TTL expires")
            .duration_since(lease.acquired_at)
            .unwrap();
        assert!(lives.abs_diff(ttl) < Duration::from_secs(1), "{lease:?}");
    }
    // A lease handed to a waiter of this process is this process's too.
    let waiter = queued_waiter(&pool).await;
    one.release().await.unwrap();
    let handed = within(Duration::from_secs(10), "the hand-off", waiter)
        .await
        .unwrap()
        .unwrap();
    let leases = leases_of_a(pool.clone()).await;
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_held_by_this_process(&leases[1]);
    two.release().await.unwrap();
    handed.release().await.unwrap();
    assert!(leases_of_a(pool.clone()).await.is_empty());
}

/// `info(name)` gives the credential as `list` shows it (state, holders,
/// leases, limits), and `None` for a name the pool does not hold.
pub async fn info_reads_one_credential_as_list_shows_it<F: Factory>(factory: &F) {
    let pool = factory.pool(Some(Duration::from_secs(60))).await;
    let rate: credpool::Rate = "5/1m".parse().unwrap();
    pool.add_many([
        NewCredential::new("first", "s"),
        NewCredential::new("quota", "s")
            .capacity(2)
            .rate_for("search", rate),
        NewCredential::new("banned", "s").disabled("banned"),
        NewCredential::new("last", "s"),
    ])
    .await
    .unwrap();
    pool.remove("first").await.unwrap();
    let held = pool
        .acquire_matching(&credpool::Want::scope("search").unwrap())
        .await
        .unwrap();
    let listed = pool.list().await.unwrap();
    assert_eq!(listed.len(), 3);
    for credential in &listed {
        let info = pool.info(&credential.name).await.unwrap();
        assert_eq!(info.as_ref(), Some(credential));
    }
    assert_eq!(pool.info("quota").await.unwrap().unwrap().leases.len(), 1);
    assert_eq!(pool.info("first").await.unwrap(), None, "removed");
    assert_eq!(pool.info("nobody").await.unwrap(), None);
    held.release().await.unwrap();
}

/// Pages of `list_page`, each after the last id of the one before, give
/// the whole list in order, each credential once, and nothing past the end.
pub async fn list_pages_cover_the_list_in_order<F: Factory>(factory: &F) {
    let names: Vec<String> = (0..25).map(|i| format!("paged-{i}")).collect();
    let pool = pool_with(
        factory,
        None,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    for gone in ["paged-0", "paged-9", "paged-10", "paged-24"] {
        pool.remove(gone).await.unwrap();
    }
    let held = pool.acquire().await.unwrap();
    let whole = pool.list().await.unwrap();
    assert_eq!(whole.len(), 21);
    let (mut after, mut paged) = (None, Vec::new());
    loop {
        let page = pool.list_page(after, 10).await.unwrap();
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        assert!(after.is_none_or(|after| last.id > after), "no page repeats");
        after = Some(last.id);
        paged.extend(page);
        assert!(paged.len() <= whole.len(), "{paged:?}");
    }
    assert_eq!(paged, whole, "the pages, end to end, are the list");
    assert!(pool.list_page(after, 10).await.unwrap().is_empty());
    assert!(pool.list_page(None, 0).await.unwrap().is_empty());
    let from_middle = pool.list_page(Some(whole[4].id), 3).await.unwrap();
    assert_eq!(from_middle, whole[5..8].to_vec());
    held.release().await.unwrap();
}

/// A large add (an import: the SQLite store stages one beside its
/// thread) keeps every field of every entry, as the memory store does, in
/// input order; a name taken or repeated fails the whole add at the first
/// entry that has it, or is skipped.
pub async fn a_large_add_keeps_every_field_and_is_all_or_nothing<F: Factory>(factory: &F) {
    const ENTRIES: usize = 12_000;
    let search: credpool::Rate = "5/1m".parse().unwrap();
    let every: credpool::Rate = "3/1m".parse().unwrap();
    let default: credpool::Rate = "10/1h".parse().unwrap();
    let entry = |i: usize| {
        let mut credential = NewCredential::new(format!("bulk-{i}"), format!("secret-{i}"))
            .capacity(1 + i as u32 % 3);
        if i % 7 == 0 {
            credential = credential.extra(format!("cookie-{i}"));
        }
        if i % 11 == 0 {
            credential = credential.disabled(format!("banned {i}"));
        }
        if i % 13 == 0 {
            credential = credential.rate_for("search", search);
        }
        if i % 17 == 0 {
            credential = credential.rate(every);
        }
        credential
    };
    let model = Pool::in_memory();
    let pool = factory.pool(None).await;
    model
        .set_default_rate(Some("search"), Some(default))
        .await
        .unwrap();
    pool.set_default_rate(Some("search"), Some(default))
        .await
        .unwrap();
    pool.add(NewCredential::new("bulk-7000", "there before"))
        .await
        .unwrap();

    // Fails whole, naming the first entry whose name is taken or repeated.
    let taken = pool.add_many((0..ENTRIES).map(entry)).await;
    assert!(
        matches!(&taken, Err(Error::DuplicateName { name, entry: Some(7000), .. }) if name == "bulk-7000"),
        "{taken:?}"
    );
    let repeated = pool
        .add_many(
            (0..ENTRIES)
                .map(|i| if i == 9000 { entry(100) } else { entry(i) })
                .filter(|c| c.name() != "bulk-7000"),
        )
        .await;
    assert!(
        matches!(&repeated, Err(Error::DuplicateName { name, entry: Some(8999), .. }) if name == "bulk-100"),
        "the second bulk-100 (entry 8999 once bulk-7000 is left out): {repeated:?}"
    );
    assert_eq!(pool.list().await.unwrap().len(), 1, "nothing was added");

    // Skipping keeps the first of each name and the one already there.
    let input = || (0..ENTRIES).map(|i| if i == 9000 { entry(100) } else { entry(i) });
    let added = pool.add_many_skip_existing(input()).await.unwrap();
    assert_eq!(added, ENTRIES - 2);
    model
        .add(NewCredential::new("bulk-7000", "there before"))
        .await
        .unwrap();
    model.add_many_skip_existing(input()).await.unwrap();
    let summary = |listed: Vec<credpool::CredentialInfo>| {
        listed
            .into_iter()
            .map(|c| {
                let limits: Vec<_> = c
                    .limits
                    .iter()
                    .map(|limit| (limit.scope.clone(), limit.rate, limit.default))
                    .collect();
                (c.name, c.capacity, c.state, c.has_extra, limits)
            })
            .collect::<Vec<_>>()
    };
    let listed = summary(pool.list().await.unwrap());
    assert_eq!(listed.len(), ENTRIES - 1);
    let expected = summary(model.list().await.unwrap());
    for (got, want) in listed.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    assert_eq!(listed, expected);
    let secrets: Vec<String> = pool
        .reveal()
        .await
        .unwrap()
        .iter()
        .map(|c| c.secret().expose().to_string())
        .collect();
    assert_eq!(secrets[1], "secret-0");
    assert_eq!(secrets[ENTRIES - 2], format!("secret-{}", ENTRIES - 1));
}

/// After a migration that added the holder of leases: a lease granted
/// before it (of pool's only credential, of capacity 2 or more) has no
/// holder, and the next one is this process's.
pub async fn holders_are_recorded_after_a_migration<S: Store>(pool: &Pool<S>) {
    let leases = pool.list().await.unwrap()[0].leases.clone();
    assert_eq!(
        leases.len(),
        1,
        "the lease held across the migration: {leases:?}"
    );
    assert_eq!(leases[0].holder, None);
    let lease = pool.acquire().await.unwrap();
    let leases = pool.list().await.unwrap()[0].leases.clone();
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_held_by_this_process(&leases[1]);
    lease.release().await.unwrap();
}

/// Asserts that this process (`<pid>@<host>`) holds `lease`.
#[track_caller]
pub fn assert_held_by_this_process(lease: &credpool::LeaseInfo) {
    let this_process = format!("{}@", std::process::id());
    assert!(
        lease.holder.as_deref().is_some_and(
            |holder| holder.starts_with(&this_process) && holder.len() > this_process.len()
        ),
        "held by this process: {lease:?}"
    );
}

/// A task that waits (up to 30 s) for a lease of `pool`, once the pool
/// counts it among its waiters.
async fn queued_waiter<S: Store>(
    pool: &Pool<S>,
) -> tokio::task::JoinHandle<credpool::Result<credpool::Lease<S>>> {
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire_timeout(Duration::from_secs(30)).await }
    });
    within(Duration::from_secs(10), "the waiter queues", async {
        while pool.stats().await.unwrap().waiters == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    waiter
}

/// `list` reads the credentials, their limits and their leases in one
/// snapshot: while tasks take and give back leases, every credential it
/// shows holds exactly the units of the leases it shows.
pub async fn a_list_is_one_snapshot_while_leases_change<F: Factory>(factory: &F) {
    let pool = factory.pool(Some(Duration::from_secs(600))).await;
    pool.add_many((0..4).map(|i| NewCredential::new(format!("c{i}"), "s").capacity(2)))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let lease = pool.acquire().await.unwrap();
                    tokio::task::yield_now().await;
                    lease.release().await.unwrap();
                }
            })
        })
        .collect();
    let mut torn = Vec::new();
    let (mut busy, mut lists) = (0, 0);
    // At least 300 lists, and until 100 of the rows shown were held (the
    // workers run meanwhile); a generous deadline for a loaded machine.
    let started = std::time::Instant::now();
    while (lists < 300 || busy < 100) && started.elapsed() < Duration::from_secs(30) {
        lists += 1;
        tokio::task::yield_now().await;
        for info in pool.list().await.unwrap() {
            let units: u32 = info.leases.iter().map(|lease| lease.units).sum();
            busy += usize::from(info.holders > 0);
            if units != info.holders {
                torn.push((info.name.clone(), info.holders, units));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        busy >= 100,
        "the leases changed under the lists: {busy} busy rows"
    );
    assert!(
        torn.is_empty(),
        "{} torn rows (name, holders, units of the leases shown), first {:?}",
        torn.len(),
        &torn[..torn.len().min(5)]
    );
}
