//! The pool: waiting, fairness, timeouts, close, events, and what happens
//! to a cancelled caller's work, once for every store.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::credential::{
    validate_name, Credential, CredentialInfo, NewCredential, ReleaseOutcome, Secret, Stats,
};
use crate::error::{Error, Result};
use crate::ids::{CredentialId, LeaseToken};
use crate::store::memory::MemoryStore;
use crate::store::{
    ExpiredLease, Grant, GrantAnswer, GrantAttempt, Granting, Leaving, OnBusy, OnDuplicate, Seat,
    Store, Want,
};

use self::books::Books;
use self::events::{Event, Events};
use self::lease::Lease;
use self::ticket::GrantTicket;
use self::wait::WaitQueue;

mod books;
pub(crate) mod events;
pub(crate) mod lease;
mod lines;
mod ticket;
mod wait;

/// How many events a slow subscriber may fall behind before it lags.
const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// A pool of credentials handed to concurrent workers, each credential to at
/// most `capacity` leases at once.
///
/// Cheap to clone: clones share the pool. Waiters are served first come,
/// first served, and a new caller never overtakes a queued waiter: within
/// this process, and on a store that keeps its waiting line (SQLite,
/// Postgres) across every process and machine that shares it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), credpool::Error> {
/// use credpool::{NewCredential, Pool};
/// let pool = Pool::in_memory();
/// pool.add_many([
///     NewCredential::new("alice", "hunter2"),
///     NewCredential::new("bob", "correct horse").extra("session=abc"),
/// ]).await?;
/// let lease = pool.acquire().await?;
/// println!("working as {}", lease.credential().name());
/// lease.release().await?;
/// # Ok(()) }
/// ```
pub struct Pool<S: Store = MemoryStore> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    store: S,
    lease_ttl: Option<Duration>,
    poll_interval: Option<Duration>,
    /// The store's ticket TTL, when it keeps a waiting line of its own.
    ticket_ttl: Option<Duration>,
    /// Whether the store keeps a waiting line (tickets) of its own.
    lined: bool,
    /// Whether the store runs calls in order by itself (see
    /// [`Leases::runs_calls_in_order`](crate::store::Leases::runs_calls_in_order)).
    in_order: bool,
    closed: AtomicBool,
    /// Leases out, the waiting line and events, shared with the receipts of
    /// releases the store has not decided yet.
    books: Arc<Books>,
}

impl<S: Store> Clone for Pool<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Store + fmt::Debug> fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("store", &self.shared.store)
            .field("lease_ttl", &self.shared.lease_ttl)
            .field("closed", &self.is_closed())
            .field("waiters", &self.shared.books.waiters.len())
            .field("leases_out", &self.leases_out())
            .finish()
    }
}

/// Builds a [`Pool`] with options.
///
/// ```
/// use std::time::Duration;
/// use credpool::{MemoryStore, Pool};
/// let pool = Pool::builder(MemoryStore::new())
///     .lease_ttl(Duration::from_secs(300))
///     .build();
/// assert_eq!(pool.lease_ttl(), Some(Duration::from_secs(300)));
/// ```
#[derive(Debug)]
pub struct PoolBuilder<S> {
    store: S,
    lease_ttl: Option<Option<Duration>>,
    poll_interval: Option<Duration>,
    event_capacity: usize,
}

impl<S: Store> PoolBuilder<S> {
    /// Leases expire this long after they are granted or renewed, and may
    /// then be granted to someone else. The default is the store's.
    ///
    /// The shortest TTL is [`MIN_LEASE_TTL`](crate::MIN_LEASE_TTL) (1 ms): with
    /// a shorter one every acquire fails with
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the TTL.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(Some(ttl));
        self
    }

    /// Leases never expire: a holder that hangs keeps its credential.
    pub fn no_lease_ttl(mut self) -> Self {
        self.lease_ttl = Some(None);
        self
    }

    /// How often the first waiter asks a shared store for changes made by
    /// other processes. The default is the store's; in-process stores ignore it.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// How many events a subscriber may fall behind (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Builds the pool.
    pub fn build(self) -> Pool<S> {
        let settings = self.store.settings();
        let lease_ttl = self.lease_ttl.unwrap_or(settings.lease_ttl());
        let poll_interval = settings
            .poll_interval()
            .map(|default| self.poll_interval.unwrap_or(default));
        let ticket_ttl = settings.ticket_ttl();
        let books = Arc::new(Books::new(
            settings.pool(),
            poll_interval.is_some(),
            ticket_ttl.is_some(),
            self.event_capacity,
        ));
        Pool {
            shared: Arc::new(Shared {
                in_order: self.store.runs_calls_in_order(),
                store: self.store,
                lease_ttl,
                poll_interval,
                ticket_ttl,
                lined: ticket_ttl.is_some(),
                closed: AtomicBool::new(false),
                books,
            }),
        }
    }
}

impl Pool<MemoryStore> {
    /// An empty pool in this process's memory, with no lease TTL.
    pub fn in_memory() -> Self {
        Self::new(MemoryStore::new())
    }
}

/// Why a waiter woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Signal,
    Timer,
    /// The store took this waiter's seat away: its ticket expired.
    Lost,
}

impl<S: Store> Pool<S> {
    /// A pool over `store` with the store's defaults.
    pub fn new(store: S) -> Self {
        Self::builder(store).build()
    }

    /// A builder for a pool over `store`.
    pub fn builder(store: S) -> PoolBuilder<S> {
        PoolBuilder {
            store,
            lease_ttl: None,
            poll_interval: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The pool's name within its store.
    pub fn name(&self) -> &str {
        self.shared.store.settings().pool()
    }

    /// The lease TTL, if leases expire.
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.shared.lease_ttl
    }

    /// Waits until a credential is free, then leases it.
    ///
    /// Waits for a release, for the earliest cool-down to end, or (for shared
    /// stores) for a change made by another process.
    ///
    /// # Errors
    ///
    /// [`Error::NoCredentials`] at once when the pool has no enabled
    /// credential; [`Error::Closed`] when the pool is closed, also while waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future never leaks a credential. A lease the
    /// store granted after the caller left is released at once, and a wake-up
    /// the caller received is passed to the next waiter.
    pub async fn acquire(&self) -> Result<Lease<S>> {
        self.acquire_until(&Want::any(), None).await
    }

    /// As [`acquire`](Pool::acquire), but fails with [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Lease<S>> {
        self.acquire_matching_timeout(&Want::any(), timeout).await
    }

