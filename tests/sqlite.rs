//! The conformance suite on the SQLite store, and what is particular to it:
//! files that are not ours, crashes, and many processes on one file.

mod common;
mod conformance;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use credpool::store::sqlite::{
    SqliteOptions, SqliteStore, Synchronous, DEFAULT_LEASE_TTL, SCHEMA_VERSION,
};
use credpool::{Error, Granting, Leases, NewCredential, Pool};

use common::{line, processes};

/// The ticket TTL of the test where a waiting process is killed.
const KILL_TICKET_TTL: Duration = Duration::from_secs(2);
/// The ticket TTL of the test where a waiting process is stopped.
const STOP_TICKET_TTL: Duration = Duration::from_millis(600);

fn fresh_path(label: &str) -> PathBuf {
    common::fresh_path("sqlite-tests", label)
}

struct Sqlite;

impl conformance::Factory for Sqlite {
    type Store = SqliteStore;

    async fn pool(&self, ttl: Option<Duration>) -> Pool<SqliteStore> {
        let store = SqliteStore::open(fresh_path("conformance")).await.unwrap();
        let builder = Pool::builder(store);
        match ttl {
            Some(ttl) => builder.lease_ttl(ttl).build(),
            None => builder.no_lease_ttl().build(),
        }
    }
}

conformance_suite!(Sqlite);
limits_suite!(Sqlite);
weighted_suite!(Sqlite);
weighted_keeping_suite!(Sqlite);

async fn pool_at(path: &Path, names: &[&str]) -> Pool<SqliteStore> {
    let pool = Pool::new(SqliteStore::open(path).await.unwrap());
    pool.add_many(names.iter().map(|name| NewCredential::new(*name, "s")))
        .await
        .unwrap();
    pool
}

#[tokio::test]
async fn hands_out_least_recently_used_first() {
    conformance::hands_out_least_recently_used_first(&Sqlite).await;
}

#[tokio::test]
async fn state_survives_reopening() {
    let path = fresh_path("reopen");
    conformance::state_survives_reopening(|| async {
        Pool::new(SqliteStore::open(&path).await.unwrap())
    })
    .await;
}

/// A store file of version 4 (before weighted grants) is migrated when it
/// is opened: a lease held across the migration comes back as one unit,
/// and weighted grants work, counted against quotas.
#[tokio::test]
async fn a_version_4_file_is_migrated_and_takes_weighted_grants() {
    let path = fresh_path("from-v4");
    let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
    pool.add(
        NewCredential::new("kept", "s")
            .capacity(4)
            .rate("6/1h".parse().unwrap()),
    )
    .await
    .unwrap();
    let token = pool.acquire().await.unwrap().into_token();
    pool.close();
    drop(pool);
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "ALTER TABLE leases DROP COLUMN holder;
             DROP INDEX credentials_in_pool;
             ALTER TABLE leases DROP COLUMN units;
             ALTER TABLE tickets DROP COLUMN units;
             PRAGMA user_version = 4;",
        )
        .unwrap();
    }
    let pool = migrated(&path).await;
    conformance::weighted::weighted_grants_work_after_a_migration(&pool, token).await;
}

/// The store at `path` opened (so migrated) by this build, at its version.
async fn migrated(path: &std::path::Path) -> Pool<SqliteStore> {
    let pool = Pool::new(SqliteStore::open(path).await.unwrap());
    let version: i64 = rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    pool
}

#[tokio::test]
async fn a_version_5_file_is_migrated_and_records_holders() {
    let path = fresh_path("from-v5");
    let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
    pool.add(NewCredential::new("kept", "s").capacity(2))
        .await
        .unwrap();
    let _held_across = pool.acquire().await.unwrap().into_token();
    pool.close();
    drop(pool);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "ALTER TABLE leases DROP COLUMN holder;
             DROP INDEX credentials_in_pool;
             PRAGMA user_version = 5;",
        )
        .unwrap();
    let pool = migrated(&path).await;
    conformance::holders_are_recorded_after_a_migration(&pool).await;
}

/// A default quota set while a large import stages its entries (beside
/// the store thread) reaches every imported credential, as it would have
/// reached them had they been added first: the import stages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_quota_set_while_a_large_import_stages_reaches_it() {
    let path = fresh_path("import-default");
    let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
    let rate: credpool::Rate = "9/1h".parse().unwrap();
    let runtime = tokio::runtime::Handle::current();
    let setter = pool.clone();
    let set = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set_once = set.clone();
    let added = pool
        .add_many_with_progress(
            (0..20_000).map(|i| NewCredential::new(format!("bulk-{i}"), "s")),
            false,
            move |written| {
                if written == 10_000 && !set_once.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    runtime
                        .block_on(setter.set_default_rate(Some("search"), Some(rate)))
                        .unwrap();
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(added, 20_000);
    assert!(
        set.load(std::sync::atomic::Ordering::Relaxed),
        "set during staging"
    );
    let listed = pool.list().await.unwrap();
    let without = listed
        .iter()
        .filter(|c| {
            !c.limits
                .iter()
                .any(|limit| limit.scope.as_deref() == Some("search") && limit.default)
        })
        .count();
    assert_eq!(without, 0, "every imported credential has the default");
}

#[tokio::test]
async fn quota_state_survives_reopening() {
    let path = fresh_path("reopen-quota");
    conformance::limits::quota_state_survives_reopening(|| async {
        Pool::new(SqliteStore::open(&path).await.unwrap())
    })
    .await;
}

#[tokio::test]
async fn new_file_is_private_and_in_wal_mode() {
    let path = fresh_path("mode");
    let _store = SqliteStore::options(&path)
        .synchronous(Synchronous::Full)
        .open()
        .await
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
    let check = rusqlite::Connection::open(&path).unwrap();
    let mode: String = check
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = check
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

/// The write-ahead log is checkpointed while the store works (SQLite's
/// automatic checkpoints, on the store thread): after thousands of commits
/// it is still about as small as SQLite's threshold keeps it, and once the
/// store is closed every change is in the database file.
#[tokio::test]
async fn the_log_is_checkpointed_while_the_store_works() {
    let db = fresh_path("checkpoint");
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let pool = pool_at(&db, &["a", "b"]).await;
    for _ in 0..4_000 {
        pool.acquire().await.unwrap().release().await.unwrap();
    }
    // 8,000 commits of four pages or more: some 36,000 pages (of 4 KiB and
    // a 24-byte header each) if nothing checkpointed, and about 1,000 if the
    // log starts again whenever it passes SQLite's threshold. The margin is
    // for another process's reader, which can hold a restart back a while.
    let size = std::fs::metadata(&wal).unwrap().len();
    assert!(size < 12_000 * 4_120, "the log grew to {size} bytes");
    drop(pool);
    assert!(!wal.exists(), "the log is gone once the store is closed");
    let connection = rusqlite::Connection::open(&db).unwrap();
    let uses: i64 = connection
        .query_row("SELECT sum(use_count) FROM credentials", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(uses, 4_000);
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// A long read (another connection's transaction, as a backup or a
/// `list` of a million rows would hold) keeps SQLite from copying the log
/// past its snapshot while two stores (two store threads, as two
/// processes) write: the log grows. SQLite never shrinks the file again by
/// itself; the store empties it once the read is over and the log is past
/// its limit (16 MiB), and every change is in the file at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_emptied_after_a_long_read_let_it_grow() {
    let db = fresh_path("long-read-log");
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let log_size = || std::fs::metadata(&wal).map_or(0, |meta| meta.len());
    let first = pool_at(&db, &["a", "b", "c", "d"]).await;
    let second = Pool::new(SqliteStore::open(&db).await.unwrap());
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM credentials", [], |row| row.get(0))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for pool in [first.clone(), second.clone()] {
        for _ in 0..8 {
            let (pool, stop) = (pool.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut pairs = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    pool.acquire().await.unwrap().release().await.unwrap();
                    pairs += 1;
                }
                pairs
            }));
        }
    }
    // Until the log is well past the limit, or 20 s.
    let started = std::time::Instant::now();
    while log_size() < 24 << 20 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grown = log_size();
    assert!(
        grown >= 24 << 20,
        "the long read let the log grow: {grown} bytes"
    );
    reader.execute_batch("COMMIT").unwrap();
    // The stores go on writing: the log is emptied within a few seconds.
    let ended = std::time::Instant::now();
    while log_size() >= 16 << 20 && ended.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = log_size();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pairs = 0;
    for task in tasks {
        pairs += task.await.unwrap();
    }
    assert!(
        after < 16 << 20,
        "the log was {grown} bytes when the read ended and {after} bytes 10 s later"
    );
    drop((first, second));
    let connection = rusqlite::Connection::open(&db).unwrap();
    let uses: i64 = connection
        .query_row("SELECT sum(use_count) FROM credentials", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(uses as u64, pairs);
}

