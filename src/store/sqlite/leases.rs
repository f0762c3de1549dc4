//! The lease path in SQL: grant, release, renew, and the reclaiming of
//! expired leases and finished cool-downs.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::credential::{Credential, ReleaseOutcome, Secret};
use crate::error::Error;
use crate::ids::{this_process, CredentialId, LeaseId, LeaseToken};
use crate::store::{ExpiredLease, Grant, GrantAttempt, Want};
use crate::time::{duration_ms, earliest, from_ms};

use super::ctx::{Ctx, Failure, Hot};
use super::limits;
use super::schema::unsigned;

/// Ends finished cool-downs and reclaims expired leases; notes whether
/// tickets wait (the line then hands out what came free, in `line.rs`).
pub(crate) fn reclaim(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    // Most batches find nothing to do: one read says so, where the two
    // changes below would each cost a statement (and the second a temporary
    // table for its RETURNING).
    // The same read says whether tickets wait in line.
    let (due, tickets): (bool, bool) = ctx
        .connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM credentials WHERE pool = ?1
                              AND cooling_until IS NOT NULL AND cooling_until <= ?2)
                 OR EXISTS (SELECT 1 FROM leases WHERE pool = ?1
                              AND expires_at IS NOT NULL AND expires_at <= ?2)
                 OR EXISTS (SELECT 1 FROM limits WHERE pool = ?1
                              AND blocked_until IS NOT NULL AND blocked_until <= ?2),
                    EXISTS (SELECT 1 FROM tickets WHERE pool = ?1)",
        )?
        .query_row(params![ctx.pool, ctx.now], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    ctx.tickets = tickets;
    if !due {
        return Ok(());
    }
    ctx.connection
        .prepare_cached(
            "UPDATE credentials SET cooling_until = NULL
             WHERE pool = ?1 AND cooling_until IS NOT NULL AND cooling_until <= ?2",
        )?
        .execute(params![ctx.pool, ctx.now])?;
    ctx.connection
        .prepare_cached(
            "UPDATE limits SET blocked_until = NULL
             WHERE pool = ?1 AND blocked_until IS NOT NULL AND blocked_until <= ?2",
        )?
        .execute(params![ctx.pool, ctx.now])?;
    let expired: Vec<(i64, i64, i64)> = ctx
        .connection
        .prepare_cached(
            "DELETE FROM leases WHERE pool = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2
             RETURNING id, credential_id, units",
        )?
        .query_map(params![ctx.pool, ctx.now], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (lease_id, credential_id, units) in expired {
        let name: String = ctx
            .connection
            .prepare_cached(
                "UPDATE credentials SET holders = holders - ?2 WHERE id = ?1 RETURNING name",
            )?
            .query_row([credential_id, units], |row| row.get(0))?;
        ctx.expired.push(ExpiredLease {
            name: name.into(),
            lease_id: LeaseId::new(unsigned(lease_id)?),
        });
    }
    Ok(())
}

/// When a cool-down ends or a lease expires next, as far as the store
/// knows; for a scope, also when its own limits next allow a grant.
fn retry_at(ctx: &Ctx<'_>, want: &Want) -> rusqlite::Result<Option<i64>> {
    let general = retry_any(ctx.connection, ctx.pool)?;
    if want.is_any() {
        return Ok(general);
    }
    let scoped: Option<i64> = ctx
        .connection
        .prepare_cached(
            "SELECT min(blocked_until) FROM limits
             WHERE pool = ?1 AND scope = ?2 AND blocked_until > ?3",
        )?
        .query_row(params![ctx.pool, want.scope_key(), ctx.now], |row| {
            row.get(0)
        })?;
    Ok(earliest(general, scoped))
}

fn retry_any(connection: &Connection, pool: &str) -> rusqlite::Result<Option<i64>> {
    let cooling: Option<i64> = connection
        .prepare_cached(
            "SELECT min(cooling_until) FROM credentials WHERE pool = ?1 AND cooling_until IS NOT NULL",
        )?
        .query_row([pool], |row| row.get(0))?;
    let expiry: Option<i64> = connection
        .prepare_cached(
            "SELECT min(expires_at) FROM leases WHERE pool = ?1 AND expires_at IS NOT NULL",
        )?
        .query_row([pool], |row| row.get(0))?;
    Ok(earliest(cooling, expiry))
}

/// A credential that can be leased now.
pub(crate) struct Free {
    id: i64,
    name: String,
    secret: String,
    extra: Option<String>,
    capacity: u32,
    /// Whether it has limits to count the grant against.
    limited: bool,
}

fn free_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<Free> {
    Ok(Free {
        id: row.get(0)?,
        name: row.get(1)?,
        secret: row.get(2)?,
        extra: row.get(3)?,
        capacity: row.get(4)?,
        limited: row.get(5)?,
    })
}

/// The least recently used credential with a unit free that serves
/// `want` (with as many units free as it asks), if any.
pub(crate) fn pick(ctx: &mut Ctx<'_>, want: &Want) -> rusqlite::Result<Option<Free>> {
    let pool = ctx.pool;
    if want.is_weighted() || !ctx.kept.is_empty() {
        return Ok(pick_units(ctx, want)?.0);
    }
    if want.is_any() {
        return ctx
            .statement(Hot::Pick)?
            .query_row([pool], free_of)
            .optional();
    }
    // The limits of every scope are in `cooling_until` already.
    let scope = want.scope_key();
    match want.name() {
        Some(name) => ctx
            .connection
            .prepare_cached(
                "SELECT id, name, secret, extra, capacity, limited FROM credentials c
                 WHERE pool = ?1 AND name = ?4 AND disabled_reason IS NULL
                   AND cooling_until IS NULL AND holders < capacity
                   AND NOT EXISTS (SELECT 1 FROM limits l WHERE l.credential_id = c.id
                                     AND l.scope = ?2 AND l.blocked_until > ?3)",
            )?
            .query_row(params![pool, scope, ctx.now, name], free_of)
            .optional(),
        None => ctx
            .connection
            .prepare_cached(
                "SELECT id, name, secret, extra, capacity, limited FROM credentials c
                 WHERE pool = ?1 AND disabled_reason IS NULL AND cooling_until IS NULL
                   AND holders < capacity
                   AND NOT EXISTS (SELECT 1 FROM limits l WHERE l.credential_id = c.id
                                     AND l.scope = ?2 AND l.blocked_until > ?3)
                 ORDER BY last_used_at, id LIMIT 1",
            )?
            .query_row(params![pool, scope, ctx.now], free_of)
            .optional(),
    }
}

/// For a weighted `want` (or any, while credentials are kept for weighted
/// tickets): the least recently used credential with its units free whose
/// quotas allow that many grants now, and that is not kept for a weighted
/// ticket waiting (`ctx.kept`), if any; and, when none, the earliest time
/// a quota of one with its units free allows them.
fn pick_units(ctx: &Ctx<'_>, want: &Want) -> rusqlite::Result<(Option<Free>, Option<i64>)> {
    let (scope, units) = (want.scope_key(), want.units_asked());
    // The blocks of one grant are in the row already; the quotas of
    // several are checked on each candidate's logs.
    let mut statement = ctx.connection.prepare_cached(
        "SELECT id, name, secret, extra, capacity, limited FROM credentials c
         WHERE pool = ?1 AND (?4 IS NULL OR name = ?4) AND disabled_reason IS NULL
           AND cooling_until IS NULL AND holders < capacity AND holders + ?5 <= capacity
           AND NOT EXISTS (SELECT 1 FROM limits l WHERE l.credential_id = c.id
                             AND l.scope = ?2 AND l.blocked_until > ?3)
         ORDER BY last_used_at, id",
    )?;
    let mut rows = statement.query(params![ctx.pool, scope, ctx.now, want.name(), units])?;
    let mut free_at: Option<i64> = None;
    while let Some(row) = rows.next()? {
        let free = free_of(row)?;
        if kept(ctx, &free)? {
            continue;
        }
        if !free.limited || units == 1 {
            // One grant's limits are in the query.
            return Ok((Some(free), None));
        }
        match limits::blocked_for(ctx, free.id, scope, units)? {
            None => return Ok((Some(free), None)),
            Some(at) => free_at = earliest(free_at, Some(at)),
        }
    }
    Ok((None, free_at.filter(|&at| at != crate::limits::NEVER)))
}

/// Whether `free` is kept for a weighted ticket waiting: one it may serve
/// (its name, its scope not blocked there) and has the room (and a quota
/// large enough) for.
fn kept(ctx: &Ctx<'_>, free: &Free) -> rusqlite::Result<bool> {
    for waiting in &ctx.kept {
        let serves = waiting.name().is_none_or(|name| name == free.name)
            && waiting.units_asked() <= free.capacity;
        if !serves {
            continue;
        }
        let scope = waiting.scope_key();
        if !free.limited
            || (limits::blocked_for(ctx, free.id, scope, 1)?.is_none()
                && limits::blocked_for(ctx, free.id, scope, waiting.units_asked())?
                    != Some(crate::limits::NEVER))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The most units one grant for `want` may take: the largest capacity of
/// an enabled credential that may serve it, less where a quota is
/// smaller; `None` when none is enabled.
fn most_units(ctx: &Ctx<'_>, want: &Want) -> rusqlite::Result<Option<u32>> {
    ctx.connection
        .prepare_cached(
            "SELECT max(min(capacity, coalesce(
                        (SELECT min(rate_count) FROM limits l
                         WHERE l.credential_id = c.id AND l.scope IN ('', ?2)
                           AND l.rate_count IS NOT NULL), capacity)))
             FROM credentials c
             WHERE pool = ?1 AND disabled_reason IS NULL AND (?3 IS NULL OR name = ?3)",
        )?
        .query_row(params![ctx.pool, want.scope_key(), want.name()], |row| {
            row.get(0)
        })
}

