//! The store thread: owns the connection, runs every waiting request in one
//! `BEGIN IMMEDIATE` transaction (group commit), and replies after the commit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::credential::{
    duration_ms, from_ms, Credential, CredentialId, CredentialInfo, NewCredential, Secret, Stats,
};
use crate::error::{Error, Result};
use crate::lease::{Grant, LeaseId, LeaseToken, ReleaseOutcome};
use crate::store::{ExpiredLease, GrantAttempt, OnDuplicate, Receipt};

/// The most requests one transaction takes.
const MAX_BATCH: usize = 512;
/// The first pause before a release that could not commit is tried again;
/// it doubles up to [`MAX_RETRY_PAUSE`].
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long the thread keeps trying releases after the store was dropped,
/// at the least (the busy timeout, if longer).
const MIN_CLOSING_PATIENCE: Duration = Duration::from_secs(1);

/// Why a job did not produce its value.
pub(crate) enum Failure {
    /// Refused with an error the caller should see; nothing was changed.
    Refused(Error),
    /// SQLite failed: the whole batch is rolled back and retried job by job.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Sql(error)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Refused(error)
    }
}

/// What a job sees while it runs inside the batch's transaction.
pub(crate) struct Ctx<'a> {
    pub(crate) connection: &'a Connection,
    pub(crate) pool: &'a str,
    pub(crate) now: i64,
    /// Leases reclaimed at the start of the batch, handed to the first grant.
    pub(crate) expired: Vec<ExpiredLease>,
    /// The grant and release statements, looked up once per batch: the
    /// statement cache hashes the SQL text on every lookup.
    hot: [Option<CachedStatement<'a>>; Hot::COUNT],
    names: &'a RefCell<LeaseNames>,
}

/// The credential names of the leases this thread granted, by lease id, so
/// that their releases need not look the name up. A credential's name never
/// changes and its id is never reused, so an entry is right for as long as
/// its lease lives; entries go when the lease is released, and all of them
/// when a transaction is rolled back (its lease ids may be given again).
#[derive(Debug, Default)]
pub(crate) struct LeaseNames(HashMap<i64, Arc<str>>);

impl LeaseNames {
    /// More entries than this means leases were lost without a release
    /// (a token kept and never used): start again.
    const MAX: usize = 1 << 16;

    fn insert(&mut self, lease_id: i64, name: Arc<str>) {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(lease_id, name);
    }
}

/// The statements every grant and release runs.
#[derive(Debug, Clone, Copy)]
enum Hot {
    Pick,
    Mark,
    Record,
    Forget,
    Return,
    NameOf,
}

impl Hot {
    const COUNT: usize = 6;

    fn sql(self) -> &'static str {
        match self {
            // No RETURNING anywhere here: SQLite builds a temporary b-tree for
            // it on every call, which profiling showed to cost more than a
            // second statement. The batch holds the write lock throughout.
            Hot::Pick => {
                "SELECT id, name, secret, extra, capacity FROM credentials
                 WHERE pool = ?1 AND disabled_reason IS NULL AND cooling_until IS NULL
                   AND holders < capacity
                 ORDER BY last_used_at, id LIMIT 1"
            }
            Hot::Mark => {
                "UPDATE credentials SET holders = holders + 1, last_used_at = ?2,
                        use_count = use_count + 1
                 WHERE id = ?1"
            }
            Hot::Record => {
                "INSERT INTO leases (pool, credential_id, acquired_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)"
            }
            Hot::Forget => "DELETE FROM leases WHERE id = ?1 AND credential_id = ?2 AND pool = ?3",
            Hot::Return => {
                "UPDATE credentials SET holders = holders - 1,
                        cooling_until = CASE WHEN ?2 IS NULL THEN cooling_until
                                             ELSE max(coalesce(cooling_until, 0), ?2) END,
                        disabled_reason = coalesce(?3, disabled_reason)
                 WHERE id = ?1"
            }
            Hot::NameOf => "SELECT name FROM credentials WHERE id = ?1",
        }
    }
}

impl<'a> Ctx<'a> {
    fn new(
        connection: &'a Connection,
        pool: &'a str,
        now: i64,
        names: &'a RefCell<LeaseNames>,
    ) -> Self {
        Self {
            connection,
            pool,
            now,
            expired: Vec::new(),
            hot: Default::default(),
            names,
        }
    }

