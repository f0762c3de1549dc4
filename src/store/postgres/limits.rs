//! Rate limits on Postgres: the calls that change them outside a grant
//! (the schema, functions and triggers are in `limits_schema.rs`).
//!
//! A grant counts itself: a lease row of a credential that has limits
//! (`leases.limited`) fires a trigger that appends the grant's time to the
//! logs of its quotas (of every scope, and of the lease's scope), counts
//! down reported budgets, and writes when each next allows a grant. The
//! statements that pick a credential read that on the credential's own row,
//! which they lock: a block of every scope in `cooling_until`, a scope's in
//! `blocks` (a JSON object, scope to time). So the check and the count are
//! made under one row lock, and a grant that waited for the lock sees the
//! count of the one before it.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use crate::error::Result;
use crate::limits::{Limit, Limited, QuotaLog, Rate};

use super::connections::Conn;
use super::leases::Inner;

impl Inner {
    fn limits_table(&self) -> String {
        format!("\"{}\".limits", self.schema)
    }

    /// Sets (or with `None` removes) the quota of `scope` on the credential
    /// `id`; a new quota starts with an empty log.
    pub(super) async fn set_rate(
        &self,
        client: &impl tokio_postgres::GenericClient,
        id: i64,
        scope: &str,
        rate: Option<Rate>,
    ) -> Result<()> {
        let count = rate.map(|rate| rate.count() as i32);
        let window = rate.map(|rate| rate.window_ms());
        client
            .execute(
                &format!("SELECT \"{}\".set_rate($1, $2, $3, $4)", self.schema),
                &[&id, &scope, &count, &window],
            )
            .await?;
        Ok(())
    }

    /// Sets the quota of each credential `ids[i]` in `scopes[i]` to
    /// `counts[i]` grants per `windows[i]` ms, in one statement.
    pub(super) async fn set_rates(
        &self,
        client: &impl tokio_postgres::GenericClient,
        ids: &[i64],
        scopes: &[&str],
        counts: &[i32],
        windows: &[i64],
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        client
            .execute(
                &format!(
                    "SELECT \"{}\".set_rate(t.id, t.scope, t.n, t.w)
                     FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[])
                         AS t(id, scope, n, w)",
                    self.schema
                ),
                &[&ids, &scopes, &counts, &windows],
            )
            .await?;
        Ok(())
    }

    /// The pool's default quotas, by scope.
    pub(super) async fn default_rates(
        &self,
        client: &impl tokio_postgres::GenericClient,
    ) -> Result<Vec<(String, Rate)>> {
        let rows = client
            .query(
                &format!(
                    "SELECT scope, rate_count, rate_window_ms FROM \"{}\".pool_rates
                     WHERE pool = $1 ORDER BY scope",
                    self.schema
                ),
                &[&self.pool],
            )
            .await?;
        let mut rates = Vec::new();
        for row in rows {
            let count: i32 = row.try_get(1)?;
            if let Some(rate) = Rate::from_stored(count.into(), row.try_get(2)?) {
                rates.push((row.try_get(0)?, rate));
            }
        }
        Ok(rates)
    }

    /// Sets (or removes) the pool's default quota of `scope` (after the
    /// adds in flight: see `set_pool_default` in the schema).
    pub(super) async fn set_pool_default(&self, scope: String, rate: Option<Rate>) -> Result<()> {
        let conn = self.connections.get().await?;
        let count = rate.map(|rate| rate.count() as i32);
        let window = rate.map(|rate| rate.window_ms());
        conn.client
            .execute(
                &format!(
                    "SELECT \"{}\".set_pool_default($1, $2, $3, $4)",
                    self.schema
                ),
                &[&self.pool, &scope, &count, &window],
            )
            .await?;
        Ok(())
    }

    /// The name of the advisory lock between adds and default changes of
    /// this pool (the schema's `set_pool_default` names it the same way).
    pub(super) fn defaults_lock(&self) -> String {
        format!("credpool.defaults.{}.{}", self.schema, self.pool)
    }

    /// Gives the credentials just added (by name) the pool's defaults.
    pub(super) async fn apply_defaults(
        &self,
        client: &impl tokio_postgres::GenericClient,
        names: &[&str],
    ) -> Result<()> {
        client
            .execute(
                &format!(
                    "SELECT \"{schema}\".set_default(c.id, d.scope, d.rate_count, d.rate_window_ms)
                     FROM \"{schema}\".credentials AS c, \"{schema}\".pool_rates AS d
                     WHERE c.pool = $1 AND d.pool = $1 AND c.name = ANY($2)",
                    schema = self.schema
                ),
                &[&self.pool, &names],
            )
            .await?;
        Ok(())
    }

    /// Takes in a budget an API reported for the credential `id`.
    pub(super) async fn report(&self, conn: &Conn, id: i64, limited: &Limited) -> Result<()> {
        let until = limited.until_ms();
        let remaining = limited.remaining.min(i32::MAX as u32) as i32;
        let scope = limited.scope_key();
        conn.client
            .execute(
                &format!("SELECT \"{}\".report_limit($1, $2, $3, $4)", self.schema),
                &[&id, &scope, &until, &remaining],
            )
            .await?;
        Ok(())
    }

    /// Ends cool-downs and reported budgets (see
    /// [`Admin::reset_limits`](crate::store::Admin::reset_limits)); returns
    /// how many credentials it changed.
    pub(super) async fn reset_limits(
        &self,
        name: Option<String>,
        scope: Option<String>,
    ) -> Result<u64> {
        let conn = self.connections.get().await?;
        if let Some(name) = &name {
            let known = conn
                .client
                .query_opt(&self.sql.holders(), &[&self.pool, name])
                .await?;
            if known.is_none() {
                return Err(crate::Error::UnknownCredential {
                    name: name.clone(),
                    pool: self.pool.clone(),
                });
            }
        }
        let row = conn
            .client
            .query_one(
                &format!("SELECT \"{}\".reset_limits($1, $2, $3)", self.schema),
                &[&self.pool, &name, &scope],
            )
            .await?;
        let changed: i64 = row.try_get(0)?;
        Ok(changed.max(0) as u64)
    }

    /// The limits of the pool's credentials with ids in `(after, last]`, by
    /// credential id, for `list`.
    pub(super) async fn limits_of_ids(
        &self,
        client: &(impl tokio_postgres::GenericClient + Sync),
        after: i64,
        last: i64,
    ) -> Result<HashMap<i64, Vec<Limit>>> {
        let params: [&(dyn ToSql + Sync); 3] = [&self.pool, &after, &last];
        let rows = client
            .query(
                &format!(
                    "SELECT credential_id, scope, rate_count, rate_window_ms, log, until, remaining,
                            inherited
                     FROM {} WHERE pool = $1 AND credential_id > $2 AND credential_id <= $3
                     ORDER BY credential_id, scope",
                    self.limits_table()
                ),
                &params,
            )
            .await?;
        let mut limits: HashMap<i64, Vec<Limit>> = HashMap::new();
        for row in rows {
            let count: Option<i32> = row.try_get(2)?;
            let window: Option<i64> = row.try_get(3)?;
            let remaining: i32 = row.try_get(6)?;
            limits.entry(row.try_get(0)?).or_default().push(Limit {
                scope: row.try_get(1)?,
                rate: count
                    .zip(window)
                    .and_then(|(count, window)| Rate::from_stored(count.into(), window)),
                log: QuotaLog(row.try_get::<_, Vec<i64>>(4)?.into()),
                until: row.try_get(5)?,
                remaining: remaining.max(0) as u32,
                inherited: row.try_get(7)?,
            });
        }
        Ok(limits)
    }
}
