//! The embedded SQLite store: one file, safe across any number of processes.
//!
//! - The file is opened in WAL mode with `synchronous=NORMAL` (or `FULL`), a
//!   busy timeout and foreign keys on. A new file is created with mode 0600.
//! - A file that is not SQLite, a SQLite file that is not a credpool store,
//!   or a store from a newer credpool is refused, and never written to.
//! - One thread owns the connection. Callers send requests over a channel
//!   (at most [`SqliteOptions::max_in_flight`] at once; releases never wait)
//!   and the thread runs every request that is waiting in one
//!   `BEGIN IMMEDIATE` transaction: one lock and one commit for many.
//! - Across processes, every state change runs in `BEGIN IMMEDIATE` and no
//!   process trusts its memory for who holds what. Waiters learn of releases
//!   in their own process at once, and of releases in other processes by
//!   polling, every [`DEFAULT_POLL_INTERVAL`] by default; a poll that finds
//!   `PRAGMA data_version` unchanged costs no transaction.
//! - Hand-out order: least recently used first (`last_used_at`, never-used
//!   first, then id), served by an index.
//! - Leases expire after [`DEFAULT_LEASE_TTL`] unless renewed, so the
//!   credentials of a killed process come back.
//! - Cancelling a caller never leaves a lease out: a grant whose caller left
//!   before the thread reached it is not made, and one whose caller left
//!   during its transaction is released right after the commit, before the
//!   thread takes its next batch.

mod schema;
mod worker;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::credential::{CredentialInfo, NewCredential, Secret, Stats};
use crate::error::{Error, Result};
use crate::lease::{LeaseToken, ReleaseOutcome};
use crate::store::{ExpiredLease, GrantAttempt, OnDuplicate, Receipt, Store};

use self::schema::ConnectionOptions;
use self::worker::{Call, Ctx, Failure, GrantJob, Job, ReleaseJob, Worker};

pub use self::schema::SCHEMA_VERSION;

/// How long a lease lives unless renewed, when the pool sets no TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);
/// How often the first waiter looks for releases made by other processes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long a transaction waits for another process's write lock.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Durable against process crashes; a power loss may lose the last
    /// commits (never corrupts). The default, and what WAL mode is made for.
    #[default]
    Normal,
    /// Durable against power loss too, at the cost of an fsync per commit.
    Full,
}

/// Options for opening a [`SqliteStore`].
///
/// ```no_run
/// # async fn open() -> Result<(), credpool::Error> {
/// use credpool::store::sqlite::{SqliteStore, Synchronous};
/// let store = SqliteStore::options("credentials.db")
///     .pool("scrapers")
///     .synchronous(Synchronous::Full)
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    path: PathBuf,
    pool: String,
    synchronous: Synchronous,
    busy_timeout: Duration,
    lease_ttl: Option<Duration>,
    poll_interval: Duration,
    max_in_flight: usize,
    create: bool,
}

impl SqliteOptions {
    /// The pool within the file (default `default`).
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.pool = name.into();
        self
    }

    /// Durability of commits (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How long to wait for another process's write lock (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The lease TTL pools over this store use by default (default 5 minutes).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// How often the first waiter polls for other processes' releases (default 25 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many requests may wait for the store thread at once (default 4096);
    /// callers beyond that wait for room. Releases never wait.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// Whether [`open`](SqliteOptions::open) may create a missing file, make
    /// an empty file a store, or migrate an older store (default `true`).
    /// With `false` it opens only a store that is ready, and refuses the rest
    /// without writing anything: for tools that only read.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Opens the store, creating the file if it is missing.
    ///
    /// # Errors
    ///
    /// [`Error::NotAStore`] for a file that is not a credpool store,
    /// [`Error::StoreTooNew`] for a newer schema, [`Error::Io`] for a path
    /// that cannot be created, [`Error::SqliteFile`] for what SQLite
    /// refuses; each names the path. [`Error::InvalidInput`] for a lease TTL
    /// below [`MIN_LEASE_TTL`](crate::MIN_LEASE_TTL).
    pub async fn open(self) -> Result<SqliteStore> {
        crate::credential::validate_pool_name(&self.pool)?;
        if let Some(ttl) = self.lease_ttl {
            crate::credential::validate_lease_ttl(ttl)?;
        }
        let (opened, ready) = oneshot::channel();
        let (sender, requests) = mpsc::unbounded_channel();
        let (path, pool) = (self.path.clone(), self.pool.clone());
        let busy_timeout = self.busy_timeout;
        let connection_options = ConnectionOptions {
            synchronous_full: self.synchronous == Synchronous::Full,
            busy_timeout: self.busy_timeout,
            create: self.create,
        };
        let thread = std::thread::Builder::new()
            .name(format!("credpool-sqlite-{}", self.pool))
            .spawn(move || match schema::open(&path, &connection_options) {
                Ok(connection) => {
                    let _ = opened.send(Ok(()));
                    Worker::new(connection, pool, path, busy_timeout).run(requests);
                }
                Err(error) => {
                    let _ = opened.send(Err(error));
                }
            })
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        let opened = ready.await.unwrap_or_else(|_| {
            Err(Error::StoreUnavailable {
                reason: format!(
                    "the store thread for {} stopped while opening",
                    self.path.display()
                ),
            })
        });
        if let Err(error) = opened {
            let _ = thread.join();
            return Err(error);
        }
        Ok(SqliteStore {
            sender: Some(sender),
            permits: Arc::new(Semaphore::new(self.max_in_flight)),
            thread: Some(thread),
            path: self.path,
            pool: self.pool,
            lease_ttl: self.lease_ttl,
            poll_interval: self.poll_interval,
            busy_timeout: self.busy_timeout,
        })
    }
}

