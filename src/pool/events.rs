//! What happens in a pool, as a stream a live view or a metrics exporter reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::credential::ReleaseOutcome;
use crate::ids::LeaseId;

use tokio::sync::broadcast::error::RecvError;

/// One thing that happened in a pool. Names only, never secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A lease was granted after `waited`.
    Acquired {
        /// The credential's name.
        name: Arc<str>,
        /// The lease.
        lease_id: LeaseId,
        /// How long the caller waited in line (zero when nothing was queued).
        waited: Duration,
    },
    /// A lease was released with this outcome (`Success` for a dropped lease).
    Released {
        /// The credential's name.
        name: Arc<str>,
        /// The lease.
        lease_id: LeaseId,
        /// The holder's feedback.
        outcome: ReleaseOutcome,
    },
    /// A lease passed its expiry and was reclaimed.
    Expired {
        /// The credential's name.
        name: Arc<str>,
        /// The lease that expired.
        lease_id: LeaseId,
    },
    /// A credential was released with a cool-down.
    CooledDown {
        /// The credential's name.
        name: Arc<str>,
        /// When it may be handed out again.
        until: SystemTime,
    },
    /// A credential was released with a rate limit its API reported: no
    /// more grants (or only `remaining` more) until `until`, in `scope` (or
    /// in every scope).
    Limited {
        /// The credential's name.
        name: Arc<str>,
        /// The scope; `None`: every scope.
        scope: Option<Arc<str>>,
        /// When the reported window resets.
        until: SystemTime,
        /// Grants left before then.
        remaining: u32,
    },
    /// A credential was disabled, by its holder or an operator.
    Disabled {
        /// The credential's name.
        name: Arc<str>,
        /// Why.
        reason: String,
    },
    /// Every lease of a credential was ended by an operator
    /// ([`Pool::revoke`](crate::Pool::revoke)).
    Revoked {
        /// The credential's name.
        name: Arc<str>,
        /// How many leases were ended.
        leases: u32,
    },
    /// A credential was enabled.
    Enabled {
        /// The credential's name.
        name: Arc<str>,
    },
    /// A credential was added.
    Added {
        /// The credential's name.
        name: Arc<str>,
    },
    /// A credential was removed.
    Removed {
        /// The credential's name.
        name: Arc<str>,
    },
}

/// A subscription to a pool's events, from [`Pool::subscribe`](crate::Pool::subscribe).
///
/// Events of this process only. A subscriber that falls more than the
/// channel's capacity behind gets tokio's [`RecvError::Lagged`] and goes on.
#[derive(Debug)]
pub struct Events {
    receiver: broadcast::Receiver<Event>,
    subscribers: Arc<AtomicUsize>,
}

impl Events {
    /// The next event.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses no event.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sending side, which costs one atomic load when nobody listens.
#[derive(Debug)]
pub(crate) struct EventSender {
    sender: broadcast::Sender<Event>,
    subscribers: Arc<AtomicUsize>,
}

impl EventSender {
    pub(crate) fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn subscribe(&self) -> Events {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Events {
            receiver: self.sender.subscribe(),
            subscribers: self.subscribers.clone(),
        }
    }

    /// Whether anyone listens; build events only when this is true.
    #[inline]
    pub(crate) fn wanted(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn send(&self, event: Event) {
        // No receiver left is not an error for the pool.
        let _ = self.sender.send(event);
    }
}
