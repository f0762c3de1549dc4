//! A guard on the plans of the store's statements at scale: each statement
//! a grant, a release or the line runs, and each that finds a credential by
//! name, is planned as the store plans it (one generic plan) against a
//! million credentials, and must read neither `credentials` nor `leases`
//! from end to end, nor cost enough for the server to JIT-compile it.
//!
//! It needs a server, as the integration tests do: run it with
//! `scripts/with-postgres.sh cargo test --features postgres --lib`.

use std::time::Instant;

use tokio_postgres::{Client, NoTls};

use super::sql::Sql;
use super::PostgresStore;

const URL_VARIABLE: &str = "CREDPOOL_TEST_POSTGRES_URL";
const CREDENTIALS: i64 = 1_000_000;
const LEASES: i64 = 100_000;

/// Each statement, and arguments for it (as SQL literals).
fn statements(sql: &Sql) -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("acquire", sql.acquire.clone(), "'default', 300000"),
        (
            "acquire_many",
            sql.acquire_many.clone(),
            "'default', 300000, 8",
        ),
        (
            "release",
            sql.release.clone(),
            "1, 1, 'default', NULL, NULL",
        ),
        (
            "release_handing",
            sql.release_handing.clone(),
            "1, 1, 'default', NULL, NULL, 3000, ARRAY[1, 2]::bigint[], 'credpool', 300000, ARRAY[3]::bigint[]",
        ),
        ("renew", sql.renew.clone(), "1, 1, 'default', 300000"),
        ("reclaim", sql.reclaim.clone(), "'default'"),
        ("busy", sql.busy.clone(), "'default'"),
        (
            "serve",
            sql.serve.clone(),
            "'default', 3000, 1, 'credpool', ARRAY[3]::bigint[]",
        ),
        ("claim", sql.claim.clone(), "1, 300000, 'default'"),
        (
            "take_ticket",
            sql.take_ticket(),
            "'default', 1, 3000, true, NULL, NULL, 1",
        ),
        (
            "next_weighted",
            sql.next_weighted(),
            "'default', ARRAY[3]::bigint[]",
        ),

        (
            "acquire_for",
            sql.acquire_for.clone(),
            "'default', 300000, 'search', NULL",
        ),
        (
            "acquire_named",
            sql.acquire_for.clone(),
            "'default', 300000, '', 'account-7'",
        ),
        ("busy_for", sql.busy_for.clone(), "'default', 'search', NULL"),
        ("expire_tickets", sql.expire_tickets(), "'default'"),
        (
            "renew_tickets",
            sql.renew_tickets(),
            "'default', 1, 3000, ARRAY[1, 2]::bigint[]",
        ),
        (
            "claim_handed",
            sql.claim_handed(),
            "'default', 1, 300000, ARRAY[1, 2]::bigint[]",
        ),
        ("leave", sql.leave(), "1, 'default'"),
        ("waiting_tickets", sql.waiting_tickets(), "'default'"),
        ("holders", sql.holders(), "'default', 'account-7'"),
        ("name_of", sql.name_of(), "7, 'default'"),
        (
            "set_disabled",
            sql.set_disabled(),
            "'default', 'account-7', NULL",
        ),
        (
            "update",
            sql.update(),
            "'default', 'account-7', 's', true, NULL, 4",
        ),
        // Not `revoke` (nor `remove`): an operator's statement, which reads
        // the live leases of the pool, as no grant or release pays for an
        // index on their credential. Nor `busy_units`, nor `grant_units`
        // when nothing fits: a weighted ask that finds no credential with
        // its units free reads the pool's enabled credentials (free units
        // are not indexed; every grant would pay to keep them so).
    ]
}

fn url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{URL_VARIABLE} is not set, so there is no Postgres server to plan against. \
             Run `scripts/with-postgres.sh cargo test --features postgres --lib`."
        )
    })
}

async fn client() -> Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The top plan node's total cost, from the first line of a text plan.
fn total_cost(plan: &str) -> f64 {
    let first = plan.lines().next().unwrap_or_default();
    first
        .split("cost=")
        .nth(1)
        .and_then(|costs| costs.split("..").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|total| total.parse().ok())
        .unwrap_or_else(|| panic!("no cost in the plan's first line: {first}"))
}

#[tokio::test]
async fn no_hot_statement_reads_a_whole_table_or_is_jit_compiled_at_a_million_credentials() {
    let schema = format!("plans_{}", std::process::id());
    let client = client().await;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    let store = PostgresStore::options_url(&url())
        .unwrap()
        .schema(&schema)
        .open()
        .await
        .unwrap();
    drop(store);
    let seeded = Instant::now();
    // A million credentials, a tenth of them leased, a few cooling down and
    // disabled, and a short line: what a busy store at scale holds.
    client
        .batch_execute(&format!(
            "INSERT INTO {schema}.credentials
                 (pool, name, secret, capacity, holders, cooling_until, disabled_reason,
                  last_used_at, created_at)
             SELECT 'default', 'account-' || g, 's', 1, (g <= {LEASES})::int,
                    CASE WHEN g % 1000 = 1 THEN 9000000000000 END,
                    CASE WHEN g % 1000 = 2 THEN 'banned' END,
                    g, 0
             FROM generate_series(1, {CREDENTIALS}) AS g;
             INSERT INTO {schema}.leases (pool, credential_id, acquired_at, expires_at)
             SELECT 'default', g, 0, 9000000000000 FROM generate_series(1, {LEASES}) AS g;
             INSERT INTO {schema}.tickets (pool, owner, expires_at)
             SELECT 'default', 1, 9000000000000 FROM generate_series(1, 5);
             ANALYZE {schema}.credentials;
             ANALYZE {schema}.leases;
             ANALYZE {schema}.tickets;"
        ))
        .await
        .unwrap();
    eprintln!(
        "seeded {CREDENTIALS} credentials in {:.1?}",
        seeded.elapsed()
    );
    // As the store plans: once, for every argument.
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let jit_above: f64 = client
        .query_one("SELECT current_setting('jit_above_cost')::float8", &[])
        .await
        .unwrap()
        .get(0);
    let sql = Sql::new(&schema);
    let mut faults = Vec::new();
    for (name, text, arguments) in statements(&sql) {
        client
            .batch_execute(&format!("PREPARE plan_{name} AS {text}"))
            .await
            .unwrap_or_else(|error| panic!("prepare {name}: {error}"));
        let plan: String = client
            .query(&format!("EXPLAIN EXECUTE plan_{name}({arguments})"), &[])
            .await
            .unwrap_or_else(|error| panic!("explain {name}: {error}"))
            .iter()
            .map(|row| row.get::<_, String>(0) + "\n")
            .collect();
        for table in ["credentials", "leases"] {
            if plan.contains(&format!("Seq Scan on {table}")) {
                faults.push(format!("{name} reads all of {table}:\n{plan}"));
            }
        }
        let cost = total_cost(&plan);
        if cost > jit_above || plan.contains("JIT:") {
            faults.push(format!(
                "{name} costs {cost}, above jit_above_cost {jit_above}: the server would JIT-compile it on every run:\n{plan}"
            ));
        }
    }
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[test]
fn the_total_cost_is_read_from_the_first_line() {
    let plan = "Limit  (cost=8.58..4542.98 rows=33333 width=26)\n  ->  Seq Scan";
    assert_eq!(total_cost(plan), 4542.98);
}