#[tokio::test]
async fn opening_twice_and_from_a_url_share_one_file() {
    let path = fresh_path("url");
    let first = pool_at(&path, &["a"]).await;
    let second = Pool::new(
        SqliteStore::open_url(&format!("sqlite://{}", path.display()))
            .await
            .unwrap(),
    );
    let lease = first.acquire().await.unwrap();
    assert!(
        second.try_acquire().await.unwrap().is_none(),
        "held by the other handle"
    );
    drop(lease);
    let lease = second
        .acquire_timeout(Duration::from_secs(5))
        .await
        .expect("the other handle sees the release");
    drop(lease);
    assert!(SqliteStore::open_url("sqlite://").await.is_err());
}

#[tokio::test]
async fn pools_in_one_file_are_separate() {
    let path = fresh_path("namespaces");
    let default = pool_at(&path, &["a"]).await;
    let other = Pool::new(
        SqliteStore::options(&path)
            .pool("other")
            .open()
            .await
            .unwrap(),
    );
    other
        .add(NewCredential::new("a", "other secret"))
        .await
        .unwrap();
    let one = default.acquire().await.unwrap();
    let two = other.acquire().await.unwrap();
    assert_eq!(two.credential().secret().expose(), "other secret");
    assert_eq!(default.stats().await.unwrap().total, 1);
    drop((one, two));
}

/// A file that is not ours is refused, named, and left byte for byte as it was.
#[tokio::test]
async fn foreign_files_are_refused_and_left_unchanged() {
    let random = fresh_path("random");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, &bytes).unwrap();

    let text = fresh_path("text");
    std::fs::write(&text, "these are my notes, not a database\n").unwrap();

    let other_app = fresh_path("other-app");
    {
        let connection = rusqlite::Connection::open(&other_app).unwrap();
        connection
            .execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);")
            .unwrap();
    }

    let too_new = fresh_path("too-new");
    drop(SqliteStore::open(&too_new).await.unwrap());
    {
        let connection = rusqlite::Connection::open(&too_new).unwrap();
        connection
            .execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
            .unwrap();
    }

    for (path, expect) in [
        (&random, "not a SQLite database"),
        (&text, "not a SQLite database"),
        (&other_app, "without credpool's tables"),
        (&too_new, "newer than this build"),
    ] {
        let before = std::fs::read(path).unwrap();
        let error = SqliteStore::open(path).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "names the path: {message}"
        );
        assert!(message.contains(expect), "{message}");
        match (&error, expect) {
            (Error::StoreTooNew { found, .. }, "newer than this build") => {
                assert_eq!(*found, SCHEMA_VERSION + 1)
            }
            (Error::NotAStore { .. }, _) => {}
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(
            std::fs::read(path).unwrap(),
            before,
            "{} was written to",
            path.display()
        );
        let wal = format!("{}-wal", path.display());
        assert!(
            !Path::new(&wal).exists() || path == &too_new,
            "a WAL file was created beside {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn bad_paths_get_clear_errors() {
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-dir/sub/credpool.db");
    let error = SqliteStore::open(&missing).await.unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(error.to_string().contains("no-such-dir"), "{error}");

    let file = fresh_path("parent-is-file");
    std::fs::write(&file, "x").unwrap();
    let error = SqliteStore::open(file.join("credpool.db"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not a directory"), "{error}");

    // Not writable even for root: a read-only file system.
    let error = SqliteStore::open("/proc/credpool-test.db")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(
        error.to_string().contains("/proc/credpool-test.db"),
        "{error}"
    );

    let dir = fresh_path("is-a-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let error = SqliteStore::open(&dir).await.unwrap_err();
    assert!(error.to_string().contains("directory"), "{error}");
}

#[tokio::test]
async fn a_panic_on_the_store_thread_reaches_callers_as_an_error() {
    let pool = pool_at(&fresh_path("panic"), &["a"]).await;
    let lease = pool.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|l| l.id()) }
    });
    conformance::within(Duration::from_secs(5), "waiter queued", async {
        while pool.stats().await.unwrap().waiters == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let panicked = pool.store().panic_store_thread_for_tests().await;
    assert!(
        matches!(panicked, Err(Error::StoreUnavailable { .. })),
        "{panicked:?}"
    );
    let result = conformance::within(Duration::from_secs(5), "waiter after panic", waiter)
        .await
        .unwrap();
    assert!(
        matches!(result, Err(Error::StoreUnavailable { .. })),
        "{result:?}"
    );
    for result in [
        pool.stats().await.map(|_| ()),
        pool.acquire().await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(Error::StoreUnavailable { .. })),
            "{result:?}"
        );
    }
    assert!(lease.release().await.is_err());
}

