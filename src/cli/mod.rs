//! The command line: parsing, opening the store, and one clear line per error.

/// `println!` that ends the program quietly when stdout's reader has gone
/// (`credpool list | head`), instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes a line to stderr, like `eprintln!`, but a stderr that cannot be
/// written (closed) is no panic: the line is dropped.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// As [`errln!`], without the newline (a progress line).
macro_rules! errput {
    ($($arg:tt)*) => {
        $crate::cli::write_stderr(format_args!($($arg)*))
    };
}

mod demo;
mod duration;
mod import;
mod leases;
mod output;
mod serve;
mod torture;
mod watch;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use credpool::store::sqlite::SqliteStore;
use credpool::{Error, NewCredential, Pool, Store};

/// The error of a command: one line for the user, exit code 1.
#[derive(Debug)]
pub(crate) struct Failure(String);

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure(error.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure(message.to_string())
    }
}

pub(crate) type Outcome = Result<(), Failure>;

/// Writes to standard output. A reader that went away (`| head`) ends the
/// program quietly with success; any other failure (a full disk, say) ends
/// it with one line on stderr and exit code 1, so a cut-short backup never
/// looks like a good one.
pub(crate) fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        errln!("error: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

/// Writes to stderr; a failure (stderr closed) drops the text.
pub(crate) fn write_stderr(text: std::fmt::Arguments<'_>) {
    write_quietly(&mut std::io::stderr().lock(), text);
}

/// Writes `text` to `out` and flushes; a failure (a closed pipe) drops it.
pub(crate) fn write_quietly(out: &mut impl std::io::Write, text: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(text).and_then(|()| out.flush());
}

/// The heading under which every command's help lists the options that
/// all commands take, apart from its own.
const GLOBAL: &str = "Global options (any command)";

#[derive(Parser, Debug)]
#[command(
    name = "credpool",
    version,
    about = "Hand a pool of credentials to many workers: one worker per credential at a time, none ever lost.",
    after_help = "Examples:\n  credpool demo                          # 300 workers on 100 demo credentials, Ctrl-C to stop\n  credpool import accounts.json          # aio-credentials-pool's JSON or credpool's own\n  credpool list\n  credpool --db /var/lib/app/creds.db stats --json"
)]
struct Args {
    /// The store file [default: $CREDPOOL_DB, else credpool.db].
    #[arg(short, long, global = true, help_heading = GLOBAL, value_name = "PATH")]
    db: Option<PathBuf>,

    /// A store in this process's memory instead of the file, for demo and
    /// torture only (so it is given before the command: credpool --memory demo).
    #[cfg_attr(feature = "postgres", arg(long, conflicts_with_all = ["db", "url"]))]
    #[cfg_attr(not(feature = "postgres"), arg(long, conflicts_with = "db"))]
    memory: bool,

    /// A Postgres store instead of the file: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE
    /// (tables in the schema given by --schema) [default: $CREDPOOL_URL].
    /// A flag beats the environment; an empty variable counts as unset.
    #[cfg(feature = "postgres")]
    #[arg(long, global = true, help_heading = GLOBAL, conflicts_with = "db")]
    url: Option<String>,

    /// The Postgres schema that holds credpool's tables [default: credpool].
    #[cfg(feature = "postgres")]
    #[arg(long, global = true, help_heading = GLOBAL)]
    schema: Option<String>,

    /// The pool within the store [default: default; demo: demo, so that a
    /// demo never touches real credentials].
    #[arg(short, long, global = true, help_heading = GLOBAL, value_name = "NAME")]
    pool: Option<String>,

    /// How long a waiter's ticket in the store's waiting line outlives its
    /// last heartbeat (SQLite and Postgres; e.g. 1s, 500ms): a killed
    /// process's waiters hold up the others for at most this long
    /// [default: 3s; torture: its --lease-ttl].
    #[arg(long, global = true, help_heading = GLOBAL, value_parser = duration::parse_positive, value_name = "DURATION")]
    ticket_ttl: Option<Duration>,

    /// More log lines on stderr: -v what changes, -vv every acquire and
    /// release, -vvv everything (RUST_LOG, when set, decides instead).
    #[arg(short, long, global = true, help_heading = GLOBAL, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Log only errors on stderr.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the store (does nothing if it exists).
    #[command(after_help = "Example:\n  credpool --db creds.db init")]
    Init,

