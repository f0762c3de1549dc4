//! What every store is opened with, written once: the pool's name, the
//! default lease TTL, how often waiters poll.

use std::time::Duration;

use crate::error::Result;

/// The shortest ticket TTL a store accepts.
const MIN_TICKET_TTL: Duration = Duration::from_millis(100);

/// The settings every store shares, as it was opened with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pool: String,
    lease_ttl: Option<Duration>,
    poll_interval: Option<Duration>,
    ticket_ttl: Option<Duration>,
}

impl StoreSettings {
    /// Settings for the pool `pool`: leases never expire and nobody polls,
    /// until set otherwise (what a store in one process's memory wants).
    pub fn new(pool: impl Into<String>) -> Self {
        Self {
            pool: pool.into(),
            lease_ttl: None,
            poll_interval: None,
            ticket_ttl: None,
        }
    }

    /// The settings of a store shared by processes: the pool `default`,
    /// leases that expire after `lease_ttl`, waiters that poll every
    /// `poll_interval`.
    pub fn shared(lease_ttl: Duration, poll_interval: Duration) -> Self {
        Self::new("default")
            .with_lease_ttl(Some(lease_ttl))
            .with_poll_interval(Some(poll_interval))
    }

    /// The same with a default lease TTL.
    pub fn with_lease_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The same with waiters that poll every `interval`, for a store shared
    /// by several processes.
    pub fn with_poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The same with a waiting line kept in the store, whose tickets expire
    /// `ttl` after their last heartbeat; `None` for a store without one.
    pub fn with_ticket_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ticket_ttl = ttl;
        self
    }

    /// The pool's name within the store.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The lease TTL a pool uses when none is configured.
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.lease_ttl
    }

    /// How often the first waiter asks the store again, to learn of changes
    /// made by other processes; `None` for a store that lives in one process.
    pub fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }

    /// For a store that keeps its waiting line in the store: how long a
    /// ticket lives after its last heartbeat, and how long a credential
    /// handed to a waiter in another process waits to be claimed. `None`
    /// for a store whose waiters all live in one process.
    pub fn ticket_ttl(&self) -> Option<Duration> {
        self.ticket_ttl
    }

    /// Refuses a bad pool name or a lease TTL too short to protect anything.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn validate(&self) -> Result<()> {
        crate::credential::validate_pool_name(&self.pool)?;
        if let Some(ttl) = self.lease_ttl {
            crate::credential::validate_lease_ttl(ttl)?;
        }
        if let Some(ttl) = self.ticket_ttl {
            if ttl < MIN_TICKET_TTL {
                return Err(crate::error::InvalidInput::new(
                    "ticket TTL",
                    format!(
                        "{ttl:?} is too short for a heartbeat to keep a ticket alive; \
                         use at least {MIN_TICKET_TTL:?}"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}

/// Options for opening a store: the settings every store shares, with
/// their setters written once, and the store's own (`K`), whose setters and
/// `open` each store adds.
///
/// [`SqliteOptions`](crate::store::sqlite::SqliteOptions) and
/// `PostgresOptions` are this type.
#[derive(Debug, Clone)]
pub struct Options<K> {
    pub(crate) settings: StoreSettings,
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) own: K,
}

impl<K> Options<K> {
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn new(settings: StoreSettings, own: K) -> Self {
        Self { settings, own }
    }

    /// The pool within the store (default `default`).
    pub fn pool(mut self, name: impl Into<String>) -> Self {
        self.settings.pool = name.into();
        self
    }

    /// The lease TTL pools over this store use by default (default 5
    /// minutes on the shared stores). The shortest is
    /// [`MIN_LEASE_TTL`](crate::MIN_LEASE_TTL); `open` refuses a shorter one.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.settings.lease_ttl = Some(ttl);
        self
    }

    /// How often the first waiter polls for other processes' changes
    /// (SQLite: 25 ms by default; Postgres, which also hears `NOTIFY`: 250 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = Some(interval);
        self
    }

    /// How long a waiter's ticket lives after its last heartbeat on a store
    /// that keeps its waiting line (default
    /// [`DEFAULT_TICKET_TTL`](crate::store::DEFAULT_TICKET_TTL), 3 s), and
    /// how long a credential handed to a ticket waits to be claimed. A
    /// killed process's waiters hold up the others for at most this long;
    /// a live process renews its tickets at every poll and at least four
    /// times per TTL. The shortest is 100 ms.
    pub fn ticket_ttl(mut self, ttl: Duration) -> Self {
        if self.settings.ticket_ttl.is_some() {
            self.settings.ticket_ttl = Some(ttl);
        }
        self
    }

    /// The settings so far.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }
}
