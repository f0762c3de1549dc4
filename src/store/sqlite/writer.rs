//! The store thread: owns the connection, runs every waiting request in one
//! `BEGIN IMMEDIATE` transaction (group commit), and replies after the commit.
//!
//! The requests are [`Job`]s: a grant, a release, or any other call. The
//! operations they run are in `leases.rs` and `admin.rs`; this file is the
//! batch loop, the transaction, and the retrying of releases.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::error::Error;
use crate::store::{Line, Undelivered};
use crate::time::duration_ms;

use super::ctx::{Ctx, LeaseNames};
use super::jobs::{Finished, Job, ReleaseJob};
use super::leases::reclaim;
use super::line;

/// How long the thread waits for a request, while waiters are seated here,
/// before it looks at the file for credentials handed to their tickets.
const WATCH_PAUSE: Duration = Duration::from_millis(1);
/// The most requests one transaction takes.
const MAX_BATCH: usize = 512;
/// The first pause before a release that could not commit is tried again;
/// it doubles up to [`MAX_RETRY_PAUSE`].
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long the thread keeps trying releases after the store was dropped,
/// at the least (the busy timeout, if longer).
const MIN_CLOSING_PATIENCE: Duration = Duration::from_secs(1);

/// Past this size the store thread empties the write-ahead log itself.
///
/// SQLite's own checkpoints (in the commit that takes the log past 1,000
/// pages) copy the log into the file, but the log starts again from its
/// beginning only when a writer begins while all of it is copied. While a
/// reader holds an old snapshot (a long `list`, a backup), nothing past it
/// can be copied and the log grows; and the file never shrinks by
/// itself once it grew. A `TRUNCATE` checkpoint holds the other writers off
/// while it copies the rest, then empties the file.
const LOG_LIMIT: u64 = 16 << 20;
/// How often, at most, the thread looks at the log's size, in commits.
const LOG_CHECK_EVERY: u64 = 16;
/// How long the truncating checkpoint waits for other processes' readers
/// and writers (their transactions are short)...
const LOG_PATIENCE: Duration = Duration::from_millis(20);
/// ...and how long it waits before it tries again when they took longer (a
/// long read holds an old snapshot: nothing can be copied past it).
const LOG_RETRY: Duration = Duration::from_secs(1);

/// Where a transaction failed.
enum Stage {
    /// Could not take the write lock (another process holds it past the busy timeout).
    Begin(rusqlite::Error),
    /// Failed after taking it; the transaction must be rolled back.
    Inside(rusqlite::Error),
}

/// What the thread knows after a batch of grants found nothing free.
struct Idle {
    data_version: i64,
    commits: u64,
    retry_at: Option<i64>,
}

pub(crate) struct Worker {
    connection: Connection,
    names: RefCell<LeaseNames>,
    pool: String,
    path: PathBuf,
    commits: u64,
    idle: Option<Idle>,
    /// Releases whose transaction failed, to be tried again.
    retrying: Vec<Job>,
    /// How long the releases waiting for retry are kept once the store is dropped.
    closing_patience: Duration,
    /// This store's seats in the waiting line.
    line: Arc<Line>,
    ticket_ttl: Duration,
    /// When this store last renewed its tickets.
    last_heartbeat: Instant,
    /// Grants a committed batch could not hand to their seats (the waiter
    /// left): their leases go back.
    undelivered: Vec<Job>,
    /// The write-ahead log's file, and the commit count when it was last
    /// looked at (see [`LOG_LIMIT`]).
    log: PathBuf,
    log_checked_at: u64,
    log_retry_at: Option<Instant>,
    busy_timeout: Duration,
    /// A timer for waiting on the requests with a timeout, while waiters
    /// are seated here (see `next_request`); without it the thread only
    /// blocks, and its waiters claim at their polls.
    clock: Option<tokio::runtime::Runtime>,
}

/// Where the store thread gets its settings from.
pub(crate) struct WorkerSettings {
    pub(crate) pool: String,
    pub(crate) path: PathBuf,
    pub(crate) busy_timeout: Duration,
    pub(crate) line: Arc<Line>,
    pub(crate) ticket_ttl: Duration,
}

