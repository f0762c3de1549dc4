//! `credpool demo`: aio-credentials-pool's worker simulation, with graceful stop.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credpool::{Error, NewCredential, Pool, Store};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Failure, Outcome, Place};

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// How many workers run at once.
    #[arg(short, long, default_value_t = 300)]
    workers: usize,
    /// How many demo credentials to create when the pool is empty
    /// [default: 100].
    #[arg(short, long)]
    credentials: Option<usize>,
    /// How long one piece of work takes, in milliseconds: MIN..MAX.
    #[arg(long, default_value = "20..200", value_parser = parse_range)]
    work_ms: (u64, u64),
    /// Stop after this long, e.g. 30s, 10m or 2.5 (seconds) (default: run
    /// until Ctrl-C, SIGTERM or SIGHUP).
    #[arg(short = 't', long, value_parser = super::duration::parse, value_name = "DURATION")]
    duration: Option<Duration>,
    /// How long a lease lives unless renewed: a killed demo's leases come
    /// back after this, e.g. 30s (default: the store's, 5 minutes on a
    /// file or Postgres, none in memory).
    #[arg(long, value_parser = super::duration::parse_positive, value_name = "DURATION")]
    pub(crate) lease_ttl: Option<Duration>,
    /// A quota on every demo credential, e.g. 10/1s: at most N grants in
    /// any window of DURATION, so the workers wait for quotas to free.
    #[arg(long, value_parser = super::parse_rate, value_name = "N/DURATION")]
    rate: Option<credpool::Rate>,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (low, high) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not a range: write MIN..MAX, e.g. 20..200"))?;
    let low: u64 = low
        .trim()
        .parse()
        .map_err(|_| format!("{low:?} is not a number of milliseconds"))?;
    let high: u64 = high
        .trim()
        .parse()
        .map_err(|_| format!("{high:?} is not a number of milliseconds"))?;
    if low > high {
        return Err(format!("{low}..{high}: MIN is larger than MAX"));
    }
    Ok((low, high))
}

/// What the workers count as they go.
#[derive(Default)]
struct Counters {
    grants: AtomicU64,
    /// Releases the store refused because the lease was no longer held.
    lost_releases: AtomicU64,
    /// Of those, the ones whose credential was removed meanwhile.
    removed_releases: AtomicU64,
    /// Releases the store could not commit yet (it keeps them and retries).
    pending_releases: AtomicU64,
    /// Acquires and releases that failed for another reason.
    store_errors: AtomicU64,
    /// The latest store error, for the progress line and the summary.
    last_error: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Counters {
    fn store_failed(&self, error: &Error) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((Instant::now(), error.to_string()));
        }
    }

    /// The latest store error, if it happened in the last two seconds.
    fn recent_error(&self) -> Option<String> {
        let last = self.last_error.lock().ok()?;
        let (at, message) = last.as_ref()?;
        (at.elapsed() < Duration::from_secs(2)).then(|| message.clone())
    }
}

/// Counts a failed release under its real cause.
async fn count_failed_release<S: Store>(
    pool: &Pool<S>,
    counters: &Counters,
    name: &str,
    error: Error,
) {
    match &error {
        Error::LeaseLost { .. } => {
            counters.lost_releases.fetch_add(1, Ordering::Relaxed);
            let removed = pool
                .list()
                .await
                .is_ok_and(|list| list.iter().all(|info| info.name != name));
            if removed {
                counters.removed_releases.fetch_add(1, Ordering::Relaxed);
            }
        }
        Error::ReleasePending { .. } => {
            counters.pending_releases.fetch_add(1, Ordering::Relaxed);
            counters.store_failed(&error);
        }
        _ => counters.store_failed(&error),
    }
}

/// How many credentials a demo makes in an empty pool, unless told.
const DEFAULT_CREDENTIALS: usize = 100;

