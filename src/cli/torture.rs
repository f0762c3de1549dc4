//! `credpool torture`: worker processes hammer one store while some of them
//! are killed, and a checker proves from their logs that no credential was
//! held by more leases than its capacity and that none was lost.
//!
//! Each worker process appends one line per event to a log of its own, in
//! one `write` each, so that a process killed mid-run leaves every line it
//! wrote:
//!
//! - `G NAME CAPACITY LEASE_ID START_NS EXPIRES_NS` after a grant;
//! - `E LEASE_ID END_NS HOW` just before the lease is given back (`HOW`:
//!   released, cooled, disabled, dropped);
//! - `F LEASE_ID` when the store refused the release as stale (fenced), and
//!   `X LEASE_ID` when the release failed otherwise: the lease stays out until
//!   it expires.
//!
//! A hold lasts from its `G` to its `E`; a hold with no `E` (its process was
//! killed), or whose release failed, lasts until its lease expired.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credpool::{Error, NewCredential, Pool, ReleaseOutcome, Store};
use tokio::time::Instant;

use super::{ChildPlace, Failure, Outcome, Place};

#[derive(clap::Args, Debug)]
pub(crate) struct TortureArgs {
    /// How long the workers run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// How many worker processes run at once.
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// How many tasks each worker process runs.
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    /// How many credentials the run starts with (every third has capacity 2).
    #[arg(long, default_value_t = 8)]
    credentials: usize,
    /// Kill a random worker process with SIGKILL this often, in seconds, and
    /// start another in its place (0: never).
    #[arg(long, default_value_t = 2.0)]
    kill_every: f64,
    /// The lease TTL, in milliseconds: how long a killed worker's leases stay out.
    #[arg(long, default_value_t = 1500)]
    ttl_ms: u64,
    /// Keep the workers' logs in this folder (default: a temporary folder, removed).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Seed for the random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

impl TortureArgs {
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.max(100))
    }
}

/// What a worker process is told (a hidden command).
#[derive(clap::Args, Debug)]
pub(crate) struct WorkerArgs {
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    tasks: usize,
    #[arg(long)]
    until_ms: u64,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    ttl_ms: u64,
}

