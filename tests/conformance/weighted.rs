//! Weighted grants (`acquire_units`), on every store (`weighted_suite!`):
//! several units of one credential's capacity at once, counted against its
//! quotas, first come, first served with lighter asks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use credpool::store::Want;
use credpool::{Error, NewCredential, Pool, Store};
use tokio::time::sleep;

use super::{wait_for_waiters, within, Factory};
use crate::common::checker::HoldLog;

/// The stores that keep for a weighted waiter only the credentials it can
/// ever use (memory, SQLite): two more tests. (On Postgres a weighted
/// ticket waiting makes later weighted asks queue behind it, and keeps a
/// credential whose quota is below its units: slower, never unfair.)
#[macro_export]
macro_rules! weighted_keeping_suite {
    ($factory:expr) => {
        $crate::weighted_suite!(@tests $factory;
            weighted_waiters_for_different_credentials_do_not_hold_each_other_up,
            a_credential_whose_quota_is_below_the_units_is_not_kept,
        );
    };
}

/// Generates one test per weighted conformance test for a factory.
#[macro_export]
macro_rules! weighted_suite {
    ($factory:expr) => {
        $crate::weighted_suite!(@tests $factory;
            a_weighted_grant_takes_its_units_and_gives_them_back,
            units_no_credential_can_take_fail_at_once,
            weighted_grants_never_exceed_capacity,
            a_weighted_waiter_is_not_overtaken_by_lighter_asks,
            a_weighted_grant_counts_its_units_against_quotas,
            a_weighted_grant_for_a_scope_and_a_name,
            an_expired_weighted_lease_gives_back_all_its_units,
            revoking_a_weighted_lease_gives_back_all_its_units,
            a_weighted_waiter_that_gives_up_lets_those_behind_it_in,
            a_weighted_waiter_hears_when_no_credential_can_take_its_units,
            a_weighted_waiter_holds_up_only_what_it_may_use,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::conformance::weighted::$name(&$factory).await;
            }
        )*
    };
}

async fn pool_of<F: Factory>(factory: &F, credentials: Vec<NewCredential>) -> Pool<F::Store> {
    let pool = factory.pool(Some(Duration::from_secs(30))).await;
    pool.add_many(credentials).await.expect("add credentials");
    pool
}

async fn holders<S: Store>(pool: &Pool<S>, name: &str) -> u32 {
    let list = pool.list().await.unwrap();
    list.iter()
        .find(|info| info.name == name)
        .map(|info| info.holders)
        .unwrap()
}

