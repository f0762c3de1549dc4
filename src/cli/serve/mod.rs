//! `credpool serve`: a pool over HTTP for workers in any language.
//!
//! A versioned JSON API under `/v1/` (leases, credentials, stats, admin),
//! a stream of the pool's events as Server-Sent Events, a live dashboard at
//! `/`, and Prometheus metrics at `/metrics`. Leases held over HTTP are kept
//! here by an opaque token and always have a TTL: a client that stops
//! renewing loses its lease, and one that disconnects while it waits leaks
//! nothing (the wait is dropped, which the pool undoes).

/// Prints a line of the server's own to stdout. Unlike the other commands'
/// output, a reader that went away (`credpool serve | head -n1`, to read
/// the address) is no reason to stop: the server goes on serving.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::write_quietly(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        )
    };
}

mod api;
mod auth;
mod body;
mod error;
mod events;
mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use credpool::{Lease, Pool, Store};
use tokio::sync::watch;

use super::{duration, Failure, Outcome, Place, Tuning};

/// `credpool serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// The address and port to listen on (port 0: any free one). An address
    /// other than loopback needs auth (--auth-file or the token variables).
    #[arg(
        short,
        long,
        default_value = "127.0.0.1:8080",
        value_name = "ADDRESS:PORT"
    )]
    listen: SocketAddr,
    /// Bearer tokens, one `ROLE TOKEN` a line (ROLE: worker or admin; `#`
    /// starts a comment). Also read: $CREDPOOL_WORKER_TOKEN and
    /// $CREDPOOL_ADMIN_TOKEN (several tokens separated by commas).
    #[arg(long, value_name = "PATH")]
    auth_file: Option<PathBuf>,
    /// How long an HTTP lease lives unless renewed, when the request does
    /// not ask for another TTL.
    #[arg(long, default_value = "60s", value_parser = duration::parse_positive, value_name = "DURATION")]
    pub(crate) lease_ttl: Duration,
    /// The longest TTL a request may ask for.
    #[arg(long, default_value = "1h", value_parser = duration::parse_positive, value_name = "DURATION")]
    max_ttl: Duration,
    /// The longest `wait` a request may ask for (a long-poll).
    #[arg(long, default_value = "60s", value_parser = duration::parse, value_name = "DURATION")]
    max_wait: Duration,
    /// The largest request body in bytes (an import's JSON).
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    max_body: usize,
}

/// A store that `serve` can open more pools of, by name, besides the one
/// it was started with (a request may name any pool in the store).
pub(crate) trait Reopen: Store {
    /// Opens pool `name` of the store at `place`.
    fn reopen(
        place: &Place,
        name: &str,
        tuning: Tuning,
    ) -> impl std::future::Future<Output = Result<Option<Pool<Self>>, Failure>> + Send;
}

impl Reopen for credpool::store::sqlite::SqliteStore {
    async fn reopen(
        place: &Place,
        name: &str,
        tuning: Tuning,
    ) -> Result<Option<Pool<Self>>, Failure> {
        match place {
            Place::File(path) => Ok(Some(Place::open_file(path, name, false, tuning).await?)),
            _ => Ok(None),
        }
    }
}

impl Reopen for credpool::MemoryStore {
    /// The memory store holds one pool.
    async fn reopen(_: &Place, _: &str, _: Tuning) -> Result<Option<Pool<Self>>, Failure> {
        Ok(None)
    }
}

#[cfg(feature = "postgres")]
impl Reopen for credpool::store::postgres::PostgresStore {
    async fn reopen(
        place: &Place,
        name: &str,
        tuning: Tuning,
    ) -> Result<Option<Pool<Self>>, Failure> {
        match place {
            Place::Postgres { url, schema } => {
                Ok(Some(Place::open_postgres(url, schema, name, tuning).await?))
            }
            _ => Ok(None),
        }
    }
}

