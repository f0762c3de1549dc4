//! The queue of tasks waiting for a credential: first come, first served.
//!
//! Every unit of capacity that is freed in this process wakes one waiter, the
//! first one in line that is not awake already. A waiter that is cancelled
//! while awake passes its wake-up on, so no release is ever lost. Only the
//! first waiter in line sleeps with a timer (for cool-downs, expiries and
//! changes made by other processes); when it is served or leaves, the next
//! one takes over.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    /// Whether the first waiter always keeps a timer (the store polls for
    /// other processes' changes); if not, only while a change is expected.
    polls: bool,
    /// Whether the store keeps the waiting line itself and hands freed units
    /// to its tickets: then a release wakes no one here.
    lined: bool,
    list: Mutex<List>,
    /// How many waiters are in line; read without the lock on the fast path.
    len: AtomicUsize,
    /// Bumped on every release, so a task that is about to queue can tell
    /// whether something was freed since it last asked the store.
    epoch: AtomicU64,
    /// How many of the waiters ask for more than one unit at once. While
    /// any does, a freed unit wakes the first waiter to ask in turn
    /// ([`WaitQueue::wake_in_turn`]) rather than the first asleep, so it
    /// never goes past a weighted waiter at the head to one behind it.
    weighted: AtomicUsize,
}

#[derive(Debug, Default)]
struct List {
    next_ticket: u64,
    entries: VecDeque<Entry>,
    /// When the store last said something changes by itself (a cool-down
    /// ends, a lease expires); the first waiter sets its timer by it.
    retry_at: Option<SystemTime>,
    /// The waiter woken ahead of any announcement, by a waiter that a timer
    /// (a poll) got served. If the unit that waiter took was freed in this
    /// process, its announcement is still to come; it must not wake a second
    /// waiter while this one has not asked the store yet, or the two would
    /// race and the later one could be served first.
    woken_early: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    ticket: u64,
    signal: Arc<Notify>,
    /// Woken to ask the store (a unit was freed for it), not only to take
    /// over the timer as the new first in line.
    awake: bool,
    /// Woken by something that may have freed more than one unit (credentials
    /// added or enabled, a timer): once served, wake the next waiter in turn.
    relay: bool,
    /// Woken with everyone else ([`WaitQueue::wake_all`]).
    all: bool,
    /// Asks for more than one unit at once.
    weighted: bool,
}

/// What a waiter was woken for, from [`Waiter::trying`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Woken {
    /// A unit was freed for this waiter: ask the store.
    pub(crate) freed: bool,
    /// Once served, wake the next waiter: more may have been freed.
    pub(crate) relay: bool,
    /// Everyone was woken at the same time.
    pub(crate) all: bool,
}

impl List {
    /// Where a ticket stands; entries are in ticket order.
    fn position(&self, ticket: u64) -> Option<usize> {
        self.entries
            .binary_search_by_key(&ticket, |entry| entry.ticket)
            .ok()
    }

    fn place(&self, ticket: u64) -> (bool, Option<SystemTime>) {
        let first = self
            .entries
            .front()
            .is_some_and(|entry| entry.ticket == ticket);
        (first, self.retry_at)
    }

    /// Wakes the first waiter that is asleep; returns its ticket.
    fn wake_first_asleep(&mut self, relay: bool) -> Option<u64> {
        let entry = self.entries.iter_mut().find(|entry| !entry.awake)?;
        entry.awake = true;
        entry.relay = relay;
        entry.signal.notify_one();
        Some(entry.ticket)
    }

    /// Tells the new first in line to set its timer, when there is one to set.
    fn promote_first(&mut self, polls: bool) {
        if !polls && self.retry_at.is_none() {
            return;
        }
        if let Some(entry) = self.entries.front() {
            entry.signal.notify_one();
        }
    }
}

