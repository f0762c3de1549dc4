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
//! - The waiting line is kept in the database: a waiter that finds nothing
//!   free takes a numbered ticket, and a credential that comes free (a
//!   release, an `add`, an `enable`, a cool-down's end or an expiry found by
//!   a poll) goes to the lowest live ticket as a lease held until a short
//!   claim deadline (the ticket TTL). A release while tickets wait hands its
//!   unit on in its own statement, and claims it there when the ticket's
//!   waiter is seated in this store. The ticket's store claims the others
//!   at once when it handed them out itself, or when a `NOTIFY` addressed to
//!   it arrives (one listening connection per store); its first waiter also
//!   polls every [`DEFAULT_POLL_INTERVAL`], renewing the store's tickets. The
//!   statements that hand out, renew and end tickets take the schema's line
//!   lock first; a release takes rows in the same order (credential, then
//!   ticket) and waits for none while it holds a ticket, so none deadlock
//!   and the line keeps its order.
//! - Each call runs in a task of its own, so cancelling a caller never
//!   leaves a half-known state; the pool finishes a grant whose caller left
//!   and gives its lease back. A [`Lease`](crate::Lease) dropped without release is
//!   released by a task on the runtime the store was opened on, even when it
//!   is dropped on a thread outside any runtime. That task ends with the
//!   runtime: a program that ends calls [`Pool::close`](crate::Pool::close)
//!   and [`Pool::wait_for_leases`](crate::Pool::wait_for_leases) first, or a
//!   lease whose release had not committed expires after its TTL
//!   ([`DEFAULT_LEASE_TTL`] unless the pool sets another).
//! - A release is never lost: while the server cannot be reached it is tried
//!   again, with a pause growing to a second, until it commits (or the store
//!   is dropped). The caller waits up to five seconds, then hears
//!   [`Error::ReleasePending`]; the lease counts as out until it commits.
//! - Expired leases are reclaimed when nothing is free, and at most every
//!   [`RECLAIM_INTERVAL`] otherwise.

mod admin;
mod batch;
mod connections;
mod leases;
mod limits;
mod limits_schema;
mod line;
#[cfg(test)]
mod plans;
mod rows;
mod schema;
mod sql;
mod tls;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::Config;

use crate::credential::{
    Credential, CredentialChange, CredentialInfo, NewCredential, PoolSummary, ReleaseOutcome, Stats,
};
use crate::error::{Error, InvalidInput, Result};
use crate::ids::{CredentialId, LeaseToken};
use crate::store::{
    Added, Admin, GrantAnswer, GrantAttempt, Granting, Leases, Leaving, Line, OnBusy, OnDuplicate,
    Options, Progress, Receipt, StoreSettings, Want, DEFAULT_TICKET_TTL,
};

use self::batch::GrantQueue;
use self::connections::Connections;
use self::leases::{ms, Inner};
use self::sql::Sql;
use self::tls::Tls;

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
pub type PostgresOptions = Options<Postgres>;

/// What only the Postgres store is opened with: the server, the schema, how
/// many connections. Set through [`PostgresOptions`]. `Debug` never shows
/// the password.
#[derive(Clone)]
pub struct Postgres {
    config: Config,
    schema: String,
    connections: usize,
    root_certificates: Option<PathBuf>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("location", &location(&self.config, &self.schema))
            .field("connections", &self.connections)
            .finish()
    }
}

