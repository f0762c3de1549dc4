//! The schema of rate limits on Postgres (migration 4 -> 5): the limits
//! table, the pools' defaults, and the functions and triggers that count
//! grants and keep each credential's blocks on its own row (see
//! `limits.rs`); and weighted grants (migration 5 -> 6), which count as
//! many grants as they take units. A leaf: it imports nothing of the crate.

/// The server's time in ms, as the statements read it.
const NOW: &str = "(extract(epoch FROM now()) * 1000)::bigint";
/// The server's time in ms as it is, not as the transaction began.
const CLOCK: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Migration 4 -> 5: the limits table, its functions and trigger, and the
/// columns that carry a scope and a name.
pub(crate) fn migration(schema: &str) -> String {
    let s = format!("\"{schema}\"");
    format!(
        "ALTER TABLE {s}.credentials ADD COLUMN limited boolean NOT NULL DEFAULT false,
                                     ADD COLUMN blocks jsonb;
         ALTER TABLE {s}.leases ADD COLUMN scope text,
                                ADD COLUMN limited boolean NOT NULL DEFAULT false;
         ALTER TABLE {s}.tickets ADD COLUMN scope text, ADD COLUMN name text;
         -- One scope's limits on one credential ('' for every scope): a
         -- quota of rate_count grants in any rate_window_ms, with the times
         -- of the grants in its last window (log); a budget an API
         -- reported (remaining grants until `until`); and when the next
         -- grant is allowed (blocked_until), written with the rest.
         CREATE TABLE {s}.limits (
             credential_id  bigint   NOT NULL REFERENCES {s}.credentials (id) ON DELETE CASCADE,
             scope          text     NOT NULL,
             pool           text     NOT NULL,
             rate_count     integer,
             rate_window_ms bigint,
             log            bigint[] NOT NULL DEFAULT '{{}}',
             until          bigint,
             remaining      integer  NOT NULL DEFAULT 0,
             blocked_until  bigint,
             -- Whether the quota is the pool's default, not the credential's own.
             inherited      boolean  NOT NULL DEFAULT false,
             PRIMARY KEY (credential_id, scope)
         );
         -- The pools' default quotas, by scope: every credential without one
         -- of its own has a row in limits with it (inherited).
         CREATE TABLE {s}.pool_rates (
             pool           text    NOT NULL,
             scope          text    NOT NULL,
             rate_count     integer NOT NULL,
             rate_window_ms bigint  NOT NULL,
             PRIMARY KEY (pool, scope)
         );
         CREATE INDEX limits_blocked ON {s}.limits (pool, blocked_until)
             WHERE blocked_until IS NOT NULL;
         CREATE INDEX limits_of_pool ON {s}.limits (pool, credential_id);
         -- What a plain newcomer asks: whether a plain ticket waits.
         CREATE INDEX tickets_plain_in_line ON {s}.tickets (pool, id)
             WHERE lease_id IS NULL AND scope IS NULL AND name IS NULL;

         -- When a row's limits next allow a grant, after `at`; NULL: now.
         CREATE FUNCTION {s}.limit_blocked(log bigint[], rate_count integer,
                                           rate_window_ms bigint, until bigint,
                                           remaining integer, at bigint)
         RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
             SELECT greatest(
                 CASE WHEN rate_count IS NOT NULL AND cardinality(log) >= rate_count
                           AND log[cardinality(log) - rate_count + 1] + rate_window_ms + 1 > at
                      THEN log[cardinality(log) - rate_count + 1] + rate_window_ms + 1 END,
                 CASE WHEN until > at AND remaining = 0 THEN until END)
         $$;

         -- After a change to the limits of scope `sc` of credential `cid`:
         -- drops the row when it says nothing any more, writes when it next
         -- allows a grant, and copies that onto the credential's row (a
         -- block of every scope into its cool-down, a scope's into blocks).
         CREATE FUNCTION {s}.settle_limit(cid bigint, sc text, at bigint)
         RETURNS void LANGUAGE plpgsql AS $$
         DECLARE blocked bigint;
         BEGIN
             DELETE FROM {s}.limits
             WHERE credential_id = cid AND scope = sc AND rate_count IS NULL
               AND (until IS NULL OR until <= at);
             UPDATE {s}.limits AS l
             SET blocked_until = {s}.limit_blocked(l.log, l.rate_count, l.rate_window_ms,
                                                   l.until, l.remaining, at)
             WHERE credential_id = cid AND scope = sc
             RETURNING blocked_until INTO blocked;
             IF sc = '' THEN
                 IF blocked IS NOT NULL THEN
                     UPDATE {s}.credentials
                     SET cooling_until = greatest(coalesce(cooling_until, 0), blocked)
                     WHERE id = cid;
                 END IF;
             ELSE
                 UPDATE {s}.credentials
                 SET blocks = CASE WHEN blocked IS NULL THEN blocks - sc
                                   ELSE coalesce(blocks, '{{}}'::jsonb) || jsonb_build_object(sc, blocked) END
                 WHERE id = cid;
             END IF;
             UPDATE {s}.credentials AS c
             SET limited = EXISTS (SELECT 1 FROM {s}.limits WHERE credential_id = cid)
             WHERE c.id = cid;
         END $$;

         -- A grant of a credential that has limits counts against them, at
         -- its acquired_at: a lease handed to another process's ticket is
         -- dated at its claim deadline, the latest it can be first used,
         -- and moves to its claim (earlier) when it is claimed.
         CREATE FUNCTION {s}.count_grant() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE {s}.limits AS l
             SET log = CASE WHEN l.rate_count IS NULL THEN l.log ELSE
                           array(SELECT t FROM unnest(l.log || NEW.acquired_at) AS t
                                 WHERE t > {NOW} - l.rate_window_ms ORDER BY t) END,
                 remaining = CASE WHEN l.until > NEW.acquired_at
                                  THEN greatest(l.remaining - 1, 0) ELSE l.remaining END
             WHERE l.credential_id = NEW.credential_id
               AND l.scope IN ('', coalesce(NEW.scope, ''));
             PERFORM {s}.settle_limit(NEW.credential_id, '', {NOW});
             IF coalesce(NEW.scope, '') <> '' THEN
                 PERFORM {s}.settle_limit(NEW.credential_id, NEW.scope, {NOW});
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER leases_count_grant AFTER INSERT ON {s}.leases
             FOR EACH ROW WHEN (NEW.limited) EXECUTE FUNCTION {s}.count_grant();

         -- A lease handed to a ticket counts from when its waiter claims it
         -- (when it can first be used): its grant moves to that time.
         CREATE FUNCTION {s}.move_grant() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             -- The credential before its limits, as every grant locks them.
             PERFORM 1 FROM {s}.credentials WHERE id = NEW.credential_id FOR UPDATE;
             UPDATE {s}.limits AS l
             SET log = (SELECT coalesce(array_agg(t ORDER BY t), '{{}}') FROM (
                            SELECT t FROM unnest(l.log) WITH ORDINALITY AS u(t, i)
                            WHERE i <> array_position(l.log, OLD.acquired_at)
                            UNION ALL SELECT NEW.acquired_at) AS moved)
             WHERE l.credential_id = NEW.credential_id
               AND l.scope IN ('', coalesce(NEW.scope, ''))
               AND l.rate_count IS NOT NULL
               AND array_position(l.log, OLD.acquired_at) IS NOT NULL;
             PERFORM {s}.settle_limit(NEW.credential_id, '', {NOW});
             IF coalesce(NEW.scope, '') <> '' THEN
                 PERFORM {s}.settle_limit(NEW.credential_id, NEW.scope, {NOW});
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER leases_move_grant AFTER UPDATE OF acquired_at ON {s}.leases
             FOR EACH ROW WHEN (NEW.limited AND NEW.acquired_at <> OLD.acquired_at)
             EXECUTE FUNCTION {s}.move_grant();

         -- Locks credential `cid` (before its limits, as every grant does)
         -- and, for the scope of every scope, ends the cool-down that its
         -- limits set, to be set again from what they say next.
         CREATE FUNCTION {s}.lift_block(cid bigint, sc text)
         RETURNS void LANGUAGE plpgsql AS $$
         DECLARE old_block bigint;
         BEGIN
             PERFORM 1 FROM {s}.credentials WHERE id = cid FOR UPDATE;
             IF sc = '' THEN
                 SELECT blocked_until INTO old_block FROM {s}.limits
                 WHERE credential_id = cid AND scope = '' FOR UPDATE;
                 IF old_block IS NOT NULL THEN
                     UPDATE {s}.credentials SET cooling_until = NULL
                     WHERE id = cid AND cooling_until = old_block;
                 END IF;
             END IF;
         END $$;

         -- Sets (or with a NULL count removes) a credential's own quota;
         -- without one, the pool's default holds. The grants logged count
         -- against the new quota too.
         CREATE FUNCTION {s}.set_rate(cid bigint, sc text, n integer, w bigint)
         RETURNS void LANGUAGE plpgsql AS $$
         DECLARE dn integer; dw bigint;
         BEGIN
             PERFORM {s}.lift_block(cid, sc);
             IF n IS NULL THEN
                 SELECT pr.rate_count, pr.rate_window_ms INTO dn, dw
                 FROM {s}.pool_rates AS pr JOIN {s}.credentials AS c ON c.pool = pr.pool
                 WHERE c.id = cid AND pr.scope = sc;
             END IF;
             INSERT INTO {s}.limits (credential_id, scope, pool, rate_count, rate_window_ms, inherited)
             SELECT id, sc, pool, coalesce(n, dn), CASE WHEN n IS NULL THEN dw ELSE w END,
                    n IS NULL AND dn IS NOT NULL
             FROM {s}.credentials WHERE id = cid
             ON CONFLICT (credential_id, scope) DO UPDATE SET
                 rate_count = EXCLUDED.rate_count,
                 rate_window_ms = EXCLUDED.rate_window_ms,
                 inherited = EXCLUDED.inherited,
                 log = CASE WHEN EXCLUDED.rate_count IS NULL THEN '{{}}' ELSE limits.log END;
             PERFORM {s}.settle_limit(cid, sc, {NOW});
         END $$;

         -- The pool's default quota of `sc` changed (a NULL count: none):
         -- a quota of the credential's own stays.
         CREATE FUNCTION {s}.set_default(cid bigint, sc text, n integer, w bigint)
         RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM {s}.lift_block(cid, sc);
             INSERT INTO {s}.limits (credential_id, scope, pool, rate_count, rate_window_ms, inherited)
             SELECT id, sc, pool, n, w, n IS NOT NULL FROM {s}.credentials WHERE id = cid
             ON CONFLICT (credential_id, scope) DO UPDATE SET
                 rate_count = EXCLUDED.rate_count,
                 rate_window_ms = EXCLUDED.rate_window_ms,
                 inherited = EXCLUDED.inherited,
                 log = CASE WHEN EXCLUDED.rate_count IS NULL THEN '{{}}' ELSE limits.log END
             WHERE limits.inherited OR limits.rate_count IS NULL;
             PERFORM {s}.settle_limit(cid, sc, {NOW});
         END $$;

         -- Sets (or removes) pool `p`'s default quota of `sc`, on every
         -- credential without one of its own, in id order.
         CREATE FUNCTION {s}.set_pool_default(p text, sc text, n integer, w bigint)
         RETURNS void LANGUAGE plpgsql AS $$
         DECLARE r record;
         BEGIN
             -- Waits for the adds in flight (each holds this lock shared):
             -- none of their credentials misses the change.
             PERFORM pg_advisory_xact_lock(hashtext('credpool.defaults.{schema}.' || p));
             IF n IS NULL THEN
                 DELETE FROM {s}.pool_rates WHERE pool = p AND scope = sc;
             ELSE
                 INSERT INTO {s}.pool_rates (pool, scope, rate_count, rate_window_ms)
                 VALUES (p, sc, n, w)
                 ON CONFLICT (pool, scope) DO UPDATE SET
                     rate_count = EXCLUDED.rate_count, rate_window_ms = EXCLUDED.rate_window_ms;
             END IF;
             FOR r IN SELECT id FROM {s}.credentials WHERE pool = p ORDER BY id LOOP
                 PERFORM {s}.set_default(r.id, sc, n, w);
             END LOOP;
         END $$;

         -- Takes in a budget an API reported: the latest report holds,
         -- and within one window (the same reset) the fewer requests left.
         CREATE FUNCTION {s}.report_limit(cid bigint, sc text, reset bigint, left_ integer)
         RETURNS void LANGUAGE plpgsql AS $$
         DECLARE at bigint := {NOW};
         BEGIN
             PERFORM {s}.lift_block(cid, sc);
             INSERT INTO {s}.limits (credential_id, scope, pool, until, remaining)
             SELECT id, sc, pool, reset, left_ FROM {s}.credentials WHERE id = cid
             ON CONFLICT (credential_id, scope) DO UPDATE SET
                 until = EXCLUDED.until,
                 remaining = CASE WHEN limits.until > at AND limits.until = EXCLUDED.until
                                  THEN least(limits.remaining, EXCLUDED.remaining)
                                  ELSE EXCLUDED.remaining END;
             PERFORM {s}.settle_limit(cid, sc, at);
         END $$;

         -- Ends the cool-downs and reported budgets of the credentials of
         -- pool `p` (named `nm`, or all), in scope `sc` (or all, and their
         -- own cool-downs); returns how many credentials it changed.
         CREATE FUNCTION {s}.reset_limits(p text, nm text, sc text)
         RETURNS bigint LANGUAGE plpgsql AS $$
         DECLARE at bigint := {NOW}; ids bigint[]; r record;
         BEGIN
             PERFORM 1 FROM {s}.credentials
             WHERE pool = p AND (nm IS NULL OR name = nm) ORDER BY id FOR UPDATE;
             WITH cooled AS (
                 UPDATE {s}.credentials SET cooling_until = NULL
                 WHERE pool = p AND (nm IS NULL OR name = nm) AND sc IS NULL
                   AND cooling_until > at
                 RETURNING id
             )
             SELECT coalesce(array_agg(id), '{{}}') INTO ids FROM cooled;
             FOR r IN
                 UPDATE {s}.limits AS l SET until = NULL, remaining = 0
                 FROM {s}.credentials AS c
                 WHERE c.id = l.credential_id AND c.pool = p AND (nm IS NULL OR c.name = nm)
                   AND (sc IS NULL OR l.scope = sc) AND l.until IS NOT NULL
                 RETURNING l.credential_id, l.scope
             LOOP
                 ids := ids || r.credential_id;
                 PERFORM {s}.settle_limit(r.credential_id, r.scope, at);
             END LOOP;
             -- A quota of every scope that is used up still holds.
             FOR r IN SELECT DISTINCT unnest(ids) AS id LOOP
                 PERFORM {s}.settle_limit(r.id, '', at);
             END LOOP;
             RETURN (SELECT count(DISTINCT x) FROM unnest(ids) AS x);
         END $$;"
    )
}

