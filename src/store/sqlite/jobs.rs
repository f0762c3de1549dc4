//! The requests the store thread serves: a grant, a release, any other call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::credential::ReleaseOutcome;
use crate::error::{Error, Result};
use crate::ids::LeaseToken;
use crate::store::{GrantAnswer, GrantAttempt, OnBusy, Receipt, Want};
use crate::time::{from_ms, to_ms};

use super::ctx::{Ctx, Failure};
use super::{leases, line};

/// A call other than a grant or a release, type-erased.
pub(crate) trait CallJob: Send {
    fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()>;
    fn fail(&mut self, error: Error);
    fn finish(self: Box<Self>);
}

/// A job that runs `work` and sends its result to `reply`.
pub(crate) struct Call<T, W> {
    work: W,
    reply: oneshot::Sender<Result<T>>,
    result: Option<Result<T>>,
    _permit: OwnedSemaphorePermit,
}

impl<T, W> Call<T, W>
where
    T: Send + 'static,
    W: FnMut(&mut Ctx<'_>) -> std::result::Result<T, Failure> + Send + 'static,
{
    pub(crate) fn job(
        work: W,
        reply: oneshot::Sender<Result<T>>,
        permit: OwnedSemaphorePermit,
    ) -> Job {
        Job::Call(Box::new(Self {
            work,
            reply,
            result: None,
            _permit: permit,
        }))
    }
}

impl<T, W> CallJob for Call<T, W>
where
    T: Send + 'static,
    W: FnMut(&mut Ctx<'_>) -> std::result::Result<T, Failure> + Send + 'static,
{
    fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        match (self.work)(ctx) {
            Ok(value) => self.result = Some(Ok(value)),
            Err(Failure::Refused(error)) => self.result = Some(Err(error)),
            Err(Failure::Sql(error)) => return Err(error),
        }
        Ok(())
    }

    fn fail(&mut self, error: Error) {
        self.result = Some(Err(error));
    }

    fn finish(self: Box<Self>) {
        if let Some(result) = self.result {
            let _ = self.reply.send(result);
        }
    }
}

/// A release. It is never lost: when its transaction fails it is tried
/// again, until it commits or is refused (the lease is not held). The
/// caller hears the outcome, or, once it has failed for `patience`, that it
/// is still pending; the receipt is completed when it is decided.
pub(crate) struct ReleaseJob {
    lease: LeaseToken,
    outcome: ReleaseOutcome,
    reply: Option<oneshot::Sender<Result<Arc<str>>>>,
    receipt: Option<Receipt>,
    result: Option<Result<Arc<str>>>,
    failed: Option<Error>,
    first_failure: Option<Instant>,
    patience: Duration,
}

impl ReleaseJob {
    /// A release whose caller may wait for `reply`; its receipt is
    /// completed when it is decided.
    pub(crate) fn job(
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        reply: Option<oneshot::Sender<Result<Arc<str>>>>,
        receipt: Receipt,
        patience: Duration,
    ) -> Job {
        Job::Release(Box::new(Self {
            lease,
            outcome,
            reply,
            receipt: Some(receipt),
            result: None,
            failed: None,
            first_failure: None,
            patience,
        }))
    }

    /// The release of a lease granted to a caller that left before the
    /// reply came: no one waits for it, and no pool counted it.
    pub(crate) fn unclaimed(lease: LeaseToken) -> Self {
        Self {
            lease,
            outcome: ReleaseOutcome::Success,
            reply: None,
            receipt: None,
            result: None,
            failed: None,
            first_failure: None,
            patience: Duration::ZERO,
        }
    }

    fn pending(&self, error: &Error) -> Error {
        let (location, reason) = match error {
            Error::Transaction { location, reason } => (location.clone(), reason.clone()),
            other => (String::from("the SQLite store"), other.to_string()),
        };
        Error::ReleasePending {
            location,
            lease_id: self.lease.lease_id(),
            reason,
        }
    }
}

impl ReleaseJob {
    pub(crate) fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        self.failed = None;
        self.result = Some(match leases::release(ctx, self.lease, &self.outcome) {
            Ok(name) => {
                // The unit goes to the first ticket waiting, if one is.
                line::serve(ctx)?;
                Ok(name)
            }
            Err(Failure::Refused(error)) => Err(error),
            Err(Failure::Sql(error)) => return Err(error),
        });
        Ok(())
    }

    pub(crate) fn fail(&mut self, error: Error, transient: bool) {
        if transient {
            self.result = None;
            self.failed = Some(error);
            // Calls made from now on need not wait for this release.
            if let Some(receipt) = self.receipt.as_mut() {
                receipt.retrying();
            }
        } else {
            // Trying again cannot help: the caller hears the error, and the
            // lease comes back when it expires.
            tracing::warn!(lease_id = %self.lease.lease_id(), %error, "a release failed for good; the lease comes back when it expires");
            self.failed = None;
            self.result = Some(Err(error));
            self.receipt.take();
        }
    }

    /// Replies and completes the receipt; returns the job when it must be
    /// tried again.
    pub(crate) fn finish(mut self: Box<Self>) -> Option<Box<Self>> {
        if let Some(error) = self.failed.take() {
            let first = *self.first_failure.get_or_insert_with(Instant::now);
            if first.elapsed() >= self.patience {
                if let Some(reply) = self.reply.take() {
                    let _ = reply.send(Err(self.pending(&error)));
                }
            }
            tracing::warn!(lease_id = %self.lease.lease_id(), %error, "a release could not be committed; trying again");
            return Some(self);
        }
        let Some(result) = self.result.take() else {
            return Some(self);
        };
        if let Some(receipt) = self.receipt.take() {
            match &result {
                Ok(name) => receipt.released(name),
                Err(_) => receipt.refused(),
            }
        }
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
        None
    }
}

