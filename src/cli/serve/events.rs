//! `GET /v1/events`: the pool's events as Server-Sent Events, with a
//! snapshot of the pool every second (counts, grants per second, waiters,
//! the credentials cooling down or disabled, the busiest) for live views.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use credpool::store::Want;
use credpool::{CredentialState, Event, Pool, Store};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::auth::Role;
use super::error::ApiError;
use super::{lock, millis, App, Reopen};
use crate::cli::output::stats_json;

/// Above this many credentials the snapshot leaves out the lists (they
/// read every row), as `credpool watch` does.
const LIST_LIMIT: u64 = 100_000;
/// How many credentials each list of a snapshot shows at most.
const LISTED: usize = 50;
/// How often a snapshot is taken.
const EVERY: Duration = Duration::from_secs(1);

/// A pool at one moment, as JSON.
pub(crate) struct Snapshot(Value);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// The pool [default: the one served].
    pool: Option<String>,
}

pub(crate) async fn stream<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    app.allow(&headers, Role::Worker)?;
    let query = super::body::query(query)?;
    let name = query.pool.unwrap_or_else(|| app.primary.name().to_string());
    let pool = app.pool(&name).await?;
    let events = pool.subscribe();
    let snapshots = app.monitor(&pool);
    let shutdown = app.shutdown.clone();
    struct Reading {
        events: credpool::Events,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        shutdown: watch::Receiver<bool>,
        first: bool,
    }
    let reading = Reading {
        events,
        snapshots,
        shutdown,
        first: true,
    };
    let stream = futures_util::stream::unfold(reading, |mut reading| async move {
        if reading.first {
            reading.first = false;
            let snapshot = Arc::clone(&reading.snapshots.borrow_and_update());
            return Some((Ok(snapshot_event(&snapshot)), reading));
        }
        loop {
            enum Next {
                Event(Result<Event, RecvError>),
                Snapshot(bool),
                Stop,
            }
            let next = tokio::select! {
                event = reading.events.recv() => Next::Event(event),
                changed = reading.snapshots.changed() => Next::Snapshot(changed.is_ok()),
                _ = reading.shutdown.wait_for(|stop| *stop) => Next::Stop,
            };
            let sent = match next {
                Next::Event(Ok(event)) => match event_json(&event) {
                    Some((kind, data)) => SseEvent::default().event(kind).data(data.to_string()),
                    None => continue,
                },
                Next::Event(Err(RecvError::Lagged(missed))) => SseEvent::default()
                    .event("lagged")
                    .data(json!({"missed": missed}).to_string()),
                Next::Snapshot(true) => {
                    let snapshot = Arc::clone(&reading.snapshots.borrow_and_update());
                    snapshot_event(&snapshot)
                }
                Next::Event(Err(RecvError::Closed)) | Next::Snapshot(false) | Next::Stop => {
                    return None
                }
            };
            return Some((Ok(sent), reading));
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn snapshot_event(snapshot: &Snapshot) -> SseEvent {
    SseEvent::default()
        .event("snapshot")
        .data(snapshot.0.to_string())
}

/// An event of the pool as an SSE event's type and JSON data; `None` for
/// kinds this version does not know.
pub(crate) fn event_json(event: &Event) -> Option<(&'static str, Value)> {
    Some(match event {
        Event::Acquired {
            name,
            lease_id,
            waited,
        } => (
            "acquired",
            json!({"name": &**name, "lease_id": lease_id.get(), "waited_ms": waited.as_secs_f64() * 1e3}),
        ),
        Event::Released {
            name,
            lease_id,
            outcome,
        } => (
            "released",
            json!({"name": &**name, "lease_id": lease_id.get(), "outcome": outcome.label()}),
        ),
        Event::Expired { name, lease_id } => (
            "expired",
            json!({"name": &**name, "lease_id": lease_id.get()}),
        ),
        Event::CooledDown { name, until } => (
            "cooled_down",
            json!({"name": &**name, "until_ms": millis(*until)}),
        ),
        Event::Limited {
            name,
            scope,
            until,
            remaining,
        } => (
            "limited",
            json!({"name": &**name, "scope": scope.as_deref(), "until_ms": millis(*until), "remaining": remaining}),
        ),
        Event::Disabled { name, reason } => {
            ("disabled", json!({"name": &**name, "reason": reason}))
        }
        Event::Revoked { name, leases } => ("revoked", json!({"name": &**name, "leases": leases})),
        Event::Enabled { name } => ("enabled", json!({"name": &**name})),
        Event::Added { name } => ("added", json!({"name": &**name})),
        Event::Removed { name } => ("removed", json!({"name": &**name})),
        _ => return None,
    })
}

impl<S: Reopen> App<S> {
    /// The snapshots of a pool, taken every second while anyone reads them.
    pub(crate) fn monitor(self: &Arc<Self>, pool: &Pool<S>) -> watch::Receiver<Arc<Snapshot>> {
        let mut monitors = lock(&self.monitors);
        if let Some(receiver) = monitors.get(pool.name()) {
            return receiver.clone();
        }
        let first = Arc::new(Snapshot(json!({"pool": pool.name(), "stats": null})));
        let (sender, receiver) = watch::channel(first);
        monitors.insert(pool.name().to_string(), receiver.clone());
        let (app, pool) = (Arc::clone(self), pool.clone());
        tokio::spawn(async move {
            let mut before: Option<(Instant, u64, HashMap<String, u64>)> = None;
            let mut tick = tokio::time::interval(EVERY);
            while !app.shutting_down() {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = app.until_shutdown() => break,
                }
                // Only the monitor's own receiver (in the map): nobody reads.
                if sender.receiver_count() <= 1 {
                    before = None;
                    continue;
                }
                match take(&pool, &app, before.take()).await {
                    Ok((snapshot, now)) => {
                        before = Some(now);
                        let _ = sender.send(Arc::new(snapshot));
                    }
                    Err(error) => tracing::warn!("the dashboard's snapshot failed: {error}"),
                }
            }
        });
        receiver
    }

    /// The leases this server holds for HTTP clients in a pool.
    pub(crate) fn http_leases(&self, pool: &str) -> usize {
        lock(&self.leases)
            .values()
            .filter(|held| &*held.pool == pool)
            .count()
    }
}

type Readings = (Instant, u64, HashMap<String, u64>);

async fn take<S: Reopen>(
    pool: &Pool<S>,
    app: &App<S>,
    before: Option<Readings>,
) -> credpool::Result<(Snapshot, Readings)> {
    let stats = pool.stats().await?;
    let now = Instant::now();
    let grants_per_second = before.as_ref().map(|(at, uses, _)| {
        let seconds = now.duration_since(*at).as_secs_f64().max(1e-3);
        stats.uses.saturating_sub(*uses) as f64 / seconds
    });
    let mut snapshot = json!({
        "pool": pool.name(),
        "at_ms": millis(SystemTime::now()),
        "stats": stats_json(&stats),
        "grants_per_second": grants_per_second,
        "http_leases": app.http_leases(pool.name()),
    });
    let mut uses = HashMap::new();
    if stats.total <= LIST_LIMIT {
        let listed = pool.list().await?;
        let mut cooling = Vec::new();
        let mut disabled = Vec::new();
        let mut busiest = Vec::new();
        for c in &listed {
            match &c.state {
                CredentialState::Disabled { reason } if disabled.len() < LISTED => {
                    disabled.push(json!({"name": c.name, "reason": reason}));
                }
                CredentialState::CoolingDown { until } if cooling.len() < LISTED => {
                    cooling.push(json!({"name": c.name, "until_ms": millis(*until)}));
                }
                _ => {}
            }
            let earlier = before
                .as_ref()
                .and_then(|(_, _, uses)| uses.get(&c.name).copied())
                .unwrap_or(c.use_count);
            busiest.push((
                c.use_count.saturating_sub(earlier),
                c.name.as_str(),
                c.holders,
            ));
            uses.insert(c.name.clone(), c.use_count);
        }
        busiest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let busiest: Vec<Value> = busiest
            .into_iter()
            .filter(|(grants, _, _)| *grants > 0)
            .take(10)
            .map(|(grants, name, holders)| json!({"name": name, "grants": grants, "holders": holders}))
            .collect();
        snapshot["cooling"] = json!(cooling);
        snapshot["disabled"] = json!(disabled);
        snapshot["busiest"] = json!(busiest);
    } else {
        snapshot["lists_left_out"] = json!(format!(
            "the lists are left out above {LIST_LIMIT} credentials: they read every row"
        ));
    }
    Ok((Snapshot(snapshot), (now, stats.uses, uses)))
}

/// In how many seconds something may come free for `want`, for a
/// `Retry-After`: the earliest end of a lease, a cool-down or a block, read
/// from the pool when it is small enough to read; else 1.
pub(crate) async fn next_free_in<S: Store>(pool: &Pool<S>, want: &Want) -> u64 {
    const READ_UP_TO: u64 = 10_000;
    let Ok(stats) = pool.stats().await else {
        return 1;
    };
    if stats.total > READ_UP_TO {
        return 1;
    }
    let Ok(listed) = pool.list().await else {
        return 1;
    };
    let now = SystemTime::now();
    let earliest = listed
        .iter()
        .filter(|c| want.name().is_none_or(|name| c.name == name))
        .filter_map(|c| {
            let mut ends: Vec<SystemTime> = c
                .leases
                .iter()
                .filter_map(|lease| lease.expires_at)
                .collect();
            if let CredentialState::CoolingDown { until } = c.state {
                ends.push(until);
            }
            ends.extend(
                c.limits
                    .iter()
                    .filter(|limit| {
                        limit.scope.is_none() || limit.scope.as_deref() == want.scope_name()
                    })
                    .filter_map(|limit| limit.blocked_until.or(limit.reset_at)),
            );
            ends.into_iter().min()
        })
        .min();
    earliest
        .and_then(|at| at.duration_since(now).ok())
        .map_or(1, |wait| {
            wait.as_secs().clamp(1, 3600) + u64::from(wait.subsec_nanos() > 0)
        })
        .min(3600)
}
