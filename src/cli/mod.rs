//! The command line: parsing, opening the store, and one clear line per error.

/// `println!` that ends the program quietly when stdout's reader has gone
/// (`credpool list | head`), instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod demo;
mod import;
mod output;
mod watch;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use credpool::store::sqlite::SqliteStore;
use credpool::{Error, NewCredential, Pool};

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

pub(crate) fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "credpool",
    version,
    about = "Hand a pool of credentials to many workers: one worker per credential at a time, none ever lost.",
    after_help = "Examples:\n  credpool demo                          # 300 workers on 100 demo credentials, Ctrl-C to stop\n  credpool import accounts.json          # aio-credentials-pool's JSON or credpool's own\n  credpool list\n  credpool --db /var/lib/app/creds.db stats --json"
)]
struct Args {
    /// The store file.
    #[arg(
        long,
        global = true,
        env = "CREDPOOL_DB",
        default_value = "credpool.db"
    )]
    db: PathBuf,

    /// The pool within the store.
    #[arg(long, global = true, default_value = "default")]
    pool: String,

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
        after_help = "Examples:\n  printf '%s' \"$PASSWORD\" | credpool add alice --secret-stdin\n  API_KEY=... credpool add bot-7 --secret-env API_KEY --capacity 4"
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
        #[arg(long, default_value_t = 1)]
        capacity: u32,
    },

    /// Import credentials from a JSON file ("-" for stdin), all or nothing.
    #[command(
        after_help = "Formats, detected per entry:\n  aio-credentials-pool: [{\"username\": \"u\", \"password\": \"p\", \"cookie\": null}]\n  credpool:             [{\"name\": \"u\", \"secret\": \"p\", \"extra\": null, \"capacity\": 1}]\n\nExample:\n  credpool import accounts.json --skip-existing"
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
        after_help = "Examples:\n  credpool list\n  credpool list --json | jq '.[] | select(.state == \"disabled\")'"
    )]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print secrets and extra text too.
        #[arg(long)]
        show_secrets: bool,
    },

    /// Remove a credential (refused while it is leased, unless --force).
    #[command(after_help = "Example:\n  credpool remove alice")]
    Remove {
        /// The credential's name.
        name: String,
        /// Remove it even while leased; its holders' releases will fail.
        #[arg(long)]
        force: bool,
    },

    /// Disable a credential: it is not handed out until enabled.
    #[command(after_help = "Example:\n  credpool disable alice --reason \"banned by the site\"")]
    Disable {
        /// The credential's name.
        name: String,
        /// Why (shown by list).
        #[arg(long)]
        reason: String,
    },

    /// Enable a disabled credential.
    #[command(after_help = "Example:\n  credpool enable alice")]
    Enable {
        /// The credential's name.
        name: String,
    },

    /// Counts by state.
    #[command(after_help = "Example:\n  credpool stats --json")]
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },

    /// A live view of the pool, refreshed in place.
    #[command(after_help = "Example:\n  credpool watch --interval-ms 500")]
    Watch {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },

    /// Run N workers that acquire, work a random while, and release, until stopped.
    #[command(
        after_help = "Ctrl-C, SIGTERM or SIGHUP stop it gracefully: every credential comes back.\n\nExamples:\n  credpool demo\n  credpool demo --workers 50 --credentials 10 --work-ms 5..20 --duration 10"
    )]
    Demo(demo::DemoArgs),
}

pub(crate) fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store; `create` says whether a missing file may be created.
pub(crate) async fn open(
    args_db: &Path,
    pool: &str,
    create: bool,
) -> Result<Pool<SqliteStore>, Failure> {
    if !create && !args_db.exists() {
        return Err(Failure(format!(
            "{}: no store there: run `credpool init` (or `credpool import FILE`) first, or pass --db",
            args_db.display()
        )));
    }
    let store = SqliteStore::options(args_db).pool(pool).open().await?;
    Ok(Pool::new(store))
}

async fn run(args: Args) -> Outcome {
    let (db, pool_name) = (args.db.as_path(), args.pool.as_str());
    match args.command {
        Command::Init => {
            let existed = db.exists();
            let pool = open(db, pool_name, true).await?;
            let total = pool.stats().await?.total;
            if existed {
                outln!(
                    "{}: store already there ({total} credentials in pool `{pool_name}`)",
                    db.display()
                );
            } else {
                outln!("{}: created an empty store", db.display());
            }
            Ok(())
        }
        Command::Add {
            name,
            secret_stdin,
            secret_env,
            extra,
            capacity,
        } => {
            let secret = read_secret(secret_stdin, secret_env.as_deref())?;
            let pool = open(db, pool_name, true).await?;
            pool.add(
                NewCredential::new(name.as_str(), secret)
                    .maybe_extra(extra)
                    .capacity(capacity),
            )
            .await?;
            outln!("added {name:?} to pool `{pool_name}`");
            Ok(())
        }
        Command::Import {
            file,
            skip_existing,
        } => import::run(db, pool_name, &file, skip_existing).await,
        Command::List { json, show_secrets } => {
            let pool = open(db, pool_name, false).await?;
            output::list(&pool, json, show_secrets).await
        }
        Command::Remove { name, force } => {
            let pool = open(db, pool_name, false).await?;
            if force {
                pool.remove_forced(&name).await?;
            } else {
                pool.remove(&name).await.map_err(|error| match error {
                    Error::InUse { .. } => {
                        Failure(format!("{error}: add --force to remove it anyway"))
                    }
                    other => other.into(),
                })?;
            }
            outln!("removed {name:?}");
            Ok(())
        }
        Command::Disable { name, reason } => {
            let pool = open(db, pool_name, false).await?;
            pool.disable(&name, reason).await?;
            outln!("disabled {name:?}");
            Ok(())
        }
        Command::Enable { name } => {
            let pool = open(db, pool_name, false).await?;
            pool.enable(&name).await?;
            outln!("enabled {name:?}");
            Ok(())
        }
        Command::Stats { json } => {
            let pool = open(db, pool_name, false).await?;
            output::stats(&pool.stats().await?, json)
        }
        Command::Watch { interval_ms, count } => {
            let pool = open(db, pool_name, false).await?;
            watch::run(&pool, Duration::from_millis(interval_ms.max(50)), count).await
        }
        Command::Demo(demo_args) => {
            let pool = open(db, pool_name, true).await?;
            demo::run(pool, db, demo_args).await
        }
    }
}

/// Reads a secret from stdin or an environment variable.
fn read_secret(from_stdin: bool, from_env: Option<&str>) -> Result<String, Failure> {
    let secret = match (from_stdin, from_env) {
        (_, Some(variable)) => std::env::var(variable).map_err(|_| {
            Failure(format!(
                "environment variable {variable} is not set (or not UTF-8)"
            ))
        })?,
        (true, None) => {
            let mut secret = String::new();
            std::io::stdin()
                .read_to_string(&mut secret)
                .map_err(|error| Failure(format!("cannot read the secret from stdin: {error}")))?;
            if secret.ends_with('\n') {
                secret.pop();
                if secret.ends_with('\r') {
                    secret.pop();
                }
            }
            secret
        }
        (false, None) => {
            return Err("give the secret with --secret-stdin or --secret-env VAR".into())
        }
    };
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(secret)
}
