//! A large add (an import) that does not stall the other processes.
//!
//! SQLite has one writer at a time, so a million rows written in the
//! store's own transaction hold every other process's grants back for as
//! long as the writing takes. Instead, the rows are staged first in TEMP
//! tables of a connection of the import's own: a temporary database takes
//! no lock on the store, so grants go on while the entries are written and
//! checked. One short transaction then copies them into the pool, in
//! SQLite's own code, and makes them visible at once. An import that fails,
//! is cancelled or is killed before that transaction commits leaves the
//! store as it was: the TEMP tables go with their connection.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{params, Connection};

use crate::credential::NewCredential;
use crate::error::{Error, Result};
use crate::limits::Limit;
use crate::store::{Added, OnDuplicate, Progress};
use crate::time::now_ms;

use super::limits::default_rates_in;
use super::schema::{self, ConnectionOptions};

/// From how many entries an add is staged; a smaller one is written in
/// the store thread's transaction, batched with the grants.
pub(crate) const STAGED_FROM: usize = 10_000;

/// How often staging reports its progress, in entries.
const PROGRESS_EVERY: usize = 10_000;

/// How many times the copy is tried again when a name it checked was taken
/// in between (another process added it).
const ATTEMPTS: usize = 3;

/// Adds `credentials` to `pool` in the store at `path`, all or nothing,
/// staged (see the module's documentation). Stops, changing nothing, when
/// `cancelled` is set before the last transaction begins.
pub(crate) fn add_staged(
    path: &Path,
    options: &ConnectionOptions,
    pool: &str,
    credentials: &[NewCredential],
    on_duplicate: OnDuplicate,
    progress: &Progress,
    cancelled: &AtomicBool,
) -> Result<Added> {
    let options = ConnectionOptions {
        create: false,
        ..options.clone()
    };
    let connection = schema::open(path, &options)?;
    let sql = |error: rusqlite::Error| schema::transaction_error(path, &error);
    let staging = stage(
        &connection,
        pool,
        credentials,
        on_duplicate,
        progress,
        cancelled,
    )
    .map_err(sql)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut skipped = staging.skipped.clone();
        let taken = names_taken(&connection, pool).map_err(sql)?;
        if on_duplicate == OnDuplicate::Fail {
            let first_taken = taken.first().map(|(seq, _)| *seq);
            let first = match (first_taken, staging.repeated) {
                (Some(taken), Some(repeated)) => Some(taken.min(repeated)),
                (taken, repeated) => taken.or(repeated),
            };
            if let Some(entry) = first {
                return Err(Error::DuplicateName {
                    name: credentials[entry].name.clone(),
                    pool: pool.to_string(),
                    entry: Some(entry),
                });
            }
        } else {
            skipped.extend(taken.iter().map(|(seq, _)| *seq));
            skipped.sort_unstable();
        }
        if cancelled.load(Ordering::Relaxed) {
            return Err(Error::StoreUnavailable {
                reason: "the import was cancelled before it was committed; nothing was added"
                    .to_string(),
            });
        }
        match copy(&connection, pool, &taken) {
            Ok(count) => return Ok(Added { count, skipped }),
            // A name checked free was added since: check again.
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    && attempt < ATTEMPTS => {}
            Err(error) => return Err(sql(error)),
        }
    }
}

/// What staging found.
struct Staging {
    /// The entries whose name came earlier in the input (skipped).
    skipped: Vec<usize>,
    /// The first entry whose name came earlier in the input, when
    /// duplicates fail (staging stops there).
    repeated: Option<usize>,
}

