//! Rate limits in SQL: a scope's quota and reported budget on one
//! credential, read and written whole (the reckoning is
//! [`Limit`](crate::limits::Limit)'s, shared with the memory store).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::limits::{Limit, Limited, QuotaLog, Rate};

use super::ctx::Ctx;

const COLUMNS: &str = "scope, rate_count, rate_window_ms, log, until, remaining, inherited";

fn limit_of(row: &Row<'_>) -> rusqlite::Result<Limit> {
    let count: Option<i64> = row.get(1)?;
    let window: Option<i64> = row.get(2)?;
    let log: Option<Vec<u8>> = row.get(3)?;
    Ok(Limit {
        scope: row.get(0)?,
        rate: count
            .zip(window)
            .and_then(|(count, window)| Rate::from_stored(count, window)),
        log: log.map_or_else(QuotaLog::default, |bytes| QuotaLog::from_bytes(&bytes)),
        until: row.get(4)?,
        remaining: row.get(5)?,
        inherited: row.get(6)?,
    })
}

/// The limit of `scope` on the credential `id`, if it has one.
fn read(ctx: &Ctx<'_>, id: i64, scope: &str) -> rusqlite::Result<Option<Limit>> {
    ctx.connection
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM limits WHERE credential_id = ?1 AND scope = ?2"
        ))?
        .query_row(params![id, scope], limit_of)
        .optional()
}

/// Writes `limit` back (or drops its row when it says nothing any more),
/// and a block of every scope into the credential's cool-down.
fn write(ctx: &Ctx<'_>, id: i64, limit: &Limit) -> rusqlite::Result<()> {
    let now = ctx.now;
    if limit.is_idle(now) {
        ctx.connection
            .prepare_cached("DELETE FROM limits WHERE credential_id = ?1 AND scope = ?2")?
            .execute(params![id, limit.scope])?;
    } else {
        ctx.connection
            .prepare_cached(
                "INSERT INTO limits (credential_id, scope, pool, rate_count, rate_window_ms, log,
                                     until, remaining, blocked_until, inherited)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (credential_id, scope) DO UPDATE SET
                     rate_count = ?4, rate_window_ms = ?5, log = ?6, until = ?7,
                     remaining = ?8, blocked_until = ?9, inherited = ?10",
            )?
            .execute(params![
                id,
                limit.scope,
                ctx.pool,
                limit.rate.map(|rate| rate.count()),
                limit.rate.map(|rate| rate.window_ms()),
                limit.rate.map(|_| limit.log.to_bytes()),
                limit.until,
                limit.remaining,
                limit.blocked_until(now),
                limit.inherited,
            ])?;
    }
    let blocked = limit
        .scope
        .is_empty()
        .then(|| limit.blocked_until(now))
        .flatten();
    if let Some(until) = blocked {
        cool(ctx, id, until)?;
    }
    ctx.connection
        .prepare_cached(
            "UPDATE credentials
             SET limited = EXISTS (SELECT 1 FROM limits WHERE credential_id = ?1)
             WHERE id = ?1",
        )?
        .execute([id])?;
    Ok(())
}

/// Counts a grant of `units` of the credential `id` for `scope` (`""`:
/// the default), dated `at`, against its limits of every scope and of
/// that one.
pub(crate) fn record_grant(
    ctx: &Ctx<'_>,
    id: i64,
    scope: &str,
    at: i64,
    units: u32,
) -> rusqlite::Result<()> {
    for scope in counted_in(scope) {
        if let Some(mut limit) = read(ctx, id, scope)? {
            limit.record_units(ctx.now, at, units);
            write(ctx, id, &limit)?;
        }
    }
    Ok(())
}

/// Until when the limits of the credential `id` refuse a grant of `units`
/// at once for `scope`; `None`: they allow it.
pub(crate) fn blocked_for(
    ctx: &Ctx<'_>,
    id: i64,
    scope: &str,
    units: u32,
) -> rusqlite::Result<Option<i64>> {
    let mut blocked = None;
    for scope in counted_in(scope) {
        if let Some(limit) = read(ctx, id, scope)? {
            blocked = crate::time::latest(blocked, limit.blocked_for(ctx.now, units));
        }
    }
    Ok(blocked)
}

