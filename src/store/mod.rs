//! Stores: where the state of a pool lives, behind two small traits.
//!
//! A store does only the atomic state changes: [`Leases`] for the lease path
//! (grant, release, renew) and [`Admin`] for the administration and the
//! reads. Waiting, fairness, timeouts, close, events, and what happens when
//! a caller is cancelled live once, above the stores, in [`Pool`](crate::Pool).
//! Every type that implements both is a [`Store`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::credential::{
    Credential, CredentialChange, CredentialInfo, NewCredential, PoolSummary, ReleaseOutcome, Stats,
};
use crate::error::Result;
use crate::ids::{CredentialId, LeaseId, LeaseToken};

mod line;
pub mod memory;
mod options;
pub(crate) mod order;
#[cfg(feature = "postgres")]
pub mod postgres;
mod receipt;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod want;

pub use self::line::{Leaving, OnBusy, Seat, DEFAULT_TICKET_TTL};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use self::line::{Line, Undelivered};
pub use self::options::{Options, StoreSettings};
pub(crate) use self::receipt::Books;
pub use self::receipt::Receipt;
pub use self::want::{Want, MAX_UNITS};

/// What a store granted: the credential and the lease's identity and times.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The credential leased.
    pub credential: Credential,
    /// The lease's fencing token.
    pub lease_id: LeaseId,
    /// When the store granted it.
    pub acquired_at: SystemTime,
    /// When it expires; `None` without a TTL.
    pub expires_at: Option<SystemTime>,
    /// The units of the credential's capacity the lease holds (1 unless
    /// weighted, [`Want::units`]).
    pub units: u32,
}

impl Grant {
    /// The token that names this lease to its store.
    pub fn token(&self) -> LeaseToken {
        LeaseToken::new(self.credential.id(), self.lease_id)
    }
}

/// One attempt to grant a lease.
#[derive(Debug)]
#[non_exhaustive]
pub enum GrantAttempt {
    /// A credential was free: here is its lease.
    Granted(Grant),
    /// Every enabled credential is leased or cooling down.
    Busy {
        /// The earliest time something changes by itself (a cool-down ends or
        /// a lease expires), when the store knows one.
        retry_at: Option<SystemTime>,
    },
    /// Nothing was free, and the grant took a ticket in the store's waiting
    /// line ([`OnBusy::TakeTicket`] on a store that keeps one): the store
    /// hands a credential to the seat when the ticket's turn comes.
    Queued {
        /// The waiter's place in line.
        seat: Seat,
        /// As for [`Busy`](GrantAttempt::Busy).
        retry_at: Option<SystemTime>,
    },
}

/// What a grant answers: the attempt, and the leases the store found
/// expired and reclaimed on the way.
#[derive(Debug)]
pub struct GrantAnswer {
    /// The attempt.
    pub attempt: GrantAttempt,
    /// The leases reclaimed.
    pub expired: Vec<ExpiredLease>,
}

impl From<GrantAttempt> for GrantAnswer {
    fn from(attempt: GrantAttempt) -> Self {
        Self {
            attempt,
            expired: Vec::new(),
        }
    }
}

/// A grant's answer now, or the future of one.
///
/// A store that decides without waiting (one in memory) answers
/// [`Now`](Granting::Now). One that must wait (for a thread, a server)
/// answers [`Later`](Granting::Later) with a future that owns what it
/// needs. The pool drives that future to its end even when its caller
/// leaves, and releases what it granted then; the store has nothing to do
/// for a cancelled caller. Only when the caller's future is dropped outside
/// a tokio runtime does the pool drop the store's future instead: a store
/// should then give back a lease whose answer nobody reads, as the SQLite
/// and Postgres stores do.
#[non_exhaustive]
pub enum Granting {
    /// The answer, decided.
    Now(Result<GrantAnswer>),
    /// The answer on its way.
    Later(Pin<Box<dyn Future<Output = Result<GrantAnswer>> + Send>>),
}