/// Leases `free` for `want` until `expires_at` (ms; `None`: no expiry).
pub(crate) fn lease(
    ctx: &mut Ctx<'_>,
    free: Free,
    want: &Want,
    expires_at: Option<i64>,
) -> rusqlite::Result<Grant> {
    let now = ctx.now;
    lease_dated(ctx, free, want, expires_at, now, Some(this_process()))
}

/// As [`lease`], the lease dated `acquired_at` and held by `holder`: a
/// lease handed to another process's ticket is dated at its claim
/// deadline, the latest its waiter can first use it, and counts against
/// quotas from then until claimed; its holder is written at the claim.
pub(crate) fn lease_dated(
    ctx: &mut Ctx<'_>,
    free: Free,
    want: &Want,
    expires_at: Option<i64>,
    acquired_at: i64,
    holder: Option<&str>,
) -> rusqlite::Result<Grant> {
    let (pool, now) = (ctx.pool, ctx.now);
    let Free {
        id,
        name,
        secret,
        extra,
        capacity,
        limited,
    } = free;
    let units = want.units_asked();
    ctx.statement(Hot::Mark)?.execute(params![id, now, units])?;
    if limited {
        limits::record_grant(ctx, id, want.scope_key(), acquired_at, units)?;
    }
    ctx.statement(Hot::Record)?.execute(params![
        pool,
        id,
        acquired_at,
        expires_at,
        units,
        holder
    ])?;
    let lease_id = ctx.connection.last_insert_rowid();
    grant_of(
        ctx,
        Free {
            id,
            name,
            secret,
            extra,
            capacity,
            limited,
        },
        lease_id,
        expires_at,
        units,
    )
}

