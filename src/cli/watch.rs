//! `credpool watch`: a live view of a pool, refreshed in place.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use credpool::store::Store;
use credpool::Pool;
use tokio::time::Instant;

use super::output::{print_table, shorten, stats_line};
use super::{write_stdout, Outcome};

/// Above this many credentials, the busiest list is left out (it reads every row).
const BUSIEST_LIMIT: u64 = 100_000;

pub(crate) async fn run<S: Store>(
    pool: &Pool<S>,
    interval: Duration,
    count: Option<u64>,
) -> Outcome {
    let terminal = std::io::stdout().is_terminal();
    // Grants per second come from the store's counters (every use count
    // summed, in the stats), at any size of pool; the busiest list reads
    // every row, so it is left out of a large pool (and says so).
    let mut previous: Option<(Instant, u64)> = None;
    let mut previous_uses: Option<HashMap<String, u64>> = None;
    let mut refreshes = 0;
    loop {
        let stats = pool.stats().await?;
        let listed = if stats.total <= BUSIEST_LIMIT {
            Some(pool.list().await?)
        } else {
            None
        };
        let scopes = listed
            .as_deref()
            .map(super::output::scope_rows)
            .filter(|rows| rows.len() > 1);
        let uses: Option<HashMap<String, u64>> =
            listed.map(|listed| listed.into_iter().map(|c| (c.name, c.use_count)).collect());
        if terminal {
            write_stdout(format_args!("\x1b[2J\x1b[H"));
        }
        outln!(
            "credpool watch: pool `{}`, every {:?}",
            pool.name(),
            interval
        );
        outln!("  {}", stats_line(&stats));
        match previous {
            Some((at, before)) => {
                let seconds = at.elapsed().as_secs_f64().max(1e-3);
                // Fewer uses than before: credentials were removed.
                let grants = stats.uses.saturating_sub(before);
                outln!("  grants/s {:.1}", grants as f64 / seconds);
            }
            None => outln!("  grants/s (next refresh)"),
        }
        previous = Some((Instant::now(), stats.uses));
        match uses {
            Some(uses) => {
                let mut busiest: Vec<(String, u64)> = uses
                    .iter()
                    .map(|(name, n)| {
                        let before = previous_uses
                            .as_ref()
                            .and_then(|before| before.get(name).copied())
                            .unwrap_or(0);
                        (name.clone(), n - before.min(*n))
                    })
                    .collect();
                busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let mut rows = vec![vec!["BUSIEST".to_string(), "GRANTS".to_string()]];
                rows.extend(
                    busiest
                        .into_iter()
                        .take(5)
                        .filter(|(_, n)| *n > 0)
                        .map(|(name, n)| vec![shorten(&name), n.to_string()]),
                );
                print_table(&rows);
                previous_uses = Some(uses);
            }
            None => outln!(
                "  (the busiest credentials and the limits by scope are left out above \
                 {BUSIEST_LIMIT} credentials: finding them reads every row)"
            ),
        }
        if let Some(rows) = scopes {
            print_table(&rows);
        }
        refreshes += 1;
        if count.is_some_and(|count| refreshes >= count) {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