    /// Waits until one credential has `units` units of its capacity free
    /// (and its quotas allow `units` more grants), then leases them
    /// together: a heavy job that needs 3 of an account's 5 concurrent
    /// slots asks for 3, and the grant counts 3 against its quotas
    /// (qpool's weighted acquire). The lease gives them all back.
    ///
    /// Waiting stays first come, first served: a weighted waiter at the head
    /// of the line is not overtaken by smaller asks behind it, which wait
    /// with it until it is served.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use credpool::{NewCredential, Pool};
    /// let pool = Pool::in_memory();
    /// pool.add(NewCredential::new("alice", "hunter2").capacity(5)).await?;
    /// let heavy = pool.acquire_units(3).await?;
    /// assert_eq!(heavy.units(), 3);
    /// let light = pool.acquire_units(2).await?;
    /// // All five are taken: a third ask waits.
    /// assert!(pool.try_acquire().await?.is_none());
    /// // More than any capacity can never be served, and says so at once.
    /// assert!(matches!(pool.acquire_units(6).await, Err(credpool::Error::TooManyUnits { .. })));
    /// # drop((heavy, light)); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Pool::acquire); [`Error::TooManyUnits`] at once
    /// when no enabled credential has `units` of capacity (or allows that
    /// many grants in one window); [`Error::InvalidInput`] for 0 units.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_units(&self, units: u32) -> Result<Lease<S>> {
        self.acquire_until(&Want::any().units(units)?, None).await
    }

    /// As [`acquire_units`](Pool::acquire_units), but fails with
    /// [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_units_timeout(&self, units: u32, timeout: Duration) -> Result<Lease<S>> {
        self.acquire_matching_timeout(&Want::any().units(units)?, timeout)
            .await
    }

    /// As [`acquire_units`](Pool::acquire_units) without waiting: `Ok(None)`
    /// when no credential has `units` free now, or when others wait.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn try_acquire_units(&self, units: u32) -> Result<Option<Lease<S>>> {
        self.try_acquire_matching(&Want::any().units(units)?).await
    }

    /// Waits until a credential may serve `scope` (an endpoint, say), then
    /// leases it: one that does not cool down in that scope (nor in every
    /// scope), and whose quotas of that scope and of every scope allow one
    /// more grant. The grant counts against both. Waiters for one scope are
    /// served first come, first served; a blocked scope does not hold up
    /// waiters for another.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use std::time::Duration;
    /// use credpool::{Limited, NewCredential, Pool, Rate, ReleaseOutcome};
    /// let pool = Pool::in_memory();
    /// pool.add(NewCredential::new("alice", "hunter2").rate_for("search", "400/15m".parse()?)).await?;
    /// let lease = pool.acquire_for("search").await?;
    /// // The API said: no more searches for a minute.
    /// lease.release_with(ReleaseOutcome::Limited(
    ///     Limited::after(Duration::from_secs(60)).scope("search")?,
    /// )).await?;
    /// // alice still serves the timeline, but not search.
    /// let lease = pool.acquire_for("timeline").await?;
    /// assert!(pool.try_acquire_for("search").await?.is_none());
    /// # drop(lease); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Pool::acquire); [`Error::InvalidInput`] for an
    /// empty scope or one with control characters.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_for(&self, scope: &str) -> Result<Lease<S>> {
        self.acquire_until(&Want::scope(scope)?, None).await
    }

    /// As [`acquire_for`](Pool::acquire_for), but fails with
    /// [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_for_timeout(&self, scope: &str, timeout: Duration) -> Result<Lease<S>> {
        self.acquire_matching_timeout(&Want::scope(scope)?, timeout)
            .await
    }

    /// As [`acquire_for`](Pool::acquire_for), without waiting.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn try_acquire_for(&self, scope: &str) -> Result<Option<Lease<S>>> {
        self.try_acquire_matching(&Want::scope(scope)?).await
    }

    /// Waits for the credential named `name` (a scraper going on with the
    /// same account), then leases it. Tasks waiting for one name are served
    /// first come, first served.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use credpool::{NewCredential, Pool};
    /// let pool = Pool::in_memory();
    /// pool.add_many([NewCredential::new("alice", "a"), NewCredential::new("bob", "b")]).await?;
    /// let lease = pool.acquire_named("bob").await?;
    /// assert_eq!(lease.credential().name(), "bob");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnknownCredential`] when the pool has no such credential;
    /// [`Error::Disabled`] when it is disabled (also while waiting);
    /// otherwise as for [`acquire`](Pool::acquire).
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_named(&self, name: &str) -> Result<Lease<S>> {
        self.acquire_until(&Want::any().named(name)?, None).await
    }

    /// As [`acquire_named`](Pool::acquire_named), but fails with
    /// [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_named_timeout(&self, name: &str, timeout: Duration) -> Result<Lease<S>> {
        self.acquire_matching_timeout(&Want::any().named(name)?, timeout)
            .await
    }

    /// As [`acquire_named`](Pool::acquire_named), without waiting.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn try_acquire_named(&self, name: &str) -> Result<Option<Lease<S>>> {
        self.try_acquire_matching(&Want::any().named(name)?).await
    }

    /// Waits for a credential that serves `want` (a scope, a name, or both)
    /// up to `timeout`, then leases it.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_matching_timeout(
        &self,
        want: &Want,
        timeout: Duration,
    ) -> Result<Lease<S>> {
        let deadline = Instant::now().checked_add(timeout);
        self.acquire_until(want, deadline.map(|at| (at, timeout)))
            .await
    }

    /// Waits for a credential that serves `want`, then leases it.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn acquire_matching(&self, want: &Want) -> Result<Lease<S>> {
        self.acquire_until(want, None).await
    }

    /// Leases a free credential without waiting; `Ok(None)` when none is free
    /// or when other tasks are already waiting in line (it never jumps the
    /// queue, nor takes a ticket in a shared store's line).
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn try_acquire(&self) -> Result<Option<Lease<S>>> {
        self.try_acquire_matching(&Want::any()).await
    }

    /// As [`try_acquire`](Pool::try_acquire), for a credential that serves
    /// `want`: `Ok(None)` also while others wait for the same.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Pool::acquire).
    pub async fn try_acquire_matching(&self, want: &Want) -> Result<Option<Lease<S>>> {
        self.check_open()?;
        self.check_ttl(self.shared.lease_ttl)?;
        if !self.shared.books.waiters.is_empty_for(want) {
            return Ok(None);
        }
        match self.attempt(want, OnBusy::Answer).await? {
            GrantAttempt::Granted(grant) => Ok(Some(self.lease(grant, Duration::ZERO))),
            GrantAttempt::Queued { seat, .. } => {
                // A store that queued a grant it was told not to: leave.
                self.leave_seat(seat);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn acquire_until(
        &self,
        want: &Want,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<Lease<S>> {
        self.check_open()?;
        self.check_ttl(self.shared.lease_ttl)?;
        let lines = &self.shared.books.waiters;
        // The line's epoch before asking the store, and whether anyone is
        // in it. A line for a scope or a name is made only when a caller
        // must wait in it (`None`: there is none yet).
        let (seen, empty) = lines.look(want);
        let mut retry_at = None;
        let mut seat = SeatGuard::new(self);
        // On a store with a waiting line of its own, a newcomer asks the
        // store even with waiters here: the store serves the tickets in order
        // and gives the newcomer a ticket behind them.
        if self.shared.lined || empty {
            match self.attempt(want, OnBusy::TakeTicket).await? {
                GrantAttempt::Granted(grant) => return Ok(self.lease(grant, Duration::ZERO)),
                GrantAttempt::Busy { retry_at: at } => retry_at = at,
                GrantAttempt::Queued {
                    seat: taken,
                    retry_at: at,
                } => {
                    seat.take(taken);
                    retry_at = at;
                }
            }
        }
        // Left (and forgotten when empty) however the acquire ends. A line
        // made since the look was not there to hear of releases: its waiter
        // asks the store again at once.
        let line = lines.enter(want);
        let seen = line.epoch_seen(seen);
        // Boxed: the waiting state machine is large, and the fast path should
        // not pay for moving it around.
        Box::pin(self.wait_in_line(want, &line, seen, retry_at, seat, deadline)).await
    }

    async fn wait_in_line(
        &self,
        want: &Want,
        line: &WaitQueue,
        seen: u64,
        retry_at: Option<SystemTime>,
        mut seat: SeatGuard<'_, S>,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<Lease<S>> {
        let started = Instant::now();
        // Kept for it from other lines while it waits (dropped last).
        let _kept =
            (want.is_weighted() && !self.shared.lined).then(|| KeptWhileWaiting::new(self, want));
        let (waiter, mut place) = line.join(seen, retry_at, want.is_weighted());
        // When the first in line polls next: kept across wake-ups, so that
        // wake-ups that come more often than the poll interval cannot put
        // the poll off for ever.
        let mut poll_at = None;
        loop {
            let (first, retry_at) = place;
            let timer = if first {
                self.timer(retry_at, seat.is_seated(), &mut poll_at)
            } else {
                poll_at = None;
                None
            };
            // Boxed, and made only for the first in line: the store's future
            // (a Postgres store's `Notified`) would otherwise sit in every
            // waiting task's state.
            let changed = OnlyIf(first.then(|| Box::pin(self.shared.store.changed())));
            let wake = tokio::select! {
                biased;
                handed = seat.handed() => match handed {
                    Some(grant) => {
                        waiter.served(false);
                        return Ok(self.lease(grant, started.elapsed()));
                    }
                    None => Wake::Lost,
                },
                () = waiter.woken() => Wake::Signal,
                () = sleep_until(timer) => Wake::Timer,
                () = changed => Wake::Timer,
                () = sleep_until(deadline.map(|(at, _)| at)) => {
                    let waited = deadline.map_or(Duration::ZERO, |(_, timeout)| timeout);
                    let what = match (want.name(), want.scope_name()) {
                        (None, None) if want.is_weighted() => "a credential with the units asked free",
                        (None, None) => "a free credential",
                        (None, Some(_)) => "a credential free in its scope",
                        (Some(_), _) => "the credential asked for by name",
                    };
                    return Err(Error::Timeout { waited, what });
                }
            };
            self.check_open()?;
            if wake != Wake::Signal {
                // Asking the store now: the next poll is an interval away.
                poll_at = None;
            }
            let woken = waiter.trying();
            if seat.is_seated() {
                // The store hands this waiter its credential when its ticket's
                // turn comes; releases here need not wake it. It asks the store
                // only to poll (first in line) or when everyone or a change of
                // credentials woke it.
                if wake == Wake::Signal && !woken.all && !woken.relay {
                    place = waiter.place();
                    continue;
                }
                match self.poll_line().await {
                    Ok(retry_at) => place = waiter.busy(retry_at),
                    Err(error) => return Err(self.no_one_served(error, waiter, woken)),
                }
                continue;
            }
            if wake == Wake::Signal && !woken.freed {
                // Promoted to first in line: only the timer changes.
                place = waiter.place();
                continue;
            }
            // A relay this waiter carries goes on if it fails or is cancelled
            // while it asks: the units it was woken for may still be free.
            let mut relay = RelayOnDrop::new(line, woken.relay);
            // A waiter whose ticket was lost (its process stalled past the
            // ticket TTL) takes a new one, behind those who kept theirs.
            match self.attempt(want, OnBusy::TakeTicket).await {
                Ok(GrantAttempt::Granted(grant)) => {
                    relay.disarm();
                    waiter.served(wake == Wake::Timer || woken.relay);
                    return Ok(self.lease(grant, started.elapsed()));
                }
                Ok(GrantAttempt::Busy { retry_at }) => {
                    // Nothing free: the relay ends here, as it should.
                    relay.disarm();
                    place = waiter.busy(retry_at);
                }
                Ok(GrantAttempt::Queued {
                    seat: taken,
                    retry_at,
                }) => {
                    relay.disarm();
                    seat.take(taken);
                    place = waiter.busy(retry_at);
                }
                Err(error) => {
                    relay.disarm();
                    return Err(self.no_one_served(error, waiter, woken));
                }
            }
        }
    }

    /// A waiter's attempt failed with `error`. When the pool has no enabled
    /// credential, nobody behind this waiter can be served either: tell them
    /// all now, rather than each at its next wake-up (once: a waiter woken
    /// so does not tell them again).
    fn no_one_served(&self, error: Error, waiter: wait::Waiter<'_>, woken: wait::Woken) -> Error {
        drop(waiter);
        if matches!(error, Error::NoCredentials { .. }) && !woken.all {
            self.shared.books.waiters.wake_all();
        }
        error
    }

    /// Asks a store with a waiting line for the credentials handed to this
    /// store's tickets, and renews them.
    async fn poll_line(&self) -> Result<Option<SystemTime>> {
        self.shared.store.poll_line().await
    }

    /// Takes a seat out of the store's line: the ticket is removed, and a
    /// grant that reached the seat too late goes back.
    pub(crate) fn leave_seat(&self, seat: Seat) {
        let (ticket, late) = seat.close();
        // On a store that runs calls side by side, later calls but grants
        // wait for it (a grant behind a ticket on its way out just queues).
        let work = (!self.shared.in_order).then(|| self.shared.books.orphans.begin());
        self.shared.store.leave_line(ticket, Leaving::new(work));
        if let Some(grant) = late {
            let token = grant.token();
            let books = &self.shared.books;
            // Nobody counted this lease; later calls see it back.
            let receipt = books.quiet_receipt(token, books.orphans.begin());
            self.shared.store.release_detached(token, receipt);
        }
    }

    /// When the first waiter should ask the store again by itself; a seated
    /// one also renews its store's tickets at least four times per TTL.
    /// `poll_at` keeps the next poll's time between calls.
    fn timer(
        &self,
        retry_at: Option<SystemTime>,
        seated: bool,
        poll_at: &mut Option<Instant>,
    ) -> Option<Instant> {
        let heartbeat = self.shared.ticket_ttl.filter(|_| seated).map(|ttl| ttl / 4);
        let every = crate::time::earliest(self.shared.poll_interval, heartbeat);
        if retry_at.is_none() && every.is_none() {
            return None;
        }
        let now = Instant::now();
        let change = retry_at.map(|at| {
            now + at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        let poll = every.map(|every| *poll_at.get_or_insert(now + every));
        crate::time::earliest(change, poll)
    }

    async fn attempt(&self, want: &Want, on_busy: OnBusy) -> Result<GrantAttempt> {
        let shared = &self.shared;
        if !shared.in_order {
            // A grant sees the releases of leases dropped before it.
            shared.books.releases.finished_before_now().await;
        }
        // The answer is not kept across the wait: a waiting task's future
        // holds only the ticket.
        let later = match shared.store.grant(shared.lease_ttl, want, on_busy) {
            Granting::Now(answer) => return self.answered(answer),
            Granting::Later(future) => future,
        };
        let answer = GrantTicket::new(self, later).await;
        self.answered(answer)
    }

    #[inline]
    fn answered(&self, answer: Result<GrantAnswer>) -> Result<GrantAttempt> {
        let GrantAnswer { attempt, expired } = answer?;
        self.report_expired(expired);
        Ok(attempt)
    }

    /// Waits for the work that callers who left handed to the store before
    /// this call (the grants of cancelled acquires, the releases of dropped
    /// leases), so that this call sees its effect.
    async fn after_earlier_work(&self) {
        let books = &self.shared.books;
        books.orphans.finished_before_now().await;
        if !self.shared.in_order {
            // Marked now, to take in the releases of those orphans too.
            books.releases.finished_before_now().await;
        }
    }

    #[inline]
    pub(crate) fn report_expired(&self, expired: Vec<ExpiredLease>) {
        // Nearly always none: no iterator to build and drop.
        if !expired.is_empty() {
            self.report_each_expired(expired);
        }
    }

    fn report_each_expired(&self, expired: Vec<ExpiredLease>) {
        for ExpiredLease { name, lease_id } in expired {
            tracing::info!(pool = self.name(), credential = %name, lease_id = %lease_id, "lease expired and was reclaimed");
            if self.shared.books.events.wanted() {
                self.shared
                    .books
                    .events
                    .send(Event::Expired { name, lease_id });
            }
        }
    }

    fn lease(&self, grant: Grant, waited: Duration) -> Lease<S> {
        self.shared.books.outstanding.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(
            pool = self.name(),
            credential = grant.credential.name(),
            lease_id = %grant.lease_id,
            waited_us = waited.as_micros() as u64,
            "acquired"
        );
        if self.shared.books.events.wanted() {
            self.shared.books.events.send(Event::Acquired {
                name: grant.credential.name_arc().clone(),
                lease_id: grant.lease_id,
                waited,
            });
        }
        Lease::new(self.clone(), grant)
    }

    pub(crate) async fn release_grant(&self, grant: &Grant, outcome: ReleaseOutcome) -> Result<()> {
        self.release_counted(grant.token(), outcome, true).await
    }

    /// Hands a release to the store with its receipt; `counted` says whether
    /// the lease is among [`leases_out`](Pool::leases_out) (a token's is not).
    async fn release_counted(
        &self,
        token: LeaseToken,
        outcome: ReleaseOutcome,
        counted: bool,
    ) -> Result<()> {
        let receipt = self.shared.books.receipt(token, counted, &outcome, None);
        self.shared
            .store
            .release(token, outcome, receipt)
            .await
            .map(|_| ())
    }

    #[inline]
    pub(crate) fn release_dropped(&self, grant: &Grant) {
        let token = grant.token();
        let books = &self.shared.books;
        // On a store that runs calls side by side, later calls wait for
        // this release's first attempt.
        let work = (!self.shared.in_order).then(|| books.releases.begin());
        let receipt = books.receipt(token, true, &ReleaseOutcome::Success, work);
        self.shared.store.release_detached(token, receipt);
    }

    pub(crate) async fn renew_grant(
        &self,
        grant: &Grant,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>> {
        self.check_ttl(ttl)?;
        self.after_earlier_work().await;
        self.shared.store.renew(grant.token(), ttl).await
    }

    /// The pool no longer tracks this lease (it became a token).
    pub(crate) fn forget_grant(&self) {
        self.shared.books.lease_returned();
    }

    /// Releases a lease named by a token (see [`Lease::into_token`]).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the store does not hold that lease: it was
    /// released, taken over after expiry, or never granted. Nothing changes.
    /// [`Error::ReleasePending`] when the store could not commit the release
    /// yet; it keeps it and commits it later.
    ///
    /// # Cancel safety
    ///
    /// The release is handed to the store when the future is first polled;
    /// dropping the future after that does not undo it, and waiters are
    /// told (and its events sent) when it takes effect. Dropping it before
    /// then releases nothing: the lease stays held until it is released or
    /// expires.
    pub async fn release_token(&self, token: LeaseToken, outcome: ReleaseOutcome) -> Result<()> {
        self.release_counted(token, outcome, false).await
    }

    /// Refuses a TTL too short to protect anything.
    fn check_ttl(&self, ttl: Option<Duration>) -> Result<()> {
        match ttl {
            Some(ttl) => crate::credential::validate_lease_ttl(ttl),
            None => Ok(()),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Adds one credential.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field, or [`Error::DuplicateName`].
    ///
    /// # Cancel safety
    ///
    /// As for [`add_many`](Pool::add_many).
    pub async fn add(&self, credential: NewCredential) -> Result<()> {
        // One credential is no list: its errors name no entry.
        self.add_many([credential])
            .await
            .map(|_| ())
            .map_err(|error| error.with_entry(None))
    }

    /// Adds many credentials, all or nothing; returns how many were added.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] or [`Error::DuplicateName`] naming the first bad
    /// entry by position and name; then nothing was added.
    ///
    /// # Cancel safety
    ///
    /// This method first waits for work that cancelled callers left behind,
    /// then asks the store. Dropping the future before the store has the
    /// request adds nothing. Dropping it after that may or may not add
    /// the credentials, but never only some of them: the Postgres store
    /// finishes the change on a task of its own even when the caller
    /// leaves, and the SQLite store runs a request its thread has received.
    /// The [`Event::Added`] events and the wake-ups of waiters are sent only
    /// when the future completes: the credentials may have been added
    /// without their events, and waiters are not woken for them.
    pub async fn add_many(
        &self,
        credentials: impl IntoIterator<Item = NewCredential>,
    ) -> Result<usize> {
        self.add_with(credentials.into_iter().collect(), OnDuplicate::Fail)
            .await
    }

    /// Adds the credentials whose names are new and keeps the ones that exist;
    /// returns how many were added. Still all or nothing on invalid input.
    ///
    /// # Cancel safety
    ///
    /// As for [`add_many`](Pool::add_many).
    pub async fn add_many_skip_existing(
        &self,
        credentials: impl IntoIterator<Item = NewCredential>,
    ) -> Result<usize> {
        self.add_with(credentials.into_iter().collect(), OnDuplicate::Skip)
            .await
    }

    /// As [`add_many`](Pool::add_many) (or
    /// [`add_many_skip_existing`](Pool::add_many_skip_existing) with
    /// `skip_existing`), and tells `progress` now and then how many entries
    /// are written so far, for a progress bar over a large import. Nothing
    /// is committed before the end: all or nothing still.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use credpool::{NewCredential, Pool};
    /// let pool = Pool::in_memory();
    /// let written = Arc::new(AtomicUsize::new(0));
    /// let seen = written.clone();
    /// let accounts = (0..100).map(|i| NewCredential::new(format!("bot-{i}"), "key"));
    /// pool.add_many_with_progress(accounts, false, move |n| seen.store(n, Ordering::Relaxed))
    ///     .await?;
    /// assert_eq!(written.load(Ordering::Relaxed), 100);
    /// # Ok(()) }
    /// ```
    pub async fn add_many_with_progress(
        &self,
        credentials: impl IntoIterator<Item = NewCredential>,
        skip_existing: bool,
        progress: impl Fn(usize) + Send + Sync + 'static,
    ) -> Result<usize> {
        let on_duplicate = if skip_existing {
            OnDuplicate::Skip
        } else {
            OnDuplicate::Fail
        };
        self.add_reporting(
            credentials.into_iter().collect(),
            on_duplicate,
            crate::store::Progress::new(progress),
        )
        .await
    }

    async fn add_with(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
    ) -> Result<usize> {
        self.add_reporting(credentials, on_duplicate, crate::store::Progress::none())
            .await
    }

    async fn add_reporting(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
        progress: crate::store::Progress,
    ) -> Result<usize> {
        for (index, credential) in credentials.iter().enumerate() {
            credential
                .validate()
                .map_err(|error| error.at_entry(index))?;
        }
        let names: Option<Vec<Arc<str>>> = self
            .shared
            .books
            .events
            .wanted()
            .then(|| credentials.iter().map(|c| Arc::from(c.name())).collect());
        self.after_earlier_work().await;
        let added = self
            .shared
            .store
            .add_many(credentials, on_duplicate, progress)
            .await?;
        tracing::info!(pool = self.name(), added = added.count, "credentials added");
        self.shared.books.waiters.wake_in_turn();
        // Only the entries added: a skipped name was added long ago.
        let mut skipped = added.skipped.iter().copied().peekable();
        for (position, name) in names.into_iter().flatten().enumerate() {
            if skipped.next_if_eq(&position).is_none() {
                self.shared.books.events.send(Event::Added { name });
            }
        }
        Ok(added.count)
    }

    /// Removes a credential; refused with [`Error::InUse`] while it is leased.
    ///
    /// # Cancel safety
    ///
    /// This method first waits for work that cancelled callers left behind,
    /// then asks the store. Dropping the future before the store has the
    /// request changes nothing. Dropping it after that may or may not remove
    /// the credential; the change is atomic. The [`Event::Removed`] event and
    /// the wake-up of waiters are sent only when the future completes: the
    /// change may have been made without its event, and waiters are not
    /// woken for it.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.remove_with(name, false).await
    }

    /// Removes a credential even while it is leased; its holders' later
    /// releases fail with [`Error::LeaseLost`].
    ///
    /// # Cancel safety
    ///
    /// As for [`remove`](Pool::remove).
    pub async fn remove_forced(&self, name: &str) -> Result<()> {
        self.remove_with(name, true).await
    }

    async fn remove_with(&self, name: &str, force: bool) -> Result<()> {
        validate_name(name)?;
        self.after_earlier_work().await;
        self.shared.store.remove(name, force).await?;
        tracing::info!(
            pool = self.name(),
            credential = name,
            force,
            "credential removed"
        );
        // Waiters learn at once if that was the last enabled credential.
        self.credential_changed(|| Event::Removed { name: name.into() });
        Ok(())
    }

    /// After an operator's change that may free units or take them away:
    /// the first waiter asks the store (and wakes the next in turn), and
    /// subscribers hear the event.
    fn credential_changed(&self, event: impl FnOnce() -> Event) {
        self.shared.books.waiters.wake_in_turn();
        if self.shared.books.events.wanted() {
            self.shared.books.events.send(event());
        }
    }

    /// Disables a credential: it is not handed out until enabled. Leases that
    /// hold it stay valid.
    ///
    /// # Cancel safety
    ///
    /// This method first waits for work that cancelled callers left behind,
    /// then asks the store. Dropping the future before the store has the
    /// request changes nothing. Dropping it after that may or may not disable
    /// the credential; the change is atomic. The [`Event::Disabled`] event and
    /// the wake-up of waiters are sent only when the future completes: the
    /// change may have been made without its event, and waiters are not
    /// woken for it.
    pub async fn disable(&self, name: &str, reason: impl Into<String>) -> Result<()> {
        validate_name(name)?;
        let reason = reason.into();
        if reason.trim().is_empty() {
            return Err(crate::error::InvalidInput::new(
                "reason",
                "must not be empty: say why the credential is disabled (banned, say)",
            )
            .into());
        }
        self.after_earlier_work().await;
        self.shared
            .store
            .set_disabled(name, Some(reason.clone()))
            .await?;
        tracing::info!(pool = self.name(), credential = name, reason = %reason, "credential disabled");
        self.credential_changed(|| Event::Disabled {
            name: name.into(),
            reason,
        });
        Ok(())
    }

    /// Enables a disabled credential.
    ///
    /// # Cancel safety
    ///
    /// This method first waits for work that cancelled callers left behind,
    /// then asks the store. Dropping the future before the store has the
    /// request changes nothing. Dropping it after that may or may not enable
    /// the credential; the change is atomic. The [`Event::Enabled`] event and
    /// the wake-up of waiters are sent only when the future completes: the
    /// change may have been made without its event, and waiters are not
    /// woken for it.
    pub async fn enable(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        self.after_earlier_work().await;
        self.shared.store.set_disabled(name, None).await?;
        tracing::info!(pool = self.name(), credential = name, "credential enabled");
        self.credential_changed(|| Event::Enabled { name: name.into() });
        Ok(())
    }

    /// Every pool in this pool's store that holds a credential, by name,
    /// with how many it holds: to find the pool one meant when this one is
    /// empty.
    pub async fn pools(&self) -> Result<Vec<crate::PoolSummary>> {
        self.shared.store.pools().await
    }

    /// Ends every lease of a credential now (Vault's word): for a holder
    /// that was killed and will never give it back, when waiting for its
    /// lease TTL is too long. The leases are fenced: a holder that is alive
    /// after all fails to release or renew with
    /// [`Error::LeaseLost`](crate::Error::LeaseLost). The credential goes to
    /// the next waiter, in any process. Returns how many leases were ended.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use credpool::{Error, MemoryStore, NewCredential, Pool};
    /// let pool = Pool::new(MemoryStore::new());
    /// pool.add(NewCredential::new("alice", "hunter2")).await?;
    /// let stuck = pool.acquire().await?;
    /// assert_eq!(pool.revoke("alice").await?, 1);
    /// let again = pool.acquire().await?; // alice is free at once
    /// assert!(matches!(stuck.release().await, Err(Error::LeaseLost { .. })));
    /// # drop(again); Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// This method first waits for work that cancelled callers left behind,
    /// then asks the store. Dropping the future before the store has the
    /// request changes nothing. Dropping it after that may or may not end
    /// the leases; the change is atomic. The [`Event::Revoked`] event and
    /// the wake-up of waiters are sent only when the future completes.
    pub async fn revoke(&self, name: &str) -> Result<u32> {
        validate_name(name)?;
        self.after_earlier_work().await;
        let leases = self.shared.store.revoke(name).await?;
        tracing::info!(
            pool = self.name(),
            credential = name,
            leases,
            "leases revoked"
        );
        self.credential_changed(|| Event::Revoked {
            name: name.into(),
            leases,
        });
        Ok(leases)
    }

    /// Replaces a credential's secret; leases out keep the old one.
    ///
    /// # Cancel safety
    ///
    /// This method first waits for work that cancelled callers left behind,
    /// then asks the store. Dropping the future before the store has the
    /// request changes nothing. Dropping it after that may or may not
    /// replace the secret; the change is atomic. This method sends no event
    /// either way.
    pub async fn update_secret(&self, name: &str, secret: impl Into<Secret>) -> Result<()> {
        validate_name(name)?;
        let secret = secret.into();
        // A lookup's name rules (a name from before the rule against
        // surrounding spaces still takes a new secret), a new secret's rules.
        crate::credential::check_secret(&secret).map_err(|mut invalid| {
            invalid.name = Some(name.to_string());
            Error::from(invalid)
        })?;
        self.after_earlier_work().await;
        self.shared
            .store
            .update(name, crate::CredentialChange::new().secret(secret))
            .await
    }

    /// Changes a credential's secret, extra text or capacity at once (what
    /// `change` does not set stays). Leases out keep the old secret and
    /// extra; a capacity below the leases out now is refused, a higher one
    /// goes to the waiters at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use credpool::{CredentialChange, MemoryStore, NewCredential, Pool};
    /// let pool = Pool::new(MemoryStore::new());
    /// pool.add(NewCredential::new("bot-7", "key")).await?;
    /// pool.update("bot-7", CredentialChange::new().capacity(3).extra("tier=gold")).await?;
    /// assert_eq!(pool.list().await?[0].capacity, 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`update_secret`](Self::update_secret): atomic, and possibly made
    /// after the future is dropped.
    pub async fn update(&self, name: &str, change: crate::CredentialChange) -> Result<()> {
        validate_name(name)?;
        change.validate().map_err(|mut invalid| {
            invalid.name = Some(name.to_string());
            Error::from(invalid)
        })?;
        if change.is_empty() {
            return Ok(());
        }
        self.after_earlier_work().await;
        let widened = change.capacity.is_some() || !change.rates.is_empty();
        self.shared.store.update(name, change).await?;
        if widened {
            // New units may be free: waiters in this process ask again.
            self.shared.books.waiters.wake_in_turn();
        }
        Ok(())
    }

    /// Sets (or with `None` removes) the pool's default quota in `scope`
    /// (`None`: over every grant): every credential without a quota of its
    /// own there has it, and so does every credential added later; a
    /// credential's own quota ([`NewCredential::rate_for`],
    /// [`CredentialChange::rate_for`](crate::CredentialChange::rate_for))
    /// takes precedence. Each credential counts its own grants against it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use credpool::{NewCredential, Pool};
    /// let pool = Pool::in_memory();
    /// pool.add(NewCredential::new("alice", "hunter2")).await?;
    /// pool.set_default_rate(Some("search"), Some("1/1h".parse()?)).await?;
    /// pool.acquire_for("search").await?.release().await?;
    /// assert!(pool.try_acquire_for("search").await?.is_none());
    /// assert_eq!(pool.default_rates().await?.len(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// The change is made whole or not at all, and may be made after the
    /// future is dropped; waiters are woken only when it completes.
    pub async fn set_default_rate(
        &self,
        scope: Option<&str>,
        rate: Option<crate::Rate>,
    ) -> Result<()> {
        if let Some(scope) = scope {
            crate::limits::validate_scope(scope)?;
        }
        self.after_earlier_work().await;
        self.shared
            .store
            .set_default_rate(scope.unwrap_or(""), rate)
            .await?;
        tracing::info!(pool = self.name(), scope = scope.unwrap_or("*"), rate = ?rate.map(|rate| rate.to_string()), "default quota set");
        self.shared.books.waiters.wake_in_turn();
        Ok(())
    }

    /// The pool's default quotas, by scope (`None`: over every grant).
    pub async fn default_rates(&self) -> Result<Vec<(Option<String>, crate::Rate)>> {
        Ok(self
            .shared
            .store
            .default_rates()
            .await?
            .into_iter()
            .map(|(scope, rate)| ((!scope.is_empty()).then_some(scope), rate))
            .collect())
    }

    /// Ends the cool-downs and forgets the budgets an API reported (twscrape's
    /// `reset_locks`): of the credential `name`, or of every one; in
    /// `scope`, or in every scope. Quotas keep counting the grants made.
    /// Returns how many credentials it changed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use std::time::Duration;
    /// use credpool::{NewCredential, Pool, ReleaseOutcome};
    /// let pool = Pool::in_memory();
    /// pool.add(NewCredential::new("alice", "hunter2")).await?;
    /// let lease = pool.acquire().await?;
    /// lease.release_with(ReleaseOutcome::CoolDown(Duration::from_secs(900))).await?;
    /// assert_eq!(pool.reset_limits(Some("alice"), None).await?, 1);
    /// assert!(pool.try_acquire().await?.is_some());
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// The change is made whole or not at all, and may be made after the
    /// future is dropped; waiters are woken only when it completes.
    pub async fn reset_limits(&self, name: Option<&str>, scope: Option<&str>) -> Result<u64> {
        if let Some(name) = name {
            validate_name(name)?;
        }
        if let Some(scope) = scope {
            crate::limits::validate_scope(scope)?;
        }
        self.after_earlier_work().await;
        let reset = self.shared.store.reset_limits(name, scope).await?;
        if reset > 0 {
            tracing::info!(
                pool = self.name(),
                credential = name.unwrap_or("*"),
                scope = scope.unwrap_or("*"),
                reset,
                "cool-downs reset"
            );
            self.shared.books.waiters.wake_in_turn();
        }
        Ok(reset)
    }

    /// Every credential, without secrets.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing (the store may reclaim expired leases
    /// on the way, as a grant would).
    pub async fn list(&self) -> Result<Vec<CredentialInfo>> {
        self.after_earlier_work().await;
        self.shared.store.list().await
    }

    /// The credential named `name`, without its secret, as
    /// [`list`](Pool::list) shows it; `None` when the pool has none of that
    /// name. Reads the one credential, at any size of pool.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use credpool::{NewCredential, Pool};
    /// let pool = Pool::in_memory();
    /// pool.add(NewCredential::new("alice", "hunter2").capacity(2)).await?;
    /// assert_eq!(pool.info("alice").await?.map(|c| c.capacity), Some(2));
    /// assert!(pool.info("bob").await?.is_none());
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`list`](Pool::list).
    pub async fn info(&self, name: &str) -> Result<Option<CredentialInfo>> {
        self.after_earlier_work().await;
        self.shared.store.info(name).await
    }

    /// At most `limit` credentials, without secrets, in the order they were
    /// added (id order), after the credential `after` (`None`: from the
    /// first): a large pool read a page at a time, each page's last id the
    /// next one's `after`, without holding it all in memory. Each page is
    /// read as it is then.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use credpool::{NewCredential, Pool};
    /// let pool = Pool::in_memory();
    /// pool.add_many((0..250).map(|i| NewCredential::new(format!("bot-{i}"), "key")))
    ///     .await?;
    /// let (mut after, mut seen) = (None, 0);
    /// loop {
    ///     let page = pool.list_page(after, 100).await?;
    ///     let Some(last) = page.last() else { break };
    ///     after = Some(last.id);
    ///     seen += page.len();
    /// }
    /// assert_eq!(seen, 250);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`list`](Pool::list).
    pub async fn list_page(
        &self,
        after: Option<CredentialId>,
        limit: usize,
    ) -> Result<Vec<CredentialInfo>> {
        self.after_earlier_work().await;
        self.shared.store.list_page(after, limit).await
    }

    /// Every credential with its secret and extra text, for an operator who
    /// asked for them (`credpool list --show-secrets`) or for an export.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing (the store may reclaim expired leases
    /// on the way, as a grant would).
    pub async fn reveal(&self) -> Result<Vec<Credential>> {
        self.after_earlier_work().await;
        self.shared.store.reveal().await
    }

    /// Counts by state, and the tasks waiting (in every process, on a store
    /// that keeps its waiting line).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing (the store may reclaim expired leases
    /// on the way, as a grant would).
    pub async fn stats(&self) -> Result<Stats> {
        self.after_earlier_work().await;
        let mut stats = self.shared.store.stats().await?;
        // A store with a waiting line counted the tickets of every process;
        // the tasks here that are still on their way to one count too.
        stats.waiters = stats.waiters.max(self.shared.books.waiters.len() as u64);
        Ok(stats)
    }

    /// Subscribes to this pool's events.
    pub fn subscribe(&self) -> Events {
        self.shared.books.events.subscribe()
    }

    /// Closes the pool: new acquires fail with [`Error::Closed`], queued
    /// waiters wake with it, and leases already out may still be released.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.books.waiters.wake_all();
        tracing::info!(pool = self.name(), "pool closed");
    }

    /// Whether [`close`](Pool::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Leases this pool handed out that have not come back yet.
    pub fn leases_out(&self) -> usize {
        self.shared.books.outstanding.load(Ordering::SeqCst)
    }

    /// Waits until every lease this pool handed out has come back, for
    /// graceful shutdown: call [`close`](Pool::close) first, and let the
    /// runtime end only after this returns.
    ///
    /// "Back" takes in what the pool gives back by itself, in work of its
    /// own: the releases of leases dropped without `release`, the leases
    /// granted to acquires that were cancelled or timed out, and the tickets
    /// of waiters that left the store's line. A runtime that ends before
    /// that work is done leaves those leases held in the store until their
    /// TTL ends (and tickets until theirs).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> credpool::Result<()> {
    /// use std::time::Duration;
    /// use credpool::{MemoryStore, NewCredential, Pool};
    ///
    /// let pool = Pool::new(MemoryStore::new());
    /// pool.add(NewCredential::new("account-1", "secret")).await?;
    /// drop(pool.acquire().await?); // given back in the background
    ///
    /// pool.close();
    /// pool.wait_for_leases(Duration::from_secs(10)).await?;
    /// assert_eq!(pool.leases_out(), 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] after `timeout` with leases still out, or with
    /// that work still running.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn wait_for_leases(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let timed_out = || Error::Timeout {
            waited: timeout,
            what: "every lease to come back",
        };
        let _watching = Watching::new(&self.shared.books.shutdown_watchers);
        loop {
            let returned = self.shared.books.all_returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if self.leases_out() == 0 {
                break;
            }
            tokio::select! {
                () = returned => {}
                () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            }
        }
        // The leases nobody counted: those of cancelled grants, of seats
        // that were left, and the releases they started.
        let settled = async {
            self.after_earlier_work().await;
            self.shared.store.settled().await;
        };
        tokio::time::timeout_at(deadline, settled)
            .await
            .map_err(|_| timed_out())
    }
}

/// A waiter's seat in the store's line, if it has one: dropped, it leaves
/// the line (see [`Pool::leave_seat`]).
struct SeatGuard<'a, S: Store> {
    pool: &'a Pool<S>,
    seat: Option<Seat>,
}

impl<'a, S: Store> SeatGuard<'a, S> {
    fn new(pool: &'a Pool<S>) -> Self {
        Self { pool, seat: None }
    }

    fn take(&mut self, seat: Seat) {
        if let Some(old) = self.seat.replace(seat) {
            self.pool.leave_seat(old);
        }
    }

    fn is_seated(&self) -> bool {
        self.seat.is_some()
    }

    /// The grant the store hands to this seat; `None` when the store took
    /// the seat away (its ticket expired), and then the waiter has no seat.
    /// Never resolves without a seat.
    async fn handed(&mut self) -> Option<Grant> {
        let Some(seat) = self.seat.as_mut() else {
            return std::future::pending().await;
        };
        match (&mut seat.grant).await {
            Ok(grant) => {
                // Delivered: the ticket is gone from the store.
                self.seat = None;
                Some(grant)
            }
            Err(_) => {
                if let Some(seat) = self.seat.take() {
                    self.pool.leave_seat(seat);
                }
                None
            }
        }
    }
}

impl<S: Store> Drop for SeatGuard<'_, S> {
    fn drop(&mut self) {
        if let Some(seat) = self.seat.take() {
            self.pool.leave_seat(seat);
        }
    }
}

/// A weighted waiter's credentials, kept from other lines while it waits
/// ([`Leases::weighted_waiting`]); dropped, they are free for all again,
/// and the first waiter of every line asks in turn.
struct KeptWhileWaiting<'a, S: Store> {
    pool: &'a Pool<S>,
    want: &'a Want,
}