/// A grant: like [`Call`], but a lease whose caller is gone comes back.
pub(crate) struct GrantJob {
    ttl: Option<Duration>,
    want: Want,
    on_busy: OnBusy,
    reply: Option<oneshot::Sender<Result<GrantAnswer>>>,
    result: Option<Result<GrantAnswer>>,
    _permit: OwnedSemaphorePermit,
}

impl GrantJob {
    pub(crate) fn job(
        ttl: Option<Duration>,
        want: Want,
        on_busy: OnBusy,
        reply: oneshot::Sender<Result<GrantAnswer>>,
        permit: OwnedSemaphorePermit,
    ) -> Job {
        Job::Grant(Self {
            ttl,
            want,
            on_busy,
            reply: Some(reply),
            result: None,
            _permit: permit,
        })
    }

    pub(crate) fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        // A caller that left before its turn gets nothing: requests it sent
        // later may be in this very batch, and must not see a lease it holds.
        if self.reply.as_ref().is_none_or(oneshot::Sender::is_closed) {
            return Ok(());
        }
        let expired = std::mem::take(&mut ctx.expired);
        self.result = Some(match leases::grant(ctx, self.ttl, &self.want) {
            Ok(GrantAttempt::Busy { retry_at }) if self.on_busy == OnBusy::TakeTicket => {
                let attempt = line::take_ticket(ctx, self.ttl, &self.want, retry_at)?;
                // Later grants of this batch queue behind a weighted
                // ticket too, as the next batch's line would have them.
                line::hold_up_for(ctx, &self.want)?;
                Ok(GrantAnswer { attempt, expired })
            }
            Ok(attempt) => Ok(GrantAnswer { attempt, expired }),
            Err(Failure::Refused(error)) => Err(error),
            Err(Failure::Sql(error)) => return Err(error),
        });
        Ok(())
    }

    pub(crate) fn fail(&mut self, error: Error) {
        self.result = Some(Err(error));
    }

    /// Replies; when nobody took the reply, returns the job that gives
    /// back what the grant took: its lease, or its ticket.
    pub(crate) fn finish(self) -> Option<Job> {
        let (Some(reply), Some(result)) = (self.reply, self.result) else {
            return None;
        };
        match reply.send(result) {
            Ok(()) => None,
            Err(Ok(GrantAnswer { attempt, .. })) => match attempt {
                GrantAttempt::Granted(grant) => {
                    Some(Job::Release(Box::new(ReleaseJob::unclaimed(grant.token()))))
                }
                GrantAttempt::Queued { seat, .. } => {
                    // Handed a credential in the batch that took the ticket:
                    // the lease goes back; else the ticket leaves the line.
                    Some(match seat.close() {
                        (_, Some(grant)) => {
                            Job::Release(Box::new(ReleaseJob::unclaimed(grant.token())))
                        }
                        (ticket, None) => Job::Leave(ticket),
                    })
                }
                _ => None,
            },
            Err(_) => None,
        }
    }

    /// When the store expects a change, for a plain grant that found
    /// nothing free. (A grant for a scope or a name that found nothing says
    /// nothing about the others.)
    pub(crate) fn busy_until(&self) -> Option<Option<i64>> {
        if !self.want.is_any() {
            return None;
        }
        match &self.result {
            Some(Ok(GrantAnswer {
                attempt: GrantAttempt::Busy { retry_at } | GrantAttempt::Queued { retry_at, .. },
                ..
            })) => Some(retry_at.map(to_ms)),
            _ => None,
        }
    }

    /// Answers "busy" without running; false for a grant that must take a
    /// ticket, which only a transaction can do.
    pub(crate) fn answer_busy(&mut self, retry_at: Option<i64>) -> bool {
        if self.on_busy == OnBusy::TakeTicket || !self.want.is_any() {
            return false;
        }
        let retry_at = retry_at.map(from_ms);
        self.result = Some(Ok(GrantAttempt::Busy { retry_at }.into()));
        true
    }
}

