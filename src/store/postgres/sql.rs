//! The statements of the Postgres store, with the schema's name filled in.
//!
//! Each state change is one statement, so it is one transaction and one
//! round trip. Times are the server's clock, in milliseconds since the UNIX
//! epoch, so machines whose clocks disagree still agree on expiries.

/// The server's time in milliseconds, fixed for the whole statement.
const NOW: &str = "(extract(epoch FROM now()) * 1000)::bigint";

/// The statements, for one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    /// `$1` pool, `$2` TTL in ms (NULL: none). Picks the least recently used
    /// free credential, skipping rows other transactions hold, marks it used
    /// (found again by its id, not its `ctid`: a row updated by another
    /// transaction since the statement began has a new `ctid` that the
    /// statement cannot see) and records the lease. Returns credential id, name, secret, extra,
    /// capacity, lease id, acquired_at, expires_at; no row when none is free.
    pub(crate) acquire: String,
    /// `$1` pool, `$2` TTL in ms (NULL: none), `$3` how many. As `acquire`,
    /// for up to `$3` leases at once: picks up to `$3` free credentials, least
    /// recently used first, and hands out their free places in turns (the
    /// first place of each, then the second of those with capacity left, and
    /// so on). Returns the same columns, one row per lease, by lease id.
    pub(crate) acquire_many: String,
    /// `$1` lease id, `$2` credential id, `$3` pool, `$4` cool-down in ms,
    /// `$5` disable reason, `$6` channel, `$7` payload, `$8` this store's
    /// instance. Fenced: changes nothing unless the lease is still held and
    /// not expired. Returns the name. Notifies only when another store has
    /// said it has waiters: `NOTIFY` takes a lock that serialises commits.
    pub(crate) release: String,
    /// `$1` pool, `$2` instance, `$3` how long in ms. Says that this store
    /// has waiters, so releases elsewhere notify it.
    pub(crate) announce: String,
    /// `$1` lease id, `$2` credential id, `$3` pool, `$4` TTL in ms. Fenced as
    /// release. Returns the new expiry.
    pub(crate) renew: String,
    /// `$1` pool. Ends expired leases (skipping any another transaction holds)
    /// and returns each one's lease id and credential name.
    pub(crate) reclaim: String,
    /// `$1` pool. Why nothing was free: whether any credential is enabled,
    /// whether one is free after all (it was locked by another transaction),
    /// and when the next cool-down ends and the next lease expires.
    pub(crate) busy: String,
    pub(crate) credentials: String,
    pub(crate) leases: String,
}

