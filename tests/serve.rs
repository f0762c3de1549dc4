//! `credpool serve`, run as a user runs it, spoken to over real HTTP.
#![cfg(feature = "cli")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const WORKER: &str = "worker-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// A running `credpool serve` on a fresh store, killed when dropped.
struct Server {
    child: Option<Child>,
    url: String,
    stdout: Arc<std::sync::Mutex<String>>,
}

fn credpool(db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credpool"));
    command
        .arg("--db")
        .arg(db)
        .env_remove("CREDPOOL_DB")
        .env_remove("CREDPOOL_URL")
        .env_remove("CREDPOOL_WORKER_TOKEN")
        .env_remove("CREDPOOL_ADMIN_TOKEN");
    command
}

/// A store of `n` credentials `c0`… with secrets `secret-0`…, `capacity` each.
fn store_with(label: &str, n: usize, capacity: u32) -> PathBuf {
    let db = common::fresh_path("serve-tests", label);
    let entries: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("c{i}"), "secret": format!("secret-{i}"), "capacity": capacity}))
        .collect();
    let file = db.with_extension("json");
    std::fs::write(&file, serde_json::to_string(&entries).unwrap()).unwrap();
    let out = credpool(&db).arg("import").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db
}

impl Server {
    fn start(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = credpool(db);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Server {
        let mut child = command.spawn().expect("start credpool serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        let url = address_in(&first).unwrap_or_else(|| {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("no address in {first:?}; stderr: {err}")
        });
        let rest = Arc::new(std::sync::Mutex::new(first));
        let keep = Arc::clone(&rest);
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                let mut all = keep.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Server {
            child: Some(child),
            url,
            stdout: rest,
        }
    }

    fn authed(db: &Path) -> Server {
        Server::start(
            db,
            &[],
            &[
                ("CREDPOOL_WORKER_TOKEN", WORKER),
                ("CREDPOOL_ADMIN_TOKEN", ADMIN),
            ],
        )
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit; returns (success, stdout, stderr).
    fn stop(&mut self) -> (bool, String, String) {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("credpool serve did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        std::thread::sleep(Duration::from_millis(100));
        let out = self.stdout.lock().unwrap().clone();
        (status.success(), out, err)
    }
}

/// The address in the first line `credpool serve` prints.
fn address_in(first: &str) -> Option<String> {
    first
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .map(str::to_string)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A connector that sends small requests at once.
fn nodelay() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// An HTTP/1.1 client with keep-alive.
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.text))
    }

    /// The error code of a JSON error answer.
    fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

