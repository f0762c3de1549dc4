//! Child processes for the tests of persistent stores: the test binary runs
//! itself again in a role, against a store it is told where to find.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credpool::{NewCredential, Pool, Store};

use super::checker::HoldLog;

const CHILD_ROLE: &str = "CREDPOOL_TEST_CHILD";
const CHILD_STORE: &str = "CREDPOOL_TEST_STORE";
const CHILD_LOG: &str = "CREDPOOL_TEST_LOG";

/// What a child process was started to do.
#[derive(Debug)]
pub struct ChildRole {
    pub role: String,
    /// Where the store is: a file path, a schema name.
    pub store: String,
    pub log: Option<PathBuf>,
}

/// The role of this process, when the test binary runs as a child.
pub fn child_role() -> Option<ChildRole> {
    let role = std::env::var(CHILD_ROLE).ok()?;
    Some(ChildRole {
        role,
        store: std::env::var(CHILD_STORE).expect("a child knows its store"),
        log: std::env::var_os(CHILD_LOG).map(PathBuf::from),
    })
}

/// A runtime for a child process's work.
pub fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs this test binary again, as a child process in `role`; the test
/// named `child_process_entry` reads the role and does the work.
pub fn spawn_child(role: &str, store: &str, log: Option<&Path>) -> Child {
    spawn_child_in(
        Command::new(std::env::current_exe().unwrap()),
        role,
        store,
        log,
    )
}

/// As [`spawn_child`], but no file the child writes may grow beyond
/// `max_file_bytes` (`RLIMIT_FSIZE`, set by util-linux's `prlimit`): writes
/// past it fail with `EFBIG`, as on a full disk (`SIGXFSZ` is ignored).
pub fn spawn_child_with_file_limit(role: &str, store: &str, max_file_bytes: u64) -> Child {
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"trap '' XFSZ; exec prlimit --fsize="$0" -- "$@""#])
        .arg(max_file_bytes.to_string())
        .arg(std::env::current_exe().unwrap());
    spawn_child_in(command, role, store, None)
}

/// As [`spawn_child`], with `dir` as the child's working directory.
pub fn spawn_child_at(role: &str, store: &str, dir: &Path) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.current_dir(dir);
    spawn_child_in(command, role, store, None)
}

fn spawn_child_in(mut command: Command, role: &str, store: &str, log: Option<&Path>) -> Child {
    command
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROLE, role)
        .env(CHILD_STORE, store)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(log) = log {
        command.env(CHILD_LOG, log);
    }
    command.spawn().expect("spawn child process")
}

/// Waits for every child without blocking the runtime.
pub async fn wait_all(children: Vec<Child>) -> Vec<ExitStatus> {
    tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|mut child| child.wait().unwrap())
            .collect()
    })
    .await
    .unwrap()
}

/// Waits (without blocking the runtime) until the child prints `expected`.
pub async fn wait_for_line(mut child: Child, expected: &'static str) -> Child {
    tokio::task::spawn_blocking(move || {
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            // libtest may print "test name ... " on the same line first.
            if line.unwrap().trim().ends_with(expected) {
                return child;
            }
        }
        panic!("child ended before printing {expected}");
    })
    .await
    .unwrap()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// 16 tasks acquire and release for two seconds, logging every hold to `log`
/// as `NAME LEASE_ID START_NS END_NS`.
pub async fn hammer<S: Store>(pool: Pool<S>, log: &Path) {
    hammer_giving_up(pool, log, false).await;
}

/// As [`hammer`]; with `give_up`, each acquire gives up after up to 200 ms
/// (cancelled by `select!`, or timed out), and half the leases are dropped
/// rather than released.
pub async fn hammer_giving_up<S: Store>(pool: Pool<S>, log: &Path, give_up: bool) {
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let tasks: Vec<_> = (0..16u64)
        .map(|seed| {
            let (pool, lines) = (pool.clone(), lines.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ u64::from(std::process::id()));
                while tokio::time::Instant::now() < deadline {
                    let lease = if give_up {
                        let patience = Duration::from_micros(rng.u64(0..200_000));
                        if rng.bool() {
                            tokio::select! {
                                lease = pool.acquire() => lease.unwrap(),
                                () = tokio::time::sleep(patience) => continue,
                            }
                        } else {
                            match pool.acquire_timeout(patience).await {
                                Ok(lease) => lease,
                                Err(credpool::Error::Timeout { .. }) => continue,
                                Err(error) => panic!("{error}"),
                            }
                        }
                    } else {
                        pool.acquire().await.unwrap()
                    };
                    let start = now_ns();
                    tokio::time::sleep(Duration::from_micros(rng.u64(100..1500))).await;
                    let end = now_ns();
                    lines.lock().unwrap().push(format!(
                        "{} {} {start} {end}",
                        lease.credential().name(),
                        lease.id()
                    ));
                    if give_up && rng.bool() {
                        drop(lease);
                    } else {
                        lease.release().await.unwrap();
                    }
                }
            })
        })
        .collect();
    end_hammer(pool, tasks, &lines, log).await;
}

