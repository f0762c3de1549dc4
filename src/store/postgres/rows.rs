//! Reading rows without panicking: a column of the wrong type, or a number
//! out of range, is an error that names the column, never a panic.

use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::error::{Error, Result};

/// Checked reads of a row's columns.
pub(super) trait Columns {
    /// The column at `index`, named `name` in messages.
    fn column<'a, T: FromSql<'a>>(&'a self, index: usize, name: &str) -> Result<T>;

    /// A `bigint` that must not be negative (an id, a count).
    fn unsigned(&self, index: usize, name: &str) -> Result<u64> {
        let value: i64 = self.column(index, name)?;
        u64::try_from(value).map_err(|_| out_of_range(name, value))
    }

    /// An `integer` that must not be negative (a capacity, holders).
    fn unsigned32(&self, index: usize, name: &str) -> Result<u32> {
        let value: i32 = self.column(index, name)?;
        u32::try_from(value).map_err(|_| out_of_range(name, i64::from(value)))
    }
}

impl Columns for Row {
    fn column<'a, T: FromSql<'a>>(&'a self, index: usize, name: &str) -> Result<T> {
        self.try_get(index).map_err(|error| Error::Postgres {
            message: format!("column {name} of a row credpool read: {error}"),
            code: None,
        })
    }
}

fn out_of_range(name: &str, value: i64) -> Error {
    Error::Postgres {
        message: format!(
            "column {name} holds {value}, which credpool never writes there (it must not be negative)"
        ),
        code: None,
    }
}
