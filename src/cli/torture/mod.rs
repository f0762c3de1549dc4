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
    /// How long the workers run: seconds, or with a unit (90s, 10m, 1h).
    #[arg(long, default_value = "10", value_parser = parse_duration)]
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
    /// Kill a random worker this often, in seconds, and start another in its
    /// place (0: never).
    #[arg(long, default_value_t = 2.0)]
    kill_every: f64,
    /// Inject the store's faults too: on SQLite, another connection holding
    /// the write lock (sometimes past the busy timeout); on Postgres, the
    /// workers' connections ended with pg_terminate_backend.
    #[arg(long)]
    faults: bool,
    /// A shell command that restarts the Postgres server, run every
    /// --restart-every seconds (scripts/with-postgres.sh exports one as
    /// $CREDPOOL_TEST_POSTGRES_CTL).
    #[arg(long, requires = "restart_every")]
    restart_command: Option<String>,
    /// How often to run --restart-command, in seconds.
    #[arg(long, requires = "restart_command")]
    restart_every: Option<f64>,
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

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write 600, 90s, 10m or 1h"))?;
    if !(number.is_finite() && number > 0.0) {
        return Err(format!("{text:?}: the duration must be more than 0"));
    }
    Ok(Duration::from_secs_f64(number * scale))
}

/// Starts workers: processes running `credpool torture-worker`, or tasks.
struct Workers<S: Store> {
    /// How a process reaches the store; `None` runs workers as tasks.
    place: Option<ChildPlace>,
    pool: Pool<S>,
    logs: PathBuf,
    tasks: usize,
    until_ms: u64,
    ttl_ms: u64,
    seed: AtomicU64,
    started: usize,
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

    fn spawn(&mut self) -> Result<Running, Failure> {
        let args = WorkerArgs {
            log: self.log(self.started),
            tasks: self.tasks,
            until_ms: self.until_ms,
            seed: self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed),
            ttl_ms: self.ttl_ms,
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
            .stdin(std::process::Stdio::null())
            .spawn()
            .map(Running::Process)
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
    let temporary = args.logs.is_none();
    let logs = args.logs.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "credpool-torture-{}-{}",
            std::process::id(),
            now_ns()
        ))
    });
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

    let duration = args.duration;
    let started = Instant::now();
    let deadline = started + duration;
    let until_ms = (SystemTime::now() + duration)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let injected = Arc::new(Injected::default());
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut child_place = place.child_args();
    let mut background: Vec<JoinHandle<()>> = Vec::new();
    let mut lock_thread = None;
    match place {
        Place::File(path) if args.faults => {
            lock_thread = Some(faults::hold_write_locks(
                path.clone(),
                std::time::Instant::now() + duration,
                seed,
                injected.clone(),
            ));
        }
        #[cfg(feature = "postgres")]
        Place::Postgres { url, .. } => {
            let application = format!("credpool-torture-{}", std::process::id());
            if let Some(child) = &mut child_place {
                for (key, value) in &mut child.env {
                    if key == "CREDPOOL_URL" {
                        *value = faults::with_application_name(value, &application);
                    }
                }
            }
            if args.faults {
                background.push(tokio::spawn(faults::terminate_connections(
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
        background.push(tokio::spawn(faults::restart_server(
            command.clone(),
            Duration::from_secs_f64(every.max(1.0)),
            deadline,
            injected.clone(),
        )));
    }
    let in_process = child_place.is_none();
    let mut workers = Workers {
        place: child_place,
        pool: pool.clone(),
        logs: logs.clone(),
        tasks: args.tasks,
        until_ms,
        ttl_ms: args.ttl().as_millis() as u64,
        seed: AtomicU64::new(seed),
        started: 0,
    };
    let mut running = Vec::new();
    for _ in 0..args.processes {
        running.push(workers.spawn()?);
    }
    eprintln!(
        "torture: {} {} x {} tasks on {} credentials in pool `{}` of {}, for {duration:?} (seed {seed})",
        args.processes,
        if in_process { "worker tasks" } else { "worker processes" },
        args.tasks,
        args.credentials,
        pool.name(),
        place.describe()
    );

    // Kill a worker now and then; add and remove credentials as an operator would.
    let (mut kills, mut replaced, mut added, mut removed) = (0, 0, 0, HashSet::new());
    let kill_every = Duration::from_secs_f64(args.kill_every.max(0.1));
    let mut next_kill = started + kill_every;
    let mut next_admin = started + Duration::from_millis(700);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        if args.kill_every > 0.0 && now >= next_kill && deadline - now > Duration::from_millis(500)
        {
            next_kill = now + kill_every;
            running.swap_remove(rng.usize(..running.len())).kill();
            kills += 1;
            running.push(workers.spawn()?);
        }
        // A worker that could not reach the store (its connection was ended
        // as it opened, the server was restarting) stops early: replace it.
        if deadline - now > Duration::from_millis(500) {
            for slot in running.iter_mut() {
                if slot.is_done() {
                    *slot = workers.spawn()?;
                    replaced += 1;
                }
            }
        }
        if now >= next_admin {
            next_admin = now + Duration::from_millis(700);
            // The store may be restarting or locked: an operator tries again later.
            if pool
                .add(NewCredential::new(
                    format!("torture-added-{added}"),
                    "secret",
                ))
                .await
                .is_ok()
            {
                added += 1;
            }
            let name = format!("torture-{}", rng.usize(..args.credentials));
            if !removed.contains(&name) && pool.remove(&name).await.is_ok() {
                removed.insert(name);
            }
        }
    }

    // The workers stop by themselves at the deadline.
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
    for task in background {
        task.abort();
    }
    if let Some(thread) = lock_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }

    let mut texts = Vec::new();
    for index in 0..workers.started {
        let path = workers.log(index);
        texts.push(std::fs::read_to_string(&path).unwrap_or_default());
    }
    let mut checked = check(&texts);
    if hung > 0 {
        checked
            .violations
            .push(format!("{hung} workers did not stop at the deadline"));
    }

    // Every lease must come back: killed workers' leases when they expire.
    // The store may still be recovering from a fault: ask again for a while.
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
    let uses: u64 = list.iter().map(|info| info.use_count).sum();

    outln!(
        "torture on {} ({:.1?})",
        place.describe(),
        started.elapsed()
    );
    outln!(
        "  workers            {} ({} started, {kills} killed{}, {replaced} stopped early and replaced)",
        args.processes,
        workers.started,
        if in_process {
            ": tasks aborted"
        } else {
            " with SIGKILL"
        }
    );
    outln!(
        "  grants             {} logged, {uses} counted by the store (removed credentials' uses leave with them)",
        checked.grants
    );
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
    if temporary {
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        outln!("  logs               {}", logs.display());
    }
    if checked.violations.is_empty() && lost.is_empty() {
        Ok(())
    } else {
        Err("torture found violations (see above)".into())
    }
}
