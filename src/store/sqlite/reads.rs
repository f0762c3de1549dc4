//! The reads (`list`, `reveal`, `stats`) on a connection of their own.
//!
//! In WAL mode a reader never blocks the writer, nor the writer a reader:
//! a `list` of a million credentials runs beside the store thread's grants
//! instead of in front of them. Each read is one statement, so it sees one
//! committed state. Before it, the store sends the thread an empty request
//! and waits for its commit: every change sent before the read (a dropped
//! lease's release, say) has then committed, and expired leases have been
//! reclaimed, so a read shows what a grant would see.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, OpenFlags};

use crate::credential::{
    Credential, CredentialInfo, LeaseInfo, PoolSummary, Secret, StateKind, Stats, StoredCredential,
};
use crate::error::{Error, Result};
use crate::ids::CredentialId;
use crate::time::{from_ms, now_ms};

use super::schema::{self, unsigned};

/// The connection the reads run on, on a thread of its own.
pub(crate) struct Reader {
    connection: tokio_rusqlite::Connection,
    pool: Arc<str>,
    path: Arc<Path>,
}

/// `?1` pool, `?2` now in ms: the leases of each credential past their
/// expiry, which the reads leave out of its holders (the store thread
/// reclaims them at its next write; a read never waits for it).
const EXPIRED: &str = "WITH expired AS (
    SELECT credential_id, sum(units) AS n FROM leases
    WHERE pool = ?1 AND expires_at <= ?2
    GROUP BY credential_id
)";

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("path", &self.path).finish()
    }
}

impl Reader {
    /// Opens the store at `path`, which the writer has opened already, to read.
    pub(crate) async fn open(path: &Path, pool: &str, busy_timeout: Duration) -> Result<Self> {
        let connection = tokio_rusqlite::Connection::open_with_flags(
            schema::plain_path(path),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .await
        .map_err(|error| schema::annotate(path, error))?;
        let reader = Self {
            connection,
            pool: pool.into(),
            path: path.into(),
        };
        reader
            .read(move |connection, _, _| connection.busy_timeout(busy_timeout))
            .await?;
        Ok(reader)
    }

    /// Runs `read` on the reader's thread with the pool's name and the time.
    async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection, &str, i64) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let answer = self
            .connection
            .call(move |connection| read(connection, &pool, now_ms()))
            .await;
        answer.map_err(|error| match error {
            tokio_rusqlite::Error::Error(error) => schema::transaction_error(&self.path, &error),
            other => Error::StoreUnavailable {
                reason: format!(
                    "the reading connection to {} has stopped: {other}",
                    self.path.display()
                ),
            },
        })
    }

    /// Every credential, without secrets, in id order; a lease past its
    /// expiry is not counted as a holder, reclaimed or not.
    pub(crate) async fn list(&self) -> Result<Vec<CredentialInfo>> {
        self.list_page(None, usize::MAX).await
    }

    /// At most `limit` credentials after the one `after`, as [`Reader::list`].
    pub(crate) async fn list_page(
        &self,
        after: Option<CredentialId>,
        limit: usize,
    ) -> Result<Vec<CredentialInfo>> {
        let after = after.map_or(0, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |connection, pool, now_ms| {
            // Three statements, one snapshot: a read transaction.
            connection.execute_batch("BEGIN DEFERRED")?;
            let listed = list_in(connection, pool, now_ms, Which::After { after, limit });
            connection.execute_batch("COMMIT")?;
            listed
        })
        .await
    }

    /// The credential named `name`, as [`Reader::list`] shows it.
    pub(crate) async fn info(&self, name: &str) -> Result<Option<CredentialInfo>> {
        let name = name.to_string();
        self.read(move |connection, pool, now_ms| {
            connection.execute_batch("BEGIN DEFERRED")?;
            let listed = list_in(connection, pool, now_ms, Which::Named(&name));
            connection.execute_batch("COMMIT")?;
            Ok(listed?.pop())
        })
        .await
    }
}

/// Which credentials `list_in` reads.
enum Which<'a> {
    /// At most `limit` after the id `after`, in id order.
    After { after: i64, limit: i64 },
    /// The one of this name.
    Named(&'a str),
}

/// The credentials of `pool` that `which` asks for, in id order, with
/// their limits and live leases.
fn list_in(
    connection: &rusqlite::Connection,
    pool: &str,
    now_ms: i64,
    which: Which<'_>,
) -> rusqlite::Result<Vec<CredentialInfo>> {
    let (filter, key, limit): (&str, rusqlite::types::Value, i64) = match which {
        Which::After { after, limit } => ("id > ?3", after.into(), limit),
        Which::Named(name) => ("name = ?3", name.to_string().into(), 1),
    };
    let mut statement = connection.prepare_cached(&format!(
        "{EXPIRED} SELECT id, name, capacity, holders - coalesce(expired.n, 0),
                disabled_reason, cooling_until,
                extra IS NOT NULL, last_used_at, use_count, created_at
         FROM credentials LEFT JOIN expired ON expired.credential_id = credentials.id
         WHERE pool = ?1 AND {filter} ORDER BY id LIMIT ?4"
    ))?;
    let rows = statement.query_map(params![pool, now_ms, key, limit], |row| {
        Ok(StoredCredential {
            id: CredentialId::new(unsigned(row.get(0)?)?),
            name: row.get(1)?,
            capacity: row.get(2)?,
            holders: row.get(3)?,
            disabled_reason: row.get(4)?,
            cooling_until: row.get::<_, Option<i64>>(5)?.map(from_ms),
            has_extra: row.get(6)?,
            last_used_at: row.get::<_, Option<i64>>(7)?.map(from_ms),
            use_count: unsigned(row.get(8)?)?,
            created_at: from_ms(row.get(9)?),
            limits: Vec::new(),
            leases: Vec::new(),
        })
    })?;
    let stored = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
        return Ok(Vec::new());
    };
    // The limits and leases of the ids in `(after, last]`.
    let (after, last) = (first.id.get() as i64 - 1, last.id.get() as i64);
    let mut limits = super::limits::of_ids(connection, pool, after, last)?;
    // Leases are not indexed by credential: reading them scans the pool's
    // live leases, so a page that holds none skips it.
    let mut leases = if stored.iter().any(|c| c.holders > 0) {
        leases_of_ids(connection, pool, now_ms, after, last)?
    } else {
        HashMap::new()
    };
    let now = from_ms(now_ms);
    Ok(stored
        .into_iter()
        .map(|mut stored| {
            let id = stored.id.get() as i64;
            stored.limits = limits
                .remove(&id)
                .unwrap_or_default()
                .iter()
                .map(|limit| limit.info(now_ms))
                .collect();
            stored.leases = leases.remove(&id).unwrap_or_default();
            CredentialInfo::new(stored, now)
        })
        .collect())
}