/// The scopes whose limits a grant for `scope` counts against: every
/// scope's (`""`), and its own.
fn counted_in(scope: &str) -> impl Iterator<Item = &str> {
    std::iter::once("").chain((!scope.is_empty()).then_some(scope))
}

/// Takes in a budget an API reported at a release.
pub(crate) fn report(ctx: &Ctx<'_>, id: i64, limited: &Limited) -> rusqlite::Result<()> {
    let scope = limited.scope_key();
    let mut limit = read(ctx, id, scope)?.unwrap_or_else(|| Limit::new(scope));
    // The latest report holds: a cool-down of every scope that the last
    // one set ends, to be set again from what this one says.
    lift_block(ctx, id, &limit)?;
    limit.report(limited, ctx.now);
    write(ctx, id, &limit)
}

/// For the limit of every scope: ends the cool-down it set (`write` sets
/// it again from what the limit says after a change).
fn lift_block(ctx: &Ctx<'_>, id: i64, limit: &Limit) -> rusqlite::Result<()> {
    if let (true, Some(old_block)) = (limit.scope.is_empty(), limit.blocked_until(ctx.now)) {
        ctx.connection
            .prepare_cached(
                "UPDATE credentials SET cooling_until = NULL WHERE id = ?1 AND cooling_until = ?2",
            )?
            .execute(params![id, old_block])?;
    }
    Ok(())
}

/// Sets (or with `None` removes) the credential `id`'s own quota of
/// `scope`; without one, the pool's default holds.
pub(crate) fn set_rate(
    ctx: &Ctx<'_>,
    id: i64,
    scope: &str,
    rate: Option<Rate>,
) -> rusqlite::Result<()> {
    let default = default_rate(ctx, scope)?;
    change(ctx, id, scope, |limit| limit.set_own_rate(rate, default))
}

/// The pool's default quota changed for `scope` on the credential `id`.
pub(crate) fn set_default(
    ctx: &Ctx<'_>,
    id: i64,
    scope: &str,
    rate: Option<Rate>,
) -> rusqlite::Result<()> {
    change(ctx, id, scope, |limit| limit.set_default_rate(rate))
}

fn change(
    ctx: &Ctx<'_>,
    id: i64,
    scope: &str,
    apply: impl FnOnce(&mut Limit),
) -> rusqlite::Result<()> {
    let mut limit = read(ctx, id, scope)?.unwrap_or_else(|| Limit::new(scope));
    // A cool-down that the old quota of every scope set ends with it.
    lift_block(ctx, id, &limit)?;
    apply(&mut limit);
    write(ctx, id, &limit)
}

/// The pool's default quotas, by scope.
pub(crate) fn default_rates(ctx: &Ctx<'_>) -> rusqlite::Result<Vec<(String, Rate)>> {
    default_rates_in(ctx.connection, ctx.pool)
}

/// The default quotas of `pool`, by scope, read on any connection.
pub(crate) fn default_rates_in(
    connection: &Connection,
    pool: &str,
) -> rusqlite::Result<Vec<(String, Rate)>> {
    connection
        .prepare_cached(
            "SELECT scope, rate_count, rate_window_ms FROM pool_rates WHERE pool = ?1 ORDER BY scope",
        )?
        .query_map([pool], |row| {
            Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
        })?
        .filter_map(|row| match row {
            Ok((scope, count, window)) => Rate::from_stored(count, window).map(|rate| Ok((scope, rate))),
            Err(error) => Some(Err(error)),
        })
        .collect()
}

fn default_rate(ctx: &Ctx<'_>, scope: &str) -> rusqlite::Result<Option<Rate>> {
    Ok(default_rates(ctx)?
        .into_iter()
        .find(|(kept, _)| kept == scope)
        .map(|(_, rate)| rate))
}