/// The embedded SQLite store. See the [module docs](self) for how it works.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), credpool::Error> {
/// use credpool::{NewCredential, Pool};
/// use credpool::store::sqlite::SqliteStore;
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("credpool.db")).await?;
/// let pool = Pool::new(store);
/// pool.add(NewCredential::new("alice", "hunter2")).await?;
/// let lease = pool.acquire().await?;
/// assert_eq!(lease.credential().name(), "alice");
/// # Ok(()) }
/// ```
pub struct SqliteStore {
    sender: Option<mpsc::UnboundedSender<Box<dyn Job>>>,
    permits: Arc<Semaphore>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    pool: String,
    lease_ttl: Option<Duration>,
    poll_interval: Duration,
    busy_timeout: Duration,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("pool", &self.pool)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl SqliteStore {
    /// Options for the store at `path`.
    pub fn options(path: impl Into<PathBuf>) -> SqliteOptions {
        SqliteOptions {
            path: path.into(),
            pool: "default".into(),
            synchronous: Synchronous::Normal,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            lease_ttl: Some(DEFAULT_LEASE_TTL),
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_in_flight: 4096,
            create: true,
        }
    }

    /// Opens the pool `default` in the file at `path`, creating the file if missing.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::options(path).open().await
    }

    /// Opens a store from a `sqlite://PATH` URL (`sqlite:///absolute/path.db`
    /// or `sqlite://relative.db`), or from a plain path.
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::options(path_from_url(url)?).open().await
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unavailable(&self) -> Error {
        Error::StoreUnavailable {
            reason: format!(
                "the store thread for {} has stopped (it failed or the store is closing)",
                self.path.display()
            ),
        }
    }

    fn send(&self, job: Box<dyn Job>) -> Result<()> {
        match &self.sender {
            Some(sender) => sender.send(job).map_err(|_| self.unavailable()),
            None => Err(self.unavailable()),
        }
    }

