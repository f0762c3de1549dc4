//! One waiting line per thing asked for ([`Want`]): the plain ask's, and
//! one for each scope or named credential that tasks wait for. Within a
//! line, first come, first served; a scope that is blocked holds up only
//! its own line, not the tasks behind it that ask for another.
//!
//! A freed unit may serve any line, so every line hears of it. The plain
//! line wakes one waiter per unit, as any unit serves any of its waiters.
//! Another line wakes its first waiter to ask in turn ([`WaitQueue::wake_in_turn`]):
//! served, it wakes the next; not (the unit was not for its scope or its
//! name), the relay ends there. So a unit that serves nobody in a line
//! never wakes a second waiter of it past the first, who could then be
//! served before it. (A store that keeps its own line hands units to its
//! tickets itself: a release wakes no line here.)
//!
//! A weighted ask waits in the line of the same ask for one unit: first
//! come, first served among both. While one waits in a line, that line too
//! wakes its first waiter to ask in turn, so a unit freed never goes past
//! a weighted waiter at the head to a lighter one behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::pool::wait::WaitQueue;
use crate::store::Want;

#[derive(Debug, Default)]
pub(crate) struct Lines {
    polls: bool,
    lined: bool,
    plain: WaitQueue,
    others: Mutex<HashMap<Want, Arc<Numbered>>>,
    /// The number of the last line made, so that a line made again is
    /// never taken for one forgotten.
    numbered: std::sync::atomic::AtomicU64,
    /// How many lines `others` holds; read without the lock on the fast path.
    other_lines: AtomicUsize,
}

/// A line for a scope or a name, with the number it was made with.
#[derive(Debug)]
pub(crate) struct Numbered {
    number: u64,
    queue: WaitQueue,
}

impl std::ops::Deref for Numbered {
    type Target = WaitQueue;

    fn deref(&self) -> &WaitQueue {
        &self.queue
    }
}

/// A line entered ([`Lines::enter`]); dropped, it leaves.
#[derive(Debug)]
pub(crate) struct Entered<'a> {
    lines: &'a Lines,
    want: &'a Want,
    line: Option<Line<'a>>,
}

/// A line looked at ([`Lines::look`]): which one, and its epoch then.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// The line's number; 0 for the plain line.
    line: u64,
    epoch: u64,
}

impl Entered<'_> {
    /// The epoch to join this line with, given what was seen before asking
    /// the store: a line that was not there then (or was forgotten and
    /// made again since) heard of no release, so its waiter asks again at
    /// once.
    pub(crate) fn epoch_seen(&self, seen: Option<Seen>) -> u64 {
        let line = match &self.line {
            Some(Line::Other(queue)) => queue.number,
            _ => 0,
        };
        match seen {
            Some(seen) if seen.line == line => seen.epoch,
            _ => u64::MAX,
        }
    }
}

impl std::ops::Deref for Entered<'_> {
    type Target = WaitQueue;

    fn deref(&self) -> &WaitQueue {
        match &self.line {
            Some(line) => line,
            None => &self.lines.plain,
        }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            self.lines.tidy(self.want, line);
        }
    }
}

/// A line to wait in.
#[derive(Debug)]
pub(crate) enum Line<'a> {
    Plain(&'a WaitQueue),
    Other(Arc<Numbered>),
}

impl std::ops::Deref for Line<'_> {
    type Target = WaitQueue;

    fn deref(&self) -> &WaitQueue {
        match self {
            Line::Plain(queue) => queue,
            Line::Other(queue) => &queue.queue,
        }
    }
}

impl Lines {
    pub(crate) fn new(polls: bool, lined: bool) -> Self {
        Self {
            polls,
            lined,
            plain: WaitQueue::new(polls, lined),
            ..Self::default()
        }
    }

