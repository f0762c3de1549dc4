//! A torture worker: tasks that acquire, hold and give back at random, and
//! log every grant and give-back.
//!
//! The log has one line per event, appended in one `write` each, so that a
//! process killed mid-run leaves whole lines:
//!
//! - `G NAME CAPACITY LEASE_ID START_NS EXPIRES_NS SCOPE ACQUIRED_MS` after
//!   a grant (`SCOPE`: `-` for the default; `ACQUIRED_MS`: the store's time
//!   of the grant, what quotas count);
//! - `E LEASE_ID END_NS HOW` just before the lease is given back (`HOW`:
//!   released, cooled, disabled, dropped, or aborted when the task was
//!   cancelled while holding it);
//! - `F LEASE_ID` when the store refused the release as stale (fenced),
//!   `P LEASE_ID` when the store could not commit it at once and kept it
//!   (it commits later), and `X LEASE_ID` when the release failed otherwise
//!   (a violation: a release handed to the store is never dropped). The
//!   holder stopped using the credential at its `E` line in every case;
//! - `L COUNT` when the worker ends normally with releases its pool never
//!   saw take effect (a violation).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credpool::{Error, Lease, Pool, ReleaseOutcome, Store, Want};
use tokio::task::JoinSet;

use crate::cli::{Failure, Outcome};

/// What a worker process is told (a hidden command).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WorkerArgs {
    #[arg(long)]
    pub(crate) log: PathBuf,
    #[arg(long)]
    pub(crate) tasks: usize,
    #[arg(long)]
    pub(crate) until_ms: u64,
    #[arg(long)]
    pub(crate) seed: u64,
    #[arg(long)]
    pub(crate) ttl_ms: u64,
    /// Half the grants ask for this scope (the one the run's quota counts).
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// One grant in four takes 2 units.
    #[arg(long)]
    pub(crate) weighted: bool,
}

impl WorkerArgs {
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}

pub(crate) fn now_ns() -> u128 {
    to_ns(SystemTime::now())
}

fn to_ns(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

struct Log(Mutex<std::fs::File>);

impl Log {
    fn line(&self, line: String) {
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line: a killed process leaves whole lines.
        let _ = file.write_all(line.as_bytes());
    }
}

/// A lease being held: if the task is cancelled while holding it, the hold
/// is logged as ended before the lease is dropped (and so given back).
struct Held<S: Store> {
    lease: Option<Lease<S>>,
    log: Arc<Log>,
}

impl<S: Store> Held<S> {
    fn give_back(mut self, how: &str) -> Lease<S> {
        let lease = self.lease.take().expect("a held lease");
        self.log
            .line(format!("E {} {} {how}\n", lease.id(), now_ns()));
        lease
    }
}

impl<S: Store> Drop for Held<S> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.log
                .line(format!("E {} {} aborted\n", lease.id(), now_ns()));
        }
    }
}

/// Runs `tasks` tasks until the deadline. Cancelling this future (aborting
/// its task) cancels them all at whatever point they are.
pub(crate) async fn worker<S: Store>(pool: Pool<S>, args: WorkerArgs) -> Outcome {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|error| Failure(format!("{}: {error}", args.log.display())))?;
    let log = Arc::new(Log(Mutex::new(file)));
    let until = UNIX_EPOCH + Duration::from_millis(args.until_ms);
    let mut tasks = JoinSet::new();
    for task in 0..args.tasks as u64 {
        tasks.spawn(work(
            pool.clone(),
            log.clone(),
            args.seed ^ (task << 32),
            until,
            args.scope.clone(),
            args.weighted,
        ));
    }
    while tasks.join_next().await.is_some() {}
    // Every release handed to the store must take effect: the pool's books
    // count a lease as out until the store says it committed.
    if pool.wait_for_leases(Duration::from_secs(20)).await.is_err() {
        log.line(format!("L {}\n", pool.leases_out()));
    }
    Ok(())
}

async fn work<S: Store>(
    pool: Pool<S>,
    log: Arc<Log>,
    seed: u64,
    until: SystemTime,
    scope: Option<String>,
    weighted: bool,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while SystemTime::now() < until {
        let patience = if rng.u8(..4) == 0 {
            Duration::from_micros(rng.u64(0..3_000))
        } else {
            Duration::from_secs(2)
        };
        let scope = scope.as_deref().filter(|_| rng.bool());
        let units = if weighted && rng.u8(..4) == 0 { 2 } else { 1 };
        let acquire = async {
            match (scope, units) {
                (Some(scope), 1) => pool.acquire_for(scope).await,
                (None, 1) => pool.acquire().await,
                (scope, units) => {
                    let mut want = Want::any().units(units)?;
                    if let Some(scope) = scope {
                        want = want.in_scope(scope)?;
                    }
                    pool.acquire_matching(&want).await
                }
            }
        };
        let lease = match tokio::time::timeout(patience, acquire).await {
            Err(_) => continue, // cancelled at a random point
            Ok(Ok(lease)) => lease,
            Ok(Err(Error::NoCredentials { .. })) => {
                enable_one(&pool, &mut rng).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let expires = lease.expires_at().map_or(u128::MAX, to_ns);
        let id = lease.id();
        let acquired_ms = to_ns(lease.acquired_at()) / 1_000_000;
        log.line(format!(
            "G {} {} {id} {} {expires} {} {acquired_ms} {}\n",
            lease.credential().name(),
            lease.credential().capacity(),
            now_ns(),
            scope.unwrap_or("-"),
            lease.units(),
        ));
        let held = Held {
            lease: Some(lease),
            log: log.clone(),
        };
        tokio::time::sleep(Duration::from_micros(rng.u64(0..4_000))).await;
        let (how, outcome) = match rng.u8(..100) {
            0..=4 => ("dropped", None),
            5..=11 => (
                "cooled",
                Some(ReleaseOutcome::CoolDown(Duration::from_millis(
                    rng.u64(1..30),
                ))),
            ),
            12..=13 => ("disabled", Some(ReleaseOutcome::Disable("torture".into()))),
            _ => ("released", Some(ReleaseOutcome::Success)),
        };
        let lease = held.give_back(how);
        let Some(outcome) = outcome else {
            drop(lease);
            continue;
        };
        match lease.release_with(outcome).await {
            Ok(()) => {}
            Err(Error::LeaseLost { .. }) => log.line(format!("F {id}\n")),
            Err(Error::ReleasePending { .. }) => log.line(format!("P {id}\n")),
            Err(_) => log.line(format!("X {id}\n")),
        }
        if rng.u8(..10) == 0 {
            enable_one(&pool, &mut rng).await;
        }
    }
}

async fn enable_one<S: Store>(pool: &Pool<S>, rng: &mut fastrand::Rng) {
    let Ok(list) = pool.list().await else { return };
    let disabled: Vec<_> = list
        .iter()
        .filter(|info| matches!(info.state, credpool::CredentialState::Disabled { .. }))
        .collect();
    if !disabled.is_empty() {
        let _ = pool
            .enable(&disabled[rng.usize(..disabled.len())].name)
            .await;
    }
}
