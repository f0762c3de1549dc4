//! The conformance suite on the Postgres store, and what is particular to it:
//! schemas that are not ours, notifications between stores, lost
//! connections, and many processes on one database.
//!
//! Needs a server: `scripts/with-postgres.sh cargo test --features postgres`
//! starts a throwaway one and sets `CREDPOOL_TEST_POSTGRES_URL`. Each test
//! works in a fresh schema of its own.

mod common;
mod conformance;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credpool::store::postgres::{PostgresStore, SCHEMA_VERSION};
use credpool::store::DEFAULT_TICKET_TTL;
use credpool::{Error, NewCredential, Pool};

use common::checker::HoldLog;
use common::{line, processes};

const URL_VARIABLE: &str = "CREDPOOL_TEST_POSTGRES_URL";

fn url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{URL_VARIABLE} is not set, so there is no Postgres server to test against. \
             Run the Postgres tests with `scripts/with-postgres.sh cargo test --features postgres`, \
             which starts a throwaway server, or set {URL_VARIABLE} to a database you can spare."
        )
    })
}

/// A schema name no other test uses.
fn fresh_schema(label: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test_{label}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

async fn open(schema: &str) -> PostgresStore {
    PostgresStore::options_url(&url())
        .unwrap()
        .schema(schema)
        .open()
        .await
        .unwrap()
}

struct Postgres;

impl conformance::Factory for Postgres {
    type Store = PostgresStore;

    async fn pool(&self, ttl: Option<Duration>) -> Pool<PostgresStore> {
        let builder = Pool::builder(open(&fresh_schema("conformance")).await);
        match ttl {
            Some(ttl) => builder.lease_ttl(ttl).build(),
            None => builder.no_lease_ttl().build(),
        }
    }
}

conformance_suite!(Postgres);
limits_suite!(Postgres);
weighted_suite!(Postgres);

/// A plain connection to the test server, for looking behind the store's back.
async fn raw() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn pool_in(schema: &str, names: &[&str]) -> Pool<PostgresStore> {
    let pool = Pool::new(open(schema).await);
    pool.add_many(names.iter().map(|name| NewCredential::new(*name, "s")))
        .await
        .unwrap();
    pool
}

#[tokio::test]
async fn hands_out_least_recently_used_first() {
    conformance::hands_out_least_recently_used_first(&Postgres).await;
}

#[tokio::test]
async fn state_survives_reopening() {
    let schema = fresh_schema("reopen");
    conformance::state_survives_reopening(|| async { Pool::new(open(&schema).await) }).await;
}

/// Opens the store in `schema` and expects it to be refused.
async fn open_refused(schema: &str) -> Error {
    PostgresStore::options_url(&url())
        .unwrap()
        .schema(schema)
        .open()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_as_it_was() {
    let schema = fresh_schema("newer");
    pool_in(&schema, &["a"]).await;
    let client = raw().await;
    client
        .execute(
            &format!("UPDATE {schema}.schema_version SET version = 99"),
            &[],
        )
        .await
        .unwrap();
    let error = open_refused(&schema).await;
    match &error {
        Error::StoreTooNew {
            location,
            found,
            supported,
        } => {
            assert!(location.contains(&schema), "{location}");
            assert_eq!((*found, *supported), (99, SCHEMA_VERSION));
        }
        other => panic!("expected StoreTooNew, got {other:?}"),
    }
    let version: i32 = client
        .query_one(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await
        .unwrap()
        .get(0);
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.credentials"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((version, count), (99, 1), "nothing was changed");
}

#[tokio::test]
async fn a_schema_holding_other_tables_is_refused_and_left_as_it_was() {
    let schema = fresh_schema("foreign");
    let client = raw().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.orders (id int);
             INSERT INTO {schema}.orders VALUES (7);"
        ))
        .await
        .unwrap();
    let error = open_refused(&schema).await;
    assert!(matches!(error, Error::NotAStore { .. }), "{error:?}");
    assert!(error.to_string().contains(&schema), "{error}");
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(tables, ["orders"], "no table was added");
    let order: i32 = client
        .query_one(&format!("SELECT id FROM {schema}.orders"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(order, 7);
}

#[tokio::test]
async fn bad_names_urls_and_servers_give_clear_errors_without_the_password() {
    let error = PostgresStore::options_url("postgres://me:hunter2@127.0.0.1:1/app")
        .unwrap()
        .open()
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Postgres { .. }), "{error:?}");
    assert!(
        message.contains("127.0.0.1:1"),
        "names the server: {message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{error:?}").contains("hunter2"));

    let error = PostgresStore::options_url("postgres://me:hunter2@[bad/app").unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    assert!(!error.to_string().contains("hunter2"), "{error}");

    for schema in ["Upper", "1st", "with space", "semi;colon", ""] {
        let error = PostgresStore::options_url(&url())
            .unwrap()
            .schema(schema)
            .open()
            .await
            .unwrap_err();
        assert!(error.to_string().contains("schema"), "{schema:?}: {error}");
    }
    let options = PostgresStore::options_url("postgres://me:hunter2@localhost/app").unwrap();
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stores_opening_one_new_schema_at_once_all_succeed() {
    let schema = fresh_schema("together");
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let schema = schema.clone();
            tokio::spawn(async move {
                PostgresStore::options_url(&url())
                    .unwrap()
                    .schema(schema)
                    .connections(1)
                    .open()
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("every concurrent open succeeds");
    }
    assert_eq!(schema_version(&schema).await, SCHEMA_VERSION);
}

/// The version the schema's table says it is at.
async fn schema_version(schema: &str) -> i64 {
    let version: i32 = raw()
        .await
        .query_one(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await
        .unwrap()
        .get(0);
    i64::from(version)
}

/// SQL that takes a current schema back to version 5 (before weighted
/// grants); its trigger functions stay as version 6 left them, which its
/// migration writes again.
fn undo_version_6(schema: &str) -> String {
    format!(
        "{}
         DROP FUNCTION \"{schema}\".grant_units, \"{schema}\".limit_blocked_for;
         ALTER TABLE \"{schema}\".leases DROP COLUMN units;
         ALTER TABLE \"{schema}\".tickets DROP COLUMN units;",
        undo_version_7(schema)
    )
}

/// SQL that takes a current schema back to version 6 (before holders);
/// `grant_units` stays as version 7 wrote it, which its migration writes
/// again.
fn undo_version_7(schema: &str) -> String {
    format!(
        "ALTER TABLE \"{schema}\".leases DROP COLUMN holder;
         DROP INDEX \"{schema}\".credentials_in_pool;"
    )
}

/// A schema of version 6 is migrated when a store opens it: a lease held
/// across the migration has no holder; the next records this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_schema_is_migrated_and_records_holders() {
    let schema = fresh_schema("from_v6");
    let pool = pool_in(&schema, &[]).await;
    pool.add(NewCredential::new("kept", "s").capacity(2))
        .await
        .unwrap();
    let _held_across = pool.acquire().await.unwrap().into_token();
    drop(pool);
    raw()
        .await
        .batch_execute(&format!(
            "{} UPDATE \"{schema}\".schema_version SET version = 6;",
            undo_version_7(&schema)
        ))
        .await
        .unwrap();
    let pool = Pool::new(open(&schema).await);
    assert_eq!(schema_version(&schema).await, SCHEMA_VERSION);
    conformance::holders_are_recorded_after_a_migration(&pool).await;
}

/// What migration 4 -> 5 added (rate limits), taken out again.
fn undo_version_5(schema: &str) -> String {
    format!(
        "{}
         DROP TABLE \"{schema}\".limits;
         DROP FUNCTION \"{schema}\".count_grant CASCADE;
         DROP FUNCTION \"{schema}\".move_grant CASCADE;
         DROP FUNCTION \"{schema}\".settle_limit, \"{schema}\".limit_blocked,
                       \"{schema}\".set_rate, \"{schema}\".report_limit, \"{schema}\".reset_limits,
                       \"{schema}\".lift_block, \"{schema}\".set_default,
                       \"{schema}\".set_pool_default;
         DROP TABLE \"{schema}\".pool_rates;
         ALTER TABLE \"{schema}\".credentials DROP COLUMN limited, DROP COLUMN blocks;
         ALTER TABLE \"{schema}\".leases DROP COLUMN scope, DROP COLUMN limited;
         ALTER TABLE \"{schema}\".tickets DROP COLUMN scope, DROP COLUMN name;",
        undo_version_6(schema)
    )
}

/// A schema of version 5 (before weighted grants) is migrated when a store
/// opens it: a lease held across the migration is given back, and
/// weighted grants work, counted against quotas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_5_schema_is_migrated_and_takes_weighted_grants() {
    let schema = fresh_schema("from_v5");
    let pool = pool_in(&schema, &[]).await;
    pool.add(
        NewCredential::new("kept", "s")
            .capacity(4)
            .rate("6/1h".parse().unwrap()),
    )
    .await
    .unwrap();
    let token = pool.acquire().await.unwrap().into_token();
    drop(pool);
    raw()
        .await
        .batch_execute(&format!(
            "{} UPDATE \"{schema}\".schema_version SET version = 5;",
            undo_version_6(&schema)
        ))
        .await
        .unwrap();
    let pool = Pool::new(open(&schema).await);
    assert_eq!(schema_version(&schema).await, SCHEMA_VERSION);
    conformance::weighted::weighted_grants_work_after_a_migration(&pool, token).await;
}

/// A schema of version 4 (before rate limits) is migrated when a store
/// opens it: its credentials stay, and quotas and scopes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_schema_is_migrated_and_takes_quotas() {
    let schema = fresh_schema("from_v4");
    let pool = pool_in(&schema, &["kept"]).await;
    drop(pool);
    raw()
        .await
        .batch_execute(&format!(
            "{} UPDATE \"{schema}\".schema_version SET version = 4;",
            undo_version_5(&schema)
        ))
        .await
        .unwrap();
    let pool = Pool::new(open(&schema).await);
    assert_eq!(schema_version(&schema).await, SCHEMA_VERSION);
    let rate: credpool::Rate = "1/1h".parse().unwrap();
    pool.update(
        "kept",
        credpool::CredentialChange::new().rate_for("search", Some(rate)),
    )
    .await
    .unwrap();
    pool.acquire_for("search")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(pool.try_acquire_for("search").await.unwrap().is_none());
    assert!(pool.try_acquire().await.unwrap().is_some());
}

