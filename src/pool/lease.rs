//! The lease guard: a credential held, given back when dropped.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::credential::{Credential, ReleaseOutcome};
use crate::error::Result;
use crate::ids::{LeaseId, LeaseToken};
use crate::pool::Pool;
use crate::store::{Grant, Store};

/// Proof of use of one credential: an RAII guard.
///
/// Drop it, or call [`release`](Lease::release) or
/// [`release_with`](Lease::release_with), and the credential goes back to
/// the pool. A lease with a TTL that is neither released nor
/// [renewed](Lease::renew) in time may be granted to someone else; its
/// holder's later release or renewal then fails with
/// [`Error::LeaseLost`](crate::Error::LeaseLost).
#[must_use = "a lease returns its credential as soon as it is dropped; keep it while you use the credential"]
pub struct Lease<S: Store> {
    pool: Pool<S>,
    grant: Grant,
    done: bool,
}

impl<S: Store> Lease<S> {
    pub(crate) fn new(pool: Pool<S>, grant: Grant) -> Self {
        Self {
            pool,
            grant,
            done: false,
        }
    }

    /// The credential this lease holds.
    pub fn credential(&self) -> &Credential {
        &self.grant.credential
    }

    /// The lease's fencing token.
    pub fn id(&self) -> LeaseId {
        self.grant.lease_id
    }

    /// When the lease was granted.
    pub fn acquired_at(&self) -> SystemTime {
        self.grant.acquired_at
    }

    /// When the lease expires; `None` when the pool has no lease TTL.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.grant.expires_at
    }

    /// The units of the credential's capacity this lease holds: 1, or what
    /// a weighted grant asked for ([`Pool::acquire_units`](crate::Pool::acquire_units)).
    pub fn units(&self) -> u32 {
        self.grant.units
    }

    /// The token that names this lease (for logs, or to hand to another process).
    pub fn token(&self) -> LeaseToken {
        self.grant.token()
    }

    /// Returns the credential to the pool.
    ///
    /// Resolves once the store has committed the release. A release is never
    /// lost: when the store cannot commit it (another process holds the
    /// SQLite write lock past the busy timeout, the disk is full, the
    /// Postgres server cannot be reached), the store keeps it and tries
    /// again until it commits. The caller waits about the store's busy
    /// timeout (five seconds by default) for that, then hears
    /// [`Error::ReleasePending`](crate::Error::ReleasePending); the lease
    /// counts in [`Pool::leases_out`](crate::Pool::leases_out) until the
    /// release commits, and waiters are woken then.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when the lease expired
    /// and was taken over (or its credential was removed); nothing is
    /// changed for the new holder. [`Error::ReleasePending`](crate::Error::ReleasePending)
    /// as above: the release will still take effect.
    ///
    /// # Cancel safety
    ///
    /// The release is sent to the store when this future is first polled;
    /// dropping the future after that does not undo it (the pool counts the
    /// lease back when the store commits it), and dropping it before then
    /// releases the lease as a drop would.
    pub async fn release(self) -> Result<()> {
        self.release_with(ReleaseOutcome::Success).await
    }

    /// Returns the credential with feedback: cool it down or disable it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), credpool::Error> {
    /// use std::time::Duration;
    /// use credpool::{NewCredential, Pool, ReleaseOutcome};
    /// let pool = Pool::in_memory();
    /// pool.add(NewCredential::new("alice", "hunter2")).await?;
    /// let lease = pool.acquire().await?;
    /// // The API answered 429: rest this account for a minute.
    /// lease.release_with(ReleaseOutcome::CoolDown(Duration::from_secs(60))).await?;
    /// assert!(pool.try_acquire().await?.is_none());
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As for [`release`](Lease::release).
    pub async fn release_with(mut self, outcome: ReleaseOutcome) -> Result<()> {
        self.done = true;
        self.pool.release_grant(&self.grant, outcome).await
    }

    /// Extends the lease by the pool's lease TTL, counted from now.
    ///
    /// Without a TTL this only checks that the lease is still held.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when the lease was taken over.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not have renewed the lease; the lease
    /// itself stays valid either way until its old or new expiry.
    /// [`expires_at`](Lease::expires_at) then still says the old expiry.
    pub async fn renew(&mut self) -> Result<()> {
        let ttl = self.pool.lease_ttl();
        self.renew_inner(ttl).await
    }

    /// Extends the lease by `ttl`, counted from now.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a `ttl` below
    /// [`MIN_LEASE_TTL`](crate::MIN_LEASE_TTL) (nothing changes), and
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when the lease was taken over.
    ///
    /// # Cancel safety
    ///
    /// As for [`renew`](Lease::renew).
    pub async fn renew_for(&mut self, ttl: Duration) -> Result<()> {
        self.renew_inner(Some(ttl)).await
    }

    async fn renew_inner(&mut self, ttl: Option<Duration>) -> Result<()> {
        let expires_at = self.pool.renew_grant(&self.grant, ttl).await?;
        self.grant.expires_at = expires_at;
        Ok(())
    }

    /// Turns the guard into a plain token: dropping it no longer releases the
    /// lease, which stays held until released with
    /// [`Pool::release_token`](crate::Pool::release_token) or until it expires.
    pub fn into_token(mut self) -> LeaseToken {
        self.done = true;
        self.pool.forget_grant();
        self.grant.token()
    }
}

impl<S: Store> Drop for Lease<S> {
    fn drop(&mut self) {
        if !self.done {
            self.pool.release_dropped(&self.grant);
        }
    }
}

impl<S: Store> fmt::Debug for Lease<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.grant.lease_id)
            .field("credential", &self.grant.credential)
            .field("acquired_at", &self.grant.acquired_at)
            .field("expires_at", &self.grant.expires_at)
            .finish()
    }
}
