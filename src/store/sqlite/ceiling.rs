//! The store's own statements without its thread, for the benches: what a
//! batch of grants and releases costs in SQLite alone, so that a bench can
//! set the store beside its SQL ceiling in the same run.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use crate::credential::ReleaseOutcome;
use crate::error::{Error, Result};
use crate::store::{GrantAttempt, Line, DEFAULT_TICKET_TTL};
use crate::time::{duration_ms, now_ms};

use super::ctx::{Ctx, Failure, LeaseNames};
use super::schema::{self, ConnectionOptions};
use super::writer::start_batch;
use super::{leases, DEFAULT_BUSY_TIMEOUT, DEFAULT_LEASE_TTL};

/// A connection to a store's file that runs the store's grant and release
/// statements itself, on the caller's thread.
#[doc(hidden)]
pub struct Ceiling {
    connection: Connection,
    pool: String,
    names: RefCell<LeaseNames>,
    line: Arc<Line>,
}

impl std::fmt::Debug for Ceiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ceiling").field("pool", &self.pool).finish()
    }
}

impl Ceiling {
    /// Opens the store at `path` (made if missing) for the pool `default`,
    /// set up as the store thread's connection is.
    pub fn open(path: &Path) -> Result<Self> {
        let options = ConnectionOptions {
            synchronous_full: false,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            create: true,
        };
        Ok(Self {
            connection: schema::open(path, &options)?,
            pool: "default".into(),
            names: RefCell::default(),
            line: Line::new(),
        })
    }

    /// Runs `pairs` grants, then their releases, in one `BEGIN IMMEDIATE`
    /// transaction, as one batch of the store thread does: the start of the
    /// batch (reclaim, the line), each grant's and each release's statements.
    ///
    /// # Errors
    ///
    /// What SQLite reports; [`Error::NoCredentials`]-like refusals when
    /// fewer than `pairs` credentials are free.
    pub fn pairs(&self, pairs: usize) -> Result<()> {
        let fail = |failure: Failure| match failure {
            Failure::Refused(error) => error,
            Failure::Sql(error) => Error::StoreUnavailable {
                reason: error.to_string(),
            },
        };
        self.connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|error| fail(error.into()))?;
        let mut ctx = Ctx::new(
            &self.connection,
            &self.pool,
            now_ms(),
            &self.names,
            &self.line,
            duration_ms(DEFAULT_TICKET_TTL),
        );
        let run = (|| -> std::result::Result<(), Failure> {
            start_batch(&mut ctx)?;
            let mut tokens = Vec::with_capacity(pairs);
            for _ in 0..pairs {
                match leases::grant(
                    &mut ctx,
                    Some(DEFAULT_LEASE_TTL),
                    &crate::store::Want::any(),
                )? {
                    GrantAttempt::Granted(grant) => tokens.push(grant.token()),
                    _ => {
                        return Err(Failure::Refused(Error::StoreUnavailable {
                            reason: format!("fewer than {pairs} credentials are free"),
                        }))
                    }
                }
            }
            for token in tokens {
                leases::release(&mut ctx, token, &ReleaseOutcome::Success)?;
            }
            Ok(())
        })();
        drop(ctx);
        match run {
            Ok(()) => self
                .connection
                .execute_batch("COMMIT")
                .map_err(|error| fail(error.into())),
            Err(failure) => {
                let _ = self.connection.execute_batch("ROLLBACK");
                self.names.borrow_mut().0.clear();
                Err(fail(failure))
            }
        }
    }
}
