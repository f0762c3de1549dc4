//! The waiting line in SQL: tickets taken, credentials handed to them,
//! heartbeats, no-shows expired, tickets given up.
//!
//! Which ticket a credential goes to is decided in one place,
//! [`serve`]: the lowest live ticket without a lease.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use crate::credential::ReleaseOutcome;
use crate::ids::LeaseToken;
use crate::store::{GrantAttempt, Seat};

use super::ctx::{Ctx, Failure, Hot};
use super::leases;
use super::schema::unsigned;

/// Takes a ticket at the end of the line for a grant that found nothing
/// free, and seats its waiter here.
pub(crate) fn take_ticket(
    ctx: &mut Ctx<'_>,
    ttl: Option<Duration>,
    retry_at: Option<std::time::SystemTime>,
) -> rusqlite::Result<GrantAttempt> {
    ctx.connection
        .prepare_cached("INSERT INTO tickets (pool, owner, expires_at) VALUES (?1, ?2, ?3)")?
        .execute(params![
            ctx.pool,
            ctx.line.owner(),
            ctx.now.saturating_add(ctx.ticket_ttl)
        ])?;
    let ticket = unsigned(ctx.connection.last_insert_rowid())?;
    ctx.tickets = true;
    let seat: Seat = ctx.line.seat(ticket, ttl);
    Ok(GrantAttempt::Queued { seat, retry_at })
}

/// Hands free credentials to the tickets waiting, lowest number first, while
/// both last. A waiter seated here gets its lease for its own TTL, delivered
/// after the commit; another process's ticket gets a lease that expires at
/// the claim deadline, which that process extends when it claims it.
///
/// Called where units may come free: when a batch begins (cool-downs ended,
/// leases expired), after a release, an `add`, an `enable`, a ticket given up.
pub(crate) fn serve(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    while ctx.tickets {
        let pool = ctx.pool;
        let next: Option<(i64, i64)> = ctx
            .statement(Hot::NextTicket)?
            .query_row([pool], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((ticket, owner)) = next else {
            ctx.tickets = false;
            break;
        };
        let Some(free) = leases::pick(ctx)? else {
            break;
        };
        let number = unsigned(ticket)?;
        let seated = if owner == ctx.line.owner() {
            ctx.line.seated(number)
        } else {
            None
        };
        match seated {
            Some(ttl) => {
                let expires_at = leases::expiry(ctx, ttl);
                let grant = leases::lease(ctx, free, expires_at)?;
                ctx.connection
                    .prepare_cached("DELETE FROM tickets WHERE id = ?1")?
                    .execute([ticket])?;
                ctx.deliveries.push((number, grant));
            }
            None => {
                let deadline = ctx.now.saturating_add(ctx.ticket_ttl);
                let grant = leases::lease(ctx, free, Some(deadline))?;
                ctx.connection
                    .prepare_cached(
                        "UPDATE tickets SET lease_id = ?2, credential_id = ?3, expires_at = ?4
                         WHERE id = ?1",
                    )?
                    .execute(params![
                        ticket,
                        grant.lease_id.get() as i64,
                        grant.credential.id().get() as i64,
                        deadline
                    ])?;
            }
        }
    }
    Ok(())
}

/// Ends tickets whose holders stopped renewing them, and tickets whose
/// handed lease is gone (its claim deadline passed, or its credential was
/// removed); then hands out what is free. Runs as a batch begins, when
/// tickets exist.
pub(crate) fn expire_and_serve(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    if !ctx.tickets {
        return Ok(());
    }
    ctx.connection
        .prepare_cached(
            "DELETE FROM tickets WHERE pool = ?1
               AND (expires_at <= ?2
                    OR (lease_id IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.id = tickets.lease_id)))",
        )?
        .execute(params![ctx.pool, ctx.now])?;
    serve(ctx)
}

