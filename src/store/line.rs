//! The waiting line a shared store keeps: numbered tickets, as Cats QMS
//! hands out numbers, and the seats of this process's waiters.
//!
//! A waiter that finds nothing free takes a ticket in the store, in the same
//! transaction as its failed grant. A credential that comes free while
//! tickets wait goes to the lowest live ticket, in the transaction that
//! freed it. When that ticket is one of this store's seats, the grant goes
//! straight to the waiter (after the commit); when it belongs to another
//! process, the lease is held for it until a short claim deadline, and that
//! process collects it at its next poll.
//!
//! The [`Line`] holds this store's seats: the way to hand a grant to each
//! waiting task. A [`Seat`] is the waiter's end.

// Only the shared stores keep a line; the memory store uses none of it.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::store::order::Work;
use crate::store::Grant;

/// Held by a store while it takes a ticket out of its line
/// ([`Leases::leave_line`](crate::store::Leases::leave_line)): calls the pool
/// makes later wait until the store drops it, so they see the ticket gone.
pub struct Leaving(#[allow(dead_code)] Option<Work>);

impl Leaving {
    pub(crate) fn new(work: Option<Work>) -> Self {
        Self(work)
    }
}

impl fmt::Debug for Leaving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Leaving")
    }
}

/// How long a ticket lives without a heartbeat, and how long a credential
/// handed to a ticket in another process waits to be claimed, by default.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(3);

/// How many of the tickets leaving a hand-off passes over by name.
#[cfg(feature = "postgres")]
const LEAVING_PASSED_OVER: usize = 64;

/// What a grant does when nothing is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Answer that nothing is free ([`try_acquire`](crate::Pool::try_acquire)).
    Answer,
    /// Take a ticket in the store's waiting line, where the store keeps
    /// one; the answer is then [`GrantAttempt::Queued`](crate::store::GrantAttempt::Queued).
    TakeTicket,
}

/// A waiter's place in a store's waiting line: its ticket, and the end of
/// the channel on which the store hands it a grant.
///
/// Dropping a seat takes it out of the line in this process; the pool then
/// asks the store to remove the ticket ([`Leases::leave_line`](crate::store::Leases::leave_line))
/// and gives back a grant that came too late.
pub struct Seat {
    ticket: u64,
    pub(crate) grant: oneshot::Receiver<Grant>,
    line: Arc<Line>,
}

impl Seat {
    /// The ticket's number in the store: lower numbers are served first.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// Leaves the seat: no grant can reach it after this. Returns the
    /// ticket, and a grant that reached the seat before, which must go back.
    pub(crate) fn close(mut self) -> (u64, Option<Grant>) {
        self.grant.close();
        let late = self.grant.try_recv().ok();
        (self.ticket, late)
    }
}

impl fmt::Debug for Seat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seat")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.line.unseat(self.ticket);
    }
}

/// What the line keeps for a seat: where its grant goes, and the TTL its
/// waiter asked for.
struct Place {
    sender: oneshot::Sender<Grant>,
    ttl: Option<Duration>,
}

/// The seats of one store's waiters, by ticket number.
pub(crate) struct Line {
    /// This store among all that share the waiting line.
    owner: i64,
    seats: Mutex<BTreeMap<u64, Place>>,
    /// Tickets whose waiter left, until their removal commits: nothing is
    /// handed to them meanwhile (a lease handed to one would wait for that
    /// removal, and under load a line of them would take every lease).
    /// Only the Postgres store's removals are slow enough to need it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    leaving: Mutex<BTreeSet<u64>>,
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Line")
            .field("owner", &self.owner)
            .field("seats", &self.lock().len())
            .finish()
    }
}

/// Why a grant could not be handed to its seat; the lease must go back.
pub(crate) struct Undelivered(pub(crate) Grant);

impl Line {
    /// A line for a store opened now, with an owner number unlikely to be
    /// any other store's.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            owner: owner_number(),
            seats: Mutex::default(),
            leaving: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Place>> {
        self.seats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This store's number in the tickets it takes.
    pub(crate) fn owner(&self) -> i64 {
        self.owner
    }

    /// Seats the waiter of a ticket just taken.
    pub(crate) fn seat(self: &Arc<Self>, ticket: u64, ttl: Option<Duration>) -> Seat {
        let (sender, grant) = oneshot::channel();
        self.lock().insert(ticket, Place { sender, ttl });
        Seat {
            ticket,
            grant,
            line: self.clone(),
        }
    }

    /// Takes a seat out of the line; its waiter is gone, or its ticket is.
    pub(crate) fn unseat(&self, ticket: u64) {
        self.lock().remove(&ticket);
    }

    /// The TTL the waiter of `ticket` asked for, if it is seated here.
    pub(crate) fn seated(&self, ticket: u64) -> Option<Option<Duration>> {
        self.lock().get(&ticket).map(|place| place.ttl)
    }

    /// The tickets seated here.
    pub(crate) fn tickets(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// The `count` lowest tickets seated here, lowest first.
    #[cfg(feature = "postgres")]
    pub(crate) fn first_tickets(&self, count: usize) -> Vec<u64> {
        self.lock().keys().take(count).copied().collect()
    }

    /// The TTL some waiter seated here asked for, if one is seated.
    #[cfg(feature = "postgres")]
    pub(crate) fn any_ttl(&self) -> Option<Option<Duration>> {
        self.lock().values().next().map(|place| place.ttl)
    }

    /// Whether any waiter is seated here.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Marks `ticket` as leaving: its waiter is gone and its removal on the
    /// way. Until [`left`](Self::left), nothing is handed to it.
    #[cfg(feature = "postgres")]
    pub(crate) fn leaving(&self, ticket: u64) {
        self.leaving_lock().insert(ticket);
    }

    /// The removal of `ticket` has committed (or failed; the ticket then
    /// expires without its heartbeat).
    #[cfg(feature = "postgres")]
    pub(crate) fn left(&self, ticket: u64) {
        self.leaving_lock().remove(&ticket);
    }

    /// The `count` lowest tickets leaving, lowest first: the ones a hand-off
    /// would otherwise meet first.
    #[cfg(feature = "postgres")]
    pub(crate) fn first_leaving(&self, count: usize) -> Vec<u64> {
        self.leaving_lock().iter().take(count).copied().collect()
    }

    /// The lowest tickets leaving, as a statement's array: those a hand-off
    /// would meet first (one beyond them is met, and waits for its removal).
    #[cfg(feature = "postgres")]
    pub(crate) fn leaving_ids(&self) -> Vec<i64> {
        self.first_leaving(LEAVING_PASSED_OVER)
            .into_iter()
            .map(|ticket| ticket as i64)
            .collect()
    }

    #[cfg(feature = "postgres")]
    fn leaving_lock(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        self.leaving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `grant` to the waiter of `ticket`. Fails, giving the grant
    /// back, when the waiter is gone.
    pub(crate) fn deliver(&self, ticket: u64, grant: Grant) -> Result<(), Undelivered> {
        let place = self.lock().remove(&ticket);
        match place {
            Some(place) => place.sender.send(grant).map_err(Undelivered),
            None => Err(Undelivered(grant)),
        }
    }
}

/// A number for a store opened now: the process id in the high bits, the
/// clock and a counter below, so stores in one process and in processes on
/// other machines differ.
fn owner_number() -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static OPENED: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let count = OPENED.fetch_add(1, Ordering::Relaxed);
    let mixed = (u64::from(std::process::id()) << 40)
        ^ nanos.rotate_left(17)
        ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // Positive, so it reads the same in every SQL client.
    (mixed >> 1) as i64
}