/// A grant committed after its caller left is released by the store thread.
/// The caller leaves while its grant's batch is still running: a stall
/// request batched after the grant holds the transaction open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_caller_left_is_released() {
    let path = fresh_path("unclaimed");
    let pool = pool_at(&path, &["a", "b", "c"]).await;
    let stall = |pause| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.store().stall_store_thread_for_tests(pause).await })
    };
    for _ in 0..5 {
        // Busy with the first stall, the thread lets the grant and the
        // second stall queue up and take them as one batch.
        let first = stall(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Granting::Later(mut grant) = pool.store().grant(
            Some(DEFAULT_LEASE_TTL),
            &credpool::store::Want::any(),
            credpool::store::OnBusy::Answer,
        ) else {
            panic!("a SQLite grant waits for the store thread");
        };
        tokio::select! {
            biased;
            _ = &mut grant => panic!("the store thread was busy; the grant cannot be served yet"),
            () = std::future::ready(()) => {}
        }
        let second = stall(Duration::from_millis(200));
        // The first stall is over and the grant has run; the second holds
        // the batch open as the caller leaves.
        tokio::time::sleep(Duration::from_millis(180)).await;
        drop(grant);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
    }
    let stats = conformance::leases_back(&pool).await;
    assert_eq!(stats.available, 3);
    let uses: u64 = pool.list().await.unwrap().iter().map(|c| c.use_count).sum();
    assert_eq!(uses, 5, "each grant happened and was taken back");
}

// ---- many processes ------------------------------------------------------

