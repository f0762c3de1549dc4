//! The Postgres store (feature `postgres`): one pool shared by a fleet of machines.
//!
//! - Opened from a `postgres://` URL or a [`tokio_postgres::Config`]. The
//!   tables live in their own schema (default `credpool`), created and
//!   migrated on open under an advisory lock, in one transaction; a schema
//!   from a newer credpool, or one holding other tables, is refused and left
//!   as it was. Connections are plain TCP or Unix sockets (no TLS).
//! - Acquire is one statement: a CTE picks the least recently used free
//!   credential with `FOR UPDATE SKIP LOCKED`, records the lease and bumps
//!   the usage, and returns the row. Release and renew are one statement
//!   each, fenced by the lease id. Times are the server's clock.
//! - Grants asked for at the same time share one acquire statement: at most
//!   one per connection is in flight, and the grants that arrive meanwhile
//!   go together in the next (up to 64). A lone grant goes at once.
//! - A small pool of connections ([`PostgresOptions::connections`], default
//!   8) is shared by all callers: every operation is one statement, so
//!   tokio-postgres pipelines them. A connection that breaks fails the calls
//!   in flight on it (and a call that reaches it before the break is noticed);
//!   the next call opens a new one. No call is retried by itself: a grant
//!   whose answer was lost may have been committed, and its lease then comes
//!   back when it expires.
//! - Waiters hear of releases in other processes by `LISTEN`/`NOTIFY` (one
//!   listening connection per store), and poll every
//!   [`DEFAULT_POLL_INTERVAL`] in case a notification was missed.
//! - Each call runs in a task of its own, so cancelling a caller never
//!   leaves a half-known state: a lease granted after its caller left is
//!   released at once. A [`Lease`](crate::Lease) dropped without release is
//!   released by a task on the runtime the store was opened on, even when it
//!   is dropped on a thread outside any runtime; once that runtime has shut
//!   down, it expires after its TTL ([`DEFAULT_LEASE_TTL`] unless the pool
//!   sets another).
//! - A release is never lost: while the server cannot be reached it is tried
//!   again, with a pause growing to a second, until it commits (or the store
//!   is dropped). The caller waits up to five seconds, then hears
//!   [`Error::ReleasePending`]; the lease counts as out until it commits.
//! - Expired leases are reclaimed when nothing is free, and at most every
//!   [`RECLAIM_INTERVAL`] otherwise.

mod background;
mod batch;
mod connections;
mod rows;
mod schema;
mod sql;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, Row};

use crate::credential::{
    duration_ms, from_ms, now_ms, Credential, CredentialId, CredentialInfo, NewCredential, Secret,
    Stats,
};
use crate::error::{Error, InvalidInput, Result};
use crate::lease::{Grant, LeaseId, LeaseToken, ReleaseOutcome};
use crate::store::{ExpiredLease, GrantAttempt, OnDuplicate, Receipt, Store};

use self::background::{Background, Mark, Work};
use self::batch::{Asked, Batch, GrantQueue};
use self::connections::{Conn, Connections};
use self::rows::Columns;
use self::sql::Sql;

pub use self::schema::SCHEMA_VERSION;

