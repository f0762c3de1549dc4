//! Opening a store file: refusing what is not ours, creating, migrating.

use std::fs::OpenOptions;
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
    // 1 -> 2: the waiting line, kept in the store for every process.
    "
    -- A waiter's numbered ticket (lower numbers are served first), renewed
    -- by its process until `expires_at`. A credential that comes free goes
    -- to the lowest ticket without a lease: to the waiter at once when it
    -- is in the process that freed it, else as a lease that the ticket's
    -- process claims (the lease expires at a short claim deadline).
    CREATE TABLE tickets (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        pool          TEXT    NOT NULL,
        owner         INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        lease_id      INTEGER,
        credential_id INTEGER
    );
    CREATE INDEX tickets_in_line ON tickets (pool, id) WHERE lease_id IS NULL;
    ",
    // 2 -> 3: whether any credential is enabled, asked when none is free,
    // without reading every row of a pool that is mostly disabled. Grants
    // and releases do not set `disabled_reason`, so they never touch it.
    "
    CREATE INDEX credentials_enabled ON credentials (pool) WHERE disabled_reason IS NULL;
    ",
    // 3 -> 4: rate limits by scope, and tickets that wait for a scope or a
    // credential by name.
    "
    -- One scope's limits on one credential ('' for every scope): a quota of
    -- `rate_count` grants in any `rate_window_ms` with the times of the
    -- grants in its last window (`log`, 8 bytes each, little-endian), and a
    -- budget an API reported (`remaining` grants until `until`).
    -- `blocked_until` is when the next grant is allowed, written with the
    -- rest (only time passing moves it); a block of every scope is also
    -- kept in the credential's `cooling_until`.
    CREATE TABLE limits (
        credential_id  INTEGER NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
        scope          TEXT    NOT NULL,
        pool           TEXT    NOT NULL,
        rate_count     INTEGER,
        rate_window_ms INTEGER,
        log            BLOB,
        until          INTEGER,
        remaining      INTEGER NOT NULL DEFAULT 0,
        blocked_until  INTEGER,
        -- Whether the quota is the pool's default, not the credential's own.
        inherited      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (credential_id, scope)
    ) WITHOUT ROWID;
    -- The pools' default quotas, by scope: every credential without one of
    -- its own has a row in `limits` with it (inherited).
    CREATE TABLE pool_rates (
        pool           TEXT    NOT NULL,
        scope          TEXT    NOT NULL,
        rate_count     INTEGER NOT NULL,
        rate_window_ms INTEGER NOT NULL,
        PRIMARY KEY (pool, scope)
    ) WITHOUT ROWID;
    CREATE INDEX limits_blocked ON limits (pool, blocked_until) WHERE blocked_until IS NOT NULL;
    CREATE INDEX limits_of_pool ON limits (pool, credential_id);
    -- Whether a credential has rows in `limits`, so that a grant of one
    -- without any looks for none.
    ALTER TABLE credentials ADD COLUMN limited INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tickets ADD COLUMN scope TEXT;
    ALTER TABLE tickets ADD COLUMN name TEXT;
    ",
    // 4 -> 5: weighted grants, which take several units of a credential's
    // capacity at once (`holders` counts units), and tickets that wait
    // for several.
    "
    ALTER TABLE leases ADD COLUMN units INTEGER NOT NULL DEFAULT 1 CHECK (units >= 1);
    ALTER TABLE tickets ADD COLUMN units INTEGER NOT NULL DEFAULT 1 CHECK (units >= 1);
    ",
    // 5 -> 6: who holds a lease (`<process id>@<host name>`), so that an
    // operator can tell a dead process's lease from a live one; a pool's
    // credentials in the order they were added, a page at a time (`list`).
    "
    ALTER TABLE leases ADD COLUMN holder TEXT;
    CREATE INDEX credentials_in_pool ON credentials (pool, id);
    ",
];

