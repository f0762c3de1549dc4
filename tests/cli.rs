//! The `credpool` binary, run as a user would run it.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use credpool::store::sqlite::SqliteStore;
use credpool::Pool;

const FIXTURE: &str = "../shared/fixtures/aio-credentials-pool-credentials.json";

fn fresh_db(label: &str) -> PathBuf {
    common::fresh_path("cli-tests", label)
}

fn credpool(db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credpool"));
    command.arg("--db").arg(db).env_remove("CREDPOOL_DB");
    command
}

fn run(db: &Path, args: &[&str]) -> Output {
    credpool(db).args(args).output().expect("run credpool")
}

fn run_with_stdin(db: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = credpool(db);
    command.args(args);
    output_with_stdin(command, stdin)
}

/// Runs `command` with `stdin` as its standard input.
fn output_with_stdin(mut command: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Adds the credential `alice` with `secret`, as a user would.
#[track_caller]
fn add_alice(db: &Path, secret: &str) {
    ok(&run_with_stdin(
        db,
        &["add", "alice", "--secret-stdin"],
        secret,
    ));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// An error is one line on stderr, exit code 1, no panic.
#[track_caller]
fn fails(output: &Output, expect: &str) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Expects bad usage: exit code 2, and `expect` in what clap says.
#[track_caller]
fn usage_error(output: &Output, expect: &str) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in {stderr}");
    stderr
}

fn fixture_passwords() -> Vec<String> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    entries
        .iter()
        .map(|e| e["password"].as_str().unwrap().to_string())
        .collect()
}

fn list_json(db: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(&run(db, &["list", "--json"]))).unwrap()
}

#[test]
fn init_is_idempotent() {
    let db = fresh_db("init");
    assert!(ok(&run(&db, &["init"])).contains("created"));
    assert!(ok(&run(&db, &["init"])).contains("already there"));
}

#[test]
fn imports_the_aio_fixture_and_never_prints_a_secret() {
    let db = fresh_db("import");
    let out = ok(&run(&db, &["import", FIXTURE]));
    assert!(out.contains("imported 1000"), "{out}");
    let table = ok(&run(&db, &["list"]));
    let json = ok(&run(&db, &["list", "--json"]));
    assert!(table.contains("user1 ") && table.contains("user1000"));
    let passwords = fixture_passwords();
    for password in &passwords {
        assert!(
            !table.contains(password.as_str()),
            "list printed a password"
        );
        assert!(
            !json.contains(password.as_str()),
            "list --json printed a password"
        );
    }
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&run(&db, &["stats", "--json"]))).unwrap();
    assert_eq!(stats["total"], 1000);
    // Asked for by flag, they are shown.
    let shown: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&run(&db, &["list", "--json", "--show-secrets"]))).unwrap();
    assert_eq!(shown[0]["name"], "user1");
    assert_eq!(shown[0]["secret"], passwords[0].as_str());
    // Importing again: duplicates refused unless merging.
    fails(&run(&db, &["import", FIXTURE]), "already exists");
    assert!(ok(&run(&db, &["import", FIXTURE, "--skip-existing"])).contains("imported 0"));
}

#[test]
fn a_malformed_import_changes_nothing() {
    let db = fresh_db("malformed");
    ok(&run(&db, &["import", FIXTURE]));
    let before = list_json(&db);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    let cases = [
        ("not-json", "this is not json", "line 1"),
        (
            "truncated",
            r#"[{"username": "new1", "password": "p"}, {"username": "#,
            "line 1",
        ),
        (
            "bad-name",
            r#"[{"username": "new1", "password": "p"}, {"username": "bad\u0007", "password": "p"}]"#,
            "entry 1",
        ),
        (
            "dup-in-file",
            r#"[{"username": "new1", "password": "p"}, {"username": "new1", "password": "q"}]"#,
            "entry 1",
        ),
        (
            "dup-in-store",
            r#"[{"username": "new1", "password": "p"}, {"username": "user5", "password": "q"}]"#,
            "user5",
        ),
        (
            "unknown-field",
            r#"[{"username": "new1", "pasword": "p"}]"#,
            "pasword",
        ),
        (
            "capacity-0",
            r#"[{"name": "new1", "secret": "p", "capacity": 0}]"#,
            "capacity",
        ),
    ];
    for (label, content, expect) in cases {
        let file = dir.join(format!("{label}-{}.json", std::process::id()));
        std::fs::write(&file, content).unwrap();
        let stderr = fails(&run(&db, &["import", file.to_str().unwrap()]), expect);
        assert!(stderr.contains("nothing was imported"), "{stderr}");
        assert_eq!(list_json(&db), before, "{label} changed the store");
    }
    // From stdin, in credpool's own format.
    let out = ok(&run_with_stdin(
        &db,
        &["import", "-"],
        r#"[{"name": "own", "secret": "s", "capacity": 3}]"#,
    ));
    assert!(out.contains("imported 1"), "{out}");
}

#[test]
fn add_reads_secrets_from_stdin_or_env_never_argv() {
    let db = fresh_db("add");
    ok(&run_with_stdin(
        &db,
        &["add", "alice", "--secret-stdin", "--capacity", "2"],
        "hunter2\n",
    ));
    ok(&credpool(&db)
        .args([
            "add",
            "bob",
            "--secret-env",
            "BOB_SECRET",
            "--extra",
            "cookie=1",
        ])
        .env("BOB_SECRET", "s3cr3t")
        .output()
        .unwrap());
    let shown = ok(&run(&db, &["list", "--show-secrets"]));
    assert!(
        shown.contains("hunter2") && shown.contains("s3cr3t"),
        "{shown}"
    );
    let usage = run(&db, &["add", "carol", "hunter2"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a secret on argv is a usage error"
    );
    fails(
        &run(&db, &["add", "carol", "--secret-env", "NOT_SET_ANYWHERE"]),
        "NOT_SET_ANYWHERE",
    );
    fails(
        &run_with_stdin(&db, &["add", "alice", "--secret-stdin"], "x"),
        "already exists",
    );
    fails(
        &run_with_stdin(&db, &["add", "bad\tname", "--secret-stdin"], "x"),
        "invalid name",
    );
}

#[test]
fn remove_disable_enable() {
    let db = fresh_db("admin");
    ok(&run(&db, &["import", FIXTURE]));
    ok(&run(
        &db,
        &["disable", "user2", "--reason", "banned by the site"],
    ));
    let table = ok(&run(&db, &["list"]));
    let line = table.lines().find(|l| l.starts_with("user2 ")).unwrap();
    assert!(
        line.contains("disabled") && line.contains("banned by the site"),
        "{line}"
    );
    ok(&run(&db, &["enable", "user2"]));
    assert!(ok(&run(&db, &["list"]))
        .lines()
        .any(|l| l.starts_with("user2 ") && l.contains("available")));
    fails(
        &run(&db, &["enable", "ghost"]),
        "no credential named \"ghost\"",
    );

    // A lease held by another process: remove is refused, then forced.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lease = runtime.block_on(async {
        let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
        let lease = pool.acquire().await.unwrap();
        let name = lease.credential().name().to_string();
        (pool, lease.into_token(), name)
    });
    let (_pool, _token, name) = lease;
    let refused = fails(&run(&db, &["remove", &name]), "--force");
    assert_eq!(refused.matches("force").count(), 1, "said once: {refused}");
    ok(&run(&db, &["remove", &name, "--force"]));
    ok(&run(&db, &["remove", "user3"]));
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&run(&db, &["stats", "--json"]))).unwrap();
    assert_eq!(stats["total"], 998);
}

