//! The [`Receipt`] through which a store tells a pool that a release took effect.
//!
//! A store may commit a release long after its caller asked for it (another
//! process holds the write lock, the caller's future was dropped, the lease
//! was dropped on a thread without a runtime). The pool changes its books
//! only when the store says the release took effect, so it never counts a
//! lease as back while the store still holds it.

use std::fmt;
use std::sync::Arc;

use crate::credential::ReleaseOutcome;
use crate::ids::LeaseToken;
use crate::store::order::Work;

/// What a pool keeps about the leases it handed out, as a receipt reports to it.
pub(crate) trait Books: Send + Sync + fmt::Debug {
    /// The release of `token` committed: the credential `name` is free
    /// again, `units` of its capacity. `outcome` is there when someone
    /// listens for events.
    fn released(
        &self,
        token: LeaseToken,
        name: &Arc<str>,
        units: u32,
        counted: bool,
        outcome: Option<ReleaseOutcome>,
    );

    /// The store does not hold the lease: nothing changed.
    fn refused(&self, counted: bool);

    /// The store stopped before the release was decided.
    fn abandoned(&self, token: LeaseToken, counted: bool);
}

/// A store's word to the pool that a release it was handed took effect.
///
/// The pool hands one to [`Leases::release`](crate::store::Leases::release)
/// and [`Leases::release_detached`](crate::store::Leases::release_detached)
/// with every release. The store keeps it until the release is decided,
/// then calls [`released`](Receipt::released) (the change is committed) or
/// [`refused`](Receipt::refused) (the store does not hold that lease). Until
/// then the pool counts the lease as out. A store completes receipts in the
/// order its changes commit, before the freed credential can be granted
/// again, so the pool's events for one credential come in that order.
///
/// Dropping a receipt without completing it says the release will never be
/// made (the store has stopped): the pool stops counting the lease, which
/// comes back in the store when it expires.
#[must_use = "the pool counts the lease as out until its receipt is completed"]
pub struct Receipt {
    books: Option<Arc<dyn Books>>,
    token: LeaseToken,
    /// Whether the lease was counted in `leases_out` (not for a token's release).
    counted: bool,
    /// The outcome, kept only when someone listens for events.
    for_event: Option<ReleaseOutcome>,
    /// The work later calls wait for while this release is first tried.
    work: Option<Work>,
}

impl Receipt {
    #[inline]
    pub(crate) fn new(
        books: Arc<dyn Books>,
        token: LeaseToken,
        counted: bool,
        for_event: Option<ReleaseOutcome>,
        work: Option<Work>,
    ) -> Self {
        Self {
            books: Some(books),
            token,
            counted,
            for_event,
            work,
        }
    }

    /// A receipt that tells no pool anything, for a store used without one
    /// (a bench, a test of the store alone).
    pub fn untracked(token: LeaseToken) -> Self {
        Self {
            books: None,
            token,
            counted: false,
            for_event: None,
            work: None,
        }
    }

    /// The lease this receipt is for.
    pub fn token(&self) -> LeaseToken {
        self.token
    }

    /// The first attempt at the release could not commit, and the store
    /// will try again: calls made from now on need not wait for it.
    pub fn retrying(&mut self) {
        self.work = None;
    }

    /// The release is committed: the credential named `name` is free again
    /// (or cooling down, or disabled, as the outcome said).
    #[inline]
    pub fn released(self, name: &Arc<str>) {
        self.released_units(name, 1);
    }

    /// As [`released`](Receipt::released), for a lease that held `units`
    /// units of the credential's capacity (a weighted grant).
    #[inline]
    pub fn released_units(mut self, name: &Arc<str>, units: u32) {
        if let Some(books) = self.books.take() {
            books.released(self.token, name, units, self.counted, self.for_event.take());
        }
    }

    /// The store does not hold the lease (taken over, removed, never granted):
    /// nothing was changed, and the pool stops counting it.
    #[inline]
    pub fn refused(mut self) {
        if let Some(books) = self.books.take() {
            books.refused(self.counted);
        }
    }
}

impl Drop for Receipt {
    #[inline]
    fn drop(&mut self) {
        if let Some(books) = self.books.take() {
            books.abandoned(self.token, self.counted);
        }
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("lease_id", &self.token.lease_id())
            .field("tracked", &self.books.is_some())
            .finish()
    }
}
