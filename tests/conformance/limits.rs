//! Scopes, quotas, reported budgets and sticky acquire, on every store that
//! keeps them (`limits_suite!`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credpool::store::Want;
use credpool::{
    CredentialChange, CredentialState, Error, Event, Limited, NewCredential, Pool, Rate,
    ReleaseOutcome, Store,
};
use tokio::time::sleep;

use super::{within, Factory};
use crate::common::checker::{quota_violations, Granted};

/// Generates one test per limits conformance test for a factory.
#[macro_export]
macro_rules! limits_suite {
    ($factory:expr) => {
        $crate::limits_suite!(@tests $factory;
            a_scoped_cool_down_blocks_only_its_scope,
            an_unscoped_limit_blocks_every_scope,
            a_reported_budget_allows_that_many_more,
            quotas_are_never_exceeded,
            a_waiter_is_served_when_the_window_frees_a_grant,
            a_blocked_scope_does_not_hold_up_other_scopes,
            sticky_acquire_waits_for_its_credential_in_arrival_order,
            sticky_acquire_of_an_unknown_or_disabled_credential_fails,
            a_named_waiter_hears_when_its_credential_is_disabled,
            rates_are_listed_changed_and_removed,
            a_pool_default_rate_holds_where_a_credential_has_none_of_its_own,
            reset_limits_ends_cool_downs_but_keeps_quotas,
            a_limited_release_sends_its_event,
            bad_scopes_and_rates_are_refused,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::conformance::limits::$name(&$factory).await;
            }
        )*
    };
}

fn ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Leases a credential for `want` and gives it back at once.
async fn use_once<S: Store>(pool: &Pool<S>, want: &Want) {
    pool.acquire_matching(want)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

async fn pool_of<F: Factory>(factory: &F, credentials: Vec<NewCredential>) -> Pool<F::Store> {
    let pool = factory.pool(Some(Duration::from_secs(30))).await;
    pool.add_many(credentials).await.expect("add credentials");
    pool
}

fn limit_of<'a>(
    info: &'a credpool::CredentialInfo,
    scope: Option<&str>,
) -> Option<&'a credpool::ScopeLimit> {
    info.limits
        .iter()
        .find(|limit| limit.scope.as_deref() == scope)
}

pub async fn a_scoped_cool_down_blocks_only_its_scope<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a")]).await;
    let lease = pool.acquire_for("search").await.unwrap();
    let reset = SystemTime::now() + Duration::from_secs(60);
    lease
        .release_with(ReleaseOutcome::Limited(
            Limited::until(reset).scope("search").unwrap(),
        ))
        .await
        .unwrap();
    assert!(
        pool.try_acquire_for("search").await.unwrap().is_none(),
        "search cools down"
    );
    let timeline = pool.try_acquire_for("timeline").await.unwrap();
    assert!(timeline.is_some(), "another scope is still served");
    drop(timeline);
    super::leases_back(&pool).await;
    let plain = pool.try_acquire().await.unwrap();
    assert!(plain.is_some(), "the default scope is still served");
    drop(plain);
    super::leases_back(&pool).await;
    let listed = pool.list().await.unwrap();
    assert_eq!(
        listed[0].state,
        CredentialState::Available,
        "a scoped cool-down is not a cool-down of the credential"
    );
    let stats = pool.stats().await.unwrap();
    assert_eq!(
        (stats.scope_blocked, stats.cooling_down, stats.available),
        (1, 0, 1),
        "{stats:?}"
    );
    let search = limit_of(&listed[0], Some("search")).expect("the scope is listed");
    let blocked = search.blocked_until.expect("blocked until the reset");
    assert!(
        (ms(blocked) - ms(reset)).abs() <= 1,
        "{blocked:?} {reset:?}"
    );
    assert_eq!(search.remaining, Some(0));
}