pub async fn a_weighted_grant_takes_its_units_and_gives_them_back<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a").capacity(5)]).await;
    let heavy = pool.acquire_units(3).await.unwrap();
    assert_eq!(heavy.units(), 3);
    assert_eq!(heavy.credential().name(), "alice");
    assert_eq!(holders(&pool, "alice").await, 3, "three units are held");
    assert!(
        pool.try_acquire_units(3).await.unwrap().is_none(),
        "only two are free"
    );
    let two = pool.try_acquire_units(2).await.unwrap().expect("two free");
    assert_eq!(two.units(), 2);
    assert!(pool.try_acquire().await.unwrap().is_none(), "all five held");
    assert_eq!(holders(&pool, "alice").await, 5);
    heavy.release().await.unwrap();
    assert_eq!(holders(&pool, "alice").await, 2, "all three came back");
    let again = pool
        .try_acquire_units(3)
        .await
        .unwrap()
        .expect("three free");
    assert_eq!(again.units(), 3);
    let one = pool.try_acquire().await.unwrap();
    assert!(one.is_none(), "two plus three is five");
    drop(again);
    two.release().await.unwrap();
    // A dropped weighted lease gives its units back too.
    within(Duration::from_secs(10), "five units free again", async {
        loop {
            if let Some(all) = pool.try_acquire_units(5).await.unwrap() {
                assert_eq!(all.units(), 5);
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        pool.acquire().await.unwrap().units(),
        1,
        "plain is one unit"
    );
}

pub async fn units_no_credential_can_take_fail_at_once<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("small", "s").capacity(2),
            NewCredential::new("large", "l").capacity(4),
            NewCredential::new("huge", "h")
                .capacity(9)
                .disabled("banned"),
            NewCredential::new("quota", "q")
                .capacity(8)
                .rate_for("search", "3/1m".parse().unwrap()),
        ],
    )
    .await;
    // Even while a waiter would otherwise wait: the answer is at once.
    let large = Want::any().named("large").unwrap().units(4).unwrap();
    let _held = pool.acquire_matching(&large).await.unwrap();
    let asked = within(
        Duration::from_secs(5),
        "an impossible ask",
        pool.acquire_units(9),
    )
    .await;
    match asked {
        Err(
            error @ Error::TooManyUnits {
                units: 9, most: 8, ..
            },
        ) => {
            let text = error.to_string();
            assert!(
                text.contains("9 units") && text.contains("at most 8"),
                "{text}"
            );
        }
        other => panic!("expected TooManyUnits, got {other:?}"),
    }
    let named = Want::any().named("small").unwrap().units(3).unwrap();
    match within(
        Duration::from_secs(5),
        "named",
        pool.acquire_matching(&named),
    )
    .await
    {
        Err(Error::TooManyUnits {
            most: 2,
            named: true,
            ..
        }) => {}
        other => panic!("expected TooManyUnits for small, got {other:?}"),
    }
    // In search, quota's 3 per window allow at most 3 at once: large's
    // capacity of 4 is the most there.
    let scoped = Want::scope("search").unwrap().units(5).unwrap();
    match within(
        Duration::from_secs(5),
        "scoped",
        pool.acquire_matching(&scoped),
    )
    .await
    {
        Err(Error::TooManyUnits { most: 4, .. }) => {}
        other => panic!("expected TooManyUnits in search, got {other:?}"),
    }
    assert!(pool.acquire_units(0).await.is_err(), "0 units is no ask");
    assert!(Want::any().units(0).is_err());
    // Within what exists, a weighted ask waits rather than fails.
    let waited = pool
        .acquire_units_timeout(8, Duration::from_millis(50))
        .await;
    assert!(waited.is_ok(), "quota's 8 units are free: {waited:?}");
}

/// Many tasks ask for 1 to 4 units of three credentials, some giving up
/// while they wait: the hold log, counted in units, never exceeds a
/// capacity.
pub async fn weighted_grants_never_exceed_capacity<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        (0..3)
            .map(|n| NewCredential::new(format!("c{n}"), "s").capacity(4))
            .collect(),
    )
    .await;
    let log = Arc::new(HoldLog::new());
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let (pool, log) = (pool.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task);
            let end = tokio::time::Instant::now() + Duration::from_millis(1200);
            while tokio::time::Instant::now() < end {
                let units = rng.u32(1..=4);
                let patience = Duration::from_millis(rng.u64(1..500));
                let Ok(lease) = tokio::time::timeout(patience, pool.acquire_units(units)).await
                else {
                    continue;
                };
                let lease = lease.unwrap();
                assert_eq!(lease.units(), units);
                let name = lease.credential().name().to_string();
                log.start_units(&name, 4, lease.id().get(), units);
                sleep(Duration::from_millis(rng.u64(0..4))).await;
                log.end(lease.id().get());
                if rng.bool() {
                    lease.release().await.unwrap();
                } else {
                    drop(lease);
                }
            }
        }));
    }
    for task in tasks {
        within(Duration::from_secs(30), "the tasks", task)
            .await
            .unwrap();
    }
    log.check(|_| 4).expect("no credential past its capacity");
    assert!(log.grants() > 50, "work was done: {} grants", log.grants());
    let peak = (0..3).map(|n| log.peak(&format!("c{n}"))).max().unwrap();
    assert!(peak >= 3, "the credentials were used to capacity: {peak}");
}

