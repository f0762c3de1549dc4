//! The one error type of credpool.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::ids::LeaseId;

/// Everything that can go wrong in credpool.
///
/// Messages name the thing that is wrong (credential name, path, field) and,
/// where it helps, what to do about it. No message ever contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pool has no enabled credential at all, so waiting would never end.
    #[error(
        "pool `{pool}` has no enabled credentials: add some (`credpool add`, `credpool import`) \
         or enable a disabled one"
    )]
    NoCredentials {
        /// The pool's name.
        pool: String,
    },

    /// `acquire_timeout` (or a shutdown wait) gave up.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// What the caller was waiting for.
        what: &'static str,
    },

    /// The pool was closed with [`Pool::close`](crate::Pool::close).
    #[error("the pool is closed: no new leases are handed out")]
    Closed,

    /// A lease that is no longer held was released or renewed.
    ///
    /// The lease expired and was taken over by another holder, was already
    /// released, or was never granted by this store. Nothing was changed.
    #[error(
        "lease {lease_id} on credential {credential} is not held: it expired and was taken over, \
         was already released, or was never granted; nothing was changed"
    )]
    LeaseLost {
        /// The credential's name, or `#id` when the store does not know the id.
        credential: String,
        /// The stale or forged lease id.
        lease_id: LeaseId,
    },

    /// A credential asked for by name is disabled, so waiting for it would
    /// never end.
    #[error("credential {name:?} in pool `{pool}` is disabled ({reason}): enable it, or ask for any credential")]
    Disabled {
        /// The credential's name.
        name: String,
        /// The pool's name.
        pool: String,
        /// Why it was disabled.
        reason: String,
    },

    /// A weighted grant asked for more units than any enabled credential
    /// (or the one named) has capacity for, or than its quotas allow in
    /// one window: it could never be served.
    #[error(
        "{units} units asked at once in pool `{pool}`, but {} takes at most {most}: ask for fewer units, or raise a capacity (or quota)",
        if *.named { "the credential asked for" } else { "any enabled credential" }
    )]
    TooManyUnits {
        /// The units asked for.
        units: u32,
        /// The most units any credential that could serve the ask takes at once.
        most: u32,
        /// Whether one credential was asked for by name.
        named: bool,
        /// The pool's name.
        pool: String,
    },

    /// No credential has this name.
    #[error("no credential named {name:?} in pool `{pool}`")]
    UnknownCredential {
        /// The name asked for.
        name: String,
        /// The pool's name.
        pool: String,
    },

    /// A credential with this name exists already.
    #[error("a credential named {name:?} already exists in pool `{pool}`{}", entry_suffix(*.entry))]
    DuplicateName {
        /// The name that exists.
        name: String,
        /// The pool's name.
        pool: String,
        /// The position of the entry in a batch, when the name came from one.
        entry: Option<usize>,
    },

    /// The credential has leases out and cannot be removed without force.
    #[error(
        "credential {name:?} is in use by {holders} lease(s): wait for it to be released, \
         or remove it with force"
    )]
    InUse {
        /// The credential's name.
        name: String,
        /// How many leases hold it.
        holders: u32,
    },

    /// Input that credpool refuses, with the field and the reason.
    #[error("{0}")]
    InvalidInput(Box<InvalidInput>),

    /// The store was written by a newer credpool.
    #[error(
        "{location}: store schema version {found} is newer than this build supports ({supported}); \
         upgrade credpool to open it"
    )]
    StoreTooNew {
        /// The file path or database that holds the store.
        location: String,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },

    /// The file or database is not a credpool store; nothing was written to it.
    #[error("{location}: not a credpool store ({reason}); nothing was written to it")]
    NotAStore {
        /// The file path or database.
        location: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The store cannot serve requests any more (its thread stopped or panicked).
    #[error("the credential store is unavailable: {reason}")]
    StoreUnavailable {
        /// Why.
        reason: String,
    },

    /// A release could not be committed yet (another process holds the
    /// store's write lock, the disk is full, the connection is lost). The
    /// store keeps it and tries again until it commits; until then the pool
    /// counts the lease as out, so [`Pool::wait_for_leases`](crate::Pool::wait_for_leases)
    /// waits for it. There is nothing to do but wait, or fix the cause.
    #[error(
        "{location}: the release of lease {lease_id} is not committed yet ({reason}); \
         it is kept and tried again until it commits, and the lease counts as out until then"
    )]
    ReleasePending {
        /// The file path or database.
        location: String,
        /// The lease.
        lease_id: LeaseId,
        /// Why the store could not commit it.
        reason: String,
    },

    /// A transaction failed and was rolled back: none of its changes were made.
    #[error(
        "{location}: transaction failed and was rolled back, nothing in it was applied: {reason}"
    )]
    Transaction {
        /// The file path or database.
        location: String,
        /// What went wrong.
        reason: String,
    },

    /// A file system error, with the path it concerns.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An error from SQLite. The SQLite store reports
    /// [`SqliteFile`](Error::SqliteFile) instead, which names the file.
    #[cfg(feature = "sqlite")]
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// An error from SQLite about a store file, with what to do where it helps.
    #[cfg(feature = "sqlite")]
    #[error("{}: {source}{}", path.display(), hint_suffix(*hint))]
    SqliteFile {
        /// The store file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
        /// What to do about it, when there is something to do.
        hint: Option<&'static str>,
    },

    /// An error from Postgres, or from the connection to it.
    ///
    /// The server's DETAIL text is left out, because for some constraint
    /// failures it quotes the whole row, secret included.
    #[cfg(feature = "postgres")]
    #[error("postgres: {message}")]
    Postgres {
        /// What failed, with the server's message and SQLSTATE code when it sent one.
        message: String,
        /// The SQLSTATE code, when the server sent one (`40P01` for a deadlock, say).
        code: Option<String>,
    },
}

