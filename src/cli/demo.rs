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
    #[arg(long, default_value_t = 300)]
    workers: usize,
    /// How many demo credentials to create when the pool is empty.
    #[arg(long, default_value_t = 100)]
    credentials: usize,
    /// How long one piece of work takes, in milliseconds: MIN..MAX.
    #[arg(long, default_value = "20..200", value_parser = parse_range)]
    work_ms: (u64, u64),
    /// Stop after this many seconds (default: run until Ctrl-C, SIGTERM or SIGHUP).
    #[arg(long)]
    duration: Option<f64>,
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
    failed_releases: AtomicU64,
}

pub(crate) async fn run<S: Store>(pool: Pool<S>, place: &Place, args: DemoArgs) -> Outcome {
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let before = pool.stats().await?;
    if before.total == 0 {
        if args.credentials == 0 {
            return Err("the pool is empty and --credentials is 0: nothing to hand out".into());
        }
        let mut rng = fastrand::Rng::new();
        let demo = (1..=args.credentials).map(|i| {
            let secret: String = std::iter::repeat_with(|| rng.alphanumeric())
                .take(16)
                .collect();
            NewCredential::new(format!("demo-{i:04}"), secret)
        });
        pool.add_many_skip_existing(demo).await?;
        eprintln!(
            "created {} demo credentials in {} (remove them to start over)",
            args.credentials,
            place.describe()
        );
    } else {
        eprintln!(
            "using the {} credentials in {}",
            before.total,
            place.describe()
        );
    }
    eprintln!(
        "{} workers, work {}..{} ms; Ctrl-C, SIGTERM or SIGHUP stops gracefully",
        args.workers, args.work_ms.0, args.work_ms.1
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
                        Err(error) => return Err(error),
                    };
                    waits.push(asked.elapsed().as_micros() as u64);
                    counters.grants.fetch_add(1, Ordering::Relaxed);
                    let work = Duration::from_millis(rng.u64(low..=high));
                    tokio::select! {
                        () = tokio::time::sleep(work) => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                    if lease.release().await.is_err() {
                        counters.failed_releases.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(waits)
            })
        })
        .collect();

    let reporter = tokio::spawn(report(pool.clone(), counters.clone(), stopped.clone()));
    let reason = wait_for_stop(args.duration).await;
    eprintln!("\n{reason}: stopping; every worker returns what it holds…");
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
    pool.wait_for_leases(Duration::from_secs(10)).await?;
    let after = pool.stats().await?;
    summary(&counters, &mut waits, started.elapsed(), after.leases);
    if let Some(message) = failure {
        return Err(Failure(message));
    }
    if after.leases != 0 {
        return Err(Failure(format!(
            "{} leases still out after the stop",
            after.leases
        )));
    }
    Ok(())
}

/// Waits for Ctrl-C, SIGTERM, SIGHUP or the end of the run; says which.
async fn wait_for_stop(duration: Option<f64>) -> &'static str {
    let run_out = async {
        match duration {
            Some(seconds) => tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await,
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
        let Ok(stats) = pool.stats().await else {
            continue;
        };
        let grants = counters.grants.load(Ordering::Relaxed);
        let rate = (grants - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), grants);
        let enabled = stats.total - stats.disabled;
        let line = format!(
            "{grants} grants  {rate:.0}/s  leased {}/{} ({:.0}%)  waiting {}",
            stats.leases,
            enabled,
            100.0 * stats.leases as f64 / enabled.max(1) as f64,
            stats.waiters
        );
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
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
    let failed = counters.failed_releases.load(Ordering::Relaxed);
    if failed > 0 {
        outln!("  releases    {failed} refused (lease expired and was taken over)");
    }
    outln!("  {leased} leased");
}
