//! Opening a store file: refusing what is not ours, creating, migrating.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// `PRAGMA application_id` of a credpool store: "CRDP".
pub(crate) const APPLICATION_ID: i32 = 0x4352_4450;

/// Forward migrations: entry `n` takes a store from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    "
    CREATE TABLE credpool_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO credpool_meta (key, value) VALUES ('application', 'credpool');

    CREATE TABLE credentials (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        pool            TEXT    NOT NULL,
        name            TEXT    NOT NULL,
        secret          TEXT    NOT NULL,
        extra           TEXT,
        capacity        INTEGER NOT NULL CHECK (capacity >= 1),
        holders         INTEGER NOT NULL DEFAULT 0 CHECK (holders >= 0),
        disabled_reason TEXT,
        cooling_until   INTEGER,
        last_used_at    INTEGER,
        use_count       INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        UNIQUE (pool, name)
    );
    -- Least recently used first among the credentials that can be handed out.
    CREATE INDEX credentials_free ON credentials (pool, last_used_at, id)
        WHERE disabled_reason IS NULL AND cooling_until IS NULL AND holders < capacity;
    CREATE INDEX credentials_cooling ON credentials (pool, cooling_until)
        WHERE cooling_until IS NOT NULL;

    CREATE TABLE leases (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        pool          TEXT    NOT NULL,
        credential_id INTEGER NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
        acquired_at   INTEGER NOT NULL,
        expires_at    INTEGER
    );
    -- No index on credential_id: the table holds only live leases, so the
    -- cascade on a credential's removal scans a few rows, while every grant
    -- and release would pay to keep such an index.
    CREATE INDEX leases_by_expiry ON leases (pool, expires_at) WHERE expires_at IS NOT NULL;
    ",
];

/// The store schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How the connection should be set up.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionOptions {
    pub(crate) synchronous_full: bool,
    pub(crate) busy_timeout: Duration,
}

fn location(path: &Path) -> String {
    path.display().to_string()
}

fn not_a_store(path: &Path, reason: impl Into<String>) -> Error {
    Error::NotAStore {
        location: location(path),
        reason: reason.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating if missing) the store at `path`, ready for use.
///
/// Nothing is written to a file until it is known to be empty or a credpool
/// store of a version this build can read.
pub(crate) fn open(path: &Path, options: &ConnectionOptions) -> Result<Connection> {
    let created = create_if_missing(path)?;
    if !created {
        check_header(path)?;
        check_read_only(path)?;
    }
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|error| annotate(path, error))?;
    configure(&connection, path, options)?;
    migrate(&connection, path)?;
    Ok(connection)
}

/// Creates an empty file with mode 0600 if there is none; says whether it did.
fn create_if_missing(path: &Path) -> Result<bool> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        match std::fs::metadata(parent) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io_error(
                    path,
                    std::io::Error::other(format!("{} is not a directory", parent.display())),
                ))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(io_error(
                    path,
                    std::io::Error::new(
                        error.kind(),
                        format!("directory {} does not exist", parent.display()),
                    ),
                ))
            }
            Err(error) => return Err(io_error(path, error)),
        }
    }
    let mut create = OpenOptions::new();
    create.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        create.mode(0o600);
    }
    match create.open(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(io_error(path, error)),
    }
}

/// Refuses a file that does not start with SQLite's header.
fn check_header(path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|error| io_error(path, error))?;
    let meta = file.metadata().map_err(|error| io_error(path, error))?;
    if meta.is_dir() {
        return Err(not_a_store(path, "it is a directory"));
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut header = [0u8; 16];
    let read = file
        .read(&mut header)
        .map_err(|error| io_error(path, error))?;
    if read < 16 || &header != b"SQLite format 3\0" {
        return Err(not_a_store(path, "not a SQLite database"));
    }
    Ok(())
}

/// Looks at an existing file read-only and refuses it unless it is empty or
/// a credpool store this build can read.
fn check_read_only(path: &Path) -> Result<()> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| annotate(path, error))?;
    verdict(path, inspect(&connection, path)?).map(|_| ())
}

/// Whether a database we inspected may be used: `Ok(version)` for an empty
/// database (0) or a credpool store this build reads, an error otherwise.
fn verdict(
    path: &Path,
    (version, application_id, tables, ours): (i64, i32, i64, bool),
) -> Result<i64> {
    let fresh = tables == 0 && version == 0 && application_id == 0;
    if !fresh && (application_id != APPLICATION_ID || !ours) {
        return Err(not_a_store(
            path,
            "a SQLite database without credpool's tables",
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::StoreTooNew {
            location: location(path),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// Reads the version, the application id, the number of tables, and whether
/// credpool's marker table is there.
fn inspect(connection: &Connection, path: &Path) -> Result<(i64, i32, i64, bool)> {
    let read = || -> rusqlite::Result<(i64, i32, i64, bool)> {
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let application_id: i32 =
            connection.query_row("PRAGMA application_id", [], |row| row.get(0))?;
        let tables: i64 = connection.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |row| row.get(0),
        )?;
        let ours: bool = connection.query_row(
            "SELECT count(*) = 1 FROM sqlite_master WHERE type = 'table' AND name = 'credpool_meta'",
            [],
            |row| row.get(0),
        )?;
        Ok((version, application_id, tables, ours))
    };
    read().map_err(|error| annotate(path, error))
}

fn configure(connection: &Connection, path: &Path, options: &ConnectionOptions) -> Result<()> {
    connection
        .busy_timeout(options.busy_timeout)
        .map_err(|error| annotate(path, error))?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|error| annotate(path, error))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(not_a_store(
            path,
            format!("cannot use write-ahead logging here (journal mode stays {mode})"),
        ));
    }
    let synchronous = if options.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    connection
        .execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
        ))
        .map_err(|error| annotate(path, error))?;
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction.
fn migrate(connection: &Connection, path: &Path) -> Result<()> {
    let run = || -> Result<()> {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        // Checked again under the write lock: another process may have got here first.
        let version = verdict(path, inspect(connection, path)?)?;
        for migration in &MIGRATIONS[version as usize..] {
            connection.execute_batch(migration)?;
        }
        if version < SCHEMA_VERSION {
            connection.execute_batch(&format!(
                "PRAGMA user_version = {SCHEMA_VERSION}; PRAGMA application_id = {APPLICATION_ID};"
            ))?;
        }
        connection.execute_batch("COMMIT")?;
        Ok(())
    };
    let result = run();
    if result.is_err() && !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    result
}

/// Turns SQLite's "not a database" into an error that names the file.
pub(crate) fn annotate(path: &Path, error: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(failure, _) = &error {
        if failure.code == rusqlite::ErrorCode::NotADatabase {
            return not_a_store(path, "not a SQLite database");
        }
    }
    Error::Sqlite(error)
}