    /// Add one credential; the secret comes from stdin or an environment variable, never argv.
    #[command(
        after_help = "Examples:\n  printf '%s' \"$PASSWORD\" | credpool add alice --secret-stdin\n  API_KEY=... credpool add bot-7 --secret-env API_KEY --capacity 4\n  credpool add bot-8 --secret-env API_KEY --rate 400/15m --scope search"
    )]
    Add {
        /// The credential's name.
        name: String,
        /// Read the secret from standard input (one trailing newline is dropped).
        #[arg(
            long,
            conflicts_with = "secret_env",
            required_unless_present = "secret_env"
        )]
        secret_stdin: bool,
        /// Read the secret from this environment variable.
        #[arg(long, value_name = "VAR")]
        secret_env: Option<String>,
        /// Extra text, such as a cookie.
        #[arg(long)]
        extra: Option<String>,
        /// How many workers may hold it at once.
        #[arg(short, long, default_value_t = 1)]
        capacity: u32,
        /// A quota: at most N grants in any window of DURATION (400/15m),
        /// over every grant, or those of --scope.
        #[arg(long, value_parser = parse_rate, value_name = "N/DURATION")]
        rate: Option<credpool::Rate>,
        /// The scope the quota counts (an endpoint, say) [default: every scope].
        #[arg(long, requires = "rate")]
        scope: Option<String>,
    },

    /// Import credentials from a JSON file ("-" for stdin), all or nothing.
    #[command(
        after_help = "Formats, detected per entry:\n  aio-credentials-pool: [{\"username\": \"u\", \"password\": \"p\", \"cookie\": null}]\n  credpool:             [{\"name\": \"u\", \"secret\": \"p\", \"extra\": null, \"capacity\": 1, \"disabled\": \"why\"}] (what export writes)\n\nExample:\n  credpool import accounts.json --skip-existing"
    )]
    Import {
        /// The file, or - for standard input.
        file: String,
        /// Keep credentials whose names exist and add the rest.
        #[arg(long)]
        skip_existing: bool,
    },

    /// List credentials (never their secrets unless --show-secrets).
    #[command(
        after_help = "Examples:\n  credpool list\n  credpool list --state disabled --name 'bot-*'\n  credpool list --sort last-used --limit 20\n  credpool list --ndjson | jq -c 'select(.uses > 100)'"
    )]
    List {
        /// Print JSON instead of a table.
        #[arg(short, long, conflicts_with = "ndjson")]
        json: bool,
        /// Print one JSON object a line, written as it goes (for jq, or a
        /// pipe to head).
        #[arg(long)]
        ndjson: bool,
        /// Print secrets and extra text too.
        #[arg(long)]
        show_secrets: bool,
        #[command(flatten)]
        filter: output::Filter,
    },

    /// Show one credential: state, holders, uses, reason (never its secret unless --show-secrets).
    #[command(after_help = "Examples:\n  credpool show alice\n  credpool show alice --json")]
    Show {
        /// The credential's name.
        name: String,
        /// Print JSON.
        #[arg(short, long)]
        json: bool,
        /// Print its secret and extra text too.
        #[arg(long)]
        show_secrets: bool,
    },

    /// List the pools in the store, with how many credentials each holds.
    #[command(
        after_help = "Examples:\n  credpool pools\n  credpool --url \"$CREDPOOL_URL\" pools -j"
    )]
    Pools {
        /// Print JSON.
        #[arg(short, long)]
        json: bool,
    },

    /// Write the pool as credpool's own JSON, which import reads back exactly
    /// (capacity, extra text, disabled state and reason); secrets and extra
    /// text only with --show-secrets.
    #[command(
        after_help = "Examples:\n  credpool export --show-secrets > backup.json     # the file is made private (0600)\n  credpool --db new.db import backup.json"
    )]
    Export {
        /// Include each secret and extra text (needed to import it again).
        #[arg(long)]
        show_secrets: bool,
    },

    /// Remove a credential (refused while it is leased, unless --force).
    #[command(
        after_help = "Examples:\n  credpool remove alice\n  credpool remove --disabled        # every disabled credential, as twscrape's delete_inactive"
    )]
    Remove {
        /// The credential's name.
        #[arg(required_unless_present = "disabled", conflicts_with = "disabled")]
        name: Option<String>,
        /// Remove every disabled credential instead of one by name.
        #[arg(long)]
        disabled: bool,
        /// Remove it even while leased; its holders' releases will fail.
        #[arg(short, long)]
        force: bool,
    },

    /// Disable a credential: it is not handed out until enabled.
    #[command(after_help = "Example:\n  credpool disable alice --reason \"banned by the site\"")]
    Disable {
        /// The credential's name.
        name: String,
        /// Why (shown by list).
        #[arg(short, long)]
        reason: String,
    },

    /// Change a credential: its capacity, its secret (from stdin or an
    /// environment variable, never argv), its extra text. Leases out keep
    /// the old secret; a capacity below the leases out now is refused.
    #[command(
        after_help = "Examples:\n  credpool set bot-7 --capacity 4\n  printf '%s' \"$NEW_KEY\" | credpool set bot-7 --secret-stdin\n  credpool set alice --extra-stdin < cookie.txt",
        group(clap::ArgGroup::new("change").required(true).multiple(true)
            .args(["capacity", "secret_stdin", "secret_env", "extra", "extra_stdin", "no_extra", "rate", "no_rate"]))
    )]
    Set {
        /// The credential's name.
        name: String,
        /// How many workers may hold it at once.
        #[arg(short, long)]
        capacity: Option<u32>,
        /// Read the new secret from stdin (asked without echo at a terminal).
        #[arg(long, conflicts_with_all = ["secret_env", "extra_stdin"])]
        secret_stdin: bool,
        /// Read the new secret from this environment variable.
        #[arg(long, value_name = "VAR")]
        secret_env: Option<String>,
        /// New extra text, such as a cookie.
        #[arg(long, conflicts_with_all = ["extra_stdin", "no_extra"])]
        extra: Option<String>,
        /// Read the new extra text from stdin.
        #[arg(long, conflicts_with = "no_extra")]
        extra_stdin: bool,
        /// Remove the extra text.
        #[arg(long)]
        no_extra: bool,
        /// A new quota: at most N grants in any window of DURATION
        /// (400/15m), over every grant, or those of --scope.
        #[arg(long, value_parser = parse_rate, value_name = "N/DURATION", conflicts_with = "no_rate")]
        rate: Option<credpool::Rate>,
        /// Remove the quota (of --scope, or over every grant).
        #[arg(long)]
        no_rate: bool,
        /// The scope of --rate or --no-rate [default: every scope].
        #[arg(long)]
        scope: Option<String>,
    },

    /// Lease a credential for a shell script or another program: prints its
    /// token and name (the secret only with --show-secrets). The lease lives
    /// until `credpool release TOKEN` or its --ttl. Exits with 1 when none
    /// came free within --wait.
    #[command(
        after_help = "Examples:\n  lease=$(credpool acquire --scope search --wait 10s --json --show-secrets)\n  credpool release \"$(echo \"$lease\" | jq -r .token)\" --cool-down 5m --scope search\n  credpool acquire --units 3 --wait 1m   # a heavy job: 3 of one account's slots"
    )]
    Acquire(leases::AcquireArgs),

    /// Give back a lease by the token `credpool acquire` printed, with how it went.
    #[command(
        after_help = "Examples:\n  credpool release 7.1234\n  credpool release 7.1234 --cool-down 15m --scope search   # rate limited on search\n  credpool release 7.1234 --disable \"banned\""
    )]
    Release(leases::ReleaseArgs),

    /// Set, remove or show the pool's default quotas: every credential
    /// without a quota of its own in a scope has the default of that scope.
    #[command(
        after_help = "Examples:\n  credpool default-rate 400/15m --scope search   # each credential, 400 searches in any 15 minutes\n  credpool default-rate --none --scope search\n  credpool default-rate                          # the defaults"
    )]
    DefaultRate {
        /// The quota, N/DURATION (400/15m) [default: show the defaults].
        #[arg(value_parser = parse_rate, value_name = "N/DURATION", conflicts_with = "none")]
        rate: Option<credpool::Rate>,
        /// Remove the default (of --scope, or over every grant).
        #[arg(long)]
        none: bool,
        /// The scope the default counts [default: every scope].
        #[arg(long)]
        scope: Option<String>,
    },

    /// End cool-downs and reported budgets, of one credential or all, in one
    /// scope or all (twscrape's reset_locks); quotas keep counting.
    #[command(
        after_help = "Examples:\n  credpool reset-locks\n  credpool reset-locks alice --scope search"
    )]
    ResetLocks(leases::ResetArgs),

    /// End a credential's leases now, e.g. those of a worker that was killed:
    /// the credential is free at once, and a holder still alive fails to
    /// release or renew (its lease is fenced).
    #[command(
        after_help = "Example:\n  credpool revoke alice      # the worker that held alice was killed with kill -9"
    )]
    Revoke {
        /// The credential's name.
        name: String,
    },

    /// Enable a disabled credential.
    #[command(after_help = "Examples:\n  credpool enable alice\n  credpool enable --all")]
    Enable {
        /// The credential's name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Enable every disabled credential.
        #[arg(long)]
        all: bool,
    },

    /// Counts by state.
    #[command(after_help = "Example:\n  credpool stats --json")]
    Stats {
        /// Print JSON.
        #[arg(short, long)]
        json: bool,
    },

    /// A live view of the pool, refreshed in place.
    #[command(after_help = "Example:\n  credpool watch --interval 500ms")]
    Watch {
        /// How often to refresh: 500ms, 2s, or seconds (at least 50ms).
        #[arg(short, long, default_value = "1s", value_parser = duration::parse_positive, value_name = "DURATION")]
        interval: Duration,
        /// The refresh interval in milliseconds (older spelling of --interval).
        #[arg(long, hide = true, conflicts_with = "interval")]
        interval_ms: Option<u64>,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(short = 'n', long)]
        count: Option<u64>,
    },

    /// Worker processes hammer the store while some are killed; a checker
    /// proves from their logs that no credential was held twice or lost.
    #[command(
        after_help = "Runs in a pool of its own (torture-PID), emptied at the end. Exits with 1 on any violation.\n\nExamples:\n  credpool --db /tmp/t.db torture --duration 10s\n  credpool --db /tmp/t.db torture --duration 10m --processes 4 --tasks 32 --kill-every 3s"
    )]
    Torture(torture::TortureArgs),

    /// One worker process of `torture`.
    #[command(hide = true)]
    TortureWorker(torture::WorkerArgs),

    /// Run N workers that acquire, work a random while, and release, until stopped.
    #[command(
        after_help = "Ctrl-C, SIGTERM or SIGHUP stop it gracefully: every credential comes back.\n\nExamples:\n  credpool demo\n  credpool demo --workers 50 --credentials 10 --work-ms 5..20 --duration 30s"
    )]
    Demo(demo::DemoArgs),

    /// Serve the pool over HTTP: a JSON API for workers in any language
    /// (/v1/, documented at /v1/openapi.json), a live dashboard at /,
    /// Prometheus metrics at /metrics. Loopback only unless tokens are set.
    #[command(
        after_help = "Examples:\n  credpool serve                                  # http://127.0.0.1:8080/\n  curl -s -X POST localhost:8080/v1/pools/default/leases -d '{\"wait\": \"10s\"}'\n  CREDPOOL_WORKER_TOKEN=... CREDPOOL_ADMIN_TOKEN=... credpool serve --listen 0.0.0.0:8080\n  credpool serve --auth-file /etc/credpool/tokens   # lines of `worker TOKEN` or `admin TOKEN`\n\nSIGINT or SIGTERM stop it: waiting requests get 503; leases are left to the store (or released, --memory)."
    )]
    Serve(serve::ServeArgs),

    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  credpool completions bash > ~/.local/share/bash-completion/completions/credpool\n  credpool completions zsh > ~/.zfunc/_credpool\n  credpool completions fish > ~/.config/fish/completions/credpool.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff), for `man`.
    #[command(after_help = "Example:\n  credpool man > credpool.1 && man ./credpool.1")]
    Man,
}