impl WaitQueue {
    /// An empty line; `polls` says whether the store is polled for changes
    /// made by other processes, `lined` whether the store keeps a waiting
    /// line of its own.
    pub(crate) fn new(polls: bool, lined: bool) -> Self {
        Self {
            polls,
            lined,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, List> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether anyone is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(SeqCst) == 0
    }

    /// How many tasks are waiting.
    pub(crate) fn len(&self) -> usize {
        self.len.load(SeqCst)
    }

    /// The release count; sample it before asking the store.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    /// One unit of capacity was freed: wake the first waiter that is asleep
    /// (unless a waiter woken early is about to ask the store anyway).
    #[inline]
    pub(crate) fn freed_one(&self) {
        if !self.lined && self.weighted.load(SeqCst) > 0 {
            self.wake_in_turn();
            return;
        }
        self.epoch.fetch_add(1, SeqCst);
        if !self.lined && self.len.load(SeqCst) > 0 {
            self.wake_for_one();
        }
    }

    /// [`freed_one`](WaitQueue::freed_one) with waiters in line.
    #[inline(never)]
    fn wake_for_one(&self) {
        let mut list = self.lock();
        if let Some(ticket) = list.woken_early.take() {
            let still_to_ask = list
                .position(ticket)
                .is_some_and(|position| list.entries[position].awake);
            if still_to_ask {
                return;
            }
        }
        list.wake_first_asleep(false);
    }

    /// Credentials were added or enabled, or one was disabled or removed:
    /// any number of units may have been freed, or none may be left. The
    /// first waiter in line asks the store, and once served wakes the next,
    /// and so on while the store has something free; so they are served in
    /// arrival order rather than racing for it.
    pub(crate) fn wake_in_turn(&self) {
        self.epoch.fetch_add(1, SeqCst);
        if self.len.load(SeqCst) > 0 {
            let mut list = self.lock();
            if let Some(first) = list.entries.front_mut() {
                first.relay = true;
                if !first.awake {
                    first.awake = true;
                    first.signal.notify_one();
                }
            }
        }
    }

    /// Something changed for everyone: the pool closed, or a waiter learned
    /// that the pool has no enabled credential.
    pub(crate) fn wake_all(&self) {
        self.epoch.fetch_add(1, SeqCst);
        if self.len.load(SeqCst) > 0 {
            for entry in self.lock().entries.iter_mut() {
                entry.awake = true;
                entry.all = true;
                entry.signal.notify_one();
            }
        }
    }

    /// Joins the end of the line. `seen_epoch` is the epoch sampled before the
    /// caller last asked the store: if a release happened since, the new waiter
    /// starts awake, so that release is not missed. `retry_at` is what the
    /// store said, if the caller asked it. Returns the waiter and its place.
    /// `weighted`: the waiter asks for more than one unit at once.
    pub(crate) fn join(
        &self,
        seen_epoch: u64,
        retry_at: Option<SystemTime>,
        weighted: bool,
    ) -> (Waiter<'_>, (bool, Option<SystemTime>)) {
        let signal = Arc::new(Notify::new());
        let mut list = self.lock();
        let ticket = list.next_ticket;
        list.next_ticket += 1;
        self.len.fetch_add(1, SeqCst);
        if weighted {
            self.weighted.fetch_add(1, SeqCst);
        }
        // Ask the store first if a release happened since the caller did, or if
        // nobody is ahead (the line may have emptied since the caller looked).
        let awake = self.epoch.load(SeqCst) != seen_epoch || list.entries.is_empty();
        if awake {
            signal.notify_one();
        }
        list.entries.push_back(Entry {
            ticket,
            signal: signal.clone(),
            awake,
            relay: false,
            all: false,
            weighted,
        });
        if retry_at.is_some() {
            list.retry_at = retry_at;
        }
        let place = list.place(ticket);
        let waiter = Waiter {
            queue: self,
            ticket,
            signal,
        };
        (waiter, place)
    }
}

/// A place in line. Dropping it leaves the line and hands any wake-up it
/// holds to the next waiter.
#[derive(Debug)]
pub(crate) struct Waiter<'a> {
    queue: &'a WaitQueue,
    ticket: u64,
    signal: Arc<Notify>,
}