/// Sets (or removes) the pool's default quota of `scope`, on every
/// credential without one of its own.
pub(crate) fn set_pool_default(
    ctx: &Ctx<'_>,
    scope: &str,
    rate: Option<Rate>,
) -> rusqlite::Result<()> {
    match rate {
        Some(rate) => ctx
            .connection
            .prepare_cached(
                "INSERT INTO pool_rates (pool, scope, rate_count, rate_window_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pool, scope) DO UPDATE SET rate_count = ?3, rate_window_ms = ?4",
            )?
            .execute(params![ctx.pool, scope, rate.count(), rate.window_ms()])?,
        None => ctx
            .connection
            .prepare_cached("DELETE FROM pool_rates WHERE pool = ?1 AND scope = ?2")?
            .execute(params![ctx.pool, scope])?,
    };
    let ids: Vec<i64> = ctx
        .connection
        .prepare_cached("SELECT id FROM credentials WHERE pool = ?1 ORDER BY id")?
        .query_map([ctx.pool], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in ids {
        set_default(ctx, id, scope, rate)?;
    }
    Ok(())
}

/// Moves the grant of the credential `id` for `scope` logged at `from` to
/// `to`: a lease handed to another process's ticket counts from its claim.
pub(crate) fn move_grant(
    ctx: &Ctx<'_>,
    id: i64,
    scope: &str,
    from: i64,
    to: i64,
    units: u32,
) -> rusqlite::Result<()> {
    for scope in counted_in(scope) {
        if let Some(mut limit) = read(ctx, id, scope)? {
            if limit.rate.is_some() {
                for _ in 0..units {
                    limit.log.moved(from, to);
                }
                write(ctx, id, &limit)?;
            }
        }
    }
    Ok(())
}

/// Ends the cool-downs and reported budgets of the credential `id`, in
/// `scope` or in all; whether it changed anything.
pub(crate) fn reset(ctx: &Ctx<'_>, id: i64, scope: Option<&str>) -> rusqlite::Result<bool> {
    let rows: Vec<Limit> = ctx
        .connection
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM limits WHERE credential_id = ?1 AND until IS NOT NULL"
        ))?
        .query_map([id], limit_of)?
        .collect::<rusqlite::Result<_>>()?;
    let mut changed = false;
    if scope.is_none() {
        changed |= ctx
            .connection
            .prepare_cached(
                "UPDATE credentials SET cooling_until = NULL
                 WHERE id = ?1 AND cooling_until IS NOT NULL",
            )?
            .execute([id])?
            > 0;
    }
    for mut limit in rows {
        if scope.is_none_or(|scope| scope == limit.scope) {
            limit.reset();
            write(ctx, id, &limit)?;
            changed = true;
        }
    }
    // A quota of every scope that is used up still holds.
    if let Some(limit) = read(ctx, id, "")? {
        write(ctx, id, &limit)?;
    }
    Ok(changed)
}

/// The limits of the credentials of `pool` with ids in `(after, last]`, by
/// credential id, for `list`.
pub(crate) fn of_ids(
    connection: &Connection,
    pool: &str,
    after: i64,
    last: i64,
) -> rusqlite::Result<HashMap<i64, Vec<Limit>>> {
    let mut limits: HashMap<i64, Vec<Limit>> = HashMap::new();
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS}, credential_id FROM limits
         WHERE pool = ?1 AND credential_id > ?2 AND credential_id <= ?3
         ORDER BY credential_id, scope"
    ))?;
    let mut rows = statement.query(params![pool, after, last])?;
    while let Some(row) = rows.next()? {
        limits.entry(row.get(7)?).or_default().push(limit_of(row)?);
    }
    Ok(limits)
}

/// Cools the credential `id` down in every scope until `until` (ms),
/// unless it cools down longer already.
pub(crate) fn cool(ctx: &Ctx<'_>, id: i64, until: i64) -> rusqlite::Result<()> {
    ctx.connection
        .prepare_cached(
            "UPDATE credentials SET cooling_until = max(coalesce(cooling_until, 0), ?2)
             WHERE id = ?1",
        )?
        .execute(params![id, until])?;
    Ok(())
}
