//! `credpool torture`: workers hammer one store while some of them are
//! killed and faults are injected, and a checker proves from their logs that
//! no credential was held by more leases than its capacity and that none
//! was lost.
//!
//! On a file or a database the workers are processes, killed with SIGKILL;
//! on the memory store (`--memory`) they are tasks of this process, aborted
//! at whatever point they are.

mod check;
mod faults;
mod worker;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credpool::{NewCredential, Pool, Store};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::check::check;
use self::faults::Injected;
use self::worker::now_ns;
pub(crate) use self::worker::{worker, WorkerArgs};
use super::{ChildPlace, Failure, Outcome, Place};

#[derive(clap::Args, Debug)]
pub(crate) struct TortureArgs {
    /// How long the workers run: 90s, 10m, 1h, or seconds.
    #[arg(short = 't', long, default_value = "10s", value_parser = super::duration::parse_positive, value_name = "DURATION")]
    duration: Duration,
    /// How many workers run at once (processes; tasks with --memory).
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// How many tasks each worker runs.
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    /// How many credentials the run starts with (every third has capacity 2).
    #[arg(long, default_value_t = 8)]
    credentials: usize,
    /// Kill a random worker this often (2s, 500ms, or seconds), and start
    /// another in its place (0: never).
    #[arg(long, default_value = "2s", value_parser = super::duration::parse, value_name = "DURATION")]
    kill_every: Duration,
    /// Inject the store's faults too: workers killed while their tasks wait
    /// in line (their tickets become no-shows); on SQLite, another
    /// connection holding the write lock (sometimes past the busy timeout);
    /// on Postgres, the workers' connections ended with pg_terminate_backend.
    #[arg(long)]
    faults: bool,
    /// A shell command that restarts the Postgres server, run every
    /// --restart-every (scripts/with-postgres.sh exports one as
    /// $CREDPOOL_TEST_POSTGRES_CTL).
    #[arg(long, requires = "restart_every")]
    restart_command: Option<String>,
    /// How often to run --restart-command: 60s, 2m, or seconds.
    #[arg(long, requires = "restart_command", value_parser = super::duration::parse_positive, value_name = "DURATION")]
    restart_every: Option<Duration>,
    /// The lease TTL (1500ms, 2s): how long a killed worker's leases stay
    /// out; a killed worker's tickets live as long, unless --ticket-ttl says.
    #[arg(long, default_value = "1500ms", value_parser = lease_ttl, value_name = "DURATION")]
    pub(crate) lease_ttl: Duration,
    /// The lease TTL in milliseconds (the older spelling of --lease-ttl).
    #[arg(long, hide = true, conflicts_with = "lease_ttl", value_parser = clap::value_parser!(u64).range(100..))]
    ttl_ms: Option<u64>,
    /// The ticket TTL the workers use (the global --ticket-ttl).
    #[arg(skip)]
    pub(crate) ticket_ttl: Option<Duration>,
    /// Keep the workers' logs in this folder (default: a temporary folder, removed).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// A quota on every credential, e.g. 50/1s, in the scope `torture` that
    /// half the grants ask for; the checker proves from the logs that no
    /// window ever held more grants of a credential in it.
    #[arg(long, value_parser = super::parse_rate, value_name = "N/DURATION")]
    pub(crate) rate: Option<credpool::Rate>,
    /// One grant in four asks for 2 units of a credential at once (those of
    /// capacity 2 serve them); the checker counts the units held.
    #[arg(long)]
    pub(crate) weighted: bool,
    /// Seed for the random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

impl TortureArgs {
    /// The lease TTL asked for, by either spelling.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl_ms.map_or(self.lease_ttl, Duration::from_millis)
    }
}

/// A lease TTL for the torture: at least credpool's shortest.
fn lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = super::duration::parse_positive(text)?;
    if ttl < credpool::MIN_LEASE_TTL {
        return Err(format!(
            "{text} is shorter than the shortest lease TTL, {:?}",
            credpool::MIN_LEASE_TTL
        ));
    }
    Ok(ttl)
}

