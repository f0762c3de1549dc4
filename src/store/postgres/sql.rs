//! The statements of the Postgres store, with the schema's name filled in.
//!
//! Each state change is one statement, so it is one transaction and one
//! round trip. Times are the server's clock, in milliseconds since the UNIX
//! epoch, so machines whose clocks disagree still agree on expiries.
//!
//! The waiting line takes no lock of its own. A ticket's row is locked
//! only by the statements that hand it a credential, claim it or remove
//! it: a store's heartbeat renews one row of its own, in `ticket_owners`.
//! So a ticket another transaction holds is on its way out of the line,
//! and a hand-off skips it for the next: releases hand out side by side,
//! in ticket order. None of them waits for another row while it holds a
//! ticket (a release locks its credential first, `serve` skips locked
//! credentials), so they never deadlock.

/// The server's time in milliseconds, fixed for the whole statement (its
/// start).
const NOW: &str = "(extract(epoch FROM now()) * 1000)::bigint";
/// The server's time in milliseconds when the expression is evaluated: for
/// the times the line's statements write after waiting for a row, so that a lease granted after a wait still lives its whole TTL.
const CLOCK: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

use super::batch::MAX_BATCH;
use super::limits_schema::THIS_HOLDER;

/// How a heartbeat ([`Sql::beat`]) meets the store's row.
const ON_BEAT: &str = "ON CONFLICT (pool, owner) DO UPDATE SET expires_at = EXCLUDED.expires_at";

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
    /// `$5` disable reason. Fenced: changes nothing unless the lease is
    /// still held and not expired. Returns the name, and whether tickets
    /// wait in line (the freed unit is then handed to them, by `serve`).
    pub(crate) release: String,
    /// As `release`, for when tickets wait, with `$6` the claim deadline in
    /// ms, `$7` the tickets seated in this store that a release may claim
    /// (its lowest seated ones; a ticket taken but not seated yet is not
    /// among them), `$8` channel, `$9` the TTL in ms of this store's leases
    /// (NULL: none), `$10` tickets of this store whose waiters left (passed
    /// over: their removal is on its way). When the release has no outcome and the credential
    /// could be handed out (enabled, not cooling down), its unit goes
    /// straight to the lowest live ticket: a ticket in `$7` is claimed (it
    /// goes, and the lease lives `$9`), any other is handed the lease until
    /// the claim deadline and its store notified (this one too, when the
    /// ticket is its own but not in `$7`). One statement for what
    /// `release`, `serve` and `claim` do in three. Returns the name; the
    /// ticket and its owner, or NULLs; the grant's columns (as `acquire`),
    /// or NULLs; and whether tickets wait still, unserved (then `serve`
    /// runs).
    pub(crate) release_handing: String,
    /// `$1` lease id, `$2` credential id, `$3` pool, `$4` TTL in ms. Fenced as
    /// release. Returns the new expiry.
    pub(crate) renew: String,
    /// `$1` pool. Ends expired leases (skipping any another transaction holds)
    /// and returns each one's lease id and credential name.
    pub(crate) reclaim: String,
    /// `$1` pool. Why nothing was free: whether any credential is enabled,
    /// whether one is free after all (it was locked by another transaction),
    /// and when the next cool-down ends, the next lease expires and the
    /// next block of a scope ends.
    pub(crate) busy: String,
    /// `$1` pool, `$2` scope (`''`: the default), `$3` name (NULL: any).
    /// As `busy`, for a grant that asks for a scope or a name: whether any
    /// credential is enabled; whether one that serves it is free after all;
    /// the next cool-down end, lease expiry and end of a block of the
    /// scope; whether the name is known; why it is disabled.
    pub(crate) busy_for: String,
    /// `$1` pool, `$2` TTL in ms (NULL: none), `$3` scope (`''`: the
    /// default), `$4` name (NULL: any). As `acquire`, for a credential that
    /// serves the scope (its block in `blocks` is over) and has the name;
    /// no newcomer overtakes a ticket waiting for the same.
    pub(crate) acquire_for: String,
    /// `$1` pool, `$2` claim deadline in ms, `$3` this store's owner number,
    /// `$4` channel, `$5` tickets of this store whose waiters left (passed
    /// over). Hands one free credential to the lowest
    /// live ticket without a lease, as a lease that expires at the claim
    /// deadline; notifies the ticket's store (`OWNER:POOL`) when it is another. Returns the
    /// ticket's id and owner, and `false`. It locks the credential first and
    /// then the lowest ticket that no other transaction holds (one held is
    /// being handed a credential, or removed), so hand-offs run side by
    /// side. When it handed nothing though tickets wait and a credential is
    /// free (others held them), the one row says `true`, to ask again. No
    /// row when no ticket waits or nothing is free.
    pub(crate) serve: String,
    /// `$1` ticket, `$2` TTL in ms (NULL: none), `$3` pool. Claims the lease
    /// handed to a ticket: the ticket goes, the lease lives its TTL from now.
    /// Returns the grant's columns, as `acquire`, all NULL when the lease is
    /// gone; no row when the ticket was not there to claim (another call of
    /// this store claimed it, or it expired). It never waits: the
    /// ticket is this store's and holds a lease, which no other statement
    /// but the store's own claims and the skipping expiry touches, and the
    /// lease is not yet anyone's, so it never waits while holding a row.
    pub(crate) claim: String,
    pub(crate) credentials: String,
    pub(crate) leases: String,
    pub(crate) tickets: String,
    /// The stores that have tickets, each with its heartbeat's expiry.
    pub(crate) owners: String,
    /// The condition on a row of `tickets` that it waits for a credential.
    waiting: String,
    /// Whether a credential has a unit free now.
    free_now: String,
    limits: String,
    /// The schema's name (checked).
    schema: String,
}

