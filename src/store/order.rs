//! Work that goes on after its caller left, and the calls that must see it.
//!
//! A lease dropped without a release, or a grant whose caller left, is
//! finished by work of its own. A store that runs calls one after another
//! (one thread, one lock) makes every later call see that work's effect by
//! itself; for one that runs calls side by side (a Postgres store's tasks)
//! the pool makes each call wait, before it starts, for the work begun
//! before it. Work begun after a call does not hold it up, so a call never
//! waits for itself.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The work in flight, by the order it began in.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    state: Mutex<State>,
    /// How many pieces of work are running: calls read it without the lock,
    /// and nearly always find zero.
    running: AtomicUsize,
    finished: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// How many pieces of work have begun so far.
    begun: u64,
    /// The numbers of those not yet finished.
    running: BTreeSet<u64>,
}

/// A piece of work, counted from [`InFlight::begin`] until this is dropped.
#[derive(Debug)]
pub(crate) struct Work {
    in_flight: Arc<InFlight>,
    number: u64,
}

/// The work in flight when a call began: the call waits for it with
/// [`InFlight::finished_before`].
#[derive(Debug, Clone, Copy)]
struct Mark(Option<u64>);

impl InFlight {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: each change is
        // one insert or one remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a piece of work as begun now: calls marked after this wait
    /// until the returned [`Work`] is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Work {
        let mut state = self.state();
        let number = state.begun;
        state.begun += 1;
        state.running.insert(number);
        self.running.fetch_add(1, Ordering::SeqCst);
        Work {
            in_flight: self.clone(),
            number,
        }
    }

    /// Marks the start of a call. Costs one atomic load when nothing runs.
    fn mark(&self) -> Mark {
        if self.running.load(Ordering::SeqCst) == 0 {
            return Mark(None);
        }
        Mark(Some(self.state().begun))
    }

    fn done_before(&self, mark: u64) -> bool {
        self.state()
            .running
            .first()
            .is_none_or(|&first| first >= mark)
    }

    /// Waits until every piece of work begun before now has finished. Costs
    /// one atomic load when nothing runs; only a real wait is a boxed future,
    /// so a caller's future does not carry the wait's state.
    pub(crate) async fn finished_before_now(&self) {
        let mark = self.mark();
        if let Mark(Some(before)) = mark {
            if !self.done_before(before) {
                Box::pin(self.finished_before(mark)).await;
            }
        }
    }

    /// Waits until every piece of work begun before `mark` has finished.
    async fn finished_before(&self, mark: Mark) {
        let Mark(Some(mark)) = mark else {
            return;
        };
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
        self.in_flight.state().running.remove(&self.number);
        self.in_flight.running.fetch_sub(1, Ordering::SeqCst);
        self.in_flight.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn finishes(in_flight: &InFlight, mark: Mark) -> bool {
        tokio::time::timeout(Duration::from_millis(50), in_flight.finished_before(mark))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_call_waits_for_work_begun_before_it_and_not_after() {
        let in_flight = Arc::new(InFlight::default());
        let earlier = in_flight.begin();
        let mark = in_flight.mark();
        let later = in_flight.begin();
        assert!(!finishes(&in_flight, mark).await, "earlier work is running");
        drop(earlier);
        assert!(finishes(&in_flight, mark).await, "only later work is left");
        drop(later);
        assert!(finishes(&in_flight, in_flight.mark()).await);
    }

    #[tokio::test]
    async fn a_waiting_call_wakes_when_the_work_finishes() {
        let in_flight = Arc::new(InFlight::default());
        let work = in_flight.begin();
        let mark = in_flight.mark();
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.finished_before(mark).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(work);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_mark_with_nothing_running_waits_for_nothing() {
        let in_flight = Arc::new(InFlight::default());
        let mark = in_flight.mark();
        let _later = in_flight.begin();
        assert!(finishes(&in_flight, mark).await);
    }
}