#[test]
fn errors_are_one_line_and_name_the_problem() {
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-tests/absent.db");
    let _ = std::fs::remove_file(&missing);
    fails(&run(&missing, &["list"]), "credpool init");
    assert!(!missing.exists(), "list does not create a store");

    let foreign = fresh_db("foreign");
    std::fs::write(&foreign, "my notes\n").unwrap();
    fails(&run(&foreign, &["list"]), "not a credpool store");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "my notes\n");

    let db = fresh_db("errors");
    ok(&run(&db, &["init"]));
    let usage = run(&db, &["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = run(&db, &["demo", "--work-ms", "9..1"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn watch_shows_the_pool() {
    let db = fresh_db("watch");
    ok(&run(&db, &["import", FIXTURE]));
    let out = ok(&run(
        &db,
        &["watch", "--count", "2", "--interval-ms", "100"],
    ));
    assert!(out.contains("total 1000"), "{out}");
    assert!(out.contains("grants/s"), "{out}");
}

fn demo_stops_gracefully_on(signal: &str) {
    let db = fresh_db("demo");
    let child = credpool(&db)
        .args([
            "demo",
            "--workers",
            "40",
            "--credentials",
            "8",
            "--work-ms",
            "5..30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    // The shell's own kill: no separate kill binary is needed.
    let status = Command::new("sh")
        .args(["-c", &format!("kill {signal} {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stdout = ok(&output);
    assert!(stdout.contains("0 leased"), "{stdout}");
    let grants: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("grants"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a grant count in the summary");
    assert!(grants > 40, "the demo did work: {stdout}");
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&run(&db, &["--pool", "demo", "stats", "--json"]))).unwrap();
    assert_eq!(stats["leases"], 0, "the store has no lease left");
    assert_eq!(stats["total"], 8);
}

#[test]
fn demo_stops_gracefully_on_sigint() {
    demo_stops_gracefully_on("-INT");
}

#[test]
fn demo_stops_gracefully_on_sigterm() {
    demo_stops_gracefully_on("-TERM");
}

#[test]
fn demo_stops_gracefully_on_sighup() {
    demo_stops_gracefully_on("-HUP");
}

/// A short `credpool torture` run on a file: worker processes killed with
/// SIGKILL every 0.8 s, another connection taking the write lock, and the
/// checker finds no credential held twice and none lost.
/// A torture with a quota: the checker proves from the logs that no
/// credential was granted more often in its scope than the quota allows,
/// while workers are killed.
#[test]
fn a_torture_run_with_a_quota_keeps_it() {
    let db = fresh_db("torture-rate");
    let report = ok(&run(
        &db,
        &[
            "torture",
            "--duration",
            "3s",
            "--processes",
            "2",
            "--tasks",
            "8",
            "--kill-every",
            "1s",
            "--lease-ttl",
            "700ms",
            "--rate",
            "20/500ms",
        ],
    ));
    assert!(report.contains("quota              20/500ms"), "{report}");
    assert_eq!(common::report_number(&report, "violations"), 0, "{report}");
    assert_eq!(
        common::report_number(&report, "credentials lost"),
        0,
        "{report}"
    );
    assert!(common::report_number(&report, "grants") > 50, "{report}");
}

#[test]
fn a_short_torture_run_finds_nothing_wrong() {
    let db = fresh_db("torture");
    let report = ok(&run(
        &db,
        &[
            "torture",
            "--faults",
            "--duration",
            "5",
            "--processes",
            "3",
            "--tasks",
            "8",
            "--kill-every",
            "0.8",
            "--lease-ttl",
            "700ms",
        ],
    ));
    common::assert_clean_torture_report(&report);
    let stats = ok(&run(&db, &["stats", "--json"]));
    assert!(
        stats.contains(r#""total":0"#),
        "the default pool was not touched: {stats}"
    );
}

/// With weighted grants: one in four takes 2 units of a credential of
/// capacity 2, processes killed and locks held; the checker counts units.
#[test]
fn a_short_weighted_torture_run_finds_nothing_wrong() {
    let db = fresh_db("torture-weighted");
    let report = ok(&run(
        &db,
        &[
            "torture",
            "--faults",
            "--weighted",
            "--duration",
            "4",
            "--processes",
            "3",
            "--tasks",
            "8",
            "--kill-every",
            "0.8",
            "--lease-ttl",
            "700ms",
        ],
    ));
    common::assert_clean_torture_report(&report);
    assert!(
        report.contains("one grant in four takes 2 units"),
        "{report}"
    );
}

/// The same on the memory store: worker tasks aborted at random points.
#[test]
fn a_short_torture_run_in_memory_finds_nothing_wrong() {
    let output = Command::new(env!("CARGO_BIN_EXE_credpool"))
        .args(["--memory", "torture", "--duration", "3", "--processes", "3"])
        .args(["--tasks", "8", "--kill-every", "0.5"])
        .output()
        .unwrap();
    let report = ok(&output);
    assert!(report.contains("tasks aborted"), "{report}");
    common::assert_clean_torture_report(&report);
}

/// The memory store lives only while one command runs: only demo and
/// torture take it.
#[test]
fn memory_is_refused_where_it_would_keep_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_credpool"))
        .args(["--memory", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("use it with demo, torture or serve"),
        "{}",
        text(&output.stderr)
    );
}

// ---- the defects issue's command-line items ------------------------------

/// Item 14: commands that only read never create, adopt or migrate a store.
#[test]
fn read_commands_never_write() {
    let empty = fresh_db("read-empty");
    std::fs::write(&empty, "").unwrap();
    for args in [
        &["list"][..],
        &["stats", "--json"],
        &["watch", "--count", "1"],
    ] {
        let output = run(&empty, args);
        fails(&output, "credpool init");
        assert_eq!(
            std::fs::metadata(&empty).unwrap().len(),
            0,
            "{args:?} wrote"
        );
        assert!(!PathBuf::from(format!("{}-wal", empty.display())).exists());
    }
    let missing = fresh_db("read-missing");
    fails(&run(&missing, &["list"]), "no store there");
    assert!(!missing.exists());
}

/// Item 13: a file adopted with a mode others can read is made private,
/// and the command says so.
#[test]
fn adopting_a_shared_file_makes_it_private_and_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let db = fresh_db("adopt-shared");
    std::fs::write(&db, "").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run_with_stdin(&db, &["add", "alice", "--secret-stdin"], "hunter2\n");
    ok(&output);
    assert!(
        text(&output.stderr).contains("made it private"),
        "{}",
        text(&output.stderr)
    );
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Item 16: a flag beats the environment, and an empty variable is unset.
#[test]
fn flags_beat_the_environment() {
    let from_env = fresh_db("env-db");
    let memory = Command::new(env!("CARGO_BIN_EXE_credpool"))
        .env("CREDPOOL_DB", &from_env)
        .args(["--memory", "demo", "--duration", "0.3", "--workers", "4"])
        .output()
        .unwrap();
    ok(&memory);
    assert!(!from_env.exists(), "--memory used the file of CREDPOOL_DB");

    let flag = fresh_db("flag-db");
    let init = Command::new(env!("CARGO_BIN_EXE_credpool"))
        .env("CREDPOOL_DB", &from_env)
        .arg("--db")
        .arg(&flag)
        .arg("init")
        .output()
        .unwrap();
    ok(&init);
    assert!(flag.exists() && !from_env.exists());

    let by_env = Command::new(env!("CARGO_BIN_EXE_credpool"))
        .env("CREDPOOL_DB", &from_env)
        .arg("init")
        .output()
        .unwrap();
    ok(&by_env);
    assert!(
        from_env.exists(),
        "CREDPOOL_DB names the store without a flag"
    );

    let dir = fresh_db("empty-env-dir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let empty = Command::new(env!("CARGO_BIN_EXE_credpool"))
        .env("CREDPOOL_DB", "")
        .current_dir(&dir)
        .arg("init")
        .output()
        .unwrap();
    ok(&empty);
    assert!(
        dir.join("credpool.db").exists(),
        "an empty CREDPOOL_DB is unset"
    );
}

/// Item 17: a write error on standard output fails the command; a closed
/// pipe ends it quietly.
#[test]
fn write_errors_on_stdout_fail_the_command() {
    let db = fresh_db("dev-full");
    ok(&run(&db, &["init"]));
    add_alice(&db, "s\n");
    for args in [
        &["list"][..],
        &["stats", "--json"],
        &["list", "--json", "--show-secrets"],
    ] {
        let output = credpool(&db)
            .args(args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        fails(&output, "cannot write to standard output");
    }
    let closed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --db {} list --json | head -c 1 >/dev/null; echo \"${{PIPESTATUS:-0}}\"",
            env!("CARGO_BIN_EXE_credpool"),
            db.display()
        ))
        .output()
        .unwrap();
    assert!(closed.status.success());
    assert!(
        !text(&closed.stderr).contains("error"),
        "{}",
        text(&closed.stderr)
    );
}

/// Item 18: bad durations are usage errors, never a panic.
#[test]
fn bad_durations_are_usage_errors() {
    let db = fresh_db("bad-duration");
    for bad in ["inf", "nan", "-1", "1e300", "ten"] {
        let output = run(&db, &["demo", &format!("--duration={bad}")]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad}: {}",
            text(&output.stderr)
        );
        assert!(!text(&output.stderr).contains("panicked"));
        assert!(text(&output.stderr).contains("--duration"), "{bad}");
    }
    assert!(!db.exists(), "nothing was opened");
}

/// Item 19: a demo's summary counts the leases it took, not those of
/// another process on the same file.
#[test]
fn a_demo_counts_only_its_own_leases() {
    let db = fresh_db("two-demos");
    ok(&run(&db, &["init"]));
    let long = credpool(&db)
        .args([
            "demo",
            "--workers",
            "30",
            "--credentials",
            "10",
            "--duration",
            "6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let short = run(&db, &["demo", "--workers", "5", "--duration", "1"]);
    let stdout = ok(&short);
    assert!(stdout.contains("0 leased by this demo"), "{stdout}");
    let stdout = ok(&long.wait_with_output().unwrap());
    assert!(stdout.contains("0 leased by this demo"), "{stdout}");
}

/// Item 20: a release refused because its credential was removed says so,
/// not that the lease expired.
#[test]
fn a_removed_credential_is_reported_as_removed() {
    let db = fresh_db("demo-removed");
    ok(&run(&db, &["init"]));
    let demo = credpool(&db)
        .args([
            "demo",
            "--workers",
            "10",
            "--credentials",
            "2",
            "--work-ms",
            "300..400",
            "--duration",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    ok(&run(
        &db,
        &["--pool", "demo", "remove", "demo-0001", "--force"],
    ));
    let output = demo.wait_with_output().unwrap();
    let stdout = text(&output.stdout);
    assert!(stdout.contains("the credential was removed"), "{stdout}");
    assert!(!stdout.contains("expired"), "{stdout}");
}

/// Item 21: import and add refuse the same things: an empty secret.
#[test]
fn import_and_add_validate_alike() {
    let db = fresh_db("one-validation");
    ok(&run(&db, &["init"]));
    let add = run_with_stdin(&db, &["add", "alice", "--secret-stdin"], "\n");
    let add_error = fails(&add, "secret");
    let file = db.with_extension("json");
    std::fs::write(&file, r#"[{"username": "alice", "password": ""}]"#).unwrap();
    let import = run(&db, &["import", file.to_str().unwrap()]);
    let import_error = fails(&import, "secret");
    assert!(add_error.contains("empty") && import_error.contains("empty"));
    assert!(list_json(&db).is_empty(), "nothing was added");
}

/// `stats` and `watch` count the waiters of every process: here, three
/// tasks of the test process, seen by the `credpool` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_watch_show_the_waiters_of_other_processes() {
    let db = fresh_db("waiters-elsewhere");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    pool.add(credpool::NewCredential::new("only", "s"))
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await.map(|lease| lease.into_token()) })
        })
        .collect();
    while pool.stats().await.unwrap().waiters < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let db_for_cli = db.clone();
    let (json, line, watched) = tokio::task::spawn_blocking(move || {
        let json: serde_json::Value =
            serde_json::from_str(&ok(&run(&db_for_cli, &["stats", "--json"]))).unwrap();
        let line = ok(&run(&db_for_cli, &["stats"]));
        let watched = credpool(&db_for_cli)
            .args(["watch", "--interval-ms", "200"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let _ = Command::new("kill")
            .args(["-INT", &watched.id().to_string()])
            .status();
        (json, line, watched.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(json["waiters"], 3, "{json}");
    assert!(line.contains("waiting 3"), "{line}");
    assert!(
        text(&watched.stdout).contains("waiting 3"),
        "{}",
        text(&watched.stdout)
    );
    for task in waiting {
        task.abort();
    }
    drop(held);
}

/// Every duration flag reads one format: a number with units (humantime's
/// `250ms`, `10s`, `1h30m`) or a bare number of seconds; a bad one is a
/// usage error naming the flag and the way to write it.
#[test]
fn every_duration_flag_reads_one_format() {
    let db = fresh_db("durations");
    ok(&run(&db, &["init"]));
    ok(&run(
        &db,
        &[
            "demo",
            "--workers",
            "2",
            "--credentials",
            "2",
            "--duration",
            "300ms",
        ],
    ));
    ok(&run(&db, &["watch", "--count", "2", "--interval", "100ms"]));
    ok(&run(
        &db,
        &["watch", "--count", "1", "--interval-ms", "100"],
    ));
    let torture = Command::new(env!("CARGO_BIN_EXE_credpool"))
        .args([
            "--memory",
            "torture",
            "--duration",
            "1s",
            "--processes",
            "2",
        ])
        .args(["--tasks", "2", "--kill-every", "500ms"])
        .output()
        .unwrap();
    ok(&torture);
    for (command, flag) in [
        ("demo", "--duration"),
        ("torture", "--duration"),
        ("torture", "--kill-every"),
        ("watch", "--interval"),
    ] {
        let output = run(&db, &[command, flag, "10 parsecs"]);
        assert_eq!(output.status.code(), Some(2), "{command} {flag}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains("1h30m"),
            "{command} {flag}: {stderr}"
        );
    }
    for zero in ["0", "0s"] {
        let output = run(&db, &["watch", "--interval", zero]);
        assert_eq!(output.status.code(), Some(2), "{zero}");
        assert!(text(&output.stderr).contains("more than 0"));
    }
}

/// `RUST_LOG` and `-v` show every acquire (with its wait) and release (with
/// its outcome) on stderr, and never a secret; by default, and with `-q`,
/// the demo logs nothing of the kind.
#[test]
fn logs_show_acquires_and_releases_but_never_a_secret() {
    let db = fresh_db("logs");
    add_alice(&db, "hunter2-secret\n");
    let demo = ["demo", "--workers", "2", "--duration", "300ms"];
    let quiet = ok_output(credpool(&db).args(demo).env_remove("RUST_LOG"));
    assert!(!quiet.contains("acquired"), "{quiet}");
    let quieter = ok_output(credpool(&db).args(["-q"]).args(demo).env("RUST_LOG", ""));
    assert!(!quieter.contains("acquired"), "{quieter}");
    for logged in [
        ok_output(credpool(&db).args(demo).env("RUST_LOG", "credpool=debug")),
        ok_output(
            credpool(&db)
                .args(["-vv"])
                .args(demo)
                .env_remove("RUST_LOG"),
        ),
    ] {
        assert!(logged.contains("acquired"), "{logged}");
        assert!(logged.contains("waited_us"), "{logged}");
        assert!(logged.contains("released"), "{logged}");
        assert!(logged.contains("outcome=Success"), "{logged}");
        assert!(!logged.contains("hunter2"), "a secret was logged");
    }
    let bad = ok_output(credpool(&db).args(demo).env("RUST_LOG", "credpool=[[["));
    assert!(bad.contains("RUST_LOG"), "{bad}");
}

/// Runs `command`, which must succeed; returns its stderr.
#[track_caller]
fn ok_output(command: &mut Command) -> String {
    let output = command.output().unwrap();
    ok(&output);
    text(&output.stderr)
}

/// `completions` prints a script for each shell that knows every command,
/// and `man` a manual page; neither opens a store.
#[test]
fn completions_and_the_manual_page() {
    let db = fresh_db("completions");
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef credpool"),
        ("fish", "complete -c credpool"),
    ] {
        let script = ok(&run(&db, &["completions", shell]));
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["import", "watch", "torture", "demo"] {
            assert!(script.contains(command), "{shell} misses {command}");
        }
    }
    let page = ok(&run(&db, &["man"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH credpool"),
        "{page}"
    );
    assert!(page.contains("import"), "{page}");
    let unknown = run(&db, &["completions", "cmd.exe"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("bash"),
        "{}",
        text(&unknown.stderr)
    );
    assert!(!db.exists(), "no store was opened");
}

/// A name no list could show (a space at either end) and a disable without
/// a reason are refused with a message that says what to change; nothing
/// changes.
#[test]
fn invisible_names_and_blank_reasons_are_refused() {
    let db = fresh_db("blank");
    add_alice(&db, "pw\n");
    let spaced = run_with_stdin(&db, &["add", " bob", "--secret-stdin"], "pw\n");
    assert_eq!(spaced.status.code(), Some(1));
    assert!(
        text(&spaced.stderr).contains("space"),
        "{}",
        text(&spaced.stderr)
    );
    let blank = run(&db, &["disable", "alice", "--reason", ""]);
    assert_eq!(blank.status.code(), Some(1));
    assert!(
        text(&blank.stderr).contains("reason"),
        "{}",
        text(&blank.stderr)
    );
    let listed = ok(&run(&db, &["list"]));
    assert!(!listed.contains("bob"), "{listed}");
    assert!(!listed.contains("disabled"), "{listed}");
}

/// Import and add speak of what the user gave: a file that holds no array
/// says what it holds, a byte-order mark is no content, and a single `add`
/// names no entry.
#[test]
fn import_and_add_messages_speak_of_what_was_given() {
    let db = fresh_db("messages");
    let dir = tempfile::tempdir().unwrap();
    let object = dir.path().join("object.json");
    std::fs::write(&object, r#"{"name": "alice", "secret": "pw"}"#).unwrap();
    let refused = run(&db, &["import", object.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let message = text(&refused.stderr);
    assert!(message.contains("a JSON object, not an array"), "{message}");
    let bom = dir.path().join("bom.json");
    std::fs::write(&bom, "\u{feff}[{\"name\": \"bom\", \"secret\": \"pw\"}]").unwrap();
    ok(&run(&db, &["import", bom.to_str().unwrap()]));
    assert!(ok(&run(&db, &["list"])).contains("bom"));
    for (name, why) in [("", "empty"), ("bom", "exists")] {
        let added = run_with_stdin(&db, &["add", name, "--secret-stdin"], "pw\n");
        assert_eq!(added.status.code(), Some(1), "{name:?}");
        let message = text(&added.stderr);
        assert!(!message.contains("entry"), "{name:?}: {message}");
        assert!(message.contains(why), "{name:?}: {message}");
    }
}

/// `enable --all` and `remove --disabled` (twscrape's `delete_inactive`) act
/// on every disabled credential; `remove --disabled` removes none while one
/// of them is leased, unless forced; `-j` is `--json`.
#[test]
fn enable_all_and_remove_disabled() {
    let db = fresh_db("bulk");
    ok(&run(&db, &["import", FIXTURE]));
    for name in ["user1", "user2", "user3"] {
        ok(&run(&db, &["disable", name, "--reason", "banned"]));
    }
    let stats = |db: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&run(db, &["stats", "-j"]))).unwrap()
    };
    assert_eq!(stats(&db)["disabled"], 3);
    let enabled = ok(&run(&db, &["enable", "--all"]));
    assert_eq!(enabled.lines().count(), 3, "{enabled}");
    assert_eq!(stats(&db)["disabled"], 0);
    assert!(ok(&run(&db, &["enable", "--all"])).contains("no disabled credential"));

    for name in ["user1", "user2"] {
        ok(&run(&db, &["disable", name, "--reason", "banned"]));
    }
    // A lease on a disabled credential, held by another process.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_pool, _token) = runtime.block_on(async {
        let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
        let lease = loop {
            let lease = pool.acquire().await.unwrap();
            if lease.credential().name() == "user3" {
                break lease;
            }
            lease.release().await.unwrap();
        };
        pool.disable("user3", "banned").await.unwrap();
        (pool, lease.into_token())
    });
    fails(&run(&db, &["remove", "--disabled"]), "nothing was removed");
    assert_eq!(stats(&db)["total"], 1000, "none removed");
    let removed = ok(&run(&db, &["remove", "--disabled", "--force"]));
    assert_eq!(removed.lines().count(), 3, "{removed}");
    assert_eq!(stats(&db)["total"], 997);
    let listed: serde_json::Value = serde_json::from_str(&ok(&run(&db, &["list", "-j"]))).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|entry| !["user1", "user2", "user3"].contains(&entry["name"].as_str().unwrap())));
    let usage = run(&db, &["remove"]);
    assert_eq!(usage.status.code(), Some(2));
}

/// `show NAME` prints one credential whole, its secret only when asked; an
/// unknown name is an error naming the pool.
#[test]
fn show_prints_one_credential() {
    let db = fresh_db("show");
    ok(&run_with_stdin(
        &db,
        &[
            "add",
            "alice",
            "--secret-stdin",
            "--extra",
            "cookie=1",
            "--capacity",
            "2",
        ],
        "hunter2-show\n",
    ));
    ok(&run(
        &db,
        &["disable", "alice", "--reason", "banned by the site"],
    ));
    let shown = ok(&run(&db, &["show", "alice"]));
    for expected in ["alice", "disabled", "0/2", "banned by the site", "never"] {
        assert!(shown.contains(expected), "{expected}: {shown}");
    }
    assert!(!shown.contains("hunter2"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&db, &["show", "alice", "-j"]))).unwrap();
    assert_eq!(json["name"], "alice");
    assert_eq!(json["capacity"], 2);
    assert!(json.get("secret").is_none(), "{json}");
    let revealed: serde_json::Value = serde_json::from_str(&ok(&run(
        &db,
        &["show", "alice", "--json", "--show-secrets"],
    )))
    .unwrap();
    assert_eq!(revealed["secret"], "hunter2-show");
    assert_eq!(revealed["extra"], "cookie=1");
    fails(
        &run(&db, &["show", "bob"]),
        "no credential named \"bob\" in pool `default`",
    );
}

/// Starts a one-worker demo in the default pool of `db` (with `args`),
/// waits until its worker holds its lease, and kills it with SIGKILL.
/// Returns the name of the credential it held.
fn kill_a_demo_holding_a_lease(db: &Path, args: &[&str]) -> String {
    let mut demo = credpool(db)
        .args(["--pool", "default", "demo", "--workers", "1"])
        .args(["--credentials", "1", "--work-ms", "60000..60000"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut held = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let listed = run(db, &["list", "-j"]);
        if !listed.status.success() {
            continue;
        }
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        if let Some(entry) = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["holders"] == 1)
        {
            held = Some(entry["name"].as_str().unwrap().to_string());
            break;
        }
    }
    let held = held.expect("the demo took its lease");
    demo.kill().unwrap(); // SIGKILL
    demo.wait().unwrap();
    held
}

/// `demo --lease-ttl` sets how long its leases live: those of a demo killed
/// with SIGKILL come back after that TTL, not the store's 5 minutes.
#[test]
fn a_killed_demos_leases_come_back_after_its_lease_ttl() {
    let db = fresh_db("demo-ttl");
    ok(&run(&db, &["init"]));
    kill_a_demo_holding_a_lease(&db, &["--lease-ttl", "1s"]);
    let killed_at = std::time::Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
        pool.acquire_timeout(Duration::from_secs(20))
            .await
            .expect("the killed demo's lease came back after its TTL")
            .release()
            .await
            .unwrap();
    });
    assert!(killed_at.elapsed() < Duration::from_secs(20));
}

/// `revoke NAME` frees at once the credential a killed process held: no
/// wait for the 5-minute lease TTL.
#[test]
fn revoke_frees_what_a_killed_process_held() {
    let db = fresh_db("revoke");
    ok(&run(&db, &["init"]));
    let name = kill_a_demo_holding_a_lease(&db, &[]);
    let revoked = ok(&run(&db, &["revoke", &name]));
    assert!(revoked.contains("revoked 1 lease"), "{revoked}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
        let lease = pool
            .acquire_timeout(Duration::from_secs(2))
            .await
            .expect("the revoked credential is free at once");
        assert_eq!(lease.credential().name(), name);
        lease.release().await.unwrap();
    });
    let again = ok(&run(&db, &["revoke", &name]));
    assert!(again.contains("no lease out"), "{again}");
    fails(&run(&db, &["revoke", "nobody"]), "nobody");
}

/// `demo --credentials N` on a pool that has credentials says it is ignored,
/// and changes nothing in the pool.
#[test]
fn demo_says_when_credentials_is_ignored() {
    let db = fresh_db("demo-given-count");
    add_alice(&db, "pw\n");
    let demo = run(
        &db,
        &[
            "--pool",
            "default",
            "demo",
            "--credentials",
            "50",
            "--workers",
            "1",
            "--duration",
            "200ms",
        ],
    );
    ok(&demo);
    let stderr = text(&demo.stderr);
    assert!(stderr.contains("--credentials 50 is ignored"), "{stderr}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&run(&db, &["stats", "-j"]))).unwrap();
    assert_eq!(stats["total"], 1);
    let quiet = run(
        &db,
        &[
            "--pool",
            "default",
            "demo",
            "--workers",
            "1",
            "--duration",
            "200ms",
        ],
    );
    assert!(
        !text(&quiet.stderr).contains("is ignored"),
        "{}",
        text(&quiet.stderr)
    );
}

/// Without `--pool`, `demo` works in a pool of its own, `demo`: the real
/// credentials of the default pool are neither used nor joined by demo rows.
#[test]
fn demo_keeps_to_a_pool_of_its_own() {
    let db = fresh_db("demo-own-pool");
    add_alice(&db, "pw\n");
    ok(&run(
        &db,
        &[
            "demo",
            "--workers",
            "2",
            "--credentials",
            "3",
            "--duration",
            "300ms",
        ],
    ));
    let default: serde_json::Value = serde_json::from_str(&ok(&run(&db, &["list", "-j"]))).unwrap();
    let default = default.as_array().unwrap();
    assert_eq!(default.len(), 1, "{default:?}");
    assert_eq!(default[0]["name"], "alice");
    assert_eq!(
        default[0]["use_count"], 0,
        "the demo used a real credential"
    );
    let demo: serde_json::Value =
        serde_json::from_str(&ok(&run(&db, &["--pool", "demo", "stats", "-j"]))).unwrap();
    assert_eq!(demo["total"], 3, "{demo}");
}

/// `export --show-secrets` writes credpool's own JSON that `import` reads
/// back exactly: capacity, extra text, disabled state and reason. A file it
/// is redirected to is made private first. Without the flag no secret is
/// written, and importing that says why nothing was imported.
#[test]
fn export_and_import_round_trip() {
    use std::os::unix::fs::PermissionsExt;
    let db = fresh_db("export");
    add_alice(&db, "alice-secret-1\n");
    ok(&run_with_stdin(
        &db,
        &[
            "add",
            "bot-7",
            "--secret-stdin",
            "--capacity",
            "4",
            "--extra",
            "session=cookie-7",
        ],
        "bot-secret-7\n",
    ));
    ok(&run(
        &db,
        &["disable", "bot-7", "--reason", "banned until May"],
    ));
    let file = db.with_extension("export.json");
    let _ = std::fs::remove_file(&file);
    std::fs::write(&file, "").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = credpool(&db)
        .args(["export", "--show-secrets"])
        .stdout(std::fs::OpenOptions::new().write(true).open(&file).unwrap())
        .output()
        .unwrap();
    ok(&output);
    assert!(
        text(&output.stderr).contains("private"),
        "{}",
        text(&output.stderr)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the export file is readable by others: {mode:o}"
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    let entries: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(
        entries,
        serde_json::json!([
            {"name": "alice", "secret": "alice-secret-1", "capacity": 1},
            {"name": "bot-7", "secret": "bot-secret-7", "extra": "session=cookie-7",
             "capacity": 4, "disabled": "banned until May"}
        ])
    );
    let copy = fresh_db("export-copy");
    ok(&run(&copy, &["import", file.to_str().unwrap()]));
    assert_eq!(ok(&run(&copy, &["export", "--show-secrets"])), exported);
    let shown = ok(&run(&copy, &["show", "bot-7", "-j"]));
    assert!(shown.contains("banned until May"), "{shown}");

    let bare = ok(&run(&db, &["export"]));
    assert!(!bare.contains("secret"), "{bare}");
    assert!(bare.contains("\"disabled\""), "{bare}");
    let bare_file = db.with_extension("bare.json");
    std::fs::write(&bare_file, &bare).unwrap();
    let empty = fresh_db("export-bare");
    ok(&run(&empty, &["init"]));
    let stderr = fails(
        &run(&empty, &["import", bare_file.to_str().unwrap()]),
        "nothing was imported",
    );
    assert!(stderr.contains("--show-secrets"), "{stderr}");
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&run(&empty, &["stats", "-j"]))).unwrap();
    assert_eq!(stats["total"], 0);
}

/// `pools` lists the pools of a store with their counts; `list` and `stats`
/// of an empty pool, while others hold credentials, say so on stderr.
#[test]
fn pools_are_listed_and_an_empty_pool_says_where_the_credentials_are() {
    let db = fresh_db("pools");
    ok(&run_with_stdin(
        &db,
        &["--pool", "ops", "add", "alice", "--secret-stdin"],
        "pw\n",
    ));
    ok(&run_with_stdin(
        &db,
        &["--pool", "ops", "add", "bob", "--secret-stdin"],
        "pw\n",
    ));
    ok(&run_with_stdin(
        &db,
        &["--pool", "scrapers", "add", "carol", "--secret-stdin"],
        "pw\n",
    ));
    let table = ok(&run(&db, &["pools"]));
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["POOL", "CREDENTIALS"],
            vec!["ops", "2"],
            vec!["scrapers", "1"]
        ],
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&run(&db, &["pools", "-j"]))).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"name": "ops", "credentials": 2}, {"name": "scrapers", "credentials": 1}])
    );
    for command in [&["list"][..], &["stats"], &["list", "-j"]] {
        let output = run(&db, command);
        ok(&output);
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("pool `default` is empty")
                && stderr.contains("`ops` (2)")
                && stderr.contains("--pool"),
            "{command:?}: {stderr}"
        );
    }
    let named = run(&db, &["--pool", "ops", "list"]);
    assert!(text(&named.stderr).is_empty(), "{}", text(&named.stderr));
}