/// How long a lease lives unless renewed, when the pool sets no TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);
/// How often the first waiter asks again when no notification came.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How many connections a store keeps, besides the listening one.
pub const DEFAULT_CONNECTIONS: usize = 8;
/// The longest time an expired lease waits to be reclaimed while other
/// credentials are free.
pub const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// How many times a grant asks again when a free credential was locked by
/// another transaction at the moment it looked.
const LOCKED_RETRIES: usize = 3;
/// How many credentials one insert statement adds.
const INSERT_CHUNK: usize = 5_000;
/// The longest duration, in ms, the store sends: now plus this still fits
/// in a `bigint`, so `Duration::MAX` saturates instead of overflowing in SQL.
const MAX_MS: i64 = i64::MAX / 4;
/// How long a release that cannot commit keeps its caller waiting before
/// the caller hears [`Error::ReleasePending`]; the store goes on trying.
const RELEASE_PATIENCE: Duration = Duration::from_secs(5);
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Options for opening a [`PostgresStore`].
///
/// ```no_run
/// # async fn open() -> Result<(), credpool::Error> {
/// use credpool::store::postgres::PostgresStore;
/// let store = PostgresStore::options_url("postgres://app@db.internal/app")?
///     .schema("credpool")
///     .pool("scrapers")
///     .connections(4)
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresOptions {
    config: Config,
    schema: String,
    pool: String,
    connections: usize,
    lease_ttl: Option<Duration>,
    poll_interval: Duration,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("location", &location(&self.config, &self.schema))
            .field("pool", &self.pool)
            .field("connections", &self.connections)
            .field("lease_ttl", &self.lease_ttl)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl PostgresOptions {
    /// The schema that holds credpool's tables (default `credpool`): lower
    /// case ASCII letters, digits and `_`, at most 48 bytes, not starting
    /// with a digit. Created if missing.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The pool within the schema (default `default`).
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.pool = name.into();
        self
    }

    /// How many connections to keep (default 8), besides the listening one.
    pub fn connections(mut self, count: usize) -> Self {
        self.connections = count.max(1);
        self
    }

    /// The lease TTL pools over this store use by default (default 5 minutes).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// How often the first waiter asks again when no notification came (default 250 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Where the store is: server, database and schema (never the password).
    pub fn location(&self) -> String {
        location(&self.config, &self.schema)
    }

    /// Connects, creates or migrates the schema, and starts listening.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad schema or pool name,
    /// [`Error::Postgres`] when the server cannot be reached,
    /// [`Error::StoreTooNew`] for a schema from a newer credpool, and
    /// [`Error::NotAStore`] for a schema that holds other tables.
    pub async fn open(self) -> Result<PostgresStore> {
        validate_schema(&self.schema)?;
        if let Some(ttl) = self.lease_ttl {
            crate::credential::validate_lease_ttl(ttl)?;
        }
        crate::credential::validate_pool_name(&self.pool)?;
        let location = location(&self.config, &self.schema);
        let mut client = connections::connect(&self.config)
            .await
            .map_err(|error| at(&location, error))?;
        schema::migrate(&mut client, &self.schema, &location)
            .await
            .map_err(|error| at(&location, error))?;
        drop(client);

        let sql = Arc::new(Sql::new(&self.schema));
        let connections = Connections::new(self.config.clone(), sql.clone(), self.connections);
        // Fail now, not on the first acquire, if the statements do not prepare.
        connections
            .get()
            .await
            .map_err(|error| at(&location, error))?;
        let channel = format!("credpool.{}", self.schema);
        let instance = instance_id();
        let changed = Arc::new(Notify::new());
        let listener = tokio::spawn(connections::listen(
            self.config.clone(),
            channel.clone(),
            self.pool.clone(),
            instance.clone(),
            changed.clone(),
        ));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                connections,
                sql,
                payload: format!("{instance}:{}", self.pool),
                instance,
                announce_for: ms(self.poll_interval * 4).max(1_000),
                last_announced: AtomicI64::new(0),
                channel,
                pool: self.pool,
                location,
                last_reclaim: AtomicI64::new(0),
                grants: GrantQueue::new(self.connections),
                shared_statements: AtomicU64::new(0),
                releases: Arc::default(),
                orphans: Arc::default(),
                runtime: tokio::runtime::Handle::current(),
                closed: AtomicBool::new(false),
            }),
            changed,
            listener,
            lease_ttl: self.lease_ttl,
            poll_interval: self.poll_interval,
        })
    }
}

/// Adds where an error happened to a connection error, whose message would
/// not say which server it was.
fn at(location: &str, error: Error) -> Error {
    match error {
        Error::Postgres { message, code } if code.is_none() => Error::Postgres {
            message: format!("{location}: {message}"),
            code,
        },
        other => other,
    }
}

fn validate_schema(schema: &str) -> Result<()> {
    let starts_well = schema
        .chars()
        .next()
        .is_some_and(|first| first == '_' || first.is_ascii_lowercase());
    let all_well = schema
        .chars()
        .all(|c| c == '_' || c.is_ascii_lowercase() || c.is_ascii_digit());
    if starts_well && all_well && schema.len() <= 48 {
        return Ok(());
    }
    Err(InvalidInput::new(
        "schema",
        format!(
            "{schema:?} is not a plain schema name: use lower case ASCII letters, digits \
             and '_', at most 48 bytes, not starting with a digit"
        ),
    )
    .into())
}

/// A name for this store among all that share the database.
fn instance_id() -> String {
    static OPENED: AtomicI64 = AtomicI64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{:x}.{:x}.{:x}",
        std::process::id(),
        nanos,
        OPENED.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where the store is, for messages: never the password.
fn location(config: &Config, schema: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres database {:?} on {}, schema {schema:?}",
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres"),
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        }
    )
}