    fn statement(&mut self, which: Hot) -> rusqlite::Result<&mut CachedStatement<'a>> {
        let slot = &mut self.hot[which as usize];
        if slot.is_none() {
            *slot = Some(self.connection.prepare_cached(which.sql())?);
        }
        slot.as_mut().ok_or(rusqlite::Error::InvalidQuery)
    }
}

/// One request to the store thread.
pub(crate) trait Job: Send {
    /// Runs inside the open transaction; keeps its result for `finish`.
    fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()>;

    /// Records that the transaction failed, so `finish` reports that instead.
    /// `transient` says whether trying again may succeed (a lock, a full
    /// disk) or not (a constraint, a corrupt file).
    fn fail(&mut self, error: Error, transient: bool);

    /// Replies to the caller. Says what the thread must do next: release
    /// the lease of a grant whose caller is gone, or try a release again.
    fn finish(self: Box<Self>) -> Finished;

    /// For a grant: replies "busy" without a transaction, when the thread
    /// knows nothing changed since the last time nothing was free.
    fn answer_busy(&mut self, _retry_at: Option<i64>) -> bool {
        false
    }

    /// For a grant that found nothing free: when the store expects a change.
    fn busy_until(&self) -> Option<Option<i64>> {
        None
    }
}

/// What is left to do after a job replied.
pub(crate) enum Finished {
    Done,
    /// A grant whose caller is gone: its lease must be released at once.
    Unclaimed(LeaseToken),
    /// A release that could not commit: it must be tried again.
    Retry(Box<dyn Job>),
}