pub async fn an_unscoped_limit_blocks_every_scope<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a")]).await;
    let lease = pool.acquire_for("search").await.unwrap();
    lease
        .release_with(ReleaseOutcome::Limited(Limited::after(
            Duration::from_secs(60),
        )))
        .await
        .unwrap();
    for scope in ["search", "timeline"] {
        assert!(
            pool.try_acquire_for(scope).await.unwrap().is_none(),
            "{scope} is blocked too"
        );
    }
    assert!(pool.try_acquire().await.unwrap().is_none());
    let listed = pool.list().await.unwrap();
    assert!(
        matches!(listed[0].state, CredentialState::CoolingDown { .. }),
        "{:?}",
        listed[0].state
    );
    // A plain cool-down blocks every scope as well.
    let pool = pool_of(factory, vec![NewCredential::new("bob", "b")]).await;
    let lease = pool.acquire().await.unwrap();
    lease
        .release_with(ReleaseOutcome::CoolDown(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(pool.try_acquire_for("search").await.unwrap().is_none());
}

pub async fn a_reported_budget_allows_that_many_more<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a")]).await;
    let reset = SystemTime::now() + Duration::from_secs(60);
    let lease = pool.acquire_for("search").await.unwrap();
    lease
        .release_with(ReleaseOutcome::Limited(
            Limited::until(reset).remaining(2).scope("search").unwrap(),
        ))
        .await
        .unwrap();
    let listed = pool.list().await.unwrap();
    assert_eq!(
        limit_of(&listed[0], Some("search")).unwrap().remaining,
        Some(2)
    );
    for turn in 0..2 {
        let lease = pool
            .try_acquire_for("search")
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("grant {turn} of the 2 left"));
        lease.release().await.unwrap();
    }
    assert!(
        pool.try_acquire_for("search").await.unwrap().is_none(),
        "the budget is used up"
    );
    assert!(pool.try_acquire_for("timeline").await.unwrap().is_some());
    // An unscoped budget counts grants in every scope.
    let pool = pool_of(factory, vec![NewCredential::new("bob", "b")]).await;
    let lease = pool.acquire().await.unwrap();
    lease
        .release_with(ReleaseOutcome::Limited(Limited::until(reset).remaining(1)))
        .await
        .unwrap();
    use_once(&pool, &Want::scope("timeline").unwrap()).await;
    assert!(pool.try_acquire_for("search").await.unwrap().is_none());
    assert!(pool.try_acquire().await.unwrap().is_none());
    // The latest report holds: "none left until the reset", from one
    // holder, is lifted by a later "five left" from another, in every scope.
    let pool = pool_of(factory, vec![NewCredential::new("carol", "c").capacity(2)]).await;
    let (first, second) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    first
        .release_with(ReleaseOutcome::Limited(Limited::until(reset)))
        .await
        .unwrap();
    assert!(pool.try_acquire().await.unwrap().is_none(), "none left");
    let later = SystemTime::now() + Duration::from_secs(120);
    second
        .release_with(ReleaseOutcome::Limited(Limited::until(later).remaining(5)))
        .await
        .unwrap();
    let lease = pool.try_acquire().await.unwrap();
    assert!(lease.is_some(), "five left now");
}