#[tokio::test]
async fn quota_state_survives_reopening() {
    let schema = fresh_schema("reopen_quota");
    conformance::limits::quota_state_survives_reopening(|| async {
        Pool::new(open(&schema).await)
    })
    .await;
}

/// A schema of version 3 (before the stores' heartbeats had a table of
/// their own) is migrated when a store opens it: its credentials stay, and
/// its waiting line works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_schema_is_migrated_and_its_line_works() {
    let schema = fresh_schema("from_v3");
    let pool = pool_in(&schema, &["kept"]).await;
    drop(pool);
    raw()
        .await
        .batch_execute(&format!(
            "{} DROP TABLE \"{schema}\".ticket_owners;
             UPDATE \"{schema}\".schema_version SET version = 3;",
            undo_version_5(&schema)
        ))
        .await
        .unwrap();
    let pool = Pool::new(open(&schema).await);
    assert_eq!(schema_version(&schema).await, SCHEMA_VERSION);
    let held = pool.acquire().await.unwrap();
    assert_eq!(held.credential().name(), "kept");
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire_timeout(Duration::from_secs(10)).await }
    });
    tickets_become(&schema, 1, "the waiter has a ticket").await;
    assert_eq!(pool.stats().await.unwrap().waiters, 1);
    held.release().await.unwrap();
    let lease = waiter.await.unwrap().unwrap();
    assert_eq!(lease.credential().name(), "kept");
}