pub(crate) fn main() -> ExitCode {
    let args = Args::parse();
    start_logging(args.verbose, args.quiet);
    match &args.command {
        Command::Completions { shell } => {
            let mut command = <Args as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "credpool", &mut script);
            write_stdout(format_args!("{}", String::from_utf8_lossy(&script)));
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let command = <Args as clap::CommandFactory>::command();
            let mut page = Vec::new();
            if let Err(error) = clap_mangen::Man::new(command).render(&mut page) {
                errln!("error: cannot write the manual page: {error}");
                return ExitCode::FAILURE;
            }
            write_stdout(format_args!("{}", String::from_utf8_lossy(&page)));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            errln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Where the store is: the file of `--db`, or the database of `--url`.
#[derive(Clone)]
pub(crate) enum Place {
    File(PathBuf),
    Memory,
    #[cfg(feature = "postgres")]
    Postgres {
        url: String,
        schema: String,
    },
}

/// An environment variable's value; unset, empty or not UTF-8 is `None`.
fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

impl Place {
    /// The store the command line names: a flag (`--url`, `--memory`,
    /// `--db`) beats the environment (`CREDPOOL_URL`, then `CREDPOOL_DB`),
    /// which beats the default file.
    fn from_args(args: &Args) -> Result<Self, Failure> {
        #[cfg(feature = "postgres")]
        {
            let schema = args.schema.clone().unwrap_or_else(|| "credpool".into());
            if let Some(url) = &args.url {
                return Ok(Place::Postgres {
                    url: url.clone(),
                    schema,
                });
            }
            if !args.memory && args.db.is_none() {
                if let Some(url) = from_env("CREDPOOL_URL") {
                    return Ok(Place::Postgres { url, schema });
                }
            }
            if args.schema.is_some() {
                return Err(
                    "--schema names a Postgres schema: use it with --url (or CREDPOOL_URL)".into(),
                );
            }
        }
        if args.memory {
            return Ok(Place::Memory);
        }
        if let Some(db) = &args.db {
            return Ok(Place::File(db.clone()));
        }
        Ok(Place::File(
            from_env("CREDPOOL_DB")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("credpool.db")),
        ))
    }

    /// For messages: the file, or the server, database and schema (never a password).
    pub(crate) fn describe(&self) -> String {
        match self {
            Place::File(path) => path.display().to_string(),
            Place::Memory => "the memory store".into(),
            #[cfg(feature = "postgres")]
            Place::Postgres { url, schema } => {
                credpool::store::postgres::PostgresStore::options_url(url)
                    .map(|options| options.schema(schema.as_str()).location())
                    .unwrap_or_else(|_| "the postgres database".into())
            }
        }
    }

    /// Whether the store is there already, when that can be told before
    /// opening it (a file); `None` for a database.
    fn exists(&self) -> Option<bool> {
        match self {
            Place::File(path) => Some(path.exists()),
            Place::Memory => Some(false),
            #[cfg(feature = "postgres")]
            Place::Postgres { .. } => None,
        }
    }

    /// How a worker process of `torture` reaches the same store: arguments,
    /// and environment variables for what must not show in `ps` (a URL may
    /// hold a password).
    /// `None` for the memory store, which no other process can reach.
    pub(crate) fn child_args(&self) -> Option<ChildPlace> {
        match self {
            Place::File(path) => Some(ChildPlace {
                args: vec!["--db".into(), path.display().to_string()],
                env: Vec::new(),
            }),
            Place::Memory => None,
            #[cfg(feature = "postgres")]
            Place::Postgres { url, schema } => Some(ChildPlace {
                args: vec!["--schema".into(), schema.clone()],
                env: vec![("CREDPOOL_URL".into(), url.clone())],
            }),
        }
    }

    /// Opens the file store; `create` says whether a missing file may be created.
    async fn open_file(
        path: &Path,
        pool: &str,
        create: bool,
        tuning: Tuning,
    ) -> Result<Pool<SqliteStore>, Failure> {
        if !create && !path.exists() {
            return Err(Failure(format!(
                "{}: no store there: run `credpool init` (or `credpool import FILE`) first, or pass --db",
                path.display()
            )));
        }
        let shared_before = shared_mode(path);
        let mut options = SqliteStore::options(path).pool(pool).create(create);
        if let Some(ttl) = tuning.ticket_ttl {
            options = options.ticket_ttl(ttl);
        }
        let store = options.open().await?;
        if shared_before && !shared_mode(path) {
            errln!(
                "note: {} was readable by other users; credpool made it private (mode 0600) before writing secrets to it",
                path.display()
            );
        }
        Ok(tuning.pool(store))
    }

    #[cfg(feature = "postgres")]
    async fn open_postgres(
        url: &str,
        schema: &str,
        pool: &str,
        tuning: Tuning,
    ) -> Result<Pool<credpool::store::postgres::PostgresStore>, Failure> {
        let mut options = credpool::store::postgres::PostgresStore::options_url(url)?
            .schema(schema)
            .pool(pool);
        if let Some(ttl) = tuning.ticket_ttl {
            options = options.ticket_ttl(ttl);
        }
        Ok(tuning.pool(options.open().await?))
    }
}

/// Whether other users may read or write the file at `path` (false when
/// there is no file).
fn shared_mode(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// The times a command sets on the store and pool it opens; `None` leaves
/// the default.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tuning {
    /// The lease TTL of the pool's leases.
    pub(crate) lease_ttl: Option<Duration>,
    /// The ticket TTL of a store that keeps a waiting line.
    pub(crate) ticket_ttl: Option<Duration>,
}

impl Tuning {
    /// A pool over `store`, with the lease TTL asked for, or the store's default.
    fn pool<S: Store>(self, store: S) -> Pool<S> {
        match self.lease_ttl {
            Some(ttl) => Pool::builder(store).lease_ttl(ttl).build(),
            None => Pool::new(store),
        }
    }
}

/// What a child process of this program needs to open the same [`Place`].
pub(crate) struct ChildPlace {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
}

/// Opens the pool at a [`Place`] and runs `$body` with it bound to `$pool`,
/// whichever store it is (the body is compiled once per store type).
macro_rules! with_pool {
    ($place:expr, $name:expr, $create:expr, |$pool:ident| $body:expr) => {
        with_pool!($place, $name, $create, Tuning::default(), |$pool| $body)
    };
    ($place:expr, $name:expr, $create:expr, $tuning:expr, |$pool:ident| $body:expr) => {
        match $place {
            Place::File(path) => {
                let $pool = Place::open_file(path, $name, $create, $tuning).await?;
                $body
            }
            Place::Memory => {
                let $pool = $tuning.pool(credpool::MemoryStore::with_pool_name($name));
                $body
            }
            #[cfg(feature = "postgres")]
            Place::Postgres { url, schema } => {
                let $pool = Place::open_postgres(url, schema, $name, $tuning).await?;
                $body
            }
        }
    };
}

/// Log lines go to stderr, never with a secret in them: warnings by default,
/// more with `-v`, only errors with `-q`; `RUST_LOG` (tracing's `EnvFilter`
/// syntax, e.g. `credpool=debug`) decides instead when it is set.
fn start_logging(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "warn,credpool=info",
        (false, 2) => "info,credpool=debug",
        (false, _) => "debug,credpool=trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(wanted) if !wanted.trim().is_empty() => EnvFilter::try_new(&wanted).unwrap_or_else(|error| {
            errln!("warning: RUST_LOG={wanted:?} is not a log filter ({error}); write e.g. RUST_LOG=credpool=debug");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr closed) is dropped; the
        // default reports it with `eprintln!`, which panics on a closed
        // stderr, in whatever task logged: a server would drop requests.
        .log_internal_errors(false)
        .init();
}