/// The grant of lease `lease_id` of `units` on `credential`, acquired
/// now; its name is kept for the release.
fn grant_of(
    ctx: &Ctx<'_>,
    credential: Free,
    lease_id: i64,
    expires_at: Option<i64>,
    units: u32,
) -> rusqlite::Result<Grant> {
    let name: Arc<str> = credential.name.into();
    ctx.names.borrow_mut().insert(lease_id, name.clone());
    Ok(Grant {
        credential: Credential::new(
            CredentialId::new(unsigned(credential.id)?),
            name,
            Secret::new(credential.secret),
            credential.extra,
            credential.capacity,
        ),
        lease_id: LeaseId::new(unsigned(lease_id)?),
        acquired_at: from_ms(ctx.now),
        expires_at: expires_at.map(from_ms),
        units,
    })
}

/// The grant of a lease that exists: the credential as it is now.
pub(crate) fn granted(
    ctx: &mut Ctx<'_>,
    credential_id: i64,
    lease_id: i64,
    expires_at: Option<i64>,
    units: u32,
) -> rusqlite::Result<Grant> {
    let credential = ctx
        .connection
        .prepare_cached("SELECT name, secret, extra, capacity FROM credentials WHERE id = ?1")?
        .query_row([credential_id], |row| {
            Ok(Free {
                id: credential_id,
                name: row.get(0)?,
                secret: row.get(1)?,
                extra: row.get(2)?,
                capacity: row.get(3)?,
                limited: false,
            })
        })?;
    grant_of(ctx, credential, lease_id, expires_at, units)
}