/// The store schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How the connection should be set up.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionOptions {
    pub(crate) synchronous_full: bool,
    pub(crate) busy_timeout: Duration,
    /// Whether a missing or empty file may be made a store (and an older
    /// schema migrated); `false` for commands that only read.
    pub(crate) create: bool,
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
/// - `path` is a path, never a URI: `file:app.db` is the file of that name.
/// - Anything but a regular file (a directory, a named pipe, a device) is
///   refused at once.
/// - A missing file is made in a temporary file beside it and linked into
///   place whole, so no process ever sees a half-made store, and of several
///   processes creating it at once one wins and the others open its file.
/// - An existing file is first inspected without being written to, and
///   without creating a `-wal` or `-shm` beside it: nothing is written to a
///   file until it is known to be empty or a credpool store of a version
///   this build can read.
/// - An empty file that credpool adopts is made private (mode 0600) before
///   any secret goes into it.
pub(crate) fn open(path: &Path, options: &ConnectionOptions) -> Result<Connection> {
    let exists = match std::fs::metadata(path) {
        Ok(meta) => {
            refuse_unless_regular(path, &meta)?;
            true
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => {
            check_parent(path)?;
            return Err(io_error(path, error));
        }
    };
    if !exists {
        if !options.create {
            return Err(io_error(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no store there: create it first (`credpool init`)",
                ),
            ));
        }
        check_parent(path)?;
        create_whole(path, options)?;
    }
    // No `File::open` of the store here, to read its header: closing any
    // descriptor of a file drops every POSIX lock this process holds on
    // it, SQLite's too, when another store of this process has it open.
    // Another process closing its last connection would then take this
    // one's WAL for its own, checkpoint it and delete it under our writes.
    // SQLite reads the header below, through its own descriptors, and
    // refuses a file that is not a database.
    let version = match inspect_without_writing(path).and_then(|seen| verdict(path, seen)) {
        Ok(SCHEMA_VERSION) => SCHEMA_VERSION,
        // The immutable look reads the main file only. While another process
        // has the store open, its newest commits (the schema of a store made
        // from an empty file, say) may still be in the `-wal`: where there is
        // one, read again through it, which creates nothing new beside the
        // file, and let that answer stand.
        _ if wal_path(path).exists() => verdict(path, inspect_through_wal(path)?)?,
        first => first?,
    };
    if version == 0 {
        if !options.create {
            return Err(not_a_store(
                path,
                "an empty file, not made a store yet: run `credpool init` to make it one",
            ));
        }
        make_private(path)?;
    } else if version < SCHEMA_VERSION && !options.create {
        return Err(not_a_store(
            path,
            format!(
                "a store of schema version {version}, older than this build's \
                 {SCHEMA_VERSION}: run `credpool init` to upgrade it"
            ),
        ));
    }
    let connection = Connection::open_with_flags(
        plain_path(path),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| annotate(path, error))?;
    configure(&connection, path, options)?;
    // A store of this version needs no write to open: a read-only command
    // works while another process holds the write lock. Its version is
    // read again through the connection (the `-wal` too, where a newer
    // credpool may have committed a migration the main file does not show
    // yet), which reads only.
    if version < SCHEMA_VERSION {
        migrate(&connection, path)?;
    } else {
        verdict(path, inspect(&connection, path)?)?;
    }
    Ok(connection)
}

/// The path as SQLite must be given it to take it as a path: the bundled
/// SQLite reads any file name that begins with `file:` as a URI, whatever
/// the open flags say, so a relative path is given as `./PATH`.
pub(crate) fn plain_path(path: &Path) -> std::path::PathBuf {
    if path.is_relative() {
        Path::new(".").join(path)
    } else {
        path.to_path_buf()
    }
}

/// Refuses a directory, a named pipe, a socket or a device.
fn refuse_unless_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "it is a directory"
    } else {
        special_kind(meta)
    };
    Err(not_a_store(path, kind))
}

#[cfg(unix)]
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_fifo() {
        "it is a named pipe, not a regular file"
    } else if kind.is_socket() {
        "it is a socket, not a regular file"
    } else if kind.is_block_device() || kind.is_char_device() {
        "it is a device, not a regular file"
    } else {
        "it is not a regular file"
    }
}

#[cfg(not(unix))]
fn special_kind(_meta: &std::fs::Metadata) -> &'static str {
    "it is not a regular file"
}

/// Refuses a path whose directory is missing or is not a directory.
fn check_parent(path: &Path) -> Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(io_error(
            path,
            std::io::Error::other(format!("{} is not a directory", parent.display())),
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(io_error(
            path,
            std::io::Error::new(
                error.kind(),
                format!("directory {} does not exist", parent.display()),
            ),
        )),
        Err(error) => Err(io_error(path, error)),
    }
}

/// Creates a private, empty file that no other file of that name races with.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut create = OpenOptions::new();
    create.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        create.mode(0o600);
    }
    create.open(path)
}

/// Makes a complete store at `path`: built in a temporary file beside it,
/// then hard-linked into place, which fails if another process put a file
/// there first (then that file is used). Where the file system has no hard
/// links, the file is created in place instead.
fn create_whole(path: &Path, options: &ConnectionOptions) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "credpool.db".into());
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or(0);
    // Process, a count within it, and the time: unique even for two
    // threads of one process creating the same store at once.
    let temp = path.with_file_name(format!(
        ".{file_name}.credpool-{}-{}-{nanos}.tmp",
        std::process::id(),
        MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    create_private(&temp).map_err(|error| io_error(path, error))?;
    let built = (|| -> Result<()> {
        let connection = Connection::open_with_flags(
            plain_path(&temp),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| annotate(path, error))?;
        configure(&connection, path, options)?;
        migrate(&connection, path)?;
        // Closing the only connection checkpoints the log into the file.
        connection
            .close()
            .map_err(|(_, error)| annotate(path, error))?;
        Ok(())
    })();
    let linked = built.and_then(|()| match std::fs::hard_link(&temp, path) {
        Ok(()) => Ok(()),
        // Another process made the store first: use its file.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // No hard links here: an empty private file, adopted and migrated
        // under the write lock like any empty file.
        Err(_) => match create_private(path) {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(io_error(path, error)),
        },
    });
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", temp.display()));
    }
    linked
}