/// Many tasks take credentials with quotas in one scope and over every
/// scope, some cancelled on the way; the store's grant times show that no
/// window of either quota ever held more grants than it allows.
pub async fn quotas_are_never_exceeded<F: Factory>(factory: &F) {
    let (scoped, every) = (rate("4/300ms"), rate("6/300ms"));
    let pool = pool_of(
        factory,
        (0..3)
            .map(|n| {
                NewCredential::new(format!("c{n}"), "s")
                    .capacity(2)
                    .rate(every)
                    .rate_for("a", scoped)
            })
            .collect(),
    )
    .await;
    let granted: Arc<Mutex<Vec<Granted>>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let (pool, granted) = (pool.clone(), granted.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task);
            let end = tokio::time::Instant::now() + Duration::from_millis(1500);
            while tokio::time::Instant::now() < end {
                let scope = match rng.u8(..3) {
                    0 => None,
                    1 => Some("a"),
                    _ => Some("b"),
                };
                let acquire = async {
                    match scope {
                        Some(scope) => pool.acquire_for(scope).await,
                        None => pool.acquire().await,
                    }
                };
                // Some give up while they wait: nothing they took counts.
                let patience = Duration::from_millis(rng.u64(1..200));
                let Ok(lease) = tokio::time::timeout(patience, acquire).await else {
                    continue;
                };
                let lease = lease.unwrap();
                granted.lock().unwrap().push(Granted {
                    credential: lease.credential().name().to_string(),
                    scope: scope.map(str::to_string),
                    at_ms: ms(lease.acquired_at()),
                });
                sleep(Duration::from_millis(rng.u64(0..5))).await;
                lease.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    let in_a = quota_violations(&granted, Some("a"), scoped);
    assert!(in_a.is_empty(), "quota of scope a exceeded: {in_a:?}");
    let overall = quota_violations(&granted, None, every);
    assert!(
        overall.is_empty(),
        "quota of every scope exceeded: {overall:?}"
    );
    // Work was done (3 credentials × 6 per 300 ms over 1.5 s allow about
    // 90; a loaded machine makes fewer, which proves nothing less).
    assert!(granted.len() >= 10, "only {} grants", granted.len());
    let listed = pool.list().await.unwrap();
    let every_limit = limit_of(&listed[0], None).expect("the quota of every scope");
    assert_eq!(every_limit.rate, Some(every));
}

pub async fn a_waiter_is_served_when_the_window_frees_a_grant<F: Factory>(factory: &F) {
    for scope in [None, Some("a")] {
        let new = NewCredential::new("alice", "a");
        let new = match scope {
            Some(scope) => new.rate_for(scope, rate("2/700ms")),
            None => new.rate(rate("2/700ms")),
        };
        let pool = pool_of(factory, vec![new]).await;
        let acquire = || async {
            match scope {
                Some(scope) => pool.acquire_for(scope).await,
                None => pool.acquire().await,
            }
        };
        let first = acquire().await.unwrap();
        let opened = ms(first.acquired_at());
        first.release().await.unwrap();
        acquire().await.unwrap().release().await.unwrap();
        let third = within(Duration::from_secs(5), "the third grant", acquire())
            .await
            .unwrap();
        let waited = ms(third.acquired_at()) - opened;
        assert!(
            waited >= 700,
            "{scope:?}: granted {waited} ms after the first, inside its window"
        );
        assert!(
            waited < 2_700,
            "{scope:?}: granted {waited} ms after the first: the waiter was not told when the window freed"
        );
    }
}

pub async fn a_blocked_scope_does_not_hold_up_other_scopes<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![NewCredential::new("alice", "a").rate_for("slow", rate("1/1h"))],
    )
    .await;
    use_once(&pool, &Want::scope("slow").unwrap()).await;
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_for("slow").await.map(|lease| lease.id()) })
    };
    super::wait_for_waiters(&pool, 1).await;
    // The waiter polls meanwhile; a plain grant still finds alice free.
    sleep(Duration::from_millis(150)).await;
    let plain = pool.try_acquire().await.unwrap();
    assert!(
        plain.is_some(),
        "a plain try is not held up by the slow scope"
    );
    drop(plain);
    super::leases_back(&pool).await;
    for scope in [Some("fast"), None] {
        let lease = within(Duration::from_secs(5), "a grant in another scope", async {
            match scope {
                Some(scope) => pool.acquire_for(scope).await,
                None => pool.acquire().await,
            }
        })
        .await
        .unwrap();
        lease.release().await.unwrap();
    }
    assert!(!waiter.is_finished(), "the slow scope stays blocked");
    waiter.abort();
    match pool
        .acquire_for_timeout("slow", Duration::from_millis(50))
        .await
    {
        Err(Error::Timeout { .. }) => {}
        Err(error) => panic!("expected a timeout, got {error}"),
        Ok(_) => panic!("the slow scope was served inside its quota"),
    }
}

pub async fn sticky_acquire_waits_for_its_credential_in_arrival_order<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("alice", "a"),
            NewCredential::new("bob", "b"),
        ],
    )
    .await;
    let held = pool.acquire_named("alice").await.unwrap();
    assert_eq!(held.credential().name(), "alice");
    let order: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut waiters = Vec::new();
    for turn in 0..3 {
        let (task_pool, order) = (pool.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let pool = task_pool;
            let lease = pool.acquire_named("alice").await.unwrap();
            assert_eq!(lease.credential().name(), "alice");
            order.lock().unwrap().push(turn);
            sleep(Duration::from_millis(5)).await;
            lease.release().await.unwrap();
        }));
        super::wait_for_waiters(&pool, turn as u64 + 1).await;
    }
    // Bob is free, and nobody waits for him.
    let bob = within(Duration::from_secs(5), "bob", pool.acquire_named("bob"))
        .await
        .unwrap();
    assert_eq!(bob.credential().name(), "bob");
    // Every credential is held now: a plain try finds nothing.
    assert!(pool.try_acquire().await.unwrap().is_none());
    bob.release().await.unwrap();
    held.release().await.unwrap();
    for waiter in waiters {
        within(Duration::from_secs(10), "the waiters for alice", waiter)
            .await
            .unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        [0, 1, 2],
        "first come, first served"
    );
    let timed_out = pool
        .acquire_named_timeout("alice", Duration::from_millis(20))
        .await;
    assert!(timed_out.is_ok(), "alice is free again");
}