async fn run(args: Args) -> Outcome {
    let place = Place::from_args(&args)?;
    let name = match (&args.pool, &args.command) {
        (Some(name), _) => name.as_str(),
        (None, Command::Demo(_)) => "demo",
        (None, _) => "default",
    };
    if matches!(place, Place::Memory)
        && !matches!(
            args.command,
            Command::Demo(_) | Command::Torture(_) | Command::Serve(_)
        )
    {
        return Err(
            "--memory keeps credentials only while a command runs: use it with demo, torture or serve"
                .into(),
        );
    }
    match args.command {
        // Read and check the whole file before the store is opened (or made).
        Command::Import {
            file,
            skip_existing,
        } => {
            let input = import::read_input(&file, skip_existing)?;
            with_pool!(&place, name, true, |pool| input.write_to(&pool).await)
        }
        Command::Add {
            name: credential,
            secret_stdin,
            secret_env,
            extra,
            capacity,
            rate,
            scope,
        } => {
            let secret = read_secret(secret_stdin, secret_env.as_deref())?;
            let mut credential = NewCredential::new(credential, secret)
                .maybe_extra(extra)
                .capacity(capacity);
            if let Some(rate) = rate {
                credential = match scope {
                    Some(scope) => credential.rate_for(scope, rate),
                    None => credential.rate(rate),
                };
            }
            with_pool!(&place, name, true, |pool| {
                let added = credential.name().to_string();
                pool.add(credential).await?;
                outln!("added {added:?} to pool `{name}`");
                Ok(())
            })
        }
        Command::Torture(mut torture_args) => {
            let name = format!("torture-{}", std::process::id());
            // A killed worker's tickets hold the line up no longer than its
            // leases stay out, unless asked otherwise.
            // (A ticket TTL is at least 100 ms: a heartbeat must fit in it.)
            let ticket_ttl = args
                .ticket_ttl
                .unwrap_or(torture_args.ttl().max(Duration::from_millis(100)));
            torture_args.ticket_ttl = Some(ticket_ttl);
            let tuning = Tuning {
                lease_ttl: Some(torture_args.ttl()),
                ticket_ttl: Some(ticket_ttl),
            };
            with_pool!(&place, &name, true, tuning, |pool| {
                torture::run(pool, &place, torture_args).await
            })
        }
        Command::TortureWorker(worker_args) => {
            let tuning = Tuning {
                lease_ttl: Some(worker_args.ttl()),
                ticket_ttl: args.ticket_ttl,
            };
            with_pool!(&place, name, false, tuning, |pool| {
                torture::worker(pool, worker_args).await
            })
        }
        Command::Serve(serve_args) => {
            let tuning = Tuning {
                lease_ttl: Some(serve_args.lease_ttl),
                ticket_ttl: args.ticket_ttl,
            };
            with_pool!(&place, name, true, tuning, |pool| {
                serve::run(pool, &place, tuning, serve_args).await
            })
        }
        command => {
            let existed = place.exists();
            // Only these may create a store; the rest open a ready one and
            // never create, adopt or migrate it (list must not write).
            let create = matches!(command, Command::Init | Command::Demo(_));
            let tuning = Tuning {
                lease_ttl: match &command {
                    Command::Demo(demo_args) => demo_args.lease_ttl,
                    Command::Acquire(acquire_args) => Some(acquire_args.ttl),
                    _ => None,
                },
                ticket_ttl: args.ticket_ttl,
            };
            with_pool!(&place, name, create, tuning, |pool| {
                execute(pool, &place, existed, command).await
            })
        }
    }
}