/// Makes an adopted file private before credpool writes a secret into it;
/// SQLite gives its `-wal` and `-shm` the same mode.
fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|error| io_error(path, error))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|error| io_error(path, error))?;
            tracing::warn!(path = %path.display(), "the file was readable by other users; made it private (mode 0600) before writing secrets to it");
        }
    }
    Ok(())
}

/// Reads what [`inspect`] reads from an existing file, opened as immutable:
/// SQLite then takes no lock and creates no `-wal` or `-shm`, so a file we
/// refuse is left exactly as it was, beside it too.
fn inspect_without_writing(path: &Path) -> Result<(i64, i32, i64, bool)> {
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() == 0) {
        return Ok((0, 0, 0, false));
    }
    let absolute = std::fs::canonicalize(path).map_err(|error| io_error(path, error))?;
    let uri = format!("file:{}?immutable=1", percent_encode(&absolute));
    let connection = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| annotate(path, error))?;
    inspect(&connection, path)
}

/// The file SQLite keeps the log of `path` in.
pub(crate) fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Reads what [`inspect`] reads through the log, read-only: for a file whose
/// `-wal` is there already (so SQLite finds its companions, and makes none).
fn inspect_through_wal(path: &Path) -> Result<(i64, i32, i64, bool)> {
    let connection = Connection::open_with_flags(
        plain_path(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| annotate(path, error))?;
    inspect(&connection, path)
}

/// A path as the path part of a `file:` URI: every byte but the unreserved
/// ones and `/` written as `%XX`.
fn percent_encode(path: &Path) -> String {
    let mut encoded = String::new();
    for &byte in path.as_os_str().as_encoded_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
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
    if version < 0 {
        return Err(not_a_store(
            path,
            format!("schema version {version} is not one credpool ever wrote"),
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::StoreTooNew {
            location: location(path),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 && ours {
        return Err(not_a_store(
            path,
            "credpool's marker table without a schema version",
        ));
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
    let sql = |batch: &str| {
        connection
            .execute_batch(batch)
            .map_err(|error| annotate(path, error))
    };
    let run = || -> Result<()> {
        sql("BEGIN IMMEDIATE")?;
        // Checked again under the write lock: another process may have got here first.
        let version = verdict(path, inspect(connection, path)?)?;
        let pending = usize::try_from(version)
            .ok()
            .and_then(|version| MIGRATIONS.get(version..))
            .unwrap_or_default();
        for migration in pending {
            sql(migration)?;
        }
        if version < SCHEMA_VERSION {
            sql(&format!(
                "PRAGMA user_version = {SCHEMA_VERSION}; PRAGMA application_id = {APPLICATION_ID};"
            ))?;
        }
        sql("COMMIT")?;
        Ok(())
    };
    let result = run();
    if result.is_err() && !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    result
}

/// An SQLite error as the user should see it: naming the file, and where
/// it helps, what to do.
pub(crate) fn annotate(path: &Path, error: rusqlite::Error) -> Error {
    let hint = match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            return not_a_store(path, "not a SQLite database");
        }
        code => hint(code),
    };
    Error::SqliteFile {
        path: path.to_path_buf(),
        source: error,
        hint,
    }
}

/// What to do about an SQLite error, where there is something to do.
pub(crate) fn hint(code: Option<rusqlite::ErrorCode>) -> Option<&'static str> {
    use rusqlite::ErrorCode;
    match code? {
        ErrorCode::ReadOnly => Some(
            "the store must be writable by this user, and so must its directory \
             (SQLite writes a -wal and a -shm file beside it)",
        ),
        ErrorCode::CannotOpen => Some(
            "check that the file and its directory are writable by this user \
             (SQLite writes a -wal and a -shm file beside the store)",
        ),
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some(
            "another process holds the store's write lock for longer than the busy timeout; \
             try again, or raise the busy timeout",
        ),
        ErrorCode::DiskFull => Some("the disk is full: free some space"),
        ErrorCode::PermissionDenied => Some("this user may not read or write the file"),
        _ => None,
    }
}

/// An id read from the file, which must not be negative.
pub(crate) fn unsigned(value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, value))
}

/// A failed transaction as the caller hears it: where, what, and what to do.
pub(crate) fn transaction_error(path: &Path, error: &rusqlite::Error) -> Error {
    let reason = match hint(error.sqlite_error_code()) {
        Some(hint) => format!("{error}: {hint}"),
        None => error.to_string(),
    };
    Error::Transaction {
        location: path.display().to_string(),
        reason,
    }
}