pub async fn sticky_acquire_of_an_unknown_or_disabled_credential_fails<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a")]).await;
    match pool.acquire_named("nobody").await {
        Err(Error::UnknownCredential { name, .. }) => assert_eq!(name, "nobody"),
        other => panic!("expected UnknownCredential, got {other:?}"),
    }
    pool.disable("alice", "banned").await.unwrap();
    match pool.acquire_named("alice").await {
        Err(error @ Error::Disabled { .. }) => {
            assert!(error.to_string().contains("banned"), "{error}");
        }
        other => panic!("expected Disabled, got {other:?}"),
    }
    assert!(pool.acquire_named("").await.is_err());
}

pub async fn a_named_waiter_hears_when_its_credential_is_disabled<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("alice", "a"),
            NewCredential::new("bob", "b"),
        ],
    )
    .await;
    let held = pool.acquire_named("alice").await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_named("alice").await.map(|lease| lease.id()) })
    };
    super::wait_for_waiters(&pool, 1).await;
    pool.disable("alice", "banned").await.unwrap();
    match within(Duration::from_secs(5), "the waiter to hear", waiter)
        .await
        .unwrap()
    {
        Err(Error::Disabled { name, .. }) => assert_eq!(name, "alice"),
        other => panic!("expected Disabled, got {other:?}"),
    }
    held.release().await.unwrap();
    assert!(pool.try_acquire().await.unwrap().is_some(), "bob");
}

pub async fn rates_are_listed_changed_and_removed<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![NewCredential::new("alice", "a").rate_for("search", rate("2/1h"))],
    )
    .await;
    for _ in 0..2 {
        pool.acquire_for("search")
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let listed = pool.list().await.unwrap();
    let search = limit_of(&listed[0], Some("search")).unwrap();
    assert_eq!(
        (search.rate, search.used, search.remaining),
        (Some(rate("2/1h")), 2, Some(0))
    );
    assert!(search.blocked_until.is_some());
    assert!(pool.try_acquire_for("search").await.unwrap().is_none());
    // A new quota starts counting afresh.
    pool.update(
        "alice",
        CredentialChange::new().rate_for("search", Some(rate("3/1h"))),
    )
    .await
    .unwrap();
    let lease = pool.try_acquire_for("search").await.unwrap();
    assert!(lease.is_some(), "the new quota allows a grant");
    drop(lease);
    super::leases_back(&pool).await;
    assert!(
        pool.try_acquire_for("search").await.unwrap().is_none(),
        "the grants made before count against the new quota too"
    );
    pool.update("alice", CredentialChange::new().rate_for("search", None))
        .await
        .unwrap();
    let listed = pool.list().await.unwrap();
    assert!(
        limit_of(&listed[0], Some("search")).is_none(),
        "{:?}",
        listed[0].limits
    );
    // An unscoped quota that is used up cools the credential down.
    pool.update("alice", CredentialChange::new().rate(Some(rate("1/1h"))))
        .await
        .unwrap();
    pool.acquire().await.unwrap().release().await.unwrap();
    let listed = pool.list().await.unwrap();
    assert!(
        matches!(listed[0].state, CredentialState::CoolingDown { .. }),
        "{:?}",
        listed[0].state
    );
}

