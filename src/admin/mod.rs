//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/status.json` and a small HTML status page at `/`; plus the background probe that
//! keeps readiness current (this file); the page (`page.rs`) and the small HTTP
//! client `kafka-tee status` uses (`client.rs`).
//!
//! The endpoint is for operators and scrapers, not for load: HTTP/1.1 only, GET and
//! HEAD only, a few dozen connections at most, and every connection is bounded in time.
//! It keeps answering through the shutdown grace period (`/readyz` then says "shutting
//! down") and stops when the proxy has stopped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::status::Status;

mod client;
mod page;

pub use client::{AdminClientError, HttpResponse, fetch_status, http_get};
pub use page::status_page;

/// Admin connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No admin connection, keep-alive included, lives longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How often DC1 reachability is probed and throughput sampled.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Timeout of one DC1 probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Throughput is computed over windows of this many probe intervals.
const RATE_EVERY: u32 = 3;

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// What the handlers read.
pub struct AdminState {
    pub status: Arc<Status>,
    pub metrics: PrometheusHandle,
}

/// A running admin endpoint.
pub struct Admin {
    local: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Admin {
    /// Serves `listener` and probes DC1 until `stop` is called.
    pub fn start(listener: TcpListener, state: Arc<AdminState>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        state.status.set_admin_addr(local);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            state.clone(),
            stop.clone(),
            tasks.clone(),
        ));
        tasks.spawn(monitor(state, stop.clone()));
        tracing::info!(%local, "admin endpoint listening");
        Ok(Self { local, stop, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting, lets responses being written finish (briefly), and returns.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(2), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::debug!("admin connections still open at stop; dropping them");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many admin connections; closing this one");
            continue;
        };
        let (state, stop) = (state.clone(), stop.clone());
        tasks.spawn(async move {
            serve_connection(stream, state, stop).await;
            drop(permit);
        });
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<AdminState>, stop: CancellationToken) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req.method(), req.uri().path())) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("admin connection: {e}");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
        }
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
    }
}

/// Keeps readiness current: probes DC1, publishes the sampled gauges (readiness,
/// pending bytes), samples throughput and runs the recorder's upkeep.
async fn monitor(state: Arc<AdminState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match probe_dc1(state.status.source()).await {
            Ok(addr) => {
                tracing::trace!(%addr, "DC1 probe ok");
                state.status.record_dc1_ok();
            }
            Err(e) => {
                tracing::debug!("DC1 probe failed: {e}");
                state.status.record_dc1_failure(e);
            }
        }
        state.status.publish_gauges();
        state.metrics.run_upkeep();
        if n.is_multiple_of(RATE_EVERY) {
            state.status.sample_rates();
        }
        n = n.wrapping_add(1);
    }
}

/// Connects to the DC1 bootstrap addresses in turn; the first that accepts a TCP
/// connection within the timeout answers.
async fn probe_dc1(addrs: &[String]) -> Result<String, String> {
    let mut errors = Vec::new();
    for addr in addrs {
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr.as_str())).await {
            Ok(Ok(_)) => return Ok(addr.clone()),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer within {PROBE_TIMEOUT:?}")),
        }
    }
    if errors.is_empty() {
        Err("no DC1 bootstrap address configured".into())
    } else {
        Err(errors.join("; "))
    }
}

