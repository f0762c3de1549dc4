//! The routes of `credpool serve` and their handlers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use credpool::store::Want;
use credpool::{Error, Limited, NewCredential, ReleaseOutcome};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Role;
use super::body::{self, duration, time};
use super::error::ApiError;
use super::{millis, App, Reopen};
use crate::cli::output::{info_json, stats_json};

/// Every route: method and path, as the OpenAPI document lists them (a
/// test checks that it lists each).
#[cfg(test)]
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/events"),
    ("get", "/v1/pools"),
    ("post", "/v1/pools/{pool}/leases"),
    ("post", "/v1/pools/{pool}/leases/{token}/renew"),
    ("post", "/v1/pools/{pool}/leases/{token}/release"),
    ("delete", "/v1/pools/{pool}/leases/{token}"),
    ("get", "/v1/pools/{pool}/stats"),
    ("get", "/v1/pools/{pool}/credentials"),
    ("post", "/v1/pools/{pool}/credentials"),
    ("post", "/v1/pools/{pool}/import"),
    ("get", "/v1/pools/{pool}/credentials/{name}"),
    ("delete", "/v1/pools/{pool}/credentials/{name}"),
    ("post", "/v1/pools/{pool}/credentials/{name}/disable"),
    ("post", "/v1/pools/{pool}/credentials/{name}/enable"),
    ("post", "/v1/pools/{pool}/credentials/{name}/revoke"),
    ("post", "/v1/pools/{pool}/reset-locks"),
];

/// The OpenAPI document, kept in the repository and served as it is.
pub(crate) const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// The dashboard: one page, its script and styles inside.
const DASHBOARD: &str = include_str!("dashboard.html");

pub(crate) fn router<S: Reopen>(app: Arc<App<S>>) -> Router {
    let limit = app.max_body;
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/healthz", get(healthz::<S>))
        .route("/metrics", get(super::metrics::scrape::<S>))
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/events", get(super::events::stream::<S>))
        .route("/v1/pools", get(pools::<S>))
        .route("/v1/pools/{pool}/leases", post(acquire::<S>))
        .route("/v1/pools/{pool}/leases/{token}/renew", post(renew::<S>))
        .route(
            "/v1/pools/{pool}/leases/{token}/release",
            post(release::<S>),
        )
        .route(
            "/v1/pools/{pool}/leases/{token}",
            delete(release_plain::<S>),
        )
        .route("/v1/pools/{pool}/stats", get(stats::<S>))
        .route(
            "/v1/pools/{pool}/credentials",
            get(list::<S>).post(add::<S>),
        )
        .route("/v1/pools/{pool}/import", post(import::<S>))
        .route(
            "/v1/pools/{pool}/credentials/{name}",
            get(show::<S>).delete(remove::<S>),
        )
        .route(
            "/v1/pools/{pool}/credentials/{name}/disable",
            post(disable::<S>),
        )
        .route(
            "/v1/pools/{pool}/credentials/{name}/enable",
            post(enable::<S>),
        )
        .route(
            "/v1/pools/{pool}/credentials/{name}/revoke",
            post(revoke::<S>),
        )
        .route("/v1/pools/{pool}/reset-locks", post(reset_locks::<S>))
        // After routing, so the log and the metrics see the route's template.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            access_log::<S>,
        ))
        .route_layer(axum::middleware::from_fn(no_query_on_post))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(json_rejections))
        .with_state(app)
}

/// Refuses a query string on a POST: its fields go in the JSON body, and a
/// `?wait=10s` taken silently would not wait.
async fn no_query_on_post(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && request.uri().query().is_some() {
        return ApiError::bad_request(
            "a POST takes its fields in the JSON body, not in the query string \
             (write {\"wait\": \"10s\"}, not ?wait=10s): see /v1/openapi.json",
        )
        .into_response();
    }
    next.run(request).await
}

/// Makes the plain-text answers of axum's own extractors (a path segment
/// that is not UTF-8, say) JSON errors like every other: every error of
/// the API is `{"error", "message"}`.
async fn json_rejections(response: Response) -> Response {
    let is_text = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"text/plain"));
    if !response.status().is_client_error() || !is_text {
        return response;
    }
    let status = response.status();
    let text = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "bad_request"
    };
    ApiError::new(status, code, text.trim().to_string()).into_response()
}

type Answer = Result<Response, ApiError>;