pub async fn a_pool_default_rate_holds_where_a_credential_has_none_of_its_own<F: Factory>(
    factory: &F,
) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("alice", "a").rate_for("search", rate("3/1h")),
            NewCredential::new("bob", "b"),
        ],
    )
    .await;
    let search = |name: &str| Want::scope("search").unwrap().named(name).unwrap();
    let grants = |name: &'static str| {
        let pool = pool.clone();
        async move {
            let mut granted = 0;
            while let Some(lease) = pool.try_acquire_matching(&search(name)).await.unwrap() {
                lease.release().await.unwrap();
                granted += 1;
                assert!(granted <= 10, "no quota held {name}");
            }
            granted
        }
    };
    use_once(&pool, &search("bob")).await;
    pool.set_default_rate(Some("search"), Some(rate("2/1h")))
        .await
        .unwrap();
    assert_eq!(
        pool.default_rates().await.unwrap(),
        [(Some("search".to_string()), rate("2/1h"))]
    );
    assert_eq!(grants("alice").await, 3, "alice's own quota");
    assert_eq!(
        grants("bob").await,
        2,
        "the default counts from when it is set"
    );
    pool.add(NewCredential::new("carol", "c")).await.unwrap();
    assert_eq!(
        grants("carol").await,
        2,
        "a credential added later has it too"
    );
    let listed = pool.list().await.unwrap();
    let default_of = |name: &str| {
        let info = listed.iter().find(|info| info.name == name).unwrap();
        limit_of(info, Some("search")).unwrap().default
    };
    assert!(!default_of("alice") && default_of("bob") && default_of("carol"));
    // bob's own quota counts what the default counted; without it, the
    // default holds again.
    pool.update(
        "bob",
        CredentialChange::new().rate_for("search", Some(rate("3/1h"))),
    )
    .await
    .unwrap();
    assert_eq!(grants("bob").await, 1);
    pool.update("bob", CredentialChange::new().rate_for("search", None))
        .await
        .unwrap();
    assert_eq!(grants("bob").await, 0, "the default again, its count kept");
    // Without the default, only alice has a quota.
    pool.set_default_rate(Some("search"), None).await.unwrap();
    assert!(pool.default_rates().await.unwrap().is_empty());
    assert_eq!(grants("alice").await, 0);
    let carol = pool.try_acquire_matching(&search("carol")).await.unwrap();
    assert!(carol.is_some(), "carol has no quota any more");
    drop(carol);
    super::leases_back(&pool).await;
    // A default over every grant cools a credential down once it is used up.
    pool.set_default_rate(None, Some(rate("1/1h")))
        .await
        .unwrap();
    pool.add(NewCredential::new("dan", "d")).await.unwrap();
    use_once(&pool, &Want::any().named("dan").unwrap()).await;
    let listed = pool.list().await.unwrap();
    let dan = listed.iter().find(|info| info.name == "dan").unwrap();
    assert!(
        matches!(dan.state, CredentialState::CoolingDown { .. }),
        "{:?}",
        dan.state
    );
    pool.set_default_rate(None, None).await.unwrap();
    let listed = pool.list().await.unwrap();
    let dan = listed.iter().find(|info| info.name == "dan").unwrap();
    assert_eq!(
        dan.state,
        CredentialState::Available,
        "its cool-down ended with it"
    );
    assert!(pool.set_default_rate(Some(""), None).await.is_err());
}

pub async fn reset_limits_ends_cool_downs_but_keeps_quotas<F: Factory>(factory: &F) {
    let pool = pool_of(
        factory,
        vec![
            NewCredential::new("alice", "a").rate_for("q", rate("1/1h")),
            NewCredential::new("bob", "b"),
        ],
    )
    .await;
    let later = Limited::after(Duration::from_secs(600));
    let alice = pool.acquire_named("alice").await.unwrap();
    alice
        .release_with(ReleaseOutcome::Limited(later.clone().scope("s").unwrap()))
        .await
        .unwrap();
    let bob = pool.acquire_named("bob").await.unwrap();
    bob.release_with(ReleaseOutcome::CoolDown(Duration::from_secs(600)))
        .await
        .unwrap();
    use_once(&pool, &Want::any().named("alice").unwrap()).await;
    use_once(&pool, &Want::scope("q").unwrap()).await;
    assert!(pool.try_acquire_for("s").await.unwrap().is_none());
    // Another scope's reset leaves these alone.
    assert_eq!(pool.reset_limits(None, Some("other")).await.unwrap(), 0);
    assert!(pool.try_acquire_named("bob").await.unwrap().is_none());
    assert_eq!(
        pool.reset_limits(Some("alice"), Some("s")).await.unwrap(),
        1
    );
    assert!(pool.try_acquire_for("s").await.unwrap().is_some());
    super::leases_back(&pool).await;
    assert_eq!(pool.reset_limits(None, None).await.unwrap(), 1, "bob");
    assert!(pool.try_acquire_named("bob").await.unwrap().is_some());
    super::leases_back(&pool).await;
    let alice_for_q = Want::scope("q").unwrap().named("alice").unwrap();
    assert!(
        pool.try_acquire_matching(&alice_for_q)
            .await
            .unwrap()
            .is_none(),
        "the quota still counts the grant it made"
    );
    match pool.reset_limits(Some("nobody"), None).await {
        Err(Error::UnknownCredential { .. }) => {}
        other => panic!("expected UnknownCredential, got {other:?}"),
    }
}