/// Not a test of its own: the entry point of the child processes below.
#[test]
fn child_process_entry() {
    let Some(child) = processes::child_role() else {
        return;
    };
    processes::child_runtime().block_on(async move {
        match child.role.as_str() {
            "quota-hammer" => {
                let pool = Pool::new(SqliteStore::open(&child.store).await.unwrap());
                processes::quota_hammer(pool, &child.log.unwrap()).await;
            }
            "weighted-hammer" => {
                let pool = Pool::new(SqliteStore::open(&child.store).await.unwrap());
                processes::weighted_hammer(pool, &child.log.unwrap()).await;
            }
            "hammer" => {
                let pool = Pool::new(SqliteStore::open(&child.store).await.unwrap());
                processes::hammer(pool, &child.log.unwrap()).await;
            }
            "hold-and-hang" => {
                let store = SqliteStore::options(&child.store)
                    .lease_ttl(Duration::from_secs(1))
                    .open()
                    .await
                    .unwrap();
                processes::hold_and_hang(Pool::new(store)).await;
            }
            "hold-units-and-hang" => {
                let store = SqliteStore::options(&child.store)
                    .lease_ttl(Duration::from_secs(1))
                    .open()
                    .await
                    .unwrap();
                processes::hold_units_and_hang(Pool::new(store)).await;
            }
            "fill-disk" => child_fill_disk(&child.store).await,
            "plain-sqlite-names" => {
                // What any SQLite program does: open, read, close. Closing
                // the last connection of every process checkpoints the
                // file and deletes its `-wal`.
                let connection = rusqlite::Connection::open(&child.store).unwrap();
                let names: String = connection
                    .query_row(
                        "SELECT group_concat(name, ',') FROM (SELECT name FROM credentials ORDER BY id)",
                        [],
                        |row| row.get(0),
                    )
                    .unwrap();
                connection.close().unwrap();
                println!("names: {names}");
            }
            "open-at" => {
                // STORE is `PATH START_NS`: open at that instant, add one credential.
                let (path, start) = child.store.split_once(' ').unwrap();
                let start: u128 = start.parse().unwrap();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                if start > now {
                    std::thread::sleep(Duration::from_nanos((start - now) as u64));
                }
                let pool = Pool::new(SqliteStore::open(path).await.unwrap());
                pool.add(NewCredential::new(format!("p{}", std::process::id()), "s"))
                    .await
                    .unwrap();
            }
            "queue-once" => {
                let pool = Pool::new(SqliteStore::open(&child.store).await.unwrap());
                line::queue_once(pool).await;
            }
            "share" => {
                let (path, start) = child.store.split_once(' ').unwrap();
                let pool = Pool::new(SqliteStore::open(path).await.unwrap());
                line::take_a_share(pool, start.parse().unwrap()).await;
            }
            "queue-and-hang" => {
                let store = SqliteStore::options(&child.store)
                    .ticket_ttl(KILL_TICKET_TTL)
                    .open()
                    .await
                    .unwrap();
                line::queue_and_hang(Pool::new(store), 3).await;
            }
            "queue-rarely-polling" => {
                // Renews its ticket four times per TTL, and polls no more often.
                let store = SqliteStore::options(&child.store)
                    .ticket_ttl(STOP_TICKET_TTL)
                    .poll_interval(Duration::from_secs(30))
                    .open()
                    .await
                    .unwrap();
                line::queue_once(Pool::new(store)).await;
            }
            "cancel-at-random" => {
                let pool = Pool::new(SqliteStore::open(&child.store).await.unwrap());
                line::cancel_at_random(pool, &child.log.unwrap()).await;
            }
            "open-relative" => {
                let pool = Pool::new(SqliteStore::open(&child.store).await.unwrap());
                pool.add(NewCredential::new("mine", "s")).await.unwrap();
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_hold_a_credential_twice() {
    let db = fresh_path("processes");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    processes::four_hammers_never_hold_a_credential_twice(&pool, db.to_str().unwrap(), |i| {
        db.with_extension(format!("log{i}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_exceed_capacity_with_weighted_grants() {
    let db = fresh_path("weighted-processes");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    processes::four_processes_never_exceed_capacity_with_weighted_grants(
        &pool,
        db.to_str().unwrap(),
        |i| db.with_extension(format!("log{i}")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_quota() {
    let db = fresh_path("quota-processes");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    processes::four_processes_share_one_quota(&pool, db.to_str().unwrap(), |i| {
        db.with_extension(format!("log{i}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_its_weighted_leases_after_the_ttl() {
    let db = fresh_path("killed-weighted");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    processes::a_killed_weighted_holder_loses_its_units_after_the_ttl(&pool, db.to_str().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_its_leases_after_the_ttl() {
    let db = fresh_path("killed");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    processes::a_killed_holder_loses_its_leases_after_the_ttl(&pool, db.to_str().unwrap()).await;

    let check = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = check
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let count: i64 = check
        .query_row("SELECT count(*) FROM credentials", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 5);
}

// ---- the waiting line across processes -----------------------------------

fn tickets_in(path: &Path) -> i64 {
    let check = rusqlite::Connection::open(path).unwrap();
    check
        .query_row("SELECT count(*) FROM tickets", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_four_processes_are_served_in_ticket_order() {
    let db = fresh_path("ticket-order");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    line::waiters_are_served_in_ticket_order(&pool, |role| {
        processes::spawn_child(role, db.to_str().unwrap(), None)
    })
    .await;
    assert_eq!(tickets_in(&db), 0);
}

async fn equal_shares(processes_count: usize) {
    let db = fresh_path("shares");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    line::processes_get_equal_shares(&pool, processes_count, |role, start| {
        processes::spawn_child(role, &format!("{} {start}", db.display()), None)
    })
    .await;
    assert_eq!(tickets_in(&db), 0);
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
    let db = fresh_path("killed-waiter");
    let store = SqliteStore::options(&db)
        .ticket_ttl(KILL_TICKET_TTL)
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    line::a_killed_waiter_delays_the_others_by_at_most_the_ticket_ttl(
        &pool,
        KILL_TICKET_TTL,
        |role| processes::spawn_child(role, db.to_str().unwrap(), None),
    )
    .await;
    assert_eq!(tickets_in(&db), 0, "the dead process's tickets expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancellation_in_four_processes_leaves_nothing() {
    let db = fresh_path("cancel-at-random");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    let log_of = |i: usize| db.with_extension(format!("log{i}"));
    line::random_cancellation_leaves_nothing(
        &pool,
        100,
        |i| processes::spawn_child("cancel-at-random", db.to_str().unwrap(), Some(&log_of(i))),
        log_of,
    )
    .await;
    assert_eq!(tickets_in(&db), 0, "every ticket left the line");
    let check = rusqlite::Connection::open(&db).unwrap();
    let leases: i64 = check
        .query_row("SELECT count(*) FROM leases", [], |row| row.get(0))
        .unwrap();
    assert_eq!(leases, 0);
}

/// What a program gave up on is back in the file when its graceful
/// shutdown ends, before its runtime stops.
#[tokio::test]
async fn a_graceful_shutdown_gives_back_what_was_given_up() {
    let db = fresh_path("graceful-shutdown");
    let observer = Pool::new(SqliteStore::open(&db).await.unwrap());
    processes::a_graceful_shutdown_gives_back_what_was_given_up(&observer, move || async move {
        Pool::new(SqliteStore::open(&db).await.unwrap())
    })
    .await;
}

// ---- plans at scale -------------------------------------------------------

/// A guard on the plans at scale: every statement the store thread runs for
/// grants, releases (plain, cooling down, disabling), renewals, expiries,
/// cool-downs ending, the waiting line and the calls that name a
/// credential, recorded while they run on a file of 200,000 credentials
/// (analyzed), is planned by SQLite, and none may scan `credentials` or
/// `leases`: each must find its rows through an index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_statement_of_the_lease_path_scans_a_table_at_scale() {
    let db = fresh_path("plans");
    drop(SqliteStore::open(&db).await.unwrap());
    let seed = rusqlite::Connection::open(&db).unwrap();
    seed.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
         INSERT INTO credentials (pool, name, secret, capacity, disabled_reason, last_used_at, created_at)
         SELECT 'default', 'seeded-' || i, 's', 1, 'seeded', i, 0 FROM n;
         ANALYZE;",
    )
    .unwrap();
    drop(seed);

    let store = SqliteStore::options(&db)
        .ticket_ttl(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    store.record_statements_for_tests().await.unwrap();
    let pool = Pool::builder(store)
        .lease_ttl(Duration::from_secs(60))
        .build();
    pool.add_many((0..2).map(|i| NewCredential::new(format!("live-{i}"), "s")))
        .await
        .unwrap();
    // The lease path: plain, renewed, cooling down, disabling, expiring.
    let mut lease = pool.acquire().await.unwrap();
    lease.renew().await.unwrap();
    lease.release().await.unwrap();
    let lease = pool.acquire().await.unwrap();
    lease
        .release_with(credpool::ReleaseOutcome::CoolDown(Duration::from_millis(
            30,
        )))
        .await
        .unwrap();
    let lease = pool.acquire().await.unwrap();
    lease
        .release_with(credpool::ReleaseOutcome::Disable("banned".into()))
        .await
        .unwrap();
    pool.enable("live-0").await.unwrap();
    pool.enable("live-1").await.unwrap();
    let mut short = pool.acquire().await.unwrap();
    short.renew_for(Duration::from_millis(20)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Contention: waiters in line, hand-offs, give-ups, an expiry found.
    let tasks: Vec<_> = (0..8u64)
        .map(|seed| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed);
                for _ in 0..20 {
                    let patience = Duration::from_micros(rng.u64(0..3_000));
                    if let Ok(lease) = tokio::time::timeout(patience, pool.acquire()).await {
                        let lease = lease.unwrap();
                        tokio::time::sleep(Duration::from_micros(rng.u64(0..500))).await;
                        lease.release().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(pool.try_acquire().await.unwrap().is_some() || pool.leases_out() > 0);
    assert!(matches!(
        short.release().await,
        Err(Error::LeaseLost { .. })
    ));
    pool.update_secret("live-0", "t").await.unwrap();
    pool.disable("live-1", "paused").await.unwrap();
    pool.add(NewCredential::new("live-2", "s")).await.unwrap();
    pool.close();
    pool.wait_for_leases(Duration::from_secs(10)).await.unwrap();

    let statements = SqliteStore::recorded_statements_for_tests();
    assert!(
        statements
            .iter()
            .filter(|sql| sql.contains("credentials"))
            .count()
            >= 8,
        "the statements were recorded: {statements:#?}"
    );
    let check = rusqlite::Connection::open(&db).unwrap();
    let mut faults = Vec::new();
    for sql in &statements {
        let mut explain = check.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Unbound parameters are NULL: the plan is the same.
        let mut rows = explain.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        for step in &steps {
            if ["SCAN credentials", "SCAN leases"]
                .iter()
                .any(|scan| step.starts_with(scan))
            {
                faults.push(format!("{sql}\n  -> {}", steps.join("\n  -> ")));
            }
        }
    }
    assert!(
        faults.is_empty(),
        "statements that scan a table:\n{}",
        faults.join("\n\n")
    );
}

// ---- the waiting line, between two stores on one file ---------------------
//
// Two stores opened on one file keep their waiters apart as two processes
// would: each has its own seats in the line the file keeps.

async fn two_stores(
    label: &str,
    b: impl FnOnce(SqliteOptions) -> SqliteOptions,
) -> (PathBuf, Pool<SqliteStore>, Pool<SqliteStore>) {
    let db = fresh_path(label);
    let a = pool_at(&db, &["only"]).await;
    let b = Pool::new(b(SqliteStore::options(&db)).open().await.unwrap());
    (db, a, b)
}

async fn waiters_counted(pool: &Pool<SqliteStore>, count: u64) {
    for _ in 0..2000 {
        if pool.stats().await.unwrap().waiters >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{count} waiters never showed in the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_never_overtakes_another_stores_ticket() {
    let (_db, a, b) = two_stores("no-overtaking", |options| options).await;
    let held = a.acquire().await.unwrap();
    let waiter = tokio::spawn(async move {
        let lease = b.acquire().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        lease.release().await.unwrap();
    });
    waiters_counted(&a, 1).await;
    held.release().await.unwrap();
    assert!(
        a.try_acquire().await.unwrap().is_none(),
        "the credential went to the waiting ticket, not to the newcomer"
    );
    match a.acquire_timeout(Duration::from_millis(100)).await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("the newcomer queues behind the ticket: {other:?}"),
    }
    waiter.await.unwrap();
    assert!(a.acquire_timeout(Duration::from_secs(5)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_the_waiters_of_every_store() {
    let (db, a, b) = two_stores("waiters-everywhere", |options| options).await;
    let held = a.acquire().await.unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.acquire().await.map(|lease| lease.into_token()) })
        })
        .collect();
    waiters_counted(&a, 3).await;
    assert_eq!(
        a.stats().await.unwrap().waiters,
        3,
        "three waiters, all in the other store"
    );
    for task in waiting {
        task.abort();
    }
    drop(held);
    // The tickets leave the line with their waiters.
    for _ in 0..2000 {
        if a.stats().await.unwrap().waiters == 0 && tickets_in(&db) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "the cancelled waiters' tickets stayed: {:?}",
        a.stats().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_leaves_after_the_hand_off_gives_the_credential_back_at_once() {
    // The other store hardly polls: the credential handed to its ticket would
    // wait for its claim deadline, but its waiter gives up first.
    let (_db, a, b) = two_stores("leave-after-hand-off", |options| {
        options
            .poll_interval(Duration::from_secs(30))
            .ticket_ttl(Duration::from_secs(20))
    })
    .await;
    let held = a.acquire().await.unwrap();
    let waiter = tokio::spawn(async move { b.acquire().await.map(|lease| lease.into_token()) });
    waiters_counted(&a, 1).await;
    held.release().await.unwrap();
    assert!(
        a.try_acquire().await.unwrap().is_none(),
        "handed to the other store's ticket"
    );
    waiter.abort();
    let started = std::time::Instant::now();
    // Well within the claim deadline (20 s), with room for a loaded machine.
    let lease = a.acquire_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "given back when its waiter left, not at the claim deadline"
    );
    lease.release().await.unwrap();
}

/// A process stopped (SIGSTOP) while it waits can neither renew its ticket
/// nor claim what is handed to it: it loses its turn to the waiter behind
/// it once the claim deadline passes, and when it runs again it takes a new
/// ticket and is served in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_process_loses_its_turn_and_queues_again() {
    let db = fresh_path("stopped-turn");
    let a = Pool::new(
        SqliteStore::options(&db)
            .ticket_ttl(STOP_TICKET_TTL)
            .open()
            .await
            .unwrap(),
    );
    a.add(NewCredential::new("only", "s")).await.unwrap();
    let held = a.acquire().await.unwrap();
    let child = processes::spawn_child("queue-rarely-polling", db.to_str().unwrap(), None);
    waiters_counted(&a, 1).await;
    let pid = child.id().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let a_waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.acquire_timeout(Duration::from_secs(20)).await })
    };
    // Its ticket is taken at once, and the stopped process's is still live:
    // renewed no longer than a quarter TTL ago.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let freed = std::time::Instant::now();
    held.release().await.unwrap();
    let outcome = a_waiter.await;
    let waited = freed.elapsed();
    // Running again before anything can fail, so no stopped process stays.
    signal("-CONT");
    let lease = outcome.unwrap().unwrap();
    assert!(
        waited >= STOP_TICKET_TTL / 2 && waited < STOP_TICKET_TTL * 3,
        "served after {waited:?}: once the stopped process's claim deadline passed"
    );
    lease.release().await.unwrap();
    // The stopped process's waiter lost its ticket, took a new one, and is served.
    let (child, _) = tokio::time::timeout(Duration::from_secs(20), line::read_value(child, "GOT"))
        .await
        .expect("the stopped process is served once it runs again");
    assert!(processes::wait_all(vec![child]).await[0].success());
    assert_eq!(tickets_in(&db), 0);
}

#[tokio::test]
async fn cancelled_waiters_leave_no_ticket_behind() {
    let db = fresh_path("timeouts-leave");
    let pool = pool_at(&db, &["only"]).await;
    let held = pool.acquire().await.unwrap();
    for _ in 0..5 {
        match pool.acquire_timeout(Duration::from_millis(20)).await {
            Err(Error::Timeout { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pool.stats().await.unwrap().waiters, 0);
    assert_eq!(tickets_in(&db), 0);
    held.release().await.unwrap();
}

#[tokio::test]
async fn a_ticket_ttl_too_short_to_renew_is_refused() {
    let db = fresh_path("short-ticket-ttl");
    match SqliteStore::options(&db)
        .ticket_ttl(Duration::from_millis(5))
        .open()
        .await
    {
        Err(Error::InvalidInput(invalid)) => assert_eq!(invalid.field, "ticket TTL"),
        other => panic!("{other:?}"),
    }
}

/// A lease dropped where no runtime runs still goes back, through the store thread.
#[test]
fn a_lease_dropped_outside_any_runtime_is_released() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let path = fresh_path("no-runtime");
    let (pool, lease) = runtime.block_on(async {
        let pool = pool_at(&path, &["a"]).await;
        let lease = pool.acquire().await.unwrap();
        (pool, lease)
    });
    let lease = common::dropped_outside_any_runtime_comes_back(
        &runtime,
        &pool,
        lease,
        "released by the drop",
    );
    assert_eq!(lease.credential().name(), "a");
    runtime.block_on(async move { drop(lease) });
}

/// Another process holds the write lock: callers wait within the busy
/// timeout, or fail with a clear error after it, once, not once per request;
/// the store is intact afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_write_lock_elsewhere_delays_or_fails_cleanly() {
    let path = fresh_path("locked");
    let store = SqliteStore::options(&path)
        .busy_timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    pool.add_many((0..8).map(|i| NewCredential::new(format!("a{i}"), "s")))
        .await
        .unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = tokio::time::Instant::now();
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.try_acquire().await.map(|lease| lease.is_some()) })
        })
        .collect();
    let mut errors = Vec::new();
    for attempt in attempts {
        if let Err(error) = attempt.await.unwrap() {
            errors.push(error.to_string());
        }
    }
    let waited = started.elapsed();
    assert_eq!(errors.len(), 16, "every caller saw the lock: {errors:?}");
    assert!(errors[0].contains("locked"), "{}", errors[0]);
    assert!(
        errors[0].contains(&path.display().to_string()),
        "{}",
        errors[0]
    );
    assert!(
        waited < Duration::from_secs(3),
        "16 requests waited {waited:?}: the busy timeout must not add up per request"
    );

    // A lock released within the busy timeout only delays the caller.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        other.execute_batch("COMMIT").unwrap();
    });
    let lease = pool.acquire().await.expect("served once the lock is gone");
    release.join().unwrap();
    drop(lease);
    let stats = conformance::leases_back(&pool).await;
    assert_eq!((stats.total, stats.available), (8, 8));
}

/// Adds credentials with 60 KiB secrets until a write fails; prints
/// `FILLED|<added>|<error>`.
async fn child_fill_disk(db: &str) {
    let pool = Pool::new(SqliteStore::open(db).await.unwrap());
    let secret = "s".repeat(60 * 1024);
    let mut added = 0;
    let outcome = loop {
        if added == 5_000 {
            break "never full".to_string();
        }
        match pool
            .add(NewCredential::new(
                format!("filler-{added}"),
                secret.as_str(),
            ))
            .await
        {
            Ok(()) => added += 1,
            Err(error) => break error.to_string(),
        }
    };
    println!("FILLED|{added}|{outcome}");
}

/// The disk fills up while a process writes: its write fails with a clear
/// error, and once there is room again the store opens, passes
/// `integrity_check`, and holds every credential it held before plus the
/// ones whose writes succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_loses_nothing() {
    let db = fresh_path("full");
    {
        let pool = pool_at(&db, &[]).await;
        pool.add_many((0..50).map(|i| NewCredential::new(format!("account-{i}"), "s")))
            .await
            .unwrap();
        let lease = pool.acquire().await.unwrap();
        lease.release().await.unwrap();
    }
    let size = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", db.display()))
            .map(|meta| meta.len())
            .unwrap_or(0)
    };
    let limit = size("").max(size("-wal")) + 1024 * 1024;
    let child = processes::spawn_child_with_file_limit("fill-disk", db.to_str().unwrap(), limit);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout
        .lines()
        .find_map(|line| line.split_once("FILLED|").map(|(_, report)| report))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    let (added, error) = report.split_once('|').unwrap();
    let added: u64 = added.parse().unwrap();
    assert_ne!(error, "never full", "the file limit never bit");
    assert!(
        error.contains(db.to_str().unwrap()) && (error.contains("full") || error.contains("I/O")),
        "a clear error that names the file: {error}"
    );
    assert!(!error.contains("ssssssss"), "no secret in the error");

    // Room again: the store opens and holds what it held.
    let check = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = check
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(check);
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    let names: Vec<String> = pool
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(
        names.len() as u64,
        50 + added,
        "nothing lost, nothing half-written"
    );
    assert!((0..50).all(|i| names.contains(&format!("account-{i}"))));
    let lease = pool.acquire().await.expect("the store works again");
    lease.release().await.unwrap();
}

/// A grant that waited for another process's write lock still gets its
/// whole TTL, counted from when it was granted, not from when it was asked
/// for (found by `credpool torture --faults`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_granted_after_a_lock_wait_lives_its_whole_ttl() {
    let path = fresh_path("lock-ttl");
    let store = SqliteStore::open(&path).await.unwrap();
    let pool = Pool::builder(store)
        .lease_ttl(Duration::from_millis(400))
        .build();
    pool.add(NewCredential::new("only", "s")).await.unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        other.execute_batch("COMMIT").unwrap();
    });
    let lease = pool.acquire().await.unwrap();
    let granted = std::time::SystemTime::now();
    unlock.join().unwrap();
    let left = lease
        .expires_at()
        .unwrap()
        .duration_since(granted)
        .unwrap_or_default();
    assert!(
        left > Duration::from_millis(200),
        "the lease had {left:?} left when it was handed over (TTL 400 ms)"
    );
    lease.release().await.expect("still ours");
}

/// Item 7 of the defects issue, on this store (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_a_credential_come_in_commit_order() {
    conformance::events_of_a_credential_come_in_commit_order(&Sqlite).await;
}

/// Item 1: releases made while another process holds the write lock past
/// the busy timeout are kept, counted as out, and committed once the lock
/// goes; a lock that goes soon enough only makes `release` take longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_under_a_foreign_write_lock_is_never_lost() {
    let path = fresh_path("release-locked");
    let store = SqliteStore::options(&path)
        .busy_timeout(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let pool = Pool::builder(store).no_lease_ttl().build();
    pool.add_many(["a", "b"].map(|name| NewCredential::new(name, "s")))
        .await
        .unwrap();
    let released = pool.acquire().await.unwrap();
    let dropped = pool.acquire().await.unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let result = released.release().await;
    match &result {
        Err(error @ Error::ReleasePending { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("locked"), "{message}");
        }
        other => panic!("expected a pending release, got {other:?}"),
    }
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.leases_out(), 2, "both releases wait for the lock");
    assert!(pool
        .wait_for_leases(Duration::from_millis(50))
        .await
        .is_err());

    other.execute_batch("COMMIT").unwrap();
    conformance::within(
        Duration::from_secs(10),
        "the kept releases",
        pool.wait_for_leases(Duration::from_secs(10)),
    )
    .await
    .expect("both releases commit once the lock is gone");
    let stats = conformance::leases_back(&pool).await;
    assert_eq!((stats.leases, stats.available), (0, 2));

    let lease = pool.acquire().await.unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        other.execute_batch("COMMIT").unwrap();
    });
    lease
        .release()
        .await
        .expect("committed once the lock went, within the wait");
    unlock.join().unwrap();
    assert_eq!(pool.leases_out(), 0);
}

// ---- opening files (items 5 and 9 to 15 of the defects issue) -----------

/// Item 5: eight processes open one file that does not exist yet, at the
/// same instant, in fifteen rounds (the old race lost about one in five): every one opens it, and one schema is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_create_one_new_file_at_once() {
    for round in 0..15 {
        let path = fresh_path(&format!("created-at-once-{round}"));
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            + 400_000_000;
        let store = format!("{} {start}", path.display());
        let children: Vec<_> = (0..8)
            .map(|_| processes::spawn_child("open-at", &store, None))
            .collect();
        let statuses = processes::wait_all(children).await;
        assert!(
            statuses.iter().all(|status| status.success()),
            "round {round}: {statuses:?}"
        );
        let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
        assert_eq!(pool.stats().await.unwrap().total, 8, "round {round}");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = format!(".{}", path.file_name().unwrap().to_string_lossy());
                name.starts_with(&ours) && name.ends_with(".tmp")
            })
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

/// Item 9: a path that begins with `file:` is a path, not a URI: another
/// program's `app.db` beside it is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_beginning_with_file_is_a_path() {
    let dir = fresh_path("file-uri-dir");
    // A folder of that name may be left from an earlier run under the same pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app.db");
    {
        let connection = rusqlite::Connection::open(&app).unwrap();
        connection
            .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&app).unwrap();
    let child = processes::spawn_child_at("open-relative", "file:app.db", &dir);
    let status = processes::wait_all(vec![child]).await;
    assert!(status[0].success(), "{status:?}");
    assert_eq!(
        std::fs::read(&app).unwrap(),
        before,
        "app.db was written to"
    );
    assert!(
        !dir.join("app.db-wal").exists(),
        "app.db was switched to WAL"
    );
    let ours = Pool::new(SqliteStore::open(dir.join("file:app.db")).await.unwrap());
    assert_eq!(ours.list().await.unwrap()[0].name, "mine");
}

/// Item 10: a named pipe (or any file that is not a regular one) is refused
/// at once, with the path.
#[tokio::test]
async fn a_named_pipe_is_refused_at_once() {
    let pipe = fresh_path("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap();
    assert!(made.success());
    let opened = tokio::time::timeout(Duration::from_secs(5), SqliteStore::open(&pipe))
        .await
        .expect("open returned");
    let message = opened.unwrap_err().to_string();
    assert!(message.contains("named pipe"), "{message}");
    assert!(message.contains(&pipe.display().to_string()), "{message}");
    let device = tokio::time::timeout(Duration::from_secs(5), SqliteStore::open("/dev/null"))
        .await
        .expect("open returned");
    assert!(
        device.unwrap_err().to_string().contains("device"),
        "/dev/null"
    );
}

/// Item 11: SQLite's errors name the file and say what to do.
#[tokio::test]
async fn sqlite_errors_name_the_file_and_the_fix() {
    // A write lock held elsewhere: a store of this version opens and reads
    // without it, and a write waits out the busy timeout and says so.
    let path = fresh_path("open-locked");
    drop(SqliteStore::open(&path).await.unwrap());
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let pool = Pool::new(
        SqliteStore::options(&path)
            .busy_timeout(Duration::from_millis(100))
            .open()
            .await
            .expect("a store opens under a foreign write lock"),
    );
    assert_eq!(pool.stats().await.unwrap().total, 0);
    let error = pool
        .add(NewCredential::new("alice", "s"))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::Transaction { .. }), "{error:?}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("locked") && message.contains("busy timeout"),
        "{message}"
    );
    other.execute_batch("COMMIT").unwrap();

    // A store file this user may not write (root may write anything, so
    // only where the tests do not run as root).
    let read_only = fresh_path("read-only");
    drop(SqliteStore::open(&read_only).await.unwrap());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o400)).unwrap();
    if std::fs::OpenOptions::new()
        .write(true)
        .open(&read_only)
        .is_err()
    {
        let message = SqliteStore::open(&read_only).await.unwrap_err().to_string();
        assert!(
            message.contains(&read_only.display().to_string()),
            "{message}"
        );
        assert!(message.contains("writable"), "{message}");
    }
}

/// Items 12 and 15: refusals leave the directory as they found it (no
/// `-wal`, no `-shm`), and a negative schema version is refused, not a panic.
#[tokio::test]
async fn refusals_leave_no_files_behind() {
    let foreign_wal = fresh_path("foreign-wal");
    {
        let connection = rusqlite::Connection::open(&foreign_wal).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
            )
            .unwrap();
    }
    let too_new = fresh_path("too-new-wal");
    drop(SqliteStore::open(&too_new).await.unwrap());
    rusqlite::Connection::open(&too_new)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .unwrap();
    let negative = fresh_path("negative-version");
    drop(SqliteStore::open(&negative).await.unwrap());
    rusqlite::Connection::open(&negative)
        .unwrap()
        .execute_batch("PRAGMA user_version = -1")
        .unwrap();
    for (path, expect) in [
        (&foreign_wal, "without credpool's tables"),
        (&too_new, "newer than this build"),
        (&negative, "schema version -1"),
    ] {
        let listing = |path: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&*path.file_name().unwrap().to_string_lossy()))
                .collect();
            names.sort();
            names
        };
        let before = (std::fs::read(path).unwrap(), listing(path));
        let message = SqliteStore::open(path).await.unwrap_err().to_string();
        assert!(message.contains(expect), "{message}");
        assert_eq!(
            (std::fs::read(path).unwrap(), listing(path)),
            before,
            "{} or its directory changed",
            path.display()
        );
    }
}