impl std::fmt::Debug for Granting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Granting::Now(answer) => f.debug_tuple("Now").field(answer).finish(),
            Granting::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// A lease that the store found expired and reclaimed.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    /// The credential's name.
    pub name: Arc<str>,
    /// The lease that expired.
    pub lease_id: LeaseId,
}

/// Told how many entries of a large [`Admin::add_many`] are written so far
/// (not committed yet: the whole batch commits at once, or none of it). A
/// store calls it now and then, from any thread, and once with the total
/// when only the commit is left; a batch tried again reports from the
/// start again. Keep it cheap: it runs on the thread that writes (the
/// SQLite store stages a large add on a thread of its own, holding no
/// lock of the store's).
#[derive(Clone)]
pub struct Progress(Option<Arc<dyn Fn(usize) + Send + Sync>>);

impl Progress {
    /// Nobody listens.
    pub fn none() -> Self {
        Self(None)
    }

    /// Calls `report` with how many entries are written so far.
    pub fn new(report: impl Fn(usize) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(report)))
    }

    /// Reports `written` entries.
    pub fn report(&self, written: usize) {
        if let Some(report) = &self.0 {
            report(written);
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress"
        } else {
            "Progress(none)"
        })
    }
}

/// What [`Admin::add_many`] added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Added {
    /// How many credentials were added.
    pub count: usize,
    /// The positions in the input of the entries that were not added, in
    /// order: their names were in the pool already, or earlier in the
    /// input ([`OnDuplicate::Skip`] only).
    pub skipped: Vec<usize>,
}

/// What to do with a name that exists already when adding many credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Add nothing and fail with [`Error::DuplicateName`](crate::Error::DuplicateName).
    Fail,
    /// Keep the credential that exists and add the others.
    Skip,
}