/// When a lease for `ttl` granted now expires, in ms.
pub(crate) fn expiry(ctx: &Ctx<'_>, ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| ctx.now.saturating_add(duration_ms(ttl)))
}

pub(crate) fn grant(
    ctx: &mut Ctx<'_>,
    ttl: Option<Duration>,
    want: &Want,
) -> std::result::Result<GrantAttempt, Failure> {
    // Newcomers do not take what is kept for a weighted ticket that too
    // few units are free for (`pick` leaves it out).
    let (picked, free_at) = match want.is_weighted() {
        true => pick_units(ctx, want)?,
        false => (pick(ctx, want)?, None),
    };
    match picked {
        Some(free) => {
            let expires_at = expiry(ctx, ttl);
            Ok(GrantAttempt::Granted(lease(ctx, free, want, expires_at)?))
        }
        None => Ok(GrantAttempt::Busy {
            retry_at: earliest(why_busy(ctx, want)?, free_at).map(from_ms),
        }),
    }
}

/// Nothing is free for `want`: fails when nothing is enabled (or the
/// credential asked for by name is missing or disabled), else says when
/// something changes by itself.
pub(crate) fn why_busy(ctx: &Ctx<'_>, want: &Want) -> std::result::Result<Option<i64>, Failure> {
    let pool = ctx.pool;
    if let Some(name) = want.name() {
        let disabled: Option<Option<String>> = ctx
            .connection
            .prepare_cached(
                "SELECT disabled_reason FROM credentials WHERE pool = ?1 AND name = ?2",
            )?
            .query_row(params![pool, name], |row| row.get(0))
            .optional()?;
        match disabled {
            None => {
                return Err(Failure::Refused(Error::UnknownCredential {
                    name: name.to_string(),
                    pool: pool.to_string(),
                }))
            }
            Some(Some(reason)) => {
                return Err(Failure::Refused(Error::Disabled {
                    name: name.to_string(),
                    pool: pool.to_string(),
                    reason,
                }))
            }
            Some(None) => {}
        }
    }
    let enabled: bool = ctx
        .connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM credentials WHERE pool = ?1 AND disabled_reason IS NULL)",
        )?
        .query_row([pool], |row| row.get(0))?;
    if !enabled {
        return Err(Failure::Refused(Error::NoCredentials {
            pool: pool.to_string(),
        }));
    }
    if want.is_weighted() {
        let most = most_units(ctx, want)?.unwrap_or(0);
        if want.units_asked() > most {
            return Err(Failure::Refused(Error::TooManyUnits {
                units: want.units_asked(),
                most,
                named: want.name().is_some(),
                pool: pool.to_string(),
            }));
        }
    }
    Ok(retry_at(ctx, want)?)
}