/// Migration 5 -> 6: leases and tickets of several units (a weighted
/// grant), which count as that many grants, and when a credential's limits
/// allow several at once.
pub(crate) fn weighted(schema: &str) -> String {
    let s = format!("\"{schema}\"");
    let grant_units = grant_units(schema, false);
    format!(
        "ALTER TABLE {s}.leases ADD COLUMN units integer NOT NULL DEFAULT 1 CHECK (units >= 1);
         ALTER TABLE {s}.tickets ADD COLUMN units integer NOT NULL DEFAULT 1 CHECK (units >= 1);
         -- Whether a weighted ticket waits: every newcomer asks.
         CREATE INDEX tickets_weighted_in_line ON {s}.tickets (pool, id)
             WHERE lease_id IS NULL AND units > 1;

         -- When a row's limits next allow `n` grants at once, after `at`;
         -- NULL: now; the largest bigint: never (the quota is smaller).
         CREATE FUNCTION {s}.limit_blocked_for(log bigint[], rate_count integer,
                                               rate_window_ms bigint, until bigint,
                                               remaining integer, at bigint, n integer)
         RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
             SELECT greatest(
                 CASE WHEN rate_count IS NULL THEN NULL
                      WHEN n > rate_count THEN 9223372036854775807
                      WHEN cardinality(log) + n > rate_count
                           AND log[cardinality(log) + n - rate_count] + rate_window_ms + 1 > at
                      THEN log[cardinality(log) + n - rate_count] + rate_window_ms + 1 END,
                 CASE WHEN until > at AND remaining < n THEN until END)
         $$;

         CREATE OR REPLACE FUNCTION {s}.count_grant() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE {s}.limits AS l
             SET log = CASE WHEN l.rate_count IS NULL THEN l.log ELSE
                           array(SELECT t FROM unnest(l.log || array_fill(NEW.acquired_at,
                                                                          ARRAY[NEW.units])) AS t
                                 WHERE t > {NOW} - l.rate_window_ms ORDER BY t) END,
                 remaining = CASE WHEN l.until > NEW.acquired_at
                                  THEN greatest(l.remaining - NEW.units, 0) ELSE l.remaining END
             WHERE l.credential_id = NEW.credential_id
               AND l.scope IN ('', coalesce(NEW.scope, ''));
             PERFORM {s}.settle_limit(NEW.credential_id, '', {NOW});
             IF coalesce(NEW.scope, '') <> '' THEN
                 PERFORM {s}.settle_limit(NEW.credential_id, NEW.scope, {NOW});
             END IF;
             RETURN NULL;
         END $$;

         -- A weighted lease moves all its grants.
         CREATE OR REPLACE FUNCTION {s}.move_grant() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM 1 FROM {s}.credentials WHERE id = NEW.credential_id FOR UPDATE;
             UPDATE {s}.limits AS l
             SET log = (SELECT coalesce(array_agg(moved.t ORDER BY moved.t), '{{}}') FROM (
                            SELECT CASE WHEN u.t = OLD.acquired_at AND u.r <= NEW.units
                                        THEN NEW.acquired_at ELSE u.t END AS t
                            FROM (SELECT t, row_number() OVER (PARTITION BY t ORDER BY i) AS r
                                  FROM unnest(l.log) WITH ORDINALITY AS x(t, i)) AS u) AS moved)
             WHERE l.credential_id = NEW.credential_id
               AND l.scope IN ('', coalesce(NEW.scope, ''))
               AND l.rate_count IS NOT NULL
               AND array_position(l.log, OLD.acquired_at) IS NOT NULL;
             PERFORM {s}.settle_limit(NEW.credential_id, '', {NOW});
             IF coalesce(NEW.scope, '') <> '' THEN
                 PERFORM {s}.settle_limit(NEW.credential_id, NEW.scope, {NOW});
             END IF;
             RETURN NULL;
         END $$;

         {grant_units}"
    )
}