/// The lease path of a store: grant, release, renew, each atomic.
///
/// A store is bound to one pool name. The futures it returns must be
/// `Send`. Implementations must keep these promises, which the conformance
/// suite in `tests/conformance` checks against every store:
///
/// 1. A credential is never held by more leases than its capacity, by any
///    number of callers in any number of processes.
/// 2. Lease ids are unique and increasing within the store.
/// 3. Release and renew are fenced: they change nothing unless the token
///    names a lease the store still holds, and then fail with
///    [`Error::LeaseLost`](crate::Error::LeaseLost).
/// 4. A grant reclaims expired leases before it looks for a free credential
///    and reports them; one that finds no enabled credential fails with
///    [`Error::NoCredentials`](crate::Error::NoCredentials); one that finds
///    every credential leased or cooling says when something changes by
///    itself, if it knows.
/// 5. Credentials are handed out least recently used first.
/// 6. [`release`](Leases::release) takes effect even if its future is
///    dropped after the call returned it: send the request before
///    returning the future.
/// 7. A release handed to the store is never lost: one that cannot commit
///    yet (a write lock held elsewhere, a full disk, a lost connection) is
///    kept and tried again until it commits or is refused. Its future may
///    resolve with [`Error::ReleasePending`](crate::Error::ReleasePending)
///    meanwhile.
/// 8. Every release's [`Receipt`] is completed once the release is decided,
///    in the order the store's changes commit, and before the credential it
///    freed can be granted again.
/// 9. A zero cool-down is a plain release; the longest durations saturate
///    rather than overflow.
///
/// What the pool does once for every store, and a store need not: a grant
/// whose caller left is driven to its end and its lease released (see
/// [`Granting`]); calls made after a cancelled grant, or after a lease was
/// dropped, see it released (the pool makes them wait for that work when
/// [`runs_calls_in_order`](Leases::runs_calls_in_order) is false); waiters,
/// timeouts, close and events.
pub trait Leases: Send + Sync + 'static {
    /// What the store was opened with: the pool's name, the default lease
    /// TTL, and how often waiters poll.
    fn settings(&self) -> &StoreSettings;

    /// Whether the store runs calls one after another in the order they are
    /// made (one thread, one lock), so that a call sees every change handed
    /// to the store before it, releases from `Drop` included. A store that
    /// runs calls side by side answers false (the default), and the pool
    /// orders them.
    fn runs_calls_in_order(&self) -> bool {
        false
    }

    /// Resolves when the store hears that another process freed something
    /// (Postgres: a `NOTIFY`), so the first waiter asks again before its
    /// next poll. A store that hears nothing never resolves (the default).
    ///
    /// # Cancel safety
    ///
    /// The pool drops this future whenever another wake-up comes first, and
    /// asks for a new one later: dropping it must change nothing.
    fn changed(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Resolves once the work the store runs by itself on the pool's
    /// behalf has finished: handing credentials to the line and giving back
    /// what reached a waiter that had left. [`Pool::wait_for_leases`]
    /// (crate::Pool::wait_for_leases) waits for it, so that a graceful
    /// shutdown leaves nothing held. A store whose calls finish before they
    /// answer has none (the default).
    fn settled(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Grants a lease on a free credential, if there is one. Reclaims expired
    /// leases first and returns them with the answer.
    ///
    /// A store that keeps a waiting line grants nothing to a newcomer while
    /// an older ticket waits; with [`OnBusy::TakeTicket`] a grant that finds
    /// nothing free takes a ticket in the same transaction and answers
    /// [`GrantAttempt::Queued`].
    ///
    /// `want` says which credentials may serve: any (the default scope), one
    /// that its scope's limits allow now, the one named. A credential serves
    /// a scope when it is enabled, has a unit free, does not cool down in
    /// every scope nor in this one, and its quotas of every scope and of
    /// this one allow one more grant; the grant counts against both.
    ///
    /// Fails with [`Error::NoCredentials`](crate::Error::NoCredentials) when
    /// the pool has no enabled credential; for a named credential, with
    /// [`Error::UnknownCredential`](crate::Error::UnknownCredential) or
    /// [`Error::Disabled`](crate::Error::Disabled).
    fn grant(&self, ttl: Option<Duration>, want: &Want, on_busy: OnBusy) -> Granting;

    /// For a store that keeps a waiting line: renews this store's tickets
    /// (the heartbeat that keeps them from expiring), hands the waiters
    /// seated here the credentials other processes handed to their tickets,
    /// and says when something changes by itself, as a busy grant does. The
    /// first waiter in line calls it at every poll.
    ///
    /// Fails with [`Error::NoCredentials`](crate::Error::NoCredentials) when
    /// the pool has no enabled credential.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future must lose nothing: a grant it had to hand to a
    /// seat still reaches the seat, or its lease goes back.
    fn poll_line(&self) -> impl Future<Output = Result<Option<SystemTime>>> + Send {
        std::future::ready(Ok(None))
    }

    /// On a store that keeps no waiting line of its own: a weighted waiter
    /// for `want` joined the pool's line (`waiting` true) or left it. While
    /// it waits, grants for other asks (of other lines) leave alone the
    /// credentials that may serve it, so that lighter asks do not take the
    /// units it waits for. (A store with a line keeps them by its tickets.)
    fn weighted_waiting(&self, want: &Want, waiting: bool) {
        let _ = (want, waiting);
    }

    /// Takes a ticket out of the waiting line, from `Drop`: its waiter gave
    /// up. A credential already handed to the ticket goes back (to the next
    /// ticket, if one waits). No runtime may be there. Drops `leaving` once
    /// the ticket is out (or the store gave up on it, and it expires).
    fn leave_line(&self, ticket: u64, leaving: Leaving) {
        let _ = (ticket, leaving);
    }

    /// Ends a lease with feedback; returns the credential's name. Completes
    /// `receipt` when the release is decided, whether or not the future is
    /// still there to hear it.
    ///
    /// The future may resolve with
    /// [`Error::ReleasePending`](crate::Error::ReleasePending) when the
    /// release could not commit for a while; the store keeps it and the
    /// receipt until it does.
    ///
    /// # Cancel safety
    ///
    /// The release must take effect even if the future is dropped, also
    /// before it is first polled (promise 6): send the request before
    /// returning the future. Dropped or not, the receipt is completed once
    /// the release is decided.
    fn release(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        receipt: Receipt,
    ) -> impl Future<Output = Result<Arc<str>>> + Send;

    /// Ends a lease without waiting, from `Drop`: no runtime may be there.
    /// Completes `receipt` as [`release`](Leases::release) does.
    fn release_detached(&self, lease: LeaseToken, receipt: Receipt);

    /// Extends a lease to now + `ttl` (no expiry with `None`); returns the new expiry.
    ///
    /// # Cancel safety
    ///
    /// A renewal whose future is dropped before it completes may or may not
    /// have renewed the lease; it must change nothing else about it.
    fn renew(
        &self,
        lease: LeaseToken,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Option<SystemTime>>> + Send;
}

/// The administration of a store, and its reads.
///
/// Each change is atomic: it happens whole or not at all. Names were
/// validated by the caller. The conformance suite checks these promises
/// too:
///
/// 1. `add_many` adds all or nothing; a name that exists already (or twice
///    in the input) fails with [`Error::DuplicateName`](crate::Error::DuplicateName)
///    naming its entry, unless [`OnDuplicate::Skip`].
/// 2. A name that is not in the pool fails with
///    [`Error::UnknownCredential`](crate::Error::UnknownCredential).
/// 3. A new secret reaches the next lease; leases out keep the old one.
/// 4. `stats` counts each credential in one state, in the order disabled,
///    cooling down, leased (every unit out), available; `list` reports the
///    same states.
/// 5. No secret appears in a store's `Debug` output or in any error.
/// 6. What a store keeps outlives it: reopened, it holds the same
///    credentials (for stores that keep anything).
pub trait Admin: Send + Sync + 'static {
    /// Adds credentials, all or nothing; returns how many were added and
    /// which entries were skipped. The credentials were validated by the caller.
    ///
    /// # Cancel safety
    ///
    /// All or nothing even when the future is dropped before it completes:
    /// every credential is added or none is. The change may still be made
    /// after the future is dropped.
    fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
        progress: Progress,
    ) -> impl Future<Output = Result<Added>> + Send;

    /// Removes a credential; refused with [`Error::InUse`](crate::Error::InUse)
    /// while leased unless `force`, when its holders' later releases fail
    /// with [`Error::LeaseLost`](crate::Error::LeaseLost).
    ///
    /// # Cancel safety
    ///
    /// Atomic even when the future is dropped before it completes: the
    /// change is made whole or not at all. It may still be made after the
    /// future is dropped.
    fn remove(&self, name: &str, force: bool) -> impl Future<Output = Result<()>> + Send;

    /// Disables a credential (`Some(reason)`) or enables it (`None`). Leases
    /// that hold it stay valid.
    ///
    /// # Cancel safety
    ///
    /// Atomic even when the future is dropped before it completes: the
    /// change is made whole or not at all. It may still be made after the
    /// future is dropped.
    fn set_disabled(
        &self,
        name: &str,
        reason: Option<String>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Ends every lease of a credential now, fenced: its holders' later
    /// releases and renewals fail with
    /// [`Error::LeaseLost`](crate::Error::LeaseLost), and its units go to
    /// the waiting line or back to the free ones. Returns how many leases
    /// it ended (0 when none was out).
    ///
    /// # Cancel safety
    ///
    /// Atomic even when the future is dropped before it completes: the
    /// change is made whole or not at all. It may still be made after the
    /// future is dropped.
    fn revoke(&self, name: &str) -> impl Future<Output = Result<u32>> + Send;

    /// Changes a credential's secret, extra text or capacity, all at once;
    /// leases out keep the old secret and extra. A capacity below the
    /// leases out now is refused (`InvalidInput` on `capacity`); a higher
    /// one hands its new units to the waiting line. The change was
    /// validated by the caller.
    ///
    /// # Cancel safety
    ///
    /// Atomic even when the future is dropped before it completes: the
    /// change is made whole or not at all. It may still be made after the
    /// future is dropped.
    fn update(
        &self,
        name: &str,
        change: CredentialChange,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Ends the cool-downs and forgets the budgets an API reported, of one
    /// credential or all, in one scope or all (`credpool reset-locks`);
    /// quotas keep counting what was granted. Returns how many credentials
    /// it changed.
    ///
    /// # Cancel safety
    ///
    /// Atomic even when the future is dropped before it completes.
    fn reset_limits(
        &self,
        name: Option<&str>,
        scope: Option<&str>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Sets (`Some`) or removes (`None`) the pool's default quota for
    /// `scope` (`""`: over every grant): every credential without a quota
    /// of its own in that scope has it, those added later too. The grants
    /// each already counted in that scope count against it.
    ///
    /// # Cancel safety
    ///
    /// Atomic even when the future is dropped before it completes.
    fn set_default_rate(
        &self,
        scope: &str,
        rate: Option<crate::Rate>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The pool's default quotas, by scope (`""`: over every grant).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future changes nothing.
    fn default_rates(&self) -> impl Future<Output = Result<Vec<(String, crate::Rate)>>> + Send;

    /// Every credential, without secrets, in id order.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future must change nothing, except that the store may
    /// have reclaimed expired leases, as a grant does.
    fn list(&self) -> impl Future<Output = Result<Vec<CredentialInfo>>> + Send;

    /// At most `limit` credentials, without secrets, in id order, after
    /// the credential `after` (from the first with `None`): a page of
    /// [`list`](Admin::list), to read a large pool a piece at a time. The
    /// default reads the whole list and keeps the page; a store of many
    /// credentials reads only the page.
    ///
    /// # Cancel safety
    ///
    /// As for [`list`](Admin::list).
    fn list_page(
        &self,
        after: Option<CredentialId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<CredentialInfo>>> + Send {
        async move {
            Ok(self
                .list()
                .await?
                .into_iter()
                .filter(|credential| after.is_none_or(|after| credential.id > after))
                .take(limit)
                .collect())
        }
    }

    /// The credential named `name`, as [`list`](Admin::list) shows it, or
    /// `None`. The default reads the whole list; a store of many
    /// credentials reads the one.
    ///
    /// # Cancel safety
    ///
    /// As for [`list`](Admin::list).
    fn info(&self, name: &str) -> impl Future<Output = Result<Option<CredentialInfo>>> + Send {
        let name = name.to_string();
        async move {
            Ok(self
                .list()
                .await?
                .into_iter()
                .find(|credential| credential.name == name))
        }
    }

    /// Every credential with its secret and extra text, in id order.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future must change nothing, except that the store may
    /// have reclaimed expired leases, as a grant does.
    fn reveal(&self) -> impl Future<Output = Result<Vec<Credential>>> + Send;

    /// Every pool in the store that holds a credential, by name, with how
    /// many it holds (a store that holds one pool answers with it).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future changes nothing.
    fn pools(&self) -> impl Future<Output = Result<Vec<PoolSummary>>> + Send;

    /// Counts by state (`waiters` is left at 0: the pool fills it in).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future must change nothing, except that the store may
    /// have reclaimed expired leases, as a grant does.
    fn stats(&self) -> impl Future<Output = Result<Stats>> + Send;
}

/// A whole store: the lease path and the administration. Implemented for
/// every type that implements [`Leases`] and [`Admin`].
pub trait Store: Leases + Admin + Sized {}

impl<T: Leases + Admin> Store for T {}