impl<'a, S: Store> KeptWhileWaiting<'a, S> {
    fn new(pool: &'a Pool<S>, want: &'a Want) -> Self {
        pool.shared.store.weighted_waiting(want, true);
        Self { pool, want }
    }
}

impl<S: Store> Drop for KeptWhileWaiting<'_, S> {
    fn drop(&mut self) {
        self.pool.shared.store.weighted_waiting(self.want, false);
        self.pool.shared.books.waiters.wake_in_turn();
    }
}

/// Passes a relay on (see [`WaitQueue::wake_in_turn`]) when dropped armed.
struct RelayOnDrop<'a> {
    queue: &'a WaitQueue,
    armed: bool,
}

impl<'a> RelayOnDrop<'a> {
    fn new(queue: &'a WaitQueue, armed: bool) -> Self {
        Self { queue, armed }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for RelayOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.wake_in_turn();
        }
    }
}

/// Counts a task in `wait_for_leases` for as long as it waits.
struct Watching<'a>(&'a AtomicUsize);

impl<'a> Watching<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sleeps until `at`, or forever with `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A future that runs its boxed future if it has one, and else never ends.
struct OnlyIf<F>(Option<Pin<Box<F>>>);

impl<F: Future<Output = ()>> Future for OnlyIf<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(future) => future.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}
