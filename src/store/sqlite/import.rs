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
    let duplicate = |entry: usize| Error::DuplicateName {
        name: credentials[entry].name.clone(),
        pool: pool.to_string(),
        entry: Some(entry),
    };
    for attempt in 1..=ATTEMPTS {
        // Read on their own, so that staging holds no snapshot of the
        // store (which would keep its `-wal` from being checkpointed).
        let defaults = default_rates_in(&connection, pool).map_err(sql)?;
        let staging = stage(
            &connection,
            credentials,
            &defaults,
            on_duplicate,
            progress,
            cancelled,
        )
        .map_err(sql)?;
        if cancelled.load(Ordering::Relaxed) {
            return Err(cancelled_error());
        }
        // The names the pool holds now, found without the write lock: a
        // refusal, or skipped, and left out of the copy.
        let taken = names_taken(&connection, pool).map_err(sql)?;
        if on_duplicate == OnDuplicate::Fail {
            let first_taken = taken.first().copied();
            let first = match (first_taken, staging.repeated) {
                (Some(taken), Some(repeated)) => Some(taken.min(repeated)),
                (taken, repeated) => taken.or(repeated),
            };
            if let Some(entry) = first {
                return Err(duplicate(entry));
            }
        }
        forget(&connection, &taken).map_err(sql)?;
        match copy(
            &connection,
            pool,
            &defaults,
            on_duplicate,
            attempt == ATTEMPTS,
        )
        .map_err(sql)?
        {
            Copied::Done { count, raced } => {
                let mut skipped = staging.skipped;
                skipped.extend(taken);
                skipped.extend(raced);
                skipped.sort_unstable();
                return Ok(Added { count, skipped });
            }
            Copied::Taken(entry) => return Err(duplicate(entry)),
            // Another process added a name or changed a default quota
            // since: stage and check again.
            Copied::Again => {}
        }
    }
    Err(Error::StoreUnavailable {
        reason: format!(
            "the import into pool `{pool}` was changed under {ATTEMPTS} times by other \
             processes (names added, default quotas set); nothing was imported: try again"
        ),
    })
}