pub async fn a_limited_release_sends_its_event<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a")]).await;
    let mut events = pool.subscribe();
    let reset = SystemTime::now() + Duration::from_secs(60);
    let lease = pool.acquire().await.unwrap();
    lease
        .release_with(ReleaseOutcome::Limited(
            Limited::until(reset).remaining(3).scope("search").unwrap(),
        ))
        .await
        .unwrap();
    let mut seen = HashMap::new();
    within(Duration::from_secs(5), "the events", async {
        while seen.len() < 2 {
            match events.recv().await.unwrap() {
                Event::Limited {
                    name,
                    scope,
                    until,
                    remaining,
                } => {
                    assert_eq!(&*name, "alice");
                    assert_eq!(scope.as_deref(), Some("search"));
                    assert_eq!((until, remaining), (reset, 3));
                    seen.insert("limited", ());
                }
                Event::Released { outcome, .. } => {
                    assert_eq!(outcome.label(), "limited");
                    seen.insert("released", ());
                }
                _ => {}
            }
        }
    })
    .await;
}

pub async fn bad_scopes_and_rates_are_refused<F: Factory>(factory: &F) {
    let pool = pool_of(factory, vec![NewCredential::new("alice", "a")]).await;
    for scope in ["", "  ", "bad\nscope"] {
        match pool.acquire_for(scope).await {
            Err(Error::InvalidInput(invalid)) => assert_eq!(invalid.field, "scope"),
            other => panic!("{scope:?}: expected InvalidInput, got {other:?}"),
        }
        assert!(Limited::after(Duration::from_secs(1)).scope(scope).is_err());
    }
    for text in ["0/1m", "5/0s", "abc", "5", "/1m", "-1/1m", "5/forever"] {
        let error = text.parse::<Rate>().expect_err(text);
        assert!(error.to_string().contains("rate"), "{text}: {error}");
    }
    // A scope that is not valid fails the add, and adds nothing.
    let refused = pool
        .add(NewCredential::new("bob", "b").rate_for("", rate("1/1s")))
        .await;
    assert!(refused.is_ok(), "an empty scope is every scope");
    let refused = pool
        .add(NewCredential::new("carol", "c").rate_for("bad\n", rate("1/1s")))
        .await;
    assert!(refused.is_err());
    assert_eq!(pool.list().await.unwrap().len(), 2);
}

/// Used by store tests: a quota that outlives the store.
pub async fn quota_state_survives_reopening<S: Store, O: std::future::Future<Output = Pool<S>>>(
    open: impl Fn() -> O,
) {
    let pool = open().await;
    pool.add(NewCredential::new("alice", "a").rate_for("q", rate("2/1h")))
        .await
        .unwrap();
    use_once(&pool, &Want::scope("q").unwrap()).await;
    let lease = pool.acquire().await.unwrap();
    lease
        .release_with(ReleaseOutcome::Limited(
            Limited::after(Duration::from_secs(600)).scope("s").unwrap(),
        ))
        .await
        .unwrap();
    drop(pool);
    let pool = open().await;
    use_once(&pool, &Want::scope("q").unwrap()).await;
    assert!(
        pool.try_acquire_for("q").await.unwrap().is_none(),
        "the reopened store counted the grant made before"
    );
    assert!(pool.try_acquire_for("s").await.unwrap().is_none());
    assert!(pool.try_acquire_for("t").await.unwrap().is_some());
}