/// The Postgres store. See the [module docs](self) for how it works.
pub struct PostgresStore {
    inner: Arc<Inner>,
    changed: Arc<Notify>,
    listener: JoinHandle<()>,
    lease_ttl: Option<Duration>,
    poll_interval: Duration,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.inner.location)
            .field("pool", &self.inner.pool)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Options for a store on the server `config` names.
    pub fn options(config: Config) -> PostgresOptions {
        PostgresOptions {
            config,
            schema: "credpool".into(),
            pool: "default".into(),
            connections: DEFAULT_CONNECTIONS,
            lease_ttl: Some(DEFAULT_LEASE_TTL),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// Options for a store at a `postgres://` URL (or a `key=value` string).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the URL does not parse; the message does
    /// not repeat the URL, which may hold a password.
    pub fn options_url(url: &str) -> Result<PostgresOptions> {
        let config = url.parse::<Config>().map_err(|error| {
            Error::from(InvalidInput::new(
                "postgres URL",
                format!("{error}; write postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
            ))
        })?;
        Ok(Self::options(config))
    }

    /// Opens the pool `default` in the schema `credpool` at a `postgres://` URL.
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::options_url(url)?.open().await
    }

    /// Where the store is: server, database and schema (never the password).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// How many acquire statements so far were shared by several grants
    /// asked for at the same time. For tests.
    #[doc(hidden)]
    pub fn shared_grant_statements(&self) -> u64 {
        self.inner.shared_statements.load(Ordering::Relaxed)
    }

    /// Runs `work` on its own task, on the runtime the store was opened on,
    /// so that it finishes even if the caller leaves.
    fn spawn<T, F>(&self, work: F) -> Result<JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        Ok(self.inner.runtime.spawn(work))
    }

    /// Runs `work` on its own task once the grants whose callers left before
    /// this call, and every background release begun before them or this
    /// call, are done.
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let orphans = inner.orphans.mark();
        join(self.spawn(async move {
            inner.orphans.finished_before(orphans).await;
            // Marked now, to take in the releases of those orphans too.
            inner.releases.finished_before(inner.releases.mark()).await;
            work.await
        })?)
        .await
    }
}

async fn join<T>(task: JoinHandle<Result<T>>) -> Result<T> {
    task.await.unwrap_or_else(|error| {
        Err(Error::StoreUnavailable {
            reason: format!("a postgres store task failed: {error}"),
        })
    })
}

/// What every task of the store shares.
#[derive(Debug)]
struct Inner {
    connections: Connections,
    sql: Arc<Sql>,
    pool: String,
    location: String,
    channel: String,
    /// `INSTANCE:POOL`: the listener ignores the notes this store sent.
    payload: String,
    /// This store among all that share the schema.
    instance: String,
    /// How long, in ms, an announcement that this store has waiters lasts;
    /// the first waiter renews it at each poll.
    announce_for: i64,
    /// When this store last announced that it has waiters, in ms.
    last_announced: AtomicI64,
    /// When this process last reclaimed expired leases, in ms.
    last_reclaim: AtomicI64,
    /// The grants waiting to share an acquire statement.
    grants: GrantQueue,
    /// How many acquire statements were shared by more than one grant.
    shared_statements: AtomicU64,
    /// The releases running in the background (of a dropped lease, or of a
    /// grant whose caller left). Every other call waits for the ones begun
    /// before it, so it sees their effect, as on the other stores.
    releases: Arc<Background>,
    /// The grants still running whose callers left. Calls other than grants
    /// wait for the ones begun before them (and so for their releases), so
    /// that a pool seen with nothing leased stays so. Grants do not: one
    /// grant waiting for another would queue every grant behind each
    /// cancelled one.
    orphans: Arc<Background>,
    /// The runtime the store was opened on: background work runs there, so
    /// a lease dropped on a thread without a runtime is still released.
    runtime: tokio::runtime::Handle,
    /// Set when the store is dropped: releases stop being tried again.
    closed: AtomicBool,
}

/// A duration in ms for SQL, saturated at [`MAX_MS`].
fn ms(duration: Duration) -> i64 {
    duration_ms(duration).min(MAX_MS)
}

fn grant_from(row: &Row) -> Result<Grant> {
    Ok(Grant {
        credential: Credential::new(
            CredentialId::new(row.unsigned(0, "credentials.id")?),
            row.column::<String>(1, "credentials.name")?.into(),
            Secret::new(row.column::<String>(2, "credentials.secret")?),
            row.column(3, "credentials.extra")?,
            row.unsigned32(4, "credentials.capacity")?,
        ),
        lease_id: LeaseId::new(row.unsigned(5, "leases.id")?),
        acquired_at: from_ms(row.column(6, "leases.acquired_at")?),
        expires_at: row
            .column::<Option<i64>>(7, "leases.expires_at")?
            .map(from_ms),
    })
}