/// A waiter hears of a release made through another store (another process,
/// as far as it knows) by NOTIFY, long before its next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_elsewhere_wakes_a_waiter_by_notify() {
    let schema = fresh_schema("notify");
    let slow_polling = |schema: &str| {
        PostgresStore::options_url(&url())
            .unwrap()
            .schema(schema)
            .poll_interval(Duration::from_secs(60))
    };
    let here = Pool::new(slow_polling(&schema).open().await.unwrap());
    let elsewhere = Pool::new(slow_polling(&schema).open().await.unwrap());
    here.add(NewCredential::new("only", "s")).await.unwrap();
    let held = elsewhere.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let here = here.clone();
        async move { here.acquire_timeout(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the credential is held elsewhere");
    held.release().await.unwrap();
    // Well before the 60 s poll: only the notification can wake it in time.
    let lease = conformance::within(Duration::from_secs(5), "the waiter to be served", waiter)
        .await
        .unwrap()
        .expect("served after the release elsewhere");
    assert_eq!(lease.credential().name(), "only");
}

// ---- faults --------------------------------------------------------------

/// The server ends the store's connections again and again while 16 tasks
/// work: calls in flight fail with an error, later calls succeed, no
/// credential is held twice, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_fail_cleanly_and_the_pool_goes_on() {
    let schema = fresh_schema("terminate");
    let application = format!("credpool-{schema}");
    let mut config: tokio_postgres::Config = url().parse().unwrap();
    config.application_name(&application);
    let store = PostgresStore::options(config)
        .schema(&schema)
        .connections(4)
        .lease_ttl(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    let names: Vec<String> = (0..4).map(|i| format!("account-{i}")).collect();
    pool.add_many(
        names
            .iter()
            .map(|name| NewCredential::new(name.as_str(), "s")),
    )
    .await
    .unwrap();

    let log = Arc::new(HoldLog::new());
    let (grants, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..16u64)
        .map(|seed| {
            let (pool, log) = (pool.clone(), log.clone());
            let (grants, failures) = (grants.clone(), failures.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed);
                while tokio::time::Instant::now() < deadline {
                    let lease = match pool.acquire_timeout(Duration::from_secs(5)).await {
                        Ok(lease) => lease,
                        Err(Error::Postgres { .. } | Error::StoreUnavailable { .. }) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        Err(other) => panic!("unexpected error: {other}"),
                    };
                    grants.fetch_add(1, Ordering::SeqCst);
                    log.start(lease.credential().name(), 1, lease.id().get());
                    tokio::time::sleep(Duration::from_micros(rng.u64(200..2000))).await;
                    log.end(lease.id().get());
                    match lease.release().await {
                        Ok(()) => {}
                        // The lease comes back when it expires.
                        Err(Error::Postgres { .. } | Error::StoreUnavailable { .. }) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
            })
        })
        .collect();
    let killer = raw().await;
    let mut kills = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let killed = killer
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&application],
            )
            .await
            .unwrap();
        kills += killed.len();
    }
    for worker in workers {
        worker.await.unwrap();
    }
    log.check(|_| 1).expect("no credential held twice");
    assert!(kills >= 10, "the server ended {kills} connections");
    assert!(
        failures.load(Ordering::SeqCst) > 0,
        "some calls were in flight when their connection ended"
    );
    assert!(
        grants.load(Ordering::SeqCst) > 100,
        "the pool went on working: {} grants",
        grants.load(Ordering::SeqCst)
    );
    // Leases whose release was lost come back after the 1 s TTL. A call on a
    // connection the last kill ended may still fail, once per connection.
    let mut all = Vec::new();
    let mut late_failures = 0;
    while all.len() < 4 {
        match pool.acquire_timeout(Duration::from_secs(5)).await {
            Ok(lease) => all.push(lease),
            Err(Error::Postgres { .. }) if late_failures < 4 => late_failures += 1,
            Err(error) => panic!("every credential comes back, but: {error}"),
        }
    }
    drop(all);
    let stats = conformance::leases_back(&pool).await;
    assert_eq!((stats.total, stats.available), (4, 4), "{stats:?}");
}