impl Sql {
    /// The statements for tables in `schema` (a checked identifier).
    pub(crate) fn new(schema: &str) -> Self {
        let credentials = format!("\"{schema}\".credentials");
        let leases = format!("\"{schema}\".leases");
        let waiting = format!("\"{schema}\".waiting");
        Self {
            acquire: format!(
                "WITH picked AS (
                     SELECT id FROM {credentials}
                     WHERE pool = $1 AND disabled_reason IS NULL AND holders < capacity
                       AND (cooling_until IS NULL OR cooling_until <= {NOW})
                     ORDER BY last_used_at NULLS FIRST, id
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED
                 ),
                 marked AS (
                     UPDATE {credentials} AS c
                     SET holders = c.holders + 1, last_used_at = {NOW},
                         use_count = c.use_count + 1, cooling_until = NULL
                     WHERE c.id = (SELECT id FROM picked)
                     RETURNING c.id, c.name, c.secret, c.extra, c.capacity
                 ),
                 leased AS (
                     INSERT INTO {leases} (pool, credential_id, acquired_at, expires_at)
                     SELECT $1, marked.id, {NOW}, {NOW} + $2::bigint FROM marked
                     RETURNING id, acquired_at, expires_at
                 )
                 SELECT marked.id, marked.name, marked.secret, marked.extra, marked.capacity,
                        leased.id, leased.acquired_at, leased.expires_at
                 FROM marked, leased"
            ),
            acquire_many: format!(
                "WITH picked AS (
                     SELECT id, capacity - holders AS free, last_used_at FROM {credentials}
                     WHERE pool = $1 AND disabled_reason IS NULL AND holders < capacity
                       AND (cooling_until IS NULL OR cooling_until <= {NOW})
                     ORDER BY last_used_at NULLS FIRST, id
                     LIMIT $3
                     FOR UPDATE SKIP LOCKED
                 ),
                 places AS (
                     SELECT picked.id FROM picked, generate_series(1, picked.free) AS place
                     ORDER BY place, picked.last_used_at NULLS FIRST, picked.id
                     LIMIT $3
                 ),
                 counts AS (
                     SELECT id, count(*)::integer AS n FROM places GROUP BY id
                 ),
                 marked AS (
                     UPDATE {credentials} AS c
                     SET holders = c.holders + counts.n, last_used_at = {NOW},
                         use_count = c.use_count + counts.n, cooling_until = NULL
                     FROM counts WHERE c.id = counts.id
                     RETURNING c.id, c.name, c.secret, c.extra, c.capacity, counts.n
                 ),
                 leased AS (
                     INSERT INTO {leases} (pool, credential_id, acquired_at, expires_at)
                     SELECT $1, marked.id, {NOW}, {NOW} + $2::bigint
                     FROM marked, generate_series(1, marked.n)
                     RETURNING id, credential_id, acquired_at, expires_at
                 )
                 SELECT marked.id, marked.name, marked.secret, marked.extra, marked.capacity,
                        leased.id, leased.acquired_at, leased.expires_at
                 FROM marked JOIN leased ON leased.credential_id = marked.id
                 ORDER BY leased.id"
            ),
            release: format!(
                "WITH gone AS (
                     DELETE FROM {leases}
                     WHERE id = $1 AND credential_id = $2 AND pool = $3
                       AND (expires_at IS NULL OR expires_at > {NOW})
                     RETURNING credential_id
                 ),
                 back AS (
                     UPDATE {credentials} AS c
                     SET holders = c.holders - 1,
                         cooling_until = CASE WHEN $4::bigint IS NULL THEN c.cooling_until
                             ELSE greatest(coalesce(c.cooling_until, 0), {NOW} + $4::bigint) END,
                         disabled_reason = coalesce($5::text, c.disabled_reason)
                     WHERE c.id = (SELECT credential_id FROM gone)
                     RETURNING c.name
                 )
                 SELECT back.name,
                        CASE WHEN EXISTS (SELECT 1 FROM {waiting}
                                          WHERE pool = $3 AND instance <> $8 AND until > {NOW})
                             THEN pg_notify($6, $7)::text END
                 FROM back"
            ),
            announce: format!(
                "INSERT INTO {waiting} (pool, instance, until) VALUES ($1, $2, {NOW} + $3::bigint)
                 ON CONFLICT (pool, instance) DO UPDATE SET until = excluded.until"
            ),
            renew: format!(
                "UPDATE {leases} SET expires_at = {NOW} + $4::bigint
                 WHERE id = $1 AND credential_id = $2 AND pool = $3
                   AND (expires_at IS NULL OR expires_at > {NOW})
                 RETURNING expires_at"
            ),
            reclaim: format!(
                "WITH forgotten AS (
                     DELETE FROM {waiting} WHERE pool = $1 AND until < {NOW} - 60000
                 ),
                 expired AS (
                     DELETE FROM {leases} WHERE id IN (
                         SELECT id FROM {leases}
                         WHERE pool = $1 AND expires_at <= {NOW}
                         ORDER BY id
                         FOR UPDATE SKIP LOCKED)
                     RETURNING id, credential_id
                 ),
                 counts AS (
                     SELECT credential_id, count(*)::integer AS n FROM expired GROUP BY credential_id
                 ),
                 back AS (
                     UPDATE {credentials} AS c SET holders = c.holders - counts.n
                     FROM counts WHERE c.id = counts.credential_id
                     RETURNING c.id, c.name
                 )
                 SELECT expired.id, back.name FROM expired JOIN back ON back.id = expired.credential_id"
            ),
            busy: format!(
                "SELECT
                     EXISTS (SELECT 1 FROM {credentials}
                             WHERE pool = $1 AND disabled_reason IS NULL),
                     EXISTS (SELECT 1 FROM {credentials}
                             WHERE pool = $1 AND disabled_reason IS NULL AND holders < capacity
                               AND (cooling_until IS NULL OR cooling_until <= {NOW})),
                     (SELECT min(cooling_until) FROM {credentials}
                      WHERE pool = $1 AND disabled_reason IS NULL AND cooling_until > {NOW}),
                     (SELECT min(expires_at) FROM {leases}
                      WHERE pool = $1 AND expires_at IS NOT NULL)"
            ),
            credentials,
            leases,
        }
    }

    /// `$1` pool, then arrays `$2` names, `$3` secrets, `$4` extras,
    /// `$5` capacities. Adds the ones whose name is new; returns their names.
    pub(crate) fn insert_many(&self) -> String {
        format!(
            "INSERT INTO {} (pool, name, secret, extra, capacity, created_at)
             SELECT $1, name, secret, extra, capacity, {NOW}
             FROM unnest($2::text[], $3::text[], $4::text[], $5::integer[])
                  AS input (name, secret, extra, capacity)
             ON CONFLICT (pool, name) DO NOTHING
             RETURNING name",
            self.credentials
        )
    }

    /// `$1` pool, `$2` name, `$3` force. Removes the credential and its
    /// leases; returns the removed id.
    pub(crate) fn remove(&self) -> String {
        format!(
            "WITH removed AS (
                 DELETE FROM {} WHERE pool = $1 AND name = $2 AND ($3 OR holders = 0)
                 RETURNING id
             ),
             leases AS (
                 DELETE FROM {} WHERE credential_id IN (SELECT id FROM removed)
             )
             SELECT id FROM removed",
            self.credentials, self.leases
        )
    }

    /// `$1` pool, `$2` name. The credential's holders.
    pub(crate) fn holders(&self) -> String {
        format!(
            "SELECT holders FROM {} WHERE pool = $1 AND name = $2",
            self.credentials
        )
    }

    /// `$1` credential id, `$2` pool. The credential's name.
    pub(crate) fn name_of(&self) -> String {
        format!(
            "SELECT name FROM {} WHERE id = $1 AND pool = $2",
            self.credentials
        )
    }

    /// `$1` pool, `$2` name, `$3` reason (NULL enables).
    pub(crate) fn set_disabled(&self) -> String {
        format!(
            "UPDATE {} SET disabled_reason = $3 WHERE pool = $1 AND name = $2 RETURNING id",
            self.credentials
        )
    }

    /// `$1` pool, `$2` name, `$3` secret.
    pub(crate) fn update_secret(&self) -> String {
        format!(
            "UPDATE {} SET secret = $3 WHERE pool = $1 AND name = $2 RETURNING id",
            self.credentials
        )
    }

    /// `$1` pool. Every credential without its secret, and the server's time.
    pub(crate) fn list(&self) -> String {
        format!(
            "SELECT id, name, capacity, holders, disabled_reason, cooling_until,
                    extra IS NOT NULL, last_used_at, use_count, created_at, {NOW}
             FROM {} WHERE pool = $1 ORDER BY id",
            self.credentials
        )
    }

    /// `$1` pool.
    pub(crate) fn reveal(&self) -> String {
        format!(
            "SELECT id, name, secret, extra, capacity FROM {} WHERE pool = $1 ORDER BY id",
            self.credentials
        )
    }

    /// `$1` pool. One row per group of credentials alike in what decides
    /// their state: disabled, cooling now, full; then how many, and their holders.
    pub(crate) fn stats(&self) -> String {
        format!(
            "SELECT disabled_reason IS NOT NULL, coalesce(cooling_until, 0) > {NOW},
                    holders >= capacity, count(*), coalesce(sum(holders), 0)::bigint
             FROM {} WHERE pool = $1 GROUP BY 1, 2, 3",
            self.credentials
        )
    }
}

