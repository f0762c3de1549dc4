//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format
//! (prometheus-client). Counters come from the pools' events in this
//! process; gauges are read from the store at each scrape, so they count
//! every process that shares it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use credpool::{Event, Pool, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::auth::Role;
use super::error::ApiError;
use super::{App, Reopen};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    pool: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    method: String,
    route: String,
    status: u16,
}

type WaitFamily = Family<PoolLabel, Histogram, fn() -> Histogram>;

pub(crate) struct Metrics {
    registry: Registry,
    grants: Family<PoolLabel, Counter>,
    releases: Family<OutcomeLabel, Counter>,
    expiries: Family<PoolLabel, Counter>,
    cool_downs: Family<PoolLabel, Counter>,
    disables: Family<PoolLabel, Counter>,
    acquire_wait: WaitFamily,
    credentials: Family<StateLabel, Gauge>,
    leases: Family<PoolLabel, Gauge>,
    waiters: Family<PoolLabel, Gauge>,
    http_leases: Family<PoolLabel, Gauge>,
    http_leases_lost: Family<PoolLabel, Counter>,
    requests: Family<RequestLabel, Counter>,
}

fn wait_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            grants: Family::default(),
            releases: Family::default(),
            expiries: Family::default(),
            cool_downs: Family::default(),
            disables: Family::default(),
            acquire_wait: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
            credentials: Family::default(),
            leases: Family::default(),
            waiters: Family::default(),
            http_leases: Family::default(),
            http_leases_lost: Family::default(),
            requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "credpool_grants",
            "Leases granted (in this process)",
            metrics.grants.clone(),
        );
        registry.register(
            "credpool_releases",
            "Leases released, by outcome (in this process)",
            metrics.releases.clone(),
        );
        registry.register(
            "credpool_expiries",
            "Leases that passed their TTL and were reclaimed",
            metrics.expiries.clone(),
        );
        registry.register(
            "credpool_cool_downs",
            "Releases that cooled a credential down (a cool-down or a reported rate limit)",
            metrics.cool_downs.clone(),
        );
        registry.register(
            "credpool_disables",
            "Credentials disabled",
            metrics.disables.clone(),
        );
        registry.register_with_unit(
            "credpool_acquire_wait",
            "How long a grant waited in line",
            Unit::Seconds,
            metrics.acquire_wait.clone(),
        );
        registry.register(
            "credpool_credentials",
            "Credentials by state (across every process of the store)",
            metrics.credentials.clone(),
        );
        registry.register(
            "credpool_leases",
            "Leases out now (across every process of the store)",
            metrics.leases.clone(),
        );
        registry.register(
            "credpool_waiters",
            "Acquires waiting for a credential",
            metrics.waiters.clone(),
        );
        registry.register(
            "credpool_http_leases",
            "Leases this server holds for HTTP clients",
            metrics.http_leases.clone(),
        );
        registry.register(
            "credpool_http_leases_lost",
            "HTTP leases whose TTL passed without a renew (the store takes each back, and counts it \
             in credpool_expiries, when it next reclaims)",
            metrics.http_leases_lost.clone(),
        );
        registry.register(
            "credpool_http_requests",
            "HTTP requests, by route and status",
            metrics.requests.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts the pool's events until the shutdown.
    pub(crate) fn watch<S: Store>(&self, pool: &Pool<S>, mut shutdown: watch::Receiver<bool>) {
        let mut events = pool.subscribe();
        let label = PoolLabel {
            pool: pool.name().to_string(),
        };
        let (grants, releases, expiries, cool_downs, disables, wait) = (
            self.grants.get_or_create(&label).clone(),
            self.releases.clone(),
            self.expiries.get_or_create(&label).clone(),
            self.cool_downs.get_or_create(&label).clone(),
            self.disables.get_or_create(&label).clone(),
            self.acquire_wait.get_or_create(&label).clone(),
        );
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                match event {
                    Ok(Event::Acquired { waited, .. }) => {
                        grants.inc();
                        wait.observe(waited.as_secs_f64());
                    }
                    Ok(Event::Released { outcome, .. }) => {
                        releases
                            .get_or_create(&OutcomeLabel {
                                pool: label.pool.clone(),
                                outcome: outcome.label().to_string(),
                            })
                            .inc();
                    }
                    Ok(Event::Expired { .. }) => {
                        expiries.inc();
                    }
                    Ok(Event::CooledDown { .. } | Event::Limited { .. }) => {
                        cool_downs.inc();
                    }
                    Ok(Event::Disabled { .. }) => {
                        disables.inc();
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "metrics fell behind the pool's events");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Counts the HTTP leases of `pool` forgotten when their TTL passed.
    pub(crate) fn http_leases_lost(&self, pool: &str, count: u64) {
        self.http_leases_lost
            .get_or_create(&PoolLabel {
                pool: pool.to_string(),
            })
            .inc_by(count);
    }

    pub(crate) fn http_request(&self, method: &Method, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabel {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
    }
}

pub(crate) async fn scrape<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.allow(&headers, Role::Worker)?;
    let metrics = &app.metrics;
    for pool in app.open_pools().await {
        let stats = pool.stats().await?;
        let name = pool.name().to_string();
        let state = |state: &str| StateLabel {
            pool: name.clone(),
            state: state.to_string(),
        };
        let gauge = |state_name: &str, value: u64| {
            metrics
                .credentials
                .get_or_create(&state(state_name))
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge("available", stats.available);
        gauge("leased", stats.leased);
        gauge("cooling_down", stats.cooling_down);
        gauge("disabled", stats.disabled);
        let label = PoolLabel { pool: name.clone() };
        metrics
            .leases
            .get_or_create(&label)
            .set(i64::try_from(stats.leases).unwrap_or(i64::MAX));
        metrics
            .waiters
            .get_or_create(&label)
            .set(i64::try_from(stats.waiters).unwrap_or(i64::MAX));
        metrics
            .http_leases
            .get_or_create(&label)
            .set(i64::try_from(app.http_leases(&name)).unwrap_or(i64::MAX));
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry)
        .map_err(|error| ApiError::internal(format!("cannot write the metrics: {error}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