/// The table's columns line up after wide (CJK) names: each takes two
/// columns on a terminal a character.
#[test]
fn list_columns_align_after_wide_names() {
    let db = fresh_db("wide-names");
    for name in ["日本語のアカウント", "alice", "ünïcödé"] {
        ok(&run_with_stdin(
            &db,
            &["add", name, "--secret-stdin"],
            "pw\n",
        ));
    }
    let table = ok(&run(&db, &["list"]));
    let starts: Vec<usize> = table
        .lines()
        .map(|line| {
            let at = line
                .find("available")
                .or_else(|| line.find("STATE"))
                .unwrap_or_else(|| panic!("no state in {line:?}"));
            unicode_width::UnicodeWidthStr::width(&line[..at])
        })
        .collect();
    assert_eq!(starts.len(), 4, "{table}");
    assert!(
        starts.windows(2).all(|w| w[0] == w[1]),
        "{starts:?}\n{table}"
    );
}

/// `add --secret-stdin` at a terminal asks for the secret and does not show
/// it as it is typed (run under `script`, which gives the command a
/// terminal and records everything the terminal shows).
#[test]
fn a_secret_typed_at_a_terminal_is_not_shown() {
    use std::io::Write;
    let db = fresh_db("typed-secret");
    ok(&run(&db, &["init"]));
    let command = format!(
        "{} --db {} add typed --secret-stdin",
        env!("CARGO_BIN_EXE_credpool"),
        db.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("CREDPOOL_DB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1), of util-linux, gives a command a terminal");
    // Everything the terminal shows, as it comes.
    let mut stdout = child.stdout.take().unwrap();
    let (sender, shown) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buffer = [0u8; 256];
        while let Ok(count) = stdout.read(&mut buffer) {
            if count == 0 || sender.send(buffer[..count].to_vec()).is_err() {
                break;
            }
        }
    });
    // Typed once the prompt is there (and echo is off), as a person would.
    let mut screen = Vec::new();
    while !text(&screen).contains("not shown") {
        let chunk = shown
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no prompt: {:?}", text(&screen)));
        screen.extend(chunk);
    }
    // The prompt is written just before echo is turned off.
    std::thread::sleep(Duration::from_millis(300));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"typed-s3cr3t\n").unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    screen.extend(shown.try_iter().flatten());
    let screen = text(&screen);
    assert!(status.success(), "{screen}");
    assert!(
        !screen.contains("typed-s3cr3t"),
        "the secret was shown: {screen:?}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let secret = runtime.block_on(async {
        let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
        let lease = pool.acquire().await.unwrap();
        lease.credential().secret().expose().to_string()
    });
    assert_eq!(secret, "typed-s3cr3t");
}

