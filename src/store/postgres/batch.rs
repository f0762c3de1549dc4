//! Grants asked for at the same time share one statement.
//!
//! Each acquire statement is a transaction of its own, and on a busy server
//! its fixed cost (planning the executor, taking a snapshot, committing)
//! outweighs the rows it touches. So at most one batch per connection is in
//! flight; the grants asked for meanwhile wait in a queue, and the next free
//! runner takes them all (up to [`MAX_BATCH`]) into one statement. A lone
//! grant finds a runner free and goes at once, with the one-row statement.
//!
//! Releases are not batched: a release waits for the row locks it needs, and
//! two batches releasing the same credentials in different orders could
//! deadlock. An acquire never waits for a lock (`SKIP LOCKED`).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::error::Result;
use crate::store::Grant;

/// The most grants one statement makes.
pub(super) const MAX_BATCH: usize = 64;

/// A grant waiting for a statement: its TTL in ms, and where its answer goes
/// (a lease, or none when no credential was free).
pub(super) struct Asked {
    pub(super) ttl: Option<i64>,
    pub(super) reply: oneshot::Sender<Result<Option<Grant>>>,
}

/// The grants for one statement: their TTL in ms, and each grant.
pub(super) type Batch = (Option<i64>, Vec<Asked>);

/// The grants waiting for a statement, and how many runners take them.
#[derive(Debug)]
pub(super) struct GrantQueue {
    state: Mutex<State>,
    /// The most runners at once: one per connection.
    limit: usize,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Asked>,
    running: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("waiting", &self.waiting.len())
            .field("running", &self.running)
            .finish()
    }
}

impl GrantQueue {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            state: Mutex::default(),
            limit: limit.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a push, a pop or a count: it stays
        // consistent even if a holder panicked.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a grant. Returns true when the caller must start a runner,
    /// which takes [`GrantQueue::runner`] and calls [`Runner::next_batch`]
    /// until it returns `None`.
    pub(super) fn push(&self, asked: Asked) -> bool {
        let mut state = self.state();
        state.waiting.push_back(asked);
        if state.running < self.limit {
            state.running += 1;
            return true;
        }
        false
    }

    /// The runner that [`GrantQueue::push`] asked for, or the one that takes
    /// over from a runner that called [`Runner::hand_over`].
    pub(super) fn runner(&self) -> Runner<'_> {
        Runner {
            queue: self,
            stopped: false,
        }
    }
}

/// One of the runners counted by [`GrantQueue::push`]. It is counted until
/// it finds the queue empty, or until it is dropped (if its task panicked).
pub(super) struct Runner<'a> {
    queue: &'a GrantQueue,
    stopped: bool,
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            self.queue.state().running -= 1;
        }
    }
}