/// What the handlers share.
pub(crate) struct App<S: Store> {
    place: Place,
    tuning: Tuning,
    primary: Pool<S>,
    /// The other pools opened so far, by name.
    others: tokio::sync::Mutex<HashMap<String, Pool<S>>>,
    leases: Mutex<HashMap<String, Arc<Held<S>>>>,
    tokens: auth::Tokens,
    metrics: metrics::Metrics,
    monitors: Mutex<HashMap<String, watch::Receiver<Arc<events::Snapshot>>>>,
    shutdown: watch::Receiver<bool>,
    lease_ttl: Duration,
    max_ttl: Duration,
    max_wait: Duration,
    max_body: usize,
    /// Whether the store outlives this process (leases are left to it at shutdown).
    persistent: bool,
    lease_keys: LeaseKeys,
}

/// A lease an HTTP client holds, under its token.
pub(crate) struct Held<S: Store> {
    pool: Arc<str>,
    /// Its expiry, in ms since the epoch (what the reaper reads).
    expires_ms: AtomicU64,
    /// `None` once released (a renew that raced the release finds nothing).
    lease: tokio::sync::Mutex<Option<Lease<S>>>,
}

/// Makes lease tokens nobody can guess: 128 bits from two SipHash keys that
/// the standard library seeds from the operating system, over a counter.
struct LeaseKeys {
    keys: [std::collections::hash_map::RandomState; 2],
    counter: AtomicU64,
}

impl LeaseKeys {
    fn new() -> Self {
        Self {
            keys: [Default::default(), Default::default()],
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        use std::hash::BuildHasher;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let [a, b] = &self.keys;
        format!("{:016x}{:016x}", a.hash_one(n), b.hash_one(n))
    }
}

impl<S: Reopen> App<S> {
    /// The state of a server of `pool`, which stops when `shutdown` turns true.
    fn new(
        pool: Pool<S>,
        place: &Place,
        tuning: Tuning,
        args: &ServeArgs,
        tokens: auth::Tokens,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let app = Arc::new(App {
            place: place.clone(),
            tuning,
            primary: pool,
            others: Default::default(),
            leases: Default::default(),
            metrics: metrics::Metrics::new(),
            monitors: Default::default(),
            shutdown,
            lease_ttl: args.lease_ttl,
            max_ttl: args.max_ttl,
            max_wait: args.max_wait,
            max_body: args.max_body,
            persistent: !matches!(place, Place::Memory),
            lease_keys: LeaseKeys::new(),
            tokens,
        });
        app.metrics.watch(&app.primary, app.shutdown.clone());
        app
    }

    /// The pool a request names: 404 unless it is the one served or one
    /// the store holds.
    pub(crate) async fn pool(self: &Arc<Self>, name: &str) -> Result<Pool<S>, error::ApiError> {
        if name == self.primary.name() {
            return Ok(self.primary.clone());
        }
        let mut others = self.others.lock().await;
        if let Some(pool) = others.get(name) {
            return Ok(pool.clone());
        }
        let pools = self.primary.pools().await.map_err(error::ApiError::from)?;
        let unknown = || {
            let mut names: Vec<String> = pools.iter().map(|p| format!("`{}`", p.name)).collect();
            if !pools.iter().any(|p| p.name == self.primary.name()) {
                names.insert(0, format!("`{}`", self.primary.name()));
            }
            error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_pool",
                format!(
                    "no pool named {name:?}: this server has {}",
                    names.join(", ")
                ),
            )
        };
        if !pools.iter().any(|p| p.name == name) {
            return Err(unknown());
        }
        let tuning = self.tuning;
        let Some(pool) = S::reopen(&self.place, name, tuning)
            .await
            .map_err(|Failure(message)| error::ApiError::internal(message))?
        else {
            return Err(unknown());
        };
        others.insert(name.to_string(), pool.clone());
        drop(others);
        self.metrics.watch(&pool, self.shutdown.clone());
        Ok(pool)
    }

    /// Every pool opened so far, the served one first.
    pub(crate) async fn open_pools(&self) -> Vec<Pool<S>> {
        let mut pools = vec![self.primary.clone()];
        pools.extend(self.others.lock().await.values().cloned());
        pools
    }

    /// Keeps a lease for its client; returns its token.
    fn keep(&self, pool: &str, lease: Lease<S>) -> String {
        let token = self.lease_keys.next();
        let expires_ms = lease.expires_at().map_or(u64::MAX, millis);
        let held = Arc::new(Held {
            pool: Arc::from(pool),
            expires_ms: AtomicU64::new(expires_ms),
            lease: tokio::sync::Mutex::new(Some(lease)),
        });
        lock(&self.leases).insert(token.clone(), held);
        token
    }

