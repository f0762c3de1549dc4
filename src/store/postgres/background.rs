//! Work that goes on after its caller left, in the order it was started.
//!
//! A dropped lease is released by a task of its own, and a grant whose caller
//! left is released by the task that made it. On the other stores every later
//! call sees the effect of such work, because one thread runs the calls in
//! order; here each call instead waits, before it starts, for the background
//! work begun before it. Work begun after a call does not hold it up, so a
//! call never waits for itself.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The background work in flight, by the order it began in.
#[derive(Debug, Default)]
pub(super) struct Background {
    state: Mutex<State>,
    finished: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// How many pieces of work have begun so far.
    begun: u64,
    /// The numbers of those not yet finished.
    running: BTreeSet<u64>,
}

/// A piece of background work, counted from [`Background::begin`] until this
/// is dropped.
#[derive(Debug)]
pub(super) struct Work {
    background: Arc<Background>,
    number: u64,
}

/// The work in flight when a call began: the call waits for it with
/// [`Background::finished_before`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark(u64);

impl Background {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: each change is
        // one insert or one remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a piece of background work as begun now: calls marked after
    /// this wait until the returned [`Work`] is dropped.
    pub(super) fn begin(self: &Arc<Self>) -> Work {
        let mut state = self.state();
        let number = state.begun;
        state.begun += 1;
        state.running.insert(number);
        Work {
            background: self.clone(),
            number,
        }
    }

    /// Marks the start of a call.
    pub(super) fn mark(&self) -> Mark {
        Mark(self.state().begun)
    }

    fn done_before(&self, mark: Mark) -> bool {
        self.state()
            .running
            .first()
            .is_none_or(|&first| first >= mark.0)
    }

    /// Waits until every piece of work begun before `mark` has finished.
    pub(super) async fn finished_before(&self, mark: Mark) {
        // Nearly always: nothing to wait for, and no waiter to register.
        if self.done_before(mark) {
            return;
        }
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if self.done_before(mark) {
                return;
            }
            finished.await;
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.background.state().running.remove(&self.number);
        self.background.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn finishes(background: &Background, mark: Mark) -> bool {
        tokio::time::timeout(Duration::from_millis(50), background.finished_before(mark))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_call_waits_for_work_begun_before_it_and_not_after() {
        let background = Arc::new(Background::default());
        let earlier = background.begin();
        let mark = background.mark();
        let later = background.begin();
        assert!(
            !finishes(&background, mark).await,
            "earlier work is running"
        );
        drop(earlier);
        assert!(finishes(&background, mark).await, "only later work is left");
        drop(later);
        assert!(finishes(&background, background.mark()).await);
    }

    #[tokio::test]
    async fn a_waiting_call_wakes_when_the_work_finishes() {
        let background = Arc::new(Background::default());
        let work = background.begin();
        let mark = background.mark();
        let waiter = tokio::spawn({
            let background = background.clone();
            async move { background.finished_before(mark).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(work);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