    /// Waits for room among the requests in flight (the channel's bound).
    /// Takes a permit without waiting when one is free; only the wait is a
    /// boxed future, so a caller's future (a waiting task's, say) does not
    /// carry the semaphore's for its whole life.
    async fn room(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => Err(self.unavailable()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                Box::pin(self.permits.clone().acquire_owned())
                    .await
                    .map_err(|_| self.unavailable())
            }
        }
    }

    /// Runs `work` on the store thread, inside its batch transaction.
    async fn call<T, W>(&self, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: FnMut(&mut Ctx<'_>) -> std::result::Result<T, Failure> + Send + 'static,
    {
        let permit = self.room().await?;
        let (reply, answer) = oneshot::channel();
        self.send(Call::boxed(work, Some(reply), Some(permit)))?;
        answer.await.map_err(|_| self.unavailable())?
    }

    /// Makes the store thread panic, to test that callers get an error.
    #[doc(hidden)]
    pub async fn panic_store_thread_for_tests(&self) -> Result<()> {
        self.call(|_ctx| -> std::result::Result<(), Failure> {
            panic!("store thread panic requested by a test")
        })
        .await
    }

    /// Keeps the store thread busy for `pause` inside its transaction, to
    /// test what happens to the requests batched with this one.
    #[doc(hidden)]
    pub async fn stall_store_thread_for_tests(&self, pause: Duration) -> Result<()> {
        self.call(move |_ctx| -> std::result::Result<(), Failure> {
            std::thread::sleep(pause);
            Ok(())
        })
        .await
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The thread finishes what is queued (releases of dropped leases
        // included), then stops.
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A grant on its way back. If the caller leaves before reading it, a lease
/// already granted is released, and one not yet sent is refused so the
/// store thread releases it.
struct PendingGrant<'a> {
    answer: oneshot::Receiver<Result<(GrantAttempt, Vec<ExpiredLease>)>>,
    store: &'a SqliteStore,
}

impl Drop for PendingGrant<'_> {
    fn drop(&mut self) {
        self.answer.close();
        if let Ok(Ok((GrantAttempt::Granted(grant), _))) = self.answer.try_recv() {
            // No pool counted this lease: nothing to tell one.
            let _ = self.store.send(ReleaseJob::boxed(
                grant.token(),
                ReleaseOutcome::Success,
                None,
                None,
                self.store.busy_timeout,
            ));
        }
    }
}

/// The path in a `sqlite://` URL, or the argument itself when it is a plain path.
pub fn path_from_url(url: &str) -> Result<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() {
        return Err(crate::error::InvalidInput::new(
            "sqlite URL",
            format!("{url:?} names no file; write sqlite://PATH"),
        )
        .into());
    }
    Ok(PathBuf::from(path))
}

impl Store for SqliteStore {
    fn pool_name(&self) -> &str {
        &self.pool
    }

    fn default_lease_ttl(&self) -> Option<Duration> {
        self.lease_ttl
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.poll_interval)
    }

    fn grant(
        &self,
        ttl: Option<Duration>,
        expired: &mut Vec<ExpiredLease>,
    ) -> impl Future<Output = Result<GrantAttempt>> + Send {
        // Boxed: every task waiting in `Pool::acquire` carries the future of
        // its first attempt inline, so its size is paid per waiter. One
        // allocation is nothing next to a trip to the store thread.
        Box::pin(async move {
            let permit = self.room().await?;
            let (reply, answer) = oneshot::channel();
            self.send(GrantJob::boxed(ttl, reply, permit))?;
            let mut pending = PendingGrant {
                answer,
                store: self,
            };
            let (attempt, reclaimed) = (&mut pending.answer)
                .await
                .map_err(|_| self.unavailable())??;
            expired.extend(reclaimed);
            Ok(attempt)
        })
    }

    fn release(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        receipt: Receipt,
    ) -> impl Future<Output = Result<Arc<str>>> + Send {
        // Sent now, not when first polled: dropping the future cannot undo it.
        let (reply, answer) = oneshot::channel();
        let sent = self.send(ReleaseJob::boxed(
            lease,
            outcome,
            Some(reply),
            Some(receipt),
            self.busy_timeout,
        ));
        let unavailable = self.unavailable();
        async move {
            sent?;
            answer.await.map_err(|_| unavailable)?
        }
    }

    fn release_detached(&self, lease: LeaseToken, receipt: Receipt) {
        // Without a thread to take it (the job and its receipt are dropped),
        // the lease comes back when it expires.
        let _ = self.send(ReleaseJob::boxed(
            lease,
            ReleaseOutcome::Success,
            None,
            Some(receipt),
            self.busy_timeout,
        ));
    }

    async fn renew(&self, lease: LeaseToken, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        self.call(move |ctx| worker::renew(ctx, lease, ttl)).await
    }

    async fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
    ) -> Result<usize> {
        self.call(move |ctx| worker::add_many(ctx, &credentials, on_duplicate))
            .await
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let name = name.to_string();
        self.call(move |ctx| worker::remove(ctx, &name, force))
            .await
    }

    async fn set_disabled(&self, name: &str, reason: Option<String>) -> Result<()> {
        let name = name.to_string();
        self.call(move |ctx| worker::set_disabled(ctx, &name, reason.as_deref()))
            .await
    }

    async fn update_secret(&self, name: &str, secret: Secret) -> Result<()> {
        let name = name.to_string();
        self.call(move |ctx| worker::update_secret(ctx, &name, &secret))
            .await
    }

    async fn list(&self) -> Result<Vec<CredentialInfo>> {
        self.call(worker::list).await
    }

    async fn reveal(&self) -> Result<Vec<NewCredential>> {
        self.call(worker::reveal).await
    }

    async fn stats(&self) -> Result<Stats> {
        self.call(worker::stats).await
    }
}
