//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod checker;
pub mod line;
pub mod processes;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh file name in a folder under cargo's temporary folder for tests;
/// any file of that name and its WAL companions are removed first.
pub fn fresh_path(folder: &str, label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = dir.join(format!("{label}-{}-{n}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// Waits until `check` holds, asking every 5 ms; fails the test after
/// `limit`, saying `what` did not happen.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: std::time::Duration,
    mut check: impl FnMut() -> F,
) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The number after `label` in a `credpool torture` report.
pub fn report_number(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the report:\n{report}"))
}

/// Checks a `credpool torture` report: it really worked and killed, and
/// found no violation and no lost credential.
pub fn assert_clean_torture_report(report: &str) {
    assert_eq!(report_number(report, "violations"), 0, "{report}");
    assert_eq!(report_number(report, "credentials lost"), 0, "{report}");
    assert!(report_number(report, "grants") > 300, "{report}");
    let started = report_number(report, "workers");
    let kills = report
        .lines()
        .find_map(|line| line.split_once(" started, ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no kills in the report:\n{report}"));
    assert!(started > 0 && kills >= 2, "workers were killed: {report}");
}

/// Drops `value` on a new thread that runs no async runtime, and waits.
pub fn drop_outside_any_runtime<T: Send + 'static>(value: T) {
    std::thread::spawn(move || {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "no runtime here"
        );
        drop(value);
    })
    .join()
    .unwrap();
}

/// Drops `lease` on a thread without a runtime, then checks on `runtime`
/// that its credential can be acquired again within 5 s: the drop released
/// it. Returns the new lease.
pub fn dropped_outside_any_runtime_comes_back<S: credpool::Store>(
    runtime: &tokio::runtime::Runtime,
    pool: &credpool::Pool<S>,
    lease: credpool::Lease<S>,
    why: &str,
) -> credpool::Lease<S> {
    let name = lease.credential().name().to_string();
    drop_outside_any_runtime(lease);
    let again = runtime
        .block_on(pool.acquire_timeout(std::time::Duration::from_secs(5)))
        .expect(why);
    assert_eq!(again.credential().name(), name);
    again
}