/// Item 13: a file credpool adopts (an empty file, an empty SQLite
/// database) is made private before any secret goes in; so are its
/// companions.
#[tokio::test]
async fn adopted_files_are_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let empty = fresh_path("adopt-empty");
    std::fs::write(&empty, "").unwrap();
    let empty_sqlite = fresh_path("adopt-empty-sqlite");
    rusqlite::Connection::open(&empty_sqlite)
        .unwrap()
        .execute_batch("VACUUM")
        .unwrap();
    for path in [&empty, &empty_sqlite] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let pool = Pool::new(SqliteStore::open(path).await.unwrap());
        pool.add(NewCredential::new("a", "top secret"))
            .await
            .unwrap();
        for file in [
            path.clone(),
            PathBuf::from(format!("{}-wal", path.display())),
        ] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
        }
    }
}

/// Item 14 (the library side): a store opened with `create(false)` is never
/// created, adopted or migrated.
#[tokio::test]
async fn opening_without_create_writes_nothing() {
    let missing = fresh_path("no-create-missing");
    let error = SqliteStore::options(&missing)
        .create(false)
        .open()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no store there"), "{error}");
    assert!(!missing.exists());
    let empty = fresh_path("no-create-empty");
    std::fs::write(&empty, "").unwrap();
    let error = SqliteStore::options(&empty)
        .create(false)
        .open()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("credpool init"), "{error}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    assert!(!PathBuf::from(format!("{}-wal", empty.display())).exists());
    let ready = fresh_path("no-create-ready");
    drop(pool_at(&ready, &["a"]).await);
    let pool = Pool::new(
        SqliteStore::options(&ready)
            .create(false)
            .open()
            .await
            .unwrap(),
    );
    assert_eq!(pool.stats().await.unwrap().total, 1);
}