/// Each command's help lists its own options apart from the global ones,
/// and no command shows `--memory`, which only demo and torture take (given
/// before the command, where the top-level help shows it).
#[test]
fn help_lists_global_options_apart_and_hides_what_a_command_refuses() {
    let db = fresh_db("help");
    let list = ok(&run(&db, &["list", "--help"]));
    let (own, global) = list
        .split_once("Global options")
        .unwrap_or_else(|| panic!("no global heading: {list}"));
    assert!(own.contains("--json") && !own.contains("--db"), "{list}");
    assert!(
        global.contains("--db") && global.contains("--pool"),
        "{list}"
    );
    for command in ["list", "stats", "add", "demo", "torture"] {
        let help = ok(&run(&db, &[command, "--help"]));
        let offered = |help: &str| {
            help.lines()
                .any(|line| line.trim_start().starts_with("--memory"))
        };
        assert!(!offered(&help), "{command}: {help}");
    }
    let top = ok(&run(&db, &["--help"]));
    assert!(
        top.lines()
            .any(|line| line.trim_start().starts_with("--memory")),
        "{top}"
    );
    usage_error(&run(&db, &["list", "--memory"]), "--memory");
}

/// `list` filters by state and name pattern, sorts, limits, and prints one
/// JSON object a line with `--ndjson`.
#[test]
fn list_filters_sorts_limits_and_streams() {
    let db = fresh_db("list-filters");
    for name in ["bot-1", "bot-2", "bot-3", "alice"] {
        ok(&run_with_stdin(
            &db,
            &["add", name, "--secret-stdin"],
            "pw\n",
        ));
    }
    ok(&run(&db, &["disable", "bot-2", "--reason", "banned"]));
    let names = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["list", "--ndjson"];
        full.extend_from_slice(args);
        ok(&run(&db, &full))
            .lines()
            .map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).unwrap();
                entry["name"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(names(&[]), ["bot-1", "bot-2", "bot-3", "alice"]);
    assert_eq!(names(&["--name", "bot-*"]), ["bot-1", "bot-2", "bot-3"]);
    assert_eq!(names(&["--state", "disabled"]), ["bot-2"]);
    assert_eq!(
        names(&["--state", "available", "--name", "bot-?"]),
        ["bot-1", "bot-3"]
    );
    assert_eq!(
        names(&["--sort", "name", "--limit", "2"]),
        ["alice", "bot-1"]
    );
    let table = ok(&run(&db, &["list", "--name", "nobody*"]));
    assert!(
        table.contains("no credential in pool `default` matches"),
        "{table}"
    );
    usage_error(&run(&db, &["list", "--state", "asleep"]), "available");
}