impl Runner<'_> {
    /// Leaves this runner's place, still counted, to the next call of
    /// [`GrantQueue::runner`].
    pub(super) fn hand_over(mut self) {
        self.stopped = true;
    }

    /// The grants for the next statement: the first waiting and every other
    /// with the same TTL, in the order they were asked for, at most
    /// [`MAX_BATCH`]. `None` when nothing waits: the runner has stopped, and
    /// the next grant pushed starts another.
    pub(super) fn next_batch(&mut self) -> Option<Batch> {
        let mut state = self.queue.state();
        let Some(first) = state.waiting.pop_front() else {
            state.running -= 1;
            self.stopped = true;
            return None;
        };
        let ttl = first.ttl;
        let mut batch = vec![first];
        if !state.waiting.is_empty() {
            let mut others = VecDeque::new();
            while let Some(asked) = state.waiting.pop_front() {
                if asked.ttl == ttl && batch.len() < MAX_BATCH {
                    batch.push(asked);
                } else {
                    others.push_back(asked);
                }
            }
            state.waiting = others;
        }
        Some((ttl, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(ttl: Option<i64>) -> (Asked, oneshot::Receiver<Result<Option<Grant>>>) {
        let (reply, answer) = oneshot::channel();
        (Asked { ttl, reply }, answer)
    }

    #[test]
    fn runners_start_up_to_the_limit_and_stop_when_nothing_waits() {
        let queue = GrantQueue::new(2);
        let mut answers = Vec::new();
        let mut started = 0;
        for _ in 0..5 {
            let (one, answer) = asked(Some(10));
            answers.push(answer);
            started += usize::from(queue.push(one));
        }
        assert_eq!(started, 2);
        let (mut first, mut second) = (queue.runner(), queue.runner());
        let (ttl, batch) = first.next_batch().expect("five wait");
        assert_eq!((ttl, batch.len()), (Some(10), 5));
        assert!(first.next_batch().is_none());
        assert!(second.next_batch().is_none());
        // Both runners stopped: the next grant starts one again.
        let (one, _answer) = asked(None);
        assert!(queue.push(one));
    }

    #[test]
    fn a_batch_takes_at_most_max_batch() {
        let queue = GrantQueue::new(1);
        let mut answers = Vec::new();
        for _ in 0..(MAX_BATCH + 3) {
            let (one, answer) = asked(Some(5));
            answers.push(answer);
            queue.push(one);
        }
        let mut runner = queue.runner();
        assert_eq!(runner.next_batch().unwrap().1.len(), MAX_BATCH);
        assert_eq!(runner.next_batch().unwrap().1.len(), 3);
        assert!(runner.next_batch().is_none());
    }

    #[test]
    fn a_batch_takes_the_first_ttl_in_the_order_asked() {
        let queue = GrantQueue::new(1);
        let mut answers = Vec::new();
        for index in 0..7 {
            let ttl = if index % 3 == 1 { None } else { Some(5) };
            let (one, answer) = asked(ttl);
            answers.push(answer);
            queue.push(one);
        }
        // Asked for: 0 1* 2 3 4* 5 6 (* without a TTL).
        let mut runner = queue.runner();
        let (ttl, batch) = runner.next_batch().unwrap();
        assert_eq!((ttl, batch.len()), (Some(5), 5));
        for (asked, expected) in batch.into_iter().zip([0, 2, 3, 5, 6]) {
            asked.reply.send(Ok(None)).unwrap_or(());
            assert!(answers[expected].try_recv().is_ok(), "answer {expected}");
        }
        let (ttl, batch) = runner.next_batch().unwrap();
        assert_eq!((ttl, batch.len()), (None, 2));
        for (asked, expected) in batch.into_iter().zip([1, 4]) {
            asked.reply.send(Ok(None)).unwrap_or(());
            assert!(answers[expected].try_recv().is_ok(), "answer {expected}");
        }
        assert!(runner.next_batch().is_none());
    }

    #[test]
    fn a_place_handed_over_stays_counted_until_the_next_runner_stops() {
        let queue = GrantQueue::new(1);
        let (one, _first) = asked(None);
        assert!(queue.push(one));
        let mut runner = queue.runner();
        let _batch = runner.next_batch().unwrap();
        let (two, _second) = asked(None);
        assert!(!queue.push(two), "the one place is taken");
        runner.hand_over();
        let (three, _third) = asked(None);
        assert!(!queue.push(three), "still taken after the hand-over");
        let mut next = queue.runner();
        assert_eq!(next.next_batch().unwrap().1.len(), 2);
        assert!(next.next_batch().is_none());
        let (four, _fourth) = asked(None);
        assert!(queue.push(four), "free once the runner stopped");
    }

    #[test]
    fn a_runner_dropped_without_stopping_frees_its_place() {
        let queue = GrantQueue::new(1);
        let (one, _answer) = asked(None);
        assert!(queue.push(one));
        drop(queue.runner());
        let (two, _answer) = asked(None);
        assert!(queue.push(two), "the dropped runner's place is free again");
    }
}
