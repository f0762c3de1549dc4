//! A grant on its way back from the store, owned by the pool.
//!
//! When the caller leaves before the answer came (its acquire was cancelled
//! or timed out), the ticket hands the store's future to a task of its own,
//! which drives it to its end and gives back the lease it granted. The work
//! is counted among the pool's orphans until the lease is back, so calls
//! made after the caller left see it released. Stores have nothing to do
//! for a cancelled caller.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Result;
use crate::pool::Pool;
use crate::store::{GrantAnswer, GrantAttempt, Store};

type Answer = Pin<Box<dyn Future<Output = Result<GrantAnswer>> + Send>>;

/// The pool's hold on a grant the store has not answered yet.
pub(super) struct GrantTicket<'a, S: Store> {
    pool: &'a Pool<S>,
    /// Until the answer came.
    answer: Option<Answer>,
}

impl<'a, S: Store> GrantTicket<'a, S> {
    pub(super) fn new(pool: &'a Pool<S>, answer: Answer) -> Self {
        Self {
            pool,
            answer: Some(answer),
        }
    }
}

impl<S: Store> Future for GrantTicket<'_, S> {
    type Output = Result<GrantAnswer>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(answer) = self.answer.as_mut() else {
            return Poll::Pending;
        };
        let answer = std::task::ready!(answer.as_mut().poll(cx));
        self.answer = None;
        Poll::Ready(answer)
    }
}

impl<S: Store> Drop for GrantTicket<'_, S> {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        let pool = self.pool.clone();
        let work = pool.shared.books.orphans.begin();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to finish the grant on: the store hears that nobody
            // reads its answer and gives back what it granted (SQLite and
            // Postgres do); else the lease comes back when its TTL ends.
            return;
        };
        runtime.spawn(async move {
            let Ok(GrantAnswer { attempt, expired }) = answer.await else {
                return;
            };
            pool.report_expired(expired);
            match attempt {
                GrantAttempt::Granted(grant) => {
                    let token = grant.token();
                    // The pool never counted this lease, nor told anyone of it;
                    // waiters hear when it is back.
                    let receipt = pool.shared.books.quiet_receipt(token, work);
                    pool.shared.store.release_detached(token, receipt);
                }
                // A ticket taken for nobody leaves the line at once.
                GrantAttempt::Queued { seat, .. } => pool.leave_seat(seat),
                _ => {}
            }
        });
    }
}