/// A weighted waiter first in line is served before lighter asks that
/// came after it, though units came free for them all along.
pub async fn a_weighted_waiter_is_not_overtaken_by_lighter_asks<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a").capacity(3)]).await;
    let first = pool.acquire().await.unwrap();
    let second = pool.acquire().await.unwrap();
    let order: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let heavy = {
        let (pool, order) = (pool.clone(), order.clone());
        tokio::spawn(async move {
            let lease = pool.acquire_units(3).await.unwrap();
            order.lock().unwrap().push("heavy");
            sleep(Duration::from_millis(20)).await;
            lease.release().await.unwrap();
        })
    };
    wait_for_waiters(&pool, 1).await;
    // One unit is free, but the heavy ask at the head needs three: lighter
    // asks behind it wait too, and so does a try.
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "a try does not jump the heavy waiter"
    );
    let mut lights = Vec::new();
    for turn in 0..4u64 {
        let (task_pool, order) = (pool.clone(), order.clone());
        lights.push(tokio::spawn(async move {
            let lease = task_pool.acquire().await.unwrap();
            order.lock().unwrap().push("light");
            sleep(Duration::from_millis(5)).await;
            lease.release().await.unwrap();
        }));
        wait_for_waiters(&pool, turn + 2).await;
    }
    sleep(Duration::from_millis(50)).await;
    assert!(
        order.lock().unwrap().is_empty(),
        "nobody was served past the heavy waiter: {:?}",
        order.lock().unwrap()
    );
    first.release().await.unwrap();
    second.release().await.unwrap();
    within(Duration::from_secs(10), "the heavy waiter", heavy)
        .await
        .unwrap();
    for light in lights {
        within(Duration::from_secs(10), "the light waiters", light)
            .await
            .unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 5);
    assert_eq!(order[0], "heavy", "served first: {order:?}");
}

pub async fn a_weighted_grant_counts_its_units_against_quotas<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![NewCredential::new("alice", "a")
            .capacity(10)
            .rate("5/1m".parse().unwrap())],
    )
    .await;
    pool.acquire_units(3)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(
        pool.try_acquire_units(3).await.unwrap().is_none(),
        "three of five were counted: three more exceed the quota"
    );
    let two = pool.try_acquire_units(2).await.unwrap().expect("two left");
    assert!(pool.try_acquire().await.unwrap().is_none(), "quota used up");
    let info = pool.list().await.unwrap();
    let limit = info[0]
        .limits
        .iter()
        .find(|limit| limit.scope.is_none())
        .expect("the quota is listed");
    assert_eq!(limit.used, 5, "{limit:?}");
    assert_eq!(limit.remaining, Some(0));
    drop(two);
}

pub async fn a_weighted_grant_for_a_scope_and_a_name<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("alice", "a")
                .capacity(4)
                .rate_for("search", "2/1m".parse().unwrap()),
            NewCredential::new("bob", "b").capacity(4),
        ],
    )
    .await;
    let want = Want::scope("search").unwrap().units(2).unwrap();
    let mut names = Vec::new();
    let mut leases = Vec::new();
    for _ in 0..2 {
        let lease = pool.acquire_matching(&want).await.unwrap();
        assert_eq!(lease.units(), 2);
        names.push(lease.credential().name().to_string());
        leases.push(lease);
    }
    names.sort();
    assert_eq!(names, ["alice", "bob"]);
    drop(leases);
    // alice's quota of search is used up by the two units she served.
    let alice = Want::scope("search")
        .unwrap()
        .named("alice")
        .unwrap()
        .units(1)
        .unwrap();
    let mut tried = None;
    for _ in 0..200 {
        // The dropped leases come back in the background.
        if holders(&pool, "alice").await == 0 {
            tried = Some(pool.try_acquire_matching(&alice).await.unwrap());
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    assert!(
        tried.expect("alice came back").is_none(),
        "her quota of search is used"
    );
    let timeline = Want::scope("timeline")
        .unwrap()
        .named("alice")
        .unwrap()
        .units(4)
        .unwrap();
    let lease = pool.try_acquire_matching(&timeline).await.unwrap();
    assert_eq!(lease.expect("alice serves the timeline").units(), 4);
}

pub async fn an_expired_weighted_lease_gives_back_all_its_units<F: Factory>(factory: &F) {
    let pool = factory.pool(Some(Duration::from_millis(300))).await;
    pool.add(NewCredential::new("alice", "a").capacity(3))
        .await
        .unwrap();
    let token = pool.acquire_units(3).await.unwrap().into_token();
    assert!(pool.try_acquire().await.unwrap().is_none());
    let lease = within(
        Duration::from_secs(10),
        "the units after the expiry",
        pool.acquire_units(3),
    )
    .await
    .unwrap();
    assert_eq!(lease.units(), 3);
    assert!(
        pool.release_token(token, credpool::ReleaseOutcome::Success)
            .await
            .is_err(),
        "the expired lease is fenced"
    );
}

pub async fn revoking_a_weighted_lease_gives_back_all_its_units<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a").capacity(3)]).await;
    let lease = pool.acquire_units(3).await.unwrap();
    assert_eq!(pool.revoke("alice").await.unwrap(), 1, "one lease ended");
    assert_eq!(holders(&pool, "alice").await, 0, "all three units back");
    let again = pool.try_acquire_units(3).await.unwrap();
    assert_eq!(again.expect("three free again").units(), 3);
    assert!(
        lease.release().await.is_err(),
        "the revoked lease is fenced"
    );
}