impl Waiter<'_> {
    /// Whether this waiter is first in line (and so keeps the timer), and
    /// when the store last said something changes by itself.
    pub(crate) fn place(&self) -> (bool, Option<SystemTime>) {
        self.queue.lock().place(self.ticket)
    }

    /// Waits for a wake-up.
    pub(crate) async fn woken(&self) {
        self.signal.notified().await;
    }

    /// Called on waking, before asking the store: says whether a unit was
    /// freed for this waiter (rather than a promotion to first in line), and
    /// whether it should wake the next once served. From here on, a release
    /// wakes this waiter again even if its attempt fails.
    pub(crate) fn trying(&self) -> Woken {
        let mut list = self.queue.lock();
        if list.woken_early == Some(self.ticket) {
            list.woken_early = None;
        }
        match list.position(self.ticket) {
            Some(position) => {
                let entry = &mut list.entries[position];
                Woken {
                    freed: std::mem::replace(&mut entry.awake, false),
                    relay: std::mem::replace(&mut entry.relay, false),
                    all: std::mem::replace(&mut entry.all, false),
                }
            }
            None => Woken {
                freed: false,
                relay: false,
                all: false,
            },
        }
    }

    /// The store had nothing free; `retry_at` is when it expects a change.
    /// Returns the waiter's place, as [`place`](Waiter::place) does.
    pub(crate) fn busy(&self, retry_at: Option<SystemTime>) -> (bool, Option<SystemTime>) {
        let mut list = self.queue.lock();
        let changed = list.retry_at != retry_at;
        list.retry_at = retry_at;
        let place = list.place(self.ticket);
        if changed && !place.0 {
            // The first waiter's timer must follow the news.
            list.promote_first(self.queue.polls);
        }
        place
    }

    /// Leaves the line after being served. `pass_on` wakes the next waiter too
    /// (after a timer wake-up, or a relay, more than one unit may have been
    /// freed); that one passes on in turn when it is served.
    pub(crate) fn served(self, pass_on: bool) {
        let polls = self.queue.polls;
        let (mut list, passed) = self.leave();
        if pass_on {
            // A release announced while this waiter asked has already woken
            // the next one in its place: that one does for both. Waking one
            // more would let it overtake the first if the first is slow to ask.
            let woken = match passed {
                Some(woken) => woken,
                None => list.wake_first_asleep(true),
            };
            // Only where the store is polled: there, a wake-up this holds
            // back is made good by the next poll at the latest.
            if polls {
                list.woken_early = woken;
            }
        }
    }

    /// Leaves the line. When this waiter had a wake-up it did not use, the
    /// wake-up goes on, and the second value says to whom (`Some(None)`: no
    /// one was asleep).
    fn leave(&self) -> (MutexGuard<'_, List>, Option<Option<u64>>) {
        let mut list = self.queue.lock();
        let mut passed = None;
        if let Some(position) = list.position(self.ticket) {
            let entry = list.entries.remove(position);
            self.queue.len.fetch_sub(1, SeqCst);
            let weighted = entry.as_ref().is_some_and(|entry| entry.weighted);
            if weighted {
                self.queue.weighted.fetch_sub(1, SeqCst);
            }
            // A wake-up this waiter will not use goes on; so does the timer it kept.
            if let Some(Entry {
                awake: true, relay, ..
            }) = entry
            {
                let woken = list.wake_first_asleep(relay);
                if list.woken_early == Some(self.ticket) {
                    list.woken_early = woken;
                }
                passed = Some(woken);
            } else if weighted && position == 0 {
                // A weighted waiter at the head held up those behind it
                // while units were free for them: they ask in turn now.
                passed = Some(list.wake_first_asleep(true));
            } else if position == 0 {
                list.promote_first(self.queue.polls);
            }
        }
        (list, passed)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        drop(self.leave());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn awake(queue: &WaitQueue) -> Vec<bool> {
        queue
            .lock()
            .entries
            .iter()
            .map(|entry| entry.awake)
            .collect()
    }

    /// The first waiter is served on a poll, taking a unit whose release
    /// is announced only afterwards: the waiter it woke ahead of the
    /// announcement covers that announcement, so the one behind it is not
    /// woken too and cannot overtake it.
    /// A release announced while the first waiter's poll is on its way, and
    /// the poll gets that credential: the announcement woke the first waiter,
    /// and its wake-up goes to the second, but no further. Before, the third
    /// was woken too, and when the first gave the credential back before the
    /// second had asked, the third could take it first.
    #[test]
    fn an_announcement_during_a_poll_that_wins_wakes_only_the_next_waiter() {
        let queue = WaitQueue::new(true, false);
        let epoch = queue.epoch();
        let (first, _) = queue.join(epoch, None, false);
        let (second, _) = queue.join(epoch, None, false);
        let (third, _) = queue.join(epoch, None, false);
        first.trying();
        queue.freed_one();
        assert_eq!(awake(&queue), [true, false, false], "the first is told");
        first.served(true);
        assert_eq!(
            awake(&queue),
            [true, false],
            "the second is woken, not the third"
        );
        // The first gives the credential back before the second has asked:
        // that wakes no one else, and the second asks first.
        queue.freed_one();
        assert_eq!(awake(&queue), [true, false]);
        assert!(second.trying().freed);
        assert!(!third.trying().freed);
    }

    #[test]
    fn an_announcement_after_a_poll_does_not_wake_a_second_waiter() {
        let queue = WaitQueue::new(true, false);
        let epoch = queue.epoch();
        let (first, _) = queue.join(epoch, None, false);
        let (second, _) = queue.join(epoch, None, false);
        let (_third, _) = queue.join(epoch, None, false);
        // The first in line asks at once and finds nothing; later its timer
        // wakes it (no release was announced) and it is served.
        first.trying();
        first.busy(None);
        assert!(
            !first.trying().freed,
            "woken by its timer, not by a release"
        );
        first.served(true);
        assert_eq!(awake(&queue), [true, false], "the next waiter is woken");
        queue.freed_one();
        assert_eq!(awake(&queue), [true, false], "and no one else");
        // Once it has asked the store, an announcement wakes the next one.
        assert!(second.trying().freed);
        queue.freed_one();
        assert_eq!(awake(&queue), [true, false]);
    }

    /// Without polling (the memory store), every announcement wakes a waiter.
    #[test]
    fn without_polling_every_announcement_wakes_a_waiter() {
        let queue = WaitQueue::new(false, false);
        let epoch = queue.epoch();
        let (first, _) = queue.join(epoch, None, false);
        let (_second, _) = queue.join(epoch, None, false);
        let (_third, _) = queue.join(epoch, None, false);
        first.trying();
        first.served(true);
        queue.freed_one();
        assert_eq!(awake(&queue), [true, true]);
    }
}
