//! The waiting line on Postgres: tickets taken, credentials handed to them,
//! claimed, renewed, expired and given up.
//!
//! A credential that comes free while tickets wait goes to the lowest live
//! ticket ([`Sql::serve`](super::sql::Sql)), as a lease with a short claim
//! deadline. The store whose ticket it is claims it at once when the waiter
//! is seated here; another store hears a `NOTIFY` and claims it at its
//! first waiter's next poll.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::ids::{CredentialId, LeaseId, LeaseToken};
use crate::store::{GrantAttempt, Line, Receipt, Undelivered};
use crate::time::now_ms;

use super::connections::Conn;
use super::leases::{grant_from_at, ms, transient, Inner};
use super::rows::Columns;

/// How soon the first waiter polls again after a poll that failed for a
/// reason that passes (a deadlock with another store, a lost connection).
const POLL_AGAIN: Duration = Duration::from_millis(20);
/// How long after a whole poll, in ms, a poll only claims what was handed
/// to this store's tickets.
const LIGHT_POLL_WITHIN: i64 = 50;
/// How many of the lowest tickets seated here a poll claims for: those
/// served first; one beyond them is claimed at a later poll.
const CLAIMABLE_BY_POLL: usize = 1024;

impl Inner {
    /// Takes a ticket for a grant that found nothing free, and seats its
    /// waiter here. A credential that came free since the grant looked goes
    /// to the line at once.
    pub(super) async fn take_ticket(
        self: &Arc<Self>,
        ttl: Option<Duration>,
        want: &crate::store::Want,
        retry_at: Option<SystemTime>,
    ) -> Result<GrantAttempt> {
        let conn = self.connections.get().await?;
        // The first ticket after a while renews the store's heartbeat too,
        // so that it is alive from the start; the first waiter's polls keep
        // it so.
        let beat = self.heartbeat_due();
        let taken = conn
            .client
            .query_one(
                &self.sql.take_ticket(),
                &[
                    &self.pool,
                    &self.line.owner(),
                    &self.ticket_ttl,
                    &beat,
                    &want.scope_name(),
                    &want.name(),
                    &i32::try_from(want.units_asked()).unwrap_or(i32::MAX),
                ],
            )
            .await;
        if beat && taken.is_err() {
            self.last_heartbeat.store(0, Ordering::Relaxed);
        }
        let row = taken?;
        let ticket = row.unsigned(0, "tickets.id")?;
        let seat = self.line.seat(ticket, ttl);
        // A weighted ticket may be served at once: `free` leaves out what
        // is kept for weighted tickets, its own among them.
        if row.column::<bool>(1, "free")? || want.is_weighted() {
            // A failure here is made good by the first waiter's next poll.
            if let Err(error) = self.serve_line(&conn).await {
                tracing::debug!(%error, "handing a credential to the waiting line failed");
            }
        }
        Ok(GrantAttempt::Queued { seat, retry_at })
    }