/// Logs each request at debug level: method, route template, status and
/// time. Never the path itself (it may hold a lease token) or a header.
async fn access_log<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    app.metrics.http_request(&method, &route, status);
    tracing::debug!(%method, route, status, elapsed = ?started.elapsed(), "HTTP request");
    response
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {method} {}: the API is listed at /v1/openapi.json",
            uri.path().chars().take(200).collect::<String>()
        ),
    )
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served on this path: the API is listed at /v1/openapi.json"),
    )
}

async fn healthz<S: Reopen>(State(app): State<Arc<App<S>>>) -> Answer {
    if app.shutting_down() {
        return Err(ApiError::shutting_down());
    }
    Ok(Json(json!({"ok": true})).into_response())
}

async fn pools<S: Reopen>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Answer {
    app.allow(&headers, Role::Worker)?;
    let pools = app.primary.pools().await?;
    let mut list: Vec<Value> = pools
        .iter()
        .map(|pool| json!({"name": pool.name, "credentials": pool.credentials}))
        .collect();
    if !pools.iter().any(|pool| pool.name == app.primary.name()) {
        list.insert(0, json!({"name": app.primary.name(), "credentials": 0}));
    }
    Ok(Json(json!({"served": app.primary.name(), "pools": list})).into_response())
}

/// `POST /v1/pools/{pool}/leases`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireRequest {
    /// A credential that may serve this scope now.
    scope: Option<String>,
    /// This credential, and no other.
    name: Option<String>,
    /// Units of one credential's capacity.
    units: Option<u32>,
    /// How long the lease lives unless renewed.
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Duration>,
    /// How long to wait for a credential to come free (a long-poll).
    #[serde(default, deserialize_with = "duration")]
    wait: Option<Duration>,
    /// A lease of this pool to release first (its `token`, and how it
    /// went): a worker's loop in one round trip.
    release: Option<ReleaseRequest>,
}

impl AcquireRequest {
    /// The lease to release first, with how it went (`release`).
    fn release(&mut self) -> Result<Option<(String, ReleaseOutcome)>, ApiError> {
        let Some(mut release) = self.release.take() else {
            return Ok(None);
        };
        let token = release.token.take().ok_or_else(|| {
            ApiError::bad_request(
                "field `release.token`: give the token of the lease to release first",
            )
        })?;
        // Its fields are inside `release`: say so.
        let outcome = release.outcome().map_err(|mut error| {
            error.message = error.message.replacen("field `", "field `release.", 1);
            error
        })?;
        Ok(Some((token, outcome)))
    }

    fn want(&self) -> Result<Want, ApiError> {
        let mut want = Want::any();
        if let Some(scope) = &self.scope {
            want = want.in_scope(scope).map_err(field("scope"))?;
        }
        if let Some(name) = &self.name {
            want = want.named(name).map_err(field("name"))?;
        }
        if let Some(units) = self.units {
            want = want.units(units).map_err(field("units"))?;
        }
        Ok(want)
    }
}

/// Maps an error of one field of the request to a 400 that names it.
fn field(name: &'static str) -> impl Fn(Error) -> ApiError {
    move |error| ApiError::bad_request(format!("field `{name}`: {error}"))
}

fn at(time: SystemTime) -> Value {
    json!(super::super::duration::rfc3339(time))
}

async fn acquire<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    app.allow(&headers, Role::Worker)?;
    let mut request: AcquireRequest = body::optional(body)?;
    let want = request.want()?;
    let ttl = app.ttl(request.ttl)?;
    let wait = request.wait.unwrap_or_default();
    if wait > app.max_wait {
        return Err(ApiError::bad_request(format!(
            "field `wait`: {} is longer than this server allows ({}, credpool serve --max-wait); \
             wait less and ask again",
            humantime::format_duration(wait),
            humantime::format_duration(app.max_wait)
        )));
    }
    let release = request.release()?;
    if app.shutting_down() {
        return Err(ApiError::shutting_down());
    }
    let pool = app.pool(&name).await?;
    // The release first: when it fails, nothing is acquired; once it is
    // made, it stays made whatever follows, and every answer says so.
    let Some((token, outcome)) = release else {
        return grant(&app, &pool, &want, ttl, wait, None).await;
    };
    let released = give_back(&app, pool.name(), &token, outcome).await?;
    grant(&app, &pool, &want, ttl, wait, Some(&released))
        .await
        .map_err(|error| error.released(released.json()))
}