impl Inner {
    /// Releases `lease` on a task of its own, on the store's runtime. Calls
    /// made after this one wait for the release. When that runtime has shut
    /// down, the task (and with it the receipt) is dropped, and the lease
    /// comes back when it expires.
    fn release_in_background(self: &Arc<Self>, lease: LeaseToken, receipt: Receipt) {
        let work = self.releases.begin();
        let inner = self.clone();
        self.runtime.spawn(async move {
            inner
                .release_until_done(lease, ReleaseOutcome::Success, receipt, None, Some(work))
                .await;
        });
    }

    /// Releases `lease`, trying again with a growing pause while the server
    /// cannot be reached or fails, until the release commits, is refused, or
    /// the store is dropped. Completes the receipt then, and answers `reply`
    /// with the outcome, or with [`Error::ReleasePending`] once it has
    /// failed for [`RELEASE_PATIENCE`].
    ///
    /// `work` is the background work this release counts as, if any: calls
    /// made later wait for it, but only while its first attempt runs, so a
    /// release that waits out an outage holds up no other call.
    async fn release_until_done(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        receipt: Receipt,
        mut reply: Option<oneshot::Sender<Result<Arc<str>>>>,
        mut work: Option<Work>,
    ) {
        let started = tokio::time::Instant::now();
        let mut pause = MIN_RETRY_PAUSE;
        let mut attempts = 0;
        let decided = loop {
            attempts += 1;
            match self.release(lease, outcome.clone()).await {
                Ok(name) => {
                    receipt.released(&name);
                    break Ok(name);
                }
                // Found gone on a retry: most likely the attempt whose answer
                // was lost had committed it (it may also have expired since).
                Err(Error::LeaseLost { credential, .. }) if attempts > 1 => {
                    let name: Arc<str> = credential.into();
                    receipt.released(&name);
                    break Ok(name);
                }
                Err(error @ Error::LeaseLost { .. }) => {
                    receipt.refused();
                    break Err(error);
                }
                Err(error) if !transient(&error) || self.closed.load(Ordering::SeqCst) => {
                    // Trying again cannot help (the schema was changed, say),
                    // or the store is gone: the lease expires in time.
                    tracing::warn!(%error, lease_id = %lease.lease_id(), "a release failed for good; the lease comes back when it expires");
                    drop(receipt);
                    break Err(error);
                }
                Err(error) => {
                    work.take();
                    tracing::warn!(%error, lease_id = %lease.lease_id(), "a release could not be committed; trying again");
                    if started.elapsed() >= RELEASE_PATIENCE {
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(Err(Error::ReleasePending {
                                location: self.location.clone(),
                                lease_id: lease.lease_id(),
                                reason: error.to_string(),
                            }));
                        }
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(decided);
        }
    }

    async fn grant(
        self: &Arc<Self>,
        mark: Mark,
        ttl: Option<Duration>,
    ) -> Result<(GrantAttempt, Vec<ExpiredLease>)> {
        self.releases.finished_before(mark).await;
        let ttl = ttl.map(ms);
        let mut expired = Vec::new();
        let now = now_ms();
        let last_reclaim = self.last_reclaim.load(Ordering::Relaxed);
        let due = now - last_reclaim >= ms(RECLAIM_INTERVAL)
            && self
                .last_reclaim
                .compare_exchange(last_reclaim, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        // The grant is queued at once, before any wait for a connection, so
        // that grants asked for together share a statement.
        let mut granted = if due {
            let reclaim = async { self.reclaim(&*self.connections.get().await?).await };
            let (granted, reclaimed) = tokio::join!(self.acquire(ttl), reclaim);
            // Reclaiming by the way is optional (it is done again when nothing
            // is free): its failure must not drop a lease just granted.
            match reclaimed {
                Ok(reclaimed) => expired = reclaimed,
                Err(error) => tracing::debug!(%error, "reclaiming expired leases failed"),
            }
            granted?
        } else {
            self.acquire(ttl).await?
        };
        for _ in 0..LOCKED_RETRIES {
            if let Some(grant) = granted {
                return Ok((GrantAttempt::Granted(grant), expired));
            }
            let conn = self.connections.get().await?;
            let pool: [&(dyn ToSql + Sync); 1] = [&self.pool];
            let (reclaimed, busy, announced) = tokio::join!(
                self.reclaim(&conn),
                conn.client.query_one(&conn.busy, &pool),
                self.announce_waiters(&conn),
            );
            let reclaimed = reclaimed?;
            let busy = busy?;
            announced?;
            if !busy.column::<bool>(0, "enabled")? {
                return Err(Error::NoCredentials {
                    pool: self.pool.clone(),
                });
            }
            let free_after_all = busy.column::<bool>(1, "free")? || !reclaimed.is_empty();
            expired.extend(reclaimed);
            if !free_after_all {
                let cooling: Option<i64> = busy.column(2, "next cool-down end")?;
                let expiry: Option<i64> = busy.column(3, "next expiry")?;
                let retry_at = match (cooling, expiry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let retry_at = retry_at.map(from_ms);
                return Ok((GrantAttempt::Busy { retry_at }, expired));
            }
            granted = self.acquire(ttl).await?;
        }
        match granted {
            Some(grant) => Ok((GrantAttempt::Granted(grant), expired)),
            // Free credentials stayed locked by other transactions: ask soon.
            None => Ok((
                GrantAttempt::Busy {
                    retry_at: Some(SystemTime::now() + Duration::from_millis(2)),
                },
                expired,
            )),
        }
    }

    /// Says (at most once per half announcement) that this store has
    /// waiters, so that releases in other stores notify it.
    async fn announce_waiters(&self, conn: &Conn) -> Result<()> {
        let now = now_ms();
        if now - self.last_announced.load(Ordering::Relaxed) < self.announce_for / 2 {
            return Ok(());
        }
        self.last_announced.store(now, Ordering::Relaxed);
        conn.client
            .execute(
                &conn.announce,
                &[&self.pool, &self.instance, &self.announce_for],
            )
            .await?;
        Ok(())
    }

    /// A lease, or none when nothing was free; the statement is shared with
    /// the grants asked for at the same time.
    async fn acquire(self: &Arc<Self>, ttl: Option<i64>) -> Result<Option<Grant>> {
        let (reply, answer) = oneshot::channel();
        if self.grants.push(Asked { ttl, reply }) {
            // This task runs the first statement itself, so that a lone grant
            // goes without a hand-off to another task, and leaves the rest to
            // a task of its own. (It is a task of the store's: its caller
            // leaving does not stop it.)
            let mut runner = self.grants.runner();
            if let Some(batch) = runner.next_batch() {
                self.serve(batch).await;
                if let Some(more) = runner.next_batch() {
                    runner.hand_over();
                    tokio::spawn(self.clone().run_grants(more));
                }
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::StoreUnavailable {
                reason: "a postgres grant was dropped before its statement ran".into(),
            })
        })
    }

    /// Takes over a runner's place with its next batch, and runs the queued
    /// grants, a batch per statement, until none waits.
    async fn run_grants(self: Arc<Self>, first: Batch) {
        let mut runner = self.grants.runner();
        let mut next = Some(first);
        while let Some(batch) = next {
            self.serve(batch).await;
            next = runner.next_batch();
        }
    }

    /// Makes the grants of `batch` in one statement and answers each.
    async fn serve(self: &Arc<Self>, (ttl, batch): Batch) {
        match self.acquire_batch(ttl, batch.len()).await {
            Ok(grants) => {
                let mut grants = grants.into_iter();
                for asked in batch {
                    if let Err(Ok(Some(grant))) = asked.reply.send(Ok(grants.next())) {
                        self.release_in_background(
                            grant.token(),
                            Receipt::untracked(grant.token()),
                        );
                    }
                }
            }
            Err(error) => {
                for asked in batch {
                    let _ = asked.reply.send(Err(share(&error)));
                }
            }
        }
    }

    /// Up to `count` leases in one statement, in the order of their ids.
    async fn acquire_batch(&self, ttl: Option<i64>, count: usize) -> Result<Vec<Grant>> {
        let conn = self.connections.get().await?;
        if count == 1 {
            let row = conn
                .client
                .query_opt(&conn.acquire, &[&self.pool, &ttl])
                .await?;
            return row.as_ref().map(grant_from).into_iter().collect();
        }
        self.shared_statements.fetch_add(1, Ordering::Relaxed);
        let rows = conn
            .client
            .query(&conn.acquire_many, &[&self.pool, &ttl, &(count as i64)])
            .await?;
        rows.iter().map(grant_from).collect()
    }

    /// Ends expired leases. A deadlock with another process reclaiming the
    /// same leases is not an error: one of the two does it.
    async fn reclaim(&self, conn: &Conn) -> Result<Vec<ExpiredLease>> {
        self.last_reclaim.store(now_ms(), Ordering::Relaxed);
        match conn.client.query(&conn.reclaim, &[&self.pool]).await {
            Ok(rows) => rows
                .iter()
                .map(|row| {
                    Ok(ExpiredLease {
                        lease_id: LeaseId::new(row.unsigned(0, "leases.id")?),
                        name: row.column::<String>(1, "credentials.name")?.into(),
                    })
                })
                .collect(),
            Err(error)
                if error.code()
                    == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                Ok(Vec::new())
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn release(&self, lease: LeaseToken, outcome: ReleaseOutcome) -> Result<Arc<str>> {
        let conn = self.connections.get().await?;
        let (cool, disable): (Option<i64>, Option<&str>) = match &outcome {
            ReleaseOutcome::CoolDown(pause) if !pause.is_zero() => (Some(ms(*pause)), None),
            ReleaseOutcome::Disable(reason) => (None, Some(reason.as_str())),
            _ => (None, None),
        };
        let (lease_id, credential_id) = ids(lease);
        let row = conn
            .client
            .query_opt(
                &conn.release,
                &[
                    &lease_id,
                    &credential_id,
                    &self.pool,
                    &cool,
                    &disable,
                    &self.channel,
                    &self.payload,
                    &self.instance,
                ],
            )
            .await?;
        match row {
            Some(row) => Ok(row.column::<String>(0, "credentials.name")?.into()),
            None => Err(self.lease_lost(&conn, lease).await?),
        }
    }

    async fn renew(&self, lease: LeaseToken, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        let conn = self.connections.get().await?;
        let (lease_id, credential_id) = ids(lease);
        let ttl = ttl.map(ms);
        let row = conn
            .client
            .query_opt(&conn.renew, &[&lease_id, &credential_id, &self.pool, &ttl])
            .await?;
        match row {
            Some(row) => Ok(row
                .column::<Option<i64>>(0, "leases.expires_at")?
                .map(from_ms)),
            None => Err(self.lease_lost(&conn, lease).await?),
        }
    }

    async fn lease_lost(&self, conn: &Conn, lease: LeaseToken) -> Result<Error> {
        let (_, credential_id) = ids(lease);
        let name: Option<String> = conn
            .client
            .query_opt(&self.sql.name_of(), &[&credential_id, &self.pool])
            .await?
            .map(|row| row.get(0));
        Ok(Error::LeaseLost {
            credential: name.unwrap_or_else(|| lease.credential_id().to_string()),
            lease_id: lease.lease_id(),
        })
    }

    async fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
    ) -> Result<usize> {
        let mut client = connections::connect(&self.connections.config).await?;
        let transaction = client.transaction().await?;
        let insert = transaction.prepare(&self.sql.insert_many()).await?;
        let mut added = 0;
        for (chunk_index, chunk) in credentials.chunks(INSERT_CHUNK).enumerate() {
            let names: Vec<&str> = chunk.iter().map(|c| c.name.as_str()).collect();
            let secrets: Vec<&str> = chunk.iter().map(|c| c.secret.expose()).collect();
            let extras: Vec<Option<&str>> = chunk.iter().map(|c| c.extra.as_deref()).collect();
            let capacities: Vec<i32> = chunk.iter().map(|c| c.capacity as i32).collect();
            let rows = transaction
                .query(
                    &insert,
                    &[&self.pool, &names, &secrets, &extras, &capacities],
                )
                .await?;
            if rows.len() < chunk.len() && on_duplicate == OnDuplicate::Fail {
                // The first entry that was not added: its name was in the
                // store, or earlier in the input.
                let mut inserted: HashSet<String> = rows
                    .iter()
                    .map(|row| row.column(0, "credentials.name"))
                    .collect::<Result<_>>()?;
                let duplicate = chunk
                    .iter()
                    .position(|c| !inserted.remove(&c.name))
                    .unwrap_or(0);
                return Err(Error::DuplicateName {
                    name: chunk[duplicate].name.clone(),
                    pool: self.pool.clone(),
                    entry: Some(chunk_index * INSERT_CHUNK + duplicate),
                });
            }
            added += rows.len();
        }
        transaction.commit().await?;
        Ok(added)
    }

    fn unknown(&self, name: &str) -> Error {
        Error::UnknownCredential {
            name: name.to_string(),
            pool: self.pool.clone(),
        }
    }

    async fn remove(&self, name: String, force: bool) -> Result<()> {
        let conn = self.connections.get().await?;
        let removed = conn
            .client
            .query_opt(&self.sql.remove(), &[&self.pool, &name, &force])
            .await?;
        if removed.is_some() {
            return Ok(());
        }
        let holders: Option<u32> = conn
            .client
            .query_opt(&self.sql.holders(), &[&self.pool, &name])
            .await?
            .map(|row| row.unsigned32(0, "credentials.holders"))
            .transpose()?;
        match holders {
            Some(holders) => Err(Error::InUse { name, holders }),
            None => Err(self.unknown(&name)),
        }
    }

    async fn update_one(&self, sql: String, name: String, value: Option<String>) -> Result<()> {
        let conn = self.connections.get().await?;
        let changed = conn
            .client
            .query_opt(&sql, &[&self.pool, &name, &value])
            .await?;
        match changed {
            Some(_) => Ok(()),
            None => Err(self.unknown(&name)),
        }
    }

    async fn list(&self) -> Result<Vec<CredentialInfo>> {
        let conn = self.connections.get().await?;
        let rows = conn.client.query(&self.sql.list(), &[&self.pool]).await?;
        rows.iter()
            .map(|row| {
                Ok(CredentialInfo::from_parts(
                    CredentialId::new(row.unsigned(0, "credentials.id")?),
                    row.column(1, "credentials.name")?,
                    row.unsigned32(2, "credentials.capacity")?,
                    row.unsigned32(3, "credentials.holders")?,
                    row.column(4, "credentials.disabled_reason")?,
                    row.column::<Option<i64>>(5, "credentials.cooling_until")?
                        .map(from_ms),
                    from_ms(row.column(10, "now")?),
                    row.column(6, "has extra")?,
                    row.column::<Option<i64>>(7, "credentials.last_used_at")?
                        .map(from_ms),
                    row.unsigned(8, "credentials.use_count")?,
                    from_ms(row.column(9, "credentials.created_at")?),
                ))
            })
            .collect()
    }

    async fn reveal(&self) -> Result<Vec<NewCredential>> {
        let conn = self.connections.get().await?;
        let rows = conn.client.query(&self.sql.reveal(), &[&self.pool]).await?;
        rows.iter()
            .map(|row| {
                Ok(NewCredential::new(
                    row.column::<String>(0, "credentials.name")?,
                    row.column::<String>(1, "credentials.secret")?,
                )
                .maybe_extra(row.column(2, "credentials.extra")?)
                .capacity(row.unsigned32(3, "credentials.capacity")?))
            })
            .collect()
    }

    async fn stats(&self) -> Result<Stats> {
        let conn = self.connections.get().await?;
        let row = conn
            .client
            .query_one(&self.sql.stats(), &[&self.pool])
            .await?;
        let count = |index: usize| row.unsigned(index, "a count");
        let (total, disabled, cooling, leased) = (count(0)?, count(1)?, count(2)?, count(3)?);
        Ok(Stats {
            total,
            available: total.saturating_sub(disabled + cooling + leased),
            leased,
            cooling_down: cooling,
            disabled,
            leases: count(4)?,
            waiters: 0,
        })
    }
}

/// Whether a Postgres failure may go away by itself, so that a release is
/// worth trying again: no connection (no SQLSTATE), a connection exception
/// (08), a serialization failure or deadlock (40), too little room (53), a
/// lock not available (55P03), an operator or crash shutdown (57), a
/// system error (58).
fn transient(error: &Error) -> bool {
    match error {
        Error::Postgres { code: None, .. } | Error::StoreUnavailable { .. } => true,
        Error::Postgres {
            code: Some(code), ..
        } => {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }
        _ => false,
    }
}

/// The same error again, for each caller of a shared statement.
fn share(error: &Error) -> Error {
    match error {
        Error::Postgres { message, code } => Error::Postgres {
            message: message.clone(),
            code: code.clone(),
        },
        other => Error::StoreUnavailable {
            reason: other.to_string(),
        },
    }
}

fn ids(lease: LeaseToken) -> (i64, i64) {
    (
        lease.lease_id().get() as i64,
        lease.credential_id().get() as i64,
    )
}

/// A grant on its way back. If the caller leaves before reading it, a lease
/// already granted is released, and one not yet sent is refused so the
/// task that made it releases it. The grant is counted among the orphans
/// from the moment the caller leaves until its task ends.
struct PendingGrant<'a> {
    answer: oneshot::Receiver<Result<(GrantAttempt, Vec<ExpiredLease>)>>,
    /// Set when the caller leaves; shared with the task, so that the orphan
    /// lasts as long as both.
    left: Arc<OnceLock<Work>>,
    answered: bool,
    store: &'a PostgresStore,
}

impl Drop for PendingGrant<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let _ = self.left.set(self.store.inner.orphans.begin());
        self.answer.close();
        if let Ok(Ok((GrantAttempt::Granted(grant), _))) = self.answer.try_recv() {
            // No pool counted this lease: nothing to tell one.
            let token = grant.token();
            self.store
                .inner
                .release_in_background(token, Receipt::untracked(token));
        }
    }
}

impl Store for PostgresStore {
    fn pool_name(&self) -> &str {
        &self.inner.pool
    }