/// Answers one request. Pure apart from reading the live state, so handlers are
/// tested without a socket.
pub fn handle(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if matches!(path, "/metrics" | "/status.json" | "/") {
        state.status.publish_gauges();
    }
    let r = match path {
        "/metrics" => reply(StatusCode::OK, PROMETHEUS_TEXT, state.metrics.render()),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => match state.status.readiness() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n"),
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {e}\n"),
            ),
        },
        "/status.json" => {
            let report = state.status.report();
            match serde_json::to_string_pretty(&report) {
                Ok(json) => reply(StatusCode::OK, JSON, json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot encode status: {e}\n"),
                ),
            }
        }
        "/" => {
            let report = state.status.report();
            reply(StatusCode::OK, HTML, status_page(&report))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /, /metrics, /healthz, /readyz, /status.json\n",
        ),
    };
    if head {
        let (parts, _) = r.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    r
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proxy::Router;
    use crate::status::StatusReport;
    use http_body_util::BodyExt;
    use std::collections::BTreeMap;

    fn state(source: Vec<String>) -> Arc<AdminState> {
        let mut cfg = Config::default();
        cfg.source.bootstrap = source;
        let router = Router::new(
            "127.0.0.1".parse().expect("ip"),
            "127.0.0.1".into(),
            0,
            BTreeMap::new(),
        );
        let status = Status::new(
            &cfg,
            "127.0.0.1:9092".parse().expect("addr"),
            router,
            Default::default(),
            None,
        );
        Arc::new(AdminState {
            status,
            metrics: crate::metrics::install(),
        })
    }

    async fn body(r: Response<Full<Bytes>>) -> (StatusCode, String, String) {
        let status = r.status();
        let ct = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        (status, ct, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn healthz_and_unknown_paths() {
        let s = state(vec![]);
        let (code, ct, text) = body(handle(&s, &Method::GET, "/healthz")).await;
        assert_eq!(
            (code, ct.as_str(), text.as_str()),
            (StatusCode::OK, TEXT, "ok\n")
        );
        let (code, _, _) = body(handle(&s, &Method::GET, "/nope")).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, _, _) = body(handle(&s, &Method::POST, "/healthz")).await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        let (code, _, text) = body(handle(&s, &Method::HEAD, "/healthz")).await;
        assert_eq!((code, text.as_str()), (StatusCode::OK, ""));
    }

    #[tokio::test]
    async fn readyz_follows_listeners_and_dc1() {
        let s = state(vec![]);
        let (code, ct, text) = body(handle(&s, &Method::GET, "/readyz")).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ct, TEXT);
        assert!(text.contains("listeners"), "{text}");
        s.status.set_listening(true);
        let (code, _, text) = body(handle(&s, &Method::GET, "/readyz")).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("DC1"), "{text}");
        s.status.record_dc1_ok();
        let (code, _, _) = body(handle(&s, &Method::GET, "/readyz")).await;
        assert_eq!(code, StatusCode::OK);
        s.status.set_shutting_down();
        let (code, _, text) = body(handle(&s, &Method::GET, "/readyz")).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("shutting down"), "{text}");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_help_lines() {
        let s = state(vec![]);
        metrics::counter!("kafka_tee_requests_total", "api" => "Metadata").increment(1);
        let (code, ct, text) = body(handle(&s, &Method::GET, "/metrics")).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ct, PROMETHEUS_TEXT);
        for name in [
            "kafka_tee_requests_total",
            "kafka_tee_connections_open",
            "kafka_tee_produce_acked_records_total",
            "kafka_tee_data_lost_records_total",
            "kafka_tee_ready",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        assert!(text.contains("kafka_tee_requests_total{api=\"Metadata\"}"));
    }

    #[tokio::test]
    async fn status_json_and_page() {
        let s = state(vec![]);
        let (code, ct, text) = body(handle(&s, &Method::GET, "/status.json")).await;
        assert_eq!((code, ct.as_str()), (StatusCode::OK, JSON));
        let report: StatusReport = serde_json::from_str(&text).expect("json");
        assert_eq!(report.listeners.bootstrap, "127.0.0.1:9092");
        assert!(!report.replication.enabled);
        let (code, ct, page) = body(handle(&s, &Method::GET, "/")).await;
        assert_eq!((code, ct.as_str()), (StatusCode::OK, HTML));
        assert!(page.contains("<h1>kafka-tee"), "{page}");
        assert!(page.contains("127.0.0.1:9092"), "{page}");
        assert!(page.contains("not ready"), "{page}");
    }

    #[tokio::test]
    async fn served_over_tcp_and_probe_marks_ready() {
        // A listener standing in for DC1, so the probe succeeds.
        let dc1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dc1_addr = dc1.local_addr().expect("addr").to_string();
        let s = state(vec![dc1_addr]);
        s.status.set_listening(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = Admin::start(listener, s.clone()).expect("start");
        let addr = admin.local_addr().to_string();
        let t = Duration::from_secs(5);
        let r = http_get(&addr, "/healthz", t).await.expect("get");
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok\n".as_slice()));
        assert_eq!(r.header("content-type"), Some(TEXT));
        // the first probe runs right away
        let mut ready = false;
        for _ in 0..50 {
            if http_get(&addr, "/readyz", t).await.expect("get").status == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "never became ready");
        let report = fetch_status(&addr, t).await.expect("status");
        assert!(report.ready);
        assert_eq!(report.listeners.admin.as_deref(), Some(addr.as_str()));
        admin.stop().await;
        let err = http_get(&addr, "/healthz", t).await.expect_err("stopped");
        assert!(matches!(err, AdminClientError::Unreachable { .. }), "{err}");
    }
}
