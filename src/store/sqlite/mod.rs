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
//!   process trusts its memory for who holds what.
//! - The waiting line is kept in the file: a waiter that finds nothing free
//!   takes a numbered ticket in the same transaction, and a credential that
//!   comes free goes to the lowest live ticket in the transaction that freed
//!   it: to the waiter at once in this process, or held for another
//!   process's ticket, which the first waiter there claims at its next poll
//!   (every [`DEFAULT_POLL_INTERVAL`] by default; a poll that finds `PRAGMA
//!   data_version` unchanged costs no transaction). Polls renew the
//!   process's tickets; a killed process's tickets expire after the ticket
//!   TTL ([`DEFAULT_TICKET_TTL`]), as does
//!   what was handed to them.
//! - Hand-out order: least recently used first (`last_used_at`, never-used
//!   first, then id), served by an index.
//! - Leases expire after [`DEFAULT_LEASE_TTL`] unless renewed, so the
//!   credentials of a killed process come back.
//! - Reads (`list`, `reveal`, `stats`) run on a connection of their own,
//!   which in WAL mode never blocks the store thread: a long `list` does
//!   not hold up grants.
//! - A grant whose caller left is finished by the pool, which gives its
//!   lease back; if nobody at all reads a grant's reply, the thread releases
//!   the lease right after the commit, before it takes its next batch.

mod admin;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod ceiling;
mod ctx;
mod import;
mod jobs;
mod leases;
mod limits;
mod line;
mod reads;
mod schema;
mod writer;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::credential::{
    Credential, CredentialChange, CredentialInfo, NewCredential, PoolSummary, ReleaseOutcome, Stats,
};
use crate::error::{Error, Result};
use crate::ids::{CredentialId, LeaseToken};
use crate::store::{
    Added, Admin, GrantAnswer, Granting, Leases, Leaving, Line, OnBusy, OnDuplicate, Options,
    Progress, Receipt, StoreSettings, Want, DEFAULT_TICKET_TTL,
};

use self::ctx::{Ctx, Failure};
use self::jobs::Job;
use self::jobs::{Call, GrantJob, PollJob, ReleaseJob};
use self::reads::Reader;
use self::schema::ConnectionOptions;
use self::writer::{Worker, WorkerSettings};

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

/// What only the SQLite store is opened with: the file and how to use it.
/// Set through [`SqliteOptions`].
#[derive(Debug, Clone)]
pub struct Sqlite {
    path: PathBuf,
    synchronous: Synchronous,
    busy_timeout: Duration,
    max_in_flight: usize,
    create: bool,
}

/// Options for opening a [`SqliteStore`]: the pool, lease TTL and poll
/// interval every store takes ([`Options`]), and the file's own below.
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
pub type SqliteOptions = Options<Sqlite>;

