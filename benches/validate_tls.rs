//! End-to-end latency and throughput of `POST /validate`: the real admission router served
//! over TLS (axum-server + rustls with ring) on 127.0.0.1, driven by hyper clients over
//! kept-alive TLS connections, HTTP/1.1 and HTTP/2, sequentially and at concurrency 8 and 32.
//!
//! Connections are opened explicitly (hyper's connection API over hyper-rustls), so a row uses
//! exactly the connections it says: HTTP/1.1 one per concurrent sender, HTTP/2 one connection
//! multiplexing every sender, as the API server does. No handshake falls inside the clock.
//!
//! Every response must be HTTP 200 with `"allowed":false` and the request's uid; the server
//! must hold exactly the row's connections (nothing reconnected); and the webhook's metrics and
//! block ledger must count every request as denied. Anything else panics.
//!
//! Run with `cargo bench --bench validate_tls`. `AGENTGUARD_BENCH_REQUESTS` overrides the
//! number of measured requests per row (default 20000); `AGENTGUARD_BENCH_SERVER_NODELAY=0`
//! turns off TCP_NODELAY on the server's accepted sockets (`agentguard run` sets it), to show
//! what it is worth: without it HTTP/2 p99 rises to ~40 ms (Nagle meeting delayed ACKs).
//!
//! Client and server share the machine: on a small host the figures include the client's own
//! TLS and HTTP work, so they are a floor for the webhook, not a capacity number. No tracing
//! subscriber is installed, so the webhook's per-request log lines cost nothing here.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentguard::certs;
use agentguard::index::objects::{ObjectEntry, ObjectKey};
use agentguard::index::{BlockLedger, SharedObjects, SharedSnapshot};
use agentguard::metrics::Metrics;
use agentguard::webhook::{self, AdmissionState, DEFAULT_MAX_REVIEW_BYTES};
use axum::http::{Request, StatusCode, Uri, header};
use axum_server::Handle;
use axum_server::accept::{TcpConfigAcceptor, TcpSocketConfig};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tower::ServiceExt;

const DEFAULT_REQUESTS: usize = 20_000;
/// Requests sent on a row's connections before its clock starts (warms TLS sessions, HTTP/2
/// windows, caches and allocators).
const WARM_UP_REQUESTS: usize = 1_000;
const CONCURRENCY: [usize; 3] = [1, 8, 32];
/// One review taking longer than this fails the run: a hung webhook must not look slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1",
            Proto::Http2 => "HTTP/2",
        }
    }
}

/// One sender's handle on its connection.
enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// Where requests go: the absolute URI (HTTP/2 sends it as :scheme/:authority/:path) and the
/// origin-form path plus Host for HTTP/1.1.
struct Target {
    uri: Uri,
    path: Uri,
    host: String,
}

struct Row {
    proto: Proto,
    concurrency: usize,
    connections: usize,
    latencies_ns: Vec<u64>,
    wall: Duration,
}

impl Row {
    fn percentile_us(&self, p: f64) -> f64 {
        let sorted = &self.latencies_ns;
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1_000.0
    }

    fn per_second(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.wall.as_secs_f64()
    }
}

