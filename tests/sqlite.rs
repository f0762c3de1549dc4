//! The conformance suite on the SQLite store, and what is particular to it:
//! files that are not ours, crashes, and many processes on one file.

mod common;
mod conformance;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credpool::store::sqlite::{SqliteStore, Synchronous, DEFAULT_LEASE_TTL, SCHEMA_VERSION};
use credpool::{Error, GrantAttempt, NewCredential, Pool, Store};

use common::checker::HoldLog;

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

async fn pool_at(path: &Path, names: &[&str]) -> Pool<SqliteStore> {
    let pool = Pool::new(SqliteStore::open(path).await.unwrap());
    pool.add_many(names.iter().map(|name| NewCredential::new(*name, "s")))
        .await
        .unwrap();
    pool
}

#[tokio::test]
async fn hands_out_least_recently_used_first() {
    let pool = pool_at(&fresh_path("lru"), &["a", "b", "c"]).await;
    let a = pool.acquire().await.unwrap();
    assert_eq!(a.credential().name(), "a", "never used, lowest id first");
    a.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let lease = pool.acquire().await.unwrap();
        order.push(lease.credential().name().to_string());
        lease.release().await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(order, ["b", "c", "a"]);
}

#[tokio::test]
async fn state_survives_reopening() {
    let path = fresh_path("reopen");
    let token = {
        let pool = pool_at(&path, &["a", "b"]).await;
        pool.disable("b", "banned").await.unwrap();
        let lease = pool.acquire().await.unwrap();
        lease.into_token()
    };
    let pool = Pool::new(SqliteStore::open(&path).await.unwrap());
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.total, stats.leases, stats.disabled), (2, 1, 1));
    assert!(
        pool.try_acquire().await.unwrap().is_none(),
        "a is still leased"
    );
    pool.release_token(token, credpool::ReleaseOutcome::Success)
        .await
        .expect("the lease outlives the process that took it");
    assert!(pool.try_acquire().await.unwrap().is_some());
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
#[tokio::test]
async fn a_grant_whose_caller_left_is_released() {
    let path = fresh_path("unclaimed");
    let pool = pool_at(&path, &["a", "b", "c"]).await;
    for _ in 0..50 {
        let mut expired = Vec::new();
        let mut grant = Box::pin(pool.store().grant(Some(DEFAULT_LEASE_TTL), &mut expired));
        tokio::select! {
            biased;
            attempt = &mut grant => {
                // Served before we could leave: give it back.
                if let Ok(GrantAttempt::Granted(grant)) = attempt {
                    pool.release_token(grant.token(), credpool::ReleaseOutcome::Success).await.unwrap();
                }
            }
            () = std::future::ready(()) => {}
        }
        drop(grant);
    }
    let stats = conformance::leases_back(&pool).await;
    assert_eq!(stats.available, 3);
    let uses: u64 = pool.list().await.unwrap().iter().map(|c| c.use_count).sum();
    assert!(uses > 0, "the grants really happened and were taken back");
}

// ---- many processes ------------------------------------------------------

const CHILD_ROLE: &str = "CREDPOOL_TEST_CHILD";
const CHILD_DB: &str = "CREDPOOL_TEST_DB";
const CHILD_LOG: &str = "CREDPOOL_TEST_LOG";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs this test binary again as a child process in the given role.
fn spawn_child(role: &str, db: &Path, log: Option<&Path>) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROLE, role)
        .env(CHILD_DB, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(log) = log {
        command.env(CHILD_LOG, log);
    }
    command.spawn().expect("spawn child process")
}

/// Not a test of its own: the entry point of the child processes above.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let db = PathBuf::from(std::env::var(CHILD_DB).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        match role.as_str() {
            "hammer" => child_hammer(&db, Path::new(&std::env::var(CHILD_LOG).unwrap())).await,
            "hold-and-hang" => child_hold_and_hang(&db).await,
            other => panic!("unknown child role {other}"),
        }
    });
}