impl WorkerArgs {
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn to_ns(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

// ---- the worker process ----------------------------------------------------

struct Log(Mutex<std::fs::File>);

impl Log {
    fn line(&self, line: String) {
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line: a killed process leaves whole lines.
        let _ = file.write_all(line.as_bytes());
    }
}

/// The worker process: `tasks` tasks acquire (sometimes giving up at a
/// random point), hold a random while, and give back in a random way,
/// until the deadline.
pub(crate) async fn worker<S: Store>(pool: Pool<S>, args: WorkerArgs) -> Outcome {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|error| Failure(format!("{}: {error}", args.log.display())))?;
    let log = Arc::new(Log(Mutex::new(file)));
    let until = UNIX_EPOCH + Duration::from_millis(args.until_ms);
    let tasks: Vec<_> = (0..args.tasks as u64)
        .map(|task| {
            let (pool, log) = (pool.clone(), log.clone());
            tokio::spawn(work(pool, log, args.seed ^ (task << 32), until))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

async fn work<S: Store>(pool: Pool<S>, log: Arc<Log>, seed: u64, until: SystemTime) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while SystemTime::now() < until {
        let patience = if rng.u8(..4) == 0 {
            Duration::from_micros(rng.u64(0..3_000))
        } else {
            Duration::from_secs(2)
        };
        let lease = match tokio::time::timeout(patience, pool.acquire()).await {
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
        log.line(format!(
            "G {} {} {id} {} {expires}\n",
            lease.credential().name(),
            lease.credential().capacity(),
            now_ns()
        ));
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
        log.line(format!("E {id} {} {how}\n", now_ns()));
        let Some(outcome) = outcome else {
            drop(lease);
            continue;
        };
        match lease.release_with(outcome).await {
            Ok(()) => {}
            Err(Error::LeaseLost { .. }) => log.line(format!("F {id}\n")),
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

// ---- the checker -------------------------------------------------------------

/// How a hold ended, as far as its log tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Given back at `end`.
    Back(u128),
    /// Given back at `end`, but the store refused it as stale.
    Fenced(u128),
    /// The release failed, or the process died: out until the lease expired.
    Expired,
}

#[derive(Debug, Clone)]
struct Hold {
    name: String,
    capacity: u32,
    lease_id: u64,
    start: u128,
    expires: u128,
    ended: Ended,
}

impl Hold {
    /// When the credential could have gone to someone else.
    fn end(&self) -> u128 {
        match self.ended {
            Ended::Back(at) => at,
            Ended::Fenced(at) => at.min(self.expires),
            Ended::Expired => self.expires,
        }
    }
}

/// What the logs say, and what is wrong with it.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub(crate) grants: usize,
    pub(crate) grants_by_name: HashMap<String, u64>,
    pub(crate) fenced: usize,
    pub(crate) failed_or_killed: usize,
    pub(crate) violations: Vec<String>,
}

fn parse_logs(texts: &[String]) -> Result<Vec<Hold>, String> {
    let mut holds: Vec<Hold> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    let mut violations = Vec::new();
    for text in texts {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| -> Result<u128, String> {
                fields
                    .get(i)
                    .and_then(|field| field.parse().ok())
                    .ok_or_else(|| format!("a log line that does not parse: {line:?}"))
            };
            match fields[0] {
                "G" if fields.len() == 6 => {
                    let lease_id = number(3)? as u64;
                    if by_id.insert(lease_id, holds.len()).is_some() {
                        violations.push(format!("lease id {lease_id} was granted twice"));
                    }
                    holds.push(Hold {
                        name: fields[1].to_string(),
                        capacity: number(2)? as u32,
                        lease_id,
                        start: number(4)?,
                        expires: number(5)?,
                        ended: Ended::Expired,
                    });
                }
                "E" | "F" | "X" => {
                    let lease_id = number(1)? as u64;
                    let hold = by_id
                        .get(&lease_id)
                        .map(|&index| &mut holds[index])
                        .ok_or_else(|| format!("lease {lease_id} ends but was never granted"))?;
                    hold.ended = match (fields[0], hold.ended) {
                        ("E", _) => Ended::Back(number(2)?),
                        ("F", Ended::Back(at)) => Ended::Fenced(at),
                        _ => Ended::Expired,
                    };
                }
                _ => return Err(format!("a log line that does not parse: {line:?}")),
            }
        }
    }
    if violations.is_empty() {
        Ok(holds)
    } else {
        Err(violations.join("; "))
    }
}

/// Checks the workers' logs: no credential held by more leases than its
/// capacity at any moment, lease ids unique, and increasing in grant order
/// for each credential of capacity 1.
pub(crate) fn check(texts: &[String]) -> Checked {
    let holds = match parse_logs(texts) {
        Ok(holds) => holds,
        Err(violation) => {
            return Checked {
                violations: vec![violation],
                ..Checked::default()
            }
        }
    };
    let mut checked = Checked {
        grants: holds.len(),
        fenced: holds
            .iter()
            .filter(|hold| matches!(hold.ended, Ended::Fenced(_)))
            .count(),
        failed_or_killed: holds
            .iter()
            .filter(|hold| hold.ended == Ended::Expired)
            .count(),
        grants_by_name: HashMap::new(),
        violations: Vec::new(),
    };
    let mut by_name: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for hold in &holds {
        by_name.entry(hold.name.as_str()).or_default().push(hold);
        *checked.grants_by_name.entry(hold.name.clone()).or_default() += 1;
    }
    for (name, mut holds) in by_name {
        holds.sort_by_key(|hold| hold.start);
        // Ends sort before starts at the same instant.
        let mut events: Vec<(u128, i32, u64)> = holds
            .iter()
            .flat_map(|hold| {
                [
                    (hold.start, 1, hold.lease_id),
                    (hold.end(), -1, hold.lease_id),
                ]
            })
            .collect();
        events.sort();
        let capacity = holds.iter().map(|hold| hold.capacity).max().unwrap_or(1);
        let mut holding = 0;
        for (at, change, lease_id) in events {
            holding += change;
            if holding > capacity as i32 {
                checked.violations.push(format!(
                    "{name} held by {holding} leases at once (capacity {capacity}) when lease {lease_id} was granted at {at} ns"
                ));
            }
        }
        if capacity == 1 {
            for pair in holds.windows(2) {
                if pair[1].lease_id <= pair[0].lease_id {
                    checked.violations.push(format!(
                        "{name}: lease {} was granted after lease {} but has a smaller id",
                        pair[1].lease_id, pair[0].lease_id
                    ));
                }
            }
        }
    }
    checked
}

// ---- the run -----------------------------------------------------------------

struct Workers {
    place: ChildPlace,
    pool: String,
    logs: PathBuf,
    tasks: usize,
    until_ms: u64,
    ttl_ms: u64,
    seed: AtomicU64,
    started: usize,
}

impl Workers {
    fn spawn(&mut self) -> Result<Child, Failure> {
        let log = self.logs.join(format!("worker-{}.log", self.started));
        self.started += 1;
        let mut command = Command::new(
            std::env::current_exe()
                .map_err(|error| Failure(format!("cannot find this program: {error}")))?,
        );
        command.args(&self.place.args);
        command.envs(self.place.env.iter().map(|(key, value)| (key, value)));
        command
            .args(["--pool", &self.pool, "torture-worker", "--log"])
            .arg(&log)
            .args(["--tasks", &self.tasks.to_string()])
            .args(["--until-ms", &self.until_ms.to_string()])
            .args(["--ttl-ms", &self.ttl_ms.to_string()])
            .args([
                "--seed",
                &self
                    .seed
                    .fetch_add(0x9E37_79B9, Ordering::Relaxed)
                    .to_string(),
            ])
            .stdin(std::process::Stdio::null());
        command
            .spawn()
            .map_err(|error| Failure(format!("cannot start a worker process: {error}")))
    }
}

/// Runs the torture on the (empty) pool given, then checks and reports.
pub(crate) async fn run<S: Store>(pool: Pool<S>, place: &Place, args: TortureArgs) -> Outcome {
    if args.processes == 0 || args.tasks == 0 || args.credentials == 0 {
        return Err("--processes, --tasks and --credentials must be at least 1".into());
    }
    if pool.stats().await?.total > 0 {
        return Err(format!(
            "pool `{}` is not empty: torture needs a pool of its own",
            pool.name()
        )
        .into());
    }
    let seed = args.seed.unwrap_or_else(|| now_ns() as u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let temporary = match &args.logs {
        Some(_) => None,
        None => Some(tempfile_dir()?),
    };
    let logs = args
        .logs
        .clone()
        .or_else(|| temporary.clone())
        .unwrap_or_default();
    std::fs::create_dir_all(&logs)
        .map_err(|error| Failure(format!("{}: {error}", logs.display())))?;
    pool.add_many((0..args.credentials).map(|i| {
        NewCredential::new(format!("torture-{i}"), "secret").capacity(if i % 3 == 2 {
            2
        } else {
            1
        })
    }))
    .await?;

    let duration = Duration::from_secs_f64(args.duration.max(0.5));
    let started = Instant::now();
    let until_ms = (SystemTime::now() + duration)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut workers = Workers {
        place: place.child_args(),
        pool: pool.name().to_string(),
        logs: logs.clone(),
        tasks: args.tasks,
        until_ms,
        ttl_ms: args.ttl().as_millis() as u64,
        seed: AtomicU64::new(seed),
        started: 0,
    };
    let mut children = Vec::new();
    for _ in 0..args.processes {
        children.push(workers.spawn()?);
    }
    eprintln!(
        "torture: {} worker processes x {} tasks on {} credentials in pool `{}` of {}, for {duration:?} (seed {seed})",
        args.processes,
        args.tasks,
        args.credentials,
        pool.name(),
        place.describe()
    );

    // Kill a worker now and then; add and remove credentials as an operator would.
    let (mut kills, mut added, mut removed) = (0, 0, HashSet::new());
    let mut next_kill = started + Duration::from_secs_f64(args.kill_every.max(0.1));
    let mut next_admin = started + Duration::from_millis(700);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        if args.kill_every > 0.0
            && now >= next_kill
            && duration - started.elapsed() > Duration::from_millis(500)
        {
            next_kill = now + Duration::from_secs_f64(args.kill_every);
            let victim = rng.usize(..children.len());
            let mut child: Child = children.swap_remove(victim);
            let _ = child.kill();
            let _ = child.wait();
            kills += 1;
            children.push(workers.spawn()?);
        }
        if now >= next_admin {
            next_admin = now + Duration::from_millis(700);
            pool.add(NewCredential::new(
                format!("torture-added-{added}"),
                "secret",
            ))
            .await?;
            added += 1;
            let name = format!("torture-{}", rng.usize(..args.credentials));
            if !removed.contains(&name) && pool.remove(&name).await.is_ok() {
                removed.insert(name);
            }
        }
    }

    // The workers stop by themselves at the deadline.
    let grace = Instant::now() + Duration::from_secs(15);
    let mut hung = 0;
    for mut child in children {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < grace => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    hung += 1;
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }

    let mut texts = Vec::new();
    for index in 0..workers.started {
        let path = logs.join(format!("worker-{index}.log"));
        texts.push(
            std::fs::read_to_string(&path)
                .map_err(|error| Failure(format!("{}: {error}", path.display())))?,
        );
    }
    let mut checked = check(&texts);
    if hung > 0 {
        checked.violations.push(format!(
            "{hung} worker processes did not stop at the deadline"
        ));
    }

    // Every lease must come back: killed workers' leases when they expire.
    let back_by = Instant::now() + args.ttl() + Duration::from_secs(5);
    let mut stats = pool.stats().await?;
    while stats.leases > 0 && Instant::now() < back_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stats = pool.stats().await?;
    }
    let list = pool.list().await?;
    let lost: Vec<&str> = list
        .iter()
        .filter(|info| info.holders > 0)
        .map(|info| info.name.as_str())
        .collect();
    let expected: HashSet<String> = (0..args.credentials)
        .map(|i| format!("torture-{i}"))
        .filter(|name| !removed.contains(name))
        .chain((0..added).map(|i| format!("torture-added-{i}")))
        .collect();
    let present: HashSet<String> = list.iter().map(|info| info.name.clone()).collect();
    let missing: Vec<&String> = expected.difference(&present).collect();
    let strangers: Vec<&String> = present.difference(&expected).collect();
    if !missing.is_empty() || !strangers.is_empty() {
        checked.violations.push(format!(
            "the store's credentials differ from what was added and removed: missing {missing:?}, unexpected {strangers:?}"
        ));
    }
    // A grant the store made may be missing from the logs (its process was
    // killed before writing it, or its caller gave up as it came), never the
    // other way round.
    for info in &list {
        let logged = checked.grants_by_name.get(&info.name).copied().unwrap_or(0);
        if info.use_count < logged {
            checked.violations.push(format!(
                "{}: the store counts {} uses but the logs hold {logged} grants",
                info.name, info.use_count
            ));
        }
    }
    let uses: u64 = list.iter().map(|info| info.use_count).sum();

    outln!(
        "torture on {} ({:.1?})",
        place.describe(),
        started.elapsed()
    );
    outln!(
        "  worker processes   {} ({} started, {kills} killed with SIGKILL)",
        args.processes,
        workers.started
    );
    outln!(
        "  grants             {} logged, {uses} counted by the store",
        checked.grants
    );
    outln!("  fenced releases    {}", checked.fenced);
    outln!(
        "  expired leases     {} (release failed or holder killed)",
        checked.failed_or_killed
    );
    outln!(
        "  admin changes      {added} added, {} removed",
        removed.len()
    );
    outln!("  violations         {}", checked.violations.len());
    for violation in checked.violations.iter().take(10) {
        outln!("    {violation}");
    }
    outln!(
        "  credentials lost   {}{}",
        lost.len(),
        if lost.is_empty() {
            String::new()
        } else {
            format!(" {lost:?}")
        }
    );

    for info in &list {
        let _ = pool.remove_forced(&info.name).await;
    }
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        outln!("  logs               {}", logs.display());
    }
    if checked.violations.is_empty() && lost.is_empty() {
        Ok(())
    } else {
        Err("torture found violations (see above)".into())
    }
}

fn tempfile_dir() -> Result<PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!(
        "credpool-torture-{}-{}",
        std::process::id(),
        now_ns()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|error| Failure(format!("{}: {error}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<String> {
        vec![lines.join("\n")]
    }

    #[test]
    fn clean_logs_pass() {
        let checked = check(&log(&[
            "G a 1 1 100 9000",
            "E 1 200 released",
            "G a 1 2 300 9000",
            "E 2 400 released",
            "G b 2 3 100 9000",
            "G b 2 4 150 9000",
        ]));
        assert_eq!(checked.violations, Vec::<String>::new());
        assert_eq!(checked.grants, 4);
        assert_eq!(checked.failed_or_killed, 2);
    }

    #[test]
    fn an_overlap_is_caught() {
        let checked = check(&log(&[
            "G a 1 1 100 9000",
            "G a 1 2 150 9000",
            "E 2 170 released",
            "E 1 200 released",
        ]));
        assert_eq!(checked.violations.len(), 1, "{:?}", checked.violations);
        assert!(checked.violations[0].contains("a held by 2"));
    }

    #[test]
    fn a_killed_holder_holds_until_its_lease_expires() {
        // Lease 1's process died: the next grant must wait for the expiry at 500.
        let early = check(&log(&["G a 1 1 100 500", "G a 1 2 400 9000"]));
        assert_eq!(early.violations.len(), 1, "{:?}", early.violations);
        let late = check(&log(&["G a 1 1 100 500", "G a 1 2 600 9000"]));
        assert!(late.violations.is_empty(), "{:?}", late.violations);
    }

    #[test]
    fn duplicate_and_decreasing_ids_are_caught() {
        let twice = check(&log(&[
            "G a 1 7 100 9000",
            "E 7 200 released",
            "G b 1 7 300 9000",
        ]));
        assert!(
            twice.violations[0].contains("granted twice"),
            "{:?}",
            twice.violations
        );
        let decreasing = check(&log(&[
            "G a 1 9 100 9000",
            "E 9 200 released",
            "G a 1 8 300 9000",
        ]));
        assert!(
            decreasing.violations[0].contains("smaller id"),
            "{:?}",
            decreasing.violations
        );
    }

    #[test]
    fn a_fenced_release_ends_at_the_expiry() {
        let checked = check(&log(&[
            "G a 1 1 100 500",
            "E 1 700 released",
            "F 1",
            "G a 1 2 600 9000",
        ]));
        assert!(checked.violations.is_empty(), "{:?}", checked.violations);
        assert_eq!(checked.fenced, 1);
    }
}