/// Starts workers: processes running `credpool torture-worker`, or tasks.
struct Workers<S: Store> {
    /// How a process reaches the store; `None` runs workers as tasks.
    place: Option<ChildPlace>,
    in_process: bool,
    pool: Pool<S>,
    logs: PathBuf,
    tasks: usize,
    until_ms: u64,
    ttl_ms: u64,
    ticket_ttl: Option<Duration>,
    seed: AtomicU64,
    started: usize,
    /// The scope half the grants ask for, with --rate.
    scope: Option<String>,
    /// Whether one grant in four takes 2 units.
    weighted: bool,
}

enum Running {
    Process(Child),
    Task(JoinHandle<Outcome>),
}

impl Running {
    fn kill(self) {
        match self {
            Running::Process(mut child) => {
                let _ = child.kill(); // SIGKILL
                let _ = child.wait();
            }
            Running::Task(task) => task.abort(),
        }
    }

    fn is_done(&mut self) -> bool {
        match self {
            Running::Process(child) => !matches!(child.try_wait(), Ok(None)),
            Running::Task(task) => task.is_finished(),
        }
    }
}

impl<S: Store> Workers<S> {
    fn log(&self, index: usize) -> PathBuf {
        self.logs.join(format!("worker-{index}.log"))
    }

    /// The logs of every worker started, as far as each got.
    fn logs_written(&self) -> Vec<String> {
        (0..self.started)
            .map(|index| std::fs::read_to_string(self.log(index)).unwrap_or_default())
            .collect()
    }

    fn spawn(&mut self) -> Result<Running, Failure> {
        let args = WorkerArgs {
            log: self.log(self.started),
            tasks: self.tasks,
            until_ms: self.until_ms,
            seed: self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed),
            ttl_ms: self.ttl_ms,
            scope: self.scope.clone(),
            weighted: self.weighted,
        };
        self.started += 1;
        let Some(place) = &self.place else {
            return Ok(Running::Task(tokio::spawn(worker(self.pool.clone(), args))));
        };
        let program = std::env::current_exe()
            .map_err(|error| Failure(format!("cannot find this program: {error}")))?;
        Command::new(program)
            .args(&place.args)
            .envs(place.env.iter().map(|(key, value)| (key, value)))
            .args(["--pool", self.pool.name(), "torture-worker", "--log"])
            .arg(&args.log)
            .args(["--tasks", &args.tasks.to_string()])
            .args(["--until-ms", &args.until_ms.to_string()])
            .args(["--ttl-ms", &args.ttl_ms.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(
                args.scope
                    .iter()
                    .flat_map(|scope| ["--scope", scope.as_str()]),
            )
            .args(args.weighted.then_some("--weighted"))
            .args(
                self.ticket_ttl
                    .into_iter()
                    .flat_map(|ttl| ["--ticket-ttl".to_string(), format!("{}ms", ttl.as_millis())]),
            )
            .stdin(std::process::Stdio::null())
            .spawn()
            .map(Running::Process)
            .map_err(|error| Failure(format!("cannot start a worker process: {error}")))
    }
}

/// Runs the torture on the (empty) pool given, then checks and reports.
pub(crate) async fn run<S: Store>(pool: Pool<S>, place: &Place, args: TortureArgs) -> Outcome {
    let seed = args.seed.unwrap_or_else(|| now_ns() as u64);
    let logs = prepare(&pool, &args).await?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let injected = Arc::new(Injected::default());
    let mut faults = start_faults(place, &args, deadline, seed, &injected);
    let child_place = faults.child_place.take();
    let mut workers = Workers {
        in_process: child_place.is_none(),
        place: child_place,
        pool: pool.clone(),
        logs: logs.path.clone(),
        tasks: args.tasks,
        until_ms: (SystemTime::now() + args.duration)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        ttl_ms: args.ttl().as_millis() as u64,
        ticket_ttl: args.ticket_ttl,
        seed: AtomicU64::new(seed),
        started: 0,
        scope: args.rate.map(|_| QUOTA_SCOPE.to_string()),
        weighted: args.weighted,
    };
    let mut running = Vec::new();
    for _ in 0..args.processes {
        running.push(workers.spawn()?);
    }
    errln!(
        "torture: {} {} x {} tasks on {} credentials in pool `{}` of {}, for {:?} (seed {seed})",
        args.processes,
        if workers.in_process {
            "worker tasks"
        } else {
            "worker processes"
        },
        args.tasks,
        args.credentials,
        pool.name(),
        place.describe(),
        args.duration,
    );
    let churn = churn(
        &pool,
        &args,
        &mut workers,
        &mut running,
        deadline,
        seed,
        &injected,
    )
    .await?;
    let hung = stop(running).await;
    faults.stop().await;

    let mut checked = check(
        &workers.logs_written(),
        args.rate.map(|rate| (QUOTA_SCOPE, rate)),
    );
    if hung > 0 {
        checked
            .violations
            .push(format!("{hung} workers did not stop at the deadline"));
    }
    let list = reconcile(&pool, &args, &churn, &mut checked).await?;
    let lost: Vec<&str> = list
        .iter()
        .filter(|info| info.holders > 0)
        .map(|info| info.name.as_str())
        .collect();
    report(
        place,
        &args,
        &Summary {
            started,
            workers: &workers,
            churn: &churn,
            checked: &checked,
            injected: &injected,
            list: &list,
            lost: &lost,
        },
    );

    for info in &list {
        let _ = pool.remove_forced(&info.name).await;
    }
    logs.finish();
    if checked.violations.is_empty() && lost.is_empty() {
        Ok(())
    } else {
        Err("torture found violations (see above)".into())
    }
}

/// The scope that a run's quota (--rate) counts.
const QUOTA_SCOPE: &str = "torture";

/// A credential of the run, with its quota when there is one.
fn with_rate(credential: NewCredential, rate: Option<credpool::Rate>) -> NewCredential {
    match rate {
        Some(rate) => credential.rate_for(QUOTA_SCOPE, rate),
        None => credential,
    }
}

/// Where the workers' logs go, and whether they are removed at the end.
struct Logs {
    path: PathBuf,
    temporary: bool,
}

impl Logs {
    fn finish(self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            outln!("  logs               {}", self.path.display());
        }
    }
}

