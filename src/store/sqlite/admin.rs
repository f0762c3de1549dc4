//! The administration in SQL: add, remove, disable and enable, new secrets.

use rusqlite::{params, OptionalExtension};

use crate::credential::{CredentialChange, NewCredential, Secret};
use crate::error::Error;
use crate::store::{Added, OnDuplicate, Progress};

use super::ctx::{Ctx, Failure};
use super::limits;

/// How many entries an add writes between two progress reports.
const PROGRESS_EVERY: usize = 10_000;

pub(crate) fn add_many(
    ctx: &mut Ctx<'_>,
    credentials: &[NewCredential],
    on_duplicate: OnDuplicate,
    progress: &Progress,
) -> std::result::Result<Added, Failure> {
    let connection = ctx.connection;
    connection.execute_batch("SAVEPOINT add_many")?;
    let result = (|| -> std::result::Result<Added, Failure> {
        let sql = match on_duplicate {
            OnDuplicate::Fail => {
                "INSERT INTO credentials (pool, name, secret, extra, capacity, created_at, disabled_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            }
            OnDuplicate::Skip => {
                "INSERT OR IGNORE INTO credentials (pool, name, secret, extra, capacity, created_at, disabled_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            }
        };
        let mut insert = connection.prepare_cached(sql)?;
        let defaults = limits::default_rates(ctx)?;
        let mut added = Added::default();
        for (index, credential) in credentials.iter().enumerate() {
            if index > 0 && index % PROGRESS_EVERY == 0 {
                progress.report(index);
            }
            let inserted = insert.execute(params![
                ctx.pool,
                credential.name,
                credential.secret.expose(),
                credential.extra,
                credential.capacity,
                ctx.now,
                credential.disabled,
            ]);
            match inserted {
                Ok(0) => added.skipped.push(index),
                Ok(count) => {
                    added.count += count;
                    if !credential.rates.is_empty() || !defaults.is_empty() {
                        let id = connection.last_insert_rowid();
                        for (scope, rate) in &defaults {
                            if !credential.rates.iter().any(|(own, _)| own == scope) {
                                limits::set_default(ctx, id, scope, Some(*rate))?;
                            }
                        }
                        for (scope, rate) in &credential.rates {
                            limits::set_rate(ctx, id, scope, Some(*rate))?;
                        }
                    }
                }
                Err(rusqlite::Error::SqliteFailure(failure, _))
                    if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
                {
                    return Err(Failure::Refused(Error::DuplicateName {
                        name: credential.name.clone(),
                        pool: ctx.pool.to_string(),
                        entry: Some(index),
                    }));
                }
                Err(error) => return Err(Failure::Sql(error)),
            }
        }
        progress.report(credentials.len());
        Ok(added)
    })();
    match &result {
        Ok(_) => connection.execute_batch("RELEASE add_many")?,
        Err(_) => connection.execute_batch("ROLLBACK TO add_many; RELEASE add_many")?,
    }
    result
}

fn credential_id_by_name(ctx: &Ctx<'_>, name: &str) -> std::result::Result<(i64, u32), Failure> {
    ctx.connection
        .prepare_cached("SELECT id, holders FROM credentials WHERE pool = ?1 AND name = ?2")?
        .query_row(params![ctx.pool, name], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?
        .ok_or_else(|| Failure::Refused(unknown(ctx, name)))
}

fn unknown(ctx: &Ctx<'_>, name: &str) -> Error {
    Error::UnknownCredential {
        name: name.to_string(),
        pool: ctx.pool.to_string(),
    }
}

pub(crate) fn remove(
    ctx: &mut Ctx<'_>,
    name: &str,
    force: bool,
) -> std::result::Result<(), Failure> {
    let (id, holders) = credential_id_by_name(ctx, name)?;
    if holders > 0 && !force {
        return Err(Failure::Refused(Error::InUse {
            name: name.to_string(),
            holders,
        }));
    }
    ctx.connection
        .prepare_cached("DELETE FROM credentials WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Ends every lease of a credential (leases handed to tickets included:
/// their claims find them gone); returns how many.
pub(crate) fn revoke(ctx: &mut Ctx<'_>, name: &str) -> std::result::Result<u32, Failure> {
    let (id, _) = credential_id_by_name(ctx, name)?;
    // Each lease gives back its units (a weighted one more than one).
    let ended: Vec<i64> = ctx
        .connection
        .prepare_cached("DELETE FROM leases WHERE credential_id = ?1 RETURNING units")?
        .query_map([id], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ctx.connection
        .prepare_cached("UPDATE credentials SET holders = holders - ?2 WHERE id = ?1")?
        .execute(params![id, ended.iter().sum::<i64>()])?;
    Ok(u32::try_from(ended.len()).unwrap_or(u32::MAX))
}

pub(crate) fn set_disabled(
    ctx: &mut Ctx<'_>,
    name: &str,
    reason: Option<&str>,
) -> std::result::Result<(), Failure> {
    let changed = ctx
        .connection
        .prepare_cached(
            "UPDATE credentials SET disabled_reason = ?3 WHERE pool = ?1 AND name = ?2",
        )?
        .execute(params![ctx.pool, name, reason])?;
    if changed == 0 {
        return Err(Failure::Refused(unknown(ctx, name)));
    }
    Ok(())
}

/// Changes what `change` sets, at once; a capacity below the holders is
/// refused.
pub(crate) fn update(
    ctx: &mut Ctx<'_>,
    name: &str,
    change: &CredentialChange,
) -> std::result::Result<(), Failure> {
    let (id, holders) = credential_id_by_name(ctx, name)?;
    if let Some(capacity) = change.capacity {
        if capacity < holders {
            return Err(Failure::Refused(crate::credential::capacity_below_holders(
                name, capacity, holders,
            )));
        }
    }
    ctx.connection
        .prepare_cached(
            "UPDATE credentials
             SET secret = coalesce(?2, secret),
                 extra = CASE WHEN ?3 THEN ?4 ELSE extra END,
                 capacity = coalesce(?5, capacity)
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            change.secret.as_ref().map(Secret::expose),
            change.extra.is_some(),
            change.extra.clone().flatten(),
            change.capacity,
        ])?;
    for (scope, rate) in &change.rates {
        limits::set_rate(ctx, id, scope, *rate)?;
    }
    Ok(())
}

/// Ends cool-downs and reported budgets (see
/// [`Admin::reset_limits`](crate::store::Admin::reset_limits)).
pub(crate) fn reset_limits(
    ctx: &mut Ctx<'_>,
    name: Option<&str>,
    scope: Option<&str>,
) -> std::result::Result<u64, Failure> {
    let ids: Vec<i64> = match name {
        Some(name) => vec![credential_id_by_name(ctx, name)?.0],
        None => ctx
            .connection
            .prepare_cached(
                "SELECT id FROM credentials WHERE pool = ?1
                   AND (cooling_until IS NOT NULL OR limited)",
            )?
            .query_map([ctx.pool], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?,
    };
    let mut reset = 0;
    for id in ids {
        reset += u64::from(limits::reset(ctx, id, scope)?);
    }
    Ok(reset)
}