    /// The lease under `token`, if this server holds it.
    fn held(&self, token: &str) -> Option<Arc<Held<S>>> {
        lock(&self.leases).get(token).cloned()
    }

    /// Takes the lease under `token` of `pool` out of the books (a
    /// release), in one look at them; `None` when this server holds no such
    /// lease of that pool.
    fn take(&self, pool: &str, token: &str) -> Option<Arc<Held<S>>> {
        let mut leases = lock(&self.leases);
        if leases.get(token).is_none_or(|held| *held.pool != *pool) {
            return None;
        }
        leases.remove(token)
    }

    /// Whether a shutdown has begun.
    pub(crate) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when a shutdown begins.
    pub(crate) async fn until_shutdown(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error: the sender is gone, which is a shutdown too.
        let _ = shutdown.wait_for(|stop| *stop).await;
    }

    /// Forgets the leases whose TTL has passed: the store has taken them
    /// back (or will at the next grant), so nothing is released here.
    fn reap(&self) -> usize {
        let now = millis(SystemTime::now());
        let mut expired = Vec::new();
        let mut leases = lock(&self.leases);
        leases.retain(|_, held| {
            if held.expires_ms.load(Ordering::Relaxed) > now {
                return true;
            }
            // A renew (or release) holds the lock: leave the entry to it and
            // look again at the next tick. Dropping it here would drop the
            // lease while the renew tells its client that it still holds it.
            let Ok(mut lease) = held.lease.try_lock() else {
                return true;
            };
            if held.expires_ms.load(Ordering::Relaxed) > now {
                return true;
            }
            if let Some(lease) = lease.take() {
                expired.push((Arc::clone(&held.pool), lease));
            }
            false
        });
        drop(leases);
        let forgotten = expired.len();
        let mut by_pool: HashMap<Arc<str>, u64> = HashMap::new();
        for (pool, lease) in expired {
            *by_pool.entry(pool).or_default() += 1;
            let _ = lease.into_token();
        }
        for (pool, count) in by_pool {
            tracing::info!(%pool, count, "HTTP leases passed their TTL without a renew");
            self.metrics.http_leases_lost(&pool, count);
        }
        forgotten
    }
}