/// Serves the admission router like `agentguard run` does, on an ephemeral port, with a
/// ClusterProtectedResource protecting production PVCs. `server_nodelay` sets TCP_NODELAY on
/// accepted sockets, as `agentguard run` does.
async fn start_server(
    bundle: &certs::CertificateBundle,
    server_nodelay: bool,
) -> (SocketAddr, Handle<SocketAddr>, Arc<AdmissionState>) {
    let snapshot = support::snapshot(support::policies(1));
    // The claim is in the index, as the object watch puts every watched object there: blocks
    // are recorded (status counts, Events) only for objects the index holds.
    let objects: SharedObjects = Default::default();
    objects
        .write()
        .expect("fresh lock")
        .upsert(indexed(&support::pvc("100Gi", "gold")), &snapshot);
    let state = Arc::new(AdmissionState {
        snapshot: SharedSnapshot::new(snapshot),
        objects,
        metrics: Metrics::new(),
        ledger: BlockLedger::default(),
    });
    let tls = RustlsConfig::from_config(
        certs::server_config(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())
            .expect("server TLS config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let addr = listener.local_addr().expect("local address");
    let handle: Handle<SocketAddr> = Handle::new();
    let mut server = axum_server::from_tcp(listener)
        .expect("server from listener")
        .acceptor(
            RustlsAcceptor::new(tls)
                .handshake_timeout(Duration::from_secs(5))
                .acceptor(TcpConfigAcceptor::new(
                    TcpSocketConfig::new().nodelay(server_nodelay),
                )),
        )
        .handle(handle.clone());
    server
        .http_builder()
        .http1()
        .header_read_timeout(Duration::from_secs(5));
    let router = webhook::admission_router(state.clone(), DEFAULT_MAX_REVIEW_BYTES);
    tokio::spawn(async move {
        server
            .serve(router.into_make_service())
            .await
            .expect("webhook server");
    });
    handle.listening().await.expect("server listening");
    (addr, handle, state)
}

/// What the object watch keeps of a PersistentVolumeClaim given as the API server stores it.
fn indexed(pvc: &serde_json::Value) -> ObjectEntry {
    let meta = &pvc["metadata"];
    let map = |v: &serde_json::Value| -> BTreeMap<String, String> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    ObjectEntry::new(
        ObjectKey::new(
            "",
            "PersistentVolumeClaim",
            meta["namespace"].as_str(),
            meta["name"].as_str().expect("name"),
        ),
        meta["uid"].as_str().expect("uid"),
        map(&meta["labels"]),
        &map(&meta["annotations"]),
        Vec::new(),
    )
}

/// A TLS connector that trusts only the generated CA. HTTP/1.1 offers no ALPN; HTTP/2 offers
/// `h2` only, so a server that does not speak it fails the handshake.
fn connector(ca_pem: &str, proto: Proto) -> HttpsConnector<HttpConnector> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    // TCP_NODELAY, as the API server's Go client sets by default. Without it Nagle holds the
    // request body behind the unacknowledged header segment until the server's delayed ACK.
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    match proto {
        Proto::Http1 => builder.enable_http1().wrap_connector(http),
        Proto::Http2 => builder.enable_http2().wrap_connector(http),
    }
}

/// Opens the row's connections: one per sender for HTTP/1.1, one shared for HTTP/2.
async fn connect(ca_pem: &str, proto: Proto, target: &Target, senders: usize) -> Vec<Sender> {
    let connector = connector(ca_pem, proto);
    let open = || async {
        connector
            .clone()
            .oneshot(target.uri.clone())
            .await
            .expect("TLS connection to the webhook")
    };
    match proto {
        Proto::Http1 => {
            let mut out = Vec::with_capacity(senders);
            for _ in 0..senders {
                let (sender, conn) = http1::handshake(open().await)
                    .await
                    .expect("HTTP/1.1 handshake");
                tokio::spawn(async move { conn.await.expect("HTTP/1.1 connection") });
                out.push(Sender::Http1(sender));
            }
            out
        }
        Proto::Http2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), open().await)
                .await
                .expect("HTTP/2 handshake (ALPN h2)");
            tokio::spawn(async move { conn.await.expect("HTTP/2 connection") });
            (0..senders)
                .map(|_| Sender::Http2(sender.clone()))
                .collect()
        }
    }
}

/// Sends one review and checks the answer; returns the round trip in nanoseconds.
async fn send(sender: &mut Sender, target: &Target, body: &Bytes) -> u64 {
    let request = |uri: &Uri| Request::post(uri.clone());
    let started = Instant::now();
    let exchange = async {
        let response: hyper::Response<Incoming> = match sender {
            Sender::Http1(s) => {
                let request = request(&target.path)
                    .header(header::HOST, &target.host)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
                    .expect("request");
                s.ready().await.expect("HTTP/1.1 connection open");
                s.send_request(request).await.expect("webhook answers")
            }
            Sender::Http2(s) => {
                let request = request(&target.uri)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
                    .expect("request");
                s.ready().await.expect("HTTP/2 connection open");
                s.send_request(request).await.expect("webhook answers")
            }
        };
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        (status, answer)
    };
    let (status, answer) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("webhook answered within the timeout");
    let elapsed = started.elapsed();
    let text = std::str::from_utf8(&answer).expect("UTF-8 answer");
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains(r#""allowed":false"#), "not a denial: {text}");
    assert!(
        text.contains(&format!(r#""uid":"{}""#, support::UID)),
        "uid missing: {text}"
    );
    u64::try_from(elapsed.as_nanos()).expect("latency fits u64")
}

/// `requests` reviews shared by the senders, each sending back to back on its own task.
/// Returns the senders for reuse, every latency, and the wall time.
async fn drive(
    senders: Vec<Sender>,
    target: &Arc<Target>,
    body: &Bytes,
    requests: usize,
) -> (Vec<Sender>, Vec<u64>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let concurrency = senders.len();
    let started = Instant::now();
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (target, body, next) = (target.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(requests / concurrency + 1);
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    latencies.push(send(&mut sender, &target, &body).await);
                }
                (sender, latencies)
            })
        })
        .collect();
    let mut senders = Vec::with_capacity(concurrency);
    let mut all = Vec::with_capacity(requests);
    for worker in workers {
        let (sender, latencies) = worker.await.expect("worker");
        senders.push(sender);
        all.extend(latencies);
    }
    (senders, all, started.elapsed())
}