impl Worker {
    pub(crate) fn new(connection: Connection, settings: WorkerSettings) -> Self {
        connection.set_prepared_statement_cache_capacity(64);
        Self {
            connection,
            names: RefCell::default(),
            pool: settings.pool,
            log: super::schema::wal_path(&settings.path),
            log_checked_at: 0,
            log_retry_at: None,
            busy_timeout: settings.busy_timeout,
            path: settings.path,
            commits: 0,
            idle: None,
            retrying: Vec::new(),
            closing_patience: settings.busy_timeout.max(MIN_CLOSING_PATIENCE),
            line: settings.line,
            ticket_ttl: settings.ticket_ttl,
            last_heartbeat: Instant::now(),
            undelivered: Vec::new(),
            clock: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .ok(),
        }
    }

    /// Whether this store's tickets are due to be renewed: at least four
    /// times per ticket TTL while waiters are seated here.
    fn heartbeat_due(&self) -> bool {
        self.last_heartbeat.elapsed() >= self.ticket_ttl / 4 && !self.line.is_empty()
    }

    /// Serves requests until every sender is gone and no release is left to
    /// try again (or, once the senders are gone, the closing patience is up).
    pub(crate) fn run(mut self, mut requests: mpsc::UnboundedReceiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut pause = MIN_RETRY_PAUSE;
        let mut closing: Option<Instant> = None;
        loop {
            if self.retrying.is_empty() {
                match self.next_request(&mut requests) {
                    Some(job) => batch.push(job),
                    None => break,
                }
            } else {
                // Wait out the pause, unless a new request comes first.
                let until = Instant::now() + pause;
                loop {
                    match requests.try_recv() {
                        Ok(job) => {
                            batch.push(job);
                            break;
                        }
                        Err(TryRecvError::Disconnected) => {
                            closing.get_or_insert_with(|| Instant::now() + self.closing_patience);
                        }
                        Err(TryRecvError::Empty) => {}
                    }
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    std::thread::sleep((until - now).min(Duration::from_millis(5)));
                }
                if closing.is_some_and(|deadline| Instant::now() >= deadline) {
                    tracing::warn!(path = %self.path.display(), releases = self.retrying.len(), "the store is closing with releases not committed; their leases come back when they expire");
                    // Dropping them drops their receipts, which tells their pools.
                    self.retrying.clear();
                    if batch.is_empty() {
                        break;
                    }
                }
                batch.splice(0..0, self.retrying.drain(..));
            }
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.serve(&mut batch);
            pause = if self.retrying.is_empty() {
                MIN_RETRY_PAUSE
            } else {
                (pause * 2).min(MAX_RETRY_PAUSE)
            };
        }
    }

    /// Waits for the next request. While waiters are seated here, it also
    /// watches the file: when another process committed and handed a
    /// credential to one of this store's tickets, it claims it at once
    /// rather than at the first waiter's next poll.
    fn next_request(&mut self, requests: &mut mpsc::UnboundedReceiver<Job>) -> Option<Job> {
        let mut seen = None;
        loop {
            let Some(clock) = self.clock.as_ref().filter(|_| !self.line.is_empty()) else {
                return spin_then_recv(requests);
            };
            // Wakes at once for a request, else after the pause.
            // (The timer is made inside the clock's runtime, which it needs.)
            let next =
                clock.block_on(async { tokio::time::timeout(WATCH_PAUSE, requests.recv()).await });
            match next {
                Ok(request) => return request,
                Err(_elapsed) => {}
            }
            let version = self.data_version().ok();
            if version != seen {
                seen = version;
                if self.handed_here().unwrap_or(false) {
                    let mut claim = vec![Job::Claim];
                    self.serve(&mut claim);
                    seen = self.data_version().ok();
                }
            }
        }
    }