/// Writes the entries and their limits into TEMP tables, in one
/// transaction that locks nothing of the store's.
fn stage(
    connection: &Connection,
    pool: &str,
    credentials: &[NewCredential],
    on_duplicate: OnDuplicate,
    progress: &Progress,
    cancelled: &AtomicBool,
) -> rusqlite::Result<Staging> {
    connection.execute_batch(
        "DROP TABLE IF EXISTS temp.staged;
         DROP TABLE IF EXISTS temp.staged_limits;
         CREATE TEMP TABLE staged (
             seq             INTEGER PRIMARY KEY,
             name            TEXT    NOT NULL UNIQUE,
             secret          TEXT    NOT NULL,
             extra           TEXT,
             capacity        INTEGER NOT NULL,
             disabled_reason TEXT,
             limited         INTEGER NOT NULL
         );
         CREATE TEMP TABLE staged_limits (
             seq            INTEGER NOT NULL,
             scope          TEXT    NOT NULL,
             rate_count     INTEGER,
             rate_window_ms INTEGER,
             log            BLOB,
             until          INTEGER,
             remaining      INTEGER NOT NULL,
             inherited      INTEGER NOT NULL
         );
         BEGIN;",
    )?;
    let staged = (|| -> rusqlite::Result<Staging> {
        let defaults = default_rates_in(connection, pool)?;
        let now = now_ms();
        let mut insert = connection.prepare(
            "INSERT INTO temp.staged (seq, name, secret, extra, capacity, disabled_reason, limited)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING",
        )?;
        let mut insert_limit = connection.prepare(
            "INSERT INTO temp.staged_limits
                 (seq, scope, rate_count, rate_window_ms, log, until, remaining, inherited)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut staging = Staging {
            skipped: Vec::new(),
            repeated: None,
        };
        for (index, credential) in credentials.iter().enumerate() {
            if index > 0 && index % PROGRESS_EVERY == 0 {
                if cancelled.load(Ordering::Relaxed) {
                    break;
                }
                progress.report(index);
            }
            let limits = limits_of(credential, &defaults, now);
            let inserted = insert.execute(params![
                index as i64,
                credential.name,
                credential.secret.expose(),
                credential.extra,
                credential.capacity,
                credential.disabled,
                !limits.is_empty(),
            ])?;
            if inserted == 0 {
                match on_duplicate {
                    OnDuplicate::Skip => {
                        staging.skipped.push(index);
                        continue;
                    }
                    OnDuplicate::Fail => {
                        staging.repeated = Some(index);
                        break;
                    }
                }
            }
            for limit in &limits {
                insert_limit.execute(params![
                    index as i64,
                    limit.scope,
                    limit.rate.map(|rate| rate.count()),
                    limit.rate.map(|rate| rate.window_ms()),
                    limit.rate.map(|_| limit.log.to_bytes()),
                    limit.until,
                    limit.remaining,
                    limit.inherited,
                ])?;
            }
        }
        Ok(staging)
    })();
    connection.execute_batch(if staged.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    let staging = staged?;
    connection.execute_batch("CREATE INDEX temp.staged_limits_by_seq ON staged_limits (seq)")?;
    progress.report(credentials.len());
    Ok(staging)
}

/// The limits a new credential starts with, as the store thread's add
/// writes them: the pool's default quota of each scope the credential has
/// no quota of its own for, and its own.
fn limits_of(
    credential: &NewCredential,
    defaults: &[(String, crate::Rate)],
    now: i64,
) -> Vec<Limit> {
    let mut limits = Vec::new();
    for (scope, rate) in defaults {
        if !credential.rates.iter().any(|(own, _)| own == scope) {
            let mut limit = Limit::new(scope);
            limit.set_default_rate(Some(*rate));
            limits.push(limit);
        }
    }
    for (scope, rate) in &credential.rates {
        let default = defaults
            .iter()
            .find(|(kept, _)| kept == scope)
            .map(|(_, rate)| *rate);
        let mut limit = Limit::new(scope);
        limit.set_own_rate(Some(*rate), default);
        limits.push(limit);
    }
    limits.retain(|limit| !limit.is_idle(now));
    limits
}

/// The staged entries (position, name) whose name the pool holds now, in
/// input order: read without the write lock.
fn names_taken(connection: &Connection, pool: &str) -> rusqlite::Result<Vec<(usize, String)>> {
    let mut statement = connection.prepare(
        "SELECT s.seq, s.name FROM temp.staged AS s
         WHERE EXISTS (SELECT 1 FROM main.credentials AS c WHERE c.pool = ?1 AND c.name = s.name)
         ORDER BY s.seq",
    )?;
    let rows = statement.query_map([pool], |row| {
        Ok((row.get::<_, i64>(0)? as usize, row.get(1)?))
    })?;
    rows.collect()
}

/// The one transaction that takes the write lock: copies the staged
/// entries but those `taken` into the pool, with their limits; returns how
/// many were added.
fn copy(connection: &Connection, pool: &str, taken: &[(usize, String)]) -> rusqlite::Result<usize> {
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let copied = (|| -> rusqlite::Result<usize> {
        let mut forget = connection.prepare("DELETE FROM temp.staged WHERE seq = ?1")?;
        for (seq, _) in taken {
            forget.execute([*seq as i64])?;
        }
        let now = now_ms();
        let count = connection.execute(
            "INSERT INTO main.credentials
                 (pool, name, secret, extra, capacity, created_at, disabled_reason, limited)
             SELECT ?1, name, secret, extra, capacity, ?2, disabled_reason, limited
             FROM temp.staged ORDER BY seq",
            params![pool, now],
        )?;
        connection.execute(
            "INSERT INTO main.limits (credential_id, scope, pool, rate_count, rate_window_ms, log,
                                      until, remaining, blocked_until, inherited)
             SELECT c.id, l.scope, ?1, l.rate_count, l.rate_window_ms, l.log,
                    l.until, l.remaining, NULL, l.inherited
             FROM temp.staged_limits AS l
             JOIN temp.staged AS s ON s.seq = l.seq
             JOIN main.credentials AS c ON c.pool = ?1 AND c.name = s.name",
            [pool],
        )?;
        Ok(count)
    })();
    match copied {
        Ok(count) => {
            connection.execute_batch("COMMIT")?;
            Ok(count)
        }
        Err(error) => {
            connection.execute_batch("ROLLBACK")?;
            Err(error)
        }
    }
}
