//! A small pool of connections, each with the hot statements prepared, and
//! the one connection per store that listens for other processes' releases.
//!
//! Every operation of the store is one statement in its own transaction, so
//! a connection is shared, not checked out: tokio-postgres pipelines the
//! statements of concurrent callers on it. A connection found closed is
//! replaced on its next use. Reads of several statements that must see one
//! snapshot take the store's one reader connection in turn.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket, Statement};

use super::tls::Tls;

use super::sql::Sql;
use crate::error::Result;

/// One connection and its prepared statements.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) acquire: Statement,
    pub(crate) acquire_many: Statement,
    pub(crate) release: Statement,
    pub(crate) release_handing: Statement,
    pub(crate) renew: Statement,
    pub(crate) reclaim: Statement,
    pub(crate) busy: Statement,
    pub(crate) acquire_for: Statement,
    pub(crate) busy_for: Statement,
    pub(crate) serve: Statement,
    pub(crate) claim: Statement,
}

/// Opens a connection, over TLS when `tls` says, driven by a task on the
/// current runtime.
pub(crate) async fn connect(config: &Config, tls: &Tls) -> Result<Client> {
    async fn driven<T>(
        config: &Config,
        tls: T,
    ) -> std::result::Result<Client, tokio_postgres::Error>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = config.connect(tls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection ended");
            }
        });
        Ok(client)
    }
    let connected = match tls {
        Tls::Off => driven(config, NoTls).await,
        Tls::On(rustls) => driven(config, rustls.clone()).await,
    };
    let client = connected.map_err(|error| tls.explain(error.into()))?;
    // The holder the leases granted on this connection record (the
    // column's default, and the claims).
    client
        .execute(
            "SELECT set_config('credpool.holder', $1, false)",
            &[&crate::ids::this_process()],
        )
        .await?;
    Ok(client)
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("slots", &self.slots.len())
            .field("tls", &matches!(self.tls, Tls::On(_)))
            .finish_non_exhaustive()
    }
}

pub(crate) struct Connections {
    pub(crate) config: Config,
    pub(crate) tls: Tls,
    sql: Arc<Sql>,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// The connection of the reads that take several statements in one
    /// snapshot (a page of `list`: credentials, limits, leases), which a
    /// shared connection cannot give: its transaction would take in the
    /// statements of others. Opened on first use.
    reader: tokio::sync::Mutex<Option<Client>>,
}

#[derive(Debug, Default)]
struct Slot {
    open: Mutex<Option<Arc<Conn>>>,
    /// Held while (re)connecting, so callers wait for one new connection
    /// instead of each opening their own.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn current(&self) -> Option<Arc<Conn>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.as_ref()
            .filter(|conn| !conn.client.is_closed())
            .cloned()
    }
}

impl Connections {
    pub(crate) fn new(config: Config, tls: Tls, sql: Arc<Sql>, size: usize) -> Self {
        Self {
            config,
            tls,
            sql,
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            reader: tokio::sync::Mutex::default(),
        }
    }

    /// The connection for reads of several statements in one snapshot,
    /// the caller's alone until it drops the guard; (re)opened when it is
    /// not open.
    pub(crate) async fn reader(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Client>> {
        let mut reader = self.reader.lock().await;
        let client = match reader.take() {
            Some(client) if !client.is_closed() => client,
            _ => {
                let client = connect(&self.config, &self.tls).await?;
                client.batch_execute("SET jit = off").await?;
                client
            }
        };
        Ok(tokio::sync::MutexGuard::map(reader, |reader| {
            reader.insert(client)
        }))
    }

    /// A connection, taken in turn; opened (again) if it is not open.
    pub(crate) async fn get(&self) -> Result<Arc<Conn>> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[index];
        if let Some(conn) = slot.current() {
            return Ok(conn);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(conn) = slot.current() {
            return Ok(conn);
        }
        let client = connect(&self.config, &self.tls).await?;
        // Plan each statement once: a custom plan per call (the default for
        // the first calls, and for good when the generic plan looks costlier)
        // costs more server time than the statement itself. And never
        // JIT-compile one: each touches a few rows, and compiling costs a
        // hundred milliseconds or more (the plans are kept cheap enough that
        // a server with JIT on would not, which a test checks).
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan; SET jit = off")
            .await?;
        let conn = Arc::new(Conn {
            acquire: client.prepare(&self.sql.acquire).await?,
            acquire_many: client.prepare(&self.sql.acquire_many).await?,
            release: client.prepare(&self.sql.release).await?,
            release_handing: client.prepare(&self.sql.release_handing).await?,
            renew: client.prepare(&self.sql.renew).await?,
            reclaim: client.prepare(&self.sql.reclaim).await?,
            busy: client.prepare(&self.sql.busy).await?,
            acquire_for: client.prepare(&self.sql.acquire_for).await?,
            busy_for: client.prepare(&self.sql.busy_for).await?,
            serve: client.prepare(&self.sql.serve).await?,
            claim: client.prepare(&self.sql.claim).await?,
            client,
        });
        *slot.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }
}

/// Listens on `channel` and wakes `changed` for every notification about
/// `pool` addressed to `owner` (a credential was handed to its ticket). Reconnects after a failure, and
/// wakes `changed` once connected, for the releases it may have missed.
pub(crate) async fn listen(
    config: Config,
    tls: Tls,
    channel: String,
    pool: String,
    owner: String,
    changed: Arc<Notify>,
) {
    let mut pause = Duration::from_millis(50);
    loop {
        let listened = match &tls {
            Tls::Off => listen_once(&config, NoTls, &channel, &pool, &owner, &changed).await,
            Tls::On(rustls) => {
                listen_once(&config, rustls.clone(), &channel, &pool, &owner, &changed).await
            }
        };
        match listened {
            Ok(()) => pause = Duration::from_millis(50),
            Err(error) => {
                tracing::debug!(%error, "postgres listener failed; polling until it is back");
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

async fn listen_once<T>(
    config: &Config,
    tls: T,
    channel: &str,
    pool: &str,
    owner: &str,
    changed: &Notify,
) -> Result<()>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let statement = format!("LISTEN \"{channel}\"");
    let mut listening = std::pin::pin!(client.batch_execute(&statement));
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                done?;
                listened = true;
                changed.notify_waiters();
            }
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if let Some((to, about)) = note.payload().split_once(':') {
                        if about == pool && to == owner {
                            // A permit, kept when no waiter listens right now
                            // (the first is busy asking the store): the next
                            // one to listen asks again at once.
                            changed.notify_one();
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(()),
            }
        }
    }
}