/// When the pool is empty but others in the store are not, says so on
/// stderr: a mistyped or forgotten `--pool` should not look like an empty
/// store.
async fn empty_pool_note<S: Store>(pool: &Pool<S>) -> Outcome {
    let pools = pool.pools().await?;
    if pools.iter().any(|other| other.name == pool.name()) {
        return Ok(());
    }
    let others: Vec<String> = pools
        .iter()
        .map(|other| format!("`{}` ({})", other.name, other.credentials))
        .collect();
    if !others.is_empty() {
        errln!(
            "note: pool `{}` is empty; this store holds {}: pick one with --pool NAME",
            pool.name(),
            others.join(", ")
        );
    }
    Ok(())
}

/// Runs a command that needs nothing but the open pool.
async fn execute<S: Store>(
    pool: Pool<S>,
    place: &Place,
    existed: Option<bool>,
    command: Command,
) -> Outcome {
    match command {
        Command::Init => {
            let total = pool.stats().await?.total;
            let (place, name) = (place.describe(), pool.name());
            match existed {
                Some(true) => {
                    outln!("{place}: store already there ({total} credentials in pool `{name}`)")
                }
                Some(false) => outln!("{place}: created an empty store"),
                None => outln!("{place}: ready ({total} credentials in pool `{name}`)"),
            }
            Ok(())
        }
        Command::List {
            json,
            ndjson,
            show_secrets,
            filter,
        } => {
            let format = match (json, ndjson) {
                (true, _) => output::Format::Json,
                (_, true) => output::Format::Ndjson,
                _ => output::Format::Table,
            };
            output::list(&pool, format, show_secrets, &filter).await?;
            empty_pool_note(&pool).await
        }
        Command::Pools { json } => output::pools(&pool.pools().await?, place, json),
        Command::Remove {
            name,
            disabled,
            force,
        } => {
            let names = match name {
                Some(name) => vec![name],
                None if disabled => {
                    let disabled = disabled_credentials(&pool).await?;
                    // All or none: a leased one stops the removal before it starts.
                    if let Some(held) = disabled.iter().find(|info| info.holders > 0 && !force) {
                        return Err(Failure(format!(
                            "disabled credential {:?} is in use by {} lease(s): wait for it to \
                             be released, or add --force to remove it anyway; nothing was removed",
                            held.name, held.holders
                        )));
                    }
                    disabled.into_iter().map(|info| info.name).collect()
                }
                None => unreachable!("clap requires a name or --disabled"),
            };
            for name in &names {
                remove_one(&pool, name, force).await?;
                outln!("removed {name:?}");
            }
            if disabled && names.is_empty() {
                outln!("no disabled credential in pool `{}`", pool.name());
            }
            Ok(())
        }
        Command::Disable { name, reason } => {
            pool.disable(&name, reason).await?;
            outln!("disabled {name:?}");
            Ok(())
        }
        Command::Set {
            name,
            capacity,
            secret_stdin,
            secret_env,
            extra,
            extra_stdin,
            no_extra,
            rate,
            no_rate,
            scope,
        } => {
            let mut change = credpool::CredentialChange::new();
            if rate.is_some() || no_rate {
                change = match scope {
                    Some(scope) => change.rate_for(scope, rate),
                    None => change.rate(rate),
                };
            } else if scope.is_some() {
                return Err(
                    "--scope says which quota --rate or --no-rate changes: give one of them".into(),
                );
            }
            if secret_stdin || secret_env.is_some() {
                change = change.secret(read_secret(secret_stdin, secret_env.as_deref())?);
            }
            if let Some(capacity) = capacity {
                change = change.capacity(capacity);
            }
            if extra_stdin {
                change = change.extra(read_stdin_text("extra text")?);
            } else if let Some(extra) = extra {
                change = change.extra(extra);
            } else if no_extra {
                change = change.no_extra();
            }
            pool.update(&name, change).await?;
            outln!("updated {name:?} in pool `{}`", pool.name());
            Ok(())
        }
        Command::Revoke { name } => {
            let ended = pool.revoke(&name).await?;
            match ended {
                0 => outln!("{name:?} had no lease out; nothing to revoke"),
                1 => outln!("revoked 1 lease of {name:?}: it is free now"),
                n => outln!("revoked {n} leases of {name:?}: it is free now"),
            }
            Ok(())
        }
        Command::Enable { name, all } => {
            let names = match name {
                Some(name) => vec![name],
                None if all => disabled_credentials(&pool)
                    .await?
                    .into_iter()
                    .map(|info| info.name)
                    .collect(),
                None => unreachable!("clap requires a name or --all"),
            };
            for name in &names {
                pool.enable(name).await?;
                outln!("enabled {name:?}");
            }
            if all && names.is_empty() {
                outln!("no disabled credential in pool `{}`", pool.name());
            }
            Ok(())
        }
        Command::Stats { json } => {
            output::stats(&pool.stats().await?, json)?;
            empty_pool_note(&pool).await
        }
        Command::Export { show_secrets } => output::export(&pool, show_secrets).await,
        Command::Show {
            name,
            json,
            show_secrets,
        } => output::show(&pool, &name, json, show_secrets).await,
        Command::Watch {
            interval,
            interval_ms,
            count,
        } => {
            let interval = interval_ms.map_or(interval, Duration::from_millis);
            watch::run(&pool, interval.max(Duration::from_millis(50)), count).await
        }
        Command::Demo(demo_args) => demo::run(pool, place, demo_args).await,
        Command::Acquire(acquire_args) => leases::acquire(&pool, acquire_args).await,
        Command::Release(release_args) => leases::release(&pool, release_args).await,
        Command::ResetLocks(reset_args) => leases::reset_locks(&pool, reset_args).await,
        Command::DefaultRate { rate, none, scope } => {
            if rate.is_none() && !none {
                if scope.is_some() {
                    return Err(
                        "--scope says which default to set or remove: give a rate, or --none"
                            .into(),
                    );
                }
                let defaults = pool.default_rates().await?;
                if defaults.is_empty() {
                    outln!("no default quota in pool `{}`", pool.name());
                }
                for (scope, rate) in defaults {
                    outln!(
                        "{rate} in {}",
                        scope.map_or("every scope".to_string(), |scope| format!(
                            "scope {scope:?}"
                        ))
                    );
                }
                return Ok(());
            }
            pool.set_default_rate(scope.as_deref(), rate).await?;
            let scope = scope.map_or("every scope".to_string(), |scope| {
                format!("scope {scope:?}")
            });
            match rate {
                Some(rate) => outln!("default quota {rate} in {scope} of pool `{}`", pool.name()),
                None => outln!(
                    "no default quota in {scope} of pool `{}` any more",
                    pool.name()
                ),
            }
            Ok(())
        }
        Command::Import { .. }
        | Command::Add { .. }
        | Command::Torture(_)
        | Command::TortureWorker(_)
        | Command::Serve(_) => {
            unreachable!("run opens the pool for these itself")
        }
        Command::Completions { .. } | Command::Man => {
            unreachable!("main prints these before any store is opened")
        }
    }
}