impl Sql {
    /// The statements for tables in `schema` (a checked identifier).
    pub(crate) fn new(schema: &str) -> Self {
        let credentials = format!("\"{schema}\".credentials");
        let leases = format!("\"{schema}\".leases");
        let tickets = format!("\"{schema}\".tickets");
        let owners = format!("\"{schema}\".ticket_owners");
        let limits = format!("\"{schema}\".limits");
        // A ticket that waits for a credential: none handed to it yet, and
        // its store alive (its heartbeat renews the store's row in
        // `ticket_owners`, never the ticket's own row, so that no heartbeat
        // holds a ticket that a hand-off would have to skip or wait for).
        let waiting = format!(
            "({tickets}.lease_id IS NULL
              AND EXISTS (SELECT 1 FROM {owners} AS o
                          WHERE o.pool = {tickets}.pool AND o.owner = {tickets}.owner
                            AND o.expires_at > {NOW}))"
        );
        // A credential with a unit free now: what acquire and the line hand out.
        let usable = format!(
            "disabled_reason IS NULL AND holders < capacity
             AND (cooling_until IS NULL OR cooling_until <= {NOW})"
        );
        // Whether a credential has a unit free now, and whether any is
        // enabled. Scalar subqueries with the order of an index, not
        // `EXISTS`: the planner drops an `EXISTS`'s order and reads the
        // table from the start, expecting a match at once; when none
        // matches, which is when these are asked, that reads every row.
        let free_any = format!(
            "(SELECT true FROM {credentials} WHERE pool = $1 AND {usable}
              ORDER BY last_used_at NULLS FIRST, id LIMIT 1) IS NOT NULL"
        );
        // A credential `c` that may serve the ticket `t` (its scope, its name).
        let serves = |c: &str, t: &str| {
            format!(
                "({t}.name IS NULL OR {t}.name = {c}.name)
                 AND ({t}.scope IS NULL OR {c}.blocks IS NULL
                      OR coalesce(({c}.blocks ->> {t}.scope)::bigint, 0) <= {NOW})"
            )
        };
        // Whether the credential `c` is kept for a weighted ticket waiting
        // (ahead of the ticket `ahead_of`, when given) that it may serve and
        // has the room for: while one waits, neither newcomers nor later
        // tickets of one unit take its units, so it is not overtaken.
        let held = |c: &str, pool: &str, ahead_of: Option<&str>| {
            let ahead = ahead_of.map_or(String::new(), |t| format!("AND w.id < {t}.id"));
            let serves_w = serves(c, "w");
            format!(
                "EXISTS (SELECT 1 FROM {tickets} AS w
                         WHERE w.pool = {pool} AND w.lease_id IS NULL AND w.units > 1 {ahead}
                           AND w.units <= {c}.capacity AND {serves_w}
                           AND EXISTS (SELECT 1 FROM {owners} AS o
                                       WHERE o.pool = w.pool AND o.owner = w.owner
                                         AND o.expires_at > {NOW}))"
            )
        };
        let held_here = held(&credentials, "$1", None);
        let held_c = held("c", "$1", None);
        // What a newcomer may take: a credential with a unit free that no
        // weighted ticket waits for.
        let free_now = format!(
            "(SELECT true FROM {credentials} WHERE pool = $1 AND {usable} AND NOT {held_here}
              ORDER BY last_used_at NULLS FIRST, id LIMIT 1) IS NOT NULL"
        );
        let any_enabled = any_enabled(&credentials);
        let why_for = why_busy_for(&credentials, &leases, &limits);
        // No newcomer takes a credential while a ticket for the same waits
        // in line (one for a scope or a name waits for what this one may
        // not need).
        let line_empty = format!(
            "NOT EXISTS (SELECT 1 FROM {tickets} WHERE pool = $1 AND {waiting}
                         AND scope IS NULL AND name IS NULL)"
        );
        // The hand-offs serve tickets of one unit (the weighted are served
        // by `serve_weighted`), and not with a credential kept for a
        // weighted ticket ahead of them.
        let unit_first_release = format!(
            "{tickets}.units = 1 AND NOT {}",
            held("freed", "$3", Some(&tickets))
        );
        let unit_first_c = format!(
            "{tickets}.units = 1 AND NOT {}",
            held("c", "$1", Some(&tickets))
        );
        let unit_first_next = held("c", "$1", Some("next"));
        let serves_freed = serves("freed", &tickets);
        let serves_c = serves("c", &tickets);
        let serves_next = format!(
            "(next.name IS NULL OR next.name = c.name)
             AND (next.scope IS NULL OR c.blocks IS NULL
                  OR coalesce((c.blocks ->> next.scope)::bigint, 0) <= {NOW})"
        );
        // Marks the credential `picked` used and records its lease (for the
        // scope `scope`, an SQL expression), returning the grant's columns:
        // the end of `acquire` and `acquire_for`.
        let lease_picked = |scope: &str| {
            format!(
                "marked AS (
                     UPDATE {credentials} AS c
                     SET holders = c.holders + 1, last_used_at = {NOW},
                         use_count = c.use_count + 1, cooling_until = NULL
                     WHERE c.id = (SELECT id FROM picked)
                     RETURNING c.id, c.name, c.secret, c.extra, c.capacity, c.limited
                 ),
                 leased AS (
                     INSERT INTO {leases} (pool, credential_id, acquired_at, expires_at, scope, limited)
                     SELECT $1, marked.id, {NOW}, {NOW} + $2::bigint, {scope}, marked.limited
                     FROM marked
                     RETURNING id, acquired_at, expires_at
                 )
                 SELECT marked.id, marked.name, marked.secret, marked.extra, marked.capacity,
                        leased.id, leased.acquired_at, leased.expires_at
                 FROM marked, leased"
            )
        };
        let lease_picked_plain = lease_picked("NULL");
        let lease_picked_for = lease_picked("nullif($3, '')");
        Self {
            acquire: format!(
                "WITH picked AS (
                     SELECT id FROM {credentials}
                     WHERE pool = $1 AND {usable}
                       AND {line_empty} AND NOT {held_here}
                     ORDER BY last_used_at NULLS FIRST, id
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED
                 ),
                 {lease_picked_plain}"
            ),
            acquire_for: format!(
                "WITH picked AS (
                     SELECT id FROM {credentials} AS c
                     WHERE pool = $1 AND {usable}
                       AND ($4::text IS NULL OR name = $4)
                       AND (blocks IS NULL OR coalesce((blocks ->> $3)::bigint, 0) <= {NOW})
                       AND NOT EXISTS (SELECT 1 FROM {tickets} WHERE pool = $1 AND {waiting}
                                         AND scope IS NOT DISTINCT FROM nullif($3, '')
                                         AND name IS NOT DISTINCT FROM $4)
                       AND NOT {held_c}
                     ORDER BY last_used_at NULLS FIRST, id
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED
                 ),
                 {lease_picked_for}"
            ),
            // The constant limits are for the planner, which plans this
            // once for every `$3` (the store forces generic plans): it
            // guesses a tenth of the table for `LIMIT $3` and a thousand
            // rows for `generate_series`, and at a million credentials
            // that guess costs enough for the server to JIT-compile the
            // plan on every run (137 ms, where the statement takes 0.2).
            // No batch asks for more than `MAX_BATCH`.
            acquire_many: format!(
                "WITH picked AS (
                     SELECT * FROM (
                         -- One grant at a time of a credential with limits:
                         -- the next statement sees what this one counted.
                         SELECT id, CASE WHEN limited THEN 1 ELSE capacity - holders END AS free,
                                last_used_at
                         FROM {credentials}
                         WHERE pool = $1 AND {usable}
                           AND {line_empty} AND NOT {held_here}
                         ORDER BY last_used_at NULLS FIRST, id
                         LIMIT $3
                         FOR UPDATE SKIP LOCKED
                     ) AS free LIMIT {MAX_BATCH}
                 ),
                 places AS (
                     SELECT picked.id FROM picked,
                         LATERAL (SELECT place FROM generate_series(1, picked.free) AS place
                                  LIMIT {MAX_BATCH}) AS places
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
                     RETURNING c.id, c.name, c.secret, c.extra, c.capacity, counts.n, c.limited
                 ),
                 leased AS (
                     INSERT INTO {leases} (pool, credential_id, acquired_at, expires_at, limited)
                     SELECT $1, marked.id, {NOW}, {NOW} + $2::bigint, marked.limited
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
                     RETURNING credential_id, units
                 ),
                 back AS (
                     UPDATE {credentials} AS c
                     SET holders = c.holders - (SELECT units FROM gone),
                         cooling_until = CASE WHEN $4::bigint IS NULL THEN c.cooling_until
                             ELSE greatest(coalesce(c.cooling_until, 0), {NOW} + $4::bigint) END,
                         disabled_reason = coalesce($5::text, c.disabled_reason)
                     WHERE c.id = (SELECT credential_id FROM gone)
                     RETURNING c.name
                 )
                 SELECT back.name,
                        EXISTS (SELECT 1 FROM {tickets}
                                WHERE pool = $3 AND {waiting})
                 FROM back"
            ),
            release_handing: format!(
                "WITH gone AS (
                     DELETE FROM {leases}
                     WHERE id = $1 AND credential_id = $2 AND pool = $3
                       AND (expires_at IS NULL OR expires_at > {NOW})
                     RETURNING credential_id, units
                 ),
                 freed AS (
                     SELECT c.id, c.name, c.secret, c.extra, c.capacity, c.blocks, c.limited,
                            $4::bigint IS NULL AND $5::text IS NULL AND c.disabled_reason IS NULL
                            AND (c.cooling_until IS NULL OR c.cooling_until <= {NOW}) AS usable
                     FROM {credentials} AS c
                     WHERE c.id = (SELECT credential_id FROM gone)
                     FOR UPDATE
                 ),
                 -- The credential is locked before the ticket, and a ticket
                 -- another transaction holds is being handed a credential
                 -- or removed: it is skipped, so releases hand out side by
                 -- side, each to the lowest ticket still free.
                 next AS (
                     SELECT {tickets}.id, {tickets}.owner, {tickets}.scope FROM {tickets}, freed
                     WHERE freed.usable
                       AND {tickets}.pool = $3 AND {waiting}
                       AND NOT ({tickets}.id = ANY($10::bigint[]))
                       AND {serves_freed}
                       AND {unit_first_release}
                     ORDER BY {tickets}.id LIMIT 1
                     FOR UPDATE OF tickets SKIP LOCKED
                 ),
                 back AS (
                     UPDATE {credentials} AS c
                     SET holders = c.holders - (SELECT units FROM gone)
                                   + CASE WHEN EXISTS (SELECT 1 FROM next) THEN 1 ELSE 0 END,
                         last_used_at = CASE WHEN EXISTS (SELECT 1 FROM next) THEN {NOW}
                                             ELSE c.last_used_at END,
                         use_count = c.use_count + CASE WHEN EXISTS (SELECT 1 FROM next) THEN 1 ELSE 0 END,
                         cooling_until = CASE WHEN $4::bigint IS NULL THEN c.cooling_until
                             ELSE greatest(coalesce(c.cooling_until, 0), {NOW} + $4::bigint) END,
                         disabled_reason = coalesce($5::text, c.disabled_reason)
                     WHERE c.id = (SELECT id FROM freed)
                     RETURNING c.name
                 ),
                 leased AS (
                     INSERT INTO {leases}
                         (pool, credential_id, acquired_at, expires_at, scope, limited, holder)
                     SELECT $3, freed.id,
                            {CLOCK} + CASE WHEN next.id = ANY($7::bigint[]) THEN 0 ELSE $6::bigint END,
                            {CLOCK} + CASE WHEN next.id = ANY($7::bigint[]) THEN $9::bigint ELSE $6::bigint END,
                            next.scope, freed.limited,
                            CASE WHEN next.id = ANY($7::bigint[]) THEN {THIS_HOLDER} END
                     FROM freed, next
                     RETURNING id, acquired_at, expires_at
                 ),
                 handed AS (
                     UPDATE {tickets} AS t
                     SET lease_id = leased.id, credential_id = (SELECT id FROM freed),
                         expires_at = {CLOCK} + $6::bigint
                     FROM leased, next
                     WHERE t.id = next.id AND NOT (next.id = ANY($7::bigint[]))
                     RETURNING t.id
                 ),
                 claimed AS (
                     DELETE FROM {tickets} AS t USING next
                     WHERE t.id = next.id AND next.id = ANY($7::bigint[])
                     RETURNING t.id
                 )
                 SELECT back.name, next.id, next.owner,
                        CASE WHEN NOT (next.id = ANY($7::bigint[]))
                             THEN pg_notify($8, next.owner::text || ':' || $3)::text END,
                        freed.id, freed.name, freed.secret, freed.extra, freed.capacity,
                        leased.id, leased.acquired_at, leased.expires_at,
                        (next.id IS NULL OR (SELECT units FROM gone) > 1)
                        AND EXISTS (SELECT 1 FROM {tickets}
                                    WHERE pool = $3 AND {waiting}
                                      AND NOT (id = ANY($10::bigint[]))),
                        (SELECT count(*) FROM handed) + (SELECT count(*) FROM claimed)
                 FROM back CROSS JOIN freed
                 LEFT JOIN next ON true
                 LEFT JOIN leased ON true"
            ),
            renew: format!(
                "UPDATE {leases} SET expires_at = {NOW} + $4::bigint
                 WHERE id = $1 AND credential_id = $2 AND pool = $3
                   AND (expires_at IS NULL OR expires_at > {NOW})
                 RETURNING expires_at"
            ),
            reclaim: format!(
                "WITH expired AS (
                     DELETE FROM {leases} WHERE id IN (
                         SELECT id FROM {leases}
                         WHERE pool = $1 AND expires_at <= {NOW}
                         ORDER BY id
                         FOR UPDATE SKIP LOCKED)
                     RETURNING id, credential_id, units
                 ),
                 counts AS (
                     SELECT credential_id, sum(units)::integer AS n FROM expired GROUP BY credential_id
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
                     {any_enabled},
                     {free_now} AND {line_empty},
                     (SELECT min(cooling_until) FROM {credentials}
                      WHERE pool = $1 AND disabled_reason IS NULL AND cooling_until > {NOW}),
                     (SELECT min(expires_at) FROM {leases}
                      WHERE pool = $1 AND expires_at IS NOT NULL),
                     (SELECT min(blocked_until) FROM {limits}
                      WHERE pool = $1 AND blocked_until > {NOW})"
            ),
            busy_for: format!(
                "SELECT
                     {any_enabled},
                     (SELECT true FROM {credentials} AS c
                      WHERE pool = $1 AND {usable}
                        AND ($3::text IS NULL OR name = $3)
                        AND (blocks IS NULL OR coalesce((blocks ->> $2)::bigint, 0) <= {NOW})
                        AND NOT EXISTS (SELECT 1 FROM {tickets} WHERE pool = $1 AND {waiting}
                                          AND scope IS NOT DISTINCT FROM nullif($2, '')
                                          AND name IS NOT DISTINCT FROM $3)
                        AND NOT {held_c}
                      ORDER BY last_used_at NULLS FIRST, id LIMIT 1) IS NOT NULL,
                     {why_for}"
            ),
            // The lowest ticket that a free credential may serve, then the
            // least recently used credential that serves it; both skip rows
            // other transactions hold, so no hand-off waits for another.
            serve: format!(
                "WITH next AS (
                     SELECT {tickets}.id, {tickets}.owner, {tickets}.scope, {tickets}.name
                     FROM {tickets}
                     WHERE {free_any} AND {tickets}.pool = $1 AND {waiting}
                       AND NOT ({tickets}.id = ANY($5::bigint[]))
                       AND (SELECT true FROM {credentials} AS c
                            WHERE c.pool = $1 AND {usable} AND {serves_c} AND {unit_first_c}
                            ORDER BY c.last_used_at NULLS FIRST, c.id LIMIT 1) IS NOT NULL
                     ORDER BY {tickets}.id LIMIT 1
                     FOR UPDATE OF tickets SKIP LOCKED
                 ),
                 picked AS (
                     SELECT c.id FROM {credentials} AS c, next
                     WHERE c.pool = $1 AND {usable}
                       AND {serves_next} AND NOT {unit_first_next}
                     ORDER BY c.last_used_at NULLS FIRST, c.id
                     LIMIT 1
                     FOR UPDATE OF c SKIP LOCKED
                 ),
                 marked AS (
                     UPDATE {credentials} AS c
                     SET holders = c.holders + 1, last_used_at = {NOW},
                         use_count = c.use_count + 1, cooling_until = NULL
                     WHERE c.id = (SELECT id FROM picked)
                     RETURNING c.id, c.limited
                 ),
                 leased AS (
                     INSERT INTO {leases}
                         (pool, credential_id, acquired_at, expires_at, scope, limited, holder)
                     SELECT $1, marked.id, {CLOCK} + $2::bigint, {CLOCK} + $2::bigint,
                            (SELECT scope FROM next), marked.limited, NULL
                     FROM marked
                     RETURNING id, credential_id
                 ),
                 handed AS (
                     UPDATE {tickets} AS t
                     SET lease_id = leased.id, credential_id = leased.credential_id,
                         expires_at = {CLOCK} + $2::bigint
                     FROM leased WHERE t.id = (SELECT id FROM next)
                     RETURNING t.id, t.owner
                 )
                 SELECT id, owner,
                        CASE WHEN owner <> $3 THEN pg_notify($4, owner::text || ':' || $1)::text END,
                        false
                 FROM handed
                 UNION ALL
                 SELECT NULL, NULL, NULL, true
                 WHERE NOT EXISTS (SELECT 1 FROM handed)
                   AND {free_any}
                   AND EXISTS (SELECT 1 FROM {tickets}
                               WHERE {tickets}.pool = $1 AND {waiting}
                                 AND NOT ({tickets}.id = ANY($5::bigint[]))
                                 AND (SELECT true FROM {credentials} AS c
                                      WHERE c.pool = $1 AND {usable} AND {serves_c}
                                        AND {unit_first_c}
                                      ORDER BY c.last_used_at NULLS FIRST, c.id LIMIT 1)
                                     IS NOT NULL)"
            ),
            claim: format!(
                "WITH mine AS (
                     DELETE FROM {tickets}
                     WHERE id = $1 AND pool = $3 AND lease_id IS NOT NULL
                     RETURNING lease_id
                 ),
                 claimed AS (
                     UPDATE {leases}
                     SET expires_at = {CLOCK} + $2::bigint, acquired_at = {CLOCK},
                         holder = {THIS_HOLDER}
                     WHERE id = (SELECT lease_id FROM mine) AND expires_at > {CLOCK}
                     RETURNING id, credential_id, acquired_at, expires_at, units
                 )
                 SELECT c.id, c.name, c.secret, c.extra, c.capacity,
                        claimed.id, claimed.acquired_at, claimed.expires_at, claimed.units
                 FROM mine
                 LEFT JOIN claimed ON true
                 LEFT JOIN {credentials} AS c ON c.id = claimed.credential_id"
            ),
            credentials,
            leases,
            tickets,
            owners,
            waiting,
            free_now,
            limits,
            schema: schema.to_string(),
        }
    }

    /// The limits table's name.
    pub(crate) fn limits(&self) -> &str {
        &self.limits
    }

    /// `$1` pool, `$2` TTL in ms (the claim deadline for a ticket), `$3`
    /// scope (`''`: the default), `$4` name (NULL: any), `$5` units, `$6`
    /// the ticket to hand the lease to (NULL: for the caller). A weighted
    /// grant (`grant_units` in the schema): the grant's columns as
    /// `acquire`, no row when nothing had the units free.
    pub(crate) fn grant_units(&self) -> String {
        format!(
            "SELECT * FROM \"{}\".grant_units($1, $2::bigint, $3, $4, $5::integer, $6::bigint)",
            self.schema
        )
    }

    /// `$1` pool, `$2` scope (`''`: the default), `$3` name (NULL: any),
    /// `$4` units. Why a weighted grant found nothing: `busy_for`'s columns
    /// 0 and 2 to 6, then the most units a grant may take (the largest
    /// capacity of an enabled credential that may serve it, less where a
    /// quota is smaller), then when a quota of one with the units free
    /// next allows them.
    pub(crate) fn busy_units(&self) -> String {
        let (credentials, leases, limits) = (&self.credentials, &self.leases, &self.limits);
        let schema = &self.schema;
        let any_enabled = any_enabled(credentials);
        let why_for = why_busy_for(credentials, leases, limits);
        format!(
            "SELECT
                 {any_enabled},
                 NULL::boolean,
                 {why_for},
                 (SELECT max(least(c.capacity, coalesce(
                             (SELECT min(l.rate_count) FROM {limits} AS l
                              WHERE l.credential_id = c.id AND l.scope IN ('', $2)
                                AND l.rate_count IS NOT NULL), c.capacity)))
                  FROM {credentials} AS c
                  WHERE c.pool = $1 AND c.disabled_reason IS NULL
                    AND ($3::text IS NULL OR c.name = $3)),
                 (SELECT min(\"{schema}\".limit_blocked_for(l.log, l.rate_count, l.rate_window_ms,
                                                            l.until, l.remaining, {NOW}, $4::integer))
                  FROM {limits} AS l JOIN {credentials} AS c ON c.id = l.credential_id
                  WHERE c.pool = $1 AND l.scope IN ('', $2) AND c.disabled_reason IS NULL
                    AND c.holders + $4::integer <= c.capacity
                    AND ($3::text IS NULL OR c.name = $3))"
        )
    }

    /// `$1` pool, `$2` the tickets leaving. The lowest weighted ticket
    /// waiting, if any: its id, owner, scope, name and units.
    pub(crate) fn next_weighted(&self) -> String {
        format!(
            "SELECT id, owner, scope, name, units FROM {tickets}
             WHERE pool = $1 AND units > 1 AND {waiting}
               AND NOT (id = ANY($2::bigint[]))
             ORDER BY id LIMIT 1",
            tickets = self.tickets,
            waiting = self.waiting
        )
    }

    /// `$1` pool, `$2` owner, `$3` ticket TTL in ms, `$4` whether to renew
    /// this store's heartbeat too (the first ticket after a while without
    /// one), `$5` the scope waited for (NULL: the default), `$6` the name
    /// (NULL: any). Takes a ticket at the end of the line; returns its id, and
    /// whether a credential is free (one that came free since the grant
    /// looked).
    pub(crate) fn take_ticket(&self) -> String {
        format!(
            "WITH beat AS (
                 {beat} WHERE $4::boolean {on_beat}
             ),
             taken AS (
                 INSERT INTO {tickets} (pool, owner, expires_at, scope, name, units)
                 VALUES ($1, $2, {NOW} + $3::bigint, $5, $6, $7)
                 RETURNING id
             )
             SELECT id, {free_now} FROM taken",
            beat = self.beat(),
            on_beat = ON_BEAT,
            tickets = self.tickets,
            free_now = self.free_now
        )
    }

    /// The start of the statement that renews a store's heartbeat, `$1`
    /// pool, `$2` owner, `$3` ticket TTL in ms; a `WHERE` may follow, then
    /// [`ON_BEAT`].
    fn beat(&self) -> String {
        format!(
            "INSERT INTO {} (pool, owner, expires_at) SELECT $1, $2, {CLOCK} + $3::bigint",
            self.owners
        )
    }

    /// `$1` pool. Ends the tickets of stores whose heartbeat stopped (once
    /// they are a ticket TTL old: a store's first ticket may commit just
    /// before its first heartbeat), and those whose handed lease is gone
    /// (its claim deadline passed, its credential removed); skips those
    /// another transaction holds (they are being handed out, claimed or
    /// removed), so that it never waits. Forgets the stores whose heartbeat
    /// stopped a minute ago.
    pub(crate) fn expire_tickets(&self) -> String {
        format!(
            "WITH forgotten AS (
                 DELETE FROM {owners} WHERE pool = $1 AND expires_at <= {NOW} - 60000
             )
             DELETE FROM {tickets} WHERE id IN (
                 SELECT id FROM {tickets} WHERE pool = $1
                   AND CASE WHEN lease_id IS NULL
                            THEN expires_at <= {NOW} AND NOT {waiting}
                            ELSE expires_at <= {NOW}
                                 OR NOT EXISTS (SELECT 1 FROM {leases}
                                                WHERE {leases}.id = {tickets}.lease_id) END
                 ORDER BY id
                 FOR UPDATE SKIP LOCKED)",
            owners = self.owners,
            tickets = self.tickets,
            leases = self.leases,
            waiting = self.waiting,
        )
    }

    /// `$1` pool, `$2` owner, `$3` ticket TTL in ms, `$4` the tickets
    /// seated here. The store's heartbeat: its tickets live another TTL. It
    /// writes the store's own row and renews no ticket, so it never waits
    /// for a hand-off nor holds one up. It also ends this store's tickets
    /// that wait, a TTL old, with no seat here (their waiter left and the
    /// removal failed, or the answer to `take_ticket` was lost), skipping
    /// those another transaction holds. Returns the ids of the seated
    /// tickets that still exist.
    pub(crate) fn renew_tickets(&self) -> String {
        format!(
            "WITH beat AS (
                 {beat} {on_beat}
             ),
             unseated AS (
                 DELETE FROM {tickets} WHERE id IN (
                     SELECT id FROM {tickets}
                     WHERE pool = $1 AND owner = $2 AND lease_id IS NULL
                       AND expires_at <= {NOW} AND NOT (id = ANY($4::bigint[]))
                     ORDER BY id
                     FOR UPDATE SKIP LOCKED)
             )
             SELECT id FROM {tickets} WHERE pool = $1 AND id = ANY($4::bigint[])",
            beat = self.beat(),
            on_beat = ON_BEAT,
            tickets = self.tickets,
        )
    }

    /// `$1` pool, `$2` owner, `$3` the TTL of this store's leases in ms
    /// (NULL: none), `$4` the tickets seated here (a ticket taken but not
    /// seated yet waits for the next claim). Claims every lease handed to
    /// one of them:
    /// the tickets go, each lease lives its TTL from now. Returns the
    /// ticket, then the grant's columns as `acquire`, all NULL for a ticket
    /// whose lease is gone (its claim deadline passed).
    pub(crate) fn claim_handed(&self) -> String {
        format!(
            "WITH mine AS (
                 DELETE FROM {tickets}
                 WHERE pool = $1 AND owner = $2 AND lease_id IS NOT NULL
                   AND id = ANY($4::bigint[])
                 RETURNING id, lease_id
             ),
             claimed AS (
                 UPDATE {leases} AS l
                 SET expires_at = {CLOCK} + $3::bigint, acquired_at = {CLOCK},
                     holder = {THIS_HOLDER}
                 FROM mine WHERE l.id = mine.lease_id AND l.expires_at > {CLOCK}
                 RETURNING mine.id AS ticket, l.id, l.credential_id, l.acquired_at, l.expires_at,
                           l.units
             )
             SELECT mine.id, c.id, c.name, c.secret, c.extra, c.capacity,
                    claimed.id, claimed.acquired_at, claimed.expires_at, claimed.units
             FROM mine
             LEFT JOIN claimed ON claimed.ticket = mine.id
             LEFT JOIN {credentials} AS c ON c.id = claimed.credential_id",
            tickets = self.tickets,
            leases = self.leases,
            credentials = self.credentials,
        )
    }

    /// `$1` ticket, `$2` pool. Removes a ticket; returns the lease handed to
    /// it, if any, and its credential. It locks one row and waits for nothing
    /// while it holds it.
    pub(crate) fn leave(&self) -> String {
        format!(
            "DELETE FROM {} WHERE id = $1 AND pool = $2 RETURNING lease_id, credential_id, units",
            self.tickets
        )
    }

    /// `$1` pool. How many tickets wait, in every store.
    pub(crate) fn waiting_tickets(&self) -> String {
        format!(
            "SELECT count(*) FROM {} WHERE pool = $1 AND {}",
            self.tickets, self.waiting
        )
    }

    /// `$1` pool, then arrays `$2` names, `$3` secrets, `$4` extras,
    /// `$5` capacities, `$6` disabled reasons. Adds the ones whose name is
    /// new; returns their names.
    pub(crate) fn insert_many(&self) -> String {
        format!(
            "INSERT INTO {} (pool, name, secret, extra, capacity, disabled_reason, created_at)
             SELECT $1, name, secret, extra, capacity, disabled_reason, {NOW}
             FROM unnest($2::text[], $3::text[], $4::text[], $5::integer[], $6::text[])
                  AS input (name, secret, extra, capacity, disabled_reason)
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

    /// `$1` pool, `$2` name. Ends every lease of the credential (leases
    /// handed to tickets included: their claims find them gone); returns
    /// how many, no row when there is no such credential. It locks the
    /// leases before the credential, in id order, as releases and the
    /// reclaim do (lease, then credential), so that it never deadlocks
    /// with them.
    pub(crate) fn revoke(&self) -> String {
        format!(
            "WITH target AS (
                 SELECT id FROM {credentials} WHERE pool = $1 AND name = $2
             ),
             ended AS (
                 DELETE FROM {leases} WHERE id IN (
                     SELECT id FROM {leases}
                     WHERE pool = $1 AND credential_id = (SELECT id FROM target)
                     ORDER BY id
                     FOR UPDATE)
                 RETURNING id, units
             ),
             back AS (
                 UPDATE {credentials} AS c
                 SET holders = c.holders - (SELECT coalesce(sum(units), 0) FROM ended)
                 WHERE c.id = (SELECT id FROM target)
                 RETURNING c.id
             )
             SELECT (SELECT count(*) FROM ended) FROM back",
            credentials = self.credentials,
            leases = self.leases
        )
    }

    /// Every pool in the schema that holds a credential, with how many.
    pub(crate) fn pools(&self) -> String {
        format!(
            "SELECT pool, count(*) FROM {} GROUP BY pool ORDER BY pool",
            self.credentials
        )
    }

    /// `$1` pool, `$2` name, `$3` new secret (NULL: kept), `$4` whether the
    /// extra text changes, `$5` the new extra text, `$6` new capacity (NULL:
    /// kept). Changes them at once unless the capacity would fall below the
    /// holders; returns the id, no row when refused or unknown.
    pub(crate) fn update(&self) -> String {
        format!(
            "UPDATE {} SET secret = coalesce($3, secret),
                 extra = CASE WHEN $4 THEN $5 ELSE extra END,
                 capacity = coalesce($6, capacity)
             WHERE pool = $1 AND name = $2 AND ($6::integer IS NULL OR holders <= $6::integer)
             RETURNING id",
            self.credentials
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

    /// `$1` pool, `$2` the id after which, `$3` at most how many. The
    /// credentials without their secrets, in id order, and the server's time.
    pub(crate) fn list(&self) -> String {
        format!(
            "SELECT id, name, capacity, holders, disabled_reason, cooling_until,
                    extra IS NOT NULL, last_used_at, use_count, created_at, {NOW}
             FROM {} WHERE pool = $1 AND id > $2 ORDER BY id LIMIT $3",
            self.credentials
        )
    }

    /// `$1` pool, `$2` name. The credential of that name, as `list`.
    pub(crate) fn list_named(&self) -> String {
        format!(
            "SELECT id, name, capacity, holders, disabled_reason, cooling_until,
                    extra IS NOT NULL, last_used_at, use_count, created_at, {NOW}
             FROM {} WHERE pool = $1 AND name = $2",
            self.credentials
        )
    }

    /// `$1` pool, credential ids in `($2, $3]`. The leases not past their
    /// expiry, oldest first.
    pub(crate) fn leases_of_ids(&self) -> String {
        format!(
            "SELECT credential_id, holder, acquired_at, expires_at, units FROM {}
             WHERE pool = $1 AND (expires_at IS NULL OR expires_at > {NOW})
               AND credential_id > $2 AND credential_id <= $3
             ORDER BY id",
            self.leases
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
                    holders >= capacity, count(*), coalesce(sum(holders), 0)::bigint,
                    coalesce(sum(use_count), 0)::bigint
             FROM {} WHERE pool = $1 GROUP BY 1, 2, 3",
            self.credentials
        )
    }
}

/// The schema's tables: entry `n` takes a schema from version `n` to `n + 1`.
pub(crate) fn migrations(schema: &str) -> Vec<String> {
    vec![
        first_schema(schema),
        // 1 -> 2: the waiting line, kept in the store for every process.
        format!(
            "CREATE TABLE \"{schema}\".tickets (
                 id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 pool          text   NOT NULL,
                 owner         bigint NOT NULL,
                 expires_at    bigint NOT NULL,
                 lease_id      bigint,
                 credential_id bigint
             );
             CREATE INDEX tickets_in_line ON \"{schema}\".tickets (pool, id)
                 WHERE lease_id IS NULL;
             -- Stores no longer announce their waiters: the tickets say who waits.
             DROP TABLE \"{schema}\".waiting;"
        ),
        // 2 -> 3: when the next cool-down ends, and whether any credential
        // is enabled (asked when none is free), without reading every row
        // of a pool that is mostly cooling down or disabled.
        format!(
            "CREATE INDEX credentials_cooling ON \"{schema}\".credentials (pool, cooling_until)
                 WHERE disabled_reason IS NULL AND cooling_until IS NOT NULL;
             CREATE INDEX credentials_enabled ON \"{schema}\".credentials (pool, id)
                 WHERE disabled_reason IS NULL;"
        ),
        // 3 -> 4: a store's heartbeat keeps all its tickets alive in one row
        // of its own, rather than in each ticket's row, which hand-offs lock.
        format!(
            "CREATE TABLE \"{schema}\".ticket_owners (
                 pool       text   NOT NULL,
                 owner      bigint NOT NULL,
                 expires_at bigint NOT NULL,
                 PRIMARY KEY (pool, owner)
             );"
        ),
        // 4 -> 5: rate limits by scope, and tickets for a scope or a name.
        super::limits_schema::migration(schema),
        // 5 -> 6: weighted grants, of several units at once.
        super::limits_schema::weighted(schema),
        // 6 -> 7: who holds each lease.
        super::limits_schema::holders(schema),
    ]
}