impl Options<Postgres> {
    /// The schema that holds credpool's tables (default `credpool`): lower
    /// case ASCII letters, digits and `_`, at most 48 bytes, not starting
    /// with a digit. Created if missing.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.own.schema = schema.into();
        self
    }

    /// How many connections to keep (default 8), besides the listening one.
    pub fn connections(mut self, count: usize) -> Self {
        self.own.connections = count.max(1);
        self
    }

    /// With `sslmode=require`, trust the server's certificate when one of
    /// the CA certificates in this PEM file signed it, instead of the
    /// Mozilla roots (libpq's `sslrootcert`, which the URL may also carry:
    /// `postgres://…/app?sslmode=require&sslrootcert=/etc/ssl/db-ca.pem`).
    pub fn root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.own.root_certificates = Some(path.into());
        self
    }

    /// Where the store is: server, database and schema (never the password).
    pub fn location(&self) -> String {
        location(&self.own.config, &self.own.schema)
    }

    /// A connection of the caller's own to the server, made as the
    /// store's are (over TLS when `sslmode` asks, trusting the same
    /// certificates), for SQL the store does not run: `credpool torture
    /// --faults` ends the workers' connections on one.
    ///
    /// # Errors
    ///
    /// [`Error::Postgres`] when the server cannot be reached, with the
    /// fix when it is TLS's.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let tls = Tls::new(&self.own.config, self.own.root_certificates.as_deref())?;
        let location = location(&self.own.config, &self.own.schema);
        connections::connect(&self.own.config, &tls)
            .await
            .map_err(|error| at(&location, error))
    }

    /// Connects, creates or migrates the schema, and starts listening.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad schema or pool name,
    /// [`Error::Postgres`] when the server cannot be reached,
    /// [`Error::StoreTooNew`] for a schema from a newer credpool, and
    /// [`Error::NotAStore`] for a schema that holds other tables.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the schema created or migrated (each in
    /// one transaction, never half done); the store itself is closed.
    pub async fn open(self) -> Result<PostgresStore> {
        let Options { settings, own } = self;
        validate_schema(&own.schema)?;
        settings.validate()?;
        let location = location(&own.config, &own.schema);
        let tls = Tls::new(&own.config, own.root_certificates.as_deref())?;
        let mut client = connections::connect(&own.config, &tls)
            .await
            .map_err(|error| at(&location, error))?;
        schema::migrate(&mut client, &own.schema, &location)
            .await
            .map_err(|error| at(&location, error))?;
        drop(client);

        let sql = Arc::new(Sql::new(&own.schema));
        let connections = Connections::new(
            own.config.clone(),
            tls.clone(),
            sql.clone(),
            own.connections,
        );
        // Fail now, not on the first acquire, if the statements do not prepare.
        connections
            .get()
            .await
            .map_err(|error| at(&location, error))?;
        let channel = format!("credpool.{}", own.schema);
        let line = Line::new();
        let changed = Arc::new(Notify::new());
        let pool = settings.pool().to_string();
        let listener = tokio::spawn(connections::listen(
            own.config.clone(),
            tls,
            channel.clone(),
            pool.clone(),
            line.owner().to_string(),
            changed.clone(),
        ));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                connections,
                sql,
                channel,
                pool,
                location,
                last_reclaim: AtomicI64::new(0),
                grants: GrantQueue::new(own.connections),
                shared_statements: AtomicU64::new(0),
                runtime: tokio::runtime::Handle::current(),
                closed: AtomicBool::new(false),
                line,
                ticket_ttl: ms(settings.ticket_ttl().unwrap_or(DEFAULT_TICKET_TTL)),
                last_heartbeat: AtomicI64::new(0),
                last_poll: AtomicI64::new(0),
                missing_tickets: Default::default(),
                background: Default::default(),
                tickets_seen: AtomicBool::new(false),
                schema: own.schema.clone(),
                wanted: AtomicBool::new(false),
            }),
            changed,
            listener,
            settings,
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
    settings: StoreSettings,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.inner.location)
            .field("pool", &self.inner.pool)
            .field("lease_ttl", &self.settings.lease_ttl())
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
        Options::new(
            StoreSettings::shared(DEFAULT_LEASE_TTL, DEFAULT_POLL_INTERVAL)
                .with_ticket_ttl(Some(DEFAULT_TICKET_TTL)),
            Postgres {
                config,
                schema: "credpool".into(),
                connections: DEFAULT_CONNECTIONS,
                root_certificates: None,
            },
        )
    }

    /// Options for a store at a `postgres://` URL (or a `key=value` string).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the URL does not parse; the message does
    /// not repeat the URL, which may hold a password.
    pub fn options_url(url: &str) -> Result<PostgresOptions> {
        let (url, root_certificates) = tls::take_root_certificates(url);
        let config = url.parse::<Config>().map_err(|error| {
            Error::from(InvalidInput::new(
                "postgres URL",
                format!("{error}; write postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
            ))
        })?;
        let options = Self::options(config);
        Ok(match root_certificates {
            Some(path) => options.root_certificates(path),
            None => options,
        })
    }

    /// Opens the pool `default` in the schema `credpool` at a `postgres://` URL.
    ///
    /// # Cancel safety
    ///
    /// As for [`PostgresOptions::open`].
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::options_url(url)?.open().await
    }

    /// Where the store is: server, database and schema (never the password).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// How many acquire statements so far were shared by several grants
    /// asked for at the same time. For tests.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn shared_grant_statements(&self) -> u64 {
        self.inner.shared_statements.load(Ordering::Relaxed)
    }

    /// Runs `work` on its own task, on the runtime the store was opened on,
    /// so that it finishes even if the caller leaves.
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.inner
            .runtime
            .spawn(work)
            .await
            .unwrap_or_else(|error| {
                Err(Error::StoreUnavailable {
                    reason: format!("a postgres store task failed: {error}"),
                })
            })
    }
}

impl Leases for PostgresStore {
    fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    fn changed(&self) -> impl Future<Output = ()> + Send {
        self.changed.notified()
    }