/// A job that runs `work` and sends its result to `reply`.
pub(crate) struct Call<T, W> {
    work: W,
    reply: Option<oneshot::Sender<Result<T>>>,
    result: Option<Result<T>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T, W> Call<T, W>
where
    T: Send + 'static,
    W: FnMut(&mut Ctx<'_>) -> std::result::Result<T, Failure> + Send + 'static,
{
    pub(crate) fn boxed(
        work: W,
        reply: Option<oneshot::Sender<Result<T>>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Box<dyn Job> {
        Box::new(Self {
            work,
            reply,
            result: None,
            _permit: permit,
        })
    }
}

impl<T, W> Job for Call<T, W>
where
    T: Send + 'static,
    W: FnMut(&mut Ctx<'_>) -> std::result::Result<T, Failure> + Send + 'static,
{
    fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        match (self.work)(ctx) {
            Ok(value) => self.result = Some(Ok(value)),
            Err(Failure::Refused(error)) => self.result = Some(Err(error)),
            Err(Failure::Sql(error)) => return Err(error),
        }
        Ok(())
    }

    fn fail(&mut self, error: Error, _transient: bool) {
        self.result = Some(Err(error));
    }

    fn finish(self: Box<Self>) -> Finished {
        if let (Some(reply), Some(result)) = (self.reply, self.result) {
            let _ = reply.send(result);
        }
        Finished::Done
    }
}

/// A release. It is never lost: when its transaction fails it is tried
/// again, until it commits or is refused (the lease is not held). The
/// caller hears the outcome, or, once it has failed for `patience`, that it
/// is still pending; the receipt is completed when it is decided.
pub(crate) struct ReleaseJob {
    lease: LeaseToken,
    outcome: ReleaseOutcome,
    reply: Option<oneshot::Sender<Result<Arc<str>>>>,
    receipt: Option<Receipt>,
    result: Option<Result<Arc<str>>>,
    failed: Option<Error>,
    first_failure: Option<Instant>,
    patience: Duration,
}

impl ReleaseJob {
    /// `reply` and `receipt` are `None` for the release of a grant whose
    /// caller left (no one waits for it, and no pool counted it).
    pub(crate) fn boxed(
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        reply: Option<oneshot::Sender<Result<Arc<str>>>>,
        receipt: Option<Receipt>,
        patience: Duration,
    ) -> Box<dyn Job> {
        Box::new(Self {
            lease,
            outcome,
            reply,
            receipt,
            result: None,
            failed: None,
            first_failure: None,
            patience,
        })
    }

    fn pending(&self, error: &Error) -> Error {
        let (location, reason) = match error {
            Error::Transaction { location, reason } => (location.clone(), reason.clone()),
            other => (String::from("the SQLite store"), other.to_string()),
        };
        Error::ReleasePending {
            location,
            lease_id: self.lease.lease_id(),
            reason,
        }
    }
}

impl Job for ReleaseJob {
    fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        self.failed = None;
        self.result = Some(match release(ctx, self.lease, &self.outcome) {
            Ok(name) => Ok(name),
            Err(Failure::Refused(error)) => Err(error),
            Err(Failure::Sql(error)) => return Err(error),
        });
        Ok(())
    }

    fn fail(&mut self, error: Error, transient: bool) {
        if transient {
            self.result = None;
            self.failed = Some(error);
        } else {
            // Trying again cannot help: the caller hears the error, and the
            // lease comes back when it expires.
            tracing::warn!(lease_id = %self.lease.lease_id(), %error, "a release failed for good; the lease comes back when it expires");
            self.failed = None;
            self.result = Some(Err(error));
            self.receipt.take();
        }
    }

    fn finish(mut self: Box<Self>) -> Finished {
        if let Some(error) = self.failed.take() {
            let first = *self.first_failure.get_or_insert_with(Instant::now);
            if first.elapsed() >= self.patience {
                if let Some(reply) = self.reply.take() {
                    let _ = reply.send(Err(self.pending(&error)));
                }
            }
            tracing::warn!(lease_id = %self.lease.lease_id(), %error, "a release could not be committed; trying again");
            return Finished::Retry(self);
        }
        let Some(result) = self.result.take() else {
            return Finished::Retry(self);
        };
        if let Some(receipt) = self.receipt.take() {
            match &result {
                Ok(name) => receipt.released(name),
                Err(_) => receipt.refused(),
            }
        }
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
        Finished::Done
    }
}

/// What a grant answers: the attempt, and the leases reclaimed on the way.
type GrantAnswer = Result<(GrantAttempt, Vec<ExpiredLease>)>;

/// A grant: like [`Call`], but a lease whose caller is gone comes back.
pub(crate) struct GrantJob {
    ttl: Option<Duration>,
    reply: Option<oneshot::Sender<GrantAnswer>>,
    result: Option<GrantAnswer>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl GrantJob {
    pub(crate) fn boxed(
        ttl: Option<Duration>,
        reply: oneshot::Sender<GrantAnswer>,
        permit: OwnedSemaphorePermit,
    ) -> Box<dyn Job> {
        Box::new(Self {
            ttl,
            reply: Some(reply),
            result: None,
            _permit: Some(permit),
        })
    }
}

impl Job for GrantJob {
    fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        // A caller that left before its turn gets nothing: requests it sent
        // later may be in this very batch, and must not see a lease it holds.
        if self.reply.as_ref().is_none_or(oneshot::Sender::is_closed) {
            return Ok(());
        }
        let expired = std::mem::take(&mut ctx.expired);
        self.result = Some(match grant(ctx, self.ttl) {
            Ok(attempt) => Ok((attempt, expired)),
            Err(Failure::Refused(error)) => Err(error),
            Err(Failure::Sql(error)) => return Err(error),
        });
        Ok(())
    }

    fn fail(&mut self, error: Error, _transient: bool) {
        self.result = Some(Err(error));
    }

    fn finish(self: Box<Self>) -> Finished {
        let (Some(reply), Some(result)) = (self.reply, self.result) else {
            return Finished::Done;
        };
        match reply.send(result) {
            Ok(()) => Finished::Done,
            Err(Ok((GrantAttempt::Granted(grant), _))) => Finished::Unclaimed(grant.token()),
            Err(_) => Finished::Done,
        }
    }

    fn busy_until(&self) -> Option<Option<i64>> {
        match &self.result {
            Some(Ok((GrantAttempt::Busy { retry_at }, _))) => {
                Some(retry_at.map(crate::credential::to_ms))
            }
            _ => None,
        }
    }

    fn answer_busy(&mut self, retry_at: Option<i64>) -> bool {
        self.result = Some(Ok((
            GrantAttempt::Busy {
                retry_at: retry_at.map(from_ms),
            },
            Vec::new(),
        )));
        true
    }
}

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
    retrying: Vec<Box<dyn Job>>,
    /// How long the releases waiting for retry are kept once the store is dropped.
    closing_patience: Duration,
}

impl Worker {
    pub(crate) fn new(
        connection: Connection,
        pool: String,
        path: PathBuf,
        busy_timeout: Duration,
    ) -> Self {
        connection.set_prepared_statement_cache_capacity(64);
        Self {
            connection,
            names: RefCell::default(),
            pool,
            path,
            commits: 0,
            idle: None,
            retrying: Vec::new(),
            closing_patience: busy_timeout.max(MIN_CLOSING_PATIENCE),
        }
    }

