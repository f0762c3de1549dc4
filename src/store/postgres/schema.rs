//! Creating and migrating a store's schema, under an advisory lock, in one
//! transaction: several processes may open the same database at once, and a
//! refused database is left as it was.

use tokio_postgres::Client;

use super::rows::Columns;
use super::sql::migrations;
use crate::error::{Error, Result};

/// The schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: i64 = 7;

/// Makes `schema` a credpool schema of the current version.
pub(crate) async fn migrate(client: &mut Client, schema: &str, location: &str) -> Result<()> {
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('credpool schema ' || $1::text)::bigint)",
            &[&schema],
        )
        .await?;
    let version_table = format!("\"{schema}\".schema_version");
    let tables: i64 = transaction
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .await?
        .column(0, "table count")?;
    let has_version: bool = transaction
        .query_one(
            "SELECT to_regclass(quote_ident($1) || '.schema_version') IS NOT NULL",
            &[&schema],
        )
        .await?
        .column(0, "schema_version exists")?;
    let found: i64 = if has_version {
        let row = transaction
            .query_opt(
                &format!("SELECT version::bigint, application FROM {version_table}"),
                &[],
            )
            .await?;
        match row {
            Some(row) if row.column::<String>(1, "schema_version.application")? == "credpool" => {
                row.column(0, "schema_version.version")?
            }
            _ => {
                return Err(Error::NotAStore {
                    location: location.to_string(),
                    reason: format!(
                        "schema \"{schema}\" has a schema_version table that is not credpool's"
                    ),
                })
            }
        }
    } else if tables > 0 {
        return Err(Error::NotAStore {
            location: location.to_string(),
            reason: format!(
                "schema \"{schema}\" holds {tables} tables and none is credpool's; \
                 choose another schema"
            ),
        });
    } else {
        0
    };
    if found < 0 {
        return Err(Error::NotAStore {
            location: location.to_string(),
            reason: format!("schema version {found} is not one credpool ever wrote"),
        });
    }
    if found > SCHEMA_VERSION {
        return Err(Error::StoreTooNew {
            location: location.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(transaction.commit().await?);
    }
    if !has_version {
        transaction
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE {version_table} (
                     singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                     version     integer NOT NULL,
                     application text    NOT NULL
                 );
                 INSERT INTO {version_table} (version, application) VALUES (0, 'credpool');"
            ))
            .await?;
    }
    for (from, migration) in migrations(schema).iter().enumerate().skip(found as usize) {
        transaction.batch_execute(migration).await?;
        transaction
            .execute(
                &format!("UPDATE {version_table} SET version = $1"),
                &[&(from as i32 + 1)],
            )
            .await?;
    }
    transaction.commit().await?;
    tracing::info!(
        location,
        from = found,
        to = SCHEMA_VERSION,
        "postgres store migrated"
    );
    Ok(())
}