impl Http {
    fn new(server: &Server) -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build(nodelay()),
            base: server.url.clone(),
            token: None,
        }
    }

    fn with_token(&self, token: &str) -> Self {
        Http {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    async fn send(&self, method: Method, path: &str, body: &str) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base.trim_end_matches('/')));
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.expect("HTTP request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, "").await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, &body.to_string()).await
    }

    async fn acquire(&self, body: Value) -> Reply {
        self.post("/v1/pools/default/leases", body).await
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_lease_goes_out_and_comes_back_over_http() {
    let db = store_with("round-trip", 2, 1);
    let server = Server::start(&db, &[], &[]);
    runtime().block_on(async {
        let http = Http::new(&server);
        let got = http.acquire(json!({"ttl": "30s"})).await;
        assert_eq!(got.status, StatusCode::CREATED, "{}", got.text);
        let lease = got.json();
        let name = lease["name"].as_str().unwrap().to_string();
        assert_eq!(lease["secret"], json!(format!("secret-{}", &name[1..])));
        assert_eq!(lease["pool"], "default");
        assert_eq!(lease["ttl_seconds"], 30.0);
        assert!(lease["expires_at"].as_str().unwrap().ends_with('Z'));
        let token = lease["token"].as_str().unwrap().to_string();
        assert!(token.len() >= 32, "an unguessable token: {token}");

        // Stats, list and show: never a secret.
        let stats = http.get("/v1/pools/default/stats").await.json();
        assert_eq!(
            (stats["leases"].as_u64(), stats["http_leases"].as_u64()),
            (Some(1), Some(1))
        );
        let listed = http.get("/v1/pools/default/credentials").await;
        assert_eq!(listed.status, StatusCode::OK);
        assert!(!listed.text.contains("secret-"), "{}", listed.text);
        assert_eq!(listed.json()["credentials"].as_array().unwrap().len(), 2);
        let shown = http
            .get(&format!("/v1/pools/default/credentials/{name}"))
            .await;
        assert_eq!(shown.json()["holders"], 1, "{}", shown.text);
        assert!(!shown.text.contains("secret-"));
        let pools = http.get("/v1/pools").await.json();
        assert_eq!(pools["pools"][0]["name"], "default");

        // Renew, then release with a cool-down in one scope.
        let renewed = http
            .post(
                &format!("/v1/pools/default/leases/{token}/renew"),
                json!({"ttl": 90}),
            )
            .await;
        assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text);
        assert_eq!(renewed.json()["ttl_seconds"], 90.0);
        let released = http
            .post(
                &format!("/v1/pools/default/leases/{token}/release"),
                json!({"outcome": "cool-down", "for": "10m", "scope": "search"}),
            )
            .await;
        assert_eq!(released.status, StatusCode::OK, "{}", released.text);
        assert_eq!(released.json()["outcome"], "limited");
        // Released once: the token is spent.
        let again = http
            .send(
                Method::DELETE,
                &format!("/v1/pools/default/leases/{token}"),
                "",
            )
            .await;
        assert_eq!(
            (again.status, again.code().as_str()),
            (StatusCode::NOT_FOUND, "unknown_lease")
        );
        assert!(
            !again.text.contains(&token),
            "a token is never echoed whole: {}",
            again.text
        );
        // The scoped cool-down: `name` does not serve search, serves the rest.
        let search = http.acquire(json!({"name": name, "scope": "search"})).await;
        assert_eq!(
            search.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            search.text
        );
        assert_eq!(search.code(), "none_free");
        let retry: u64 = search.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (500..=600).contains(&retry),
            "the cool-down ends in 10 minutes: {retry}"
        );
        let other = http
            .acquire(json!({"name": name, "scope": "timeline"}))
            .await;
        assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
        let token = other.json()["token"].as_str().unwrap().to_string();
        let plain = http
            .send(
                Method::DELETE,
                &format!("/v1/pools/default/leases/{token}"),
                "",
            )
            .await;
        assert_eq!(plain.json()["released"], true, "{}", plain.text);

        // A release that disables, then the admin routes.
        let lease = http.acquire(json!({"name": "c0"})).await.json();
        let disabled = http
            .post(
                &format!(
                    "/v1/pools/default/leases/{}/release",
                    lease["token"].as_str().unwrap()
                ),
                json!({"outcome": "disable", "reason": "banned by the site"}),
            )
            .await;
        assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
        let c0 = http.get("/v1/pools/default/credentials/c0").await.json();
        assert_eq!(
            (c0["state"].as_str(), c0["disabled_reason"].as_str()),
            (Some("disabled"), Some("banned by the site"))
        );
        let only = http
            .get("/v1/pools/default/credentials?state=disabled")
            .await
            .json();
        assert_eq!(only["credentials"].as_array().unwrap().len(), 1);
        assert_eq!(
            http.post("/v1/pools/default/credentials/c0/enable", json!({}))
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            http.post(
                "/v1/pools/default/credentials/c1/disable",
                json!({"reason": "r"})
            )
            .await
            .status,
            StatusCode::OK
        );
        assert_eq!(
            http.post("/v1/pools/default/reset-locks", json!({}))
                .await
                .json()["reset"],
            1
        );
        let added = http
            .post(
                "/v1/pools/default/credentials",
                json!({"name": "new", "secret": "s3", "capacity": 2}),
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
        let twice = http
            .post(
                "/v1/pools/default/credentials",
                json!({"name": "new", "secret": "s3"}),
            )
            .await;
        assert_eq!(
            (twice.status, twice.code().as_str()),
            (StatusCode::CONFLICT, "duplicate_name")
        );
        let imported = http
            .send(
                Method::POST,
                "/v1/pools/default/import",
                r#"[{"username": "u1", "password": "p1"}, {"name": "u2", "secret": "p2"}]"#,
            )
            .await;
        assert_eq!(imported.json()["added"], 2, "{}", imported.text);
        let bad = http
            .send(
                Method::POST,
                "/v1/pools/default/import",
                r#"[{"name": "u3", "secret": "p"}, {"name": "u1", "secret": "p"}]"#,
            )
            .await;
        assert_eq!(bad.status, StatusCode::CONFLICT, "{}", bad.text);
        assert!(
            http.get("/v1/pools/default/credentials/u3").await.status == StatusCode::NOT_FOUND,
            "a failed import adds nothing"
        );
        let held = http.acquire(json!({"name": "u1"})).await.json();
        let busy = http
            .send(Method::DELETE, "/v1/pools/default/credentials/u1", "")
            .await;
        assert_eq!(
            (busy.status, busy.code().as_str()),
            (StatusCode::CONFLICT, "in_use")
        );
        let revoked = http
            .post("/v1/pools/default/credentials/u1/revoke", json!({}))
            .await
            .json();
        assert_eq!(revoked["leases"], 1);
        let lost = http
            .post(
                &format!(
                    "/v1/pools/default/leases/{}/renew",
                    held["token"].as_str().unwrap()
                ),
                json!({}),
            )
            .await;
        assert_eq!(
            (lost.status, lost.code().as_str()),
            (StatusCode::GONE, "lease_lost"),
            "{}",
            lost.text
        );
        assert_eq!(
            http.send(Method::DELETE, "/v1/pools/default/credentials/u1", "")
                .await
                .status,
            StatusCode::OK
        );

        // Views, and what is not there.
        assert!(http
            .get("/")
            .await
            .text
            .contains("<title>credpool dashboard</title>"));
        assert_eq!(http.get("/healthz").await.json()["ok"], true);
        let openapi = http.get("/v1/openapi.json").await.json();
        assert_eq!(openapi["openapi"], "3.1.0");
        let metrics = http.get("/metrics").await.text;
        assert!(
            metrics.contains("credpool_grants_total{pool=\"default\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("credpool_releases_total{pool=\"default\",outcome=\"disable\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("credpool_acquire_wait_seconds_bucket"),
            "{metrics}"
        );
        assert!(
            metrics.contains("credpool_credentials{pool=\"default\",state=\"disabled\"} 1"),
            "{metrics}"
        );
        for (path, code) in [
            ("/v1/pools/nope/stats", "unknown_pool"),
            ("/v1/pools/default/credentials/nobody", "unknown_credential"),
            ("/v1/nothing", "not_found"),
        ] {
            let reply = http.get(path).await;
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::NOT_FOUND, code.to_string()),
                "{path}"
            );
        }
        let wrong = http.send(Method::PUT, "/v1/pools", "").await;
        assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.code(), "method_not_allowed");
    });
}