/// The acquire itself: a lease for `want` within `wait`, kept with a TTL of
/// `ttl`; `released` is the release that came before it, if any.
async fn grant<S: Reopen>(
    app: &Arc<App<S>>,
    pool: &credpool::Pool<S>,
    want: &Want,
    ttl: Duration,
    wait: Duration,
    released: Option<&Released>,
) -> Answer {
    // A client that disconnects drops this future: the wait is undone by
    // the pool, and a grant that came is released by the lease's drop.
    let granted = tokio::select! {
        granted = async {
            if wait.is_zero() {
                pool.try_acquire_matching(want).await
            } else {
                match pool.acquire_matching_timeout(want, wait).await {
                    Err(Error::Timeout { .. }) => Ok(None),
                    other => other.map(Some),
                }
            }
        } => granted?,
        () = app.until_shutdown() => return Err(ApiError::shutting_down()),
    };
    let Some(mut lease) = granted else {
        let waited = if wait.is_zero() {
            "now (add \"wait\": \"10s\" to wait for one)".to_string()
        } else {
            format!("within {}", humantime::format_duration(wait))
        };
        let and_released = match released {
            Some(Released::Done { .. }) => " (the lease in `release` was released)",
            Some(Released::Pending { .. }) => {
                " (the release of the lease in `release` is pending: it is kept and committed later)"
            }
            None => "",
        };
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "none_free",
            format!(
                "no credential in pool `{}` came free{} {waited}{and_released}",
                pool.name(),
                if want.is_any() {
                    String::new()
                } else {
                    format!(" for {want}")
                }
            ),
        );
        error.retry_after = Some(super::events::next_free_in(pool, want).await);
        return Err(error);
    };
    if Some(ttl) != pool.lease_ttl() {
        lease.renew_for(ttl).await?;
    }
    let credential = lease.credential();
    let mut answer = json!({
        "pool": pool.name(),
        "name": credential.name(),
        "secret": credential.secret().expose(),
        "extra": credential.extra(),
        "units": lease.units(),
        "lease_id": lease.id().get(),
        "acquired_at": at(lease.acquired_at()),
        "ttl_seconds": ttl.as_secs_f64(),
    });
    if let Some(expires) = lease.expires_at() {
        answer["expires_at"] = at(expires);
        answer["expires_at_ms"] = json!(millis(expires));
    }
    if let Some(released) = released {
        answer["released"] = released.json();
    }
    let token = app.keep(pool.name(), lease);
    answer["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `POST …/renew`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Duration>,
}

async fn renew<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    app.allow(&headers, Role::Worker)?;
    let request: RenewRequest = body::optional(body)?;
    let ttl = app.ttl(request.ttl)?;
    let held = app
        .held(&token)
        .filter(|held| *held.pool == *pool)
        .ok_or_else(|| ApiError::unknown_lease(&token))?;
    let mut guard = held.lease.lock().await;
    let Some(lease) = guard.as_mut() else {
        return Err(ApiError::unknown_lease(&token));
    };
    match lease.renew_for(ttl).await {
        Ok(()) => {
            let expires = lease.expires_at();
            held.expires_ms
                .store(expires.map_or(u64::MAX, millis), Ordering::Relaxed);
            let mut answer = json!({"renewed": true, "ttl_seconds": ttl.as_secs_f64()});
            if let Some(expires) = expires {
                answer["expires_at"] = at(expires);
                answer["expires_at_ms"] = json!(millis(expires));
            }
            Ok(Json(answer).into_response())
        }
        Err(error @ Error::LeaseLost { .. }) => {
            if let Some(lease) = guard.take() {
                let _ = lease.into_token();
            }
            drop(guard);
            if app.take(&pool, &token).is_some() {
                app.metrics.http_leases_lost(&pool, 1);
            }
            Err(error.into())
        }
        Err(error) => Err(error.into()),
    }
}

/// `POST …/release`: how the lease went.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseRequest {
    /// The lease's token: only in an acquire's `release` (a release names
    /// it in its path).
    token: Option<String>,
    /// `success` (default), `cool-down`, `disable`.
    outcome: Option<String>,
    /// cool-down: for how long.
    #[serde(default, rename = "for", deserialize_with = "duration")]
    pause: Option<Duration>,
    /// cool-down: until when (instead of `for`).
    #[serde(default, deserialize_with = "time")]
    until: Option<SystemTime>,
    /// cool-down: only in this scope.
    scope: Option<String>,
    /// cool-down: requests left before `until` (as the API reported).
    remaining: Option<u32>,
    /// disable: why.
    reason: Option<String>,
}