/// The first waiter's poll of the waiting line (see [`line::poll`]).
pub(crate) struct PollJob {
    reply: oneshot::Sender<Result<Option<i64>>>,
    result: Option<Result<Option<i64>>>,
    _permit: OwnedSemaphorePermit,
}

impl PollJob {
    pub(crate) fn job(
        reply: oneshot::Sender<Result<Option<i64>>>,
        permit: OwnedSemaphorePermit,
    ) -> Job {
        Job::Poll(Self {
            reply,
            result: None,
            _permit: permit,
        })
    }

    fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        self.result = Some(match line::poll(ctx) {
            Ok(retry_at) => Ok(retry_at),
            Err(Failure::Refused(error)) => Err(error),
            Err(Failure::Sql(error)) => return Err(error),
        });
        Ok(())
    }
}

/// One request to the store thread.
pub(crate) enum Job {
    /// A grant: only grants can be answered "busy" without a transaction.
    Grant(GrantJob),
    /// A release, tried again until it commits or is refused.
    Release(Box<ReleaseJob>),
    /// The first waiter's poll of the line: only polls can be answered
    /// "busy" without a transaction, besides grants.
    Poll(PollJob),
    /// A ticket whose waiter gave up, to remove.
    Leave(u64),
    /// The thread's own claim of what other processes handed to this
    /// store's tickets; nobody waits for it.
    Claim,
    /// Any other call.
    Call(Box<dyn CallJob>),
}

impl Job {
    /// Runs inside the open transaction; keeps its result for `finish`.
    pub(crate) fn run(&mut self, ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
        match self {
            Job::Grant(job) => job.run(ctx),
            Job::Release(job) => job.run(ctx),
            Job::Poll(job) => job.run(ctx),
            Job::Leave(ticket) => match line::leave(ctx, *ticket) {
                Ok(()) | Err(Failure::Refused(_)) => Ok(()),
                Err(Failure::Sql(error)) => Err(error),
            },
            Job::Claim => line::claim_handed(ctx),
            Job::Call(job) => job.run(ctx),
        }
    }

    /// Records that the transaction failed, so `finish` reports that instead.
    /// `transient` says whether trying again may succeed (a lock, a full
    /// disk) or not (a constraint, a corrupt file).
    pub(crate) fn fail(&mut self, error: Error, transient: bool) {
        match self {
            Job::Grant(job) => job.fail(error),
            Job::Release(job) => job.fail(error, transient),
            Job::Poll(job) => job.result = Some(Err(error)),
            // The ticket expires without its heartbeat; the next poll claims.
            Job::Leave(_) | Job::Claim => {}
            Job::Call(job) => job.fail(error),
        }
    }

    /// Replies to the caller. Says what the thread must do next: release
    /// the lease of a grant whose caller is gone, or try a release again.
    pub(crate) fn finish(self) -> Finished {
        match self {
            Job::Grant(job) => match job.finish() {
                Some(give_back) => Finished::Unclaimed(give_back),
                None => Finished::Done,
            },
            Job::Poll(job) => {
                if let Some(result) = job.result {
                    let _ = job.reply.send(result);
                }
                Finished::Done
            }
            Job::Leave(_) | Job::Claim => Finished::Done,
            Job::Release(job) => match job.finish() {
                Some(job) => Finished::Retry(Job::Release(job)),
                None => Finished::Done,
            },
            Job::Call(job) => {
                job.finish();
                Finished::Done
            }
        }
    }

    /// Replies "busy" without a transaction, when the thread knows nothing
    /// changed since the last time nothing was free; false if this is not
    /// a grant.
    pub(crate) fn answer_busy(&mut self, retry_at: Option<i64>) -> bool {
        match self {
            Job::Grant(job) => job.answer_busy(retry_at),
            Job::Poll(job) => {
                job.result = Some(Ok(retry_at));
                true
            }
            _ => false,
        }
    }

    /// For a grant that found nothing free: when the store expects a change.
    pub(crate) fn busy_until(&self) -> Option<Option<i64>> {
        match self {
            Job::Grant(job) => job.busy_until(),
            Job::Poll(PollJob {
                result: Some(Ok(retry_at)),
                ..
            }) => Some(*retry_at),
            _ => None,
        }
    }
}

/// What is left to do after a job replied.
pub(crate) enum Finished {
    Done,
    /// A grant whose caller is gone: its lease must be released at once, or
    /// its ticket removed; this job does it.
    Unclaimed(Job),
    /// A release that could not commit: it must be tried again.
    Retry(Job),
}