/// Waits for a hammer's tasks, ends gracefully (what the tasks gave up on
/// is back before the runtime, and with it the store's work, stops), and
/// writes the log.
async fn end_hammer<S: Store>(
    pool: Pool<S>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    lines: &std::sync::Mutex<Vec<String>>,
    log: &Path,
) {
    for task in tasks {
        task.await.unwrap();
    }
    pool.close();
    pool.wait_for_leases(Duration::from_secs(20)).await.unwrap();
    let mut file = std::fs::File::create(log).unwrap();
    for line in lines.lock().unwrap().iter() {
        writeln!(file, "{line}").unwrap();
    }
}

/// 8 tasks ask for 1 to 3 units at once for two seconds, some giving up
/// while they wait, logging every hold to `log` as `NAME LEASE_ID START_NS
/// END_NS UNITS`.
pub async fn weighted_hammer<S: Store>(pool: Pool<S>, log: &Path) {
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let tasks: Vec<_> = (0..8u64)
        .map(|seed| {
            let (pool, lines) = (pool.clone(), lines.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ u64::from(std::process::id()));
                while tokio::time::Instant::now() < deadline {
                    let units = rng.u32(1..=3);
                    let patience = Duration::from_millis(rng.u64(20..1000));
                    let lease = match pool.acquire_units_timeout(units, patience).await {
                        Ok(lease) => lease,
                        Err(credpool::Error::Timeout { .. }) => continue,
                        Err(error) => panic!("{error}"),
                    };
                    assert_eq!(lease.units(), units);
                    let start = now_ns();
                    tokio::time::sleep(Duration::from_micros(rng.u64(100..2000))).await;
                    let end = now_ns();
                    lines.lock().unwrap().push(format!(
                        "{} {} {start} {end} {units}",
                        lease.credential().name(),
                        lease.id()
                    ));
                    if rng.bool() {
                        drop(lease);
                    } else {
                        lease.release().await.unwrap();
                    }
                }
            })
        })
        .collect();
    end_hammer(pool, tasks, &lines, log).await;
}

/// Four child processes run [`weighted_hammer`] against two credentials of
/// capacity 3: merged in wall-clock order, their logs never hold more
/// units of a credential at once than its capacity, and every unit comes
/// back in the end.
pub async fn four_processes_never_exceed_capacity_with_weighted_grants<S: Store>(
    pool: &Pool<S>,
    store: &str,
    log_of: impl Fn(usize) -> PathBuf,
) {
    pool.add_many((0..2).map(|i| NewCredential::new(format!("heavy-{i}"), "s").capacity(3)))
        .await
        .unwrap();
    let logs: Vec<PathBuf> = (0..4).map(log_of).collect();
    let children = logs
        .iter()
        .map(|log| spawn_child("weighted-hammer", store, Some(log)))
        .collect();
    let statuses = wait_all(children).await;
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );
    let mut holds: Vec<(String, u64, u128, u128, u32)> = Vec::new();
    for log in &logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            holds.push((
                fields[0].to_string(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
                fields[3].parse().unwrap(),
                fields[4].parse().unwrap(),
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
        let (name, lease_id, _, _, units) = &holds[i];
        if is_start {
            log.start_units(name, 3, *lease_id, *units);
        } else {
            log.end(*lease_id);
        }
    }
    log.check(|_| 3)
        .expect("no credential held past its capacity by four processes");
    // Only to show the processes worked (on Postgres a weighted ticket
    // makes later weighted asks queue behind it: far fewer grants there).
    let weighted = holds.iter().filter(|hold| hold.4 > 1).count();
    assert!(
        holds.len() > 20 && weighted > 5,
        "the processes really worked: {} grants, {weighted} weighted",
        holds.len()
    );
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.available, stats.leases), (2, 0), "{stats:?}");
}