impl ReleaseRequest {
    pub(crate) fn outcome(self) -> Result<ReleaseOutcome, ApiError> {
        let outcome = self.outcome.as_deref().unwrap_or("success");
        let cool_fields = self.pause.is_some()
            || self.until.is_some()
            || self.scope.is_some()
            || self.remaining.is_some();
        match outcome {
            "success" => {
                if cool_fields || self.reason.is_some() {
                    return Err(ApiError::bad_request(
                        "field `outcome`: `for`, `until`, `scope`, `remaining` and `reason` need \
                         \"outcome\": \"cool-down\" or \"disable\"",
                    ));
                }
                Ok(ReleaseOutcome::Success)
            }
            "cool-down" => {
                if self.reason.is_some() {
                    return Err(ApiError::bad_request(
                        "field `reason`: only a disable has a reason",
                    ));
                }
                let mut limited = match (self.pause, self.until) {
                    (Some(pause), None) => {
                        if self.scope.is_none() && self.remaining.is_none() {
                            return Ok(ReleaseOutcome::CoolDown(pause));
                        }
                        Limited::after(pause)
                    }
                    (None, Some(until)) => Limited::until(until),
                    (Some(_), Some(_)) => {
                        return Err(ApiError::bad_request(
                            "field `until`: give `for` or `until`, not both",
                        ))
                    }
                    (None, None) => {
                        return Err(ApiError::bad_request(
                            "field `for`: a cool-down needs `for` (\"15m\", or seconds) or `until` (RFC 3339)",
                        ))
                    }
                };
                if let Some(scope) = &self.scope {
                    limited = limited.scope(scope).map_err(field("scope"))?;
                }
                if let Some(remaining) = self.remaining {
                    limited = limited.remaining(remaining);
                }
                Ok(ReleaseOutcome::Limited(limited))
            }
            "disable" => {
                if cool_fields {
                    return Err(ApiError::bad_request(
                        "field `outcome`: a disable takes only a `reason`",
                    ));
                }
                match self.reason {
                    Some(reason) if !reason.trim().is_empty() => {
                        Ok(ReleaseOutcome::Disable(reason))
                    }
                    _ => Err(ApiError::bad_request(
                        "field `reason`: a disable needs a reason (\"banned by the site\")",
                    )),
                }
            }
            other => Err(ApiError::bad_request(format!(
                "field `outcome`: unknown outcome {:?}: write success, cool-down or disable",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }
}

async fn release<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    app.allow(&headers, Role::Worker)?;
    let request: ReleaseRequest = body::optional(body)?;
    if request.token.is_some() {
        return Err(ApiError::bad_request(
            "field `token`: a release names its lease in the path (POST …/leases/{token}/release)",
        ));
    }
    let outcome = request.outcome()?;
    Ok(give_back(&app, &pool, &token, outcome).await?.answer())
}

async fn release_plain<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, token)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    app.allow(&headers, Role::Worker)?;
    Ok(give_back(&app, &pool, &token, ReleaseOutcome::Success)
        .await?
        .answer())
}

/// A release's result: done, or kept to be committed later.
enum Released {
    Done {
        outcome: &'static str,
    },
    Pending {
        outcome: &'static str,
        message: String,
    },
}

impl Released {
    fn json(&self) -> Value {
        match self {
            Released::Done { outcome } => json!({"released": true, "outcome": outcome}),
            Released::Pending { outcome, message } => {
                json!({"released": "pending", "outcome": outcome, "message": message})
            }
        }
    }

