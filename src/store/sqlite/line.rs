//! The waiting line in SQL: tickets taken, credentials handed to them,
//! heartbeats, no-shows expired, tickets given up.
//!
//! Which ticket a credential goes to is decided in one place,
//! [`serve`]: the lowest live ticket without a lease.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use crate::credential::ReleaseOutcome;
use crate::ids::{this_process, LeaseToken};
use crate::store::{GrantAttempt, Seat, Want};

use super::ctx::{Ctx, Failure, Hot};
use super::leases;
use super::schema::unsigned;

/// Takes a ticket at the end of the line for a grant that found nothing
/// free, and seats its waiter here.
pub(crate) fn take_ticket(
    ctx: &mut Ctx<'_>,
    ttl: Option<Duration>,
    want: &Want,
    retry_at: Option<std::time::SystemTime>,
) -> rusqlite::Result<GrantAttempt> {
    ctx.connection
        .prepare_cached(
            "INSERT INTO tickets (pool, owner, expires_at, scope, name, units)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            ctx.pool,
            ctx.line.owner(),
            ctx.now.saturating_add(ctx.ticket_ttl),
            want.scope_name(),
            want.name(),
            want.units_asked(),
        ])?;
    let ticket = unsigned(ctx.connection.last_insert_rowid())?;
    ctx.tickets = true;
    let seat: Seat = ctx.line.seat(ticket, ttl);
    Ok(GrantAttempt::Queued { seat, retry_at })
}