/// Takes three leases, says `HELD`, and hangs until killed.
pub async fn hold_and_hang<S: Store>(pool: Pool<S>) {
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.acquire().await.unwrap());
    }
    println!("HELD");
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// One hold read back from a hammer's log.
#[derive(Debug)]
pub struct LoggedHold {
    pub name: String,
    pub lease_id: u64,
    start: u128,
    end: u128,
}

/// Reads the hammers' logs and checks, in wall-clock order, that no
/// credential was held twice at once and no lease id was granted twice.
/// Returns the holds.
pub fn check_hammer_logs(logs: &[PathBuf]) -> Vec<LoggedHold> {
    let mut holds = Vec::new();
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            holds.push(LoggedHold {
                name: fields[0].to_string(),
                lease_id: fields[1].parse().unwrap(),
                start: fields[2].parse().unwrap(),
                end: fields[3].parse().unwrap(),
            });
        }
    }
    let log = HoldLog::new();
    let mut points: Vec<(u128, bool, usize)> = holds
        .iter()
        .enumerate()
        .flat_map(|(i, hold)| [(hold.start, true, i), (hold.end, false, i)])
        .collect();
    points.sort_by_key(|&(at, is_start, _)| (at, is_start));
    for (_, is_start, i) in points {
        if is_start {
            log.start(&holds[i].name, 1, holds[i].lease_id);
        } else {
            log.end(holds[i].lease_id);
        }
    }
    log.check(|_| 1)
        .expect("no credential held by two processes at once");
    holds
}

/// How many holds each credential had.
pub fn uses_per_name(holds: &[LoggedHold]) -> HashMap<&str, usize> {
    let mut per_name: HashMap<&str, usize> = HashMap::new();
    for hold in holds {
        *per_name.entry(hold.name.as_str()).or_default() += 1;
    }
    per_name
}

async fn add_accounts<S: Store>(pool: &Pool<S>, count: usize) {
    pool.add_many((0..count).map(|i| NewCredential::new(format!("account-{i}"), "s")))
        .await
        .unwrap();
}

/// Four child processes hammer the empty pool's store (found at `store`)
/// with six credentials for two seconds; `log_of(i)` names child `i`'s log.
/// Checks the logs, then that the store's state matches them.
pub async fn four_hammers_never_hold_a_credential_twice<S: Store>(
    pool: &Pool<S>,
    store: &str,
    log_of: impl Fn(usize) -> PathBuf,
) {
    add_accounts(pool, 6).await;
    let logs: Vec<PathBuf> = (0..4).map(log_of).collect();
    let children = logs
        .iter()
        .map(|log| spawn_child("hammer", store, Some(log)))
        .collect();
    let statuses = wait_all(children).await;
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );

    let holds = check_hammer_logs(&logs);
    // Only to show the processes worked. A credential freed in one process
    // goes to the oldest ticket, most often another process's, which claims
    // it a moment later: fewer grants than when the process that released
    // kept re-granting to itself, and fairer ones.
    assert!(
        holds.len() > 200,
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
    assert_eq!(uses_per_name(&holds).len(), 6, "every credential was used");
}

/// A child process takes three of the empty pool's five credentials with a
/// one-second TTL and is killed with SIGKILL: the three come back after the
/// TTL, not before.
pub async fn a_killed_holder_loses_its_leases_after_the_ttl<S: Store>(pool: &Pool<S>, store: &str) {
    add_accounts(pool, 5).await;
    let child = spawn_child("hold-and-hang", store, None);
    let mut child = wait_for_line(child, "HELD").await;
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
}

/// Takes 3 and then 2 units (weighted leases), says `HELD`, and hangs until
/// killed.
pub async fn hold_units_and_hang<S: Store>(pool: Pool<S>) {
    let heavy = pool.acquire_units(3).await.unwrap();
    let lighter = pool.acquire_units(2).await.unwrap();
    println!("HELD");
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop((heavy, lighter));
}