/// Item 15: values no credpool writes (a negative id or count, text where a
/// number belongs) are errors, never a panic or a wrapped number.
#[tokio::test]
async fn tampered_values_are_errors_not_panics() {
    for tamper in [
        "UPDATE credentials SET use_count = -5",
        "UPDATE credentials SET capacity = 'many'",
        "UPDATE credentials SET id = -7",
        "UPDATE credentials SET last_used_at = 'yesterday'",
    ] {
        let path = fresh_path("tampered");
        let pool = pool_at(&path, &["a"]).await;
        drop(pool);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(tamper)
            .unwrap();
        let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
        let listed = pool.list().await;
        let stats = pool.stats().await;
        let acquired = pool.try_acquire().await.map(|lease| lease.is_some());
        let errors = [listed.is_err(), stats.is_err(), acquired.is_err()];
        assert!(
            errors.iter().any(|&failed| failed),
            "{tamper}: every read went through: {listed:?} {stats:?} {acquired:?}"
        );
        if let Ok(list) = &listed {
            assert!(
                list.iter().all(|info| info.use_count < u64::MAX / 2),
                "{tamper}: {list:?}"
            );
        }
        if let Ok(stats) = &stats {
            assert!(stats.available <= stats.total, "{tamper}: {stats:?}");
        }
    }
}