/// A weighted waiter at the head holds up a lighter one behind it while
/// the units it needs are not free; when it gives up, the lighter one is
/// served at once with the units that were free all along (no TTL, no
/// poll would wake it on the memory store).
pub async fn a_weighted_waiter_that_gives_up_lets_those_behind_it_in<F: Factory>(factory: &F) {
    let pool = factory.pool(None).await;
    pool.add(NewCredential::new("alice", "a").capacity(5))
        .await
        .unwrap();
    let _held = pool.acquire_units(3).await.unwrap();
    let heavy = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.acquire_units_timeout(3, Duration::from_millis(300))
                .await
        })
    };
    wait_for_waiters(&pool, 1).await;
    let light = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|lease| lease.units()) })
    };
    wait_for_waiters(&pool, 2).await;
    let gave_up = within(Duration::from_secs(10), "the heavy waiter", heavy)
        .await
        .unwrap();
    assert!(matches!(gave_up, Err(Error::Timeout { .. })), "{gave_up:?}");
    let served = within(Duration::from_secs(5), "the light waiter", light)
        .await
        .unwrap();
    assert_eq!(served.unwrap(), 1);
}

/// A weighted waiter whose units no credential can hold any more (a
/// capacity lowered while it waits) hears so, rather than hold up the line
/// for ever; a lighter ask behind it is served.
pub async fn a_weighted_waiter_hears_when_no_credential_can_take_its_units<F: Factory>(
    factory: &F,
) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a").capacity(4)]).await;
    let held = pool.acquire().await.unwrap();
    let heavy = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_units(4).await.map(|lease| lease.units()) })
    };
    wait_for_waiters(&pool, 1).await;
    pool.update("alice", credpool::CredentialChange::new().capacity(2))
        .await
        .unwrap();
    let heard = within(Duration::from_secs(10), "the heavy waiter", heavy)
        .await
        .unwrap();
    assert!(
        matches!(
            heard,
            Err(Error::TooManyUnits {
                units: 4,
                most: 2,
                ..
            })
        ),
        "{heard:?}"
    );
    let light = within(Duration::from_secs(5), "a light ask", pool.acquire()).await;
    assert_eq!(light.unwrap().credential().name(), "alice");
    drop(held);
}