/// Not a test of its own: the entry point of the child processes below.
#[test]
fn child_process_entry() {
    let Some(child) = processes::child_role() else {
        return;
    };
    processes::child_runtime().block_on(async move {
        let options = PostgresStore::options_url(&url())
            .unwrap()
            .schema(&child.store);
        match child.role.as_str() {
            "quota-hammer" => {
                let pool = Pool::new(options.open().await.unwrap());
                processes::quota_hammer(pool, &child.log.unwrap()).await;
            }
            "weighted-hammer" => {
                let pool = Pool::new(options.open().await.unwrap());
                processes::weighted_hammer(pool, &child.log.unwrap()).await;
            }
            "hammer" => {
                let pool = Pool::new(options.open().await.unwrap());
                processes::hammer(pool, &child.log.unwrap()).await;
            }
            "hold-and-hang" => {
                let store = options
                    .lease_ttl(Duration::from_secs(1))
                    .open()
                    .await
                    .unwrap();
                processes::hold_and_hang(Pool::new(store)).await;
            }
            "hold-units-and-hang" => {
                let store = options
                    .lease_ttl(Duration::from_secs(1))
                    .open()
                    .await
                    .unwrap();
                processes::hold_units_and_hang(Pool::new(store)).await;
            }
            "queue-once" => line::queue_once(Pool::new(options.open().await.unwrap())).await,
            "share" => {
                // STORE is `SCHEMA START_NS`.
                let (schema, start) = child.store.split_once(' ').unwrap();
                let store = PostgresStore::options_url(&url())
                    .unwrap()
                    .schema(schema)
                    .open()
                    .await
                    .unwrap();
                line::take_a_share(Pool::new(store), start.parse().unwrap()).await;
            }
            "queue-and-hang" => {
                let store = options.ticket_ttl(KILL_TICKET_TTL).open().await.unwrap();
                line::queue_and_hang(Pool::new(store), 3).await;
            }
            "cancel-at-random" => {
                let pool = Pool::new(options.open().await.unwrap());
                line::cancel_at_random(pool, &child.log.unwrap()).await;
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

// ---- the waiting line across processes -----------------------------------

/// The ticket TTL of the test where a waiting process is killed.
const KILL_TICKET_TTL: Duration = Duration::from_secs(2);

async fn tickets_in(schema: &str) -> i64 {
    raw()
        .await
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".tickets"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits (at most 10 s) until the store in `schema` holds `count` tickets.
async fn tickets_become(schema: &str, count: i64, what: &str) {
    common::until(what, Duration::from_secs(10), || async {
        tickets_in(schema).await == count
    })
    .await;
}

/// A waiter that gave up is passed over at once, though its ticket's
/// removal has not reached the server yet: the release just after it hands
/// its credential to the next waiter, not to the ticket that left (which
/// would hold it until the removal, and then hand it on: two hand-offs, two
/// uses). On one connection and one thread, the release is sent before the
/// removal.
#[tokio::test]
async fn a_release_passes_over_a_ticket_whose_waiter_just_left() {
    let schema = fresh_schema("left_ticket");
    let store = PostgresStore::options_url(&url())
        .unwrap()
        .schema(schema.as_str())
        .connections(1)
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    pool.add(NewCredential::new("only", "s")).await.unwrap();
    let held = pool.acquire().await.unwrap();
    let mut first = Box::pin(pool.acquire());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tickets_in(&schema).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first waiter never queued"
        );
        let polled = tokio::time::timeout(Duration::from_millis(10), &mut first).await;
        assert!(polled.is_err(), "the first waiter was served: {polled:?}");
    }
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire_timeout(Duration::from_secs(30)).await }
    });
    tickets_become(&schema, 2, "the second waiter has a ticket").await;
    drop(first);
    held.release().await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the next waiter was served")
        .unwrap()
        .unwrap();
    let uses = pool.list().await.unwrap()[0].use_count;
    assert_eq!(
        uses, 2,
        "one grant to the holder, one hand-off to the next waiter; more means the \
         credential went to the ticket that left first"
    );
    lease.release().await.unwrap();
    tickets_become(&schema, 0, "the ticket that left is gone").await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(
        (stats.available, stats.leases, stats.waiters),
        (1, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_four_processes_are_served_in_ticket_order() {
    let schema = fresh_schema("ticket_order");
    let pool = Pool::new(open(&schema).await);
    line::waiters_are_served_in_ticket_order(&pool, |role| {
        processes::spawn_child(role, &schema, None)
    })
    .await;
    assert_eq!(tickets_in(&schema).await, 0);
}

async fn equal_shares(processes_count: usize) {
    let schema = fresh_schema("shares");
    let pool = Pool::new(open(&schema).await);
    line::processes_get_equal_shares(&pool, processes_count, |role, start| {
        processes::spawn_child(role, &format!("{schema} {start}"), None)
    })
    .await;
    assert_eq!(tickets_in(&schema).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_get_equal_shares() {
    equal_shares(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_get_equal_shares() {
    equal_shares(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_waiter_delays_the_others_by_at_most_the_ticket_ttl() {
    let schema = fresh_schema("killed_waiter");
    let store = PostgresStore::options_url(&url())
        .unwrap()
        .schema(&schema)
        .ticket_ttl(KILL_TICKET_TTL)
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    line::a_killed_waiter_delays_the_others_by_at_most_the_ticket_ttl(
        &pool,
        KILL_TICKET_TTL,
        |role| processes::spawn_child(role, &schema, None),
    )
    .await;
    // The killed process's tickets are gone after a waiter's polls: they are
    // a ticket TTL old, and its heartbeat stopped longer ago than that.
    polls_remove_every_dead_ticket(&pool, &schema).await;
}

/// A ticket of this store with no seat (its removal failed, or the answer
/// to its `take_ticket` was lost) would wait as long as the store's
/// heartbeat goes on; the heartbeat removes it once it is a ticket TTL old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_removes_a_ticket_with_no_seat() {
    let schema = fresh_schema("unseated");
    let store = PostgresStore::options_url(&url())
        .unwrap()
        .schema(schema.as_str())
        .ticket_ttl(Duration::from_millis(400))
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    pool.add(NewCredential::new("only", "s")).await.unwrap();
    let held = pool.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire_timeout(Duration::from_secs(30)).await }
    });
    tickets_become(&schema, 1, "the waiter has a ticket").await;
    raw()
        .await
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".tickets (pool, owner, expires_at)
                 SELECT pool, owner, 0 FROM \"{schema}\".tickets"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tickets_in(&schema).await, 2);
    tickets_become(&schema, 1, "the ticket with no seat is gone").await;
    held.release().await.unwrap();
    let lease = waiter.await.unwrap().unwrap();
    lease.release().await.unwrap();
    tickets_become(&schema, 0, "no ticket is left").await;
}

/// `revoke` while the credential's holders release and take it again, and
/// while expired leases are reclaimed: it locks leases before the
/// credential as they do, so it never deadlocks with them (a deadlock would
/// fail one side after the server's deadlock timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_beside_releases_never_deadlocks() {
    let schema = fresh_schema("revoke_busy");
    let pool = Pool::builder(open(&schema).await)
        .lease_ttl(Duration::from_millis(200))
        .build();
    pool.add(NewCredential::new("shared", "s").capacity(8))
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|task| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut holds = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(lease) = pool.acquire_timeout(Duration::from_secs(5)).await else {
                        continue;
                    };
                    holds += 1;
                    if task == 0 && holds % 5 == 0 {
                        // Left to expire, for the reclaim to end.
                        let _ = lease.into_token();
                        continue;
                    }
                    match lease.release().await {
                        Ok(()) | Err(Error::LeaseLost { .. }) => {}
                        Err(other) => panic!("a release failed: {other}"),
                    }
                }
                holds
            })
        })
        .collect();
    let mut revoked = 0;
    for _ in 0..60 {
        revoked += pool.revoke("shared").await.expect("revoke beside releases");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut holds = 0;
    for worker in workers {
        holds += worker.await.unwrap();
    }
    assert!(
        holds > 60 && revoked > 0,
        "holds {holds}, revoked {revoked}"
    );
}