async fn wait_for_connections(handle: &Handle<SocketAddr>, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.connection_count() != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("ring is the only rustls provider");
    // `cargo test --all-targets` runs this binary without `--bench`: then it is a smoke test
    // of the same path (every assertion, few requests), not a measurement.
    let measuring = std::env::args().any(|a| a == "--bench");
    let requests: usize = std::env::var("AGENTGUARD_BENCH_REQUESTS")
        .ok()
        .map(|v| v.parse().expect("AGENTGUARD_BENCH_REQUESTS is a number"))
        .unwrap_or(if measuring { DEFAULT_REQUESTS } else { 200 });
    let warm_up = if measuring { WARM_UP_REQUESTS } else { 50 };
    let server_nodelay =
        std::env::var("AGENTGUARD_BENCH_SERVER_NODELAY").map_or(true, |v| v != "0");
    let bundle = certs::generate(&["127.0.0.1".into()], Duration::from_secs(3600))
        .expect("generate certificates");

    // Server and client get separate runtimes, as they would be separate processes.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("webhook")
        .build()
        .expect("server runtime");
    let (addr, handle, state) = server_rt.block_on(start_server(&bundle, server_nodelay));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("client")
        .build()
        .expect("client runtime");

    let target = Arc::new(Target {
        uri: format!("https://{addr}/validate").parse().expect("URI"),
        path: Uri::from_static("/validate"),
        host: addr.to_string(),
    });
    let body = Bytes::from(serde_json::to_vec(&support::agent_delete()).expect("JSON body"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "agentguard POST /validate over TLS at {addr}: agent DELETE of a protected PVC, \
         {} byte review, {requests} measured requests per row after {warm_up} warm-up, \
         {cores} cores shared by client and server, server TCP_NODELAY {}\n",
        body.len(),
        if server_nodelay {
            "on (as agentguard run)"
        } else {
            "off"
        }
    );

    let started = Instant::now();
    let mut rows = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        for concurrency in CONCURRENCY {
            let row = client_rt.block_on(async {
                wait_for_connections(&handle, 0).await;
                assert_eq!(handle.connection_count(), 0, "previous row's connections");
                let senders = connect(&bundle.ca_pem, proto, &target, concurrency).await;
                let (senders, _, _) = drive(senders, &target, &body, warm_up).await;
                let (senders, mut latencies_ns, wall) =
                    drive(senders, &target, &body, requests).await;
                let connections = handle.connection_count();
                let expected = match proto {
                    Proto::Http1 => concurrency,
                    Proto::Http2 => 1,
                };
                assert_eq!(connections, expected, "connections were not kept alive");
                drop(senders);
                latencies_ns.sort_unstable();
                assert_eq!(latencies_ns.len(), requests);
                Row {
                    proto,
                    concurrency,
                    connections,
                    latencies_ns,
                    wall,
                }
            });
            rows.push(row);
        }
    }
    let total = started.elapsed();

    println!(
        "{:<9} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "protocol", "conc", "conns", "requests", "p50 µs", "p90 µs", "p99 µs", "req/s"
    );
    for row in &rows {
        println!(
            "{:<9} {:>5} {:>5} {:>9} {:>9.0} {:>9.0} {:>9.0} {:>10.0}",
            row.proto.label(),
            row.concurrency,
            row.connections,
            row.latencies_ns.len(),
            row.percentile_us(50.0),
            row.percentile_us(90.0),
            row.percentile_us(99.0),
            row.per_second(),
        );
    }

    // The webhook itself must have judged every request sent, and denied each one.
    let sent = rows.len() * (requests + warm_up);
    let expected = format!(
        r#"agentguard_admission_requests_total{{decision="denied",dry_run="false",operation="DELETE",resource="persistentvolumeclaims"}} {sent}"#
    );
    let metrics = state.metrics.render();
    assert!(
        metrics.lines().any(|l| l == expected),
        "expected {expected:?} in\n{metrics}"
    );
    let blocks = state.ledger.drain();
    let counted: i64 = blocks.values().map(|b| b.count).sum();
    assert_eq!(
        counted,
        i64::try_from(sent).expect("count fits i64"),
        "blocked deletions recorded for policy status: {blocks:?}"
    );
    println!(
        "\n{sent} reviews answered, all denied (checked per response, in the webhook's metrics \
         and in its block ledger); {:.1} s total",
        total.as_secs_f64()
    );
    handle.shutdown();
}