pub(crate) fn lease_lost(ctx: &Ctx<'_>, lease: LeaseToken) -> std::result::Result<Error, Failure> {
    let name: Option<String> = ctx
        .connection
        .prepare_cached("SELECT name FROM credentials WHERE id = ?1 AND pool = ?2")?
        .query_row(
            params![lease.credential_id().get() as i64, ctx.pool],
            |row| row.get(0),
        )
        .optional()?;
    Ok(Error::LeaseLost {
        credential: name.unwrap_or_else(|| lease.credential_id().to_string()),
        lease_id: lease.lease_id(),
    })
}

pub(crate) fn release(
    ctx: &mut Ctx<'_>,
    lease: LeaseToken,
    outcome: &ReleaseOutcome,
) -> std::result::Result<Arc<str>, Failure> {
    let (pool, now) = (ctx.pool, ctx.now);
    let credential_id = lease.credential_id().get() as i64;
    let lease_id = lease.lease_id().get() as i64;
    let mut units: i64 = 1;
    let deleted = ctx
        .statement(Hot::Forget)?
        .execute(params![lease_id, credential_id, pool])?;
    if deleted == 0 {
        // A weighted lease, or none.
        let weighted: Option<i64> = ctx
            .connection
            .prepare_cached(
                "DELETE FROM leases WHERE id = ?1 AND credential_id = ?2 AND pool = ?3
                 RETURNING units",
            )?
            .query_row(params![lease_id, credential_id, pool], |row| row.get(0))
            .optional()?;
        match weighted {
            Some(held) => units = held,
            None => return Err(Failure::Refused(lease_lost(ctx, lease)?)),
        }
    }
    let effect = outcome.effect();
    let cool_until = effect.cooling_until(now);
    let disable = effect.disable;
    if let Some(limited) = effect.report {
        limits::report(ctx, credential_id, limited)?;
    }
    ctx.statement(Hot::Return)?
        .execute([credential_id, units])?;
    if let Some(until) = cool_until {
        limits::cool(ctx, credential_id, until)?;
    }
    if let Some(reason) = disable {
        ctx.connection
            .prepare_cached("UPDATE credentials SET disabled_reason = ?2 WHERE id = ?1")?
            .execute(params![credential_id, reason])?;
    }
    let known = ctx
        .names
        .borrow_mut()
        .0
        .remove(&(lease.lease_id().get() as i64));
    if let Some(name) = known {
        return Ok(name);
    }
    let name: String = ctx
        .statement(Hot::NameOf)?
        .query_row([credential_id], |row| row.get(0))?;
    Ok(name.into())
}

pub(crate) fn renew(
    ctx: &mut Ctx<'_>,
    lease: LeaseToken,
    ttl: Option<Duration>,
) -> std::result::Result<Option<std::time::SystemTime>, Failure> {
    let expires_at = ttl.map(|ttl| ctx.now.saturating_add(duration_ms(ttl)));
    let changed = ctx
        .connection
        .prepare_cached(
            "UPDATE leases SET expires_at = ?4 WHERE id = ?1 AND credential_id = ?2 AND pool = ?3",
        )?
        .execute(params![
            lease.lease_id().get() as i64,
            lease.credential_id().get() as i64,
            ctx.pool,
            expires_at
        ])?;
    if changed == 0 {
        return Err(Failure::Refused(lease_lost(ctx, lease)?));
    }
    Ok(expires_at.map(from_ms))
}
