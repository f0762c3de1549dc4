//! Stores: where the state of a pool lives, behind one small trait.
//!
//! A store does only the atomic state changes: grant, release, renew, the
//! administration, and the counts. Waiting, fairness, timeouts, close and
//! events live once, above the stores, in [`Pool`](crate::Pool).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::books::Receipt;
use crate::credential::{CredentialInfo, NewCredential, Secret, Stats};
use crate::error::Result;
use crate::lease::{Grant, LeaseId, LeaseToken, ReleaseOutcome};

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

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
}

/// A lease that the store found expired and reclaimed.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    /// The credential's name.
    pub name: Arc<str>,
    /// The lease that expired.
    pub lease_id: LeaseId,
}

/// What to do with a name that exists already when adding many credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Add nothing and fail with [`Error::DuplicateName`](crate::Error::DuplicateName).
    Fail,
    /// Keep the credential that exists and add the others.
    Skip,
}

/// The state changes of a pool, each atomic.
///
/// A store is bound to one pool name. The futures it returns must be
/// `Send`. Implementations must keep these promises, which the conformance
/// suite in `tests/` checks:
///
/// - a credential is never held by more leases than its capacity;
/// - lease ids are unique and increasing within the store;
/// - release and renew are fenced: they change nothing unless the token names
///   a lease the store still holds;
/// - [`release`](Store::release) takes effect even if its future is dropped
///   after the call returned it (send the request before returning the future);
/// - a release handed to the store is never lost: one that cannot commit yet
///   (a write lock held elsewhere, a full disk, a lost connection) is kept
///   and tried again until it commits or is refused;
/// - every release's [`Receipt`] is completed once the release is decided,
///   in the order the store's changes commit, and before the credential it
///   freed can be granted again.
pub trait Store: Send + Sync + Sized + 'static {
    /// The pool's name within the store.
    fn pool_name(&self) -> &str;

    /// The lease TTL a pool uses when none is configured.
    fn default_lease_ttl(&self) -> Option<Duration> {
        None
    }

    /// How often the first waiter asks the store again, to learn of changes
    /// made by other processes. `None` for a store that lives in one process.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// Resolves when the store hears that another process freed something
    /// (Postgres: a `NOTIFY`), so the first waiter asks again before its
    /// next poll. A store that hears nothing never resolves (the default).
    fn changed(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Grants a lease on a free credential, if there is one. Reclaims expired
    /// leases first; returns the ones it reclaimed through `expired`.
    ///
    /// Fails with [`Error::NoCredentials`](crate::Error::NoCredentials) when
    /// the pool has no enabled credential.
    fn grant(
        &self,
        ttl: Option<Duration>,
        expired: &mut Vec<ExpiredLease>,
    ) -> impl Future<Output = Result<GrantAttempt>> + Send;

    /// Ends a lease with feedback; returns the credential's name. Completes
    /// `receipt` when the release is decided, whether or not the future is
    /// still there to hear it.
    ///
    /// The future may resolve with
    /// [`Error::ReleasePending`](crate::Error::ReleasePending) when the
    /// release could not commit for a while; the store keeps it and the
    /// receipt until it does.
    fn release(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        receipt: Receipt,
    ) -> impl Future<Output = Result<Arc<str>>> + Send;

    /// Ends a lease without waiting, from `Drop`: no runtime may be there.
    /// Completes `receipt` as [`release`](Store::release) does.
    fn release_detached(&self, lease: LeaseToken, receipt: Receipt);

    /// Extends a lease to now + `ttl` (no expiry with `None`); returns the new expiry.
    fn renew(
        &self,
        lease: LeaseToken,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Option<SystemTime>>> + Send;

    /// Adds credentials, all or nothing; returns how many were added.
    /// The credentials were validated by the caller.
    fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Removes a credential; refused while leased unless `force`.
    fn remove(&self, name: &str, force: bool) -> impl Future<Output = Result<()>> + Send;

    /// Disables a credential (`Some(reason)`) or enables it (`None`).
    fn set_disabled(
        &self,
        name: &str,
        reason: Option<String>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Replaces a credential's secret.
    fn update_secret(&self, name: &str, secret: Secret) -> impl Future<Output = Result<()>> + Send;

    /// Every credential, without secrets, in id order.
    fn list(&self) -> impl Future<Output = Result<Vec<CredentialInfo>>> + Send;

    /// Every credential's name, secret and extra text, in id order.
    fn reveal(&self) -> impl Future<Output = Result<Vec<NewCredential>>> + Send;

    /// Counts by state (`waiters` is left at 0: the pool fills it in).
    fn stats(&self) -> impl Future<Output = Result<Stats>> + Send;
}
