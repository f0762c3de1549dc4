//! What a request sees while it runs inside the store thread's
//! transaction: the connection, the time, the cached hot statements.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{CachedStatement, Connection};

use crate::error::Error;
use crate::store::{ExpiredLease, Grant, Line};

/// Why a job did not produce its value.
pub(crate) enum Failure {
    /// Refused with an error the caller should see; nothing was changed.
    Refused(Error),
    /// SQLite failed: the whole batch is rolled back and retried job by job.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Sql(error)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Refused(error)
    }
}

/// What a job sees while it runs inside the batch's transaction.
pub(crate) struct Ctx<'a> {
    pub(crate) connection: &'a Connection,
    pub(crate) pool: &'a str,
    pub(crate) now: i64,
    /// Leases reclaimed at the start of the batch, handed to the first grant.
    pub(crate) expired: Vec<ExpiredLease>,
    /// The grant and release statements, looked up once per batch: the
    /// statement cache hashes the SQL text on every lookup.
    hot: [Option<CachedStatement<'a>>; Hot::COUNT],
    pub(crate) names: &'a RefCell<LeaseNames>,
    /// This store's seats in the waiting line.
    pub(crate) line: &'a Arc<Line>,
    /// How long a ticket lives without a heartbeat, in ms; also the claim
    /// deadline of a credential handed to another process's ticket.
    pub(crate) ticket_ttl: i64,
    /// Whether tickets may be waiting in this pool's line: set when the
    /// batch begins, and by a grant that takes one. While none wait, a
    /// release hands nothing off and costs nothing more.
    pub(crate) tickets: bool,
    /// Grants handed to waiters seated here, to deliver after the commit.
    pub(crate) deliveries: Vec<(u64, Grant)>,
    /// Whether the line passed over a ticket that nothing free served (its
    /// scope or name): a plain grant may still find a credential free.
    pub(crate) passed_over: bool,
    /// The weighted tickets waiting that found too few units free where
    /// one would do: the credentials that may serve them are kept for
    /// them, from newcomers and from the tickets behind them.
    pub(crate) kept: Vec<crate::store::Want>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        connection: &'a Connection,
        pool: &'a str,
        now: i64,
        names: &'a RefCell<LeaseNames>,
        line: &'a Arc<Line>,
        ticket_ttl: i64,
    ) -> Self {
        Self {
            connection,
            pool,
            now,
            expired: Vec::new(),
            hot: Default::default(),
            names,
            line,
            ticket_ttl,
            tickets: false,
            deliveries: Vec::new(),
            passed_over: false,
            kept: Vec::new(),
        }
    }

    pub(crate) fn statement(&mut self, which: Hot) -> rusqlite::Result<&mut CachedStatement<'a>> {
        let slot = &mut self.hot[which as usize];
        if slot.is_none() {
            *slot = Some(self.connection.prepare_cached(which.sql())?);
        }
        slot.as_mut().ok_or(rusqlite::Error::InvalidQuery)
    }
}

/// The credential names of the leases this thread granted, by lease id, so
/// that their releases need not look the name up. A credential's name never
/// changes and its id is never reused, so an entry is right for as long as
/// its lease lives; entries go when the lease is released, and all of them
/// when a transaction is rolled back (its lease ids may be given again).
#[derive(Debug, Default)]
pub(crate) struct LeaseNames(pub(crate) HashMap<i64, Arc<str>>);

impl LeaseNames {
    /// More entries than this means leases were lost without a release
    /// (a token kept and never used): start again.
    const MAX: usize = 1 << 16;

    pub(crate) fn insert(&mut self, lease_id: i64, name: Arc<str>) {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(lease_id, name);
    }
}

/// The statements every grant and release runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hot {
    Pick,
    Mark,
    Record,
    Forget,
    Return,
    NameOf,
    NextTicket,
}

impl Hot {
    pub(crate) const COUNT: usize = 7;

    pub(crate) fn sql(self) -> &'static str {
        match self {
            // No RETURNING anywhere here: SQLite builds a temporary b-tree for
            // it on every call, which profiling showed to cost more than a
            // second statement. The batch holds the write lock throughout.
            Hot::Pick => {
                "SELECT id, name, secret, extra, capacity, limited FROM credentials
                 WHERE pool = ?1 AND disabled_reason IS NULL AND cooling_until IS NULL
                   AND holders < capacity
                 ORDER BY last_used_at, id LIMIT 1"
            }
            Hot::Mark => {
                "UPDATE credentials SET holders = holders + ?3, last_used_at = ?2,
                        use_count = use_count + 1
                 WHERE id = ?1"
            }
            Hot::Record => {
                "INSERT INTO leases (pool, credential_id, acquired_at, expires_at, units, holder)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
            // A lease of one unit; a weighted one is ended by `release`
            // when this finds none.
            Hot::Forget => {
                "DELETE FROM leases WHERE id = ?1 AND credential_id = ?2 AND pool = ?3
                   AND units = 1"
            }
            // Only `holders`: SQLite updates an index only when the
            // statement sets a column it names (or its condition does), so
            // a plain release keeps `credentials_free` alone up to date.
            Hot::Return => "UPDATE credentials SET holders = holders - ?2 WHERE id = ?1",
            Hot::NameOf => "SELECT name FROM credentials WHERE id = ?1",
            Hot::NextTicket => {
                "SELECT id, owner, scope, name, units FROM tickets WHERE pool = ?1 AND lease_id IS NULL
                   AND id > ?2
                 ORDER BY id LIMIT 1"
            }
        }
    }
}