/// Has a waiter poll for a while (the one credential held meanwhile), then
/// expects no ticket left in the store: the polls removed the tickets of
/// stores whose heartbeat stopped, and the waiter's own went when it left.
async fn polls_remove_every_dead_ticket(pool: &Pool<PostgresStore>, schema: &str) {
    let name = pool.list().await.unwrap()[0].name.clone();
    let held = pool.acquire().await.unwrap();
    assert_eq!(held.credential().name(), name);
    assert!(matches!(
        pool.acquire_timeout(Duration::from_millis(800)).await,
        Err(Error::Timeout { .. })
    ));
    held.release().await.unwrap();
    tickets_become(schema, 0, "no ticket is left").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancellation_in_four_processes_leaves_nothing() {
    let schema = fresh_schema("cancel_at_random");
    let pool = Pool::new(open(&schema).await);
    let dir = common::fresh_path("postgres-tests", "cancel-at-random");
    let log_of = |i: usize| dir.with_extension(format!("log{i}"));
    line::random_cancellation_leaves_nothing(
        &pool,
        // Each give-up costs the server a few statements under the line lock:
        // far fewer holds than on SQLite when the suite runs beside it.
        30,
        |i| processes::spawn_child("cancel-at-random", &schema, Some(&log_of(i))),
        log_of,
    )
    .await;
    // A child that ended with removals still to send leaves tickets that
    // stop waiting with its heartbeat (the stats above count none waiting)
    // and are removed by a poll once they are a ticket TTL old.
    tokio::time::sleep(DEFAULT_TICKET_TTL).await;
    let busy = pool.list().await.unwrap();
    let held: Vec<_> = {
        let mut held = Vec::new();
        for _ in 0..busy.len() {
            held.push(pool.acquire().await.unwrap());
        }
        held
    };
    assert!(matches!(
        pool.acquire_timeout(Duration::from_millis(800)).await,
        Err(Error::Timeout { .. })
    ));
    for lease in held {
        lease.release().await.unwrap();
    }
    tickets_become(&schema, 0, "no ticket is left").await;
}

/// What a program gave up on is back in the store when its graceful
/// shutdown ends, before its runtime (and the store's work on it) stops.
#[tokio::test]
async fn a_graceful_shutdown_gives_back_what_was_given_up() {
    let schema = fresh_schema("graceful_shutdown");
    let observer = Pool::new(open(&schema).await);
    processes::a_graceful_shutdown_gives_back_what_was_given_up(&observer, move || async move {
        Pool::new(open(&schema).await)
    })
    .await;
}

/// Grants asked for while a statement is in flight on every connection
/// share the next statement, which hands out each credential's free places
/// in turns and never more than its capacity.
#[tokio::test]
async fn grants_asked_for_at_once_share_a_statement_within_capacity() {
    let store = PostgresStore::options_url(&url())
        .unwrap()
        .schema(fresh_schema("batch"))
        .connections(1)
        .open()
        .await
        .unwrap();
    let pool = Pool::builder(store).no_lease_ttl().build();
    for (name, capacity) in [("a", 3), ("b", 1), ("c", 2)] {
        pool.add(NewCredential::new(name, "s").capacity(capacity))
            .await
            .unwrap();
    }
    let names = |leases: &[credpool::Lease<PostgresStore>]| {
        let mut names: Vec<String> = leases
            .iter()
            .map(|lease| lease.credential().name().to_string())
            .collect();
        names.sort();
        names
    };

    // The first goes alone and takes "a"; the other three share the next
    // statement, which takes one place of each, least recently used first:
    // "b", "c", then "a" again.
    let leases: Vec<_> = try_acquire_at_once(&pool, 4)
        .await
        .into_iter()
        .map(|lease| lease.expect("a place for each"))
        .collect();
    assert_eq!(pool.store().shared_grant_statements(), 1);
    assert_eq!(
        names(&leases),
        ["a", "a", "b", "c"],
        "one place of each first"
    );
    drop(leases);
    conformance::leases_back(&pool).await;

    // Twenty at once: every place, and no more.
    let leases: Vec<_> = try_acquire_at_once(&pool, 20)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(pool.store().shared_grant_statements(), 2);
    assert_eq!(names(&leases), ["a", "a", "a", "b", "c", "c"]);
    let mut ids: Vec<_> = leases.iter().map(|lease| lease.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "every lease has an id of its own");
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.leased, stats.leases), (3, 6));
    for lease in leases {
        lease.release().await.unwrap();
    }
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.available, stats.leases), (3, 0));
}