    fn grant(&self, ttl: Option<Duration>, want: &Want, on_busy: OnBusy) -> Granting {
        // The grant runs on a task of the store's: it may serve other
        // grants' statement too, which must not stop when this caller leaves.
        let (reply, answer) = oneshot::channel();
        let inner = self.inner.clone();
        let want = want.clone();
        self.inner.runtime.spawn(async move {
            let result = inner.grant(ttl, &want, on_busy).await;
            match reply.send(result) {
                // Nobody reads the answer (not even the pool): the lease goes
                // back at once, or the ticket leaves the line. No pool counted it.
                Err(Ok(GrantAnswer {
                    attempt: GrantAttempt::Granted(grant),
                    ..
                })) => {
                    let token = grant.token();
                    inner.release_in_background(token, Receipt::untracked(token));
                }
                Err(Ok(GrantAnswer {
                    attempt: GrantAttempt::Queued { seat, .. },
                    ..
                })) => {
                    let (ticket, handed) = seat.close();
                    if let Some(grant) = handed {
                        let token = grant.token();
                        inner.release_in_background(token, Receipt::untracked(token));
                    }
                    inner.line.leaving(ticket);
                    let _ = inner.leave_line(ticket).await;
                }
                _ => {}
            }
        });
        Granting::Later(Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(Error::StoreUnavailable {
                    reason: "the runtime stopped during a postgres grant".into(),
                })
            })
        }))
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
                .release_until_done(lease, outcome, receipt, Some(reply))
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

    async fn poll_line(&self) -> Result<Option<SystemTime>> {
        // On a task of the store's: a claim it makes reaches its seat even
        // when the caller leaves.
        let inner = self.inner.clone();
        self.run(async move { inner.poll_line().await }).await
    }

    fn settled(&self) -> impl Future<Output = ()> + Send {
        let inner = self.inner.clone();
        async move { inner.background.settled().await }
    }

    fn leave_line(&self, ticket: u64, leaving: Leaving) {
        // Passed over by hand-offs from now until its removal commits.
        self.inner.line.leaving(ticket);
        let inner = self.inner.clone();
        self.inner.spawn_background(async move {
            if let Err(error) = inner.leave_line(ticket).await {
                tracing::debug!(%error, ticket, "removing a ticket failed; the store's heartbeat removes it within the ticket TTL");
            }
            drop(leaving);
        });
    }
}

impl Admin for PostgresStore {
    async fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
        progress: Progress,
    ) -> Result<Added> {
        let inner = self.inner.clone();
        self.run(async move {
            let added = inner.add_many(credentials, on_duplicate, progress).await?;
            inner.serve_line_now().await;
            Ok(added)
        })
        .await
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move { inner.remove(name, force).await })
            .await
    }

    async fn pools(&self) -> Result<Vec<PoolSummary>> {
        let inner = self.inner.clone();
        self.run(async move { inner.pools().await }).await
    }

    async fn revoke(&self, name: &str) -> Result<u32> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move {
            let ended = inner.revoke(name).await?;
            // The freed units go to the first tickets waiting.
            inner.serve_line_now().await;
            Ok(ended)
        })
        .await
    }

    async fn set_disabled(&self, name: &str, reason: Option<String>) -> Result<()> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move {
            let sql = inner.sql.set_disabled();
            let enable = reason.is_none();
            inner.update_one(sql, name, reason).await?;
            if enable {
                // An enabled credential goes to the first ticket waiting.
                inner.serve_line_now().await;
            }
            Ok(())
        })
        .await
    }

    async fn update(&self, name: &str, change: CredentialChange) -> Result<()> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move {
            let widened = change.capacity.is_some() || !change.rates.is_empty();
            inner.update(name, change).await?;
            if widened {
                // New units go to the first tickets waiting.
                inner.serve_line_now().await;
            }
            Ok(())
        })
        .await
    }

    async fn set_default_rate(&self, scope: &str, rate: Option<crate::Rate>) -> Result<()> {
        let (inner, scope) = (self.inner.clone(), scope.to_string());
        self.run(async move {
            inner.set_pool_default(scope, rate).await?;
            inner.serve_line_now().await;
            Ok(())
        })
        .await
    }

    async fn default_rates(&self) -> Result<Vec<(String, crate::Rate)>> {
        let inner = self.inner.clone();
        self.run(async move {
            let conn = inner.connections.get().await?;
            inner.default_rates(&conn.client).await
        })
        .await
    }

    async fn reset_limits(&self, name: Option<&str>, scope: Option<&str>) -> Result<u64> {
        let (inner, name, scope) = (
            self.inner.clone(),
            name.map(str::to_string),
            scope.map(str::to_string),
        );
        self.run(async move {
            let reset = inner.reset_limits(name, scope).await?;
            if reset > 0 {
                inner.serve_line_now().await;
            }
            Ok(reset)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<CredentialInfo>> {
        self.list_page(None, usize::MAX).await
    }

    async fn list_page(
        &self,
        after: Option<CredentialId>,
        limit: usize,
    ) -> Result<Vec<CredentialInfo>> {
        let inner = self.inner.clone();
        self.run(async move {
            inner.reclaim(&*inner.connections.get().await?).await?;
            inner.list(after, limit).await
        })
        .await
    }

    async fn info(&self, name: &str) -> Result<Option<CredentialInfo>> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        self.run(async move {
            inner.reclaim(&*inner.connections.get().await?).await?;
            inner.info(&name).await
        })
        .await
    }

    async fn reveal(&self) -> Result<Vec<Credential>> {
        let inner = self.inner.clone();
        self.run(async move { inner.reveal().await }).await
    }

    async fn stats(&self) -> Result<Stats> {
        let inner = self.inner.clone();
        self.run(async move {
            inner.reclaim(&*inner.connections.get().await?).await?;
            let mut stats = inner.stats().await?;
            stats.waiters = inner.waiting_tickets().await?;
            Ok(stats)
        })
        .await
    }
}