/// A store made from an empty file while its maker still has it open keeps
/// its schema in the `-wal`: a tool that opens it with `create(false)` reads
/// through the log and opens it, rather than calling it empty.
#[tokio::test]
async fn a_read_only_tool_sees_a_schema_still_in_the_log() {
    let path = fresh_path("schema-in-wal");
    std::fs::write(&path, "").unwrap();
    let maker = pool_at(&path, &["a"]).await;
    let reader = SqliteStore::options(&path)
        .create(false)
        .open()
        .await
        .expect("the store is ready, though its main file may not show it yet");
    assert_eq!(Pool::new(reader).stats().await.unwrap().total, 1);
    drop(maker);
}

/// A store that a newer credpool migrated, its commit still in the `-wal`
/// (another process keeps the file open), is refused as too new, though
/// the main file still shows this build's version and the open writes
/// nothing.
#[tokio::test]
async fn a_newer_version_in_the_wal_is_refused() {
    let path = fresh_path("newer-in-wal");
    drop(SqliteStore::open(&path).await.unwrap());
    let newer = rusqlite::Connection::open(&path).unwrap();
    newer
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             PRAGMA user_version = {};",
            SCHEMA_VERSION + 1
        ))
        .unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(error, Error::StoreTooNew { found, .. } if found == SCHEMA_VERSION + 1),
        "{error:?}"
    );
    drop(newer);
}