    /// The answer to a release request: 200, or 202 when pending.
    fn answer(self) -> Response {
        let status = match self {
            Released::Done { .. } => StatusCode::OK,
            Released::Pending { .. } => StatusCode::ACCEPTED,
        };
        (status, Json(self.json())).into_response()
    }
}

/// Releases the lease under `token` in `pool` with `outcome`.
async fn give_back<S: Reopen>(
    app: &Arc<App<S>>,
    pool: &str,
    token: &str,
    outcome: ReleaseOutcome,
) -> Result<Released, ApiError> {
    let Some(held) = app.take(pool, token) else {
        return Err(ApiError::unknown_lease(token));
    };
    let label = outcome.label();
    // In a task of its own, from the wait for a renew's lock on: a client
    // that hangs up mid-release must not turn a disable or a cool-down
    // into a plain release (a lease dropped with its entry).
    let released = tokio::spawn(async move {
        let lease = held.lease.lock().await.take()?;
        Some(lease.release_with(outcome).await)
    })
    .await
    .map_err(|error| ApiError::internal(format!("the release failed: {error}")))?;
    let Some(released) = released else {
        return Err(ApiError::unknown_lease(token));
    };
    match released {
        Ok(()) => Ok(Released::Done { outcome: label }),
        Err(error @ Error::ReleasePending { .. }) => Ok(Released::Pending {
            outcome: label,
            message: error.to_string(),
        }),
        Err(error) => {
            if matches!(error, Error::LeaseLost { .. }) {
                app.metrics.http_leases_lost(pool, 1);
            }
            Err(error.into())
        }
    }
}

async fn stats<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    app.allow(&headers, Role::Worker)?;
    let pool = app.pool(&name).await?;
    let stats = pool.stats().await?;
    let mut answer = stats_json(&stats);
    answer["pool"] = json!(pool.name());
    answer["http_leases"] = json!(app.http_leases(pool.name()));
    Ok(Json(answer).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Credentials after this id (the `next` of the page before).
    after: Option<u64>,
    /// At most this many (default 100, at most 1,000).
    limit: Option<usize>,
    /// Only those in this state.
    state: Option<String>,
}

/// The states a list may be filtered by, as the credentials' `state` says
/// them (`cooling-down`, as the CLI writes it, is taken for `cooling`).
const STATES: [&str; 4] = ["available", "leased", "cooling", "disabled"];

async fn list<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    app.allow(&headers, Role::Worker)?;
    let mut query = body::query(query)?;
    if query.state.as_deref() == Some("cooling-down") {
        query.state = Some("cooling".into());
    }
    if let Some(state) = &query.state {
        if !STATES.contains(&state.as_str()) {
            return Err(ApiError::bad_request(format!(
                "parameter `state`: {state:?} is none of {} (or cooling-down)",
                STATES.join(", ")
            )));
        }
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("parameter `limit`: give 1 to 1000"));
    }
    let pool = app.pool(&name).await?;
    let after = query.after.map(credpool::CredentialId::new);
    let page = pool.list_page(after, limit).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|c| c.id.get()))
        .flatten();
    let credentials: Vec<Value> = page
        .iter()
        .filter(|c| {
            query
                .state
                .as_deref()
                .is_none_or(|state| c.state.label() == state)
        })
        .map(info_json)
        .collect();
    Ok(
        Json(json!({"pool": pool.name(), "credentials": credentials, "next": next}))
            .into_response(),
    )
}

async fn show<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    app.allow(&headers, Role::Worker)?;
    let pool = app.pool(&pool).await?;
    match pool.info(&name).await? {
        Some(info) => Ok(Json(info_json(&info)).into_response()),
        None => Err(Error::UnknownCredential {
            name: name.clone(),
            pool: pool.name().to_string(),
        }
        .into()),
    }
}

/// `POST /v1/pools/{pool}/credentials`: one credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    name: String,
    secret: String,
    extra: Option<String>,
    capacity: Option<u32>,
    /// Added disabled, with this reason.
    disabled: Option<String>,
}