    fn others(&self) -> MutexGuard<'_, HashMap<Want, Arc<Numbered>>> {
        self.others
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The line of `want`, made when nobody waits for it yet.
    #[inline]
    fn line(&self, want: &Want) -> Line<'_> {
        if want.is_unscoped_any() {
            return Line::Plain(&self.plain);
        }
        let mut others = self.others();
        let queue = others
            .entry(want.one_unit())
            .or_insert_with(|| {
                Arc::new(Numbered {
                    number: self.numbered.fetch_add(1, SeqCst) + 1,
                    queue: WaitQueue::new(self.polls, self.lined),
                })
            })
            .clone();
        self.other_lines.store(others.len(), SeqCst);
        Line::Other(queue)
    }

    /// The line of `want` as it is now, without making it: which line it is
    /// and its epoch (`None`: there is none), and whether anyone waits in it.
    #[inline]
    pub(crate) fn look(&self, want: &Want) -> (Option<Seen>, bool) {
        if want.is_unscoped_any() {
            let seen = Seen {
                line: 0,
                epoch: self.plain.epoch(),
            };
            return (Some(seen), self.plain.is_empty());
        }
        if self.other_lines.load(SeqCst) == 0 {
            return (None, true);
        }
        match self.others().get(&*line_key(want)) {
            Some(queue) => {
                let seen = Seen {
                    line: queue.number,
                    epoch: queue.epoch(),
                };
                (Some(seen), queue.is_empty())
            }
            None => (None, true),
        }
    }

    /// Whether anyone waits in the line of `want` (without making it).
    #[inline]
    pub(crate) fn is_empty_for(&self, want: &Want) -> bool {
        if want.is_unscoped_any() {
            return self.plain.is_empty();
        }
        if self.other_lines.load(SeqCst) == 0 {
            return true;
        }
        self.others()
            .get(&*line_key(want))
            .is_none_or(|queue| queue.is_empty())
    }

    /// Enters the line of `want` (made when nobody waits for it yet); the
    /// line is forgotten when the last task that entered it leaves, also
    /// when its acquire is cancelled.
    pub(crate) fn enter<'a>(&'a self, want: &'a Want) -> Entered<'a> {
        Entered {
            lines: self,
            want,
            line: Some(self.line(want)),
        }
    }

    /// Forgets the line of `want` once nobody waits in it (and no one
    /// else holds it).
    fn tidy(&self, want: &Want, line: Line<'_>) {
        let Line::Other(queue) = line else {
            return;
        };
        drop(queue);
        let key = line_key(want);
        let mut others = self.others();
        if others
            .get(&*key)
            .is_some_and(|queue| Arc::strong_count(queue) == 1 && queue.is_empty())
        {
            others.remove(&*key);
            self.other_lines.store(others.len(), SeqCst);
        }
    }

    /// Every line, for a wake-up that concerns them all.
    fn each(&self, mut wake: impl FnMut(&WaitQueue)) {
        wake(&self.plain);
        if self.other_lines.load(SeqCst) > 0 {
            for queue in self.others().values() {
                wake(queue);
            }
        }
    }

    /// A unit was freed (see [`WaitQueue::freed_one`]).
    #[inline]
    pub(crate) fn freed_one(&self) {
        self.plain.freed_one();
        if !self.lined && self.other_lines.load(SeqCst) > 0 {
            self.freed_one_elsewhere();
        }
    }

    /// `units` units were freed at once: more than one, and the first
    /// waiter of every line asks in turn (on a store that keeps no line).
    #[inline]
    pub(crate) fn freed(&self, units: u32) {
        if units > 1 && !self.lined {
            self.wake_in_turn();
        } else {
            self.freed_one();
        }
    }

    #[inline(never)]
    fn freed_one_elsewhere(&self) {
        for queue in self.others().values() {
            queue.wake_in_turn();
        }
    }

    /// See [`WaitQueue::wake_in_turn`].
    pub(crate) fn wake_in_turn(&self) {
        self.each(WaitQueue::wake_in_turn);
    }

    /// See [`WaitQueue::wake_all`].
    pub(crate) fn wake_all(&self) {
        self.each(WaitQueue::wake_all);
    }

    /// How many tasks wait, in every line.
    pub(crate) fn len(&self) -> usize {
        let mut len = 0;
        self.each(|queue| len += queue.len());
        len
    }
}

/// The key of `want`'s line: the same ask for one unit, which weighted
/// and plain asks share; borrowed for a plain ask (no clone on the way).
fn line_key(want: &Want) -> std::borrow::Cow<'_, Want> {
    if want.is_weighted() {
        std::borrow::Cow::Owned(want.one_unit())
    } else {
        std::borrow::Cow::Borrowed(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line that nobody is in any more is forgotten, also when the task
    /// that entered it left without waiting (a cancelled acquire).
    #[test]
    fn a_line_is_forgotten_when_its_last_task_leaves() {
        let lines = Lines::new(false, false);
        let want = Want::scope("search").unwrap();
        let first = lines.enter(&want);
        let second = lines.enter(&want);
        assert_eq!(lines.other_lines.load(SeqCst), 1);
        drop(first);
        assert_eq!(lines.other_lines.load(SeqCst), 1, "one still in it");
        drop(second);
        assert_eq!(lines.other_lines.load(SeqCst), 0);
        assert!(lines.others().is_empty());
        let plain = Want::any();
        drop(lines.enter(&plain));
        assert!(
            lines.others().is_empty(),
            "the plain line is not kept there"
        );
    }

    /// What a caller saw of a line before it asked the store holds only
    /// for that same line: one forgotten and made again since heard of no
    /// release, so its new waiter asks the store at once.
    #[test]
    fn a_line_made_again_is_not_taken_for_the_one_seen() {
        let lines = Lines::new(false, false);
        let want = Want::scope("search").unwrap();
        let (nothing, empty) = lines.look(&want);
        assert!(nothing.is_none() && empty);
        let holder = lines.enter(&want);
        let (seen, _) = lines.look(&want);
        let same = lines.enter(&want);
        assert_eq!(same.epoch_seen(seen), holder.epoch(), "the same line");
        drop(same);
        drop(holder);
        let again = lines.enter(&want);
        assert_eq!(again.epoch_seen(seen), u64::MAX, "a new line");
        assert_eq!(again.epoch_seen(nothing), u64::MAX);
        let plain = Want::any();
        let (seen, _) = lines.look(&plain);
        assert_eq!(lines.enter(&plain).epoch_seen(seen), lines.plain.epoch());
    }
}