impl Options<Sqlite> {
    /// Durability of commits (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.own.synchronous = synchronous;
        self
    }

    /// How long to wait for another process's write lock (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.own.busy_timeout = timeout;
        self
    }

    /// How many requests may wait for the store thread at once (default 4096);
    /// callers beyond that wait for room. Releases never wait.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.own.max_in_flight = requests.max(1);
        self
    }

    /// Whether [`open`](SqliteOptions::open) may create a missing file, make
    /// an empty file a store, or migrate an older store (default `true`).
    /// With `false` it opens only a store that is ready, and refuses the rest
    /// without writing anything: for tools that only read.
    pub fn create(mut self, create: bool) -> Self {
        self.own.create = create;
        self
    }

    /// Opens the store, creating the file if it is missing.
    ///
    /// # Errors
    ///
    /// [`Error::NotAStore`] for a file that is not a credpool store,
    /// [`Error::StoreTooNew`] for a newer schema, [`Error::Io`] for a path
    /// that cannot be created, [`Error::SqliteFile`] for what SQLite
    /// refuses; each names the path. [`Error::InvalidInput`] for a bad pool
    /// name or a lease TTL below [`MIN_LEASE_TTL`](crate::MIN_LEASE_TTL).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the file created (or migrated), never
    /// half made; the store itself is closed.
    pub async fn open(self) -> Result<SqliteStore> {
        self.settings.validate()?;
        let Options { settings, own } = self;
        let (opened, ready) = oneshot::channel();
        let (sender, requests) = mpsc::unbounded_channel();
        let path = own.path.clone();
        let pool = settings.pool().to_string();
        let busy_timeout = own.busy_timeout;
        let line = Line::new();
        let worker = WorkerSettings {
            pool: pool.clone(),
            path: path.clone(),
            busy_timeout,
            line: line.clone(),
            ticket_ttl: settings.ticket_ttl().unwrap_or(DEFAULT_TICKET_TTL),
        };
        let connection_options = ConnectionOptions {
            synchronous_full: own.synchronous == Synchronous::Full,
            busy_timeout,
            create: own.create,
        };
        let importing = connection_options.clone();
        let thread = std::thread::Builder::new()
            .name(format!("credpool-sqlite-{pool}"))
            .spawn(move || match schema::open(&path, &connection_options) {
                Ok(connection) => {
                    let _ = opened.send(Ok(()));
                    Worker::new(connection, worker).run(requests);
                }
                Err(error) => {
                    let _ = opened.send(Err(error));
                }
            })
            .map_err(|source| Error::Io {
                path: own.path.clone(),
                source,
            })?;
        let opened = ready.await.unwrap_or_else(|_| {
            Err(Error::StoreUnavailable {
                reason: format!(
                    "the store thread for {} stopped while opening",
                    own.path.display()
                ),
            })
        });
        let reader = match opened {
            Ok(()) => Reader::open(&own.path, settings.pool(), busy_timeout).await,
            Err(error) => Err(error),
        };
        let reader = match reader {
            Ok(reader) => reader,
            Err(error) => {
                drop(sender);
                let _ = thread.join();
                return Err(error);
            }
        };
        Ok(SqliteStore {
            channel: Channel {
                sender: Some(sender),
                permits: Arc::new(Semaphore::new(own.max_in_flight)),
                path: own.path.into(),
                used: AtomicBool::new(false),
            },
            thread: Some(thread),
            reader,
            settings,
            busy_timeout,
            importing,
        })
    }
}

/// Sets its flag when dropped: a large add whose caller stopped waiting
/// stops before it commits.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The way to the store thread: the request channel and its bound.
struct Channel {
    sender: Option<mpsc::UnboundedSender<Job>>,
    permits: Arc<Semaphore>,
    path: Arc<Path>,
    /// Whether any request was sent: until one is, a read has nothing of
    /// this store's to wait for.
    used: AtomicBool,
}

/// A grant's way to the store thread that does not keep the thread alive.
struct GrantRoute {
    sender: mpsc::WeakUnboundedSender<Job>,
    permits: Arc<Semaphore>,
    path: Arc<Path>,
}

fn unavailable(path: &Path) -> Error {
    Error::StoreUnavailable {
        reason: format!(
            "the store thread for {} has stopped (it failed or the store is closing)",
            path.display()
        ),
    }
}

impl Channel {
    fn send(&self, job: Job) -> Result<()> {
        self.used.store(true, Ordering::Release);
        match &self.sender {
            Some(sender) => sender.send(job).map_err(|_| unavailable(&self.path)),
            None => Err(unavailable(&self.path)),
        }
    }

    /// Waits for room among the requests in flight (the channel's bound).
    /// Takes a permit without waiting when one is free; only the wait is a
    /// boxed future, so a caller's future does not carry the semaphore's.
    async fn room(permits: &Arc<Semaphore>, path: &Path) -> Result<OwnedSemaphorePermit> {
        match permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::Closed) => Err(unavailable(path)),
            Err(TryAcquireError::NoPermits) => Box::pin(permits.clone().acquire_owned())
                .await
                .map_err(|_| unavailable(path)),
        }
    }

    fn grant_route(&self) -> Option<GrantRoute> {
        Some(GrantRoute {
            sender: self.sender.as_ref()?.downgrade(),
            permits: self.permits.clone(),
            path: self.path.clone(),
        })
    }
}

