//! The pool's books: leases out, the waiting line, events; and the
//! [`Receipt`] through which a store tells them that a release took effect.
//!
//! A store may commit a release long after its caller asked for it (another
//! process holds the write lock, the caller's future was dropped, the lease
//! was dropped on a thread without a runtime). The books change only when
//! the store says the release took effect, so the pool never counts a lease
//! as back while the store still holds it.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::events::{Event, EventSender};
use crate::lease::{LeaseToken, ReleaseOutcome};
use crate::wait::WaitQueue;

/// What a pool keeps about itself, shared with the receipts of its releases.
/// It holds no store, so a receipt kept by a store never keeps the store alive.
#[derive(Debug)]
pub(crate) struct Books {
    pub(crate) pool: Box<str>,
    pub(crate) waiters: WaitQueue,
    /// Leases this pool handed out that have not come back.
    pub(crate) outstanding: AtomicUsize,
    pub(crate) all_returned: Notify,
    /// Tasks in `wait_for_leases`; releases notify only when there are some.
    pub(crate) shutdown_watchers: AtomicUsize,
    pub(crate) events: EventSender,
}

impl Books {
    pub(crate) fn new(pool: &str, polls: bool, event_capacity: usize) -> Self {
        Self {
            pool: pool.into(),
            waiters: WaitQueue::new(polls),
            outstanding: AtomicUsize::new(0),
            all_returned: Notify::new(),
            shutdown_watchers: AtomicUsize::new(0),
            events: EventSender::new(event_capacity),
        }
    }

    /// A lease this pool counted is no longer out.
    #[inline]
    pub(crate) fn lease_returned(&self) {
        if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1
            && self.shutdown_watchers.load(Ordering::SeqCst) > 0
        {
            self.all_returned.notify_waiters();
        }
    }

    pub(crate) fn send_release_events(
        &self,
        name: Arc<str>,
        token: LeaseToken,
        outcome: ReleaseOutcome,
    ) {
        let events = &self.events;
        match &outcome {
            ReleaseOutcome::CoolDown(pause) => events.send(Event::CooledDown {
                name: name.clone(),
                until: SystemTime::now()
                    .checked_add(*pause)
                    .unwrap_or_else(far_future),
            }),
            ReleaseOutcome::Disable(reason) => events.send(Event::Disabled {
                name: name.clone(),
                reason: reason.clone(),
            }),
            _ => {}
        }
        events.send(Event::Released {
            name,
            lease_id: token.lease_id(),
            outcome,
        });
    }
}

/// The latest time a `SystemTime` holds comfortably: what a cool-down of
/// `Duration::MAX` ends at.
pub(crate) fn far_future() -> SystemTime {
    crate::credential::from_ms(i64::MAX)
}

/// A store's word to the pool that a release it was handed took effect.
///
/// The pool hands one to [`Store::release`](crate::Store::release) and
/// [`Store::release_detached`](crate::Store::release_detached) with every
/// release. The store keeps it until the release is decided, then calls
/// [`released`](Receipt::released) (the change is committed) or
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
    books: Option<Arc<Books>>,
    token: LeaseToken,
    /// Whether the lease was counted in `leases_out` (not for a token's release).
    counted: bool,
    /// The outcome, kept only when someone listens for events.
    for_event: Option<ReleaseOutcome>,
}

impl Receipt {
    #[inline]
    pub(crate) fn new(
        books: Arc<Books>,
        token: LeaseToken,
        counted: bool,
        outcome: &ReleaseOutcome,
    ) -> Self {
        let for_event = books.events.wanted().then(|| outcome.clone());
        Self {
            books: Some(books),
            token,
            counted,
            for_event,
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
        }
    }

    /// The lease this receipt is for.
    pub fn token(&self) -> LeaseToken {
        self.token
    }

    /// The release is committed: the credential named `name` is free again
    /// (or cooling down, or disabled, as the outcome said).
    #[inline]
    pub fn released(mut self, name: &Arc<str>) {
        let Some(books) = self.books.take() else {
            return;
        };
        if self.counted {
            books.lease_returned();
        }
        books.waiters.freed_one();
        tracing::debug!(pool = &*books.pool, credential = %name, lease_id = %self.token.lease_id(), "released");
        if let Some(outcome) = self.for_event.take() {
            books.send_release_events(name.clone(), self.token, outcome);
        }
    }

    /// The store does not hold the lease (taken over, removed, never granted):
    /// nothing was changed, and the pool stops counting it.
    #[inline]
    pub fn refused(mut self) {
        if let Some(books) = self.books.take() {
            if self.counted {
                books.lease_returned();
            }
        }
    }
}

impl Drop for Receipt {
    #[inline]
    fn drop(&mut self) {
        if let Some(books) = self.books.take() {
            tracing::warn!(pool = &*books.pool, lease_id = %self.token.lease_id(), "the store stopped before a release took effect; the lease comes back when it expires");
            if self.counted {
                books.lease_returned();
            }
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
