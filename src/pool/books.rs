//! The pool's books: leases out, the waiting line, events, and the work in
//! flight that later calls wait for. A store's [`Receipt`] reports to them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::credential::ReleaseOutcome;
use crate::ids::LeaseToken;
use crate::pool::events::{Event, EventSender};
use crate::pool::lines::Lines;
use crate::store::order::{InFlight, Work};
use crate::store::{Books as ReceiptBooks, Receipt};

/// What a pool keeps about itself, shared with the receipts of its releases.
/// It holds no store, so a receipt kept by a store never keeps the store alive.
#[derive(Debug)]
pub(crate) struct Books {
    pub(crate) pool: Box<str>,
    pub(crate) waiters: Lines,
    /// Leases this pool handed out that have not come back.
    pub(crate) outstanding: AtomicUsize,
    pub(crate) all_returned: Notify,
    /// Tasks in `wait_for_leases`; releases notify only when there are some.
    pub(crate) shutdown_watchers: AtomicUsize,
    pub(crate) events: EventSender,
    /// Releases of dropped leases, on a store that runs calls side by side:
    /// every call waits for the ones begun before it.
    pub(crate) releases: Arc<InFlight>,
    /// Grants whose callers left, until their leases are back: every call
    /// but a grant waits for the ones begun before it. (A grant does not:
    /// one grant waiting for another would queue every grant behind each
    /// cancelled one.)
    pub(crate) orphans: Arc<InFlight>,
}

impl Books {
    pub(crate) fn new(pool: &str, polls: bool, lined: bool, event_capacity: usize) -> Self {
        Self {
            pool: pool.into(),
            waiters: Lines::new(polls, lined),
            outstanding: AtomicUsize::new(0),
            all_returned: Notify::new(),
            shutdown_watchers: AtomicUsize::new(0),
            events: EventSender::new(event_capacity),
            releases: Arc::default(),
            orphans: Arc::default(),
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

    /// A receipt for the release of `token`, reporting to these books;
    /// later calls wait for `work` (the release's first attempt), if any.
    #[inline]
    pub(crate) fn receipt(
        self: &Arc<Self>,
        token: LeaseToken,
        counted: bool,
        outcome: &ReleaseOutcome,
        work: Option<Work>,
    ) -> Receipt {
        // Kept for the events, and for the debug log line of the release.
        let wanted = self.events.wanted() || tracing::enabled!(tracing::Level::DEBUG);
        let for_event = wanted.then(|| outcome.clone());
        Receipt::new(self.clone(), token, counted, for_event, work)
    }

    /// A receipt for a release that no one counted or heard of.
    pub(crate) fn quiet_receipt(self: &Arc<Self>, token: LeaseToken, work: Work) -> Receipt {
        Receipt::new(self.clone(), token, false, None, Some(work))
    }

    fn send_release_events(&self, name: Arc<str>, token: LeaseToken, outcome: ReleaseOutcome) {
        let events = &self.events;
        match &outcome {
            ReleaseOutcome::CoolDown(pause) => events.send(Event::CooledDown {
                name: name.clone(),
                until: SystemTime::now()
                    .checked_add(*pause)
                    .unwrap_or_else(crate::time::far_future),
            }),
            ReleaseOutcome::Limited(limited) => events.send(Event::Limited {
                name: name.clone(),
                scope: limited.scope.clone(),
                until: limited.until,
                remaining: limited.remaining,
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

impl ReceiptBooks for Books {
    #[inline]
    fn released(
        &self,
        token: LeaseToken,
        name: &Arc<str>,
        units: u32,
        counted: bool,
        outcome: Option<ReleaseOutcome>,
    ) {
        if counted {
            self.lease_returned();
        }
        self.waiters.freed(units);
        if let Some(outcome) = outcome {
            tracing::debug!(pool = &*self.pool, credential = %name, lease_id = %token.lease_id(), ?outcome, "released");
            if self.events.wanted() {
                self.send_release_events(name.clone(), token, outcome);
            }
        } else {
            tracing::debug!(pool = &*self.pool, credential = %name, lease_id = %token.lease_id(), "released");
        }
    }

    #[inline]
    fn refused(&self, counted: bool) {
        if counted {
            self.lease_returned();
        }
    }

    fn abandoned(&self, token: LeaseToken, counted: bool) {
        tracing::warn!(pool = &*self.pool, lease_id = %token.lease_id(), "the store stopped before a release took effect; the lease comes back when it expires");
        if counted {
            self.lease_returned();
        }
    }
}