impl GrantRoute {
    /// Waits for room, then sends the grant and waits for its reply.
    async fn grant(
        self,
        ttl: Option<Duration>,
        want: Want,
        on_busy: OnBusy,
    ) -> Result<GrantAnswer> {
        let permit = Channel::room(&self.permits, &self.path).await?;
        let (reply, answer) = oneshot::channel();
        let sender = self
            .sender
            .upgrade()
            .ok_or_else(|| unavailable(&self.path))?;
        sender
            .send(GrantJob::job(ttl, want, on_busy, reply, permit))
            .map_err(|_| unavailable(&self.path))?;
        drop(sender);
        answer.await.map_err(|_| unavailable(&self.path))?
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
    channel: Channel,
    thread: Option<JoinHandle<()>>,
    reader: Reader,
    settings: StoreSettings,
    busy_timeout: Duration,
    /// How a large add's own connection is set up (see [`import`]).
    importing: ConnectionOptions,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.channel.path)
            .field("pool", &self.settings.pool())
            .field("lease_ttl", &self.settings.lease_ttl())
            .finish()
    }
}

impl SqliteStore {
    /// Options for the store at `path`.
    pub fn options(path: impl Into<PathBuf>) -> SqliteOptions {
        Options::new(
            StoreSettings::shared(DEFAULT_LEASE_TTL, DEFAULT_POLL_INTERVAL)
                .with_ticket_ttl(Some(DEFAULT_TICKET_TTL)),
            Sqlite {
                path: path.into(),
                synchronous: Synchronous::Normal,
                busy_timeout: DEFAULT_BUSY_TIMEOUT,
                max_in_flight: 4096,
                create: true,
            },
        )
    }

    /// Opens the pool `default` in the file at `path`, creating the file if missing.
    ///
    /// # Cancel safety
    ///
    /// As for [`SqliteOptions::open`].
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::options(path).open().await
    }

    /// Opens a store from a `sqlite://PATH` URL (`sqlite:///absolute/path.db`
    /// or `sqlite://relative.db`), or from a plain path.
    ///
    /// # Cancel safety
    ///
    /// As for [`SqliteOptions::open`].
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::options(path_from_url(url)?).open().await
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.channel.path
    }

    /// Runs `work` on the store thread, inside its batch transaction.
    async fn call<T, W>(&self, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: FnMut(&mut Ctx<'_>) -> std::result::Result<T, Failure> + Send + 'static,
    {
        let permit = Channel::room(&self.channel.permits, &self.channel.path).await?;
        let (reply, answer) = oneshot::channel();
        self.channel.send(Call::job(work, reply, permit))?;
        answer.await.map_err(|_| unavailable(&self.channel.path))?
    }

    /// Waits until the store thread has committed every request sent
    /// before this one (the releases of dropped leases among them) and
    /// reclaimed expired leases, so that a read on the reader sees them.
    /// Costs one trip through the thread, batched with other requests; the
    /// read itself then runs beside the thread.
    ///
    /// A store that has sent no request has nothing to wait for, and its
    /// read takes no write lock: `credpool stats` answers while another
    /// process holds it. (Reads count a lease past its expiry as gone
    /// whether or not it was reclaimed.)
    async fn settle_for_read(&self) -> Result<()> {
        if !self.channel.used.load(Ordering::Acquire) {
            return Ok(());
        }
        // Every batch reclaims before it runs its requests.
        self.call(|_ctx| Ok(())).await
    }

    /// Records the text of every statement the store thread runs from now
    /// on, for a test that checks their plans
    /// ([`recorded_statements_for_tests`](Self::recorded_statements_for_tests)).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn record_statements_for_tests(&self) -> Result<()> {
        fn record(event: rusqlite::trace::TraceEvent<'_>) {
            if let rusqlite::trace::TraceEvent::Stmt(statement, _) = event {
                recorded_statements()
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(statement.sql().into_owned());
            }
        }
        self.call(|ctx| -> std::result::Result<(), Failure> {
            ctx.connection.trace_v2(
                rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
                Some(record),
            );
            Ok(())
        })
        .await
    }

    /// The statements recorded so far, by every store recording them.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn recorded_statements_for_tests() -> Vec<String> {
        recorded_statements()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Makes the store thread panic, to test that callers get an error.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn panic_store_thread_for_tests(&self) -> Result<()> {
        self.call(|_ctx| -> std::result::Result<(), Failure> {
            panic!("store thread panic requested by a test")
        })
        .await
    }

    /// Keeps the store thread busy for `pause` inside its transaction, to
    /// test what happens to the requests batched with this one.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn stall_store_thread_for_tests(&self, pause: Duration) -> Result<()> {
        self.call(move |_ctx| -> std::result::Result<(), Failure> {
            std::thread::sleep(pause);
            Ok(())
        })
        .await
    }
}