/// The first waiter's poll: claims the credentials other processes handed
/// to tickets seated here (delivered after the commit), and says when
/// something changes by itself. Fails when no credential is enabled. (The
/// batch renewed the tickets first, when that was due.)
pub(crate) fn poll(ctx: &mut Ctx<'_>) -> std::result::Result<Option<i64>, Failure> {
    claim_handed(ctx)?;
    leases::why_busy(ctx)
}

/// Renews every ticket seated here. A seat whose ticket is gone (it expired
/// while this process stalled) loses its seat, and its waiter takes a new
/// ticket.
pub(crate) fn renew_tickets(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    let until = ctx.now.saturating_add(ctx.ticket_ttl);
    let mut renew = ctx
        .connection
        .prepare_cached("UPDATE tickets SET expires_at = ?2 WHERE id = ?1 AND pool = ?3")?;
    for ticket in ctx.line.tickets() {
        // Handed out in this batch: its grant is on its way.
        if ctx.deliveries.iter().any(|(handed, _)| *handed == ticket) {
            continue;
        }
        if renew.execute(params![ticket as i64, until, ctx.pool])? == 0 {
            tracing::warn!(
                pool = ctx.pool,
                ticket,
                "a waiting ticket expired before its heartbeat; its waiter queues again"
            );
            ctx.line.unseat(ticket);
        }
    }
    Ok(())
}

/// Claims the leases other processes handed to tickets seated here: each
/// gets its waiter's TTL from now and goes to the waiter after the commit.
pub(crate) fn claim_handed(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    let handed: Vec<(i64, i64)> = ctx
        .connection
        .prepare_cached(
            "SELECT id, lease_id FROM tickets
             WHERE pool = ?1 AND owner = ?2 AND lease_id IS NOT NULL",
        )?
        .query_map(params![ctx.pool, ctx.line.owner()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (ticket, lease_id) in handed {
        let number = unsigned(ticket)?;
        // A seat that left here: the ticket's removal is on its way.
        let Some(ttl) = ctx.line.seated(number) else {
            continue;
        };
        let expires_at = leases::expiry(ctx, ttl);
        let row = ctx
            .connection
            .prepare_cached(
                "UPDATE leases SET expires_at = ?2, acquired_at = ?3 WHERE id = ?1
                 RETURNING credential_id",
            )?
            .query_row(params![lease_id, expires_at, ctx.now], |row| {
                row.get::<_, i64>(0)
            })
            .optional()?;
        ctx.connection
            .prepare_cached("DELETE FROM tickets WHERE id = ?1")?
            .execute([ticket])?;
        let Some(credential_id) = row else {
            // The lease is gone (its credential was removed): queue again.
            ctx.line.unseat(number);
            continue;
        };
        let grant = leases::granted(ctx, credential_id, lease_id, expires_at)?;
        ctx.deliveries.push((number, grant));
    }
    Ok(())
}

/// Removes a ticket whose waiter gave up; a lease already handed to it goes
/// back, to the next ticket if one waits.
pub(crate) fn leave(ctx: &mut Ctx<'_>, ticket: u64) -> std::result::Result<(), Failure> {
    let handed: Option<(Option<i64>, Option<i64>)> = ctx
        .connection
        .prepare_cached(
            "DELETE FROM tickets WHERE id = ?1 AND pool = ?2 RETURNING lease_id, credential_id",
        )?
        .query_row(params![ticket as i64, ctx.pool], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    if let Some((Some(lease_id), Some(credential_id))) = handed {
        let token = LeaseToken::new(
            crate::ids::CredentialId::new(unsigned(credential_id)?),
            crate::ids::LeaseId::new(unsigned(lease_id)?),
        );
        match leases::release(ctx, token, &ReleaseOutcome::Success) {
            // Gone already (its claim deadline passed): nothing to give back.
            Ok(_) | Err(Failure::Refused(_)) => {}
            Err(error) => return Err(error),
        }
        serve(ctx)?;
    }
    Ok(())
}

/// How many tickets wait in line, in every process: for `stats`.
pub(crate) const WAITING_TICKETS: &str =
    "SELECT count(*) FROM tickets WHERE pool = ?1 AND lease_id IS NULL AND expires_at > ?2";
