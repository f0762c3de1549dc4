//! The administration and the reads on Postgres: add, remove, disable and
//! enable, new secrets; list, reveal, stats.

use std::collections::{HashMap, HashSet};

use tokio_postgres::GenericClient;

use crate::credential::{
    Credential, CredentialChange, CredentialInfo, LeaseInfo, NewCredential, PoolSummary, Secret,
    StateKind, Stats, StoredCredential,
};
use crate::error::{Error, Result};
use crate::ids::CredentialId;
use crate::store::{Added, OnDuplicate, Progress};
use crate::time::from_ms;

use super::connections::{self, Conn};
use super::leases::Inner;
use super::rows::Columns;

/// How many credentials one insert statement adds.
const INSERT_CHUNK: usize = 5_000;

impl Inner {
    pub(super) async fn add_many(
        &self,
        credentials: Vec<NewCredential>,
        on_duplicate: OnDuplicate,
        progress: Progress,
    ) -> Result<Added> {
        let mut client =
            connections::connect(&self.connections.config, &self.connections.tls).await?;
        let transaction = client.transaction().await?;
        let insert = transaction.prepare(&self.sql.insert_many()).await?;
        let mut added = Added::default();
        for (chunk_index, chunk) in credentials.chunks(INSERT_CHUNK).enumerate() {
            let names: Vec<&str> = chunk.iter().map(|c| c.name.as_str()).collect();
            let secrets: Vec<&str> = chunk.iter().map(|c| c.secret.expose()).collect();
            let extras: Vec<Option<&str>> = chunk.iter().map(|c| c.extra.as_deref()).collect();
            let capacities: Vec<i32> = chunk.iter().map(|c| c.capacity as i32).collect();
            let disabled: Vec<Option<&str>> = chunk.iter().map(|c| c.disabled.as_deref()).collect();
            let rows = transaction
                .query(
                    &insert,
                    &[
                        &self.pool,
                        &names,
                        &secrets,
                        &extras,
                        &capacities,
                        &disabled,
                    ],
                )
                .await?;
            added.count += rows.len();
            progress.report(chunk_index * INSERT_CHUNK + chunk.len());
            if rows.len() == chunk.len() {
                continue;
            }
            // The entries not added: their names were in the store, or
            // earlier in the input.
            let mut inserted: HashSet<String> = rows
                .iter()
                .map(|row| row.column(0, "credentials.name"))
                .collect::<Result<_>>()?;
            let skipped = chunk
                .iter()
                .enumerate()
                .filter(|(_, c)| !inserted.remove(&c.name))
                .map(|(position, _)| chunk_index * INSERT_CHUNK + position);
            if on_duplicate == OnDuplicate::Fail {
                let duplicate = skipped.min().unwrap_or(chunk_index * INSERT_CHUNK);
                return Err(Error::DuplicateName {
                    name: credentials[duplicate].name.clone(),
                    pool: self.pool.clone(),
                    entry: Some(duplicate),
                });
            }
            added.skipped.extend(skipped);
        }
        // A default set meanwhile waits for this add to commit (and then
        // reaches its credentials), or this add sees it.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock_shared(hashtext($1))",
                &[&self.defaults_lock()],
            )
            .await?;
        if !self.default_rates(&transaction).await?.is_empty() {
            let skipped: HashSet<usize> = added.skipped.iter().copied().collect();
            let names: Vec<&str> = credentials
                .iter()
                .enumerate()
                .filter(|(position, _)| !skipped.contains(position))
                .map(|(_, c)| c.name.as_str())
                .collect();
            self.apply_defaults(&transaction, &names).await?;
        }
        let skipped_set: HashSet<usize> = added.skipped.iter().copied().collect();
        let rated: Vec<&NewCredential> =
            credentials.iter().filter(|c| !c.rates.is_empty()).collect();
        if !rated.is_empty() {
            let names: Vec<&str> = rated.iter().map(|c| c.name.as_str()).collect();
            let ids: HashMap<String, i64> = transaction
                .query(
                    &format!(
                        "SELECT name, id FROM {} WHERE pool = $1 AND name = ANY($2)",
                        self.sql.credentials
                    ),
                    &[&self.pool, &names],
                )
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<_>>()?;
            // Every quota in one statement, not one round trip each.
            let (mut rows, mut scopes, mut counts, mut windows) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (position, credential) in credentials.iter().enumerate() {
                if credential.rates.is_empty() || skipped_set.contains(&position) {
                    continue;
                }
                if let Some(&id) = ids.get(&credential.name) {
                    for (scope, rate) in &credential.rates {
                        rows.push(id);
                        scopes.push(scope.as_str());
                        counts.push(rate.count() as i32);
                        windows.push(rate.window_ms());
                    }
                }
            }
            self.set_rates(&transaction, &rows, &scopes, &counts, &windows)
                .await?;
        }
        transaction.commit().await?;
        Ok(added)
    }

    pub(super) fn unknown(&self, name: &str) -> Error {
        Error::UnknownCredential {
            name: name.to_string(),
            pool: self.pool.clone(),
        }
    }

    pub(super) async fn remove(&self, name: String, force: bool) -> Result<()> {
        let conn = self.connections.get().await?;
        let removed = conn
            .client
            .query_opt(&self.sql.remove(), &[&self.pool, &name, &force])
            .await?;
        if removed.is_some() {
            return Ok(());
        }
        let holders = self.holders_of(&conn, &name).await?;
        match holders {
            Some(holders) => Err(Error::InUse { name, holders }),
            None => Err(self.unknown(&name)),
        }
    }

    /// The holders of the credential named `name`, `None` when there is none
    /// (why a change that names it found no row).
    async fn holders_of(&self, conn: &Conn, name: &str) -> Result<Option<u32>> {
        conn.client
            .query_opt(&self.sql.holders(), &[&self.pool, &name])
            .await?
            .map(|row| row.unsigned32(0, "credentials.holders"))
            .transpose()
    }

    pub(super) async fn pools(&self) -> Result<Vec<PoolSummary>> {
        let conn = self.connections.get().await?;
        let rows = conn.client.query(&self.sql.pools(), &[]).await?;
        rows.iter()
            .map(|row| {
                Ok(PoolSummary::new(
                    row.column(0, "credentials.pool")?,
                    row.unsigned(1, "count")?,
                ))
            })
            .collect()
    }

    pub(super) async fn revoke(&self, name: String) -> Result<u32> {
        let conn = self.connections.get().await?;
        let row = conn
            .client
            .query_opt(&self.sql.revoke(), &[&self.pool, &name])
            .await?;
        match row {
            Some(row) => Ok(u32::try_from(row.unsigned(0, "revoked leases")?).unwrap_or(u32::MAX)),
            None => Err(self.unknown(&name)),
        }
    }

    pub(super) async fn update(&self, name: String, change: CredentialChange) -> Result<()> {
        let conn = self.connections.get().await?;
        // Expired leases do not count against a lower capacity, as on the
        // other stores.
        if change.capacity.is_some() {
            self.reclaim(&conn).await?;
        }
        let capacity = change.capacity.map(|capacity| capacity as i32);
        let changed = conn
            .client
            .query_opt(
                &self.sql.update(),
                &[
                    &self.pool,
                    &name,
                    &change.secret.as_ref().map(Secret::expose),
                    &change.extra.is_some(),
                    &change.extra.clone().flatten(),
                    &capacity,
                ],
            )
            .await?;
        if let Some(row) = changed {
            let id: i64 = row.column(0, "credentials.id")?;
            for (scope, rate) in &change.rates {
                self.set_rate(&conn.client, id, scope, *rate).await?;
            }
            return Ok(());
        }
        let holders = self.holders_of(&conn, &name).await?;
        match (holders, change.capacity) {
            (Some(holders), Some(capacity)) => Err(crate::credential::capacity_below_holders(
                &name, capacity, holders,
            )),
            _ => Err(self.unknown(&name)),
        }
    }

    pub(super) async fn update_one(
        &self,
        sql: String,
        name: String,
        value: Option<String>,
    ) -> Result<()> {
        let conn = self.connections.get().await?;
        let changed = conn
            .client
            .query_opt(&sql, &[&self.pool, &name, &value])
            .await?;
        match changed {
            Some(_) => Ok(()),
            None => Err(self.unknown(&name)),
        }
    }

    /// At most `limit` credentials after the one `after`, in id order.
    pub(super) async fn list(
        &self,
        after: Option<CredentialId>,
        limit: usize,
    ) -> Result<Vec<CredentialInfo>> {
        let after = after.map_or(0, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut reader = self.connections.reader().await?;
        let snapshot = snapshot(&mut reader).await?;
        let rows = snapshot
            .query(&self.sql.list(), &[&self.pool, &after, &limit])
            .await?;
        let infos = self.infos(&snapshot, rows).await?;
        snapshot.commit().await?;
        Ok(infos)
    }

    /// The credential named `name`, as `list` shows it.
    pub(super) async fn info(&self, name: &str) -> Result<Option<CredentialInfo>> {
        let mut reader = self.connections.reader().await?;
        let snapshot = snapshot(&mut reader).await?;
        let rows = snapshot
            .query(&self.sql.list_named(), &[&self.pool, &name])
            .await?;
        let infos = self.infos(&snapshot, rows).await?;
        snapshot.commit().await?;
        Ok(infos.into_iter().next())
    }

    /// The credentials of `rows` (the columns of `list`, in id order),
    /// with their limits and live leases, read by `client` (in the same
    /// snapshot as the rows).
    async fn infos(
        &self,
        client: &(impl GenericClient + Sync),
        rows: Vec<tokio_postgres::Row>,
    ) -> Result<Vec<CredentialInfo>> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(Vec::new());
        };
        // The limits and leases of the ids in `(after, last]`.
        let after = first.column::<i64>(0, "credentials.id")? - 1;
        let last: i64 = last.column(0, "credentials.id")?;
        let mut held = false;
        for row in &rows {
            held |= row.unsigned32(3, "credentials.holders")? > 0;
        }
        // Leases are not indexed by credential: a page that holds none
        // does not scan them.
        let leases = async {
            if held {
                self.leases_of_ids(client, after, last).await
            } else {
                Ok(HashMap::new())
            }
        };
        let (limits, leases) = tokio::join!(self.limits_of_ids(client, after, last), leases);
        let (mut limits, mut leases) = (limits?, leases?);
        rows.iter()
            .map(|row| {
                let id: i64 = row.column(0, "credentials.id")?;
                let now: i64 = row.column(10, "now")?;
                let stored = StoredCredential {
                    id: CredentialId::new(row.unsigned(0, "credentials.id")?),
                    name: row.column(1, "credentials.name")?,
                    capacity: row.unsigned32(2, "credentials.capacity")?,
                    holders: row.unsigned32(3, "credentials.holders")?,
                    disabled_reason: row.column(4, "credentials.disabled_reason")?,
                    cooling_until: row
                        .column::<Option<i64>>(5, "credentials.cooling_until")?
                        .map(from_ms),
                    has_extra: row.column(6, "has extra")?,
                    last_used_at: row
                        .column::<Option<i64>>(7, "credentials.last_used_at")?
                        .map(from_ms),
                    use_count: row.unsigned(8, "credentials.use_count")?,
                    created_at: from_ms(row.column(9, "credentials.created_at")?),
                    limits: limits
                        .remove(&id)
                        .unwrap_or_default()
                        .iter()
                        .map(|limit| limit.info(now))
                        .collect(),
                    leases: leases.remove(&id).unwrap_or_default(),
                };
                Ok(CredentialInfo::new(stored, from_ms(now)))
            })
            .collect()
    }

    /// The leases of the pool's credentials with ids in `(after, last]` not
    /// past their expiry, by credential, oldest first.
    async fn leases_of_ids(
        &self,
        client: &(impl GenericClient + Sync),
        after: i64,
        last: i64,
    ) -> Result<HashMap<i64, Vec<LeaseInfo>>> {
        let rows = client
            .query(&self.sql.leases_of_ids(), &[&self.pool, &after, &last])
            .await?;
        let mut leases: HashMap<i64, Vec<LeaseInfo>> = HashMap::new();
        for row in rows {
            leases
                .entry(row.column(0, "leases.credential_id")?)
                .or_default()
                .push(LeaseInfo::new(
                    row.column(1, "leases.holder")?,
                    from_ms(row.column(2, "leases.acquired_at")?),
                    row.column::<Option<i64>>(3, "leases.expires_at")?
                        .map(from_ms),
                    row.unsigned32(4, "leases.units")?,
                ));
        }
        Ok(leases)
    }

    pub(super) async fn reveal(&self) -> Result<Vec<Credential>> {
        let conn = self.connections.get().await?;
        let rows = conn.client.query(&self.sql.reveal(), &[&self.pool]).await?;
        rows.iter()
            .map(|row| {
                Ok(Credential::new(
                    CredentialId::new(row.unsigned(0, "credentials.id")?),
                    row.column::<String>(1, "credentials.name")?.into(),
                    Secret::new(row.column::<String>(2, "credentials.secret")?),
                    row.column(3, "credentials.extra")?,
                    row.unsigned32(4, "credentials.capacity")?,
                ))
            })
            .collect()
    }

    /// Counts by state: the statement groups the credentials by what decides
    /// their state, and [`StateKind::of`] decides it, as for every store.
    pub(super) async fn stats(&self) -> Result<Stats> {
        let conn = self.connections.get().await?;
        let rows = conn.client.query(&self.sql.stats(), &[&self.pool]).await?;
        let mut stats = Stats::default();
        for row in &rows {
            let kind = StateKind::of(
                row.column(0, "disabled")?,
                row.column(1, "cooling")?,
                row.column(2, "full")?,
            );
            stats.add(
                kind,
                row.unsigned(3, "a count")?,
                row.unsigned(4, "a count")?,
            );
            stats.uses += row.unsigned(5, "a count")?;
        }
        let blocked = conn
            .client
            .query_one(
                &format!(
                    "SELECT count(DISTINCT credential_id) FROM \"{}\".limits
                     WHERE pool = $1 AND scope <> ''
                       AND blocked_until > (extract(epoch FROM now()) * 1000)::bigint",
                    self.schema
                ),
                &[&self.pool],
            )
            .await?;
        stats.scope_blocked = blocked.unsigned(0, "a count")?;
        Ok(stats)
    }
}

/// A read-only transaction of one snapshot (repeatable read) on the
/// reader connection: its statements see the store as it was at the first.
async fn snapshot(client: &mut tokio_postgres::Client) -> Result<tokio_postgres::Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}