async fn add<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    app.allow(&headers, Role::Admin)?;
    let request: AddRequest = body::required(body)?;
    let mut credential = NewCredential::new(request.name, request.secret)
        .maybe_extra(request.extra)
        .capacity(request.capacity.unwrap_or(1));
    if let Some(reason) = request.disabled {
        credential = credential.disabled(reason);
    }
    let pool = app.pool(&pool).await?;
    let name = credential.name().to_string();
    pool.add(credential).await?;
    Ok((StatusCode::CREATED, Json(json!({"added": name}))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// Keep credentials whose names exist and add the rest.
    skip_existing: Option<bool>,
}

async fn import<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    app.allow(&headers, Role::Admin)?;
    let query = body::query(query)?;
    let skip = query.skip_existing.unwrap_or(false);
    let bytes = body.map_err(|rejection| body::required::<Value>(Err(rejection)).unwrap_err())?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("the body is not UTF-8 text"))?;
    let credentials = crate::cli::import::parse(text, "the body", skip)
        .map_err(|crate::cli::Failure(message)| ApiError::bad_request(message))?;
    let pool = app.pool(&pool).await?;
    let total = credentials.len();
    let added = if skip {
        pool.add_many_skip_existing(credentials).await?
    } else {
        pool.add_many(credentials).await?
    };
    Ok(Json(json!({"added": added, "skipped": total - added})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    /// Remove it even while leased.
    force: Option<bool>,
}

async fn remove<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, name)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    app.allow(&headers, Role::Admin)?;
    let query = body::query(query)?;
    let pool = app.pool(&pool).await?;
    if query.force.unwrap_or(false) {
        pool.remove_forced(&name).await?;
    } else {
        pool.remove(&name).await?;
    }
    Ok(Json(json!({"removed": name})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableRequest {
    reason: String,
}

async fn disable<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    app.allow(&headers, Role::Admin)?;
    let request: DisableRequest = body::required(body)?;
    let pool = app.pool(&pool).await?;
    pool.disable(&name, request.reason).await?;
    Ok(Json(json!({"disabled": name})).into_response())
}

async fn enable<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    app.allow(&headers, Role::Admin)?;
    let pool = app.pool(&pool).await?;
    pool.enable(&name).await?;
    Ok(Json(json!({"enabled": name})).into_response())
}

async fn revoke<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path((pool, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    app.allow(&headers, Role::Admin)?;
    let pool = app.pool(&pool).await?;
    let ended = pool.revoke(&name).await?;
    Ok(Json(json!({"revoked": name, "leases": ended})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    name: Option<String>,
    scope: Option<String>,
}

async fn reset_locks<S: Reopen>(
    State(app): State<Arc<App<S>>>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    app.allow(&headers, Role::Admin)?;
    let request: ResetRequest = body::optional(body)?;
    let pool = app.pool(&pool).await?;
    let reset = pool
        .reset_limits(request.name.as_deref(), request.scope.as_deref())
        .await?;
    Ok(Json(json!({"reset": reset})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists every route with its method, and no other.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let document: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let paths = document["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .into_iter()
                    .flat_map(|methods| methods.keys())
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }

    /// Random bodies never panic the parsing of a lease request or a
    /// release outcome, and every refusal is a 400 that says why.
    #[test]
    fn random_bodies_are_parsed_or_refused_never_a_panic() {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"scope\"",
            "\"release\"",
            "\"token\"",
            "{\"token\": \"abc\", \"outcome\": \"disable\"}",
            "\"ttl\"",
            "\"wait\"",
            "\"units\"",
            "\"outcome\"",
            "\"for\"",
            "\"until\"",
            "\"reason\"",
            "\"remaining\"",
            "\"cool-down\"",
            "\"disable\"",
            "\"success\"",
            "\"5m\"",
            "\"\"",
            "1",
            "-1",
            "1e400",
            "0.5",
            "null",
            "true",
            "\"2026-12-02T10:00:00Z\"",
            "\"\\u0000\"",
            "18446744073709551616",
            " ",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut taken, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let body: String = if rng.bool() {
                (0..rng.usize(0..12))
                    .map(|_| pieces[rng.usize(..pieces.len())])
                    .collect()
            } else {
                let mut object = serde_json::Map::new();
                for _ in 0..rng.usize(0..4) {
                    let key = pieces[rng.usize(6..21)].trim_matches('"').to_string();
                    let value = serde_json::from_str(pieces[rng.usize(..pieces.len())])
                        .unwrap_or(Value::Null);
                    object.insert(key, value);
                }
                Value::Object(object).to_string()
            };
            let bytes = Ok(Bytes::from(body.clone()));
            match body::optional::<AcquireRequest>(bytes).and_then(|mut request| {
                request.want()?;
                request.release()?;
                Ok(request)
            }) {
                Ok(_) => taken += 1,
                Err(error) => {
                    assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
                    assert!(!error.message.is_empty());
                    refused += 1;
                }
            }
            let bytes = Ok(Bytes::from(body.clone()));
            match body::optional::<ReleaseRequest>(bytes).and_then(ReleaseRequest::outcome) {
                Ok(_) => taken += 1,
                Err(error) => {
                    assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
                    refused += 1;
                }
            }
        }
        assert!(
            taken > 1_000 && refused > 1_000,
            "{taken} taken, {refused} refused"
        );
    }
}