/// `count` calls to `try_acquire`, asked for at once.
async fn try_acquire_at_once(
    pool: &Pool<PostgresStore>,
    count: usize,
) -> Vec<Option<credpool::Lease<PostgresStore>>> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let pool = pool.clone();
        calls.spawn(async move { pool.try_acquire().await.unwrap() });
    }
    calls.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_hold_a_credential_twice() {
    let schema = fresh_schema("processes");
    let pool = Pool::new(open(&schema).await);
    processes::four_hammers_never_hold_a_credential_twice(&pool, &schema, |i| {
        common::fresh_path("postgres-tests", &format!("{schema}-log{i}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_exceed_capacity_with_weighted_grants() {
    let schema = fresh_schema("weighted_processes");
    let pool = Pool::new(open(&schema).await);
    processes::four_processes_never_exceed_capacity_with_weighted_grants(&pool, &schema, |i| {
        common::fresh_path("postgres-tests", &format!("{schema}-weighted{i}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_quota() {
    let schema = fresh_schema("quota_processes");
    let pool = Pool::new(open(&schema).await);
    processes::four_processes_share_one_quota(&pool, &schema, |i| {
        common::fresh_path("postgres-tests", &format!("{schema}-quota{i}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_its_weighted_leases_after_the_ttl() {
    let schema = fresh_schema("killed_weighted");
    let pool = Pool::new(open(&schema).await);
    processes::a_killed_weighted_holder_loses_its_units_after_the_ttl(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_its_leases_after_the_ttl() {
    let schema = fresh_schema("killed");
    let pool = Pool::new(open(&schema).await);
    processes::a_killed_holder_loses_its_leases_after_the_ttl(&pool, &schema).await;
    let stats = conformance::leases_back(&pool).await;
    assert_eq!((stats.total, stats.available), (5, 5));
}

/// The command line works on a Postgres store with `--url`.
#[test]
fn the_cli_works_with_url() {
    let schema = fresh_schema("cli");
    let credpool = |args: &[&str], stdin: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_credpool"))
            .args(["--url", &url(), "--schema", &schema])
            .args(args)
            .env_remove("CREDPOOL_DB")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "credpool {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(credpool(&["init"], "").contains(&schema));
    credpool(&["add", "alice", "--secret-stdin"], "hunter2\n");
    credpool(
        &["import", "-"],
        r#"[{"username": "bob", "password": "pw", "cookie": "c"}]"#,
    );
    credpool(&["disable", "bob", "--reason", "banned"], "");
    let listed: serde_json::Value =
        serde_json::from_str(&credpool(&["list", "--json"], "")).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let stats = credpool(&["stats", "--json"], "");
    assert!(!stats.contains("hunter2"));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (stats["total"].as_u64(), stats["disabled"].as_u64()),
        (Some(2), Some(1))
    );
}

/// A short `credpool torture` run on Postgres: worker processes killed with
/// SIGKILL every 0.8 s, their connections ended by the server, and the
/// checker finds no credential held twice and none lost.
#[test]
fn a_short_torture_run_finds_nothing_wrong() {
    let schema = fresh_schema("torture");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_credpool"))
        .args(["--url", &url(), "--schema", &schema])
        .args(["torture", "--faults", "--duration", "5", "--processes", "3"])
        .args(["--tasks", "8"])
        .args(["--kill-every", "0.8", "--lease-ttl", "700ms"])
        .env_remove("CREDPOOL_DB")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    common::assert_clean_torture_report(&report);
}

/// `credpool torture --faults` on a URL that asks for TLS: its fault
/// injector connects as the store does (over TLS, the test CA trusted)
/// and ends the workers' connections, and the checker finds nothing wrong.
#[test]
fn a_torture_run_over_tls_ends_connections() {
    let ca = std::env::var("CREDPOOL_TEST_POSTGRES_CA")
        .expect("CREDPOOL_TEST_POSTGRES_CA: run the tests through scripts/with-postgres.sh");
    let schema = fresh_schema("torture_tls");
    let secure = format!("{}?sslmode=require&sslrootcert={ca}", url());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_credpool"))
        .args(["--url", &secure, "--schema", &schema])
        .args(["torture", "--faults", "--duration", "5", "--processes", "2"])
        .args(["--tasks", "4", "--kill-every", "1", "--lease-ttl", "700ms"])
        .env_remove("CREDPOOL_DB")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}\n{said}");
    assert!(!said.contains("cannot reach"), "{said}");
    assert!(
        report.contains("connections ended by pg_terminate_backend"),
        "the injector ended connections over TLS: {report}"
    );
    common::assert_clean_torture_report(&report);
}

/// Item 24 of the defects issue: a lease dropped on a thread without a
/// runtime is released on the runtime the store was opened on, at once,
/// not when its TTL runs out.
#[test]
fn a_lease_dropped_outside_any_runtime_is_released_at_once() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schema = fresh_schema("no_runtime");
    let (pool, lease) = runtime.block_on(async {
        let store = PostgresStore::options_url(&url())
            .unwrap()
            .schema(schema.as_str())
            .lease_ttl(Duration::from_secs(600))
            .open()
            .await
            .unwrap();
        let pool = Pool::new(store);
        pool.add(NewCredential::new("a", "s")).await.unwrap();
        let lease = pool.acquire().await.unwrap();
        (pool, lease)
    });
    let lease = common::dropped_outside_any_runtime_comes_back(
        &runtime,
        &pool,
        lease,
        "released by the drop, long before its 10-minute TTL",
    );
    assert_eq!(lease.credential().name(), "a");
    assert_eq!(pool.leases_out(), 1);
    runtime.block_on(async move { drop(lease) });
}

/// Item 15: a column of another type than credpool's (a schema altered by
/// hand) is an error that names the column, never a panic.
#[tokio::test]
async fn a_column_of_the_wrong_type_is_an_error_naming_it() {
    let schema = fresh_schema("wrong_type");
    let pool = pool_in(&schema, &["a"]).await;
    raw()
        .await
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".credentials ALTER COLUMN capacity TYPE bigint"
        ))
        .await
        .unwrap();
    let error = pool.list().await.unwrap_err();
    assert!(error.to_string().contains("capacity"), "{error}");
    let error = pool.reveal().await.unwrap_err();
    assert!(error.to_string().contains("capacity"), "{error}");
}

/// TLS: with `sslmode=require` and the server's CA as `sslrootcert` in the
/// URL, the store's connections are encrypted (the server says so in
/// `pg_stat_ssl`) and it works; without the CA the certificate is not
/// trusted and the error says what to add; without `sslmode=require` the
/// store connects in the clear, as before. `scripts/with-postgres.sh`
/// starts the server with TLS and a CA of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_over_verified_tls() {
    let ca = std::env::var("CREDPOOL_TEST_POSTGRES_CA").expect(
        "CREDPOOL_TEST_POSTGRES_CA names the test server's CA: run the tests \
         through scripts/with-postgres.sh, which starts the server with TLS \
         (it needs openssl, which Debian's postgresql package brings)",
    );
    let schema = fresh_schema("tls");
    let secure = format!(
        "{}?sslmode=require&application_name=credpool-tls-{schema}&sslrootcert={ca}",
        url()
    );
    let store = PostgresStore::options_url(&secure)
        .unwrap()
        .schema(schema.as_str())
        .open()
        .await
        .expect("a TLS connection to the test server, its CA trusted");
    let pool = Pool::new(store);
    pool.add(NewCredential::new("alice", "s")).await.unwrap();
    pool.acquire().await.unwrap().release().await.unwrap();
    let counts = |encrypted: bool| {
        let schema = schema.clone();
        async move {
            let count: i64 = raw()
                .await
                .query_one(
                    "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
                     WHERE application_name = $1 AND ssl = $2",
                    &[&format!("credpool-tls-{schema}"), &encrypted],
                )
                .await
                .unwrap()
                .get(0);
            count
        }
    };
    assert!(
        counts(true).await >= 2,
        "the store's connections are encrypted"
    );
    assert_eq!(
        counts(false).await,
        0,
        "no connection of the store is in the clear"
    );
    drop(pool);

    let untrusted = PostgresStore::options_url(&format!("{}?sslmode=require", url()))
        .unwrap()
        .schema(schema.as_str())
        .open()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        untrusted.contains("certificate") && untrusted.contains("sslrootcert"),
        "{untrusted}"
    );

    let clear_name = format!("credpool-clear-{schema}");
    let clear = PostgresStore::options_url(&format!("{}?application_name={clear_name}", url()))
        .unwrap()
        .schema(schema.as_str())
        .open()
        .await
        .unwrap();
    let encrypted: i64 = raw()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE application_name = $1 AND ssl",
            &[&clear_name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        encrypted, 0,
        "sslmode=prefer (the default) stays in the clear"
    );
    drop(clear);
}

/// A lease handed to another store's waiter (a process of its own, in
/// effect) records no holder until that store claims it; the claim writes
/// the claimer: for a plain grant and a weighted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_handed_to_another_store_records_its_claimer() {
    let schema = fresh_schema("holders_handed");
    let first = pool_in(&schema, &[]).await;
    first
        .add(NewCredential::new("only", "s").capacity(2))
        .await
        .unwrap();
    let second = Pool::new(open(&schema).await);
    for units in [1, 2] {
        let held = first.acquire_units(2).await.unwrap();
        let waiter = tokio::spawn({
            let second = second.clone();
            async move {
                second
                    .acquire_units_timeout(units, Duration::from_secs(30))
                    .await
            }
        });
        common::until("the waiter queues", Duration::from_secs(10), || async {
            first.stats().await.unwrap().waiters == 1
        })
        .await;
        held.release().await.unwrap();
        let handed = waiter.await.unwrap().unwrap();
        let leases = first.list().await.unwrap()[0].leases.clone();
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(leases[0].units, units);
        conformance::assert_held_by_this_process(&leases[0]);
        handed.release().await.unwrap();
    }
}

/// Across processes on Postgres: a lease granted by one `credpool acquire`
/// records that process, and a lease handed to another process waiting in
/// the line records the waiter's process (its claim), not the releaser's.
#[test]
fn holders_across_processes() {
    let schema = fresh_schema("holders_processes");
    let command = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_credpool"));
        command
            .args(["--url", &url(), "--schema", &schema])
            .args(args)
            .env_remove("CREDPOOL_DB")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let run = |args: &[&str]| {
        let output = command(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "credpool {args:?}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let holder = || -> String {
        let listed: serde_json::Value = serde_json::from_str(&run(&["list", "--json"])).unwrap();
        let leases = &listed[0]["leases"];
        assert_eq!(leases.as_array().map(Vec::len), Some(1), "{listed}");
        leases[0]["holder"].as_str().unwrap_or_default().to_string()
    };
    run(&["init"]);
    let mut add = command(&["add", "only", "--secret-env", "SECRET"]);
    assert!(add.env("SECRET", "s").status().unwrap().success());
    let first = command(&["acquire", "--ttl", "1m", "--json"])
        .spawn()
        .unwrap();
    let first_pid = first.id();
    let lease: serde_json::Value =
        serde_json::from_slice(&first.wait_with_output().unwrap().stdout).unwrap();
    assert!(holder().starts_with(&format!("{first_pid}@")));
    let second = command(&["acquire", "--ttl", "1m", "--wait", "30s", "--json"])
        .spawn()
        .unwrap();
    let second_pid = second.id();
    let started = std::time::Instant::now();
    loop {
        let stats: serde_json::Value = serde_json::from_str(&run(&["stats", "--json"])).unwrap();
        if stats["waiters"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the second waits"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    run(&["release", lease["token"].as_str().unwrap()]);
    let output = second.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(
        holder().starts_with(&format!("{second_pid}@")),
        "the waiter's process holds what it was handed: {}",
        holder()
    );
}

/// One HTTP/1.1 request to `credpool serve` on a connection of its own:
/// the status, the headers (lower case) and the body as JSON (`Null` when
/// empty).
fn http(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, String, serde_json::Value) {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = match body.trim() {
        "" => serde_json::Value::Null,
        text => serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.into())),
    };
    (status, head.to_lowercase(), json)
}

/// `credpool serve --url` on Postgres: HTTP leases and the store's other
/// processes share one pool (a lease held in this process makes an HTTP
/// client wait, and its release reaches it through the store's line);
/// admin routes write the store; an abandoned HTTP lease ends by its TTL;
/// and SIGTERM leaves the leases to the store.
#[test]
fn serve_shares_a_postgres_pool_with_other_processes() {
    use std::io::BufRead;
    const WORKER: &str = "worker-token-for-postgres-0123";
    const ADMIN: &str = "admin-token-for-postgres-0123";
    let schema = fresh_schema("serve");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(async {
        let pool = Pool::new(open(&schema).await);
        pool.add(NewCredential::new("one", "secret-one"))
            .await
            .unwrap();
        pool
    });
    /// Kills the server when a check fails before its stop.
    struct Killed(Option<std::process::Child>);
    impl Drop for Killed {
        fn drop(&mut self) {
            if let Some(mut child) = self.0.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let errors = common::fresh_path("postgres-tests", &format!("{schema}-stderr"));
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_credpool"))
        .args(["--url", &url(), "--schema", &schema])
        .args(["serve", "--listen", "127.0.0.1:0", "--lease-ttl", "1m"])
        .env("CREDPOOL_WORKER_TOKEN", WORKER)
        .env("CREDPOOL_ADMIN_TOKEN", ADMIN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut server = Killed(Some(server));
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let base = first
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let leases = "/v1/pools/default/leases".to_string();

    // An HTTP lease is the store's: this process sees it, and waits for it.
    let (status, _, lease) = http(&base, "POST", &leases, WORKER, Some(serde_json::json!({})));
    assert_eq!(status, 201, "{lease}");
    assert_eq!(lease["secret"], "secret-one");
    let stats = rt.block_on(pool.stats()).unwrap();
    assert_eq!((stats.leases, stats.available), (1, 0), "{stats:?}");
    assert!(rt.block_on(pool.try_acquire()).unwrap().is_none());
    let (status, headers, busy) = http(&base, "POST", &leases, WORKER, Some(serde_json::json!({})));
    assert_eq!(
        (status, busy["error"].as_str()),
        (503, Some("none_free")),
        "{busy}"
    );
    assert!(headers.contains("retry-after:"), "{headers}");
    let token = lease["token"].as_str().unwrap();
    let (status, _, _) = http(
        &base,
        "POST",
        &format!("{leases}/{token}/release"),
        WORKER,
        Some(serde_json::json!({"outcome": "success"})),
    );
    assert_eq!(status, 200);

    // A lease held here makes an HTTP client wait; its release here reaches
    // the waiter in the server's process.
    let held = rt.block_on(pool.acquire()).unwrap();
    let waiter = {
        let (base, leases) = (base.clone(), leases.clone());
        std::thread::spawn(move || {
            http(
                &base,
                "POST",
                &leases,
                WORKER,
                Some(serde_json::json!({"wait": "20s", "ttl": 1})),
            )
        })
    };
    let started = std::time::Instant::now();
    while rt.block_on(pool.stats()).unwrap().waiters == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the HTTP client waits"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(held.release()).unwrap();
    let (status, _, handed) = waiter.join().unwrap();
    assert_eq!(status, 201, "{handed}");
    assert_eq!(handed["name"], "one");

    // Nobody renews that one (TTL 1 s): it ends, and this process gets it.
    let again = rt
        .block_on(pool.acquire_timeout(Duration::from_secs(20)))
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    let late = handed["token"].as_str().unwrap();
    let (status, _, _) = http(
        &base,
        "POST",
        &format!("{leases}/{late}/renew"),
        WORKER,
        None,
    );
    assert!(
        status == 404 || status == 410,
        "a lost lease is not renewed: {status}"
    );
    rt.block_on(again.release()).unwrap();

    // Admin routes write the store; a worker may not use them.
    let credentials = "/v1/pools/default/credentials";
    let new = serde_json::json!({"name": "two", "secret": "secret-two"});
    let (status, _, _) = http(&base, "POST", credentials, WORKER, Some(new.clone()));
    assert_eq!(status, 403);
    let (status, _, added) = http(&base, "POST", credentials, ADMIN, Some(new));
    assert_eq!(status, 201, "{added}");
    let (status, _, _) = http(
        &base,
        "POST",
        &format!("{credentials}/one/disable"),
        ADMIN,
        Some(serde_json::json!({"reason": "banned"})),
    );
    assert_eq!(status, 200);
    let listed = rt.block_on(pool.list()).unwrap();
    let states: Vec<(&str, bool)> = listed
        .iter()
        .map(|c| {
            let disabled = matches!(&c.state, credpool::CredentialState::Disabled { reason } if reason == "banned");
            (c.name.as_str(), disabled)
        })
        .collect();
    assert_eq!(states, [("one", true), ("two", false)]);
    let (status, _, list) = http(&base, "GET", credentials, WORKER, None);
    assert_eq!(status, 200);
    assert!(!list.to_string().contains("secret-two"), "{list}");

    // SIGTERM: the server's lease is left to the store, until its TTL.
    let (status, _, kept) = http(&base, "POST", &leases, WORKER, Some(serde_json::json!({})));
    assert_eq!(
        (status, kept["name"].as_str()),
        (201, Some("two")),
        "{kept}"
    );
    let mut child = server.0.take().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&errors).unwrap_or_default()
    );
    let stats = rt.block_on(pool.stats()).unwrap();
    assert_eq!(stats.leases, 1, "left to the store: {stats:?}");
    assert!(rt.block_on(pool.try_acquire()).unwrap().is_none());
}