/// The schema's tables, created by the first migration.
pub(crate) fn migrations(schema: &str) -> Vec<String> {
    vec![format!(
        "CREATE TABLE \"{schema}\".credentials (
             id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             pool            text    NOT NULL,
             name            text    NOT NULL,
             secret          text    NOT NULL,
             extra           text,
             capacity        integer NOT NULL CHECK (capacity >= 1),
             holders         integer NOT NULL DEFAULT 0 CHECK (holders >= 0 AND holders <= capacity),
             disabled_reason text,
             cooling_until   bigint,
             last_used_at    bigint,
             use_count       bigint  NOT NULL DEFAULT 0,
             created_at      bigint  NOT NULL,
             UNIQUE (pool, name)
         );
         -- Least recently used first, never used first: what acquire orders by.
         CREATE INDEX credentials_free ON \"{schema}\".credentials
             (pool, last_used_at NULLS FIRST, id)
             WHERE disabled_reason IS NULL AND holders < capacity;
         CREATE TABLE \"{schema}\".leases (
             id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             pool          text   NOT NULL,
             credential_id bigint NOT NULL,
             acquired_at   bigint NOT NULL,
             expires_at    bigint
         );
         -- No foreign key to credentials, and no index on credential_id:
         -- every grant would pay for them (the key's check is a query of its
         -- own). The table holds only live leases, and removing a credential
         -- removes its leases in the same statement.
         CREATE INDEX leases_by_expiry ON \"{schema}\".leases (pool, expires_at)
             WHERE expires_at IS NOT NULL;
         -- The stores that have waiters, so that releases elsewhere notify them.
         CREATE TABLE \"{schema}\".waiting (
             pool     text   NOT NULL,
             instance text   NOT NULL,
             until    bigint NOT NULL,
             PRIMARY KEY (pool, instance)
         );"
    )]
}