    fn default_lease_ttl(&self) -> Option<Duration> {
        self.lease_ttl
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(self.poll_interval)
    }

    fn changed(&self) -> impl Future<Output = ()> + Send {
        self.changed.notified()
    }

    fn grant(
        &self,
        ttl: Option<Duration>,
        expired: &mut Vec<ExpiredLease>,
    ) -> impl Future<Output = Result<GrantAttempt>> + Send {
        // Boxed, as on SQLite: every task waiting in `Pool::acquire` carries
        // the future of its first attempt inline.
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let left = Arc::new(OnceLock::new());
            let inner = self.inner.clone();
            let mark = inner.releases.mark();
            self.spawn({
                let left = left.clone();
                async move {
                    let result = inner.grant(mark, ttl).await;
                    if let Err(Ok((GrantAttempt::Granted(grant), _))) = reply.send(result) {
                        // The caller left: the lease goes back at once, and the
                        // release is counted before the orphan ends.
                        inner.release_in_background(
                            grant.token(),
                            Receipt::untracked(grant.token()),
                        );
                    }
                    drop(left);
                    Ok(())
                }
            })?;
            let mut pending = PendingGrant {
                answer,
                left,
                answered: false,
                store: self,
            };
            let answer = (&mut pending.answer).await;
            pending.answered = true;
            let (attempt, reclaimed) = answer.map_err(|_| Error::StoreUnavailable {
                reason: "the runtime stopped during a postgres grant".into(),
            })??;
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
        // Started now, not when first polled: dropping the future cannot undo it.
        let inner = self.inner.clone();
        let (reply, answer) = oneshot::channel();
        self.inner.runtime.spawn(async move {
            inner
                .release_until_done(lease, outcome, receipt, Some(reply), None)
                .await;
        });
        async move {
            answer.await.unwrap_or_else(|_| {
                Err(Error::StoreUnavailable {
                    reason: "the runtime the postgres store was opened on has shut down".into(),
                })
            })
        }
    }