    /// Hands free credentials to the tickets waiting, lowest first, while
    /// both last; claims at once those of tickets seated here.
    pub(super) async fn serve_line(&self, conn: &Conn) -> Result<()> {
        let _work = self.background.begin();
        // Asking again is needed only when another transaction handed out
        // the lowest ticket as this one looked; a few times is plenty.
        let mut again = 8;
        let leaving = self.line.leaving_ids();
        loop {
            let handed = conn
                .client
                .query_opt(
                    &conn.serve,
                    &[
                        &self.pool,
                        &self.ticket_ttl,
                        &self.line.owner(),
                        &self.channel,
                        &leaving,
                    ],
                )
                .await?;
            let Some(row) = handed else {
                // Nothing for a ticket of one unit: a weighted one first in
                // line may be served.
                match self.serve_weighted(conn, &leaving).await? {
                    Weighted::Handed => continue,
                    Weighted::Locked if again > 1 => {
                        // Another transaction holds it, and may not see
                        // units this one freed: ask again when it is done.
                        again -= 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    _ => return Ok(()),
                }
            };
            let Some(ticket) = row.column::<Option<i64>>(0, "tickets.id")? else {
                again -= 1;
                if again == 0 || !row.column::<bool>(3, "again")? {
                    return Ok(());
                }
                continue;
            };
            let ticket = ticket as u64;
            let owner: i64 = row.column(1, "tickets.owner")?;
            if owner == self.line.owner() {
                self.claim(conn, ticket).await?;
            }
        }
    }

    /// Hands the lowest weighted ticket waiting its units, when one
    /// credential has them free; whether it did. (The hand-offs of one
    /// unit stop behind it, so it is not overtaken by lighter asks.)
    async fn serve_weighted(&self, conn: &Conn, leaving: &[i64]) -> Result<Weighted> {
        let Some(next) = conn
            .client
            .query_opt(&self.sql.next_weighted(), &[&self.pool, &leaving])
            .await?
        else {
            return Ok(Weighted::None);
        };
        let ticket: i64 = next.column(0, "tickets.id")?;
        let owner: i64 = next.column(1, "tickets.owner")?;
        let scope: Option<String> = next.column(2, "tickets.scope")?;
        let name: Option<String> = next.column(3, "tickets.name")?;
        let units: i32 = next.column(4, "tickets.units")?;
        let handed = conn
            .client
            .query_opt(
                &self.sql.grant_units(),
                &[
                    &self.pool,
                    &self.ticket_ttl,
                    &scope.unwrap_or_default(),
                    &name,
                    &units,
                    &Some(ticket),
                ],
            )
            .await?;
        match handed {
            None => return Ok(Weighted::None),
            Some(row) if row.column::<Option<i64>>(0, "credentials.id")?.is_none() => {
                return Ok(Weighted::Locked)
            }
            Some(_) => {}
        }
        let ticket = ticket as u64;
        if owner == self.line.owner() {
            self.claim(conn, ticket).await?;
        } else {
            conn.client
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&self.channel, &format!("{owner}:{}", self.pool)],
                )
                .await?;
        }
        Ok(Weighted::Handed)
    }

    /// Claims the lease handed to `ticket`, when its waiter is seated here,
    /// and hands it over.
    async fn claim(&self, conn: &Conn, ticket: u64) -> Result<()> {
        let Some(ttl) = self.line.seated(ticket) else {
            // Its waiter left; the ticket's removal is on its way.
            return Ok(());
        };
        let ttl = ttl.map(ms);
        let row = conn
            .client
            .query_opt(&conn.claim, &[&(ticket as i64), &ttl, &self.pool])
            .await?;
        match row {
            // Claimed by another call of this store, which hands it over.
            None => Ok(()),
            Some(row) => self.claimed(ticket, &row, 0).await,
        }
    }

    /// Hands over what a claim found for `ticket`, in the row's columns from
    /// `first` on: a grant, or NULLs when the lease was gone (its claim
    /// deadline passed, or its credential was removed): then the waiter
    /// queues again.
    async fn claimed(&self, ticket: u64, row: &tokio_postgres::Row, first: usize) -> Result<()> {
        if row
            .column::<Option<i64>>(first, "credentials.id")?
            .is_none()
        {
            self.line.unseat(ticket);
            return Ok(());
        }
        let mut grant = grant_from_at(row, first)?;
        grant.units = row
            .column::<Option<i32>>(first + 8, "leases.units")?
            .map_or(1, |units| units.max(1) as u32);
        self.hand_over(ticket, grant).await;
        Ok(())
    }

    /// Gives a claimed grant to its seat; when the waiter left meanwhile,
    /// the lease goes back (and on to the next ticket).
    pub(super) async fn hand_over(&self, ticket: u64, grant: crate::store::Grant) {
        if let Err(Undelivered(grant)) = self.line.deliver(ticket, grant) {
            // Its waiter left meanwhile: the lease goes back (and on).
            let token = grant.token();
            let release = self.release_until_done(
                token,
                crate::credential::ReleaseOutcome::Success,
                Receipt::untracked(token),
                None,
            );
            Box::pin(release).await;
        }
    }

    /// The first waiter's poll: ends the tickets nobody renews, renews this
    /// store's (at least four times per ticket TTL), hands out what is free,
    /// claims what other stores handed to tickets seated here, and says when
    /// something changes by itself.
    pub(super) async fn poll_line(self: &Arc<Self>) -> Result<Option<SystemTime>> {
        match self.poll_once().await {
            // A deadlock, a lost connection: the next poll does it again.
            Err(error) if transient(&error) => {
                tracing::debug!(%error, "polling the waiting line failed; polling again soon");
                Ok(Some(SystemTime::now() + POLL_AGAIN))
            }
            answer => answer,
        }
    }

    async fn poll_once(self: &Arc<Self>) -> Result<Option<SystemTime>> {
        let conn = self.connections.get().await?;
        // Woken again soon after a whole poll (a `NOTIFY` that a credential
        // was handed to a ticket here): claiming is all there is to do.
        let now = now_ms();
        if now - self.last_poll.load(Ordering::Relaxed) < LIGHT_POLL_WITHIN {
            self.claim_handed(&conn).await?;
            return Ok(None);
        }
        self.last_poll.store(now, Ordering::Relaxed);
        // Pipelined on the one connection: one round trip for the three.
        let expire = self.sql.expire_tickets();
        let pool: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.pool];
        let (expired, renewed, reclaimed) = tokio::join!(
            conn.client.execute(&expire, &pool),
            self.renew_tickets(&conn),
            self.reclaim(&conn),
        );
        expired?;
        renewed?;
        reclaimed?;
        self.serve_line(&conn).await?;
        if self.wanted.load(Ordering::Relaxed) {
            self.unseat_hopeless(&conn).await?;
        }
        let (claimed, waiting) = tokio::join!(self.claim_handed(&conn), self.why_waiting(&conn));
        claimed?;
        waiting
    }

    /// Takes out the tickets seated here that wait for a credential by name
    /// that is gone or disabled, and weighted ones that no enabled
    /// credential has the capacity (or quota) for any more: their waiters,
    /// unseated, ask again and hear why, and the line goes on behind them.
    async fn unseat_hopeless(&self, conn: &Conn) -> Result<()> {
        let tickets = &self.sql.tickets;
        let credentials = &self.sql.credentials;
        let limits = self.sql.limits();
        let rows = conn
            .client
            .query(
                &format!(
                    "DELETE FROM {tickets}
                     WHERE pool = $1 AND owner = $2 AND lease_id IS NULL
                       AND (name IS NOT NULL OR units > 1)
                       AND NOT EXISTS (
                           SELECT 1 FROM {credentials} AS c
                           WHERE c.pool = {tickets}.pool AND c.disabled_reason IS NULL
                             AND ({tickets}.name IS NULL OR c.name = {tickets}.name)
                             AND c.capacity >= {tickets}.units
                             AND NOT EXISTS (
                                 SELECT 1 FROM {limits} AS l
                                 WHERE l.credential_id = c.id
                                   AND l.scope IN ('', coalesce({tickets}.scope, ''))
                                   AND l.rate_count < {tickets}.units))
                     RETURNING id"
                ),
                &[&self.pool, &self.line.owner()],
            )
            .await?;
        for row in rows {
            self.line.unseat(row.unsigned(0, "tickets.id")?);
        }
        Ok(())
    }

    /// Claims the leases other stores handed to the tickets of this store,
    /// in one statement, and hands them over; a lease whose waiter left
    /// meanwhile goes back. (One pool owns the store, so every seat asked
    /// for the same TTL.)
    async fn claim_handed(&self, conn: &Conn) -> Result<()> {
        let _work = self.background.begin();
        let Some(ttl) = self.line.any_ttl() else {
            return Ok(());
        };
        let seated: Vec<i64> = self
            .line
            .first_tickets(CLAIMABLE_BY_POLL)
            .into_iter()
            .map(|ticket| ticket as i64)
            .collect();
        let rows = conn
            .client
            .query(
                &self.sql.claim_handed(),
                &[&self.pool, &self.line.owner(), &ttl.map(ms), &seated],
            )
            .await?;
        for row in rows {
            self.claimed(row.unsigned(0, "tickets.id")?, &row, 1)
                .await?;
        }
        Ok(())
    }

    /// Whether this store's heartbeat is due (a quarter of the ticket TTL
    /// since the last); when it is, the caller renews it, and this counts
    /// as renewed now.
    fn heartbeat_due(&self) -> bool {
        let now = now_ms();
        let last = self.last_heartbeat.load(Ordering::Relaxed);
        now - last >= self.ticket_ttl / 4
            && self
                .last_heartbeat
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Renews this store's heartbeat, and so its tickets, when that is due;
    /// a seat whose ticket is gone (it expired while this process stalled)
    /// loses its seat, and its waiter takes a new ticket.
    async fn renew_tickets(&self, conn: &Conn) -> Result<()> {
        if self.line.is_empty() || !self.heartbeat_due() {
            return Ok(());
        }
        let seated = self.line.tickets();
        let ids: Vec<i64> = seated.iter().map(|&ticket| ticket as i64).collect();
        let renewed = conn
            .client
            .query(
                &self.sql.renew_tickets(),
                &[&self.pool, &self.line.owner(), &self.ticket_ttl, &ids],
            )
            .await;
        if renewed.is_err() {
            self.last_heartbeat.store(0, Ordering::Relaxed);
        }
        let renewed = renewed?;
        let mut alive = std::collections::HashSet::with_capacity(renewed.len());
        for row in renewed {
            alive.insert(row.unsigned(0, "tickets.id")?);
        }
        // A ticket found gone may be one whose claim is on its way to its
        // seat: only one found gone twice in a row has lost its seat.
        let mut missing = self
            .missing_tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let was_missing = std::mem::take(&mut *missing);
        for ticket in seated {
            if alive.contains(&ticket) {
                continue;
            }
            if !was_missing.contains(&ticket) {
                missing.insert(ticket);
            } else {
                tracing::warn!(
                    pool = %self.pool,
                    ticket,
                    "a waiting ticket expired before its heartbeat; its waiter queues again"
                );
                self.line.unseat(ticket);
            }
        }
        Ok(())
    }

    /// Removes a ticket whose waiter gave up; a lease already handed to it
    /// goes back (and on to the next ticket).
    ///
    /// The caller marked the ticket leaving ([`Line::leaving`]), so that no
    /// hand-off meets it meanwhile; it stops being so here, however this
    /// ends.
    pub(super) async fn leave_line(self: &Arc<Self>, ticket: u64) -> Result<()> {
        let _work = self.background.begin();
        let row = {
            let _left = Left(&self.line, ticket);
            let conn = self.connections.get().await?;
            conn.client
                .query_opt(&self.sql.leave(), &[&(ticket as i64), &self.pool])
                .await?
        };
        let Some(row) = row else {
            return Ok(());
        };
        let lease: Option<i64> = row.column(0, "tickets.lease_id")?;
        let credential: Option<i64> = row.column(1, "tickets.credential_id")?;
        if lease.is_none() && row.column::<i32>(2, "tickets.units")? > 1 {
            // A weighted ticket may have kept units from those behind it.
            self.serve_line_now().await;
        }
        if let (Some(lease), Some(credential)) = (lease, credential) {
            let token = LeaseToken::new(
                CredentialId::new(credential as u64),
                LeaseId::new(lease as u64),
            );
            self.release_until_done(
                token,
                crate::credential::ReleaseOutcome::Success,
                Receipt::untracked(token),
                None,
            )
            .await;
        }
        Ok(())
    }

    /// How many tickets wait, in every store.
    pub(super) async fn waiting_tickets(&self) -> Result<u64> {
        let conn = self.connections.get().await?;
        let row = conn
            .client
            .query_one(&self.sql.waiting_tickets(), &[&self.pool])
            .await?;
        row.unsigned(0, "count")
    }
}

/// What `serve_weighted` did.
enum Weighted {
    /// No weighted ticket waits, or none has its units free.
    None,
    /// The lowest weighted ticket was handed its units.
    Handed,
    /// Another transaction holds the lowest weighted ticket.
    Locked,
}

/// Ends a ticket's leaving in its line when dropped: its removal has
/// committed, failed, or was given up.
struct Left<'a>(&'a Line, u64);

impl Drop for Left<'_> {
    fn drop(&mut self) {
        self.0.left(self.1);
    }
}
