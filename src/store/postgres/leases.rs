//! The lease path on Postgres: grants (batched), releases (tried again
//! until they commit), renewals, and the reclaiming of expired leases.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::credential::{Credential, ReleaseOutcome, Secret};
use crate::error::{Error, Result};
use crate::ids::{CredentialId, LeaseId, LeaseToken};
use crate::store::{ExpiredLease, Grant, GrantAnswer, GrantAttempt, Line, OnBusy, Receipt, Want};
use crate::time::{duration_ms, earliest, from_ms, now_ms};

use super::batch::{Asked, Batch, GrantQueue};
use super::connections::{Conn, Connections};
use super::rows::Columns;
use super::sql::Sql;
use super::RECLAIM_INTERVAL;

/// How many times a grant asks again when a free credential was locked by
/// another transaction at the moment it looked.
const LOCKED_RETRIES: usize = 3;
/// The longest duration, in ms, the store sends: now plus this still fits
/// in a `bigint`, so `Duration::MAX` saturates instead of overflowing in SQL.
const MAX_MS: i64 = i64::MAX / 4;
/// How long a release that cannot commit keeps its caller waiting before
/// the caller hears [`Error::ReleasePending`]; the store goes on trying.
const RELEASE_PATIENCE: Duration = Duration::from_secs(5);
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What every task of the store shares.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) connections: Connections,
    pub(super) sql: Arc<Sql>,
    pub(super) pool: String,
    pub(super) location: String,
    pub(super) channel: String,
    /// When this process last reclaimed expired leases, in ms.
    pub(super) last_reclaim: AtomicI64,
    /// The grants waiting to share an acquire statement.
    pub(super) grants: GrantQueue,
    /// How many acquire statements were shared by more than one grant.
    pub(super) shared_statements: AtomicU64,
    /// The runtime the store was opened on: background work runs there, so
    /// a lease dropped on a thread without a runtime is still released.
    pub(super) runtime: tokio::runtime::Handle,
    /// Set when the store is dropped: releases stop being tried again.
    pub(super) closed: AtomicBool,
    /// This store's waiters' seats in the line the database keeps.
    pub(super) line: Arc<Line>,
    /// How long a ticket lives without a heartbeat, and the claim deadline
    /// of a credential handed to a ticket, in ms.
    pub(super) ticket_ttl: i64,
    /// When this store last renewed its tickets, in ms.
    pub(super) last_heartbeat: AtomicI64,
    /// When the first waiter last polled the whole line, in ms.
    pub(super) last_poll: AtomicI64,
    /// The store's own work on the pool's behalf, while it runs.
    pub(super) background: Arc<Background>,
    /// Whether the last release found tickets waiting: the next one then
    /// hands its unit on in the same statement.
    pub(super) tickets_seen: AtomicBool,
    /// The seated tickets the last heartbeat found gone.
    pub(super) missing_tickets: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// The schema's name (checked), for the statements built on demand.
    pub(super) schema: String,
    /// Whether a grant here asked for a scope or a name: then this store's
    /// tickets may wait for what a plain grant does not need, and a plain
    /// grant asks the store even while they wait.
    pub(super) wanted: AtomicBool,
}

/// The store's own work on the pool's behalf that is running: handing
/// credentials to the line, and giving back what reached a waiter that had
/// left (see [`Leases::settled`](crate::store::Leases::settled)).
#[derive(Debug, Default)]
pub(super) struct Background {
    running: std::sync::atomic::AtomicUsize,
    finished: tokio::sync::Notify,
}

/// One piece of [`Background`] work, counted until dropped.
pub(super) struct BackgroundWork(Arc<Background>);

impl Background {
    pub(super) fn begin(self: &Arc<Self>) -> BackgroundWork {
        self.running.fetch_add(1, Ordering::SeqCst);
        BackgroundWork(self.clone())
    }

    pub(super) async fn settled(&self) {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            finished.await;
        }
    }
}

impl Drop for BackgroundWork {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.finished.notify_waiters();
        }
    }
}