    fn release_detached(&self, lease: LeaseToken, receipt: Receipt) {
        self.inner.release_in_background(lease, receipt);
    }

    async fn renew(&self, lease: LeaseToken, ttl: Option<Duration>) -> Result<Option<SystemTime>> {
        let inner = self.inner.clone();
        self.run(async move { inner.renew(lease, ttl).await }).await
    }

    async fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
    ) -> Result<usize> {
        let inner = self.inner.clone();
        self.run(async move { inner.add_many(credentials, on_duplicate).await })
            .await
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move { inner.remove(name, force).await })
            .await
    }

    async fn set_disabled(&self, name: &str, reason: Option<String>) -> Result<()> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move {
            let sql = inner.sql.set_disabled();
            inner.update_one(sql, name, reason).await
        })
        .await
    }

    async fn update_secret(&self, name: &str, secret: Secret) -> Result<()> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move {
            let sql = inner.sql.update_secret();
            inner
                .update_one(sql, name, Some(secret.expose().to_string()))
                .await
        })
        .await
    }

    async fn list(&self) -> Result<Vec<CredentialInfo>> {
        let inner = self.inner.clone();
        self.run(async move {
            inner.reclaim(&*inner.connections.get().await?).await?;
            inner.list().await
        })
        .await
    }

    async fn reveal(&self) -> Result<Vec<NewCredential>> {
        let inner = self.inner.clone();
        self.run(async move { inner.reveal().await }).await
    }

    async fn stats(&self) -> Result<Stats> {
        let inner = self.inner.clone();
        self.run(async move {
            inner.reclaim(&*inner.connections.get().await?).await?;
            inner.stats().await
        })
        .await
    }
}