#[cfg(feature = "test-hooks")]
fn recorded_statements() -> &'static std::sync::Mutex<std::collections::BTreeSet<String>> {
    static RECORDED: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeSet<String>>> =
        std::sync::OnceLock::new();
    RECORDED.get_or_init(Default::default)
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The thread finishes what is queued (releases of dropped leases
        // included), then stops.
        self.channel.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The path in a `sqlite://` URL, or the argument itself when it is a plain path.
pub(crate) fn path_from_url(url: &str) -> Result<PathBuf> {
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

impl Leases for SqliteStore {
    fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    fn runs_calls_in_order(&self) -> bool {
        // One thread serves the requests in the order they were sent.
        true
    }

    fn grant(&self, ttl: Option<Duration>, want: &Want, on_busy: OnBusy) -> Granting {
        // Sent now when there is room: the future only waits for the reply.
        let permit = match self.channel.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => {
                return Granting::Now(Err(unavailable(&self.channel.path)))
            }
            Err(TryAcquireError::NoPermits) => {
                return match self.channel.grant_route() {
                    Some(route) => {
                        Granting::Later(Box::pin(route.grant(ttl, want.clone(), on_busy)))
                    }
                    None => Granting::Now(Err(unavailable(&self.channel.path))),
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        if let Err(error) =
            self.channel
                .send(GrantJob::job(ttl, want.clone(), on_busy, reply, permit))
        {
            return Granting::Now(Err(error));
        }
        let path = self.channel.path.clone();
        Granting::Later(Box::pin(async move {
            answer.await.map_err(|_| unavailable(&path))?
        }))
    }

    fn release(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        receipt: Receipt,
    ) -> impl Future<Output = Result<Arc<str>>> + Send {
        // Sent now, not when first polled: dropping the future cannot undo it.
        let (reply, answer) = oneshot::channel();
        let sent = self.channel.send(ReleaseJob::job(
            lease,
            outcome,
            Some(reply),
            receipt,
            self.busy_timeout,
        ));
        let unavailable = unavailable(&self.channel.path);
        async move {
            sent?;
            answer.await.map_err(|_| unavailable)?
        }
    }

    fn release_detached(&self, lease: LeaseToken, receipt: Receipt) {
        // Without a thread to take it (the job and its receipt are dropped),
        // the lease comes back when it expires.
        let _ = self.channel.send(ReleaseJob::job(
            lease,
            ReleaseOutcome::Success,
            None,
            receipt,
            self.busy_timeout,
        ));
    }

    async fn renew(&self, lease: LeaseToken, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        self.call(move |ctx| leases::renew(ctx, lease, ttl)).await
    }

    async fn poll_line(&self) -> Result<Option<SystemTime>> {
        // The thread delivers what it claims whether or not this future is
        // still there: dropping it loses nothing.
        let permit = Channel::room(&self.channel.permits, &self.channel.path).await?;
        let (reply, answer) = oneshot::channel();
        self.channel.send(PollJob::job(reply, permit))?;
        let retry_at = answer
            .await
            .map_err(|_| unavailable(&self.channel.path))??;
        Ok(retry_at.map(crate::time::from_ms))
    }

    fn leave_line(&self, ticket: u64, leaving: Leaving) {
        // Without a thread to take it, the ticket expires without its
        // heartbeat. (The thread runs calls in order: nobody waits for `leaving`.)
        let _ = self.channel.send(Job::Leave(ticket));
        drop(leaving);
    }
}

impl Admin for SqliteStore {
    async fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
        progress: Progress,
    ) -> Result<Added> {
        if credentials.len() < import::STAGED_FROM {
            return self
                .call(move |ctx| {
                    let added = admin::add_many(ctx, &credentials, on_duplicate, &progress)?;
                    line::serve(ctx)?;
                    Ok(added)
                })
                .await;
        }
        // A store whose thread has stopped takes no import, as the small
        // path refuses it.
        self.call(|_| Ok(())).await?;
        // Staged beside the store thread, on a connection of its own: the
        // other processes' grants go on meanwhile (see [`import`]).
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_when_dropped = CancelOnDrop(cancelled.clone());
        let (path, options) = (self.channel.path.clone(), self.importing.clone());
        let pool = self.settings.pool().to_string();
        let added = tokio::task::spawn_blocking(move || {
            import::add_staged(
                &path,
                &options,
                &pool,
                &credentials,
                on_duplicate,
                &progress,
                &cancelled,
            )
        })
        .await
        .map_err(|_| unavailable(&self.channel.path))??;
        // The new credentials go to the tickets waiting in the line. The
        // import is committed: a failure here must not say it was not (the
        // line is served again at the next release or poll).
        if let Err(error) = self.call(|ctx| Ok(line::serve(ctx)?)).await {
            tracing::warn!(%error, "imported; serving the waiting line failed");
        }
        Ok(added)
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let name = name.to_string();
        self.call(move |ctx| admin::remove(ctx, &name, force)).await
    }

    async fn set_disabled(&self, name: &str, reason: Option<String>) -> Result<()> {
        let name = name.to_string();
        self.call(move |ctx| {
            admin::set_disabled(ctx, &name, reason.as_deref())?;
            // An enabled credential goes to the first ticket waiting.
            line::serve(ctx)?;
            Ok(())
        })
        .await
    }

    async fn revoke(&self, name: &str) -> Result<u32> {
        let name = name.to_string();
        self.call(move |ctx| {
            let ended = admin::revoke(ctx, &name)?;
            // The freed units go to the first tickets waiting.
            line::serve(ctx)?;
            Ok(ended)
        })
        .await
    }

    async fn update(&self, name: &str, change: CredentialChange) -> Result<()> {
        let name = name.to_string();
        self.call(move |ctx| {
            admin::update(ctx, &name, &change)?;
            if change.capacity.is_some() || !change.rates.is_empty() {
                // New units go to the first tickets waiting.
                line::serve(ctx)?;
            }
            Ok(())
        })
        .await
    }

    async fn set_default_rate(&self, scope: &str, rate: Option<crate::Rate>) -> Result<()> {
        let scope = scope.to_string();
        self.call(move |ctx| {
            limits::set_pool_default(ctx, &scope, rate)?;
            // Credentials whose cool-down the old default set go to the line.
            line::serve(ctx)?;
            Ok(())
        })
        .await
    }

    async fn default_rates(&self) -> Result<Vec<(String, crate::Rate)>> {
        self.call(|ctx| Ok(limits::default_rates(ctx)?)).await
    }

    async fn reset_limits(&self, name: Option<&str>, scope: Option<&str>) -> Result<u64> {
        let (name, scope) = (name.map(str::to_string), scope.map(str::to_string));
        self.call(move |ctx| {
            let reset = admin::reset_limits(ctx, name.as_deref(), scope.as_deref())?;
            // Credentials that cooled down go to the tickets waiting.
            line::serve(ctx)?;
            Ok(reset)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<CredentialInfo>> {
        self.settle_for_read().await?;
        self.reader.list().await
    }

    async fn list_page(
        &self,
        after: Option<CredentialId>,
        limit: usize,
    ) -> Result<Vec<CredentialInfo>> {
        self.settle_for_read().await?;
        self.reader.list_page(after, limit).await
    }

    async fn info(&self, name: &str) -> Result<Option<CredentialInfo>> {
        self.settle_for_read().await?;
        self.reader.info(name).await
    }

    async fn reveal(&self) -> Result<Vec<Credential>> {
        self.settle_for_read().await?;
        self.reader.reveal().await
    }

    async fn pools(&self) -> Result<Vec<PoolSummary>> {
        self.reader.pools().await
    }

    async fn stats(&self) -> Result<Stats> {
        self.settle_for_read().await?;
        self.reader.stats().await
    }
}