/// A child process takes weighted leases of 3 and 2 units of the empty
/// pool's two credentials of capacity 3, with a one-second TTL, and is
/// killed with SIGKILL: their units are not granted before the TTL, and
/// all of them come back after it.
pub async fn a_killed_weighted_holder_loses_its_units_after_the_ttl<S: Store>(
    pool: &Pool<S>,
    store: &str,
) {
    pool.add_many((0..2).map(|i| NewCredential::new(format!("heavy-{i}"), "s").capacity(3)))
        .await
        .unwrap();
    let child = spawn_child("hold-units-and-hang", store, None);
    let mut child = wait_for_line(child, "HELD").await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = tokio::time::Instant::now();
    let held: u32 = pool.list().await.unwrap().iter().map(|c| c.holders).sum();
    let early = pool.try_acquire_units(2).await.unwrap();
    if killed_at.elapsed() < Duration::from_millis(900) {
        assert_eq!(held, 5, "the dead process's units are held until the TTL");
        assert!(early.is_none(), "two units are not free before the TTL");
    }
    drop(early);
    let mut back = Vec::new();
    for _ in 0..2 {
        back.push(
            pool.acquire_units_timeout(3, Duration::from_secs(5))
                .await
                .expect("every unit of the dead process comes back after the TTL"),
        );
    }
    let held: u32 = pool.list().await.unwrap().iter().map(|c| c.holders).sum();
    assert_eq!(held, 6, "both credentials whole, held here");
}