/// 16 tasks acquire and release for two seconds, logging every hold.
async fn child_hammer(db: &Path, log: &Path) {
    let pool = Pool::new(SqliteStore::open(db).await.unwrap());
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let tasks: Vec<_> = (0..16u64)
        .map(|seed| {
            let (pool, lines) = (pool.clone(), lines.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ u64::from(std::process::id()));
                while tokio::time::Instant::now() < deadline {
                    let lease = pool.acquire().await.unwrap();
                    let start = now_ns();
                    tokio::time::sleep(Duration::from_micros(rng.u64(100..1500))).await;
                    let end = now_ns();
                    lines.lock().unwrap().push(format!(
                        "{} {} {start} {end}",
                        lease.credential().name(),
                        lease.id()
                    ));
                    lease.release().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut file = std::fs::File::create(log).unwrap();
    for line in lines.lock().unwrap().iter() {
        writeln!(file, "{line}").unwrap();
    }
}

/// Takes three leases with a one-second TTL, says so, and hangs until killed.
async fn child_hold_and_hang(db: &Path) {
    let store = SqliteStore::options(db)
        .lease_ttl(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    let pool = Pool::new(store);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.acquire().await.unwrap());
    }
    println!("HELD");
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

fn wait_for_line(child: &mut std::process::Child, expected: &str) {
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        // libtest may print "test name ... " on the same line first.
        if line.unwrap().trim().ends_with(expected) {
            return;
        }
    }
    panic!("child ended before printing {expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_hold_a_credential_twice() {
    let db = fresh_path("processes");
    let names: Vec<String> = (0..6).map(|i| format!("account-{i}")).collect();
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    pool.add_many(
        names
            .iter()
            .map(|name| NewCredential::new(name.as_str(), "s")),
    )
    .await
    .unwrap();
    let logs: Vec<PathBuf> = (0..4)
        .map(|i| db.with_extension(format!("log{i}")))
        .collect();
    let children: Vec<_> = logs
        .iter()
        .map(|log| spawn_child("hammer", &db, Some(log)))
        .collect();
    let statuses = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|mut child| child.wait().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );

    // Rebuild one log from the four, in wall-clock order, and check it.
    let mut holds = Vec::new();
    for log in &logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (start, end): (u128, u128) =
                (fields[2].parse().unwrap(), fields[3].parse().unwrap());
            holds.push((
                fields[0].to_string(),
                fields[1].parse::<u64>().unwrap(),
                start,
                end,
            ));
        }
    }
    let log = HoldLog::new();
    let mut points: Vec<(u128, bool, usize)> = holds
        .iter()
        .enumerate()
        .flat_map(|(i, hold)| [(hold.2, true, i), (hold.3, false, i)])
        .collect();
    points.sort_by_key(|&(at, is_start, _)| (at, is_start));
    for (_, is_start, i) in points {
        if is_start {
            log.start(&holds[i].0, 1, holds[i].1);
        } else {
            log.end(holds[i].1);
        }
    }
    log.check(|_| 1)
        .expect("no credential held by two processes at once");
    assert!(
        holds.len() > 400,
        "the processes really worked: {} grants",
        holds.len()
    );

    let stats = pool.stats().await.unwrap();
    assert_eq!(
        (stats.total, stats.available, stats.leases),
        (6, 6, 0),
        "{stats:?}"
    );
    let uses: u64 = pool.list().await.unwrap().iter().map(|c| c.use_count).sum();
    assert_eq!(uses, holds.len() as u64, "every grant is in a log");
    let mut per_name: HashMap<&str, usize> = HashMap::new();
    for hold in &holds {
        *per_name.entry(hold.0.as_str()).or_default() += 1;
    }
    assert_eq!(per_name.len(), 6, "every credential was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_its_leases_after_the_ttl() {
    let db = fresh_path("killed");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    pool.add_many((0..5).map(|i| NewCredential::new(format!("account-{i}"), "s")))
        .await
        .unwrap();
    let mut child = spawn_child("hold-and-hang", &db, None);
    let mut child = tokio::task::spawn_blocking(move || {
        wait_for_line(&mut child, "HELD");
        child
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = tokio::time::Instant::now();

    let mut early = Vec::new();
    while let Some(lease) = pool.try_acquire().await.unwrap() {
        early.push(lease);
    }
    if killed_at.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            early.len(),
            2,
            "the killed process's leases are not granted before the TTL"
        );
    }
    let mut all = early;
    for _ in 0..3 {
        all.push(
            pool.acquire_timeout(Duration::from_secs(5))
                .await
                .expect("the dead process's credentials come back after the TTL"),
        );
    }
    assert_eq!(all.len(), 5);
    drop(all);

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
    std::thread::spawn(move || {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "no runtime here"
        );
        drop(lease);
    })
    .join()
    .unwrap();
    runtime.block_on(async {
        let lease = pool
            .acquire_timeout(Duration::from_secs(5))
            .await
            .expect("released by the drop");
        assert_eq!(lease.credential().name(), "a");
    });
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