/// `set NAME` changes capacity, secret (from stdin) and extra text (from
/// stdin, or removed); a capacity below the leases out is refused with a
/// message that says what to do, and `set` without a change is a usage
/// error.
#[test]
fn set_changes_a_credential() {
    let db = fresh_db("set");
    add_alice(&db, "old-secret\n");
    ok(&run(&db, &["set", "alice", "--capacity", "3"]));
    ok(&run_with_stdin(
        &db,
        &["set", "alice", "--secret-stdin"],
        "new-secret\n",
    ));
    ok(&run_with_stdin(
        &db,
        &["set", "alice", "--extra-stdin"],
        "session=abc\n",
    ));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&run(&db, &["show", "alice", "-j", "--show-secrets"]))).unwrap();
    assert_eq!(shown["capacity"], 3, "{shown}");
    assert_eq!(shown["secret"], "new-secret", "{shown}");
    assert_eq!(shown["extra"], "session=abc", "{shown}");
    ok(&run(&db, &["set", "alice", "--no-extra"]));
    let shown = ok(&run(&db, &["show", "alice", "-j", "--show-secrets"]));
    assert!(!shown.contains("session=abc"), "{shown}");
    usage_error(&run(&db, &["set", "alice"]), "--capacity");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
        let (a, b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        let stderr = fails(
            &run(&db, &["set", "alice", "--capacity", "1"]),
            "2 leases out",
        );
        assert!(stderr.contains("revoke"), "{stderr}");
        a.release().await.unwrap();
        b.release().await.unwrap();
    });
    ok(&run(&db, &["set", "alice", "--capacity", "1"]));
}