#[test]
fn bad_requests_get_a_400_that_names_the_field() {
    let db = store_with("bad-json", 1, 1);
    let server = Server::start(&db, &["--max-wait", "5s"], &[]);
    runtime().block_on(async {
        let http = Http::new(&server);
        for (body, names) in [
            (r#"{"units": "x"}"#, "`units`"),
            (r#"{"ttl": "soon"}"#, "`ttl`"),
            (r#"{"ttl": -1}"#, "`ttl`"),
            (r#"{"ttl": "10ms"}"#, "`ttl`"),
            (r#"{"wait": "1h"}"#, "`wait`"),
            (r#"{"scope": ""}"#, "`scope`"),
            (r#"{"units": 0}"#, "`units`"),
            (r#"{"sope": "search"}"#, "`sope`"),
            (r#"{"ttl": "30s"} trailing"#, "trailing"),
            (r#"{"ttl": "#, "EOF"),
            (r#"[1, 2]"#, "invalid type"),
        ] {
            let reply = http
                .send(Method::POST, "/v1/pools/default/leases", body)
                .await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{body}: {}",
                reply.text
            );
            let message = reply.json()["message"].as_str().unwrap().to_string();
            assert!(message.contains(names), "{body}: {message}");
        }
        let lease = http.acquire(json!({})).await.json();
        let token = lease["token"].as_str().unwrap();
        for (body, names) in [
            (json!({"outcome": "maybe"}), "`outcome`"),
            (json!({"outcome": "cool-down"}), "`for`"),
            (
                json!({"outcome": "cool-down", "for": "1m", "until": "2030-01-01T00:00:00Z"}),
                "`until`",
            ),
            (json!({"outcome": "disable"}), "`reason`"),
            (json!({"outcome": "success", "reason": "x"}), "`outcome`"),
            (
                json!({"outcome": "cool-down", "until": "tomorrow"}),
                "`until`",
            ),
        ] {
            let reply = http
                .post(
                    &format!("/v1/pools/default/leases/{token}/release"),
                    body.clone(),
                )
                .await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{body}: {}",
                reply.text
            );
            let message = reply.json()["message"].as_str().unwrap().to_string();
            assert!(message.contains(names), "{body}: {message}");
        }
        // A refused release leaves the lease held.
        let stats = http.get("/v1/pools/default/stats").await.json();
        assert_eq!(stats["leases"], 1);
        let add = http
            .post("/v1/pools/default/credentials", json!({"name": "x"}))
            .await;
        assert!(
            add.json()["message"].as_str().unwrap().contains("secret"),
            "{}",
            add.text
        );
        // A secret or extra of the wrong type is refused without quoting it.
        for body in [
            json!({"name": "x", "secret": 12345}),
            json!({"name": "x", "secret": 1234.5678}),
            json!({"name": "x", "secret": "s", "extra": 987654}),
            json!({"name": "x", "secret": ["hunter2"]}),
        ] {
            let add = http
                .post("/v1/pools/default/credentials", body.clone())
                .await;
            assert_eq!(add.status, StatusCode::BAD_REQUEST, "{body}");
            for shown in ["12345", "1234.5678", "987654", "hunter2"] {
                assert!(!add.text.contains(shown), "{body}: {}", add.text);
            }
            assert!(
                add.text.contains("secret") || add.text.contains("extra"),
                "{}",
                add.text
            );
        }
        // A POST's fields go in its body: a query string is refused, not ignored.
        let reply = http
            .post("/v1/pools/default/leases?wait=10s", json!({}))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
        assert!(reply.text.contains("query string"), "{}", reply.text);
        // axum's own refusals are JSON too.
        for path in [
            "/v1/pools/%FF/stats",
            "/v1/pools/default/leases/%C3%28/renew",
        ] {
            let reply = http.send(Method::POST, path, "{}").await;
            let reply = if reply.status == StatusCode::METHOD_NOT_ALLOWED {
                http.get(path).await
            } else {
                reply
            };
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::BAD_REQUEST, "bad_request".to_string()),
                "{path}: {}",
                reply.text
            );
        }
        let list = http.get("/v1/pools/default/credentials?limit=0").await;
        assert_eq!(list.status, StatusCode::BAD_REQUEST);
        let list = http.get("/v1/pools/default/credentials?state=asleep").await;
        assert!(list.text.contains("`state`"), "{}", list.text);
    });
}

#[test]
fn auth_tokens_have_roles_and_answers_say_what_is_wrong() {
    let db = store_with("auth", 2, 1);
    let server = Server::authed(&db);
    assert!(server
        .stdout
        .lock()
        .unwrap()
        .contains("bearer auth: 1 worker and 1 admin tokens"));
    runtime().block_on(async {
        let anyone = Http::new(&server);
        let worker = anyone.with_token(WORKER);
        let admin = anyone.with_token(ADMIN);
        let missing = anyone.acquire(json!({})).await;
        assert_eq!(
            (missing.status, missing.code().as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        assert_eq!(missing.headers["www-authenticate"], "Bearer");
        assert!(!missing.text.contains("secret-"));
        let wrong = anyone
            .with_token("not-a-token-of-this-server")
            .acquire(json!({}))
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let almost = anyone
            .with_token(&WORKER[..WORKER.len() - 1])
            .acquire(json!({}))
            .await;
        assert_eq!(almost.status, StatusCode::UNAUTHORIZED);
        for path in [
            "/v1/pools/default/stats",
            "/v1/pools/default/credentials",
            "/metrics",
            "/v1/events",
            "/v1/pools",
        ] {
            assert_eq!(
                anyone.get(path).await.status,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
        }
        // The page and the document are no data: they load without a token.
        assert_eq!(anyone.get("/").await.status, StatusCode::OK);
        assert_eq!(anyone.get("/v1/openapi.json").await.status, StatusCode::OK);

        let lease = worker.acquire(json!({})).await;
        assert_eq!(lease.status, StatusCode::CREATED, "{}", lease.text);
        assert!(lease.json()["secret"]
            .as_str()
            .unwrap()
            .starts_with("secret-"));
        let forbidden = worker
            .post(
                "/v1/pools/default/credentials",
                json!({"name": "w", "secret": "s"}),
            )
            .await;
        assert_eq!(
            (forbidden.status, forbidden.code().as_str()),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert!(forbidden.json()["message"]
            .as_str()
            .unwrap()
            .contains("admin role"));
        for path in [
            "/v1/pools/default/credentials/c0/disable",
            "/v1/pools/default/reset-locks",
            "/v1/pools/default/import",
        ] {
            assert_eq!(
                worker.post(path, json!({"reason": "x"})).await.status,
                StatusCode::FORBIDDEN,
                "{path}"
            );
        }
        assert_eq!(
            worker.get("/v1/pools/default/stats").await.status,
            StatusCode::OK
        );
        let added = admin
            .post(
                "/v1/pools/default/credentials",
                json!({"name": "w", "secret": "s"}),
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
        // An admin may lease too.
        assert_eq!(admin.acquire(json!({})).await.status, StatusCode::CREATED);
    });
    // No token in any log line, even at the most verbose level.
    drop(server);
    let mut verbose = credpool(&db);
    verbose
        .args(["-vvv", "serve", "--listen", "127.0.0.1:0"])
        .env("CREDPOOL_WORKER_TOKEN", WORKER)
        .env("CREDPOOL_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Server::spawn(verbose);
    runtime().block_on(async {
        let worker = Http::new(&server).with_token(WORKER);
        let lease = worker.acquire(json!({})).await.json();
        let token = lease["token"].as_str().unwrap().to_string();
        worker
            .post(
                &format!("/v1/pools/default/leases/{token}/release"),
                json!({}),
            )
            .await;
        let (_, out, err) = server.stop();
        for secret in [WORKER, ADMIN, &token, "secret-0", "secret-1"] {
            assert!(
                !err.contains(secret) && !out.contains(secret),
                "{secret} was logged:\n{err}"
            );
        }
        assert!(
            err.contains("HTTP request"),
            "the access log is on at -vvv:\n{err}"
        );
    });
}

#[test]
fn a_server_beyond_loopback_needs_tokens() {
    let db = store_with("beyond-loopback", 1, 1);
    let out = credpool(&db)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without auth") && err.contains("--auth-file"),
        "{err}"
    );
    // An auth file: one `ROLE TOKEN` a line; a bad line is named.
    let file = db.with_extension("tokens");
    std::fs::write(
        &file,
        "# tokens\nworker worker-token-0123456789abcdef\nboss x\n",
    )
    .unwrap();
    // What a server started with the auth file (and `listen`) says as it fails.
    let refused = |listen: &str| {
        let out = credpool(&db)
            .args(["serve", "--listen", listen, "--auth-file"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("0.0.0.0:0");
    assert!(
        err.contains("line 3") && err.contains("unknown role \"boss\""),
        "{err}"
    );
    std::fs::write(&file, "worker worker-token-0123456789abcdef\nadmin short\n").unwrap();
    let err = refused("127.0.0.1:0");
    assert!(
        err.contains("at least 16") && !err.contains("short"),
        "{err}"
    );
    // A file of comments only would mean no auth: refused, even on loopback.
    std::fs::write(&file, "# tokens to come\n\n").unwrap();
    let err = refused("127.0.0.1:0");
    assert!(err.contains("holds no tokens"), "{err}");
    std::fs::write(&file, "worker worker-token-0123456789abcdef\n").unwrap();
    let mut command = credpool(&db);
    command
        .args(["serve", "--listen", "0.0.0.0:0", "--auth-file"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = Server::spawn(command);
    let port = server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    runtime().block_on(async {
        let http = Http {
            base: format!("http://127.0.0.1:{port}"),
            ..Http::new(&server)
        };
        assert_eq!(
            http.acquire(json!({})).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            http.with_token(WORKER).acquire(json!({})).await.status,
            StatusCode::CREATED
        );
    });
}

#[test]
fn an_oversized_body_gets_a_413() {
    let db = store_with("oversized", 1, 1);
    let server = Server::start(&db, &["--max-body", "1000"], &[]);
    runtime().block_on(async {
        let http = Http::new(&server);
        let big = format!(r#"{{"scope": "{}"}}"#, "x".repeat(5000));
        let reply = http
            .send(Method::POST, "/v1/pools/default/leases", &big)
            .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            "{}",
            reply.text
        );
        assert!(reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("--max-body"));
        let import = format!(
            "[{}]",
            vec![r#"{"name": "n", "secret": "s"}"#; 100].join(",")
        );
        let reply = http
            .send(Method::POST, "/v1/pools/default/import", &import)
            .await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        // The server goes on.
        assert_eq!(http.acquire(json!({})).await.status, StatusCode::CREATED);
    });
}

/// Writes a request on a raw connection and drops it after `after`.
fn hang_up_during(url: &str, request: &str, after: Duration) {
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(after);
    drop(stream);
}

#[test]
fn a_client_that_hangs_up_while_it_waits_leaks_nothing() {
    let db = store_with("hang-up", 1, 1);
    let server = Server::start(&db, &[], &[]);
    runtime().block_on(async {
        let http = Http::new(&server);
        for round in 0..3 {
            let first = http.acquire(json!({"ttl": "60s"})).await.json();
            // Waiters that hang up after 300 ms of a 20 s wait.
            let url = server.url.clone();
            let body = r#"{"wait": "20s", "ttl": "60s"}"#;
            let request = format!(
                "POST /v1/pools/default/leases HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let hang = tokio::task::spawn_blocking(move || {
                std::thread::scope(|scope| {
                    for _ in 0..3 {
                        scope.spawn(|| hang_up_during(&url, &request, Duration::from_millis(300)));
                    }
                });
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let waiting = http.get("/v1/pools/default/stats").await.json();
            assert_eq!(waiting["waiters"], 3, "round {round}: the three wait: {waiting}");
            hang.await.unwrap();
            common::until("the hung-up waiters leave the line", Duration::from_secs(10), || {
                let http = http.clone();
                async move { http.get("/v1/pools/default/stats").await.json()["waiters"] == 0 }
            })
            .await;
            let token = first["token"].as_str().unwrap();
            http.send(Method::DELETE, &format!("/v1/pools/default/leases/{token}"), "").await;
            // Had a hung-up waiter been served, the credential would be
            // out to nobody: it is free at once instead.
            let next = http.acquire(json!({})).await;
            assert_eq!(next.status, StatusCode::CREATED, "round {round}: {}", next.text);
            let stats = http.get("/v1/pools/default/stats").await.json();
            assert_eq!((stats["leases"].as_u64(), stats["http_leases"].as_u64()), (Some(1), Some(1)), "{stats}");
            let token = next.json()["token"].as_str().unwrap().to_string();
            http.send(Method::DELETE, &format!("/v1/pools/default/leases/{token}"), "").await;
        }
    });
}

/// An acquire may carry the release of the lease before it (a worker's
/// loop in one round trip): the release comes first and stays done
/// whatever the acquire answers; when it fails, nothing is acquired.
#[test]
fn a_release_can_ride_on_the_next_acquire() {
    let db = store_with("riding", 1, 1);
    let other = db.with_extension("other.json");
    std::fs::write(&other, r#"[{"name": "o", "secret": "s"}]"#).unwrap();
    let imported = credpool(&db)
        .args(["--pool", "other", "import"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let server = Server::start(&db, &[], &[]);
    runtime().block_on(async {
        let http = Http::new(&server);
        let leases = |http: Http| async move {
            http.get("/v1/pools/default/stats").await.json()["leases"].clone()
        };
        let first = http.acquire(json!({})).await.json();
        let first_token = first["token"].as_str().unwrap().to_string();
        // One credential: the second lease is only there if the first went back.
        let second = http
            .acquire(json!({"release": {"token": first_token}}))
            .await;
        assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
        let second = second.json();
        assert_eq!(second["released"], json!({"released": true, "outcome": "success"}));
        assert_ne!(second["token"], first["token"]);
        assert!(second["lease_id"].as_u64() > first["lease_id"].as_u64());
        let renew = format!("/v1/pools/default/leases/{first_token}/renew");
        assert_eq!(http.post(&renew, json!({})).await.code(), "unknown_lease");
        // A release that fails acquires nothing: the lease held stays held.
        for (body, code) in [
            (json!({"release": {"token": first_token}}), "unknown_lease"),
            (json!({"release": {"token": "0123456789abcdef0123456789abcdef"}}), "unknown_lease"),
        ] {
            let reply = http.acquire(body).await;
            assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, code.to_string()));
            assert_eq!(leases(http.clone()).await, 1);
        }
        let second_token = second["token"].as_str().unwrap();
        // A lease of another pool is not released through this one.
        let reply = http
            .post("/v1/pools/other/leases", json!({"release": {"token": second_token}}))
            .await;
        assert_eq!((reply.status, reply.code().as_str()), (StatusCode::NOT_FOUND, "unknown_lease"), "{}", reply.text);
        let other_stats = http.get("/v1/pools/other/stats").await.json();
        assert_eq!((leases(http.clone()).await, other_stats["leases"].clone()), (json!(1), json!(0)));
        // Bad release fields are a 400 naming them inside `release`, and
        // change nothing.
        for (body, field) in [
            (json!({"release": {}}), "release.token"),
            (json!({"release": {"token": second_token, "outcome": "maybe"}}), "release.outcome"),
            (json!({"release": {"token": second_token, "outcome": "cool-down"}}), "release.for"),
            (json!({"release": {"token": second_token, "for": "x"}}), "release.for"),
            (json!({"release": {"token": second_token, "colour": 1}}), "colour"),
            (json!({"release": "later"}), "release"),
        ] {
            let reply = http.acquire(body.clone()).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.text);
            assert!(reply.text.contains(field), "{body}: {}", reply.text);
            assert_eq!(leases(http.clone()).await, 1, "{body}");
        }
        // A token in a plain release's body is refused: it is in the path.
        let path = format!("/v1/pools/default/leases/{second_token}/release");
        let reply = http.post(&path, json!({"token": second_token})).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
        // A release with a cool-down, and nothing free after it: 503, and the
        // release is done (the credential cools down, no lease is out).
        let reply = http
            .acquire(json!({"release": {"token": second_token, "outcome": "cool-down", "for": "3s"}}))
            .await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "none_free"),
            "{}",
            reply.text
        );
        assert!(reply.text.contains("was released"), "{}", reply.text);
        assert_eq!(reply.json()["released"]["released"], true, "{}", reply.text);
        let stats = http.get("/v1/pools/default/stats").await.json();
        assert_eq!((stats["leases"].clone(), stats["cooling_down"].clone()), (json!(0), json!(1)), "{stats}");
        for state in ["cooling", "cooling-down"] {
            let listed = http.get(&format!("/v1/pools/default/credentials?state={state}")).await.json();
            assert_eq!(listed["credentials"][0]["name"], "c0", "{state}: {listed}");
        }
        let listed = http.get("/v1/pools/default/credentials?state=available").await.json();
        assert_eq!(listed["credentials"], json!([]), "{listed}");
        // A disable rides too: then no credential is left to acquire.
        let third = http.acquire(json!({"wait": "10s"})).await.json();
        let reply = http
            .acquire(json!({"release": {"token": third["token"], "outcome": "disable", "reason": "banned"}}))
            .await;
        assert_eq!(reply.code(), "no_credentials", "{}", reply.text);
        assert_eq!(reply.json()["released"]["outcome"], "disable", "{}", reply.text);
        let stats = http.get("/v1/pools/default/stats").await.json();
        assert_eq!((stats["leases"].clone(), stats["disabled"].clone()), (json!(0), json!(1)), "{stats}");
    });
}

/// A server whose stdout and stderr readers went away (`credpool serve |
/// head -n1`, to read the address) goes on serving, logs and all, and
/// stops on SIGTERM as ever.
#[test]
fn a_server_whose_output_is_closed_goes_on_serving() {
    let db = store_with("closed-output", 1, 1);
    let mut child = credpool(&db)
        .args(["-vv", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // Both readers are gone now: every later write meets a closed pipe.
    drop(child.stderr.take());
    let url = address_in(&first).unwrap();
    let mut server = Server {
        child: Some(child),
        url,
        stdout: Default::default(),
    };
    runtime().block_on(async {
        let http = Http::new(&server);
        for _ in 0..20 {
            let lease = http.acquire(json!({"wait": "5s"})).await;
            assert_eq!(lease.status, StatusCode::CREATED, "{}", lease.text);
            let token = lease.json()["token"].as_str().unwrap().to_string();
            let path = format!("/v1/pools/default/leases/{token}/release");
            assert_eq!(http.post(&path, json!({})).await.status, StatusCode::OK);
        }
    });
    let (stopped, _, _) = server.stop();
    assert!(stopped, "exit 0 after SIGTERM with its output closed");
}

/// TTL settings that no request could live with are refused at the start.
#[test]
fn ttl_settings_that_cannot_work_are_refused() {
    let db = store_with("ttl-settings", 1, 1);
    for (args, says) in [
        (
            ["--lease-ttl", "500ms", "--max-ttl", "1h"],
            "--lease-ttl 500ms",
        ),
        (
            ["--lease-ttl", "60s", "--max-ttl", "10s"],
            "--max-ttl 10s is shorter",
        ),
    ] {
        let out = credpool(&db)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

/// TTLs of thousands of years, where an operator allows them, are answered
/// (the time written as the latest RFC 3339 has), never a dropped reply.
#[test]
fn the_longest_ttls_are_answered() {
    let db = store_with("longest-ttl", 1, 1);
    let server = Server::start(
        &db,
        &["--lease-ttl", "99999999999h", "--max-ttl", "99999999999h"],
        &[],
    );
    runtime().block_on(async {
        let http = Http::new(&server);
        let lease = http.acquire(json!({})).await;
        assert_eq!(lease.status, StatusCode::CREATED, "{}", lease.text);
        assert_eq!(
            lease.json()["expires_at"],
            "9999-12-31T23:59:59.000Z",
            "{}",
            lease.text
        );
        let token = lease.json()["token"].as_str().unwrap().to_string();
        let renew = format!("/v1/pools/default/leases/{token}/renew");
        let renewed = http.post(&renew, json!({"ttl": "9999999999h"})).await;
        assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text);
        let release = format!("/v1/pools/default/leases/{token}/release");
        assert_eq!(http.post(&release, json!({})).await.status, StatusCode::OK);
        // Bare seconds as text, as on the command line.
        let lease = http.acquire(json!({"ttl": "2.5", "wait": "1"})).await;
        assert_eq!(lease.status, StatusCode::CREATED, "{}", lease.text);
        assert_eq!(lease.json()["ttl_seconds"], 2.5, "{}", lease.text);
    });
}

#[test]
fn a_lease_nobody_renews_is_lost_after_its_ttl() {
    let db = store_with("abandoned", 1, 1);
    let server = Server::start(&db, &[], &[]);
    runtime().block_on(async {
        let http = Http::new(&server);
        let abandoned = http.acquire(json!({"ttl": 1})).await.json();
        let started = Instant::now();
        let next = http.acquire(json!({"wait": "10s"})).await;
        assert_eq!(next.status, StatusCode::CREATED, "{}", next.text);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "not before the TTL"
        );
        let token = abandoned["token"].as_str().unwrap();
        let late = http
            .post(
                &format!("/v1/pools/default/leases/{token}/renew"),
                json!({}),
            )
            .await;
        assert!(
            matches!(late.code().as_str(), "unknown_lease" | "lease_lost"),
            "{}",
            late.text
        );
        let late = http
            .post(
                &format!("/v1/pools/default/leases/{token}/release"),
                json!({}),
            )
            .await;
        assert!(
            late.status == StatusCode::NOT_FOUND || late.status == StatusCode::GONE,
            "{}",
            late.text
        );
        // The server counts the lease it forgot.
        common::until("the lost lease is counted", Duration::from_secs(10), || {
            let http = http.clone();
            async move {
                http.get("/metrics")
                    .await
                    .text
                    .contains("credpool_http_leases_lost_total{pool=\"default\"} 1")
            }
        })
        .await;
        // A lease renewed in time is kept past its first TTL.
        let token = next.json()["token"].as_str().unwrap().to_string();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let renewed = http
                .post(
                    &format!("/v1/pools/default/leases/{token}/renew"),
                    json!({"ttl": 1}),
                )
                .await;
            assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text);
        }
        assert_eq!(
            http.acquire(json!({})).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    });
}

#[test]
fn a_stop_answers_waiters_with_503_and_leaves_leases_to_the_store() {
    let db = store_with("shutdown", 1, 1);
    let mut server = Server::start(&db, &[], &[]);
    let pid = server.pid();
    let rt = runtime();
    // The block hands out the waiter's task, to await after the signal.
    #[allow(clippy::async_yields_async)]
    let waiter = rt.block_on(async {
        let http = Http::new(&server);
        let held = http.acquire(json!({"ttl": "5m"})).await;
        assert_eq!(held.status, StatusCode::CREATED);
        let waiting = http.clone();
        let waiter = tokio::spawn(async move { waiting.acquire(json!({"wait": "30s"})).await });
        common::until("the waiter waits", Duration::from_secs(10), || {
            let http = http.clone();
            async move { http.get("/v1/pools/default/stats").await.json()["waiters"] == 1 }
        })
        .await;
        waiter
    });
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let reply = rt.block_on(waiter).unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    );
    let (ok, out, _) = server.stop();
    assert!(ok, "exit 0 after SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.contains("1 HTTP leases left to the store"), "{out}");
    // The lease is the store's until its TTL.
    let stats = credpool(&db).args(["stats", "--json"]).output().unwrap();
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["leases"], 1, "{stats}");
}

#[test]
fn a_memory_server_releases_its_leases_when_it_stops() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credpool"));
    command
        .args(["--memory", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Server::spawn(command);
    runtime().block_on(async {
        let http = Http::new(&server);
        assert_eq!(http.acquire(json!({})).await.code(), "no_credentials");
        let added = http
            .post(
                "/v1/pools/default/credentials",
                json!({"name": "m", "secret": "s"}),
            )
            .await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
        assert_eq!(http.acquire(json!({})).await.status, StatusCode::CREATED);
        assert_eq!(
            http.get("/v1/pools/other/stats").await.code(),
            "unknown_pool"
        );
    });
    let (ok, out, _) = server.stop();
    assert!(ok && out.contains("1 HTTP leases released"), "{out}");
}

#[test]
fn the_event_stream_carries_events_and_snapshots() {
    let db = store_with("events", 2, 1);
    let server = Server::start(&db, &[], &[]);
    let address = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buffer = [0u8; 4096];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            }
            if seen.contains("event: released") && seen.matches("event: snapshot").count() >= 2 {
                break;
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(300));
    runtime().block_on(async {
        let http = Http::new(&server);
        let lease = http.acquire(json!({})).await.json();
        let token = lease["token"].as_str().unwrap();
        http.post(
            &format!("/v1/pools/default/leases/{token}/release"),
            json!({"outcome": "cool-down", "for": "1m"}),
        )
        .await;
    });
    let seen = reader.join().unwrap();
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    assert!(seen.contains("event: acquired"), "{seen}");
    assert!(seen.contains("event: released\ndata: {"), "{seen}");
    assert!(seen.contains("event: cooled_down"), "{seen}");
    assert!(
        seen.contains("\"total\":2"),
        "a snapshot with the counts: {seen}"
    );
    assert!(!seen.contains("secret-"), "{seen}");
}

/// 200 HTTP clients lease and release for 10 s, a tenth of their waits cut
/// off by a hang-up; the merged log of holds shows no credential held by
/// more leases than its capacity, and every lease comes back.
#[test]
fn two_hundred_clients_never_hold_a_credential_twice() {
    const CLIENTS: usize = 200;
    const CAPACITY: u32 = 2;
    let db = store_with("load", 40, CAPACITY);
    let server = Server::start(&db, &[], &[]);
    let log = Arc::new(common::checker::HoldLog::new());
    let rt = runtime();
    let (grants, cut) = rt.block_on(async {
        let http = Http::new(&server);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            // Each client its own connections, kept alive.
            let http = Http {
                client: Client::builder(TokioExecutor::new()).build(nodelay()),
                ..http.clone()
            };
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(client as u64);
                let (mut grants, mut cut) = (0u64, 0u64);
                // Odd clients release each lease with their next acquire.
                let riding = client % 2 == 1;
                let mut unreleased: Option<String> = None;
                let release = |token: String| {
                    let http = http.clone();
                    async move {
                        let path = format!("/v1/pools/default/leases/{token}/release");
                        let released = http.post(&path, json!({})).await;
                        assert_eq!(released.status, StatusCode::OK, "{}", released.text);
                    }
                };
                while Instant::now() < deadline {
                    let hang_up = rng.u8(..10) == 0;
                    if hang_up {
                        // A hang-up never carries a release: the client
                        // could not know whether it was made.
                        if let Some(token) = unreleased.take() {
                            release(token).await;
                        }
                    }
                    let reply = if hang_up {
                        // A hang-up while waiting: a short TTL, so a grant
                        // that raced the hang-up comes back soon.
                        let wait = Duration::from_millis(rng.u64(1..30));
                        let ask = http.acquire(json!({"wait": "5s", "ttl": "1s"}));
                        match tokio::time::timeout(wait, ask).await {
                            Ok(reply) => reply,
                            Err(_) => {
                                cut += 1;
                                continue;
                            }
                        }
                    } else {
                        let mut ask = json!({"wait": "5s", "ttl": "30s"});
                        let rides = unreleased.take();
                        if let Some(token) = &rides {
                            ask["release"] = json!({"token": token});
                        }
                        let reply = http.acquire(ask).await;
                        if rides.is_some() && reply.status == StatusCode::CREATED {
                            assert_eq!(
                                reply.json()["released"]["released"],
                                true,
                                "{}",
                                reply.text
                            );
                        }
                        reply
                    };
                    if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                        continue;
                    }
                    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
                    let lease = reply.json();
                    let id = lease["lease_id"].as_u64().unwrap();
                    log.start(lease["name"].as_str().unwrap(), CAPACITY, id);
                    tokio::time::sleep(Duration::from_micros(rng.u64(0..2000))).await;
                    log.end(id);
                    let token = lease["token"].as_str().unwrap().to_string();
                    if riding {
                        unreleased = Some(token);
                    } else {
                        release(token).await;
                    }
                    grants += 1;
                }
                if let Some(token) = unreleased {
                    release(token).await;
                }
                (grants, cut)
            }));
        }
        let mut total = (0, 0);
        for task in tasks {
            let (grants, cut) = task.await.unwrap();
            total.0 += grants;
            total.1 += cut;
        }
        // The leases of hang-ups that raced a grant end with their TTL.
        common::until("every lease comes back", Duration::from_secs(15), || {
            let http = http.clone();
            async move { http.get("/v1/pools/default/stats").await.json()["leases"] == 0 }
        })
        .await;
        total
    });
    if let Err(violations) = log.check(|_| CAPACITY) {
        panic!(
            "{} violations, first: {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
    }
    assert!(
        grants > 1_000,
        "the clients got on: {grants} grants in 10 s"
    );
    assert!(cut > 100, "hang-ups happened: {cut}");
    assert_eq!(log.grants() as u64, grants);
}

/// Random bodies, random bytes and broken JSON at every route that takes
/// a body: never a 500, never a dropped connection, and the server goes on.
#[test]
fn no_body_makes_the_server_fail() {
    let db = store_with("fuzz", 3, 1);
    let server = Server::start(&db, &[], &[]);
    runtime().block_on(async {
        let http = Http::new(&server);
        let lease = http.acquire(json!({})).await.json();
        let token = lease["token"].as_str().unwrap().to_string();
        let paths = [
            "/v1/pools/default/leases".to_string(),
            format!("/v1/pools/default/leases/{token}/renew"),
            format!("/v1/pools/default/leases/{token}/release"),
            "/v1/pools/default/credentials".to_string(),
            "/v1/pools/default/import".to_string(),
            "/v1/pools/default/credentials/c1/disable".to_string(),
            "/v1/pools/default/reset-locks".to_string(),
        ];
        let fields = ["scope", "name", "units", "ttl", "wait", "outcome", "for", "until", "remaining", "reason", "secret", "capacity", "extra"];
        let values = [
            json!(null), json!(-1), json!(0), json!(1e308), json!(u64::MAX), json!(""), json!("5m"),
            json!("\u{0}"), json!("x".repeat(300)), json!([1]), json!({"a": 1}), json!(true),
            json!("cool-down"), json!("disable"), json!("2026-13-40T00:00:00Z"), json!(1.5),
        ];
        let mut rng = fastrand::Rng::with_seed(18);
        let mut statuses = std::collections::BTreeMap::new();
        for round in 0..1500 {
            let path = &paths[rng.usize(..paths.len())];
            let body = match rng.u8(..4) {
                0 => (0..rng.usize(0..64)).map(|_| char::from(rng.u8(..128))).collect::<String>(),
                1 => {
                    let mut object = serde_json::Map::new();
                    for _ in 0..rng.usize(0..4) {
                        object.insert(fields[rng.usize(..fields.len())].into(), values[rng.usize(..values.len())].clone());
                    }
                    Value::Object(object).to_string()
                }
                2 => {
                    let text = json!({"outcome": "cool-down", "for": "1m", "scope": "s"}).to_string();
                    let cut = rng.usize(0..text.len());
                    text[..cut].to_string()
                }
                _ => format!("[{}]", (0..rng.usize(0..3)).map(|_| json!({"name": format!("n{}", rng.u8(..5)), "secret": values[rng.usize(..values.len())]}).to_string()).collect::<Vec<_>>().join(",")),
            };
            let reply = http.send(Method::POST, path, &body).await;
            assert!(
                reply.status.is_success() || reply.status.is_client_error() || reply.status == StatusCode::SERVICE_UNAVAILABLE,
                "round {round}: POST {path} {body:?} → {} {}",
                reply.status,
                reply.text
            );
            if !reply.status.is_success() {
                assert!(reply.json()["message"].is_string(), "{}", reply.text);
            }
            *statuses.entry(reply.status.as_u16()).or_insert(0) += 1;
        }
        assert!(statuses.get(&400).copied().unwrap_or(0) > 500, "most bodies are refused: {statuses:?}");
        assert!(statuses.keys().any(|s| *s < 300), "some are taken: {statuses:?}");
        assert_eq!(http.get("/healthz").await.status, StatusCode::OK);
    });
}

/// A program the next tests need: the path, or `None` when it is missing
/// and not required (`cargo test` on a machine with only Rust). CI sets
/// `CREDPOOL_REQUIRE_TOOLS=1`, so there a missing program fails the test.
fn tool(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    let found = candidates.iter().map(PathBuf::from).find(|path| {
        Command::new(path)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CREDPOOL_REQUIRE_TOOLS").is_none(),
            "{name} is needed (CREDPOOL_REQUIRE_TOOLS is set): install it ({candidates:?})"
        );
        eprintln!("note: {name} is not installed; this test checks nothing here (CI requires it)");
    }
    found
}

#[test]
fn the_python_worker_runs_against_the_server_and_gives_every_lease_back() {
    let Some(python) = tool("python3", &["python3"]) else {
        return;
    };
    let db = store_with("python", 4, 1);
    let server = Server::authed(&db);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python_worker.py");
    let holds = db.with_extension("holds");
    // Until a signal: SIGINT after 3 s gives every lease back.
    let worker = Command::new(&python)
        .arg(&example)
        .args([
            "--url",
            &server.url,
            "--pool",
            "default",
            "--workers",
            "8",
            "--work-ms",
            "1..20",
        ])
        .arg("--hold-log")
        .arg(&holds)
        .env("CREDPOOL_TOKEN", WORKER)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-INT", &worker.id().to_string()])
        .status();
    let out = worker.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" 0 held at exit"), "{stdout}");
    assert!(
        !stdout.contains("secret-") && !stderr.contains("secret-"),
        "{stdout}{stderr}"
    );
    runtime().block_on(async {
        let stats = Http::new(&server)
            .with_token(WORKER)
            .get("/v1/pools/default/stats")
            .await
            .json();
        assert_eq!(stats["leases"], 0, "{stats}");
        assert!(
            stats["uses"].as_u64().unwrap() > 20,
            "the workers got leases: {stats}"
        );
    });
    // The holds of one credential, from the worker's own clock, never overlap.
    let text = std::fs::read_to_string(&holds).unwrap();
    let mut by_name: std::collections::HashMap<&str, Vec<(u64, u64)>> = Default::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 4, "{line}");
        by_name
            .entry(words[0])
            .or_default()
            .push((words[2].parse().unwrap(), words[3].parse().unwrap()));
    }
    assert!(by_name.values().map(Vec::len).sum::<usize>() > 20, "{text}");
    for (name, mut holds) in by_name {
        holds.sort();
        for pair in holds.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{name} held twice: {pair:?}");
        }
    }
}

#[test]
fn the_dashboard_shows_the_pool_live_in_a_browser() {
    let Some(_) = tool("python3", &["python3"]) else {
        return;
    };
    let Some(chromium) = tool(
        "chromium",
        &["/usr/bin/chromium", "chromium", "chromium-browser"],
    ) else {
        return;
    };
    let db = store_with("browser", 6, 1);
    let server = Server::authed(&db);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dashboard-check.py");
    let shot = db.with_extension("png");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--url",
            &server.url,
            "--pool",
            "default",
            "--token",
            WORKER,
            "--chromium",
        ])
        .arg(&chromium)
        .arg("--screenshot")
        .arg(&shot)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a screenshot"
    );
}