    /// Serves requests until every sender is gone and no release is left to
    /// try again (or, once the senders are gone, the closing patience is up).
    pub(crate) fn run(mut self, mut requests: mpsc::UnboundedReceiver<Box<dyn Job>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut pause = MIN_RETRY_PAUSE;
        let mut closing: Option<Instant> = None;
        loop {
            if self.retrying.is_empty() {
                match requests.blocking_recv() {
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

    fn serve(&mut self, batch: &mut Vec<Box<dyn Job>>) {
        let now = crate::credential::now_ms();
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
        let unclaimed = self.finish_all(batch.drain(..));
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

    /// Replies to every job in order; keeps the releases to try again, and
    /// returns the leases of grants whose callers left.
    fn finish_all(&mut self, jobs: impl Iterator<Item = Box<dyn Job>>) -> Vec<LeaseToken> {
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
    fn run_batch(&mut self, batch: &mut [Box<dyn Job>]) -> Option<(i64, Option<i64>)> {
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

    fn fail_all(&self, jobs: &mut [Box<dyn Job>], error: &rusqlite::Error) {
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
    fn transaction(&self, jobs: &mut [Box<dyn Job>]) -> Result<Option<i64>, Stage> {
        self.connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(Stage::Begin)?;
        let now = crate::credential::now_ms();
        let mut ctx = Ctx::new(&self.connection, &self.pool, now, &self.names);
        let run = (|| {
            reclaim(&mut ctx)?;
            for job in jobs.iter_mut() {
                job.run(&mut ctx)?;
            }
            drop(ctx);
            let all_busy = jobs.iter().all(|job| job.busy_until().is_some());
            let data_version = if all_busy {
                Some(self.data_version()?)
            } else {
                None
            };
            self.connection.execute_batch("COMMIT")?;
            Ok(data_version)
        })();
        run.map_err(Stage::Inside)
    }

    fn rollback(&self) {
        self.names.borrow_mut().0.clear();
        if !self.connection.is_autocommit() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }

    fn transaction_error(&self, error: &rusqlite::Error) -> Error {
        let reason = match super::schema::hint(error.sqlite_error_code()) {
            Some(hint) => format!("{error}: {hint}"),
            None => error.to_string(),
        };
        Error::Transaction {
            location: self.path.display().to_string(),
            reason,
        }
    }

    /// Releases leases granted to callers that left before the reply came.
    fn release_unclaimed(&mut self, leases: Vec<LeaseToken>) {
        let mut jobs: Vec<Box<dyn Job>> = leases
            .into_iter()
            .map(|lease| {
                ReleaseJob::boxed(lease, ReleaseOutcome::Success, None, None, Duration::ZERO)
            })
            .collect();
        tracing::debug!(count = jobs.len(), "releasing leases whose callers left");
        self.run_batch(&mut jobs);
        let unclaimed = self.finish_all(jobs.into_iter());
        debug_assert!(unclaimed.is_empty(), "releases claim no lease");
    }
}

/// Ends finished cool-downs and reclaims expired leases.
fn reclaim(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    // Most batches find nothing to do: one read says so, where the two
    // changes below would each cost a statement (and the second a temporary
    // table for its RETURNING).
    let due: bool = ctx
        .connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM credentials WHERE pool = ?1
                              AND cooling_until IS NOT NULL AND cooling_until <= ?2)
                 OR EXISTS (SELECT 1 FROM leases WHERE pool = ?1
                              AND expires_at IS NOT NULL AND expires_at <= ?2)",
        )?
        .query_row(params![ctx.pool, ctx.now], |row| row.get(0))?;
    if !due {
        return Ok(());
    }
    ctx.connection
        .prepare_cached(
            "UPDATE credentials SET cooling_until = NULL
             WHERE pool = ?1 AND cooling_until IS NOT NULL AND cooling_until <= ?2",
        )?
        .execute(params![ctx.pool, ctx.now])?;
    let expired: Vec<(i64, i64)> = ctx
        .connection
        .prepare_cached(
            "DELETE FROM leases WHERE pool = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2
             RETURNING id, credential_id",
        )?
        .query_map(params![ctx.pool, ctx.now], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (lease_id, credential_id) in expired {
        let name: String = ctx
            .connection
            .prepare_cached(
                "UPDATE credentials SET holders = holders - 1 WHERE id = ?1 RETURNING name",
            )?
            .query_row([credential_id], |row| row.get(0))?;
        ctx.expired.push(ExpiredLease {
            name: name.into(),
            lease_id: LeaseId::new(unsigned(lease_id)?),
        });
    }
    Ok(())
}

/// When a cool-down ends or a lease expires next, as far as the store knows.
fn retry_at(connection: &Connection, pool: &str) -> rusqlite::Result<Option<i64>> {
    let cooling: Option<i64> = connection
        .prepare_cached(
            "SELECT min(cooling_until) FROM credentials WHERE pool = ?1 AND cooling_until IS NOT NULL",
        )?
        .query_row([pool], |row| row.get(0))?;
    let expiry: Option<i64> = connection
        .prepare_cached(
            "SELECT min(expires_at) FROM leases WHERE pool = ?1 AND expires_at IS NOT NULL",
        )?
        .query_row([pool], |row| row.get(0))?;
    Ok(match (cooling, expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
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

/// An id read from the file, which must not be negative.
fn unsigned(value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, value))
}

fn grant(ctx: &mut Ctx<'_>, ttl: Option<Duration>) -> std::result::Result<GrantAttempt, Failure> {
    let (pool, now) = (ctx.pool, ctx.now);
    let free = ctx
        .statement(Hot::Pick)?
        .query_row([pool], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, u32>(4)?,
            ))
        })
        .optional()?;
    let Some((id, name, secret, extra, capacity)) = free else {
        let enabled: bool = ctx
            .connection
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM credentials WHERE pool = ?1 AND disabled_reason IS NULL)",
            )?
            .query_row([pool], |row| row.get(0))?;
        if !enabled {
            return Err(Failure::Refused(Error::NoCredentials {
                pool: pool.to_string(),
            }));
        }
        let retry_at = retry_at(ctx.connection, pool)?;
        return Ok(GrantAttempt::Busy {
            retry_at: retry_at.map(from_ms),
        });
    };
    ctx.statement(Hot::Mark)?.execute(params![id, now])?;
    let expires_at = ttl.map(|ttl| now.saturating_add(duration_ms(ttl)));
    ctx.statement(Hot::Record)?
        .execute(params![pool, id, now, expires_at])?;
    let lease_id = ctx.connection.last_insert_rowid();
    let name: Arc<str> = name.into();
    ctx.names.borrow_mut().insert(lease_id, name.clone());
    Ok(GrantAttempt::Granted(Grant {
        credential: Credential::new(
            CredentialId::new(unsigned(id)?),
            name,
            Secret::new(secret),
            extra,
            capacity,
        ),
        lease_id: LeaseId::new(unsigned(lease_id)?),
        acquired_at: from_ms(now),
        expires_at: expires_at.map(from_ms),
    }))
}

fn lease_lost(ctx: &Ctx<'_>, lease: LeaseToken) -> std::result::Result<Error, Failure> {
    let name: Option<String> = ctx
        .connection
        .prepare_cached("SELECT name FROM credentials WHERE id = ?1 AND pool = ?2")?
        .query_row(
            params![lease.credential_id().get() as i64, ctx.pool],
            |row| row.get(0),
        )
        .optional()?;
    Ok(Error::LeaseLost {
        credential: name.unwrap_or_else(|| lease.credential_id().to_string()),
        lease_id: lease.lease_id(),
    })
}

fn release(
    ctx: &mut Ctx<'_>,
    lease: LeaseToken,
    outcome: &ReleaseOutcome,
) -> std::result::Result<Arc<str>, Failure> {
    let (pool, now) = (ctx.pool, ctx.now);
    let credential_id = lease.credential_id().get() as i64;
    let deleted = ctx.statement(Hot::Forget)?.execute(params![
        lease.lease_id().get() as i64,
        credential_id,
        pool
    ])?;
    if deleted == 0 {
        return Err(Failure::Refused(lease_lost(ctx, lease)?));
    }
    let (cool_until, disable): (Option<i64>, Option<&str>) = match outcome {
        ReleaseOutcome::CoolDown(pause) if !pause.is_zero() => {
            (Some(now.saturating_add(duration_ms(*pause))), None)
        }
        ReleaseOutcome::Disable(reason) => (None, Some(reason.as_str())),
        _ => (None, None),
    };
    ctx.statement(Hot::Return)?
        .execute(params![credential_id, cool_until, disable])?;
    let known = ctx
        .names
        .borrow_mut()
        .0
        .remove(&(lease.lease_id().get() as i64));
    if let Some(name) = known {
        return Ok(name);
    }
    let name: String = ctx
        .statement(Hot::NameOf)?
        .query_row([credential_id], |row| row.get(0))?;
    Ok(name.into())
}

pub(crate) fn renew(
    ctx: &mut Ctx<'_>,
    lease: LeaseToken,
    ttl: Option<Duration>,
) -> std::result::Result<Option<std::time::SystemTime>, Failure> {
    let expires_at = ttl.map(|ttl| ctx.now.saturating_add(duration_ms(ttl)));
    let changed = ctx
        .connection
        .prepare_cached(
            "UPDATE leases SET expires_at = ?4 WHERE id = ?1 AND credential_id = ?2 AND pool = ?3",
        )?
        .execute(params![
            lease.lease_id().get() as i64,
            lease.credential_id().get() as i64,
            ctx.pool,
            expires_at
        ])?;
    if changed == 0 {
        return Err(Failure::Refused(lease_lost(ctx, lease)?));
    }
    Ok(expires_at.map(from_ms))
}

pub(crate) fn add_many(
    ctx: &mut Ctx<'_>,
    credentials: &[NewCredential],
    on_duplicate: OnDuplicate,
) -> std::result::Result<usize, Failure> {
    let connection = ctx.connection;
    connection.execute_batch("SAVEPOINT add_many")?;
    let result = (|| -> std::result::Result<usize, Failure> {
        let sql = match on_duplicate {
            OnDuplicate::Fail => {
                "INSERT INTO credentials (pool, name, secret, extra, capacity, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
            OnDuplicate::Skip => {
                "INSERT OR IGNORE INTO credentials (pool, name, secret, extra, capacity, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
        };
        let mut insert = connection.prepare_cached(sql)?;
        let mut added = 0;
        for (index, credential) in credentials.iter().enumerate() {
            let inserted = insert.execute(params![
                ctx.pool,
                credential.name,
                credential.secret.expose(),
                credential.extra,
                credential.capacity,
                ctx.now
            ]);
            match inserted {
                Ok(count) => added += count,
                Err(rusqlite::Error::SqliteFailure(failure, _))
                    if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
                {
                    return Err(Failure::Refused(Error::DuplicateName {
                        name: credential.name.clone(),
                        pool: ctx.pool.to_string(),
                        entry: Some(index),
                    }));
                }
                Err(error) => return Err(Failure::Sql(error)),
            }
        }
        Ok(added)
    })();
    match &result {
        Ok(_) => connection.execute_batch("RELEASE add_many")?,
        Err(_) => connection.execute_batch("ROLLBACK TO add_many; RELEASE add_many")?,
    }
    result
}

fn credential_id_by_name(ctx: &Ctx<'_>, name: &str) -> std::result::Result<(i64, u32), Failure> {
    ctx.connection
        .prepare_cached("SELECT id, holders FROM credentials WHERE pool = ?1 AND name = ?2")?
        .query_row(params![ctx.pool, name], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?
        .ok_or_else(|| Failure::Refused(unknown(ctx, name)))
}

fn unknown(ctx: &Ctx<'_>, name: &str) -> Error {
    Error::UnknownCredential {
        name: name.to_string(),
        pool: ctx.pool.to_string(),
    }
}

pub(crate) fn remove(
    ctx: &mut Ctx<'_>,
    name: &str,
    force: bool,
) -> std::result::Result<(), Failure> {
    let (id, holders) = credential_id_by_name(ctx, name)?;
    if holders > 0 && !force {
        return Err(Failure::Refused(Error::InUse {
            name: name.to_string(),
            holders,
        }));
    }
    ctx.connection
        .prepare_cached("DELETE FROM credentials WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

pub(crate) fn set_disabled(
    ctx: &mut Ctx<'_>,
    name: &str,
    reason: Option<&str>,
) -> std::result::Result<(), Failure> {
    let changed = ctx
        .connection
        .prepare_cached(
            "UPDATE credentials SET disabled_reason = ?3 WHERE pool = ?1 AND name = ?2",
        )?
        .execute(params![ctx.pool, name, reason])?;
    if changed == 0 {
        return Err(Failure::Refused(unknown(ctx, name)));
    }
    Ok(())
}

pub(crate) fn update_secret(
    ctx: &mut Ctx<'_>,
    name: &str,
    secret: &Secret,
) -> std::result::Result<(), Failure> {
    let changed = ctx
        .connection
        .prepare_cached("UPDATE credentials SET secret = ?3 WHERE pool = ?1 AND name = ?2")?
        .execute(params![ctx.pool, name, secret.expose()])?;
    if changed == 0 {
        return Err(Failure::Refused(unknown(ctx, name)));
    }
    Ok(())
}

pub(crate) fn list(ctx: &mut Ctx<'_>) -> std::result::Result<Vec<CredentialInfo>, Failure> {
    let now = from_ms(ctx.now);
    let mut statement = ctx.connection.prepare_cached(
        "SELECT id, name, capacity, holders, disabled_reason, cooling_until, extra IS NOT NULL,
                last_used_at, use_count, created_at
         FROM credentials WHERE pool = ?1 ORDER BY id",
    )?;
    let rows = statement.query_map([ctx.pool], |row| {
        Ok(CredentialInfo::from_parts(
            CredentialId::new(unsigned(row.get(0)?)?),
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get::<_, Option<i64>>(5)?.map(from_ms),
            now,
            row.get(6)?,
            row.get::<_, Option<i64>>(7)?.map(from_ms),
            unsigned(row.get(8)?)?,
            from_ms(row.get(9)?),
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn reveal(ctx: &mut Ctx<'_>) -> std::result::Result<Vec<NewCredential>, Failure> {
    let mut statement = ctx.connection.prepare_cached(
        "SELECT name, secret, extra, capacity FROM credentials WHERE pool = ?1 ORDER BY id",
    )?;
    let rows = statement.query_map([ctx.pool], |row| {
        Ok(
            NewCredential::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?)
                .maybe_extra(row.get(2)?)
                .capacity(row.get(3)?),
        )
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn stats(ctx: &mut Ctx<'_>) -> std::result::Result<Stats, Failure> {
    // Read as u64: a negative count (a file edited by hand) is an error, not a wrap.
    let (total, disabled, cooling, leased, leases) = ctx
        .connection
        .prepare_cached(
            "SELECT count(*),
                    coalesce(sum(disabled_reason IS NOT NULL), 0),
                    coalesce(sum(disabled_reason IS NULL AND cooling_until > ?2), 0),
                    coalesce(sum(disabled_reason IS NULL AND coalesce(cooling_until, 0) <= ?2
                                 AND holders >= capacity), 0),
                    coalesce(sum(holders), 0)
             FROM credentials WHERE pool = ?1",
        )?
        .query_row(params![ctx.pool, ctx.now], |row| {
            Ok((
                unsigned(row.get(0)?)?,
                unsigned(row.get(1)?)?,
                unsigned(row.get(2)?)?,
                unsigned(row.get(3)?)?,
                unsigned(row.get(4)?)?,
            ))
        })?;
    Ok(Stats {
        total,
        available: total.saturating_sub(disabled + cooling + leased),
        leased,
        cooling_down: cooling,
        disabled,
        leases,
        waiters: 0,
    })
}
