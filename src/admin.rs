//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/status.json` and a small HTML status page at `/`; plus the background probe that
//! keeps readiness current and the small HTTP client `kafka-tee status` uses.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::status::{Status, StatusReport, human_bytes, human_duration};

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
            state.status.sample_rates(&state.metrics.render());
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
            let report = state.status.report(&state.metrics.render());
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
            let report = state.status.report(&state.metrics.render());
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

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The human-readable page at `/`, refreshed by the browser every 5 seconds.
pub fn status_page(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>kafka-tee</title><style>\
         body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin:.5em 0 1.2em}}\
         td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}td.n{{text-align:right}}\
         .ok{{color:#070}}.bad{{color:#b00;font-weight:bold}}</style></head><body>\n"
    );
    let _ = writeln!(h, "<h1>kafka-tee {}</h1>", esc(&r.version));
    let readiness = if r.ready {
        "<span class=\"ok\">ready</span>".to_string()
    } else {
        format!(
            "<span class=\"bad\">not ready: {}</span>",
            esc(&r.ready_reason)
        )
    };
    let _ = writeln!(
        h,
        "<p>Up {} &middot; {readiness}</p>",
        esc(&human_duration(r.uptime_seconds))
    );

    let _ = writeln!(
        h,
        "<h2>Listeners</h2><table><tr><th>what</th><th>address</th><th>forwards to</th></tr>"
    );
    let _ = writeln!(
        h,
        "<tr><td>bootstrap</td><td>{}</td><td>{}</td></tr>",
        esc(&r.listeners.bootstrap),
        esc(&r.source.join(", "))
    );
    if let Some(a) = &r.listeners.admin {
        let _ = writeln!(h, "<tr><td>admin</td><td>{}</td><td>-</td></tr>", esc(a));
    }
    for b in &r.listeners.brokers {
        let _ = writeln!(
            h,
            "<tr><td>broker {}</td><td>port {}</td><td>{}</td></tr>",
            b.broker_id,
            b.proxy_port,
            esc(&b.upstream)
        );
    }
    let _ = writeln!(h, "</table>");

    let c = &r.connections;
    let _ = writeln!(
        h,
        "<h2>Connections</h2><p>{} open, {} accepted, {} refused at the limit; {} requests forwarded.</p>",
        c.open, c.accepted_total, c.refused_total, r.requests_total
    );

    let rep = &r.replication;
    let _ = writeln!(h, "<h2>Replication</h2>");
    if !rep.enabled {
        let _ = writeln!(h, "<p>Off (no target cluster configured).</p>");
    } else {
        let lost = if rep.data_lost_records_total > 0 {
            format!("<span class=\"bad\">{}</span>", rep.data_lost_records_total)
        } else {
            "0".into()
        };
        let _ = writeln!(
            h,
            "<p>To {}: {} records acked by DC1, {} replicated ({}){}; pending {} of {}; \
             {} batches held for ordering; {} catch-up batches; {} DC2 errors; lost records: {lost}.</p>",
            esc(&r.target.join(", ")),
            rep.acked_records_total,
            rep.replicated_records_total,
            esc(&human_bytes(rep.replicated_bytes_total)),
            rep.records_per_second
                .map(|v| format!(", {v:.1} records/s"))
                .unwrap_or_default(),
            esc(&human_bytes(rep.pending_bytes)),
            esc(&human_bytes(rep.pending_bytes_limit)),
            rep.held_batches,
            rep.catchup_batches_total,
            rep.dc2_errors_total,
        );
        if rep.partitions.is_empty() {
            let _ = writeln!(h, "<p>No per-partition state yet.</p>");
        } else {
            let _ = writeln!(
                h,
                "<table><tr><th>topic</th><th>partition</th><th>in DC2 up to offset</th>\
                 <th>lag records</th><th>lag bytes</th><th>oldest pending</th><th>throughput</th>\
                 <th>state</th></tr>"
            );
            let dash = || "-".to_string();
            for p in &rep.partitions {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                    esc(&p.topic),
                    p.partition.map_or_else(|| "*".into(), |n| n.to_string()),
                    p.replicated_offset.map_or_else(dash, |o| o.to_string()),
                    p.lag_records.map_or_else(dash, |n| n.to_string()),
                    esc(&p.lag_bytes.map_or_else(dash, human_bytes)),
                    esc(&p.oldest_pending_seconds.map_or_else(dash, human_duration)),
                    p.records_per_second
                        .map_or_else(dash, |v| format!("{v:.1}/s")),
                    esc(&p.state)
                );
            }
            let _ = writeln!(h, "</table>");
            if rep.partitions.iter().any(|p| p.partition.is_none()) {
                let _ = writeln!(
                    h,
                    "<p>Partition * is a whole topic: its lag is known per topic only.</p>"
                );
            }
        }
    }
    let _ = writeln!(
        h,
        "<p><a href=\"/metrics\">/metrics</a> &middot; <a href=\"/status.json\">/status.json</a> \
         &middot; <a href=\"/healthz\">/healthz</a> &middot; <a href=\"/readyz\">/readyz</a></p>\n</body></html>"
    );
    h
}

/// Why `kafka-tee status` could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("cannot reach the admin endpoint at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("admin endpoint at {addr} gave no complete answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("admin endpoint at {addr} answered {status} for {path}: {body}")]
    Status {
        addr: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("admin endpoint at {addr} sent a malformed answer: {message}")]
    Malformed { addr: String, message: String },
}

/// An HTTP response as the small client reads it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Largest admin response the client reads.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A one-shot `GET path` to `addr` (`HOST:PORT`), the whole exchange within `timeout`.
pub async fn http_get(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, AdminClientError> {
    let unreachable = |message: String| AdminClientError::Unreachable {
        addr: addr.to_owned(),
        message,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if raw.len() > MAX_RESPONSE {
            return Err(AdminClientError::Malformed {
                addr: addr.to_owned(),
                message: format!("response larger than {MAX_RESPONSE} bytes"),
            });
        }
        parse_response(&raw).map_err(|message| AdminClientError::Malformed {
            addr: addr.to_owned(),
            message,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(AdminClientError::Timeout {
            addr: addr.to_owned(),
            timeout,
        }),
    }
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(format!("body has {} of {len} bytes", body.len()));
        }
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// Fetches and decodes `/status.json` from an admin endpoint.
pub async fn fetch_status(addr: &str, timeout: Duration) -> Result<StatusReport, AdminClientError> {
    let r = http_get(addr, "/status.json", timeout).await?;
    if r.status != 200 {
        return Err(AdminClientError::Status {
            addr: addr.to_owned(),
            path: "/status.json".into(),
            status: r.status,
            body: String::from_utf8_lossy(&r.body).chars().take(200).collect(),
        });
    }
    serde_json::from_slice(&r.body).map_err(|e| AdminClientError::Malformed {
        addr: addr.to_owned(),
        message: format!("status.json: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proxy::Router;
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
        let status = Status::new(&cfg, "127.0.0.1:9092".parse().expect("addr"), router, None);
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

    #[test]
    fn page_escapes_names() {
        let r = StatusReport {
            source: vec!["<script>".into()],
            ..Default::default()
        };
        let page = status_page(&r);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
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

    #[tokio::test]
    async fn client_reports_unreachable_endpoint() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = fetch_status(&format!("127.0.0.1:{port}"), Duration::from_secs(2))
            .await
            .expect_err("nothing listens");
        assert!(err.to_string().contains("cannot reach"), "{err}");
    }

    #[test]
    fn parses_chunked_and_sized_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
        let r = parse_response(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((r.status, r.body.as_slice()), (503, b"abcde".as_slice()));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }
}