/// Whether any credential of pool `$1` is enabled: a scalar subquery in
/// index order (see `free_now` in [`Sql::new`]).
fn any_enabled(credentials: &str) -> String {
    format!(
        "(SELECT true FROM {credentials} WHERE pool = $1 AND disabled_reason IS NULL
          ORDER BY id LIMIT 1) IS NOT NULL"
    )
}

/// `$1` pool, `$2` scope, `$3` name (NULL: any). Why an ask for a scope or
/// a name found nothing, columns 2 to 6 of `busy_for` and `busy_units`:
/// when the next cool-down ends, the next lease expires and the scope's
/// next block ends; whether the name is known, and why it is disabled.
fn why_busy_for(credentials: &str, leases: &str, limits: &str) -> String {
    format!(
        "(SELECT min(cooling_until) FROM {credentials}
          WHERE pool = $1 AND disabled_reason IS NULL AND cooling_until > {NOW}),
         (SELECT min(expires_at) FROM {leases}
          WHERE pool = $1 AND expires_at IS NOT NULL),
         (SELECT min(blocked_until) FROM {limits}
          WHERE pool = $1 AND scope = $2 AND blocked_until > {NOW}),
         $3::text IS NULL OR EXISTS (SELECT 1 FROM {credentials} WHERE pool = $1 AND name = $3),
         (SELECT disabled_reason FROM {credentials} WHERE pool = $1 AND name = $3)"
    )
}

fn first_schema(schema: &str) -> String {
    format!(
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
    )
}