/// A weighted waiter keeps only the credentials it may use: one waiting
/// for alice does not hold up asks that bob serves, and one whose scope is
/// out of quota does not hold up other scopes.
pub async fn a_weighted_waiter_holds_up_only_what_it_may_use<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("alice", "a")
                .capacity(3)
                .rate_for("search", "2/1h".parse().unwrap()),
            NewCredential::new("bob", "b").capacity(3),
        ],
    )
    .await;
    let alice_one = Want::any().named("alice").unwrap();
    let held = pool.acquire_matching(&alice_one).await.unwrap();
    let alice_three = Want::any().named("alice").unwrap().units(3).unwrap();
    let heavy = {
        let (pool, want) = (pool.clone(), alice_three.clone());
        tokio::spawn(async move {
            pool.acquire_matching(&want)
                .await
                .map(|lease| lease.units())
        })
    };
    wait_for_waiters(&pool, 1).await;
    // bob serves a plain ask at once; alice's free units are kept.
    let plain = within(Duration::from_secs(5), "a plain ask", pool.acquire())
        .await
        .unwrap();
    assert_eq!(plain.credential().name(), "bob");
    // And again: bob has room, alice's units stay kept.
    let again = pool.try_acquire().await.unwrap().expect("bob has room");
    assert_eq!(again.credential().name(), "bob", "alice's units are kept");
    drop(again);
    assert!(
        pool.try_acquire_matching(&alice_one)
            .await
            .unwrap()
            .is_none(),
        "alice's free units are kept for the heavy waiter"
    );
    held.release().await.unwrap();
    let heavy = within(Duration::from_secs(10), "the heavy waiter", heavy)
        .await
        .unwrap();
    assert_eq!(heavy.unwrap(), 3);
    drop(plain);
    // alice's searches are used up for an hour: a weighted search for her
    // waits, and keeps nothing from her other scopes.
    within(Duration::from_secs(10), "alice free again", async {
        while holders(&pool, "alice").await > 0 {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let searches = Want::scope("search")
        .unwrap()
        .named("alice")
        .unwrap()
        .units(2)
        .unwrap();
    pool.acquire_matching(&searches)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let blocked = {
        let (pool, want) = (pool.clone(), searches.clone());
        tokio::spawn(async move {
            pool.acquire_matching_timeout(&want, Duration::from_secs(30))
                .await
                .map(|_| ())
        })
    };
    wait_for_waiters(&pool, 1).await;
    let timeline = Want::scope("timeline").unwrap().named("alice").unwrap();
    let other = within(
        Duration::from_secs(5),
        "a timeline ask while a weighted search waits",
        pool.acquire_matching(&timeline),
    )
    .await;
    assert_eq!(other.unwrap().credential().name(), "alice");
    assert!(!blocked.is_finished(), "the search still waits");
    blocked.abort();
}

/// A weighted waiter for one credential keeps nothing from a weighted ask
/// that another credential serves.
pub async fn weighted_waiters_for_different_credentials_do_not_hold_each_other_up<F: Factory>(
    factory: &F,
) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("x", "x").capacity(2),
            NewCredential::new("y", "y").capacity(2),
        ],
    )
    .await;
    let on_x = Want::any().named("x").unwrap().units(2).unwrap();
    let held = pool.acquire_matching(&on_x).await.unwrap();
    let waiting = {
        let (pool, want) = (pool.clone(), on_x.clone());
        tokio::spawn(async move {
            pool.acquire_matching(&want)
                .await
                .map(|lease| lease.units())
        })
    };
    wait_for_waiters(&pool, 1).await;
    let on_y = within(
        Duration::from_secs(5),
        "two units of y while x's waiter waits",
        pool.acquire_units(2),
    )
    .await
    .unwrap();
    assert_eq!(on_y.credential().name(), "y");
    held.release().await.unwrap();
    let served = within(Duration::from_secs(10), "x's waiter", waiting)
        .await
        .unwrap();
    assert_eq!(served.unwrap(), 2);
}

/// A credential whose quota allows fewer grants than a weighted waiter
/// asks for can never serve it, so it is not kept for it: a lighter ask
/// takes it at once.
pub async fn a_credential_whose_quota_is_below_the_units_is_not_kept<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("small-quota", "a")
                .capacity(4)
                .rate("2/1h".parse().unwrap()),
            NewCredential::new("busy", "b").capacity(4),
        ],
    )
    .await;
    let busy = Want::any().named("busy").unwrap().units(4).unwrap();
    let held = pool.acquire_matching(&busy).await.unwrap();
    let heavy = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.acquire_units(3)
                .await
                .map(|lease| lease.credential().name().to_string())
        })
    };
    wait_for_waiters(&pool, 1).await;
    // (Asked by name: on the memory store a plain ask waits behind the
    // plain weighted one in its line, first come, first served.)
    let small = Want::any().named("small-quota").unwrap();
    let light = within(
        Duration::from_secs(5),
        "a light ask while the heavy one waits for busy",
        pool.acquire_matching(&small),
    )
    .await
    .unwrap();
    assert_eq!(light.credential().name(), "small-quota");
    drop(light);
    held.release().await.unwrap();
    let served = within(Duration::from_secs(10), "the heavy waiter", heavy)
        .await
        .unwrap();
    assert_eq!(served.unwrap(), "busy");
}

/// After a migration from the schema before weighted grants, with `token`
/// a one-unit lease of the only credential (capacity 4, quota 6 per hour)
/// taken before it: that lease comes back as one unit, and weighted grants
/// work, counted against the quota with the grant from before.
pub async fn weighted_grants_work_after_a_migration<S: Store>(
    pool: &Pool<S>,
    token: credpool::LeaseToken,
) {
    pool.release_token(token, credpool::ReleaseOutcome::Success)
        .await
        .expect("the lease from before comes back: one unit");
    let heavy = pool.acquire_units(4).await.unwrap();
    assert_eq!(heavy.units(), 4);
    heavy.release().await.unwrap();
    // One grant before and four now count against the quota of six.
    assert!(pool.try_acquire_units(2).await.unwrap().is_none());
    assert!(pool.try_acquire().await.unwrap().is_some());
}
