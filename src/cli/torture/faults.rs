//! Faults a torture run injects besides killing workers, each store its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many faults of each kind were injected.
#[derive(Debug, Default)]
pub(crate) struct Injected {
    pub(crate) write_locks: AtomicU64,
    pub(crate) long_write_locks: AtomicU64,
    pub(crate) terminated: AtomicU64,
    pub(crate) restarts: AtomicU64,
    /// Workers killed while their tasks waited in line (their tickets became no-shows).
    pub(crate) killed_in_line: AtomicU64,
}

impl Injected {
    pub(crate) fn describe(&self) -> String {
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut parts = Vec::new();
        if count(&self.write_locks) > 0 {
            parts.push(format!(
                "{} write locks held by another connection ({} longer than the busy timeout)",
                count(&self.write_locks),
                count(&self.long_write_locks)
            ));
        }
        if count(&self.terminated) > 0 {
            parts.push(format!(
                "{} connections ended by pg_terminate_backend",
                count(&self.terminated)
            ));
        }
        if count(&self.killed_in_line) > 0 {
            parts.push(format!(
                "{} workers killed while their tasks waited in line",
                count(&self.killed_in_line)
            ));
        }
        if count(&self.restarts) > 0 {
            parts.push(format!("{} server restarts", count(&self.restarts)));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// SQLite: another connection takes the write lock (`BEGIN IMMEDIATE`) every
/// one to three seconds and keeps it for 0.2 to 1.5 s, and one time in four
/// for 6 s, past the store's 5 s busy timeout, so that callers fail with
/// "database is locked".
pub(crate) fn hold_write_locks(
    path: PathBuf,
    until: Instant,
    seed: u64,
    injected: Arc<Injected>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = fastrand::Rng::with_seed(seed);
        let Ok(connection) = rusqlite::Connection::open(&path) else {
            return;
        };
        let _ = connection.busy_timeout(Duration::from_secs(30));
        loop {
            std::thread::sleep(Duration::from_millis(rng.u64(1_000..3_000)));
            let long = rng.u8(..4) == 0;
            let hold = if long {
                Duration::from_secs(6)
            } else {
                Duration::from_millis(rng.u64(200..1_500))
            };
            if Instant::now() + hold + Duration::from_secs(1) > until {
                return;
            }
            if connection.execute_batch("BEGIN IMMEDIATE").is_ok() {
                injected.write_locks.fetch_add(1, Ordering::Relaxed);
                if long {
                    injected.long_write_locks.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(hold);
                let _ = connection.execute_batch("COMMIT");
            }
        }
    })
}

/// The URL with `application_name` set, so that the workers' connections
/// can be told apart from the parent's.
#[cfg(feature = "postgres")]
pub(crate) fn with_application_name(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// Postgres: ends the connections of the workers (those named
/// `application`) every one to three seconds.
#[cfg(feature = "postgres")]
pub(crate) async fn terminate_connections(
    url: String,
    application: String,
    until: tokio::time::Instant,
    seed: u64,
    injected: Arc<Injected>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut client = None;
    let mut warned = false;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(1_000..3_000))).await;
        if client
            .as_ref()
            .is_none_or(|client: &tokio_postgres::Client| client.is_closed())
        {
            // Connected as the store is, over TLS when the URL asks.
            let connected = match credpool::store::postgres::PostgresStore::options_url(&url) {
                Ok(options) => options.connect().await,
                Err(error) => Err(error),
            };
            client = match connected {
                Ok(client) => Some(client),
                Err(error) => {
                    // The server may be restarting; say so once.
                    if !warned {
                        errln!(
                            "torture: the fault injector cannot reach the server to end \
                             connections ({error}); it tries again"
                        );
                        warned = true;
                    }
                    None
                }
            };
        }
        let Some(client) = &client else { continue };
        let ended = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = $1",
                &[&application],
            )
            .await;
        if let Ok(row) = ended {
            let count: i64 = row.get(0);
            injected
                .terminated
                .fetch_add(count as u64, Ordering::Relaxed);
        }
    }
}

/// Runs `command` with `sh -c` every `every` until `until` (a server restart).
pub(crate) async fn restart_server(
    command: String,
    every: Duration,
    until: tokio::time::Instant,
    injected: Arc<Injected>,
) {
    loop {
        tokio::time::sleep(every).await;
        if tokio::time::Instant::now() + Duration::from_secs(2) > until {
            return;
        }
        let command = command.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .args(["-c", &command])
                .status()
        })
        .await;
        match status {
            Ok(Ok(status)) if status.success() => {
                injected.restarts.fetch_add(1, Ordering::Relaxed);
            }
            _ => errln!("torture: the restart command failed"),
        }
    }
}