#[cfg(feature = "sqlite")]
fn hint_suffix(hint: Option<&'static str>) -> String {
    hint.map(|hint| format!(": {hint}")).unwrap_or_default()
}

fn entry_suffix(entry: Option<usize>) -> String {
    match entry {
        Some(index) => format!(" (entry {index})"),
        None => String::new(),
    }
}

/// Details of [`Error::InvalidInput`]: which field of which entry is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidInput {
    /// The field that is wrong: `name`, `capacity`, `secret`, `extra`, …
    pub field: &'static str,
    /// Why it is wrong.
    pub reason: String,
    /// The position of the entry in a batch (0-based), when it came from one.
    pub entry: Option<usize>,
    /// The credential's name, when it is known and printable.
    pub name: Option<String>,
}

impl InvalidInput {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
            entry: None,
            name: None,
        }
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}", self.field)?;
        match (self.entry, &self.name) {
            (Some(index), Some(name)) => write!(f, " in entry {index} ({name:?})")?,
            (Some(index), None) => write!(f, " in entry {index}")?,
            (None, Some(name)) => write!(f, " of credential {name:?}")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.reason)
    }
}

impl From<InvalidInput> for Error {
    fn from(value: InvalidInput) -> Self {
        Error::InvalidInput(Box::new(value))
    }
}

impl Error {
    /// Attaches a batch position to an error about one entry of a batch.
    pub(crate) fn at_entry(self, index: usize) -> Self {
        self.with_entry(Some(index))
    }

    /// Sets (or, with `None`, takes away: one credential is no batch) the
    /// batch position of an error about one entry.
    pub(crate) fn with_entry(self, entry: Option<usize>) -> Self {
        match self {
            Error::InvalidInput(mut invalid) => {
                invalid.entry = entry;
                Error::InvalidInput(invalid)
            }
            Error::DuplicateName { name, pool, .. } => Error::DuplicateName { name, pool, entry },
            other => other,
        }
    }
}

/// The result type of credpool.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Self {
        if let Some(db) = error.as_db_error() {
            return Error::Postgres {
                message: format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
                code: Some(db.code().code().to_string()),
            };
        }
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::Postgres {
            message,
            code: None,
        }
    }
}