/// What a release found.
pub(super) struct Released {
    name: Arc<str>,
    /// Tickets wait that nothing was handed to: `serve` should run.
    line_waits: bool,
    /// The ticket of a waiter seated here that the release handed the
    /// freed unit to, and its grant, to hand over.
    claimed: Option<(u64, Grant)>,
}

/// How many of the lowest tickets seated here a release may claim in its
/// own statement; the lowest ticket waiting is nearly always among them,
/// and one that is not is handed its lease and claimed a moment later.
const CLAIMABLE_IN_RELEASE: usize = 32;

/// A duration in ms for SQL, saturated at [`MAX_MS`].
pub(super) fn ms(duration: Duration) -> i64 {
    duration_ms(duration).min(MAX_MS)
}

pub(super) fn grant_from(row: &Row) -> Result<Grant> {
    grant_from_at(row, 0)
}

/// A grant from the columns of `acquire`, starting at column `first`.
pub(super) fn grant_from_at(row: &Row, first: usize) -> Result<Grant> {
    Ok(Grant {
        credential: Credential::new(
            CredentialId::new(row.unsigned(first, "credentials.id")?),
            row.column::<String>(first + 1, "credentials.name")?.into(),
            Secret::new(row.column::<String>(first + 2, "credentials.secret")?),
            row.column(first + 3, "credentials.extra")?,
            row.unsigned32(first + 4, "credentials.capacity")?,
        ),
        lease_id: LeaseId::new(row.unsigned(first + 5, "leases.id")?),
        acquired_at: from_ms(row.column(first + 6, "leases.acquired_at")?),
        expires_at: row
            .column::<Option<i64>>(first + 7, "leases.expires_at")?
            .map(from_ms),
        units: 1,
    })
}

impl Inner {
    /// Releases `lease` on a task of its own, on the store's runtime. When that runtime has shut
    /// down, the task (and with it the receipt) is dropped, and the lease
    /// comes back when it expires.
    pub(super) fn release_in_background(self: &Arc<Self>, lease: LeaseToken, receipt: Receipt) {
        let inner = self.clone();
        self.spawn_background(async move {
            inner
                .release_until_done(lease, ReleaseOutcome::Success, receipt, None)
                .await;
        });
    }

    /// Runs `work` on the store's runtime, counted in [`Background`] from
    /// now until it ends, so that a graceful shutdown waits for it.
    pub(super) fn spawn_background(&self, work: impl Future<Output = ()> + Send + 'static) {
        let counted = self.background.begin();
        self.runtime.spawn(async move {
            let _counted = counted;
            work.await;
        });
    }