    /// Whether a ticket of this store holds a lease another process handed
    /// to it: one read, outside any transaction.
    fn handed_here(&self) -> rusqlite::Result<bool> {
        self.connection
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM tickets
                                WHERE pool = ?1 AND owner = ?2 AND lease_id IS NOT NULL)",
            )?
            .query_row(rusqlite::params![self.pool, self.line.owner()], |row| {
                row.get(0)
            })
    }

    fn serve(&mut self, batch: &mut Vec<Job>) {
        let now = crate::time::now_ms();
        if self.nothing_changed(now) {
            let retry_at = self.idle.as_ref().and_then(|idle| idle.retry_at);
            if batch.iter_mut().all(|job| job.answer_busy(retry_at)) {
                for job in batch.drain(..) {
                    let _ = job.finish();
                }
                return;
            }
        }
        let all_busy = self.run_batch(batch);
        let mut unclaimed = self.finish_all(batch.drain(..));
        self.bound_log();
        unclaimed.append(&mut self.undelivered);
        self.idle = match all_busy {
            Some((data_version, retry_at)) if unclaimed.is_empty() && self.retrying.is_empty() => {
                Some(Idle {
                    data_version,
                    commits: self.commits,
                    retry_at,
                })
            }
            _ => None,
        };
        if !unclaimed.is_empty() {
            self.release_unclaimed(unclaimed);
        }
    }

    /// Empties the write-ahead log when it has grown past [`LOG_LIMIT`]:
    /// looked at every [`LOG_CHECK_EVERY`] commits, after the replies.
    fn bound_log(&mut self) {
        if self.commits < self.log_checked_at + LOG_CHECK_EVERY
            || self.log_retry_at.is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        self.log_checked_at = self.commits;
        let size = std::fs::metadata(&self.log).map_or(0, |meta| meta.len());
        if size <= LOG_LIMIT {
            return;
        }
        let _ = self.connection.busy_timeout(LOG_PATIENCE);
        let outcome = self
            .connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        let _ = self.connection.busy_timeout(self.busy_timeout);
        self.log_retry_at = (outcome.as_ref().ok() != Some(&0)).then(|| Instant::now() + LOG_RETRY);
        match outcome {
            Ok(0) => {
                tracing::debug!(path = %self.path.display(), bytes = size, "the write-ahead log was emptied")
            }
            Ok(_) => {
                tracing::debug!(path = %self.path.display(), bytes = size, "the write-ahead log is in use; emptying it later")
            }
            Err(error) => {
                tracing::debug!(path = %self.path.display(), %error, "emptying the write-ahead log failed; trying later")
            }
        }
    }

    /// Replies to every job in order; keeps the releases to try again, and
    /// returns the jobs that give back what grants whose callers left took.
    fn finish_all(&mut self, jobs: impl Iterator<Item = Job>) -> Vec<Job> {
        let mut unclaimed = Vec::new();
        for job in jobs {
            match job.finish() {
                Finished::Done => {}
                Finished::Unclaimed(lease) => unclaimed.push(lease),
                Finished::Retry(job) => self.retrying.push(job),
            }
        }
        unclaimed
    }

    /// Whether no process changed the store since a batch found nothing free.
    fn nothing_changed(&self, now: i64) -> bool {
        let Some(idle) = &self.idle else {
            return false;
        };
        idle.commits == self.commits
            && idle.retry_at.is_none_or(|at| now < at)
            && !self.heartbeat_due()
            && self
                .data_version()
                .is_ok_and(|version| version == idle.data_version)
    }

    fn data_version(&self) -> rusqlite::Result<i64> {
        self.connection
            .query_row("PRAGMA data_version", [], |row| row.get(0))
    }

    /// Runs the batch in one transaction; on an SQLite error, rolls it back
    /// and runs each job in a transaction of its own. When every job was a
    /// grant that found nothing free, returns the store's data version as of
    /// that transaction and when the store expects a change.
    fn run_batch(&mut self, batch: &mut [Job]) -> Option<(i64, Option<i64>)> {
        match self.transaction(batch) {
            Ok(data_version) => {
                self.commits += 1;
                let data_version = data_version?;
                let mut retry_at = None;
                for job in batch.iter() {
                    retry_at = Some(job.busy_until()?);
                }
                retry_at.map(|retry_at| (data_version, retry_at))
            }
            // No lock within the busy timeout: everyone hears it at once,
            // rather than each request waiting out the timeout in turn.
            Err(Stage::Begin(error)) => {
                self.fail_all(batch, &error);
                None
            }
            Err(Stage::Inside(error)) => {
                self.rollback();
                if batch.len() == 1 {
                    batch[0].fail(self.transaction_error(&error), transient(&error));
                    return None;
                }
                tracing::warn!(path = %self.path.display(), error = %error, "batch failed; retrying its requests one by one");
                for index in 0..batch.len() {
                    match self.transaction(std::slice::from_mut(&mut batch[index])) {
                        Ok(_) => self.commits += 1,
                        Err(Stage::Inside(error)) => {
                            self.rollback();
                            batch[index].fail(self.transaction_error(&error), transient(&error));
                        }
                        Err(Stage::Begin(error)) => {
                            self.fail_all(&mut batch[index..], &error);
                            break;
                        }
                    }
                }
                None
            }
        }
    }

    fn fail_all(&self, jobs: &mut [Job], error: &rusqlite::Error) {
        for job in jobs {
            job.fail(self.transaction_error(error), transient(error));
        }
    }

    /// Runs jobs in one transaction. When every job was a grant that found
    /// nothing free, returns `PRAGMA data_version` as read under the write
    /// lock, so no other process's commit can slip between that reading and
    /// this commit.
    ///
    /// The batch's time is read once the write lock is held: taking the lock
    /// may wait out another process's transaction, and a lease granted after
    /// that wait must still live its whole TTL.
    ///
    /// The grants handed to waiters seated here go to them after the commit.
    fn transaction(&mut self, jobs: &mut [Job]) -> Result<Option<i64>, Stage> {
        self.connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(Stage::Begin)?;
        let now = crate::time::now_ms();
        let heartbeat = self.heartbeat_due();
        let mut ctx = Ctx::new(
            &self.connection,
            &self.pool,
            now,
            &self.names,
            &self.line,
            duration_ms(self.ticket_ttl),
        );
        let run = (|| {
            start_batch(&mut ctx)?;
            if heartbeat {
                line::renew_tickets(&mut ctx)?;
            }
            for job in jobs.iter_mut() {
                job.run(&mut ctx)?;
            }
            let deliveries = std::mem::take(&mut ctx.deliveries);
            // Tickets passed over for their scope or name do not mean that
            // nothing is free for a plain grant.
            let passed_over = ctx.passed_over;
            drop(ctx);
            let all_busy = !passed_over && jobs.iter().all(|job| job.busy_until().is_some());
            let data_version = if all_busy {
                Some(self.data_version()?)
            } else {
                None
            };
            self.connection.execute_batch("COMMIT")?;
            Ok((data_version, deliveries))
        })();
        let (data_version, deliveries) = run.map_err(Stage::Inside)?;
        if heartbeat {
            self.last_heartbeat = Instant::now();
        }
        for (ticket, grant) in deliveries {
            if let Err(Undelivered(grant)) = self.line.deliver(ticket, grant) {
                self.undelivered
                    .push(Job::Release(Box::new(ReleaseJob::unclaimed(grant.token()))));
            }
        }
        Ok(data_version)
    }

    fn rollback(&self) {
        self.names.borrow_mut().0.clear();
        if !self.connection.is_autocommit() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }

    fn transaction_error(&self, error: &rusqlite::Error) -> Error {
        super::schema::transaction_error(&self.path, error)
    }

    /// Gives back what grants took for callers that left before the reply
    /// came: their leases, their tickets; and the leases handed to seats
    /// whose waiters had left.
    fn release_unclaimed(&mut self, mut jobs: Vec<Job>) {
        while !jobs.is_empty() {
            tracing::debug!(
                count = jobs.len(),
                "giving back what callers who left were granted"
            );
            self.run_batch(&mut jobs);
            let mut more = self.finish_all(jobs.drain(..));
            debug_assert!(more.is_empty(), "releases and leaves claim nothing");
            // Those releases may have handed units to seats left meanwhile.
            more.append(&mut self.undelivered);
            jobs = more;
        }
    }
}

/// Whether an SQLite failure may go away by itself, so that a release is
/// worth trying again: a lock held elsewhere, a full disk, an I/O error.
fn transient(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::ReadOnly
        )
    )
}

/// What every batch does first: ends finished cool-downs and reclaims
/// expired leases, then ends the tickets nobody renews and hands what is
/// free to the line.
pub(crate) fn start_batch(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    reclaim(ctx)?;
    line::expire_and_serve(ctx)
}

/// How long the store thread looks for the next request before it sleeps:
/// a caller that sends its next request within this (a release right
/// after its grant's reply) finds the thread awake, and neither side pays
/// for waking the other.
const SPIN: Duration = Duration::from_micros(50);

/// The next request, looked for without sleeping for up to [`SPIN`] first.
fn spin_then_recv(requests: &mut mpsc::UnboundedReceiver<Job>) -> Option<Job> {
    let started = Instant::now();
    loop {
        match requests.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if started.elapsed() < SPIN => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return requests.blocking_recv(),
        }
    }
}
