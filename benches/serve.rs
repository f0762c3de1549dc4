//! `credpool serve` against the in-process pool on the same kind of SQLite
//! file, in the same run: acquire + release pairs over HTTP/1.1 on
//! loopback, with 64 keep-alive clients and with one; each release in a
//! request of its own, or riding on the next acquire.
//!
//! `cargo bench --bench serve`

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credpool::store::sqlite::SqliteStore;
use credpool::{NewCredential, Pool};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use common::{tasks_doing_pairs, time_tasks, Holding};

const PAIRS_PER_TASK: usize = 200;
const CREDENTIALS: usize = 64;

async fn store(path: &Path) -> Pool<SqliteStore> {
    let pool = Pool::new(SqliteStore::open(path).await.unwrap());
    pool.add_many((0..CREDENTIALS).map(|i| NewCredential::new(format!("account-{i}"), "secret")))
        .await
        .unwrap();
    pool
}

/// `credpool serve` on `path`; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(path: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_credpool"))
            .arg("--db")
            .arg(path)
            .args(["-q", "serve", "--listen", "127.0.0.1:0"])
            .env_remove("CREDPOOL_WORKER_TOKEN")
            .env_remove("CREDPOOL_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .expect("the server's address")
            .to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A connector that sends small requests at once.
fn nodelay() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// One acquire + release over HTTP.
async fn http_pair(client: &HttpClient, base: &str) {
    let acquire = Request::builder()
        .method(Method::POST)
        .uri(format!("{base}/v1/pools/default/leases"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"wait": "10s"}"#)))
        .unwrap();
    let response = client.request(acquire).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    release(client, base, token_of(&body)).await;
}

/// `pairs` acquire + release pairs over HTTP, each release riding on the
/// next acquire (`"release": {"token": …}`): one round trip a pair, and one
/// release at the end.
async fn http_riding_pairs(client: &HttpClient, base: &str, pairs: usize) {
    let mut held: Option<String> = None;
    for _ in 0..pairs {
        let body = match &held {
            Some(token) => format!(r#"{{"wait": "10s", "release": {{"token": "{token}"}}}}"#),
            None => r#"{"wait": "10s"}"#.to_string(),
        };
        let acquire = Request::builder()
            .method(Method::POST)
            .uri(format!("{base}/v1/pools/default/leases"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = client.request(acquire).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        held = Some(token_of(&body).to_string());
    }
    if let Some(token) = held {
        release(client, base, &token).await;
    }
}

/// The token of an acquire's answer, found without a JSON parse (what a
/// thin client would do; the server's work is what is timed).
fn token_of(body: &[u8]) -> &str {
    let text = std::str::from_utf8(body).unwrap();
    let at = text.find("\"token\":\"").unwrap() + 9;
    &text[at..at + 32]
}

async fn release(client: &HttpClient, base: &str, token: &str) {
    let release = Request::builder()
        .method(Method::DELETE)
        .uri(format!("{base}/v1/pools/default/leases/{token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(release).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = common::two_workers();
    let pool = runtime.block_on(store(&dir.path().join("in-process.db")));
    let served = dir.path().join("served.db");
    drop(runtime.block_on(store(&served)));
    let server = Server::start(&served);
    let base: Arc<str> = Arc::from(server.url.trim_end_matches('/'));
    // One keep-alive connection per client, made before timing starts.
    let clients: Vec<HttpClient> = (0..64)
        .map(|_| Client::builder(TokioExecutor::new()).build(nodelay()))
        .collect();
    runtime.block_on(async {
        for client in &clients {
            http_pair(client, &base).await;
        }
    });

    let mut group = c.benchmark_group("serve/64_clients_64_credentials");
    group.throughput(Throughput::Elements((64 * PAIRS_PER_TASK) as u64));
    group.sample_size(10);
    group.bench_function("in_process_64_tasks", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(tasks_doing_pairs(
                &pool,
                64,
                PAIRS_PER_TASK,
                Holding::Briefly,
                iterations,
            ))
        })
    });
    group.bench_function("http_64_keep_alive_clients", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(time_tasks(iterations, 64, |index| {
                let (client, base) = (clients[index].clone(), Arc::clone(&base));
                async move {
                    for _ in 0..PAIRS_PER_TASK {
                        http_pair(&client, &base).await;
                    }
                }
            }))
        })
    });
    group.bench_function("http_64_keep_alive_clients_release_riding", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(time_tasks(iterations, 64, |index| {
                let (client, base) = (clients[index].clone(), Arc::clone(&base));
                async move { http_riding_pairs(&client, &base, PAIRS_PER_TASK).await }
            }))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("serve/one_client_pair");
    group.throughput(Throughput::Elements(1));
    group.bench_function("in_process", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    pool.acquire().await.unwrap().release().await.unwrap();
                }
                started.elapsed()
            })
        })
    });
    let client = clients[0].clone();
    group.bench_function("http", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    http_pair(&client, &base).await;
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("http_release_riding", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                http_riding_pairs(&client, &base, iterations as usize).await;
                started.elapsed()
            })
        })
    });
    group.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