    /// Releases `lease`, trying again with a growing pause while the server
    /// cannot be reached or fails, until the release commits, is refused, or
    /// the store is dropped. Completes the receipt then, and answers `reply`
    /// with the outcome, or with [`Error::ReleasePending`] once it has
    /// failed for [`RELEASE_PATIENCE`].
    ///
    /// Calls made later wait for the release only while its first attempt
    /// runs ([`Receipt::retrying`]), so a release that waits out an outage
    /// holds up no other call.
    pub(super) async fn release_until_done(
        &self,
        lease: LeaseToken,
        outcome: ReleaseOutcome,
        mut receipt: Receipt,
        mut reply: Option<oneshot::Sender<Result<Arc<str>>>>,
    ) {
        let started = tokio::time::Instant::now();
        let mut pause = MIN_RETRY_PAUSE;
        let mut attempts = 0;
        let decided = loop {
            attempts += 1;
            match self.release(lease, outcome.clone()).await {
                Ok(Released {
                    name,
                    line_waits,
                    claimed,
                }) => {
                    // Counted before the pool hears of the release, so that a
                    // graceful shutdown waits for the hand-off too.
                    let _work = (line_waits || claimed.is_some()).then(|| self.background.begin());
                    receipt.released(&name);
                    if let Some((ticket, grant)) = claimed {
                        // Handed to a waiter seated here, in the release.
                        Box::pin(self.hand_over(ticket, grant)).await;
                    }
                    if line_waits {
                        // The unit goes to the first ticket waiting.
                        self.serve_line_now().await;
                    }
                    break Ok(name);
                }
                // Found gone on a retry: most likely the attempt whose answer
                // was lost had committed it (it may also have expired since).
                Err(Error::LeaseLost { credential, .. }) if attempts > 1 => {
                    let name: Arc<str> = credential.into();
                    receipt.released(&name);
                    break Ok(name);
                }
                Err(error @ Error::LeaseLost { .. }) => {
                    receipt.refused();
                    break Err(error);
                }
                Err(error) if !transient(&error) || self.closed.load(Ordering::SeqCst) => {
                    // Trying again cannot help (the schema was changed, say),
                    // or the store is gone: the lease expires in time.
                    tracing::warn!(%error, lease_id = %lease.lease_id(), "a release failed for good; the lease comes back when it expires");
                    drop(receipt);
                    break Err(error);
                }
                Err(error) => {
                    receipt.retrying();
                    tracing::warn!(%error, lease_id = %lease.lease_id(), "a release could not be committed; trying again");
                    if started.elapsed() >= RELEASE_PATIENCE {
                        if let Some(reply) = reply.take() {
                            let _ = reply.send(Err(Error::ReleasePending {
                                location: self.location.clone(),
                                lease_id: lease.lease_id(),
                                reason: error.to_string(),
                            }));
                        }
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(decided);
        }
    }

    /// A grant: a lease on a free credential, or why there is none.
    pub(super) async fn grant(
        self: &Arc<Self>,
        asked_ttl: Option<Duration>,
        want: &Want,
        on_busy: OnBusy,
    ) -> Result<GrantAnswer> {
        if want.is_weighted() {
            self.wanted.store(true, Ordering::Relaxed);
            return self.grant_units(asked_ttl, want, on_busy).await;
        }
        if !want.is_any() {
            self.wanted.store(true, Ordering::Relaxed);
            return self.grant_for(asked_ttl, want, on_busy).await;
        }
        // Waiters of this store are in line already, so the line is not
        // empty and no grant would be made: take a ticket behind them at
        // once (the first waiter's polls reclaim, and say when nothing is
        // enabled). Not when some of them wait for a scope or a name.
        if on_busy == OnBusy::TakeTicket
            && !self.line.is_empty()
            && !self.wanted.load(Ordering::Relaxed)
        {
            let attempt = self.take_ticket(asked_ttl, &Want::any(), None).await?;
            return Ok(attempt.into());
        }
        let ttl = asked_ttl.map(ms);
        let (mut granted, mut expired) = self.acquire_and_reclaim_if_due(ttl).await?;
        for _ in 0..LOCKED_RETRIES {
            if let Some(grant) = granted {
                return Ok(GrantAnswer {
                    attempt: GrantAttempt::Granted(grant),
                    expired,
                });
            }
            match self.why_busy(&mut expired, &Want::any()).await? {
                Some(retry_at) => {
                    let attempt = self
                        .busy(asked_ttl, &Want::any(), on_busy, retry_at)
                        .await?;
                    return Ok(GrantAnswer { attempt, expired });
                }
                // Something was free after all: ask again.
                None => granted = self.acquire(ttl).await?,
            }
        }
        let attempt = match granted {
            Some(grant) => GrantAttempt::Granted(grant),
            // Free credentials stayed locked by other transactions: ask soon.
            None => GrantAttempt::Busy {
                retry_at: Some(SystemTime::now() + Duration::from_millis(2)),
            },
        };
        Ok(GrantAnswer { attempt, expired })
    }

    /// A grant for a scope or a credential by name: one statement (not
    /// shared with others), then why nothing was free.
    async fn grant_for(
        self: &Arc<Self>,
        asked_ttl: Option<Duration>,
        want: &Want,
        on_busy: OnBusy,
    ) -> Result<GrantAnswer> {
        let ttl = asked_ttl.map(ms);
        let (scope, name) = (want.scope_key(), want.name());
        let mut expired = Vec::new();
        for _ in 0..LOCKED_RETRIES {
            let conn = self.connections.get().await?;
            let row = conn
                .client
                .query_opt(&conn.acquire_for, &[&self.pool, &ttl, &scope, &name])
                .await?;
            if let Some(row) = row {
                return Ok(GrantAnswer {
                    attempt: GrantAttempt::Granted(grant_from(&row)?),
                    expired,
                });
            }
            let Some(retry_at) = self.why_busy(&mut expired, want).await? else {
                // Something was free after all: ask again.
                continue;
            };
            let attempt = self.busy(asked_ttl, want, on_busy, retry_at).await?;
            return Ok(GrantAnswer { attempt, expired });
        }
        // Free credentials stayed locked by other transactions: ask soon.
        Ok(GrantAnswer {
            attempt: GrantAttempt::Busy {
                retry_at: Some(SystemTime::now() + Duration::from_millis(2)),
            },
            expired,
        })
    }

    /// A weighted grant (`grant_units` in the schema, which locks each
    /// candidate before it reads its limits), then why nothing was free.
    async fn grant_units(
        self: &Arc<Self>,
        asked_ttl: Option<Duration>,
        want: &Want,
        on_busy: OnBusy,
    ) -> Result<GrantAnswer> {
        let ttl = asked_ttl.map(ms);
        let (scope, name) = (want.scope_key(), want.name());
        let units = i32::try_from(want.units_asked()).unwrap_or(i32::MAX);
        let conn = self.connections.get().await?;
        let row = conn
            .client
            .query_opt(
                &self.sql.grant_units(),
                &[&self.pool, &ttl, &scope, &name, &units, &None::<i64>],
            )
            .await?;
        if let Some(row) = row {
            let mut grant = grant_from(&row)?;
            grant.units = want.units_asked();
            return Ok(GrantAttempt::Granted(grant).into());
        }
        let expired = self.reclaim(&conn).await?;
        let busy = conn
            .client
            .query_one(&self.sql.busy_units(), &[&self.pool, &scope, &name, &units])
            .await?;
        self.check_named(&busy, name)?;
        let mut retry_at = self.retry_at(&busy)?;
        let most = busy
            .column::<Option<i32>>(7, "most units")?
            .map_or(0, |most| most.max(0) as u32);
        if want.units_asked() > most {
            return Err(Error::TooManyUnits {
                units: want.units_asked(),
                most,
                named: name.is_some(),
                pool: self.pool.clone(),
            });
        }
        let quota_free: Option<i64> = busy.column(8, "quota allows")?;
        let quota_free = quota_free.filter(|&at| at != i64::MAX).map(from_ms);
        retry_at = earliest(retry_at, quota_free);
        let attempt = self.busy(asked_ttl, want, on_busy, retry_at).await?;
        Ok(GrantAnswer { attempt, expired })
    }

    /// Nothing was free for `want`: a ticket in the store's line, or the
    /// answer busy, as the caller asked.
    async fn busy(
        self: &Arc<Self>,
        asked_ttl: Option<Duration>,
        want: &Want,
        on_busy: OnBusy,
        retry_at: Option<SystemTime>,
    ) -> Result<GrantAttempt> {
        match on_busy {
            OnBusy::TakeTicket => self.take_ticket(asked_ttl, want, retry_at).await,
            OnBusy::Answer => Ok(GrantAttempt::Busy { retry_at }),
        }
    }

    /// From a row of `busy_for` (or `busy_units`): fails when the
    /// credential asked for by name is unknown or disabled.
    fn check_named(&self, busy: &tokio_postgres::Row, name: Option<&str>) -> Result<()> {
        let Some(name) = name else {
            return Ok(());
        };
        if !busy.column::<bool>(5, "known")? {
            return Err(Error::UnknownCredential {
                name: name.to_string(),
                pool: self.pool.clone(),
            });
        }
        if let Some(reason) = busy.column::<Option<String>>(6, "disabled_reason")? {
            return Err(Error::Disabled {
                name: name.to_string(),
                pool: self.pool.clone(),
                reason,
            });
        }
        Ok(())
    }

    /// Asks for a lease, and at most every [`RECLAIM_INTERVAL`] reclaims
    /// expired leases beside it. The grant is queued at once, before any
    /// wait for a connection, so that grants asked for together share a
    /// statement.
    async fn acquire_and_reclaim_if_due(
        self: &Arc<Self>,
        ttl: Option<i64>,
    ) -> Result<(Option<Grant>, Vec<ExpiredLease>)> {
        let now = now_ms();
        let last_reclaim = self.last_reclaim.load(Ordering::Relaxed);
        let due = now - last_reclaim >= ms(RECLAIM_INTERVAL)
            && self
                .last_reclaim
                .compare_exchange(last_reclaim, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if !due {
            return Ok((self.acquire(ttl).await?, Vec::new()));
        }
        let reclaim = async { self.reclaim(&*self.connections.get().await?).await };
        let (granted, reclaimed) = tokio::join!(self.acquire(ttl), reclaim);
        // Reclaiming by the way is optional (it is done again when nothing
        // is free): its failure must not drop a lease just granted.
        let expired = reclaimed.unwrap_or_else(|error| {
            tracing::debug!(%error, "reclaiming expired leases failed");
            Vec::new()
        });
        Ok((granted?, expired))
    }

    /// Why nothing was free: reclaims expired leases (adding them to
    /// `expired`) and tells other stores that this one has waiters. Returns
    /// when something changes by itself, or `None` when a credential is free
    /// after all (it was locked by another transaction, or just reclaimed).
    async fn why_busy(
        &self,
        expired: &mut Vec<ExpiredLease>,
        want: &Want,
    ) -> Result<Option<Option<SystemTime>>> {
        let conn = self.connections.get().await?;
        let (scope, name) = (want.scope_key(), want.name());
        let plain: [&(dyn ToSql + Sync); 1] = [&self.pool];
        let asked: [&(dyn ToSql + Sync); 3] = [&self.pool, &scope, &name];
        // `busy_for` answers `busy`'s columns for a scope or a name, and
        // whether the name is known and why it is disabled.
        let (reclaimed, busy) = tokio::join!(self.reclaim(&conn), async {
            match want.is_any() {
                true => conn.client.query_one(&conn.busy, &plain).await,
                false => conn.client.query_one(&conn.busy_for, &asked).await,
            }
        });
        let (reclaimed, busy) = (reclaimed?, busy?);
        self.check_named(&busy, name)?;
        let retry_at = self.retry_at(&busy)?;
        let free_after_all = busy.column::<bool>(1, "free")? || !reclaimed.is_empty();
        expired.extend(reclaimed);
        Ok((!free_after_all).then_some(retry_at))
    }

    /// From a row of `busy` (or `busy_for`): fails when no credential is
    /// enabled, else says when something changes by itself (a cool-down
    /// ends, a lease expires, a scope's block ends).
    fn retry_at(&self, busy: &tokio_postgres::Row) -> Result<Option<SystemTime>> {
        if !busy.column::<bool>(0, "enabled")? {
            return Err(Error::NoCredentials {
                pool: self.pool.clone(),
            });
        }
        let cooling: Option<i64> = busy.column(2, "next cool-down end")?;
        let expiry: Option<i64> = busy.column(3, "next expiry")?;
        let unblocked: Option<i64> = busy.column(4, "next end of a block")?;
        Ok(earliest(earliest(cooling, expiry), unblocked).map(from_ms))
    }

    /// For a waiter in line: fails when no credential is enabled, else says
    /// when something changes by itself.
    pub(super) async fn why_waiting(&self, conn: &Conn) -> Result<Option<SystemTime>> {
        let busy = conn.client.query_one(&conn.busy, &[&self.pool]).await?;
        // Tickets that wait for a scope are served when its block ends.
        self.retry_at(&busy)
    }

    /// A lease, or none when nothing was free; the statement is shared with
    /// the grants asked for at the same time.
    async fn acquire(self: &Arc<Self>, ttl: Option<i64>) -> Result<Option<Grant>> {
        let (reply, answer) = oneshot::channel();
        if self.grants.push(Asked { ttl, reply }) {
            // This task runs the first statement itself, so that a lone grant
            // goes without a hand-off to another task, and leaves the rest to
            // a task of its own. (It is a task of the store's: its caller
            // leaving does not stop it.)
            let mut runner = self.grants.runner();
            if let Some(batch) = runner.next_batch() {
                self.serve(batch).await;
                if let Some(more) = runner.next_batch() {
                    runner.hand_over();
                    tokio::spawn(self.clone().run_grants(more));
                }
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::StoreUnavailable {
                reason: "a postgres grant was dropped before its statement ran".into(),
            })
        })
    }

    /// Takes over a runner's place with its next batch, and runs the queued
    /// grants, a batch per statement, until none waits.
    async fn run_grants(self: Arc<Self>, first: Batch) {
        let mut runner = self.grants.runner();
        let mut next = Some(first);
        while let Some(batch) = next {
            self.serve(batch).await;
            next = runner.next_batch();
        }
    }

    /// Makes the grants of `batch` in one statement and answers each.
    async fn serve(self: &Arc<Self>, (ttl, batch): Batch) {
        match self.acquire_batch(ttl, batch.len()).await {
            Ok(grants) => {
                let mut grants = grants.into_iter();
                for asked in batch {
                    if let Err(Ok(Some(grant))) = asked.reply.send(Ok(grants.next())) {
                        self.release_in_background(
                            grant.token(),
                            Receipt::untracked(grant.token()),
                        );
                    }
                }
            }
            Err(error) => {
                for asked in batch {
                    let _ = asked.reply.send(Err(share(&error)));
                }
            }
        }
    }

    /// Up to `count` leases in one statement, in the order of their ids.
    async fn acquire_batch(&self, ttl: Option<i64>, count: usize) -> Result<Vec<Grant>> {
        let conn = self.connections.get().await?;
        if count == 1 {
            let row = conn
                .client
                .query_opt(&conn.acquire, &[&self.pool, &ttl])
                .await?;
            return row.as_ref().map(grant_from).into_iter().collect();
        }
        self.shared_statements.fetch_add(1, Ordering::Relaxed);
        let rows = conn
            .client
            .query(&conn.acquire_many, &[&self.pool, &ttl, &(count as i64)])
            .await?;
        rows.iter().map(grant_from).collect()
    }

    /// Ends expired leases. A deadlock with another process reclaiming the
    /// same leases is not an error: one of the two does it.
    pub(super) async fn reclaim(&self, conn: &Conn) -> Result<Vec<ExpiredLease>> {
        self.last_reclaim.store(now_ms(), Ordering::Relaxed);
        match conn.client.query(&conn.reclaim, &[&self.pool]).await {
            Ok(rows) => rows
                .iter()
                .map(|row| {
                    Ok(ExpiredLease {
                        lease_id: LeaseId::new(row.unsigned(0, "leases.id")?),
                        name: row.column::<String>(1, "credentials.name")?.into(),
                    })
                })
                .collect(),
            Err(error)
                if error.code()
                    == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                Ok(Vec::new())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Hands out what is free to the tickets waiting; a failure is only
    /// logged (the first waiter's next poll does it again).
    pub(super) async fn serve_line_now(&self) {
        let served = async { self.serve_line(&*self.connections.get().await?).await };
        if let Err(error) = served.await {
            tracing::debug!(%error, "handing a credential to the waiting line failed");
        }
    }

    /// Ends a lease. While tickets wait (this store's, or others' as the
    /// last release found), the freed unit goes straight to the first of
    /// them in the same statement ([`Sql::release_handing`]).
    async fn release(&self, lease: LeaseToken, outcome: ReleaseOutcome) -> Result<Released> {
        let conn = self.connections.get().await?;
        let effect = outcome.effect();
        // The server's clock times the cool-down: a reset time becomes the
        // time left until it.
        let now = crate::time::now_ms();
        let (lease_id, credential_id) = ids(lease);
        if let Some(limited) = effect.report {
            // Kept before the lease goes, so no grant comes between. (A
            // release that then finds its lease gone leaves the budget the
            // API reported in place, which is still what the API said.)
            self.report(&conn, credential_id, limited).await?;
        }
        let cool = effect
            .cooling_until(now)
            .filter(|&until| until > now)
            .map(|until| (until - now).min(MAX_MS));
        let disable = effect.disable;
        let handing = !self.line.is_empty() || self.tickets_seen.load(Ordering::Relaxed);
        if !handing {
            let row = conn
                .client
                .query_opt(
                    &conn.release,
                    &[&lease_id, &credential_id, &self.pool, &cool, &disable],
                )
                .await?;
            let Some(row) = row else {
                return Err(self.lease_lost(&conn, lease).await?);
            };
            let line_waits = row.column(1, "tickets waiting")?;
            self.tickets_seen.store(line_waits, Ordering::Relaxed);
            return Ok(Released {
                name: row.column::<String>(0, "credentials.name")?.into(),
                line_waits,
                claimed: None,
            });
        }
        // Claimed here only for a waiter seated already, with its seats'
        // TTL: a ticket whose waiter is not seated yet (its `take_ticket`
        // has committed, its answer is on the way) is handed its lease until
        // the claim deadline, as another store's is, and claimed when seated.
        let claimable = self.line.first_tickets(CLAIMABLE_IN_RELEASE);
        let ttl = self.line.any_ttl().flatten().map(ms);
        let claimable_ids: Vec<i64> = claimable.iter().map(|&ticket| ticket as i64).collect();
        let leaving = self.line.leaving_ids();
        let row = conn
            .client
            .query_opt(
                &conn.release_handing,
                &[
                    &lease_id,
                    &credential_id,
                    &self.pool,
                    &cool,
                    &disable,
                    &self.ticket_ttl,
                    &claimable_ids,
                    &self.channel,
                    &ttl,
                    &leaving,
                ],
            )
            .await?;
        let Some(row) = row else {
            return Err(self.lease_lost(&conn, lease).await?);
        };
        let ticket: Option<i64> = row.column(1, "tickets.id")?;
        let line_waits: bool = row.column(12, "tickets waiting")?;
        self.tickets_seen
            .store(ticket.is_some() || line_waits, Ordering::Relaxed);
        let claimed = match ticket {
            Some(ticket) if claimable.contains(&(ticket as u64)) => {
                Some((ticket as u64, grant_from_at(&row, 4)?))
            }
            _ => None,
        };
        Ok(Released {
            name: row.column::<String>(0, "credentials.name")?.into(),
            line_waits,
            claimed,
        })
    }

    pub(super) async fn renew(
        &self,
        lease: LeaseToken,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>> {
        let conn = self.connections.get().await?;
        let (lease_id, credential_id) = ids(lease);
        let ttl = ttl.map(ms);
        let row = conn
            .client
            .query_opt(&conn.renew, &[&lease_id, &credential_id, &self.pool, &ttl])
            .await?;
        match row {
            Some(row) => Ok(row
                .column::<Option<i64>>(0, "leases.expires_at")?
                .map(from_ms)),
            None => Err(self.lease_lost(&conn, lease).await?),
        }
    }

    async fn lease_lost(&self, conn: &Conn, lease: LeaseToken) -> Result<Error> {
        let (_, credential_id) = ids(lease);
        let name: Option<String> = conn
            .client
            .query_opt(&self.sql.name_of(), &[&credential_id, &self.pool])
            .await?
            .map(|row| row.get(0));
        Ok(Error::LeaseLost {
            credential: name.unwrap_or_else(|| lease.credential_id().to_string()),
            lease_id: lease.lease_id(),
        })
    }
}

/// Whether a Postgres failure may go away by itself, so that a release is
/// worth trying again: no connection (no SQLSTATE), a connection exception
/// (08), a serialization failure or deadlock (40), too little room (53), a
/// lock not available (55P03), an operator or crash shutdown (57), a
/// system error (58).
pub(super) fn transient(error: &Error) -> bool {
    match error {
        Error::Postgres { code: None, .. } | Error::StoreUnavailable { .. } => true,
        Error::Postgres {
            code: Some(code), ..
        } => {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }
        _ => false,
    }
}

/// The same error again, for each caller of a shared statement.
fn share(error: &Error) -> Error {
    match error {
        Error::Postgres { message, code } => Error::Postgres {
            message: message.clone(),
            code: code.clone(),
        },
        other => Error::StoreUnavailable {
            reason: other.to_string(),
        },
    }
}

pub(super) fn ids(lease: LeaseToken) -> (i64, i64) {
    (
        lease.lease_id().get() as i64,
        lease.credential_id().get() as i64,
    )
}