/// The leases of `pool`'s credentials with ids in `(after, last]` not past
/// their expiry, by credential, oldest first.
fn leases_of_ids(
    connection: &rusqlite::Connection,
    pool: &str,
    now_ms: i64,
    after: i64,
    last: i64,
) -> rusqlite::Result<HashMap<i64, Vec<LeaseInfo>>> {
    let mut leases: HashMap<i64, Vec<LeaseInfo>> = HashMap::new();
    let mut statement = connection.prepare_cached(
        "SELECT credential_id, holder, acquired_at, expires_at, units FROM leases
         WHERE pool = ?1 AND (expires_at IS NULL OR expires_at > ?2)
           AND credential_id > ?3 AND credential_id <= ?4
         ORDER BY id",
    )?;
    let mut rows = statement.query(params![pool, now_ms, after, last])?;
    while let Some(row) = rows.next()? {
        leases.entry(row.get(0)?).or_default().push(LeaseInfo::new(
            row.get(1)?,
            from_ms(row.get(2)?),
            row.get::<_, Option<i64>>(3)?.map(from_ms),
            row.get(4)?,
        ));
    }
    Ok(leases)
}

impl Reader {
    /// Every credential's name, secret and extra text, in id order.
    pub(crate) async fn reveal(&self) -> Result<Vec<Credential>> {
        self.read(|connection, pool, _| {
            let mut statement = connection.prepare_cached(
                "SELECT id, name, secret, extra, capacity FROM credentials WHERE pool = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map([pool], |row| {
                Ok(Credential::new(
                    CredentialId::new(unsigned(row.get(0)?)?),
                    row.get::<_, String>(1)?.into(),
                    Secret::new(row.get::<_, String>(2)?),
                    row.get(3)?,
                    row.get(4)?,
                ))
            })?;
            rows.collect()
        })
        .await
    }

    /// Every pool in the file that holds a credential, by name.
    pub(crate) async fn pools(&self) -> Result<Vec<PoolSummary>> {
        self.read(|connection, _pool, _now| {
            let mut statement = connection.prepare_cached(
                "SELECT pool, count(*) FROM credentials GROUP BY pool ORDER BY pool",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(PoolSummary::new(row.get(0)?, unsigned(row.get(1)?)?))
            })?;
            rows.collect()
        })
        .await
    }

    /// Counts by state. The statement groups the credentials by what
    /// decides their state, and [`StateKind::of`] decides it, as for every store.
    pub(crate) async fn stats(&self) -> Result<Stats> {
        self.read(|connection, pool, now| {
            let mut statement = connection.prepare_cached(&format!(
                "{EXPIRED} SELECT disabled_reason IS NOT NULL, coalesce(cooling_until, 0) > ?2,
                        holders - coalesce(expired.n, 0) >= capacity, count(*),
                        coalesce(sum(holders - coalesce(expired.n, 0)), 0),
                        coalesce(sum(use_count), 0)
                 FROM credentials LEFT JOIN expired ON expired.credential_id = credentials.id
                 WHERE pool = ?1 GROUP BY 1, 2, 3"
            ))?;
            let mut stats = Stats::default();
            let mut rows = statement.query(params![pool, now])?;
            while let Some(row) = rows.next()? {
                // Read as u64: a negative count (a file edited by hand) is an error, not a wrap.
                let kind = StateKind::of(row.get(0)?, row.get(1)?, row.get(2)?);
                stats.add(kind, unsigned(row.get(3)?)?, unsigned(row.get(4)?)?);
                stats.uses += unsigned(row.get(5)?)?;
            }
            drop(rows);
            stats.scope_blocked = unsigned(
                connection
                    .prepare_cached(
                        "SELECT count(DISTINCT credential_id) FROM limits
                         WHERE pool = ?1 AND scope <> '' AND blocked_until > ?2",
                    )?
                    .query_row(params![pool, now], |row| row.get(0))?,
            )?;
            // The waiters of every process: their tickets.
            stats.waiters = unsigned(
                connection
                    .prepare_cached(super::line::WAITING_TICKETS)?
                    .query_row(params![pool, now], |row| row.get(0))?,
            )?;
            Ok(stats)
        })
        .await
    }
}