/// Hands free credentials to the tickets waiting, lowest number first, while
/// both last. A ticket that waits for a scope (or a name) that nothing free
/// serves is passed over, and so is every later ticket that waits for the
/// same: the others behind it are served. A weighted ticket that finds too
/// few units free (where one unit would serve it) keeps the credentials
/// that may serve it: no one behind it, nor any newcomer, takes their units
/// (`ctx.kept`). A waiter seated here gets its lease for its own TTL, delivered
/// after the commit; another process's ticket gets a lease that expires at
/// the claim deadline, which that process extends when it claims it.
///
/// Called where units may come free: when a batch begins (cool-downs ended,
/// leases expired), after a release, an `add`, an `enable`, a ticket given up.
pub(crate) fn serve(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    // Tickets before `after` were served or passed over; wants in `unserved`
    // found nothing free.
    let mut after = 0;
    let mut unserved: Vec<Want> = Vec::new();
    ctx.kept.clear();
    while ctx.tickets {
        let pool = ctx.pool;
        let next: Option<(i64, i64, Want)> = ctx
            .statement(Hot::NextTicket)?
            .query_row(params![pool, after], |row| {
                let scope: Option<String> = row.get(2)?;
                let name: Option<String> = row.get(3)?;
                let want = ticket_want(scope.as_deref(), name.as_deref(), row.get(4)?);
                Ok((row.get(0)?, row.get(1)?, want))
            })
            .optional()?;
        let Some((ticket, owner, want)) = next else {
            if after == 0 {
                ctx.tickets = false;
            }
            break;
        };
        if unserved.contains(&want) {
            after = ticket;
            continue;
        }
        let Some(free) = leases::pick(ctx, &want)? else {
            if hold_up_for(ctx, &want)? {
                // Too few units for it where one would do: it is served
                // first, when enough come free.
                after = ticket;
                continue;
            }
            if want.one_unit().is_any() {
                // Nothing is free at all: no other want is served either.
                break;
            }
            unserved.push(want);
            ctx.passed_over = true;
            after = ticket;
            continue;
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
                let grant = leases::lease(ctx, free, &want, expires_at)?;
                ctx.connection
                    .prepare_cached("DELETE FROM tickets WHERE id = ?1")?
                    .execute([ticket])?;
                ctx.deliveries.push((number, grant));
            }
            None => {
                let deadline = ctx.now.saturating_add(ctx.ticket_ttl);
                let grant = leases::lease_dated(ctx, free, &want, Some(deadline), deadline, None)?;
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

/// For a weighted `want` that found too few units free where one would
/// do: keeps the credentials that may serve it (`ctx.kept`). Whether it did.
pub(crate) fn hold_up_for(ctx: &mut Ctx<'_>, want: &Want) -> rusqlite::Result<bool> {
    let held_up = want.is_weighted() && leases::pick(ctx, &want.one_unit())?.is_some();
    if held_up && !ctx.kept.contains(want) {
        ctx.kept.push(want.clone());
    }
    Ok(held_up)
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
    unseat_hopeless(ctx)?;
    let general = leases::why_busy(ctx, &Want::any())?;
    // Waiters for a scope are served when its limits next allow a grant.
    let scoped: Option<i64> = ctx
        .connection
        .prepare_cached(
            "SELECT min(blocked_until) FROM limits WHERE pool = ?1 AND blocked_until > ?2",
        )?
        .query_row(params![ctx.pool, ctx.now], |row| row.get(0))?;
    Ok(crate::time::earliest(general, scoped))
}

/// Takes out the tickets seated here that wait for a credential by name
/// that is gone or disabled, and weighted ones that no enabled credential
/// has the capacity (or quota) for any more: their waiters, unseated, ask
/// again and hear why, and the line goes on behind them.
fn unseat_hopeless(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    let mut unseated = false;
    let hopeless: Vec<i64> = ctx
        .connection
        .prepare_cached(
            "DELETE FROM tickets
             WHERE pool = ?1 AND owner = ?2 AND lease_id IS NULL
               AND (name IS NOT NULL OR units > 1)
               AND NOT EXISTS (
                   SELECT 1 FROM credentials AS c
                   WHERE c.pool = tickets.pool AND c.disabled_reason IS NULL
                     AND (tickets.name IS NULL OR c.name = tickets.name)
                     AND c.capacity >= tickets.units
                     AND NOT EXISTS (SELECT 1 FROM limits AS l
                                     WHERE l.credential_id = c.id
                                       AND l.scope IN ('', coalesce(tickets.scope, ''))
                                       AND l.rate_count < tickets.units))
             RETURNING id",
        )?
        .query_map(params![ctx.pool, ctx.line.owner()], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for ticket in hopeless {
        ctx.line.unseat(unsigned(ticket)?);
        unseated = true;
    }
    if unseated {
        // What they kept goes to the line.
        serve(ctx)?;
    }
    Ok(())
}

/// What a ticket waits for, as its row says.
fn ticket_want(scope: Option<&str>, name: Option<&str>, units: u32) -> Want {
    let mut want = Want::any().units(units).unwrap_or_default();
    // Rows hold only what was checked when the ticket was taken.
    if let Some(scope) = scope {
        want = want.in_scope(scope).unwrap_or_default();
    }
    if let Some(name) = name {
        want = want.named(name).unwrap_or_default();
    }
    want
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
    let handed: Vec<(i64, i64, Option<String>, u32)> = ctx
        .connection
        .prepare_cached(
            "SELECT id, lease_id, scope, units FROM tickets
             WHERE pool = ?1 AND owner = ?2 AND lease_id IS NOT NULL",
        )?
        .query_map(params![ctx.pool, ctx.line.owner()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (ticket, lease_id, scope, units) in handed {
        let number = unsigned(ticket)?;
        // A seat that left here: the ticket's removal is on its way.
        let Some(ttl) = ctx.line.seated(number) else {
            continue;
        };
        let expires_at = leases::expiry(ctx, ttl);
        // The grant counts against quotas from now, when it can be used.
        let handed_at: Option<(i64, bool)> = ctx
            .connection
            .prepare_cached(
                "SELECT l.acquired_at, c.limited FROM leases AS l
                 JOIN credentials AS c ON c.id = l.credential_id WHERE l.id = ?1",
            )?
            .query_row([lease_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let row = ctx
            .connection
            .prepare_cached(
                "UPDATE leases SET expires_at = ?2, acquired_at = ?3, holder = ?4 WHERE id = ?1
                 RETURNING credential_id",
            )?
            .query_row(
                params![lease_id, expires_at, ctx.now, this_process()],
                |row| row.get::<_, i64>(0),
            )
            .optional()?;
        ctx.connection
            .prepare_cached("DELETE FROM tickets WHERE id = ?1")?
            .execute([ticket])?;
        let Some(credential_id) = row else {
            // The lease is gone (its credential was removed): queue again.
            ctx.line.unseat(number);
            continue;
        };
        if let Some((from, true)) = handed_at {
            super::limits::move_grant(
                ctx,
                credential_id,
                scope.as_deref().unwrap_or(""),
                from,
                ctx.now,
                units,
            )?;
        }
        let grant = leases::granted(ctx, credential_id, lease_id, expires_at, units)?;
        ctx.deliveries.push((number, grant));
    }
    Ok(())
}

/// Removes a ticket whose waiter gave up; a lease already handed to it goes
/// back, to the next ticket if one waits.
pub(crate) fn leave(ctx: &mut Ctx<'_>, ticket: u64) -> std::result::Result<(), Failure> {
    let handed: Option<(Option<i64>, Option<i64>, i64)> = ctx
        .connection
        .prepare_cached(
            "DELETE FROM tickets WHERE id = ?1 AND pool = ?2
             RETURNING lease_id, credential_id, units",
        )?
        .query_row(params![ticket as i64, ctx.pool], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    if let Some((None, _, 2..)) = handed {
        // A weighted ticket may have held the line up: it goes on.
        serve(ctx)?;
    }
    if let Some((Some(lease_id), Some(credential_id), _)) = handed {
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
