//! Checkpoints on a thread of their own.
//!
//! In WAL mode a commit appends the pages it changed to the log, and a
//! checkpoint copies them back into the database file and syncs it. By
//! default SQLite runs a checkpoint inside the commit that takes the log past
//! 1,000 pages, so every few hundred requests one batch waits for the copying
//! and the syncing. Here the store thread only notes the log's size after each
//! commit (a WAL hook) and, each time the log grows by [`CHECKPOINT_PAGES`],
//! wakes a thread that runs a passive checkpoint on a connection of its own.
//! A passive checkpoint takes no lock that writers wait for, in this process
//! or another.
//!
//! The log starts again from its beginning only after a checkpoint has
//! copied all of it, which one running beside a busy writer never does. So
//! past [`CATCH_UP_PAGES`] the store thread runs a passive checkpoint itself,
//! between batches, when little is left to copy.

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};

use super::schema::{self, ConnectionOptions};
use crate::error::Result;

/// The log size, in pages, past which a checkpoint is asked for (SQLite's
/// own default for its automatic checkpoints).
pub(crate) const CHECKPOINT_PAGES: c_int = 1000;

/// The log size past which the store thread checkpoints itself. The log
/// starts again from its beginning only when a checkpoint has copied all of
/// it, which a checkpoint running beside a busy writer never does; most of
/// the copying (and syncing) is done by then, on the other thread.
pub(crate) const CATCH_UP_PAGES: c_int = 4 * CHECKPOINT_PAGES;

thread_local! {
    /// The log's size after the last commit on this thread's connection.
    static LOG_PAGES: Cell<c_int> = const { Cell::new(0) };
}

/// The WAL hook of the store thread's connection. A plain function, as
/// SQLite's hook API wants, so the size goes through a thread-local.
fn note_log_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    LOG_PAGES.set(pages);
    Ok(())
}

/// Wakes the checkpoint thread. Dropping it stops the thread and waits for
/// it, so that the file is left alone once the store thread has ended.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    marks: Cell<Marks>,
}

/// Where the store thread next acts, in log pages.
#[derive(Debug, Clone, Copy)]
struct Marks {
    /// The log's size after the last batch.
    last: c_int,
    /// Wake the other thread at this size.
    wake: c_int,
    /// Checkpoint on the store thread at this size.
    catch_up: c_int,
}

impl Default for Marks {
    fn default() -> Self {
        Self {
            last: 0,
            wake: CHECKPOINT_PAGES,
            catch_up: CATCH_UP_PAGES,
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Checkpointer {
    /// Starts the checkpoint thread for the store at `path`, and turns off
    /// the automatic checkpoints of `connection`, which must be used on this
    /// thread only (the store thread's).
    pub(crate) fn start(
        connection: &Connection,
        path: &Path,
        options: &ConnectionOptions,
    ) -> Result<Self> {
        let checkpoints = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| schema::annotate(path, error))?;
        schema::configure(&checkpoints, path, options)?;
        // One wake-up waiting is enough: a checkpoint covers every commit
        // made before it starts.
        let (wake, woken) = sync_channel::<()>(1);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("credpool-sqlite-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let done = checkpoints.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                    });
                    match done {
                        Ok((log, copied)) => {
                            tracing::trace!(path = %shown, log, copied, "checkpoint");
                        }
                        Err(error) => {
                            tracing::warn!(path = %shown, %error, "checkpoint failed; the next commit asks again");
                        }
                    }
                }
            })
            .map_err(|source| crate::error::Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        // Replaces SQLite's automatic checkpoints, which use the same hook.
        connection.wal_hook(Some(note_log_pages));
        Ok(Self {
            wake: Some(wake),
            thread: Some(thread),
            marks: Cell::default(),
        })
    }

    /// Called on the store thread after each batch. Wakes the other thread
    /// each time the log grows by another [`CHECKPOINT_PAGES`] (not at every
    /// commit: back-to-back checkpoints would hold the checkpoint lock nearly
    /// all the time), and past [`CATCH_UP_PAGES`] runs a checkpoint itself.
    pub(crate) fn after_commit(&self, connection: &Connection) {
        let pages = LOG_PAGES.get();
        let mut marks = self.marks.get();
        if pages < marks.last {
            // The log started again from its beginning.
            marks = Marks::default();
        }
        marks.last = pages;
        if pages >= marks.catch_up {
            // PASSIVE, as SQLite's own: it never waits, for the other thread
            // or for readers in other processes. When it cannot copy the
            // whole log, it is tried again once the log has grown some more;
            // when it can, the next commit starts the log again.
            let done = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok(row.get::<_, i64>(0)? == 0 && row.get::<_, i64>(1)? == row.get::<_, i64>(2)?)
            });
            match done {
                Ok(true) => {}
                Ok(false) => marks.catch_up = pages + CHECKPOINT_PAGES / 4,
                Err(error) => {
                    tracing::warn!(%error, "checkpoint failed");
                    marks.catch_up = pages + CHECKPOINT_PAGES / 4;
                }
            }
        } else if pages >= marks.wake {
            if let Some(wake) = &self.wake {
                let _ = wake.try_send(());
            }
            marks.wake = pages + CHECKPOINT_PAGES;
        }
        self.marks.set(marks);
    }
}