/// A quota as `--rate` takes it: `N/DURATION`.
pub(crate) fn parse_rate(text: &str) -> Result<credpool::Rate, String> {
    text.parse().map_err(|error: Error| error.to_string())
}

/// The pool's disabled credentials, in list order.
async fn disabled_credentials<S: Store>(
    pool: &Pool<S>,
) -> Result<Vec<credpool::CredentialInfo>, Failure> {
    Ok(pool
        .list()
        .await?
        .into_iter()
        .filter(|info| matches!(info.state, credpool::CredentialState::Disabled { .. }))
        .collect())
}

/// Removes one credential; a leased one only with `force`.
async fn remove_one<S: Store>(pool: &Pool<S>, name: &str, force: bool) -> Outcome {
    if force {
        pool.remove_forced(name).await?;
        return Ok(());
    }
    pool.remove(name).await.map_err(|error| match error {
        // The library's "remove it with force" is a Rust call; here the way
        // is the flag, said once.
        Error::InUse { name, holders } => Failure(format!(
            "credential {name:?} is in use by {holders} lease(s): wait for it to \
             be released, or add --force to remove it anyway"
        )),
        other => other.into(),
    })
}

/// Reads a secret from stdin or an environment variable.
/// All of stdin, without one final line break.
fn read_stdin_text(what: &str) -> Result<String, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|error| Failure(format!("cannot read the {what} from stdin: {error}")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

fn read_secret(from_stdin: bool, from_env: Option<&str>) -> Result<String, Failure> {
    use std::io::IsTerminal;
    let secret = match (from_stdin, from_env) {
        (_, Some(variable)) => std::env::var(variable).map_err(|_| {
            Failure(format!(
                "environment variable {variable} is not set (or not UTF-8)"
            ))
        })?,
        (true, None) if std::io::stdin().is_terminal() => {
            // Typed at a terminal: asked for, and not shown as it is typed.
            rpassword::prompt_password("secret (not shown): ").map_err(|error| {
                Failure(format!("cannot read the secret from the terminal: {error}"))
            })?
        }
        (true, None) => read_stdin_text("secret")?,
        (false, None) => {
            return Err("give the secret with --secret-stdin or --secret-env VAR".into())
        }
    };
    // An empty secret is refused by the same validation as an import's.
    Ok(secret)
}

#[cfg(test)]
mod tests {
    /// clap checks every command's arguments against each other (a
    /// conflict with an argument a subcommand does not have, say) only when
    /// that command is parsed; this checks them all at once.
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