/// `grant_units`, the weighted grant (see [`weighted`]). With `holder`
/// (schema 7 on), it replaces the function of schema 6 and writes the
/// lease's holder: this connection's for a newcomer, none for a lease
/// handed to a ticket (its process writes itself at the claim).
fn grant_units(schema: &str, holder: bool) -> String {
    let s = format!("\"{schema}\"");
    let (create, holder_column, holder_value) = if holder {
        (
            "CREATE OR REPLACE",
            ", holder",
            format!(", CASE WHEN tk IS NULL THEN {THIS_HOLDER} END"),
        )
    } else {
        ("CREATE", "", String::new())
    };
    format!(
        "-- A weighted grant of `n` units for scope `sc` ('' the default)
         -- and name `nm` (NULL: any), in pool `p`: the least recently used
         -- credential with `n` units free whose limits allow `n` grants.
         -- Each candidate is locked before its limits are read (a new
         -- snapshot for each statement here), so no grant counted since is
         -- missed. For a newcomer (`tk` NULL), nothing while a ticket waits
         -- for the same or a weighted one waits; the lease lives `ttl` ms.
         -- For the ticket `tk`, the lease is handed to it (dated and
         -- expiring at its claim deadline, `ttl` ms on), if it still waits;
         -- a row of NULLs when another transaction holds the ticket (it may
         -- be handing it units this one does not see yet: ask again).
         {create} FUNCTION {s}.grant_units(p text, ttl bigint, sc text, nm text, n integer,
                                         tk bigint)
         RETURNS TABLE (id bigint, name text, secret text, extra text, capacity integer,
                        lease_id bigint, acquired_at bigint, expires_at bigint)
         LANGUAGE plpgsql AS $$
         DECLARE at bigint := {NOW}; cand record; granted record;
         BEGIN
             IF tk IS NULL THEN
                 IF EXISTS (SELECT 1 FROM {s}.tickets AS t
                            WHERE t.pool = p AND t.lease_id IS NULL
                              AND (t.units > 1 OR (t.scope IS NOT DISTINCT FROM nullif(sc, '')
                                                   AND t.name IS NOT DISTINCT FROM nm))
                              AND EXISTS (SELECT 1 FROM {s}.ticket_owners AS o
                                          WHERE o.pool = t.pool AND o.owner = t.owner
                                            AND o.expires_at > at)) THEN
                     RETURN;
                 END IF;
             ELSE
                 PERFORM 1 FROM {s}.tickets AS t WHERE t.id = tk AND t.lease_id IS NULL
                     FOR UPDATE SKIP LOCKED;
                 IF NOT FOUND THEN
                     IF EXISTS (SELECT 1 FROM {s}.tickets AS t
                                WHERE t.id = tk AND t.lease_id IS NULL) THEN
                         RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text,
                                             NULL::integer, NULL::bigint, NULL::bigint,
                                             NULL::bigint;
                     END IF;
                     RETURN;
                 END IF;
             END IF;
             FOR cand IN
                 SELECT c.id, c.limited FROM {s}.credentials AS c
                 WHERE c.pool = p AND c.disabled_reason IS NULL AND c.holders + n <= c.capacity
                   AND (c.cooling_until IS NULL OR c.cooling_until <= at)
                   AND (nm IS NULL OR c.name = nm)
                   AND (c.blocks IS NULL OR coalesce((c.blocks ->> sc)::bigint, 0) <= at)
                 ORDER BY c.last_used_at NULLS FIRST, c.id
                 FOR UPDATE SKIP LOCKED
             LOOP
                 CONTINUE WHEN cand.limited AND EXISTS (
                     SELECT 1 FROM {s}.limits AS l
                     WHERE l.credential_id = cand.id AND l.scope IN ('', sc)
                       AND {s}.limit_blocked_for(l.log, l.rate_count, l.rate_window_ms,
                                                 l.until, l.remaining, at, n) IS NOT NULL);
                 UPDATE {s}.credentials AS c
                 SET holders = c.holders + n, last_used_at = at, use_count = c.use_count + 1,
                     cooling_until = NULL
                 WHERE c.id = cand.id;
                 INSERT INTO {s}.leases AS l (pool, credential_id, acquired_at, expires_at,
                                               scope, limited, units{holder_column})
                 VALUES (p, cand.id,
                         CASE WHEN tk IS NULL THEN at ELSE {CLOCK} + ttl END,
                         CASE WHEN tk IS NULL THEN at + ttl ELSE {CLOCK} + ttl END,
                         nullif(sc, ''), cand.limited, n{holder_value})
                 RETURNING l.id, l.acquired_at, l.expires_at INTO granted;
                 IF tk IS NOT NULL THEN
                     UPDATE {s}.tickets AS t
                     SET lease_id = granted.id, credential_id = cand.id,
                         expires_at = granted.expires_at
                     WHERE t.id = tk;
                 END IF;
                 RETURN QUERY
                     SELECT c.id, c.name, c.secret, c.extra, c.capacity,
                            granted.id, granted.acquired_at, granted.expires_at
                     FROM {s}.credentials AS c WHERE c.id = cand.id;
                 RETURN;
             END LOOP;
         END $$;"
    )
}

/// The holder this connection grants for (`<process id>@<host name>`),
/// set when it connects; NULL on a connection of a build before holders
/// (or after a `RESET ALL`, which leaves it empty).
pub(crate) const THIS_HOLDER: &str = "nullif(current_setting('credpool.holder', true), '')";

/// 6 -> 7: who holds each lease, so that an operator can tell a dead
/// process's lease from a live one; and an index to list a pool a page at
/// a time. Statements that do not name the column
/// write this connection's holder; hand-offs write none, and the claim
/// writes the claimer.
pub(crate) fn holders(schema: &str) -> String {
    format!(
        "-- The default comes apart, or the leases out now would get the
         -- migrating connection's holder.
         ALTER TABLE \"{schema}\".leases ADD COLUMN holder text;
         ALTER TABLE \"{schema}\".leases ALTER COLUMN holder SET DEFAULT {THIS_HOLDER};
         -- A pool's credentials in the order they were added, a page at a
         -- time (`list`).
         CREATE INDEX credentials_in_pool ON \"{schema}\".credentials (pool, id);
         {}",
        grant_units(schema, true)
    )
}
