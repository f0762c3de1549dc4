//! The lease path in SQL: grant, release, renew, and the reclaiming of
//! expired leases and finished cool-downs.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::credential::{Credential, ReleaseOutcome, Secret};
use crate::error::Error;
use crate::ids::{CredentialId, LeaseId, LeaseToken};
use crate::store::{ExpiredLease, Grant, GrantAttempt};
use crate::time::{duration_ms, earliest, from_ms};

use super::ctx::{Ctx, Failure, Hot};
use super::schema::unsigned;

/// Ends finished cool-downs and reclaims expired leases.
pub(crate) fn reclaim(ctx: &mut Ctx<'_>) -> rusqlite::Result<()> {
    // Most batches find nothing to do: one read says so, where the two
    // changes below would each cost a statement (and the second a temporary
    // table for its RETURNING).
    let due: bool = ctx
        .connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM credentials WHERE pool = ?1
                              AND cooling_until IS NOT NULL AND cooling_until <= ?2)
                 OR EXISTS (SELECT 1 FROM leases WHERE pool = ?1
                              AND expires_at IS NOT NULL AND expires_at <= ?2)",
        )?
        .query_row(params![ctx.pool, ctx.now], |row| row.get(0))?;
    if !due {
        return Ok(());
    }
    ctx.connection
        .prepare_cached(
            "UPDATE credentials SET cooling_until = NULL
             WHERE pool = ?1 AND cooling_until IS NOT NULL AND cooling_until <= ?2",
        )?
        .execute(params![ctx.pool, ctx.now])?;
    let expired: Vec<(i64, i64)> = ctx
        .connection
        .prepare_cached(
            "DELETE FROM leases WHERE pool = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2
             RETURNING id, credential_id",
        )?
        .query_map(params![ctx.pool, ctx.now], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (lease_id, credential_id) in expired {
        let name: String = ctx
            .connection
            .prepare_cached(
                "UPDATE credentials SET holders = holders - 1 WHERE id = ?1 RETURNING name",
            )?
            .query_row([credential_id], |row| row.get(0))?;
        ctx.expired.push(ExpiredLease {
            name: name.into(),
            lease_id: LeaseId::new(unsigned(lease_id)?),
        });
    }
    Ok(())
}

/// When a cool-down ends or a lease expires next, as far as the store knows.
fn retry_at(connection: &Connection, pool: &str) -> rusqlite::Result<Option<i64>> {
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

pub(crate) fn grant(
    ctx: &mut Ctx<'_>,
    ttl: Option<Duration>,
) -> std::result::Result<GrantAttempt, Failure> {
    let (pool, now) = (ctx.pool, ctx.now);
    let free = ctx
        .statement(Hot::Pick)?
        .query_row([pool], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, u32>(4)?,
            ))
        })
        .optional()?;
    let Some((id, name, secret, extra, capacity)) = free else {
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
        let retry_at = retry_at(ctx.connection, pool)?;
        return Ok(GrantAttempt::Busy {
            retry_at: retry_at.map(from_ms),
        });
    };
    ctx.statement(Hot::Mark)?.execute(params![id, now])?;
    let expires_at = ttl.map(|ttl| now.saturating_add(duration_ms(ttl)));
    ctx.statement(Hot::Record)?
        .execute(params![pool, id, now, expires_at])?;
    let lease_id = ctx.connection.last_insert_rowid();
    let name: Arc<str> = name.into();
    ctx.names.borrow_mut().insert(lease_id, name.clone());
    Ok(GrantAttempt::Granted(Grant {
        credential: Credential::new(
            CredentialId::new(unsigned(id)?),
            name,
            Secret::new(secret),
            extra,
            capacity,
        ),
        lease_id: LeaseId::new(unsigned(lease_id)?),
        acquired_at: from_ms(now),
        expires_at: expires_at.map(from_ms),
    }))
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
    let deleted = ctx.statement(Hot::Forget)?.execute(params![
        lease.lease_id().get() as i64,
        credential_id,
        pool
    ])?;
    if deleted == 0 {
        return Err(Failure::Refused(lease_lost(ctx, lease)?));
    }
    let effect = outcome.effect();
    let cool_until = effect
        .cool_for
        .map(|pause| now.saturating_add(duration_ms(pause)));
    let disable = effect.disable;
    ctx.statement(Hot::Return)?
        .execute(params![credential_id, cool_until, disable])?;
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