/// Checks the arguments and that the pool is empty, makes the logs'
/// folder, and adds the credentials the run starts with.
async fn prepare<S: Store>(pool: &Pool<S>, args: &TortureArgs) -> Result<Logs, Failure> {
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
    let logs = Logs {
        temporary: args.logs.is_none(),
        path: args.logs.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "credpool-torture-{}-{}",
                std::process::id(),
                now_ns()
            ))
        }),
    };
    std::fs::create_dir_all(&logs.path)
        .map_err(|error| Failure(format!("{}: {error}", logs.path.display())))?;
    pool.add_many((0..args.credentials).map(|i| {
        with_rate(
            NewCredential::new(format!("torture-{i}"), "secret").capacity(if i % 3 == 2 {
                2
            } else {
                1
            }),
            args.rate,
        )
    }))
    .await?;
    Ok(logs)
}

/// The faults running beside the workers, and how the workers reach the store.
struct Faults {
    child_place: Option<ChildPlace>,
    background: Vec<JoinHandle<()>>,
    lock_thread: Option<std::thread::JoinHandle<()>>,
}

impl Faults {
    async fn stop(self) {
        for task in self.background {
            task.abort();
        }
        if let Some(thread) = self.lock_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Starts the faults `--faults` and `--restart-command` ask for.
fn start_faults(
    place: &Place,
    args: &TortureArgs,
    deadline: Instant,
    seed: u64,
    injected: &Arc<Injected>,
) -> Faults {
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut faults = Faults {
        child_place: place.child_args(),
        background: Vec::new(),
        lock_thread: None,
    };
    match place {
        Place::File(path) if args.faults => {
            faults.lock_thread = Some(faults::hold_write_locks(
                path.clone(),
                std::time::Instant::now() + args.duration,
                seed,
                injected.clone(),
            ));
        }
        #[cfg(feature = "postgres")]
        Place::Postgres { url, .. } => {
            let application = format!("credpool-torture-{}", std::process::id());
            if let Some(child) = &mut faults.child_place {
                for (key, value) in &mut child.env {
                    if key == "CREDPOOL_URL" {
                        *value = faults::with_application_name(value, &application);
                    }
                }
            }
            if args.faults {
                faults
                    .background
                    .push(tokio::spawn(faults::terminate_connections(
                        url.clone(),
                        application.clone(),
                        deadline,
                        seed,
                        injected.clone(),
                    )));
            }
        }
        _ => {}
    }
    if let (Some(command), Some(every)) = (&args.restart_command, args.restart_every) {
        faults.background.push(tokio::spawn(faults::restart_server(
            command.clone(),
            every.max(Duration::from_secs(1)),
            deadline,
            injected.clone(),
        )));
    }
    faults
}

/// What the run did to the workers and the pool until the deadline.
struct Churn {
    kills: usize,
    replaced: usize,
    added: usize,
    removed: HashSet<String>,
}

/// Until the deadline: kills a worker now and then and starts another,
/// replaces workers that stopped early, and adds and removes credentials
/// as an operator would.
async fn churn<S: Store>(
    pool: &Pool<S>,
    args: &TortureArgs,
    workers: &mut Workers<S>,
    running: &mut Vec<Running>,
    deadline: Instant,
    seed: u64,
    injected: &Injected,
) -> Result<Churn, Failure> {
    let mut rng = fastrand::Rng::with_seed(seed);
    // With --faults: now and then a worker joins, and is killed a moment
    // later while its tasks wait at the back of the line. Its tickets are
    // no-shows: they expire, and what was handed to them comes back at the
    // claim deadline.
    let mut queued: Vec<(Running, Instant)> = Vec::new();
    let mut next_queuer = Instant::now() + Duration::from_millis(rng.u64(1_000..2_500));
    let mut churn = Churn {
        kills: 0,
        replaced: 0,
        added: 0,
        removed: HashSet::new(),
    };
    let started = Instant::now();
    let kill_every = args.kill_every.max(Duration::from_millis(100));
    let mut next_kill = started + kill_every;
    let mut next_admin = started + Duration::from_millis(700);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let well_before_the_end = deadline - now > Duration::from_millis(500);
        if !args.kill_every.is_zero() && now >= next_kill && well_before_the_end {
            next_kill = now + kill_every;
            running.swap_remove(rng.usize(..running.len())).kill();
            churn.kills += 1;
            running.push(workers.spawn()?);
        }
        // A worker that could not reach the store (its connection was ended
        // as it opened, the server was restarting) stops early: replace it.
        if well_before_the_end {
            for slot in running.iter_mut() {
                if slot.is_done() {
                    *slot = workers.spawn()?;
                    churn.replaced += 1;
                }
            }
        }
        if args.faults && now >= next_queuer && well_before_the_end {
            next_queuer = now + Duration::from_millis(rng.u64(1_000..2_500));
            let kill_at = now + Duration::from_millis(rng.u64(100..400));
            queued.push((workers.spawn()?, kill_at));
        }
        for (queuer, _) in extract_due(&mut queued, now) {
            queuer.kill();
            injected
                .killed_in_line
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if now >= next_admin {
            next_admin = now + Duration::from_millis(700);
            // The store may be restarting or locked: an operator tries again later.
            let name = format!("torture-added-{}", churn.added);
            if pool
                .add(with_rate(NewCredential::new(name, "secret"), args.rate))
                .await
                .is_ok()
            {
                churn.added += 1;
            }
            let name = format!("torture-{}", rng.usize(..args.credentials));
            if !churn.removed.contains(&name) && pool.remove(&name).await.is_ok() {
                churn.removed.insert(name);
            }
        }
    }
    for (queuer, _) in queued {
        queuer.kill();
        injected
            .killed_in_line
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(churn)
}

/// Takes out the workers whose time to be killed has come.
fn extract_due(queued: &mut Vec<(Running, Instant)>, now: Instant) -> Vec<(Running, Instant)> {
    let (due, waiting) = std::mem::take(queued)
        .into_iter()
        .partition(|(_, at)| *at <= now);
    *queued = waiting;
    due
}

/// Waits up to 20 s for the workers, which stop by themselves at the
/// deadline; kills the rest and returns how many there were.
async fn stop(running: Vec<Running>) -> usize {
    let grace = Instant::now() + Duration::from_secs(20);
    let mut hung = 0;
    for mut worker in running {
        while !worker.is_done() && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !worker.is_done() {
            hung += 1;
            worker.kill();
        }
    }
    hung
}

/// Waits for every lease to come back (killed workers' leases when they
/// expire; the store may still be recovering from a fault), then holds the
/// store's credentials and counts against what the run added, removed and
/// logged. Returns the store's list.
async fn reconcile<S: Store>(
    pool: &Pool<S>,
    args: &TortureArgs,
    churn: &Churn,
    checked: &mut check::Checked,
) -> Result<Vec<credpool::CredentialInfo>, Failure> {
    let back_by = Instant::now() + args.ttl() + Duration::from_secs(10);
    let list = loop {
        match (pool.stats().await, pool.list().await) {
            (Ok(stats), Ok(list)) if stats.leases == 0 || Instant::now() >= back_by => break list,
            (Err(error), _) | (_, Err(error)) if Instant::now() >= back_by => {
                return Err(error.into())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let expected: HashSet<String> = (0..args.credentials)
        .map(|i| format!("torture-{i}"))
        .filter(|name| !churn.removed.contains(name))
        .chain((0..churn.added).map(|i| format!("torture-added-{i}")))
        .collect();
    let present: HashSet<String> = list.iter().map(|info| info.name.clone()).collect();
    let missing: Vec<&String> = expected.difference(&present).collect();
    let strangers: Vec<&String> = present.difference(&expected).collect();
    if !missing.is_empty() || !strangers.is_empty() {
        checked.violations.push(format!(
            "the store's credentials differ from what was added and removed: missing {missing:?}, unexpected {strangers:?}"
        ));
    }
    // A grant the store made may be missing from the logs (its worker was
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
    Ok(list)
}

/// What the report tells.
struct Summary<'a, S: Store> {
    started: Instant,
    workers: &'a Workers<S>,
    churn: &'a Churn,
    checked: &'a check::Checked,
    injected: &'a Injected,
    list: &'a [credpool::CredentialInfo],
    lost: &'a [&'a str],
}

fn report<S: Store>(place: &Place, args: &TortureArgs, summary: &Summary<'_, S>) {
    let Summary {
        started,
        workers,
        churn,
        checked,
        injected,
        list,
        lost,
    } = summary;
    let uses: u64 = list.iter().map(|info| info.use_count).sum();
    outln!(
        "torture on {} ({:.1?})",
        place.describe(),
        started.elapsed()
    );
    outln!(
        "  workers            {} ({} started, {} killed{}, {} stopped early and replaced)",
        args.processes,
        workers.started,
        churn.kills,
        if workers.in_process {
            ": tasks aborted"
        } else {
            " with SIGKILL"
        },
        churn.replaced
    );
    outln!(
        "  grants             {} logged, {uses} counted by the store (removed credentials' uses leave with them)",
        checked.grants
    );
    if let Some(rate) = args.rate {
        outln!(
            "  quota              {rate} per credential in scope `{QUOTA_SCOPE}` (half the grants), checked"
        );
    }
    if args.weighted {
        outln!("  weighted           one grant in four takes 2 units; units held checked against capacity");
    }
    outln!("  faults injected    {}", injected.describe());
    outln!("  fenced releases    {}", checked.fenced);
    outln!(
        "  pending releases   {} (kept by the store and committed later)",
        checked.pending
    );
    outln!(
        "  failed releases    {} (each a violation: a release is never dropped)",
        checked.failed
    );
    outln!(
        "  killed holding     {} (out until the lease expired)",
        checked.killed
    );
    outln!(
        "  admin changes      {} added, {} removed",
        churn.added,
        churn.removed.len()
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
}