fn cancelled_error() -> Error {
    Error::StoreUnavailable {
        reason: "the import was cancelled before it was committed; nothing was added".to_string(),
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
    credentials: &[NewCredential],
    defaults: &[(String, crate::Rate)],
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
            let limits = limits_of(credential, defaults, now);
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
    let staging = match staged {
        Ok(staging) => {
            connection.execute_batch("COMMIT")?;
            staging
        }
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            return Err(error);
        }
    };
    connection.execute_batch("CREATE INDEX temp.staged_limits_by_seq ON staged_limits (seq)")?;
    let whole = staging.repeated.is_none() && !cancelled.load(Ordering::Relaxed);
    if whole {
        progress.report(credentials.len());
    }
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

/// The staged entries whose name the pool holds now, by position, in
/// input order.
fn names_taken(connection: &Connection, pool: &str) -> rusqlite::Result<Vec<usize>> {
    let mut statement = connection.prepare(
        "SELECT s.seq FROM temp.staged AS s
         WHERE EXISTS (SELECT 1 FROM main.credentials AS c WHERE c.pool = ?1 AND c.name = s.name)
         ORDER BY s.seq",
    )?;
    let rows = statement.query_map([pool], |row| Ok(row.get::<_, i64>(0)? as usize))?;
    rows.collect()
}

/// Leaves the staged entries at `positions` out (TEMP tables only: no lock
/// of the store's).
fn forget(connection: &Connection, positions: &[usize]) -> rusqlite::Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    connection.execute_batch("BEGIN")?;
    let forgotten = (|| -> rusqlite::Result<()> {
        let mut forget = connection.prepare("DELETE FROM temp.staged WHERE seq = ?1")?;
        let mut forget_limits =
            connection.prepare("DELETE FROM temp.staged_limits WHERE seq = ?1")?;
        for &seq in positions {
            forget.execute([seq as i64])?;
            forget_limits.execute([seq as i64])?;
        }
        Ok(())
    })();
    match forgotten {
        Ok(()) => connection.execute_batch("COMMIT"),
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

/// What the copy did.
enum Copied {
    /// Committed: `count` added; `raced` the positions of names another
    /// process added since they were checked (skipped).
    Done { count: usize, raced: Vec<usize> },
    /// Refused (duplicates fail): the entry at this position has a name
    /// the pool holds, found under the write lock; nothing was changed.
    Taken(usize),
    /// Nothing was changed: a name was added or a default quota changed
    /// since staging; stage and check again.
    Again,
}

/// The one transaction that takes the write lock: copies the staged
/// entries into the pool, with their limits, unless the pool's default
/// quotas are no longer those staged with. A name another process added
/// since it was checked is skipped, or (duplicates fail) asks for another
/// attempt; on the `last` one the names are checked under the lock.
fn copy(
    connection: &Connection,
    pool: &str,
    defaults: &[(String, crate::Rate)],
    on_duplicate: OnDuplicate,
    last: bool,
) -> rusqlite::Result<Copied> {
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let copied = (|| -> rusqlite::Result<Copied> {
        if default_rates_in(connection, pool)? != defaults {
            return Ok(Copied::Again);
        }
        if on_duplicate == OnDuplicate::Fail && last {
            if let Some(&entry) = names_taken(connection, pool)?.first() {
                return Ok(Copied::Taken(entry));
            }
        }
        let before: i64 = connection.query_row(
            "SELECT coalesce(max(id), 0) FROM main.credentials",
            [],
            |row| row.get(0),
        )?;
        let staged: i64 =
            connection.query_row("SELECT count(*) FROM temp.staged", [], |row| row.get(0))?;
        let now = now_ms();
        let count = connection.execute(
            "INSERT INTO main.credentials
                 (pool, name, secret, extra, capacity, created_at, disabled_reason, limited)
             SELECT ?1, name, secret, extra, capacity, ?2, disabled_reason, limited
             FROM temp.staged AS s
             WHERE ?3 = 0 OR NOT EXISTS (SELECT 1 FROM main.credentials AS c
                                         WHERE c.pool = ?1 AND c.name = s.name)
             ORDER BY seq",
            params![pool, now, on_duplicate == OnDuplicate::Skip],
        );
        let count = match count {
            Ok(count) => count,
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                return Ok(Copied::Again);
            }
            Err(error) => return Err(error),
        };
        let raced = if (count as i64) < staged {
            let mut statement = connection.prepare(
                "SELECT s.seq FROM temp.staged AS s
                 JOIN main.credentials AS c ON c.pool = ?1 AND c.name = s.name
                 WHERE c.id <= ?2 ORDER BY s.seq",
            )?;
            let rows = statement.query_map(params![pool, before], |row| {
                Ok(row.get::<_, i64>(0)? as usize)
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        connection.execute(
            "INSERT INTO main.limits (credential_id, scope, pool, rate_count, rate_window_ms, log,
                                      until, remaining, blocked_until, inherited)
             SELECT c.id, l.scope, ?1, l.rate_count, l.rate_window_ms, l.log,
                    l.until, l.remaining, NULL, l.inherited
             FROM temp.staged_limits AS l
             JOIN temp.staged AS s ON s.seq = l.seq
             JOIN main.credentials AS c ON c.pool = ?1 AND c.name = s.name AND c.id > ?2",
            params![pool, before],
        )?;
        Ok(Copied::Done { count, raced })
    })();
    match copied {
        Ok(done @ Copied::Done { .. }) => {
            connection.execute_batch("COMMIT")?;
            Ok(done)
        }
        Ok(other) => {
            connection.execute_batch("ROLLBACK")?;
            Ok(other)
        }
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}