/// The commands that only read answer while another process holds the
/// store's write lock (they used to wait out the 5-second busy timeout and
/// fail with "database is locked"), and a lease past its expiry is not
/// counted as held though nobody could reclaim it under that lock.
#[test]
fn reads_answer_under_a_foreign_write_lock() {
    let db = fresh_db("reads-locked");
    ok(&run(&db, &["init"]));
    kill_a_demo_holding_a_lease(&db, &["--lease-ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let foreign = rusqlite::Connection::open(&db).unwrap();
    foreign.execute_batch("BEGIN IMMEDIATE").unwrap();
    foreign
        .execute("UPDATE credentials SET use_count = use_count", [])
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&ok(&run(&db, &["stats", "-j"]))).unwrap();
    assert_eq!(
        (&stats["total"], &stats["leases"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "the expired lease still counts: {stats}"
    );
    let listed: serde_json::Value = serde_json::from_str(&ok(&run(&db, &["list", "-j"]))).unwrap();
    assert_eq!(listed[0]["holders"], 0, "{listed}");
    assert_eq!(listed[0]["state"], "available", "{listed}");
    let name = listed[0]["name"].as_str().unwrap().to_string();
    ok(&run(&db, &["show", &name]));
    ok(&run(&db, &["pools"]));
    ok(&run(&db, &["export"]));
    foreign.execute_batch("ROLLBACK").unwrap();
}

/// A large import on a terminal shows a progress bar as it writes (under
/// `script`, which gives it a terminal and records what the terminal shows).
#[test]
fn a_large_import_shows_a_progress_bar_on_a_terminal() {
    let db = fresh_db("import-bar");
    let file = db.with_extension("json");
    let entries: Vec<String> = (0..20_000)
        .map(|i| format!(r#"{{"name": "bulk-{i}", "secret": "s"}}"#))
        .collect();
    std::fs::write(&file, format!("[{}]", entries.join(","))).unwrap();
    let command = format!(
        "{} --db {} import {}",
        env!("CARGO_BIN_EXE_credpool"),
        db.display(),
        file.display()
    );
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("CREDPOOL_DB")
        .stdin(Stdio::null())
        .output()
        .expect("script(1), of util-linux, gives a command a terminal");
    let screen = text(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(screen.contains("entries written"), "no bar: {screen:?}");
    assert!(screen.contains("imported 20000 credentials"), "{screen:?}");
    // Not on a terminal: no bar, and the lines say what happens.
    let piped = run(
        &fresh_db("import-plain"),
        &["import", file.to_str().unwrap()],
    );
    ok(&piped);
    assert!(
        !text(&piped.stderr).contains("entries written"),
        "{}",
        text(&piped.stderr)
    );
}

/// `watch` of a pool above 100,000 credentials counts grants per second
/// from the store's counters and says that it leaves the busiest list out,
/// rather than dropping it silently.
#[test]
fn watch_of_a_large_pool_says_what_it_leaves_out() {
    let db = fresh_db("watch-large");
    let file = db.with_extension("json");
    let entries: Vec<String> = (0..100_001)
        .map(|i| format!(r#"{{"name": "n-{i}", "secret": "s"}}"#))
        .collect();
    std::fs::write(&file, format!("[{}]", entries.join(","))).unwrap();
    ok(&run(&db, &["import", file.to_str().unwrap()]));
    let out = ok(&run(&db, &["watch", "--count", "2", "--interval", "100ms"]));
    assert!(out.contains("total 100001"), "{out}");
    assert!(out.contains("grants/s 0.0"), "{out}");
    assert!(out.contains("left out above 100000"), "{out}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&run(&db, &["stats", "-j"]))).unwrap();
    assert_eq!(stats["uses"], 0, "{stats}");
}

/// A lease taken and given back from the shell: `acquire` prints a token
/// (never the secret unless asked), the lease outlives the command, and
/// `release TOKEN` ends it, with a scoped cool-down if told; quotas set by
/// `add --rate` hold across commands, and `reset-locks` ends cool-downs but
/// not quotas.
#[test]
fn acquire_and_release_from_the_shell_with_scopes_and_quotas() {
    let db = fresh_db("acquire");
    ok(&run_with_stdin(
        &db,
        &[
            "add",
            "alice",
            "--secret-stdin",
            "--rate",
            "2/1h",
            "--scope",
            "search",
        ],
        "hunter2",
    ));
    let leased = ok(&run(&db, &["acquire", "--scope", "search", "--json"]));
    assert!(!leased.contains("hunter2"), "{leased}");
    let lease: serde_json::Value = serde_json::from_str(&leased).unwrap();
    assert_eq!(lease["name"], "alice");
    let token = lease["token"].as_str().unwrap().to_string();
    // The lease outlived the command that took it.
    fails(&run(&db, &["acquire"]), "came free");
    ok(&run(&db, &["release", &token]));
    fails(&run(&db, &["release", &token]), "is not held");
    let shown = ok(&run(
        &db,
        &["acquire", "--scope", "search", "--show-secrets"],
    ));
    assert!(shown.contains("secret  hunter2"), "{shown}");
    let token = shown
        .lines()
        .find_map(|line| line.strip_prefix("token   "))
        .unwrap()
        .to_string();
    ok(&run(
        &db,
        &[
            "release",
            &token,
            "--cool-down",
            "5m",
            "--scope",
            "timeline",
        ],
    ));
    fails(
        &run(&db, &["acquire", "--scope", "timeline"]),
        "for scope \"timeline\"",
    );
    // Search's quota is used up (2 per hour), so it waits in vain.
    fails(
        &run(&db, &["acquire", "--scope", "search", "--wait", "200ms"]),
        "within 200ms",
    );
    let other = ok(&run(&db, &["acquire", "--scope", "other", "--json"]));
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    ok(&run(&db, &["release", other["token"].as_str().unwrap()]));
    let listed = list_json(&db);
    let limits = listed[0]["limits"].as_array().unwrap();
    let scope = |name: &str| {
        limits
            .iter()
            .find(|limit| limit["scope"] == name)
            .unwrap_or_else(|| panic!("{name} in {limits:?}"))
    };
    assert_eq!(scope("search")["rate"], "2/1h");
    assert_eq!(scope("search")["remaining"], 0);
    assert!(scope("timeline")["blocked_until_ms"].is_u64());
    let table = ok(&run(&db, &["list"]));
    assert!(table.contains("search: 0/2 left, blocked"), "{table}");
    let stats = ok(&run(&db, &["stats"]));
    assert!(stats.contains("blocked in a scope 1"), "{stats}");
    let watched = ok(&run(&db, &["watch", "--count", "1"]));
    let search_row = watched
        .lines()
        .find(|line| line.starts_with("search"))
        .unwrap_or_else(|| panic!("{watched}"));
    assert_eq!(
        search_row.split_whitespace().collect::<Vec<_>>(),
        ["search", "1", "0"],
        "blocked 1, no grant left: {watched}"
    );
    let said = ok(&run(&db, &["reset-locks", "alice", "--scope", "timeline"]));
    assert!(said.contains("1 credential"), "{said}");
    ok(&run(&db, &["acquire", "--scope", "timeline"]));
    let said = ok(&run(&db, &["reset-locks"]));
    assert!(said.contains("nothing was cooling down"), "{said}");
    fails(&run(&db, &["release", "abc"]), "two whole numbers");
    usage_error(
        &run(&db, &["release", "1.1", "--scope", "s"]),
        "--cool-down",
    );
    fails(&run(&db, &["acquire", "--scope", ""]), "scope");
    fails(
        &run(&db, &["acquire", "--name", "nobody"]),
        "no credential named \"nobody\"",
    );
}

/// `acquire --units N` takes N units of one credential's capacity from the
/// shell, `release` gives them all back, and an ask above every capacity
/// fails at once naming the most there is.
#[test]
fn weighted_acquire_from_the_shell() {
    let db = fresh_db("units");
    ok(&run_with_stdin(
        &db,
        &["add", "alice", "--secret-stdin", "--capacity", "5"],
        "s",
    ));
    let leased = ok(&run(&db, &["acquire", "--units", "3", "--json"]));
    let lease: serde_json::Value = serde_json::from_str(&leased).unwrap();
    assert_eq!(lease["units"], 3, "{lease}");
    let token = lease["token"].as_str().unwrap().to_string();
    assert_eq!(list_json(&db)[0]["holders"], 3);
    fails(&run(&db, &["acquire", "--units", "3"]), "with 3 units free");
    let two = ok(&run(&db, &["acquire", "--units", "2"]));
    assert!(two.contains("units   2"), "{two}");
    ok(&run(&db, &["release", &token]));
    assert_eq!(list_json(&db)[0]["holders"], 2, "all three came back");
    let said = fails(
        &run(&db, &["acquire", "--units", "6", "--wait", "10s"]),
        "6 units",
    );
    assert!(said.contains("at most 5"), "{said}");
    usage_error(&run(&db, &["acquire", "--units", "0"]), "--units");
    usage_error(&run(&db, &["acquire", "--units", "many"]), "--units");
}

/// `list` and `show` say who holds each lease (process id and host), for
/// how long and until when, and that its process has exited: also for a
/// lease handed to a process that waited in the store's line.
#[test]
fn list_shows_who_holds_a_lease_and_whether_it_is_alive() {
    let db = fresh_db("holders");
    add_alice(&db, "s");
    let holder_of = |db: &Path| -> String {
        let leases = list_json(db)[0]["leases"].clone();
        assert_eq!(leases.as_array().map(Vec::len), Some(1), "{leases}");
        assert!(leases[0]["expires_at_ms"].as_u64() > leases[0]["acquired_at_ms"].as_u64());
        leases[0]["holder"].as_str().unwrap_or_default().to_string()
    };
    let first = credpool(&db)
        .args(["acquire", "--ttl", "1m", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first_pid = first.id();
    let lease: serde_json::Value =
        serde_json::from_str(&text(&first.wait_with_output().unwrap().stdout)).unwrap();
    let token = lease["token"].as_str().unwrap().to_string();
    assert!(holder_of(&db).starts_with(&format!("{first_pid}@")));
    let table = ok(&run(&db, &["list"]));
    assert!(table.contains("HELD BY"), "{table}");
    assert!(
        table.contains(&format!("{first_pid}@")) && table.contains("(exited)"),
        "{table}"
    );
    assert!(table.contains("expires in"), "{table}");
    let shown = ok(&run(&db, &["show", "alice"]));
    assert!(
        shown.contains(&format!("lease:       {first_pid}@")),
        "{shown}"
    );

    // A second process waits in the line; the release hands it the lease.
    let second = credpool(&db)
        .args(["acquire", "--ttl", "1m", "--wait", "30s", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let second_pid = second.id();
    let started = std::time::Instant::now();
    while list_json(&db).is_empty()
        || serde_json::from_str::<serde_json::Value>(&ok(&run(&db, &["stats", "--json"]))).unwrap()
            ["waiters"]
            != 1
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the second waits"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&run(&db, &["release", &token]));
    let output = second.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stdout));
    assert!(
        holder_of(&db).starts_with(&format!("{second_pid}@")),
        "the waiter's process holds the lease it was handed: {}",
        holder_of(&db)
    );
}

#[test]
fn default_rates_are_set_shown_and_removed() {
    let db = fresh_db("default-rate");
    add_alice(&db, "s");
    assert!(ok(&run(&db, &["default-rate"])).contains("no default quota"));
    let said = ok(&run(&db, &["default-rate", "2/1h", "--scope", "search"]));
    assert!(
        said.contains("default quota 2/1h in scope \"search\""),
        "{said}"
    );
    assert!(ok(&run(&db, &["default-rate"])).contains("2/1h in scope \"search\""));
    let limits = &list_json(&db)[0]["limits"];
    assert_eq!(limits[0]["rate"], "2/1h", "{limits}");
    // An export writes a credential's own quotas, not the pool's defaults.
    assert!(!ok(&run(&db, &["export"])).contains("rate"));
    ok(&run(&db, &["default-rate", "--none", "--scope", "search"]));
    assert_eq!(list_json(&db)[0]["limits"], serde_json::json!([]));
    usage_error(&run(&db, &["default-rate", "0/1h"]), "rate");
    fails(&run(&db, &["default-rate", "--scope", "search"]), "--none");
}

#[test]
fn bad_rates_are_refused_with_the_form_to_write() {
    let db = fresh_db("bad-rates");
    add_alice(&db, "s");
    for rate in ["0/1m", "5/0s", "abc", "5", "5/", "/1m"] {
        // Refused before the secret is read.
        let said = usage_error(
            &run(&db, &["add", "bob", "--secret-stdin", "--rate", rate]),
            "rate",
        );
        assert!(
            said.contains("N/DURATION") || said.contains("window") || said.contains("no grant"),
            "{rate}: {said}"
        );
        usage_error(&run(&db, &["set", "alice", "--rate", rate]), "rate");
    }
    usage_error(
        &run(&db, &["add", "bob", "--secret-stdin", "--scope", "s"]),
        "--rate",
    );
    fails(
        &run(&db, &["set", "alice", "--capacity", "2", "--scope", "s"]),
        "--scope",
    );
    assert_eq!(list_json(&db).len(), 1, "bob was not added");
    ok(&run(
        &db,
        &["set", "alice", "--rate", "5/1m", "--scope", "search"],
    ));
    assert_eq!(list_json(&db)[0]["limits"][0]["rate"], "5/1m");
    ok(&run(
        &db,
        &["set", "alice", "--no-rate", "--scope", "search"],
    ));
    assert_eq!(list_json(&db)[0]["limits"], serde_json::json!([]));
}

/// `rate` in credpool's import format, one over every grant or by scope,
/// survives an export and an import into another store; a bad rate
/// imports nothing and names its entry.
#[test]
fn rates_are_imported_and_exported() {
    let db = fresh_db("rates-import");
    let file = db.with_extension("json");
    std::fs::write(
        &file,
        r#"[{"name": "a", "secret": "s", "rate": "3/1m"},
            {"name": "b", "secret": "s", "rate": {"search": "5/1s", "*": "10/1m"}}]"#,
    )
    .unwrap();
    ok(&run(&db, &["import", file.to_str().unwrap()]));
    let exported = ok(&run(&db, &["export", "--show-secrets"]));
    let entries: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(entries[0]["rate"], "3/1m");
    assert_eq!(
        entries[1]["rate"],
        serde_json::json!({"*": "10/1m", "search": "5/1s"})
    );
    let copy = fresh_db("rates-copy");
    std::fs::write(&file, &exported).unwrap();
    ok(&run(&copy, &["import", file.to_str().unwrap()]));
    assert_eq!(
        ok(&run(&copy, &["export"])),
        ok(&run(&db, &["export"])),
        "the copy has the same rates"
    );
    std::fs::write(
        &file,
        r#"[{"name": "c", "secret": "s"}, {"name": "d", "secret": "s", "rate": "0/1m"}]"#,
    )
    .unwrap();
    let said = fails(&run(&db, &["import", file.to_str().unwrap()]), "\"d\"");
    assert!(said.contains("no grant"), "{said}");
    assert_eq!(
        list_json(&db).len(),
        2,
        "nothing of the bad file was imported"
    );
}

/// `demo --rate` puts a quota on every demo credential, and the demo keeps
/// to it: 2 credentials at 5 per second give at most 10 grants a second.
#[test]
fn demo_keeps_to_its_rate() {
    let db = fresh_db("demo-rate");
    ok(&run(
        &db,
        &[
            "demo",
            "--workers",
            "8",
            "--credentials",
            "2",
            "--work-ms",
            "0..2",
            "--duration",
            "1500ms",
            "--rate",
            "5/1s",
            "--lease-ttl",
            "30s",
        ],
    ));
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&run(&db, &["--pool", "demo", "stats", "--json"]))).unwrap();
    let uses = stats["uses"].as_u64().unwrap();
    // Windows [0, 1 s) and [1 s, 2 s) hold at most 5 grants of each.
    assert!((2..=20).contains(&uses), "{uses} grants in 1.5 s");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&run(&db, &["--pool", "demo", "list", "--json"]))).unwrap();
    assert_eq!(listed[0]["limits"][0]["rate"], "5/1s");
}

/// A JSON file of `count` accounts in aio-credentials-pool's format.
fn accounts_file(db: &Path, count: usize) -> PathBuf {
    let path = db.with_extension("accounts.json");
    let accounts: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({"username": format!("acct-{i}"), "password": format!("pw-{i}"), "cookie": null}))
        .collect();
    std::fs::write(&path, serde_json::to_vec(&accounts).unwrap()).unwrap();
    path
}

/// Runs `credpool import FILE` into pool `big`, its stderr lines sent as
/// they come, each with the time it came.
fn import_in_background(
    db: &Path,
    file: &Path,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<(std::time::Instant, String)>,
) {
    use std::io::BufRead;
    let mut child = credpool(db)
        .args(["--pool", "big", "import"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send((std::time::Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    (child, heard)
}

/// Waits (at most 60 s) for a line of the import that contains `text`.
fn heard(
    lines: &std::sync::mpsc::Receiver<(std::time::Instant, String)>,
    text: &str,
) -> std::time::Instant {
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok((at, line)) if line.contains(text) => return at,
            Ok(_) => {}
            Err(error) => panic!("no line with {text:?} from the import: {error}"),
        }
    }
}

/// Another process's grants go on while a large import writes its
/// entries: the import takes the write lock only for its last, short
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_go_on_during_a_large_import() {
    const ENTRIES: usize = 200_000;
    let db = fresh_db("import-stall");
    let pool = Pool::new(SqliteStore::open(&db).await.unwrap());
    pool.add(credpool::NewCredential::new("worker", "s"))
        .await
        .unwrap();
    let file = accounts_file(&db, ENTRIES);
    let granting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let grants = tokio::spawn({
        let (pool, granting) = (pool.clone(), granting.clone());
        async move {
            let mut times = Vec::new();
            while granting.load(std::sync::atomic::Ordering::Relaxed) {
                let lease = pool.acquire().await.expect("a grant during the import");
                lease.release().await.expect("a release during the import");
                times.push(std::time::Instant::now());
            }
            times
        }
    });
    let (writing, committing, child) = tokio::task::spawn_blocking(move || {
        let (mut child, lines) = import_in_background(&db, &file);
        let writing = heard(&lines, "read and checked");
        let committing = heard(&lines, "committing");
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        (writing, committing, db)
    })
    .await
    .unwrap();
    granting.store(false, std::sync::atomic::Ordering::Relaxed);
    let times = grants.await.unwrap();
    // Grants in each third of the time it wrote (none would come while
    // something held the write lock).
    let third = (committing - writing) / 3;
    for part in 0..3 {
        let (from, to) = (writing + third * part, writing + third * (part + 1));
        let during = times.iter().filter(|at| **at > from && **at < to).count();
        assert!(
            during > 0,
            "no grant in part {} of 3 of the {:?} the import wrote its {ENTRIES} entries \
             ({} grants in all)",
            part + 1,
            committing - writing,
            times.len()
        );
    }
    assert_eq!(list_json_of(&child, "big").len(), ENTRIES);
}

fn list_json_of(db: &Path, pool: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(&run(db, &["--pool", pool, "list", "--json"]))).unwrap()
}

/// An import killed half-way (SIGKILL, while it writes) leaves the store
/// as it was: no entry of it, the other pools untouched, the file sound,
/// and the same import then works.
#[test]
fn an_import_killed_half_way_leaves_the_store_as_it_was() {
    const ENTRIES: usize = 50_000;
    let db = fresh_db("import-killed");
    add_alice(&db, "s");
    let file = accounts_file(&db, ENTRIES);
    let mut killed_while_writing = 0;
    for delay_ms in [0, 20, 60, 150] {
        let (mut child, lines) = import_in_background(&db, &file);
        heard(&lines, "read and checked");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let committing = lines
            .try_iter()
            .any(|(_, line)| line.contains("committing"));
        let imported = list_json_of(&db, "big").len();
        if committing {
            assert!(imported == 0 || imported == ENTRIES, "{imported} entries");
        } else {
            killed_while_writing += 1;
            assert_eq!(imported, 0, "killed {delay_ms} ms into writing");
        }
        if imported == ENTRIES {
            // Killed after its commit: all of it is there.
            assert!(killed_while_writing > 0, "no kill landed while it wrote");
            return;
        }
        let others = list_json(&db);
        assert_eq!(others.len(), 1, "{others:?}");
        assert_eq!(others[0]["name"], "alice");
        let check: String = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    assert!(killed_while_writing > 0, "no kill landed while it wrote");
    let done = ok(&run(
        &db,
        &["--pool", "big", "import", file.to_str().unwrap()],
    ));
    assert!(done.contains(&format!("imported {ENTRIES}")), "{done}");
}

/// `list` reads a pool a page at a time and writes as it goes: every
/// format lists a pool of several pages whole and in order, the filters
/// and `--limit` work across pages, and JSON is one valid array.
#[test]
fn list_reads_a_large_pool_a_page_at_a_time() {
    const ENTRIES: usize = 2_500;
    let db = fresh_db("paged-list");
    let file = accounts_file(&db, ENTRIES);
    ok(&run(&db, &["import", file.to_str().unwrap()]));
    ok(&run(&db, &["disable", "acct-1500", "--reason", "banned"]));
    let printed = ok(&run(&db, &["list", "--json"]));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&printed).unwrap();
    assert_eq!(listed.len(), ENTRIES);
    for (i, c) in listed.iter().enumerate() {
        assert_eq!(c["name"], format!("acct-{i}"));
    }
    assert!(
        printed == format!("{}\n", serde_json::to_string_pretty(&listed).unwrap()),
        "written a page at a time, the JSON is byte for byte serde_json's pretty array"
    );
    let empty = ok(&run(&db, &["--pool", "nothing-here", "list", "--json"]));
    assert_eq!(empty, "[]\n");
    let lines = ok(&run(&db, &["list", "--ndjson"]));
    assert_eq!(lines.lines().count(), ENTRIES);
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["name"], format!("acct-{}", ENTRIES - 1));
    let table = ok(&run(&db, &["list"]));
    assert_eq!(
        table.lines().count(),
        ENTRIES + 1,
        "a heading and a row each"
    );
    let disabled = ok(&run(&db, &["list", "--state", "disabled", "--json"]));
    let disabled: Vec<serde_json::Value> = serde_json::from_str(&disabled).unwrap();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["name"], "acct-1500");
    let limited = ok(&run(
        &db,
        &["list", "--name", "acct-2*", "--limit", "300", "--ndjson"],
    ));
    let names: Vec<String> = limited
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names.len(), 300);
    assert_eq!(names[0], "acct-2");
    assert_eq!(names[11], "acct-200", "acct-2, acct-20..29, then acct-200");
    assert_eq!(names[299], "acct-2188", "then acct-2000 to acct-2188");
}

/// The common flags have short forms: `-d` and `-p` (any command), `-j`,
/// `-s`/`-n`/`-l` on list, `-c`, `-t`/`-w` on acquire, `-r`, `-f`, and
/// `-i`/`-n` on watch.
#[test]
fn short_flags_for_the_common_ones() {
    let db = fresh_db("short-flags");
    let short = |args: &[&str], stdin: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_credpool"));
        command
            .env_remove("CREDPOOL_DB")
            .arg("-d")
            .arg(&db)
            .args(["-p", "team"])
            .args(args);
        ok(&output_with_stdin(command, stdin))
    };
    short(&["add", "bot-1", "--secret-stdin", "-c", "3"], "s");
    short(&["add", "bot-2", "--secret-stdin"], "s");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&short(
        &["list", "-s", "available", "-n", "bot-*", "-l", "1", "-j"],
        "",
    ))
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "bot-1");
    assert_eq!(listed[0]["capacity"], 3, "-c set the capacity");
    let lease: serde_json::Value = serde_json::from_str(&short(
        &["acquire", "-n", "bot-2", "-t", "1m", "-w", "1s", "-j"],
        "",
    ))
    .unwrap();
    assert_eq!(lease["name"], "bot-2");
    short(&["disable", "bot-1", "-r", "banned"], "");
    short(&["remove", "bot-2", "-f"], "");
    let left = list_json_of(&db, "team");
    assert_eq!(left.len(), 1, "-p named the pool: {left:?}");
    assert_eq!(left[0]["state"], "disabled");
    assert!(short(&["watch", "-i", "100ms", "-n", "1"], "").contains("disabled 1"));
}