pub(crate) async fn run<S: Store>(pool: Pool<S>, place: &Place, args: DemoArgs) -> Outcome {
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let before = pool.stats().await?;
    if before.total == 0 {
        let credentials = args.credentials.unwrap_or(DEFAULT_CREDENTIALS);
        if credentials == 0 {
            return Err("the pool is empty and --credentials is 0: nothing to hand out".into());
        }
        let mut rng = fastrand::Rng::new();
        let demo = (1..=credentials).map(|i| {
            let secret: String = std::iter::repeat_with(|| rng.alphanumeric())
                .take(16)
                .collect();
            let credential = NewCredential::new(format!("demo-{i:04}"), secret);
            match args.rate {
                Some(rate) => credential.rate(rate),
                None => credential,
            }
        });
        pool.add_many_skip_existing(demo).await?;
        errln!(
            "created {credentials} demo credentials in {} (remove them to start over)",
            place.describe()
        );
    } else {
        if let Some(asked) = args.credentials {
            errln!(
                "--credentials {asked} is ignored: the pool has {} credentials already \
                 (remove them, or pick another pool with --pool)",
                before.total
            );
        }
        errln!(
            "using the {} credentials in {}",
            before.total,
            place.describe()
        );
        if let Some(rate) = args.rate {
            for credential in pool.list().await? {
                let change = credpool::CredentialChange::new().rate(Some(rate));
                pool.update(&credential.name, change).await?;
            }
        }
    }
    if let Some(rate) = args.rate {
        errln!("quota: {rate} on every credential");
    }
    errln!(
        "{} workers, work {}..{} ms; Ctrl-C, SIGTERM or SIGHUP stops gracefully",
        args.workers,
        args.work_ms.0,
        args.work_ms.1
    );

    let (stop, stopped) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let workers: Vec<_> = (0..args.workers)
        .map(|_| {
            let (pool, mut stopped, counters) = (pool.clone(), stopped.clone(), counters.clone());
            let (low, high) = args.work_ms;
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                let mut waits = Vec::new();
                loop {
                    let asked = Instant::now();
                    let lease = tokio::select! {
                        lease = pool.acquire() => lease,
                        _ = stopped.wait_for(|stop| *stop) => break,
                    };
                    let lease = match lease {
                        Ok(lease) => lease,
                        Err(Error::Closed) => break,
                        Err(error @ Error::NoCredentials { .. }) => return Err(error),
                        Err(error) => {
                            // The store fails (a full disk, a lock held
                            // elsewhere): say so, and try again shortly.
                            counters.store_failed(&error);
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                                _ = stopped.wait_for(|stop| *stop) => break,
                            }
                            continue;
                        }
                    };
                    waits.push(asked.elapsed().as_micros() as u64);
                    counters.grants.fetch_add(1, Ordering::Relaxed);
                    let work = Duration::from_millis(rng.u64(low..=high));
                    tokio::select! {
                        () = tokio::time::sleep(work) => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                    let name = lease.credential().name().to_string();
                    if let Err(error) = lease.release().await {
                        count_failed_release(&pool, &counters, &name, error).await;
                    }
                }
                Ok(waits)
            })
        })
        .collect();

    let reporter = tokio::spawn(report(pool.clone(), counters.clone(), stopped.clone()));
    let reason = wait_for_stop(args.duration).await;
    errln!("\n{reason}: stopping; every worker returns what it holds…");
    let _ = stop.send(true);
    pool.close();

    let mut waits = Vec::new();
    let mut failure = None;
    for worker in workers {
        match worker.await {
            Ok(Ok(mut worker_waits)) => waits.append(&mut worker_waits),
            Ok(Err(error)) => failure = Some(error.to_string()),
            Err(error) => failure = Some(format!("a worker failed: {error}")),
        }
    }
    let _ = reporter.await;
    // Only the leases this demo took: other processes may share the store.
    let returned = pool.wait_for_leases(Duration::from_secs(10)).await;
    let ours = pool.leases_out();
    summary(&counters, &mut waits, started.elapsed(), ours as u64);
    if let Some(message) = failure {
        return Err(Failure(message));
    }
    if returned.is_err() || ours != 0 {
        let cause = counters
            .recent_error()
            .map(|error| format!(": the store fails: {error}"))
            .unwrap_or_default();
        return Err(Failure(format!(
            "{ours} of this demo's leases still out 10 s after the stop{cause}"
        )));
    }
    Ok(())
}

/// Waits for Ctrl-C, SIGTERM, SIGHUP or the end of the run; says which.
async fn wait_for_stop(duration: Option<Duration>) -> &'static str {
    let run_out = async {
        match duration.and_then(|duration| tokio::time::Instant::now().checked_add(duration)) {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hangup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return "cannot listen for signals";
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = term.recv() => "SIGTERM",
            _ = hangup.recv() => "SIGHUP",
            () = run_out => "time is up",
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        () = run_out => "time is up",
    }
}

/// Prints grants per second, use and waiters every second until the stop.
async fn report<S: Store>(
    pool: Pool<S>,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
) {
    let terminal = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0);
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let grants = counters.grants.load(Ordering::Relaxed);
        let rate = (grants - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), grants);
        let ours = pool.leases_out() as u64;
        let stats = pool.stats().await;
        let line = match (counters.recent_error(), stats) {
            (Some(error), _) => format!("{grants} grants  {rate:.0}/s  store failing: {error}"),
            (None, Err(error)) => format!("{grants} grants  {rate:.0}/s  store failing: {error}"),
            (None, Ok(stats)) => {
                let elsewhere = stats.leases.saturating_sub(ours);
                let elsewhere = if elsewhere > 0 {
                    format!(" (+{elsewhere} by other processes)")
                } else {
                    String::new()
                };
                format!(
                    "{grants} grants  {rate:.0}/s  leased {ours}{elsewhere}  available {}/{}  waiting {}",
                    stats.available, stats.total, stats.waiters
                )
            }
        };
        if terminal {
            errput!("\r\x1b[2K{line}");
        } else {
            errln!("{line}");
        }
    }
}

fn summary(counters: &Counters, waits: &mut [u64], elapsed: Duration, leased: u64) {
    waits.sort_unstable();
    let grants = counters.grants.load(Ordering::Relaxed);
    let mean = if waits.is_empty() {
        0
    } else {
        waits.iter().sum::<u64>() / waits.len() as u64
    };
    let p99 = waits
        .get((waits.len() * 99 / 100).min(waits.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    outln!("summary after {:.1?}:", elapsed);
    outln!(
        "  grants      {grants} ({:.0}/s)",
        grants as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    outln!(
        "  wait        mean {:.1} ms, p99 {:.1} ms",
        mean as f64 / 1000.0,
        p99 as f64 / 1000.0
    );
    let lost = counters.lost_releases.load(Ordering::Relaxed);
    let removed = counters.removed_releases.load(Ordering::Relaxed);
    if lost > removed {
        outln!(
            "  releases    {} refused: the lease had expired and was taken over",
            lost - removed
        );
    }
    if removed > 0 {
        outln!("  releases    {removed} refused: the credential was removed while leased");
    }
    let pending = counters.pending_releases.load(Ordering::Relaxed);
    if pending > 0 {
        outln!("  releases    {pending} slow to commit (kept and committed later by the store)");
    }
    let errors = counters.store_errors.load(Ordering::Relaxed);
    if errors > 0 {
        let last = counters
            .last_error
            .lock()
            .ok()
            .and_then(|last| last.as_ref().map(|(_, message)| message.clone()))
            .unwrap_or_default();
        outln!("  store       {errors} failed calls; the last: {last}");
    }
    outln!("  {leased} leased by this demo");
}