/// Whether this process holds a POSIX lock on the file at `path`, as
/// `/proc/locks` lists them (SQLite holds one while a connection is open).
#[cfg(target_os = "linux")]
fn this_process_locks(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).unwrap().ino();
    let pid = std::process::id().to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 5
                && fields[4] == pid
                && fields[5].rsplit(':').next() == Some(&inode.to_string())
        })
}

/// Opening a second store (another pool) on a file this process has open
/// keeps the process's SQLite locks on it. Were they dropped (closing any
/// other descriptor of the file drops every POSIX lock of the process on
/// it), another process's plain SQLite connection would think, as it
/// closes, that it was the last one: it would checkpoint and delete the
/// `-wal` that this process goes on writing, and those writes would be lost.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_an_open_file_keeps_the_locks_and_loses_nothing() {
    let db = common::fresh_path("sqlite-tests", "second-store");
    let store = db.to_str().unwrap();
    let first = Pool::new(SqliteStore::options(&db).pool("a").open().await.unwrap());
    first.add(NewCredential::new("before", "s")).await.unwrap();
    assert!(this_process_locks(&db), "an open store holds a lock");
    let second = Pool::new(SqliteStore::options(&db).pool("b").open().await.unwrap());
    assert!(
        this_process_locks(&db),
        "still, after a second store opened"
    );
    second.add(NewCredential::new("other", "s")).await.unwrap();
    // Refused files, and a third store that fails to open, drop nothing either.
    for refused in ["not-there/x.db", "/dev/null"] {
        assert!(SqliteStore::options(refused)
            .create(false)
            .open()
            .await
            .is_err());
    }
    let third = SqliteStore::options(&db).pool("c").open().await.unwrap();
    drop(third);
    assert!(
        this_process_locks(&db),
        "still, after a third store came and went"
    );
    for expected in ["names: before,other", "names: before,other,after,later"] {
        if expected.ends_with("later") {
            first.add(NewCredential::new("after", "s")).await.unwrap();
            second.add(NewCredential::new("later", "s")).await.unwrap();
        }
        let child = processes::spawn_child("plain-sqlite-names", store, None);
        let child = processes::wait_for_line(child, expected).await;
        processes::wait_all(vec![child]).await;
        assert!(this_process_locks(&db));
    }
    let names: Vec<String> = first
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["before", "after"]);
}