/// Runs a program on a runtime of its own, which ends when this returns:
/// for a second (or until they held 10 leases), 16 tasks over the pool
/// `open` gives acquire and give up at random (one try in four within
/// 20 ms), drop leases, and end by leaving an acquire just after it
/// started; then the program closes the pool and waits for its leases, as a graceful
/// shutdown does. The caller then checks, from outside, that the store
/// holds no lease and no ticket. Returns how many holds the tasks had.
pub fn give_up_then_shut_down<S, F>(open: impl FnOnce() -> F + Send + 'static) -> usize
where
    S: Store,
    F: std::future::Future<Output = Pool<S>>,
{
    std::thread::spawn(move || {
        child_runtime().block_on(async move {
            let pool = open().await;
            let holds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            // A second, or until the tasks held 10 leases (a busy machine),
            // but at most 20 s.
            let started = tokio::time::Instant::now();
            let deadline = started + Duration::from_secs(1);
            let limit = started + Duration::from_secs(20);
            let tasks: Vec<_> = (0..16u64)
                .map(|seed| {
                    let (pool, holds) = (pool.clone(), holds.clone());
                    tokio::spawn(async move {
                        let mut rng = fastrand::Rng::with_seed(seed);
                        loop {
                            let now = tokio::time::Instant::now();
                            let enough = holds.load(std::sync::atomic::Ordering::Relaxed) >= 10;
                            if now >= limit || (now >= deadline && enough) {
                                break;
                            }
                            // One try in four gives up within 20 ms, wherever
                            // it is; the others wait long enough for a round
                            // trip to a busy server (a waiter that gives up
                            // before any statement can answer is never served).
                            let patience = if rng.u8(..4) == 0 {
                                Duration::from_micros(rng.u64(0..20_000))
                            } else {
                                Duration::from_secs(2)
                            };
                            let Ok(lease) = tokio::time::timeout(patience, pool.acquire()).await
                            else {
                                continue;
                            };
                            let lease = lease.unwrap();
                            holds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_micros(rng.u64(0..500))).await;
                            if rng.bool() {
                                drop(lease);
                            } else {
                                lease.release().await.unwrap();
                            }
                        }
                        // Gone just after asking: the grant is on its way.
                        let _ = tokio::time::timeout(Duration::ZERO, pool.acquire()).await;
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            pool.close();
            pool.wait_for_leases(Duration::from_secs(20)).await.unwrap();
            holds.load(std::sync::atomic::Ordering::Relaxed)
        })
    })
    .join()
    .unwrap()
}

/// A program that gives up on acquires and leases at random, then closes its
/// pool and waits for its leases before its runtime ends
/// ([`give_up_then_shut_down`]), leaves the store with every credential
/// free and nobody in line, as `observer` (a pool over the same store, on
/// the test's runtime) sees at once: nothing waits for a TTL.
pub async fn a_graceful_shutdown_gives_back_what_was_given_up<S, F>(
    observer: &Pool<S>,
    open: impl FnOnce() -> F + Send + 'static,
) where
    S: Store,
    F: std::future::Future<Output = Pool<S>>,
{
    observer
        .add_many((0..3).map(|i| NewCredential::new(format!("account-{i}"), "s")))
        .await
        .unwrap();
    let holds = tokio::task::spawn_blocking(move || give_up_then_shut_down(open))
        .await
        .unwrap();
    assert!(holds >= 10, "the tasks really worked: {holds} holds");
    let stats = observer.stats().await.unwrap();
    assert_eq!(
        (stats.available, stats.leases, stats.waiters),
        (3, 0, 0),
        "{stats:?}"
    );
}

/// The scope and quota of [`four_processes_share_one_quota`].
const QUOTA_SCOPE: &str = "api";
const QUOTA: &str = "20/1s";

/// Grants each [`quota_hammer`] process takes before it stops: four
/// processes take more than the 40 one second allows, however slow the
/// machine, so the quota must hold across windows.
const QUOTA_GRANTS_PER_PROCESS: usize = 15;

/// Eight tasks take the pool's credentials for [`QUOTA_SCOPE`] until they
/// have [`QUOTA_GRANTS_PER_PROCESS`] grants (or 60 seconds passed),
/// logging each grant's store time to `log` as `NAME AT_MS`.
pub async fn quota_hammer<S: Store>(pool: Pool<S>, log: &Path) {
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (pool, taken) = (pool.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            let mut lines = Vec::new();
            while tokio::time::Instant::now() < end
                && taken.load(std::sync::atomic::Ordering::Relaxed) < QUOTA_GRANTS_PER_PROCESS
            {
                let Ok(lease) = pool
                    .acquire_for_timeout(QUOTA_SCOPE, Duration::from_millis(300))
                    .await
                else {
                    continue;
                };
                let at = lease
                    .acquired_at()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                lines.push(format!("{} {at}", lease.credential().name()));
                taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lease.release().await.unwrap();
            }
            lines
        }));
    }
    let mut lines = Vec::new();
    for task in tasks {
        lines.extend(task.await.unwrap());
    }
    // Ends gracefully: the tickets of the waiters that gave up leave the
    // store's line before the process does. (A process that just exits
    // leaves them, and whatever is handed to them, to the ticket TTL: a
    // stall of seconds for the processes still running.)
    pool.close();
    pool.wait_for_leases(Duration::from_secs(20)).await.unwrap();
    let mut out = std::fs::File::create(log).unwrap();
    for line in lines {
        writeln!(out, "{line}").unwrap();
    }
}

/// Four processes of eight tasks share two credentials limited to 20
/// grants a second each in one scope: merged, their logs never hold more
/// than 20 grants of a credential, nor 40 in all, in any second.
pub async fn four_processes_share_one_quota<S: Store>(
    pool: &Pool<S>,
    store: &str,
    log_of: impl Fn(usize) -> PathBuf,
) {
    let rate: credpool::Rate = QUOTA.parse().unwrap();
    pool.add_many(
        (0..2).map(|i| NewCredential::new(format!("limited-{i}"), "s").rate_for(QUOTA_SCOPE, rate)),
    )
    .await
    .unwrap();
    let logs: Vec<PathBuf> = (0..4).map(log_of).collect();
    let children = logs
        .iter()
        .map(|log| spawn_child("quota-hammer", store, Some(log)))
        .collect();
    let statuses = wait_all(children).await;
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );
    let mut granted = Vec::new();
    for log in &logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let (name, at) = line.split_once(' ').unwrap();
            granted.push(super::checker::Granted {
                credential: name.to_string(),
                scope: Some(QUOTA_SCOPE.to_string()),
                at_ms: at.parse().unwrap(),
            });
        }
    }
    let per_credential = super::checker::quota_violations(&granted, Some(QUOTA_SCOPE), rate);
    assert!(per_credential.is_empty(), "{per_credential:?}");
    let all: Vec<super::checker::Granted> = granted
        .iter()
        .map(|grant| super::checker::Granted {
            credential: "all".into(),
            ..grant.clone()
        })
        .collect();
    let twice: credpool::Rate = "40/1s".parse().unwrap();
    let overall = super::checker::quota_violations(&all, None, twice);
    assert!(overall.is_empty(), "{overall:?}");
    let processes = logs
        .iter()
        .filter(|log| !std::fs::read_to_string(log).unwrap().is_empty())
        .count();
    assert!(
        granted.len() >= 4 * QUOTA_GRANTS_PER_PROCESS && processes == 4,
        "the processes shared the quota: {} grants from {processes} processes",
        granted.len()
    );
    // A grant handed to a waiter that timed out as it came is counted (and
    // given back) but not logged.
    let uses: u64 = pool.list().await.unwrap().iter().map(|c| c.use_count).sum();
    assert!(
        uses >= granted.len() as u64,
        "every logged grant was counted"
    );
}