/// A std mutex's guard, whether or not a holder panicked (the maps stay
/// usable: every change to them is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Runs the server until SIGINT or SIGTERM.
pub(crate) async fn run<S: Reopen>(
    pool: Pool<S>,
    place: &Place,
    tuning: Tuning,
    args: ServeArgs,
) -> Outcome {
    if args.lease_ttl < auth::MIN_TTL {
        return Err(Failure(format!(
            "--lease-ttl {}: an HTTP lease lives at least {}, so that a renew can arrive in time",
            humantime::format_duration(args.lease_ttl),
            humantime::format_duration(auth::MIN_TTL)
        )));
    }
    if args.max_ttl < args.lease_ttl {
        return Err(Failure(format!(
            "--max-ttl {} is shorter than --lease-ttl {}: raise --max-ttl, or lower --lease-ttl",
            humantime::format_duration(args.max_ttl),
            humantime::format_duration(args.lease_ttl)
        )));
    }
    let tokens = auth::Tokens::load(args.auth_file.as_deref())?;
    if !args.listen.ip().is_loopback() && tokens.is_open() {
        return Err(Failure(format!(
            "refusing to listen on {} without auth: anyone who can reach it could take the \
             credentials. Give tokens (--auth-file PATH, or $CREDPOOL_WORKER_TOKEN and \
             $CREDPOOL_ADMIN_TOKEN), or listen on loopback (127.0.0.1)",
            args.listen
        )));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| Failure(format!("cannot listen on {}: {error}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|error| Failure(format!("cannot listen on {}: {error}", args.listen)))?;
    let (stop, shutdown) = watch::channel(false);
    let app = App::new(pool.clone(), place, tuning, &args, tokens, shutdown);
    let reaper = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while !app.shutting_down() {
                tokio::select! {
                    _ = tick.tick() => {
                        app.reap();
                    }
                    () = app.until_shutdown() => {}
                }
            }
        })
    };
    let auth_note = if app.tokens.is_open() {
        "no auth (loopback only)".to_string()
    } else {
        app.tokens.describe()
    };
    say!(
        "credpool serve: listening on http://{address} (pool `{}` of {}; {auth_note}; lease TTL {})",
        pool.name(),
        place.describe(),
        humantime::format_duration(args.lease_ttl)
    );
    say!("  dashboard http://{address}/   API http://{address}/v1/   metrics http://{address}/metrics");
    let router = api::router(Arc::clone(&app));
    let signalled = async move {
        let why = stop_signal().await;
        tracing::info!("{why}: stopping");
        errln!("credpool serve: {why}; answering waiting requests with 503 and stopping");
        let _ = stop.send(true);
    };
    // Small answers go out at once, not after the peer's delayed ACK.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {error}");
        }
    });
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signalled)
    .await;
    let _ = reaper.await;
    let held: Vec<Arc<Held<S>>> = lock(&app.leases).drain().map(|(_, held)| held).collect();
    let count = held.len();
    for held in held {
        let Some(lease) = held.lease.lock().await.take() else {
            continue;
        };
        if app.persistent {
            // The store keeps it until its TTL or a release by token.
            let _ = lease.into_token();
        } else if let Err(error) = lease.release().await {
            tracing::warn!("a lease could not be released at shutdown: {error}");
        }
    }
    if app.persistent {
        say!("credpool serve: stopped; {count} HTTP leases left to the store until their TTL");
    } else {
        say!("credpool serve: stopped; {count} HTTP leases released");
    }
    served.map_err(|error| Failure(format!("the server failed: {error}")))
}

/// Resolves with the name of the first stop signal.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = terminate.recv() => "terminated",
                _ = tokio::signal::ctrl_c() => "interrupted",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's state over a memory pool of one credential, without a
    /// listener.
    fn app() -> (Arc<App<credpool::MemoryStore>>, watch::Sender<bool>) {
        let pool = Pool::new(credpool::MemoryStore::new());
        let args = ServeArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            auth_file: None,
            lease_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            max_wait: Duration::from_secs(60),
            max_body: 1024,
        };
        let (stop, shutdown) = watch::channel(false);
        let app = App::new(
            pool,
            &Place::Memory,
            Tuning::default(),
            &args,
            auth::Tokens::none(),
            shutdown,
        );
        (app, stop)
    }

    /// The reaper forgets an HTTP lease past its TTL, but never one a renew
    /// (or release) is working on: it would drop the lease while the renew
    /// tells its client that it still holds it. After the renew, the new
    /// expiry keeps it.
    #[tokio::test]
    async fn the_reaper_never_drops_a_lease_a_renew_holds() {
        let (app, _stop) = app();
        let pool = app.primary.clone();
        pool.add(credpool::NewCredential::new("c", "s"))
            .await
            .unwrap();
        let lease = pool.acquire().await.unwrap();
        let token = app.keep(pool.name(), lease);
        let held = app.held(&token).unwrap();
        // A renew takes the lock, and the TTL passes while it talks to the store.
        let mut renewing = held.lease.lock().await;
        held.expires_ms.store(0, Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(app.reap(), 0, "nothing is forgotten while a renew works");
            assert!(app.held(&token).is_some());
        }
        let renewed = renewing.as_mut().unwrap();
        renewed.renew_for(Duration::from_secs(60)).await.unwrap();
        let expires = renewed.expires_at().map_or(u64::MAX, millis);
        held.expires_ms.store(expires, Ordering::Relaxed);
        drop(renewing);
        assert_eq!(app.reap(), 0, "the renewed lease is kept");
        assert!(app.held(&token).is_some());
        assert!(
            pool.try_acquire().await.unwrap().is_none(),
            "it is still held"
        );
        // Past its TTL, with nobody working on it, it is forgotten.
        held.expires_ms.store(0, Ordering::Relaxed);
        assert_eq!(app.reap(), 1);
        assert!(app.held(&token).is_none());
    }
}
